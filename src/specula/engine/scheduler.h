// Scheduler: the one object between front ends (HTTP server, terminal chat) and an Engine. It
// owns a bounded request queue and the single device thread that runs requests, one at a time,
// in submission order, through the engine's Decoder (make_decoder: speculative when the engine
// has a draft head). Nothing else touches the engine while a Scheduler owns it.
//
// Why this shape: the engine holds one sequence's KV cache and is not thread-safe, so every
// device call has to come from one thread; front ends only submit, stream and cancel. Batch size
// is 1 for now; a later batching scheduler replaces this one class behind the same interface
// (submit / cancel / callbacks / counters), so front ends do not change. Requests are validated
// at submit (engine::check_request and the sampling parameters), so a bad request is a clear
// error for its caller, never a failure on the device thread; a full queue is a distinct
// exception (QueueFullError) that a server maps to 503 with Retry-After.
//
// Which decoder runs a request is decided here, because the scheduler owns the decoders: the
// speculative one when the engine has a draft head, except for requests that ask for logprobs,
// which run on the plain Generator (the only decoder that computes them). Speculative decoding
// is lossless, so such a request's output distribution is the same; only its speed differs.
// speculates() tells front ends which one a request gets, so they can say so.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "specula/core/error.h"
#include "specula/engine/generator.h"

namespace specula::engine {

class Engine;

// submit() refuses a request because the queue already holds queue_limit requests (or the
// scheduler is shutting down). A server answers 503 with Retry-After.
class QueueFullError : public Error {
 public:
  using Error::Error;
};

// Per-request callbacks. All of them run on the device thread, one request at a time, so one
// request's callbacks never run concurrently with each other -- except the report of a request
// cancelled while still queued, which runs on the thread that cancelled it (cancel() or
// shutdown()); that request never started, so nothing else runs for it. A callback that blocks
// blocks the device thread (and shutdown(), which joins it): keeping callbacks short and
// non-blocking is the caller's responsibility.
struct RequestCallbacks {
  // The request leaves the queue and starts: seconds it waited there.
  std::function<void(double queue_seconds)> on_start;
  // Each generated token as soon as it is chosen; return false to cancel the request.
  std::function<bool(int32_t)> on_token;
  // With GenerationRequest::logprobs: each token's log-probabilities, just before its on_token.
  std::function<void(const TokenLogprobs&)> on_logprobs;
  // Prompt tokens processed so far, total (long prompts).
  std::function<void(int64_t, int64_t)> on_prefill_progress;
  // The request ended: all its tokens, or a cancellation (finish_reason Cancelled; a request
  // cancelled in the queue gets a result with no tokens and prefill_ran false).
  std::function<void(const GenerationResult&)> on_finish;
  // The request failed (an exception in the decoder or in one of its callbacks): the message.
  // The scheduler goes on with the next request. Exceptions thrown by on_finish / on_error
  // themselves are swallowed (there is nobody left to report them to).
  std::function<void(const std::string&)> on_error;
};

// One submitted request: its state, and a way to wait for its end. Shared between the caller
// and the scheduler; safe to use from any thread.
class RequestHandle {
 public:
  enum class State { Queued, Running, Finished, Cancelled, Failed };

  uint64_t id() const { return id_; }
  State state() const;
  bool done() const;
  // Blocks until the request has ended and its on_finish / on_error callback has returned.
  void wait() const;
  // wait() with a limit; true when the request has ended.
  bool wait_for(double seconds) const;
  // After the end: the result (Finished, Cancelled) or the error message (Failed).
  std::optional<GenerationResult> result() const;
  std::string error() const;
  // Seconds from submit to start (0 until it starts) and from submit to its first token
  // (negative when none was produced).
  double queue_seconds() const;
  double time_to_first_token() const;

 private:
  friend class Scheduler;
  explicit RequestHandle(uint64_t id) : id_(id) {}
  const uint64_t id_;
  mutable std::mutex mutex_;
  mutable std::condition_variable done_cv_;
  State state_ = State::Queued;
  bool done_ = false;
  std::optional<GenerationResult> result_;
  std::string error_;
  double queue_seconds_ = 0.0, first_token_seconds_ = -1.0;
};

std::string_view request_state_name(RequestHandle::State state);

// Totals since construction, for metrics. A snapshot: every field is read under one lock, so
// the figures are consistent with each other. Once idle:
//   submitted == completed + failed + cancelled
// (rejected and invalid requests were never submitted).
struct SchedulerCounters {
  int64_t submitted = 0;  // accepted into the queue
  int64_t completed = 0;  // finished normally (stop token, length, context full)
  int64_t failed = 0;     // an exception on the device thread
  int64_t cancelled = 0;  // cancelled in the queue, while running, by on_token or by shutdown
  int64_t rejected = 0;   // refused at submit: queue full or shutting down (QueueFullError)
  int64_t invalid = 0;    // refused at submit: the request failed validation
  // Over requests that ran (completed, or cancelled while running):
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double queue_seconds = 0.0, prefill_seconds = 0.0, decode_seconds = 0.0;
  // Time to first token, from submit: sum and number of requests that produced a token.
  double first_token_seconds = 0.0;
  int64_t first_tokens = 0;
  // Speculative decoding: verification passes and accepted draft tokens, and a histogram of
  // accepted draft tokens per verification (accepted_per_verification[n] = passes that
  // accepted n tokens; sum of n * count == accepted_tokens). Empty without a draft head.
  int64_t verifications = 0, drafted_tokens = 0, accepted_tokens = 0;
  std::vector<int64_t> accepted_per_verification;
};

class Scheduler {
 public:
  // Makes the engine's decoder and starts the device thread. `queue_limit` (>= 1) is the most
  // requests that may wait (the running one is not counted). The engine must outlive the
  // scheduler and must not be used by anyone else meanwhile.
  Scheduler(Engine& engine, int64_t queue_limit);
  // shutdown(false).
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. Throws specula::Error (with the engine's message) when the request is
  // invalid, QueueFullError when the queue is full or the scheduler is shutting down.
  std::shared_ptr<RequestHandle> submit(GenerationRequest request, RequestCallbacks callbacks = {});
  // A queued request leaves the queue at once and is reported cancelled (on this thread). A
  // running one stops within one decode step: the token being chosen when cancel() is called may
  // still be streamed (at most one on_token call begins after cancel() returns), then on_finish
  // reports Cancelled. Returns false when the request had already ended (or is unknown).
  bool cancel(const std::shared_ptr<RequestHandle>& handle);
  // Requests waiting (not the running one).
  int64_t queue_depth() const;
  SchedulerCounters counters() const;
  int64_t queue_limit() const { return queue_limit_; }
  // Whether `request` runs on the speculative decoder: the engine has a draft head and the
  // request does not ask for logprobs (see the top of this file).
  bool speculates(const GenerationRequest& request) const;

  // Stops accepting requests, cancels the queued ones (reported on this thread), then lets the
  // running one finish (finish_running) or cancels it within one decode step, and joins the
  // device thread. Idempotent; safe from any thread. Called from one of the scheduler's own
  // callbacks it does not join (it cannot); the destructor must not run on the device thread.
  // It returns as soon as the running request reaches its next token, unless a callback blocks.
  void shutdown(bool finish_running);

  // Submits and waits; returns the result or throws specula::Error with the request's error
  // (QueueFullError when refused). For tests and simple callers.
  GenerationResult generate_blocking(GenerationRequest request);

 private:
  struct Entry;
  void device_loop();
  void run(Entry& entry);
  // Ends a request: counters, the user's callback, then the handle's state (so wait() returns
  // after the callback).
  void finish(Entry& entry, std::optional<GenerationResult> result, const std::string& error,
              const std::vector<int64_t>& accepted_hist);

  Engine& engine_;
  std::unique_ptr<Decoder> decoder_;  // make_decoder(engine): speculative with a draft head
  std::unique_ptr<Decoder> plain_;    // the plain Generator, for logprobs requests, when decoder_ is not one
  const int64_t queue_limit_;

  mutable std::mutex mutex_;  // queue, running_, flags, counters
  std::condition_variable work_cv_;
  std::deque<std::shared_ptr<Entry>> queue_;
  std::shared_ptr<Entry> running_;
  bool accepting_ = true;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  SchedulerCounters counters_;

  std::mutex join_mutex_;  // serialises the join between concurrent shutdown() calls
  std::thread thread_;
};

}  // namespace specula::engine
