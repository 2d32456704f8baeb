// Workers wait on one condition variable for a new generation of work, run their chunk and count
// down `pending_`. Two failure paths are handled explicitly because both used to end the process:
// a worker that cannot be created (the constructor stops and joins the ones that did start, then
// throws specula::Error, instead of leaving joinable threads to std::terminate or a pool that waits
// for workers that never came), and an exception inside a worker's chunk (caught in the worker,
// kept as the first error of the call, and rethrown by parallel_for on the calling thread once
// every chunk has finished with `body`).
#include "specula/core/thread_pool.h"

#include <algorithm>
#include <exception>
#include <system_error>
#include <utility>

#include "specula/core/error.h"

namespace specula {

ThreadPool::ThreadPool(int threads) {
  SPECULA_CHECK(threads <= kMaxThreads, "thread pool: ", threads, " threads asked, at most ", kMaxThreads);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(static_cast<size_t>(threads - 1));
  try {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  } catch (const std::system_error& e) {
    const size_t started = workers_.size();
    shut_down();
    fail("cannot start CPU worker thread ", started + 1, " of ", threads - 1, ": ", e.what(),
         " (lower --threads or raise the process's thread limit)");
  }
}

ThreadPool::~ThreadPool() { shut_down(); }

void ThreadPool::shut_down() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& w : workers_)
    if (w.joinable()) w.join();
  workers_.clear();
}

void ThreadPool::record_error(std::exception_ptr error) {
  std::lock_guard lock(mutex_);
  if (!error_) error_ = std::move(error);
}

void ThreadPool::worker_loop(int index) {
  uint64_t seen = 0;
  for (;;) {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    const auto* body = body_;
    const int64_t begin = std::min<int64_t>(n_, index * chunk_), end = std::min<int64_t>(n_, begin + chunk_);
    lock.unlock();
    if (begin < end) {
      // An exception must not leave the thread (std::terminate): it travels to parallel_for.
      try {
        (*body)(begin, end);
      } catch (...) {
        record_error(std::current_exception());
      }
    }
    lock.lock();
    if (--pending_ == 0) done_.notify_one();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& body, int64_t min_chunk) {
  if (n <= 0) return;
  const int64_t threads = std::min<int64_t>(size(), std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk)));
  if (threads <= 1 || workers_.empty()) {
    body(0, n);
    return;
  }
  const int64_t chunk = (n + size() - 1) / size();
  {
    std::lock_guard lock(mutex_);
    body_ = &body;
    n_ = n;
    chunk_ = chunk;
    pending_ = static_cast<int>(workers_.size());
    error_ = nullptr;
    ++generation_;
  }
  wake_.notify_all();
  // The calling thread's own chunk; its exception waits, like the workers', until every chunk
  // is done with `body`.
  try {
    body(0, std::min(n, chunk));
  } catch (...) {
    record_error(std::current_exception());
  }
  std::exception_ptr error;
  {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    body_ = nullptr;
    error = std::exchange(error_, nullptr);
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace specula
