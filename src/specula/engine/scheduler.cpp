// Scheduler implementation: one mutex guards the queue, the running entry, the flags and the
// counters; the device thread waits on a condition variable for work. Cancellation of a running
// request is a per-entry atomic flag read by the on_token wrapper handed to the decoder, which
// both decoders check after every emitted token (GenerationCallbacks::on_token returning false),
// so a cancel takes effect within one decode step (one verification cycle when speculative).
// User callbacks never run under the scheduler's mutex, so they may call submit/cancel/counters.
#include "specula/engine/scheduler.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <utility>

#include "specula/engine/engine.h"

namespace specula::engine {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

struct Scheduler::Entry {
  std::shared_ptr<RequestHandle> handle;
  GenerationRequest request;
  RequestCallbacks callbacks;
  Clock::time_point submitted;
  std::atomic<bool> cancel{false};
  bool started = false;  // device thread only
};

// ---- RequestHandle ----

std::string_view request_state_name(RequestHandle::State state) {
  switch (state) {
    case RequestHandle::State::Queued: return "queued";
    case RequestHandle::State::Running: return "running";
    case RequestHandle::State::Finished: return "finished";
    case RequestHandle::State::Cancelled: return "cancelled";
    case RequestHandle::State::Failed: return "failed";
  }
  return "unknown";
}

RequestHandle::State RequestHandle::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

bool RequestHandle::done() const {
  std::lock_guard lock(mutex_);
  return done_;
}

void RequestHandle::wait() const {
  std::unique_lock lock(mutex_);
  done_cv_.wait(lock, [&] { return done_; });
}

bool RequestHandle::wait_for(double seconds) const {
  std::unique_lock lock(mutex_);
  return done_cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return done_; });
}

std::optional<GenerationResult> RequestHandle::result() const {
  std::lock_guard lock(mutex_);
  return result_;
}

std::string RequestHandle::error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

double RequestHandle::queue_seconds() const {
  std::lock_guard lock(mutex_);
  return queue_seconds_;
}

double RequestHandle::time_to_first_token() const {
  std::lock_guard lock(mutex_);
  return first_token_seconds_;
}

// ---- Scheduler ----

Scheduler::Scheduler(Engine& engine, int64_t queue_limit) : engine_(engine), queue_limit_(queue_limit) {
  SPECULA_CHECK(queue_limit >= 1, "the scheduler's queue limit must be at least 1, got ", queue_limit);
  decoder_ = make_decoder(engine_);
  if (engine_.draft() != nullptr) plain_ = std::make_unique<Generator>(engine_);
  thread_ = std::thread([this] { device_loop(); });
}

Scheduler::~Scheduler() { shutdown(false); }

std::shared_ptr<RequestHandle> Scheduler::submit(GenerationRequest request, RequestCallbacks callbacks) {
  // Validation reads only the engine's immutable configuration, so it is safe off the device thread.
  try {
    check_request(engine_, request);
    request.sampling.validate();
  } catch (...) {
    std::lock_guard lock(mutex_);
    ++counters_.invalid;
    throw;
  }
  auto entry = std::make_shared<Entry>();
  entry->request = std::move(request);
  entry->callbacks = std::move(callbacks);
  {
    std::lock_guard lock(mutex_);
    if (!accepting_) {
      ++counters_.rejected;
      throw QueueFullError("the scheduler is shutting down and accepts no requests");
    }
    if (static_cast<int64_t>(queue_.size()) >= queue_limit_) {
      ++counters_.rejected;
      throw QueueFullError(detail::concat("the request queue is full (", queue_limit_,
                                          " waiting); retry later"));
    }
    entry->handle = std::shared_ptr<RequestHandle>(new RequestHandle(next_id_++));
    entry->submitted = Clock::now();
    queue_.push_back(entry);
    ++counters_.submitted;
  }
  work_cv_.notify_one();
  return entry->handle;
}

bool Scheduler::cancel(const std::shared_ptr<RequestHandle>& handle) {
  if (!handle) return false;
  std::shared_ptr<Entry> removed;
  {
    std::lock_guard lock(mutex_);
    if (running_ && running_->handle == handle) {
      if (handle->done()) return false;  // ended, the device thread is about to drop it
      running_->cancel.store(true);
      return true;
    }
    auto it = std::find_if(queue_.begin(), queue_.end(), [&](const auto& e) { return e->handle == handle; });
    if (it == queue_.end()) return false;
    removed = *it;
    queue_.erase(it);
  }
  GenerationResult result;
  result.finish_reason = FinishReason::Cancelled;
  result.prompt_tokens = static_cast<int64_t>(removed->request.prompt.size());
  finish(*removed, std::move(result), "", {});
  return true;
}

bool Scheduler::speculates(const GenerationRequest& request) const { return plain_ && !request.logprobs; }

int64_t Scheduler::queue_depth() const {
  std::lock_guard lock(mutex_);
  return static_cast<int64_t>(queue_.size());
}

SchedulerCounters Scheduler::counters() const {
  std::lock_guard lock(mutex_);
  return counters_;
}

void Scheduler::shutdown(bool finish_running) {
  std::deque<std::shared_ptr<Entry>> dropped;
  {
    std::lock_guard lock(mutex_);
    accepting_ = false;
    stopping_ = true;
    dropped.swap(queue_);
    if (!finish_running && running_) running_->cancel.store(true);
  }
  work_cv_.notify_all();
  for (auto& e : dropped) {
    GenerationResult result;
    result.finish_reason = FinishReason::Cancelled;
    result.prompt_tokens = static_cast<int64_t>(e->request.prompt.size());
    finish(*e, std::move(result), "", {});
  }
  if (std::this_thread::get_id() == thread_.get_id()) return;  // from a callback: cannot join itself
  std::lock_guard join_lock(join_mutex_);
  if (thread_.joinable()) thread_.join();
}

GenerationResult Scheduler::generate_blocking(GenerationRequest request) {
  auto handle = submit(std::move(request));
  handle->wait();
  if (auto result = handle->result()) return *std::move(result);
  throw Error(handle->error());
}

void Scheduler::device_loop() {
  for (;;) {
    std::shared_ptr<Entry> entry;
    {
      std::unique_lock lock(mutex_);
      work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping: shutdown() took (and reports) whatever was queued
      entry = std::move(queue_.front());
      queue_.pop_front();
      running_ = entry;
    }
    run(*entry);
    std::lock_guard lock(mutex_);
    running_.reset();
  }
}

void Scheduler::run(Entry& entry) {
  const auto start = Clock::now();
  const double queue_seconds = seconds_between(entry.submitted, start);
  {
    std::lock_guard lock(entry.handle->mutex_);
    entry.handle->state_ = RequestHandle::State::Running;
    entry.handle->queue_seconds_ = queue_seconds;
  }
  std::optional<GenerationResult> result;
  std::string error;
  std::vector<int64_t> accepted_hist;
  try {
    if (entry.cancel.load()) {
      // Cancelled between leaving the queue and starting: nothing ran.
      GenerationResult r;
      r.finish_reason = FinishReason::Cancelled;
      r.prompt_tokens = static_cast<int64_t>(entry.request.prompt.size());
      result = std::move(r);
    } else {
      entry.started = true;
      if (entry.callbacks.on_start) entry.callbacks.on_start(queue_seconds);
      GenerationCallbacks gc;
      bool first = true;
      gc.on_token = [&](int32_t token) {
        if (first) {
          first = false;
          const double ttft = seconds_between(entry.submitted, Clock::now());
          std::lock_guard lock(entry.handle->mutex_);
          entry.handle->first_token_seconds_ = ttft;
        }
        // The token is already in the decoder's result, so it is streamed even when a cancel
        // arrived: the stream always equals the result's tokens.
        const bool keep = entry.callbacks.on_token ? entry.callbacks.on_token(token) : true;
        return keep && !entry.cancel.load();
      };
      if (entry.callbacks.on_prefill_progress) gc.on_prefill_progress = entry.callbacks.on_prefill_progress;
      if (entry.callbacks.on_logprobs) gc.on_logprobs = entry.callbacks.on_logprobs;
      gc.on_verification = [&](const spec::DraftTree&, std::span<const int32_t> accepted, int32_t) {
        const size_t n = accepted.size();
        if (accepted_hist.size() <= n) accepted_hist.resize(n + 1, 0);
        ++accepted_hist[n];
      };
      // A cancel that lands during prefill is seen at the first token.
      Decoder& decoder = plain_ && !speculates(entry.request) ? *plain_ : *decoder_;
      result = decoder.generate(entry.request, gc);
    }
  } catch (const std::exception& e) {
    result.reset();
    error = e.what();
    if (error.empty()) error = "request failed (exception without a message)";
  } catch (...) {
    result.reset();
    error = "request failed (unknown exception)";
  }
  finish(entry, std::move(result), error, accepted_hist);
}

void Scheduler::finish(Entry& entry, std::optional<GenerationResult> result, const std::string& error,
                       const std::vector<int64_t>& accepted_hist) {
  RequestHandle& h = *entry.handle;
  double ttft = -1.0;
  {
    std::lock_guard lock(h.mutex_);
    ttft = h.first_token_seconds_;
  }
  {
    std::lock_guard lock(mutex_);
    SchedulerCounters& c = counters_;
    if (!result) {
      ++c.failed;
    } else {
      if (result->finish_reason == FinishReason::Cancelled)
        ++c.cancelled;
      else
        ++c.completed;
      if (entry.started) {
        c.prompt_tokens += result->prompt_tokens;
        c.generated_tokens += static_cast<int64_t>(result->tokens.size());
        c.prefill_seconds += result->prefill_seconds;
        c.decode_seconds += result->decode_seconds;
        c.verifications += result->verifications;
        c.drafted_tokens += result->drafted_tokens;
        c.accepted_tokens += result->accepted_tokens;
        if (c.accepted_per_verification.size() < accepted_hist.size())
          c.accepted_per_verification.resize(accepted_hist.size(), 0);
        for (size_t i = 0; i < accepted_hist.size(); ++i) c.accepted_per_verification[i] += accepted_hist[i];
      }
    }
    if (entry.started) {
      std::lock_guard hlock(h.mutex_);
      c.queue_seconds += h.queue_seconds_;
    }
    if (ttft >= 0.0) {
      c.first_token_seconds += ttft;
      ++c.first_tokens;
    }
  }
  // The user's callback, then the handle: wait() returns only after the callback has run.
  try {
    if (result) {
      if (entry.callbacks.on_finish) entry.callbacks.on_finish(*result);
    } else if (entry.callbacks.on_error) {
      entry.callbacks.on_error(error);
    }
  } catch (...) {
    // Nobody left to report to (documented in RequestCallbacks).
  }
  {
    std::lock_guard lock(h.mutex_);
    if (result) {
      h.state_ = result->finish_reason == FinishReason::Cancelled ? RequestHandle::State::Cancelled
                                                                  : RequestHandle::State::Finished;
    } else {
      h.state_ = RequestHandle::State::Failed;
    }
    h.result_ = std::move(result);
    h.error_ = error;
    h.done_ = true;
  }
  h.done_cv_.notify_all();
}

}  // namespace specula::engine
