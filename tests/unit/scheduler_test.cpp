// engine::Scheduler on the CPU with the tiny fixture target (vocab 512), with and without its
// EAGLE draft head (every test runs for both, so the speculative decoder is exercised through the
// scheduler too). The claims: a scheduled request's result equals a direct decoder run of the
// same request (greedy and seeded sampling), alone or among 16 concurrent submitters; requests
// start in submission order; cancel works in the queue and while running (no token is streamed
// after cancel() returns when the device thread is held at a known token); a full queue and a bad
// request are refused at submit and the scheduler keeps serving; an exception in a callback is
// reported to that request only; shutdown with queued and running requests returns promptly; the
// counters add up. Blocking in tests uses gates with timeouts so a bug fails instead of hanging.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "specula/engine/scheduler.h"

namespace {

using namespace specula;
using engine::FinishReason;
using engine::GenerationRequest;
using engine::GenerationResult;
using engine::RequestCallbacks;
using engine::RequestHandle;
using engine::Scheduler;
const std::string kEagle = std::string(SPECULA_TEST_DATA) + "/eagle";

// One engine per kind for the whole suite: each request starts from KV row 0, so engines carry
// no state from one test to the next.
engine::Engine& shared_engine(bool with_draft) {
  static std::unique_ptr<engine::Engine> engines[2];
  auto& e = engines[with_draft ? 1 : 0];
  if (!e) {
    engine::EngineOptions o;
    o.model_dir = kEagle + "/target_llama3";
    if (with_draft) o.draft_dir = kEagle + "/head_llama_bin";
    o.threads = 2;
    o.max_context = 64;
    o.prefill_chunk = 32;
    o.tree = {4, 3, 16};
    e = engine::Engine::load(o);
  }
  return *e;
}

// Request i: its own prompt; even i greedy, odd i seeded sampling.
GenerationRequest request(int i, int64_t n = 12) {
  GenerationRequest r;
  r.prompt = {1, static_cast<int32_t>(17 + i), 250, static_cast<int32_t>(33 + 3 * i), 402, 7};
  r.max_new_tokens = n;
  if (i % 2 == 1) {
    r.sampling.temperature = 0.9f;
    r.sampling.top_p = 0.95f;
    r.sampling.seed = 100 + static_cast<uint64_t>(i);
  }
  return r;
}

void expect_same(const GenerationResult& got, const GenerationResult& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  EXPECT_EQ(got.finish_reason, want.finish_reason) << what;
  EXPECT_EQ(got.prompt_tokens, want.prompt_tokens) << what;
  EXPECT_EQ(got.verifications, want.verifications) << what;
  EXPECT_EQ(got.accepted_tokens, want.accepted_tokens) << what;
}

// A one-shot gate: wait() blocks until open() (or fails the test after a timeout).
class Gate {
 public:
  void open() {
    {
      std::lock_guard lock(m_);
      open_ = true;
    }
    cv_.notify_all();
  }
  bool wait(double seconds = 20.0) {
    std::unique_lock lock(m_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return open_; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
};

class SchedulerTest : public ::testing::TestWithParam<bool> {
 protected:
  engine::Engine& eng() { return shared_engine(GetParam()); }
  // The direct decoder's result (must be called while no scheduler owns the engine).
  GenerationResult direct(const GenerationRequest& r) { return engine::make_decoder(eng())->generate(r); }
};

TEST_P(SchedulerTest, ResultsEqualDirectDecoder) {
  std::vector<GenerationResult> want;
  for (int i = 0; i < 4; ++i) want.push_back(direct(request(i)));
  if (GetParam()) {
    EXPECT_GT(want[0].verifications, 0);  // the speculative decoder really ran
  }
  Scheduler s(eng(), 8);
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> streamed;
    double queue_seconds = -1;
    GenerationResult finished;
    RequestCallbacks cb;
    cb.on_start = [&](double q) { queue_seconds = q; };
    cb.on_token = [&](int32_t t) {
      streamed.push_back(t);
      return true;
    };
    cb.on_finish = [&](const GenerationResult& r) { finished = r; };
    auto h = s.submit(request(i), cb);
    h->wait();
    EXPECT_EQ(h->state(), RequestHandle::State::Finished);
    ASSERT_TRUE(h->result().has_value());
    expect_same(*h->result(), want[static_cast<size_t>(i)], "request " + std::to_string(i));
    expect_same(finished, want[static_cast<size_t>(i)], "on_finish " + std::to_string(i));
    EXPECT_EQ(streamed, want[static_cast<size_t>(i)].tokens);
    EXPECT_GE(queue_seconds, 0.0);
    EXPECT_GT(h->time_to_first_token(), 0.0);
    // generate_blocking gives the same.
    expect_same(s.generate_blocking(request(i)), want[static_cast<size_t>(i)], "blocking " + std::to_string(i));
  }
}

TEST_P(SchedulerTest, RunsInSubmissionOrder) {
  std::vector<GenerationResult> want;
  for (int i = 0; i < 6; ++i) want.push_back(direct(request(i, 6)));
  Scheduler s(eng(), 16);
  Gate gate;
  std::mutex m;
  std::vector<int> started;
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (int i = 0; i < 6; ++i) {
    RequestCallbacks cb;
    cb.on_start = [&, i](double) {
      if (i == 0) gate.wait();  // hold the device thread until everything is queued
      std::lock_guard lock(m);
      started.push_back(i);
    };
    handles.push_back(s.submit(request(i, 6), cb));
  }
  EXPECT_GE(s.queue_depth(), 5);
  gate.open();
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(handles[static_cast<size_t>(i)]->wait_for(60));
    expect_same(*handles[static_cast<size_t>(i)]->result(), want[static_cast<size_t>(i)], std::to_string(i));
  }
  EXPECT_EQ(started, (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(s.queue_depth(), 0);
  for (size_t i = 1; i < handles.size(); ++i) EXPECT_GT(handles[i]->id(), handles[i - 1]->id());
}

TEST_P(SchedulerTest, SixteenConcurrentSubmitters) {
  constexpr int kThreads = 16;
  std::vector<GenerationResult> want;
  for (int i = 0; i < kThreads; ++i) want.push_back(direct(request(i, 8)));
  Scheduler s(eng(), kThreads);
  std::vector<GenerationResult> got(kThreads);
  std::vector<std::vector<int32_t>> streamed(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> go{0};
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      go.fetch_add(1);
      while (go.load() < kThreads) std::this_thread::yield();
      RequestCallbacks cb;
      cb.on_token = [&, i](int32_t t) {
        streamed[static_cast<size_t>(i)].push_back(t);
        return true;
      };
      auto h = s.submit(request(i, 8), cb);
      h->wait();
      got[static_cast<size_t>(i)] = *h->result();
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    expect_same(got[static_cast<size_t>(i)], want[static_cast<size_t>(i)], "thread " + std::to_string(i));
    EXPECT_EQ(streamed[static_cast<size_t>(i)], want[static_cast<size_t>(i)].tokens);
  }
  const auto c = s.counters();
  EXPECT_EQ(c.submitted, kThreads);
  EXPECT_EQ(c.completed, kThreads);
  EXPECT_EQ(c.rejected, 0);
}

TEST_P(SchedulerTest, CancelWhileQueued) {
  const GenerationResult want_c = direct(request(2, 6));
  Scheduler s(eng(), 8);
  Gate gate, a_started;
  RequestCallbacks hold;
  hold.on_start = [&](double) {
    a_started.open();
    gate.wait();
  };
  auto a = s.submit(request(0, 6), hold);
  ASSERT_TRUE(a_started.wait());  // a is running, the queue is empty
  std::atomic<bool> b_started{false};
  std::atomic<int> b_finished{0};
  GenerationResult b_result;
  RequestCallbacks cb_b;
  cb_b.on_start = [&](double) { b_started = true; };
  cb_b.on_finish = [&](const GenerationResult& r) {
    b_result = r;
    ++b_finished;
  };
  auto b = s.submit(request(1, 6), cb_b);
  auto c = s.submit(request(2, 6));
  EXPECT_EQ(s.queue_depth(), 2);
  EXPECT_TRUE(s.cancel(b));
  // Removed at once, reported on this thread before cancel() returned.
  EXPECT_EQ(s.queue_depth(), 1);
  EXPECT_EQ(b_finished.load(), 1);
  EXPECT_EQ(b_result.finish_reason, FinishReason::Cancelled);
  EXPECT_TRUE(b_result.tokens.empty());
  EXPECT_TRUE(b->done());
  EXPECT_EQ(b->state(), RequestHandle::State::Cancelled);
  EXPECT_FALSE(s.cancel(b));  // already ended
  gate.open();
  ASSERT_TRUE(c->wait_for(60));
  ASSERT_TRUE(a->wait_for(60));
  expect_same(*c->result(), want_c, "request after the cancelled one");
  EXPECT_FALSE(b_started.load());
  const auto k = s.counters();
  EXPECT_EQ(k.cancelled, 1);
  EXPECT_EQ(k.completed, 2);
}

TEST_P(SchedulerTest, CancelWhileRunningStopsWithinOneStep) {
  const GenerationResult want_next = direct(request(3, 6));
  Scheduler s(eng(), 8);
  // Deterministic: the device thread is held inside on_token of the 3rd token while cancel() runs.
  Gate reached, cancelled;
  std::atomic<int> tokens{0}, after_cancel{0};
  std::atomic<bool> cancel_returned{false};
  RequestCallbacks cb;
  cb.on_token = [&](int32_t) {
    if (cancel_returned.load()) ++after_cancel;
    if (++tokens == 3) {
      reached.open();
      cancelled.wait();
    }
    return true;
  };
  auto h = s.submit(request(0, 50), cb);
  ASSERT_TRUE(reached.wait());
  EXPECT_EQ(h->state(), RequestHandle::State::Running);
  EXPECT_TRUE(s.cancel(h));
  cancel_returned = true;
  cancelled.open();
  ASSERT_TRUE(h->wait_for(60));
  EXPECT_EQ(h->state(), RequestHandle::State::Cancelled);
  EXPECT_EQ(after_cancel.load(), 0);
  EXPECT_EQ(tokens.load(), 3);
  EXPECT_EQ(h->result()->finish_reason, FinishReason::Cancelled);
  EXPECT_EQ(h->result()->tokens.size(), 3u);  // the stream equals the result

  // Undirected: cancel from another thread at some point after the first token; at most one
  // on_token call may begin after cancel() returns (the token already chosen).
  Gate first;
  std::atomic<int> n{0}, late{0};
  std::atomic<bool> done_cancel{false};
  RequestCallbacks cb2;
  cb2.on_token = [&](int32_t) {
    if (done_cancel.load()) ++late;
    if (++n == 1) first.open();
    return true;
  };
  auto h2 = s.submit(request(1, 50), cb2);
  ASSERT_TRUE(first.wait());
  s.cancel(h2);
  done_cancel = true;
  ASSERT_TRUE(h2->wait_for(60));
  EXPECT_LE(late.load(), 1);
  const GenerationResult r2 = *h2->result();
  EXPECT_EQ(static_cast<int>(r2.tokens.size()), n.load());
  // Either it ended on its own before the cancel or the cancel stopped it.
  EXPECT_TRUE(r2.finish_reason == FinishReason::Cancelled || r2.tokens.size() < 50u);

  // The scheduler goes on.
  expect_same(s.generate_blocking(request(3, 6)), want_next, "after cancels");
  // on_token returning false cancels too.
  RequestCallbacks stop_at_2;
  std::atomic<int> m{0};
  stop_at_2.on_token = [&](int32_t) { return ++m < 2; };
  auto h3 = s.submit(request(0, 50), stop_at_2);
  h3->wait();
  EXPECT_EQ(h3->result()->finish_reason, FinishReason::Cancelled);
  EXPECT_EQ(h3->result()->tokens.size(), 2u);
  EXPECT_EQ(s.counters().cancelled, r2.finish_reason == FinishReason::Cancelled ? 3 : 2);
}

TEST_P(SchedulerTest, FullQueueRejects) {
  Scheduler s(eng(), 2);
  Gate gate, started;
  RequestCallbacks hold;
  hold.on_start = [&](double) {
    started.open();
    gate.wait();
  };
  auto a = s.submit(request(0, 4), hold);
  ASSERT_TRUE(started.wait());  // a is running, the queue is empty
  auto b = s.submit(request(1, 4));
  auto c = s.submit(request(2, 4));
  EXPECT_EQ(s.queue_depth(), 2);
  EXPECT_THROW(s.submit(request(3, 4)), engine::QueueFullError);
  try {
    s.submit(request(3, 4));
    ADD_FAILURE() << "no exception";
  } catch (const engine::QueueFullError& e) {
    EXPECT_NE(std::string(e.what()).find("queue is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(s.counters().rejected, 2);
  gate.open();
  for (auto& h : {a, b, c}) {
    ASSERT_TRUE(h->wait_for(60));
    EXPECT_EQ(h->state(), RequestHandle::State::Finished);
  }
  // Room again.
  EXPECT_EQ(s.generate_blocking(request(3, 4)).tokens.size(), 4u);
}

std::string engine_message(engine::Engine& e, const GenerationRequest& r) {
  try {
    engine::check_request(e, r);
  } catch (const std::exception& x) {
    return x.what();
  }
  return "";
}

TEST_P(SchedulerTest, BadRequestFailsAtSubmit) {
  GenerationRequest out_of_range = request(0);
  out_of_range.prompt[2] = 512;  // vocab is 512
  GenerationRequest empty = request(0);
  empty.prompt.clear();
  GenerationRequest bad_sampling = request(0);
  bad_sampling.sampling.top_p = 1.5f;
  const std::string m1 = engine_message(eng(), out_of_range), m2 = engine_message(eng(), empty);
  ASSERT_NE(m1.find("outside the model's vocabulary"), std::string::npos) << m1;
  ASSERT_NE(m2.find("empty"), std::string::npos) << m2;
  const GenerationResult want = direct(request(1));
  Scheduler s(eng(), 4);
  std::atomic<int> callbacks{0};
  RequestCallbacks cb;
  cb.on_start = [&](double) { ++callbacks; };
  cb.on_error = [&](const std::string&) { ++callbacks; };
  for (const auto& [req, msg] : {std::pair{out_of_range, m1}, std::pair{empty, m2}}) {
    try {
      s.submit(req, cb);
      ADD_FAILURE() << "accepted a bad request";
    } catch (const engine::QueueFullError&) {
      ADD_FAILURE() << "wrong exception type";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), msg);
    }
  }
  EXPECT_THROW(s.submit(bad_sampling, cb), Error);
  EXPECT_EQ(s.queue_depth(), 0);
  expect_same(s.generate_blocking(request(1)), want, "after bad requests");
  EXPECT_EQ(callbacks.load(), 0);
  const auto c = s.counters();
  EXPECT_EQ(c.invalid, 3);
  EXPECT_EQ(c.submitted, 1);
  EXPECT_EQ(c.completed, 1);
}

TEST_P(SchedulerTest, CallbackExceptionIsReportedAndNextRequestRuns) {
  const GenerationResult want = direct(request(2, 6));
  Scheduler s(eng(), 8);
  std::string err1, err2;
  RequestCallbacks throws_token;
  throws_token.on_token = [](int32_t) -> bool { throw std::runtime_error("client went away"); };
  throws_token.on_error = [&](const std::string& m) { err1 = m; };
  RequestCallbacks throws_start;
  throws_start.on_start = [](double) { throw std::runtime_error("no start"); };
  throws_start.on_error = [&](const std::string& m) { err2 = m; };
  RequestCallbacks throws_finish;  // swallowed: nobody to report to
  throws_finish.on_finish = [](const GenerationResult&) { throw std::runtime_error("late"); };
  auto a = s.submit(request(0, 6), throws_token);
  auto b = s.submit(request(1, 6), throws_start);
  auto c = s.submit(request(2, 6), throws_finish);
  auto d = s.submit(request(2, 6));
  for (auto& h : {a, b, c, d}) ASSERT_TRUE(h->wait_for(60));
  EXPECT_EQ(a->state(), RequestHandle::State::Failed);
  EXPECT_EQ(a->error(), "client went away");
  EXPECT_EQ(err1, "client went away");
  EXPECT_EQ(b->state(), RequestHandle::State::Failed);
  EXPECT_EQ(err2, "no start");
  EXPECT_FALSE(a->result().has_value());
  EXPECT_EQ(c->state(), RequestHandle::State::Finished);
  expect_same(*c->result(), want, "finish callback threw");
  expect_same(*d->result(), want, "after failures");
  // generate_blocking turns a failure into an exception... (none here) and still works.
  expect_same(s.generate_blocking(request(2, 6)), want, "blocking after failures");
  const auto k = s.counters();
  EXPECT_EQ(k.failed, 2);
  EXPECT_EQ(k.completed, 3);
}

TEST_P(SchedulerTest, ShutdownWithQueuedAndRunningIsPrompt) {
  for (bool finish_running : {false, true}) {
    SCOPED_TRACE(finish_running ? "finish running" : "cancel running");
    const GenerationResult want_a = direct(request(0, 20));
    auto s = std::make_unique<Scheduler>(eng(), 8);
    Gate reached, release;
    std::atomic<int> queued_reports{0};
    RequestCallbacks hold;
    hold.on_token = [&](int32_t) {
      reached.open();
      release.wait();
      return true;
    };
    auto a = s->submit(request(0, 20), hold);
    RequestCallbacks queued;
    queued.on_finish = [&](const GenerationResult& r) {
      EXPECT_EQ(r.finish_reason, FinishReason::Cancelled);
      ++queued_reports;
    };
    auto b = s->submit(request(1, 20), queued);
    auto c = s->submit(request(2, 20), queued);
    ASSERT_TRUE(reached.wait());
    auto done = std::async(std::launch::async, [&] { s->shutdown(finish_running); });
    // The queued ones are reported while the running one is still held.
    ASSERT_TRUE(b->wait_for(20));
    ASSERT_TRUE(c->wait_for(20));
    EXPECT_EQ(queued_reports.load(), 2);
    EXPECT_EQ(b->state(), RequestHandle::State::Cancelled);
    EXPECT_THROW(s->submit(request(3)), engine::QueueFullError);
    EXPECT_FALSE(a->done());
    const auto t0 = std::chrono::steady_clock::now();
    release.open();
    ASSERT_EQ(done.wait_for(std::chrono::seconds(20)), std::future_status::ready);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(took, 5.0);
    ASSERT_TRUE(a->done());
    if (finish_running) {
      expect_same(*a->result(), want_a, "finished at shutdown");
    } else {
      EXPECT_EQ(a->result()->finish_reason, FinishReason::Cancelled);
      EXPECT_EQ(a->result()->tokens.size(), 1u);  // held at its first token
    }
    const auto k = s->counters();
    EXPECT_EQ(k.submitted, 3);
    EXPECT_EQ(k.submitted, k.completed + k.failed + k.cancelled);
    EXPECT_EQ(k.cancelled, finish_running ? 2 : 3);
    EXPECT_EQ(k.rejected, 1);
    EXPECT_EQ(k.prompt_tokens, 6);  // only the request that ran
    s->shutdown(true);              // idempotent
    s.reset();
  }
  // The destructor with queued requests and a running one returns promptly.
  const auto t0 = std::chrono::steady_clock::now();
  {
    Scheduler s(eng(), 8);
    for (int i = 0; i < 6; ++i) s.submit(request(i, 50));
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
}

TEST_P(SchedulerTest, CountersAddUp) {
  Scheduler s(eng(), 16);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (int i = 0; i < 6; ++i) handles.push_back(s.submit(request(i, 10)));
  RequestCallbacks fail;
  fail.on_start = [](double) { throw std::runtime_error("x"); };
  handles.push_back(s.submit(request(6), fail));
  RequestCallbacks stop;
  stop.on_token = [](int32_t) { return false; };
  handles.push_back(s.submit(request(7), stop));
  GenerationRequest zero = request(8, 0);
  handles.push_back(s.submit(zero));
  int64_t prompt = 0, generated = 0, verifications = 0, accepted = 0, with_tokens = 0;
  double prefill = 0, decode = 0;
  for (auto& h : handles) {
    ASSERT_TRUE(h->wait_for(60));
    if (auto r = h->result()) {
      prompt += r->prompt_tokens;
      generated += static_cast<int64_t>(r->tokens.size());
      verifications += r->verifications;
      accepted += r->accepted_tokens;
      prefill += r->prefill_seconds;
      decode += r->decode_seconds;
      if (!r->tokens.empty()) ++with_tokens;
    }
  }
  const auto c = s.counters();
  EXPECT_EQ(c.submitted, 9);
  EXPECT_EQ(c.completed, 7);
  EXPECT_EQ(c.failed, 1);
  EXPECT_EQ(c.cancelled, 1);
  EXPECT_EQ(c.submitted, c.completed + c.failed + c.cancelled);
  EXPECT_EQ(c.prompt_tokens, prompt);
  EXPECT_EQ(c.generated_tokens, generated);
  EXPECT_EQ(c.generated_tokens, 6 * 10 + 1);
  EXPECT_DOUBLE_EQ(c.prefill_seconds, prefill);
  EXPECT_DOUBLE_EQ(c.decode_seconds, decode);
  EXPECT_EQ(c.first_tokens, with_tokens);
  EXPECT_GT(c.first_token_seconds, 0.0);
  EXPECT_EQ(c.verifications, verifications);
  EXPECT_EQ(c.accepted_tokens, accepted);
  int64_t hist_passes = 0, hist_accepted = 0;
  for (size_t n = 0; n < c.accepted_per_verification.size(); ++n) {
    hist_passes += c.accepted_per_verification[n];
    hist_accepted += static_cast<int64_t>(n) * c.accepted_per_verification[n];
  }
  EXPECT_EQ(hist_passes, c.verifications);
  EXPECT_EQ(hist_accepted, c.accepted_tokens);
  if (GetParam()) {
    EXPECT_GT(c.verifications, 0);
  } else {
    EXPECT_EQ(c.verifications, 0);
    EXPECT_TRUE(c.accepted_per_verification.empty());
  }
  EXPECT_EQ(s.queue_depth(), 0);
}

INSTANTIATE_TEST_SUITE_P(Decoders, SchedulerTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Speculative" : "Plain"; });

TEST(Scheduler, QueueLimitMustBePositive) {
  EXPECT_THROW(Scheduler(shared_engine(false), 0), Error);
}

}  // namespace
