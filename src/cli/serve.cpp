// `specula serve`: an OpenAI-compatible HTTP server over one model (issue 12, first version).
// Routes: POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with
// "stream": true), GET /v1/models, /health and /metrics (Prometheus). The request and response
// shapes live in specula/server (tested on strings); this file is only the glue between
// cpp-httplib's worker threads and the engine::Scheduler's one device thread: the scheduler's
// callbacks never block (they append to a per-request queue), and the HTTP thread that owns the
// connection waits on that queue and writes. A client that goes away cancels its generation, a
// full queue answers 503 with Retry-After, SIGINT/SIGTERM stop both cleanly (exit status 0).
#include "commands.h"

#ifndef SPECULA_WITH_HTTPLIB

#include "specula/core/error.h"

namespace specula::cli {
void add_serve_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (not in this build)");
  cmd->allow_extras();
  cmd->callback([] {
    SPECULA_CHECK(false, "this build of specula has no `serve`: cpp-httplib was not found when it was built "
                  "(install libcpp-httplib-dev, or run scripts/fetch-device-deps.sh, and rebuild)");
  });
}
}  // namespace specula::cli

#else

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <limits>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include <httplib.h>

#include "model_loading.h"
#include "options.h"
#include "specula/engine/limits.h"
#include "specula/engine/scheduler.h"
#include "specula/server/openai_request.h"
#include "specula/server/openai_response.h"
#include "specula/server/stop_matcher.h"

namespace specula::cli {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxBodyBytes = 4u << 20;

struct ServeArgs : EngineArgs {
  std::string model_dir, host = "127.0.0.1", api_key;
  int port = 8080;
  int64_t max_queue = 64;
};

// Equal strings, in time that depends only on their lengths (not on where they differ).
bool constant_time_equal(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i)
    diff |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string random_hex(size_t n) {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^ static_cast<uint64_t>(Clock::now().time_since_epoch().count())};
  static const char* digits = "0123456789abcdef";
  std::string s(n, '0');
  for (char& c : s) c = digits[rng() & 15];
  return s;
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = "", const std::string& code = "") {
  res.status = status;
  res.set_content(server::dump_json(server::error_json(message, type, param, code)), "application/json");
}

// What the device thread hands to the HTTP thread of a streaming request.
struct StreamState {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::string> events;  // SSE frames, ready to write
  bool done = false;
};

class Server {
 public:
  Server(const ServeArgs& args)
      : args_(args), tokenizer_(load_tokenizer(args.model_dir)), engine_(load_engine(args.model_dir, args)) {
    namespace fs = std::filesystem;
    fs::path p(args.model_dir);
    while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
    model_id_ = p.filename().string();
    // A tokenizer without the template's special tokens (a base model, the demo model): chat
    // still works, the template's markers are then plain text and only end-of-sequence stops it.
    chat_style_ = chat_style_of(args.model_dir, *engine_);
    try {
      check_chat_tokens(*chat_style_, tokenizer_, args.model_dir, "/v1/chat/completions");
    } catch (const Error& e) {
      std::fprintf(stderr, "warning: %s; chat renders the template's markers as plain text\n", e.what());
    }
    created_ = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch()).count();
    scheduler_ = std::make_unique<engine::Scheduler>(*engine_, args.max_queue);
    setup_routes();
  }

  // Binds, serves until stop(), then returns; false when the address cannot be bound.
  bool run() {
    if (!http_.bind_to_port(args_.host, args_.port)) {
      std::fprintf(stderr, "specula serve: cannot listen on %s:%d\n", args_.host.c_str(), args_.port);
      return false;
    }
    std::fprintf(stderr, "serving %s on http://%s:%d/v1 (queue %lld)\n", model_id_.c_str(), args_.host.c_str(),
                 args_.port, static_cast<long long>(args_.max_queue));
    http_.listen_after_bind();
    return true;
  }

  // From the signal thread: ends generations (so no handler waits on one), then the listener.
  void stop() {
    scheduler_->shutdown(false);
    http_.stop();
  }

  void shutdown_scheduler() { scheduler_->shutdown(false); }

 private:
  void count_error() {
    std::lock_guard lock(metrics_mutex_);
    ++metrics_.request_errors;
  }

  void setup_routes() {
    http_.set_payload_max_length(kMaxBodyBytes);
    http_.set_keep_alive_timeout(2);
    http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (args_.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
      if (constant_time_equal(req.get_header_value("Authorization"), "Bearer " + args_.api_key))
        return httplib::Server::HandlerResponse::Unhandled;
      count_error();
      res.set_header("WWW-Authenticate", "Bearer");
      send_error(res, 401, "Incorrect API key provided.", "invalid_request_error", "", "invalid_api_key");
      return httplib::Server::HandlerResponse::Handled;
    });
    // Statuses httplib sets itself (404 unknown route, 413 body too large, ...) get an error object.
    http_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413)
        send_error(res, 413, "Request body larger than " + std::to_string(kMaxBodyBytes) + " bytes.",
                   "invalid_request_error");
      else if (res.status == 404)
        send_error(res, 404, "Unknown route " + req.method + " " + req.path + ".", "invalid_request_error", "",
                   "unknown_url");
      else
        send_error(res, res.status, "HTTP error " + std::to_string(res.status) + ".", "invalid_request_error");
    });
    http_.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("{\"status\":\"ok\"}", "application/json");
    });
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      const json model = {{"id", model_id_}, {"object", "model"}, {"created", created_}, {"owned_by", "specula"}};
      res.set_content(server::dump_json({{"object", "list"}, {"data", json::array({model})}}), "application/json");
    });
    http_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      handle_completion(server::Endpoint::kChatCompletions, req, res);
    });
    http_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      handle_completion(server::Endpoint::kCompletions, req, res);
    });
  }

  std::string metrics_text() {
    server::ServerMetrics snapshot;
    {
      std::lock_guard lock(metrics_mutex_);
      snapshot = metrics_;
    }
    const engine::SchedulerCounters c = scheduler_->counters();
    auto d = [](int64_t v) { return static_cast<double>(v); };
    std::vector<server::MetricFamily> families = {
        {"specula_queue_depth", "Requests waiting for the device.", "gauge",
         {{{}, d(scheduler_->queue_depth())}}},
        {"specula_scheduler_requests_total", "Scheduler requests by outcome.", "counter",
         {{{{"outcome", "completed"}}, d(c.completed)},
          {{{"outcome", "cancelled"}}, d(c.cancelled)},
          {{{"outcome", "failed"}}, d(c.failed)},
          {{{"outcome", "rejected"}}, d(c.rejected)},
          {{{"outcome", "invalid"}}, d(c.invalid)}}},
        {"specula_spec_verifications_total", "Speculative verification passes.", "counter", {{{}, d(c.verifications)}}},
        {"specula_spec_drafted_tokens_total", "Draft tokens proposed.", "counter", {{{}, d(c.drafted_tokens)}}},
        {"specula_spec_accepted_tokens_total", "Draft tokens accepted.", "counter", {{{}, d(c.accepted_tokens)}}},
    };
    return server::prometheus_text(snapshot) + server::prometheus_text(families, {});
  }

  void handle_completion(server::Endpoint endpoint, const httplib::Request& req, httplib::Response& res) {
    const auto started = Clock::now();
    server::CompletionRequest request;
    try {
      request = server::parse_request(endpoint, req.body);
    } catch (const server::RequestError& e) {
      count_error();
      res.status = e.status();
      res.set_content(server::dump_json(server::error_json(e)), "application/json");
      return;
    }
    const bool chat = endpoint == server::Endpoint::kChatCompletions;
    if (!request.model.empty() && request.model != model_id_ && request.model != args_.model_dir) {
      count_error();
      return send_error(res, 404, "The model '" + request.model + "' does not exist (this server has '" +
                        model_id_ + "').", "invalid_request_error", "model", "model_not_found");
    }

    engine::GenerationRequest gen;
    gen.sampling = request.sampling;
    if (!request.seed_given)
      gen.sampling.seed = (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
    gen.stop_ids = engine_->config().eos_token_ids;
    if (chat) {
      // The rendered template is tokenized with special tokens parsed (its markers are special
      // tokens), so message text that spells one would forge turns: refuse it.
      for (size_t i = 0; i < request.messages.size(); ++i)
        for (int32_t id : tokenizer_.encode(request.messages[i].content, false, true))
          if (tokenizer_.is_special(id)) {
            count_error();
            return send_error(res, 400,
                              "Message text may not contain the special token '" + tokenizer_.id_to_token(id) +
                                  "' (it would be read as a chat-template marker).",
                              "invalid_request_error", "messages[" + std::to_string(i) + "].content", "");
          }
      std::vector<text::ChatMessage> messages;
      for (const auto& m : request.messages) messages.push_back({m.role, m.content});
      const std::string rendered = text::render_chat(*chat_style_, messages, true, true);
      gen.prompt = tokenizer_.encode(rendered, /*add_special_tokens=*/false, /*parse_special=*/true);
      add_chat_stop_ids(*chat_style_, tokenizer_, gen.stop_ids);
    } else {
      gen.prompt = tokenizer_.encode(request.prompt, /*add_special_tokens=*/true, /*parse_special=*/true);
    }
    const int64_t context = engine_->max_context();
    const int64_t prompt_tokens = static_cast<int64_t>(gen.prompt.size());
    if (prompt_tokens >= context) {
      count_error();
      return send_error(res, 400, "This model's maximum context length is " + std::to_string(context) +
                        " tokens; the prompt has " + std::to_string(prompt_tokens) + ".",
                        "invalid_request_error", chat ? "messages" : "prompt", "context_length_exceeded");
    }
    gen.max_new_tokens = request.max_tokens > 0 ? request.max_tokens : context - prompt_tokens;
    if (prompt_tokens + gen.max_new_tokens > context) {
      count_error();
      return send_error(res, 400, "This model's maximum context length is " + std::to_string(context) +
                        " tokens; the prompt has " + std::to_string(prompt_tokens) + " and max_tokens is " +
                        std::to_string(gen.max_new_tokens) + ".",
                        "invalid_request_error", "max_tokens", "context_length_exceeded");
    }

    server::ResponseMeta meta{(chat ? "chatcmpl-" : "cmpl-") + random_hex(24),
                              std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch()).count(),
                              request.model.empty() ? model_id_ : request.model};

    // Shared by the callbacks (device thread) and this thread; the callbacks may outlive the
    // handler only through these shared pointers.
    struct Shared {
      text::StreamDecoder decoder;
      server::StopMatcher matcher;
      std::string text;  // non-streaming: everything emitted
      std::shared_ptr<StreamState> stream;
      std::optional<engine::GenerationResult> result;
      std::string error;
    };
    auto shared = std::make_shared<Shared>(Shared{text::StreamDecoder(tokenizer_, true),
                                                  server::StopMatcher(request.stop), {}, nullptr, {}, {}});
    if (request.stream) shared->stream = std::make_shared<StreamState>();
    const bool include_usage = request.include_usage;

    auto emit = [shared, chat, meta, include_usage](const std::string& piece) {
      if (piece.empty()) return;
      if (!shared->stream) {
        shared->text += piece;
        return;
      }
      const json chunk = chat ? server::chat_chunk_content_json(meta, piece, nullptr, include_usage)
                              : server::text_chunk_json(meta, piece, nullptr, nullptr, include_usage);
      std::lock_guard lock(shared->stream->mutex);
      shared->stream->events.push_back(server::sse_event(chunk));
      shared->stream->cv.notify_all();
    };
    auto finish_reason = [shared]() {
      if (shared->matcher.stopped()) return server::FinishReason::kStop;
      const auto r = shared->result ? shared->result->finish_reason : engine::FinishReason::Length;
      return r == engine::FinishReason::Stop ? server::FinishReason::kStop : server::FinishReason::kLength;
    };

    engine::RequestCallbacks callbacks;
    callbacks.on_token = [shared, emit](int32_t id) {
      if (shared->matcher.stopped()) return false;
      emit(shared->matcher.push(shared->decoder.push(id)));
      return !shared->matcher.stopped();
    };
    callbacks.on_finish = [this, shared, emit, chat, meta, include_usage, finish_reason, started,
                           endpoint](const engine::GenerationResult& result) {
      shared->result = result;
      if (!shared->matcher.stopped()) emit(shared->matcher.push(shared->decoder.flush()));
      if (!shared->matcher.stopped()) emit(shared->matcher.flush());
      const server::Usage usage{result.prompt_tokens, static_cast<int64_t>(result.tokens.size())};
      {
        std::lock_guard lock(metrics_mutex_);
        ++(endpoint == server::Endpoint::kChatCompletions ? metrics_.chat_requests : metrics_.completion_requests);
        metrics_.prompt_tokens += static_cast<uint64_t>(result.prompt_tokens);
        metrics_.generated_tokens += result.tokens.size();
        metrics_.request_seconds.observe(std::chrono::duration<double>(Clock::now() - started).count());
      }
      if (!shared->stream) return;
      const server::FinishReason finish = finish_reason();
      std::lock_guard lock(shared->stream->mutex);
      auto& ev = shared->stream->events;
      if (chat) {
        ev.push_back(server::sse_event(server::chat_chunk_finish_json(meta, finish, include_usage)));
        if (include_usage) ev.push_back(server::sse_event(server::chat_chunk_usage_json(meta, usage)));
      } else {
        ev.push_back(server::sse_event(server::text_chunk_json(meta, "", &finish, nullptr, include_usage)));
        if (include_usage) ev.push_back(server::sse_event(server::text_chunk_usage_json(meta, usage)));
      }
      ev.push_back(server::sse_done());
      shared->stream->done = true;
      shared->stream->cv.notify_all();
    };
    callbacks.on_error = [this, shared](const std::string& message) {
      shared->error = message;
      count_error();
      if (!shared->stream) return;
      std::lock_guard lock(shared->stream->mutex);
      shared->stream->events.push_back(
          server::sse_event(server::error_json("generation failed: " + message, "server_error")));
      shared->stream->events.push_back(server::sse_done());
      shared->stream->done = true;
      shared->stream->cv.notify_all();
    };

    std::shared_ptr<engine::RequestHandle> handle;
    try {
      handle = scheduler_->submit(std::move(gen), std::move(callbacks));
    } catch (const engine::QueueFullError& e) {
      count_error();
      res.set_header("Retry-After", "1");
      return send_error(res, 503, std::string("The server is busy: ") + e.what(), "server_error", "",
                        "queue_full");
    } catch (const Error& e) {
      count_error();
      return send_error(res, 400, e.what(), "invalid_request_error");
    }
    {
      std::lock_guard lock(metrics_mutex_);
      ++metrics_.requests_running;
    }
    auto done_running = [this, handle]() {
      std::lock_guard lock(metrics_mutex_);
      --metrics_.requests_running;
      if (handle->time_to_first_token() >= 0) metrics_.first_token_seconds.observe(handle->time_to_first_token());
    };

    if (!request.stream) {
      handle->wait();
      done_running();
      if (!shared->error.empty() || !shared->result)
        return send_error(res, 500, "generation failed: " + (shared->error.empty() ? "cancelled" : shared->error),
                          "server_error");
      const engine::GenerationResult& r = *shared->result;
      if (r.finish_reason == engine::FinishReason::Cancelled && !shared->matcher.stopped())
        return send_error(res, 503, "The server is shutting down.", "server_error");
      const server::Usage usage{r.prompt_tokens, static_cast<int64_t>(r.tokens.size())};
      const json body = chat ? server::chat_completion_json(meta, shared->text, finish_reason(), usage)
                             : server::text_completion_json(meta, shared->text, finish_reason(), usage);
      res.set_content(server::dump_json(body), "application/json");
      return;
    }

    // Streaming: the first chat chunk carries the role; then whatever the device thread queued.
    if (chat) shared->stream->events.push_front(server::sse_event(server::chat_chunk_role_json(meta, include_usage)));
    auto state = shared->stream;
    auto* scheduler = scheduler_.get();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [state, handle, scheduler](size_t, httplib::DataSink& sink) {
          std::deque<std::string> batch;
          bool done = false;
          {
            std::unique_lock lock(state->mutex);
            state->cv.wait_for(lock, std::chrono::milliseconds(200),
                               [&] { return !state->events.empty() || state->done; });
            batch.swap(state->events);
            done = state->done;
          }
          for (const std::string& event : batch)
            if (!sink.write(event.data(), event.size())) {
              scheduler->cancel(handle);  // the client went away
              return false;
            }
          if (batch.empty() && sink.is_writable && !sink.is_writable()) {
            scheduler->cancel(handle);
            return false;
          }
          if (done) sink.done();
          return true;
        },
        [handle, scheduler, done_running](bool success) {
          if (!success) scheduler->cancel(handle);
          handle->wait();
          done_running();
        });
  }

  ServeArgs args_;
  text::Tokenizer tokenizer_;
  std::unique_ptr<engine::Engine> engine_;
  std::string model_id_;
  int64_t created_ = 0;
  std::optional<text::ChatStyle> chat_style_;
  std::unique_ptr<engine::Scheduler> scheduler_;
  httplib::Server http_;
  std::mutex metrics_mutex_;
  server::ServerMetrics metrics_;
};

void run_serve(const ServeArgs& a) {
  check_model_dir(a.model_dir);
  parse_device(a.device);
  if (!a.draft_dir.empty()) a.tree.validate();
  if (!is_loopback(a.host) && a.api_key.empty())
    std::fprintf(stderr, "warning: serving on %s without --api-key: anyone who can reach this address can use "
                 "the model\n", a.host.c_str());
  // SIGINT/SIGTERM go to one thread that stops the server; every other thread has them blocked
  // (the mask is inherited by the threads started below). A broken connection is an error
  // return, not a signal.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Server server(a);
  std::mutex stop_mutex;
  bool serving_ended = false;
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::lock_guard lock(stop_mutex);
    if (serving_ended) return;  // woken by run_serve itself
    std::fprintf(stderr, "specula serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    server.stop();
  });
  const bool ok = server.run();
  {
    std::lock_guard lock(stop_mutex);
    serving_ended = true;
  }
  pthread_kill(signal_thread.native_handle(), SIGTERM);  // ends the sigwait if no signal came
  signal_thread.join();
  server.shutdown_scheduler();
  SPECULA_CHECK(ok, "cannot listen on ", a.host, ":", a.port, " (is the port in use?)");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (/v1/chat/completions, "
                                              "/v1/completions, /v1/models, /health, /metrics)");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("-m,--model", a->model_dir, "Hugging Face model folder (config.json, weights, tokenizer.json)")
      ->required();
  cmd->add_option("--host", a->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", a->port, "TCP port")->capture_default_str()->check(int_in_range<int>(1, 65535));
  cmd->add_option("--api-key", a->api_key,
                  "Require 'Authorization: Bearer KEY' on every /v1 route (strongly advised off loopback)");
  cmd->add_option("--max-queue", a->max_queue, "Requests that may wait for the device; more get 503")
      ->capture_default_str()->check(int_in_range<int64_t>(1, 1 << 20));
  add_engine_options(cmd, *a);
  cmd->callback([a] { run_serve(*a); });
}

}  // namespace specula::cli

#endif  // SPECULA_WITH_HTTPLIB
