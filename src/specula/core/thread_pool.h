// ThreadPool: a fixed set of workers for data-parallel loops in the CPU backend.
// Owned by the engine and passed down explicitly (no global pool). parallel_for splits a range
// into one contiguous chunk per thread and the calling thread takes a chunk too, so a call on
// a 1-thread pool is just a loop.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace specula {

class ThreadPool {
 public:
  // More threads than this is a mistake (no machine has that many cores), not a request.
  static constexpr int kMaxThreads = 1024;

  // threads <= 0 means hardware_concurrency(). Throws specula::Error when threads exceeds
  // kMaxThreads or a worker cannot be started (the ones that did start are joined first).
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls body(begin, end) over disjoint chunks covering [0, n); returns when all are done.
  // Chunks are at least `min_chunk` long so tiny loops do not pay for waking threads. The first
  // exception thrown by any chunk (on any thread) is rethrown here after all chunks finished.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& body, int64_t min_chunk = 1);

 private:
  void worker_loop(int index);
  void shut_down();
  void record_error(std::exception_ptr error);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 0;
  uint64_t generation_ = 0;
  int pending_ = 0;
  std::exception_ptr error_;  // first exception of the current parallel_for
  bool stop_ = false;
};

}  // namespace specula
