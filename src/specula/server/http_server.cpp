// HttpServer over cpp-httplib (see http_server.h). One handler per route; a completion request
// is parsed (openai_request), checked against the model, submitted to the scheduler with
// callbacks that turn tokens into text (StreamDecoder, StopMatcher) and queue it for the HTTP
// thread, which writes the JSON body or the SSE stream.
//
// A client that goes away cancels its generation, streaming or not. cpp-httplib 0.11 has no
// is_connection_closed() and a write to a closed socket can still succeed once, so the handler
// finds its connection's socket (connection_socket: the descriptor whose two endpoints are the
// request's) and, while it waits for the device thread, polls it every kWatchSeconds for a hang-up
// (POLLRDHUP/POLLHUP/POLLERR), reading nothing. A cancel then stops the generation within one
// decode step. A client that half-closes its side after sending the request (shutdown(SHUT_WR))
// looks the same as one that left; HTTP clients do not do that.
//
// Time limits: the same wait loops watch the request's deadline (request_timeout_seconds from
// submission, queue wait included). Past it the generation is cancelled; a non-streaming request
// gets 408, a stream (whose 200 is long sent) a last {"error": ...} event and data: [DONE] -- the
// shape OpenAI's SDKs raise as an error mid-stream. Request bodies are read through a content
// reader that enforces read_timeout_seconds on the whole body, on top of httplib's per-read
// timeout (set to the same value), so a client trickling its body cannot hold a worker.
//
// Workers: httplib's pool has max_queue + kSpareWorkers threads, so that requests wait in the
// scheduler's queue (where a full queue answers 503) rather than unseen in httplib's.
#include "specula/server/http_server.h"

#include "specula/core/error.h"

#ifndef SPECULA_WITH_HTTPLIB

namespace specula::server {

struct HttpServer::Impl {};

HttpServer::HttpServer(ServedModel, HttpServerOptions) {
  fail("this build of specula has no HTTP server: cpp-httplib was not found when it was built (install "
       "libcpp-httplib-dev, or run scripts/fetch-device-deps.sh, and rebuild)");
}
HttpServer::~HttpServer() = default;
bool HttpServer::bind() { return false; }
int HttpServer::port() const { return 0; }
void HttpServer::serve() {}
void HttpServer::stop() {}
engine::Scheduler& HttpServer::scheduler() { fail("no HTTP server in this build"); }

bool is_loopback_host(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace specula::server

#else

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <deque>
#include <mutex>
#include <optional>
#include <random>

#include <httplib.h>

#include "specula/engine/engine.h"
#include "specula/engine/scheduler.h"
#include "specula/server/openai_request.h"
#include "specula/server/openai_response.h"
#include "specula/server/stop_matcher.h"
#include "specula/text/tokenizer.h"
#include "chat_page_html.h"  // generated at build time from chat_page.html (cmake/embed_file.cmake)

namespace specula::server {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Equal strings, in time that depends only on their lengths (not on where they differ).
bool constant_time_equal(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i)
    diff |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
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
  res.set_content(dump_json(error_json(message, type, param, code)), "application/json");
}

// How often a waiting handler looks at its connection and its deadline.
constexpr double kWatchSeconds = 0.02;
// HTTP workers beyond the queue's requests: the running request, /metrics, /health, refusals.
constexpr int64_t kSpareWorkers = 8;

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// "address port" of a socket address, written as cpp-httplib writes Request::remote_addr and
// local_addr (numeric host).
bool endpoint_of(const sockaddr_storage& addr, socklen_t len, std::string& host, int& port) {
  char h[NI_MAXHOST], p[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, h, sizeof h, p, sizeof p,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  host = h;
  port = std::atoi(p);
  return true;
}

// The descriptor of the connection `req` arrived on (see the top of this file), or -1. The
// handler runs while httplib holds the connection open, so the descriptor found stays this
// connection's until the handler returns.
int connection_socket(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (const dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0') continue;
    struct stat st;
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{}, local{};
    socklen_t peer_len = sizeof peer, local_len = sizeof local;
    std::string peer_host, local_host;
    int peer_port = -1, local_port = -1;
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0 ||
        !endpoint_of(peer, peer_len, peer_host, peer_port) || !endpoint_of(local, local_len, local_host, local_port))
      continue;
    if (peer_port == req.remote_port && local_port == req.local_port && peer_host == req.remote_addr &&
        local_host == req.local_addr) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
  return found;
}

// The client hung up (or the connection broke). Reads nothing; false for -1.
bool client_gone(int sock) {
  if (sock < 0) return false;
  pollfd p{sock, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

// Code points of UTF-8 text (lead bytes), as completion_logprobs_json counts text offsets.
int64_t code_points(const std::string& text) {
  int64_t n = 0;
  for (char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

TokenLogprob to_response_logprob(const engine::TokenLogprobs& lp, const text::Tokenizer& tokenizer) {
  TokenLogprob out{tokenizer.token_bytes(lp.token), lp.logprob, {}};
  for (const auto& alt : lp.top) out.top.push_back({tokenizer.token_bytes(alt.token), alt.logprob});
  return out;
}

// What the device thread hands to the HTTP thread of a streaming request.
struct StreamState {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::string> events;  // SSE frames, ready to write
  bool done = false;    // the last frame (data: [DONE]) is queued
  bool closed = false;  // the HTTP thread ended the stream itself (time limit): queue nothing more

  // Queues frames unless the stream was closed; `last`: they end it.
  void push(std::initializer_list<std::string> frames, bool last = false) {
    std::lock_guard lock(mutex);
    if (closed) return;
    events.insert(events.end(), frames.begin(), frames.end());
    done = done || last;
    cv.notify_all();
  }
};

}  // namespace

bool is_loopback_host(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

struct HttpServer::Impl {
  Impl(ServedModel model, HttpServerOptions options) : model_(std::move(model)), options_(std::move(options)) {
    SPECULA_CHECK(model_.engine != nullptr && model_.tokenizer != nullptr, "HttpServer: no engine or tokenizer");
    SPECULA_CHECK(options_.request_timeout_seconds >= 0, "the request timeout must not be negative, got ",
                  options_.request_timeout_seconds);
    SPECULA_CHECK(options_.read_timeout_seconds > 0, "the read timeout must be positive, got ",
                  options_.read_timeout_seconds);
    created_ = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch()).count();
    scheduler_ = std::make_unique<engine::Scheduler>(*model_.engine, options_.max_queue);
    setup_routes();
  }

  void count_error() {
    std::lock_guard lock(metrics_mutex_);
    ++metrics_.request_errors;
  }

  void count_timeout() {
    std::lock_guard lock(metrics_mutex_);
    ++metrics_.request_errors;
    ++metrics_.request_timeouts;
  }

  // The body of a POST through its content reader, within the read time limit. False (with the
  // response set) when it is too large (413), too slow (408) or broken (400).
  bool read_body(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader,
                 std::string& body) {
    const auto start = Clock::now();
    const auto limit = std::chrono::duration<double>(options_.read_timeout_seconds);
    bool late = false;
    const bool ok = reader([&](const char* data, size_t size) {
      if (Clock::now() - start > limit) {
        late = true;
        return false;
      }
      body.append(data, size);
      return true;
    });
    if (ok) return true;
    if (res.status == 413) {
      count_error();
      send_error(res, 413, "Request body larger than " + std::to_string(options_.max_body_bytes) + " bytes.",
                 "invalid_request_error");
    } else if (late || Clock::now() - start >= limit) {
      count_timeout();
      send_error(res, 408, "The request body did not arrive within the server's read limit of " +
                           seconds_text(options_.read_timeout_seconds) + " s.",
                 "invalid_request_error", "", "request_timeout");
    } else {
      count_error();
      send_error(res, 400, "The request body could not be read.", "invalid_request_error");
    }
    // httplib 0.11 still waits up to the keep-alive timeout (2 s) for another request on this
    // connection before it closes it.
    res.set_header("Connection", "close");
    return false;
  }

  void setup_routes() {
    http_.set_payload_max_length(options_.max_body_bytes);
    http_.set_keep_alive_timeout(2);
    const auto read_timeout = std::chrono::duration<double>(options_.read_timeout_seconds);
    const auto read_sec = std::chrono::duration_cast<std::chrono::seconds>(read_timeout);
    const auto read_usec = std::chrono::duration_cast<std::chrono::microseconds>(read_timeout - read_sec);
    http_.set_read_timeout(read_sec.count(), read_usec.count());
    const size_t workers = static_cast<size_t>(std::min<int64_t>(options_.max_queue, 1024) + kSpareWorkers);
    http_.new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
    http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (options_.api_key.empty() || req.path.rfind("/v1/", 0) != 0) return httplib::Server::HandlerResponse::Unhandled;
      if (constant_time_equal(req.get_header_value("Authorization"), "Bearer " + options_.api_key))
        return httplib::Server::HandlerResponse::Unhandled;
      count_error();
      res.set_header("WWW-Authenticate", "Bearer");
      send_error(res, 401, "Incorrect API key provided.", "invalid_request_error", "", "invalid_api_key");
      return httplib::Server::HandlerResponse::Handled;
    });
    // Statuses httplib sets itself (404 unknown route, 413 body too large, ...) get an error object.
    http_.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413)
        send_error(res, 413, "Request body larger than " + std::to_string(options_.max_body_bytes) + " bytes.",
                   "invalid_request_error");
      else if (res.status == 404)
        send_error(res, 404, "Unknown route " + req.method + " " + req.path + ".", "invalid_request_error", "",
                   "unknown_url");
      else
        send_error(res, res.status, "HTTP error " + std::to_string(res.status) + ".", "invalid_request_error");
    });
    http_.Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_header("Content-Security-Policy",
                     "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'");
      res.set_header("X-Content-Type-Options", "nosniff");
      res.set_content(reinterpret_cast<const char*>(kChatPageHtml), kChatPageHtmlSize, "text/html; charset=utf-8");
    });
    http_.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("{\"status\":\"ok\"}", "application/json");
    });
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4");
    });
    http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      const json model = {{"id", model_.id}, {"object", "model"}, {"created", created_}, {"owned_by", "specula"}};
      res.set_content(dump_json({{"object", "list"}, {"data", json::array({model})}}), "application/json");
    });
    for (const auto& [path, endpoint] : {std::pair{"/v1/chat/completions", Endpoint::kChatCompletions},
                                         std::pair{"/v1/completions", Endpoint::kCompletions}}) {
      const Endpoint e = endpoint;
      http_.Post(path, [this, e](const httplib::Request& req, httplib::Response& res,
                                 const httplib::ContentReader& reader) {
        std::string body;
        if (read_body(req, res, reader, body)) handle_completion(e, req, body, res);
      });
    }
  }

  std::string metrics_text() {
    ServerMetrics snapshot;
    {
      std::lock_guard lock(metrics_mutex_);
      snapshot = metrics_;
    }
    const engine::SchedulerCounters c = scheduler_->counters();
    auto d = [](int64_t v) { return static_cast<double>(v); };
    std::vector<MetricFamily> families = {
        {"specula_queue_depth", "Requests waiting for the device.", "gauge",
         {{{}, d(scheduler_->queue_depth())}}},
        {"specula_scheduler_requests_total", "Scheduler requests by outcome.", "counter",
         {{{{"outcome", "completed"}}, d(c.completed)},
          {{{"outcome", "cancelled"}}, d(c.cancelled)},
          {{{"outcome", "failed"}}, d(c.failed)},
          {{{"outcome", "rejected"}}, d(c.rejected)},
          {{{"outcome", "invalid"}}, d(c.invalid)}}},
        {"specula_prefill_seconds_total", "Device time spent on prompts (until each first token).", "counter",
         {{{}, c.prefill_seconds}}},
        {"specula_decode_seconds_total", "Device time spent generating after each first token.", "counter",
         {{{}, c.decode_seconds}}},
        // Averages since start, for a glance; rate(tokens) / rate(seconds) gives windows.
        {"specula_prefill_tokens_per_second", "Prompt tokens per second of prefill, since start.", "gauge",
         {{{}, c.prefill_seconds > 0 ? d(c.prompt_tokens) / c.prefill_seconds : 0.0}}},
        {"specula_decode_tokens_per_second", "Generated tokens (after each first) per second of decode, since start.",
         "gauge",
         {{{}, c.decode_seconds > 0 ? d(c.generated_tokens - c.first_tokens) / c.decode_seconds : 0.0}}},
        {"specula_spec_verifications_total", "Speculative verification passes.", "counter", {{{}, d(c.verifications)}}},
        {"specula_spec_drafted_tokens_total", "Draft tokens proposed.", "counter", {{{}, d(c.drafted_tokens)}}},
        {"specula_spec_accepted_tokens_total", "Draft tokens accepted.", "counter", {{{}, d(c.accepted_tokens)}}},
    };
    std::vector<Histogram> histograms;
    if (model_.engine->draft() != nullptr) {
      const int depth = model_.engine->options().tree.depth;
      // Draft tokens accepted per verification pass: buckets 0..depth (a pass accepts at most
      // the tree's depth), fixed for the server's life as Prometheus wants.
      Histogram h("specula_spec_accepted_tokens_per_verification", "Draft tokens accepted per verification pass.",
                  {});
      for (int n = 0; n <= depth; ++n) h.upper_bounds.push_back(n);
      h.counts.assign(h.upper_bounds.size() + 1, 0);
      for (size_t n = 0; n < c.accepted_per_verification.size(); ++n) {
        const size_t bucket = std::min(n, h.upper_bounds.size());
        h.counts[bucket] += static_cast<uint64_t>(c.accepted_per_verification[n]);
        h.count += static_cast<uint64_t>(c.accepted_per_verification[n]);
        h.sum += static_cast<double>(n) * static_cast<double>(c.accepted_per_verification[n]);
      }
      histograms.push_back(std::move(h));
    }
    return prometheus_text(snapshot) + prometheus_text(families, histograms);
  }

  void handle_completion(Endpoint endpoint, const httplib::Request& req, const std::string& body,
                         httplib::Response& res) {
    const auto started = Clock::now();
    CompletionRequest request;
    try {
      request = parse_request(endpoint, body);
    } catch (const RequestError& e) {
      count_error();
      res.status = e.status();
      res.set_content(dump_json(error_json(e)), "application/json");
      return;
    }
    const bool chat = endpoint == Endpoint::kChatCompletions;
    if (!request.model.empty() && request.model != model_.id && request.model != model_.alias) {
      count_error();
      return send_error(res, 404, "The model '" + request.model + "' does not exist (this server has '" +
                        model_.id + "').", "invalid_request_error", "model", "model_not_found");
    }

    const text::Tokenizer& tokenizer = *model_.tokenizer;
    engine::GenerationRequest gen;
    gen.sampling = request.sampling;
    if (!request.seed_given)
      gen.sampling.seed = (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
    gen.stop_ids = model_.stop_ids;
    gen.logprobs = request.logprobs;
    gen.top_logprobs = request.logprobs ? request.top_logprobs : 0;
    if (chat) {
      // The rendered template is tokenized with special tokens parsed (its markers are special
      // tokens), so message text that spells one would forge turns: refuse it.
      for (size_t i = 0; i < request.messages.size(); ++i)
        for (int32_t id : tokenizer.encode(request.messages[i].content, false, true))
          if (tokenizer.is_special(id)) {
            count_error();
            return send_error(res, 400,
                              "Message text may not contain the special token '" + tokenizer.id_to_token(id) +
                                  "' (it would be read as a chat-template marker).",
                              "invalid_request_error", "messages[" + std::to_string(i) + "].content", "");
          }
      std::vector<text::ChatMessage> messages;
      for (const auto& m : request.messages) messages.push_back({m.role, m.content});
      const std::string rendered = text::render_chat(model_.chat_style, messages, true, true);
      gen.prompt = tokenizer.encode(rendered, /*add_special_tokens=*/false, /*parse_special=*/true);
      gen.stop_ids = model_.chat_stop_ids;
    } else {
      gen.prompt = tokenizer.encode(request.prompt, /*add_special_tokens=*/true, /*parse_special=*/true);
    }
    const int64_t context = model_.engine->max_context();
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

    ResponseMeta meta{(chat ? "chatcmpl-" : "cmpl-") + random_hex(24),
                      std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch()).count(),
                      request.model.empty() ? model_.id : request.model};

    // Shared by the callbacks (device thread) and this thread; the callbacks may outlive the
    // handler only through these shared pointers.
    struct Shared {
      Shared(const text::Tokenizer& tokenizer, const std::vector<std::string>& stop)
          : decoder(tokenizer, true), matcher(stop) {}
      text::StreamDecoder decoder;
      StopMatcher matcher;
      std::string text;  // non-streaming: everything emitted
      std::shared_ptr<StreamState> stream;
      std::optional<engine::GenerationResult> result;
      std::string error;
      // Streaming with logprobs: entries of tokens whose text has not been sent yet (a stop
      // string or an incomplete character holds it back); they go with the next chunk that
      // carries text, or with an empty one at the end. text_offset of the next entry
      // (completions): code points of the tokens already sent.
      std::vector<TokenLogprob> pending_logprobs;
      int64_t logprob_offset = 0;
      // For the "specula" extension object.
      Clock::time_point submitted;
      double queue_seconds = 0.0, first_token_seconds = -1.0;
      json extension;
    };
    auto shared = std::make_shared<Shared>(tokenizer, request.stop);
    if (request.stream) shared->stream = std::make_shared<StreamState>();
    const bool include_usage = request.include_usage;
    const bool want_logprobs = request.logprobs;

    // `force`: send a chunk even without text (the last logprobs entries).
    auto emit = [shared, chat, meta, include_usage, want_logprobs](const std::string& piece, bool force = false) {
      if (piece.empty() && !(force && !shared->pending_logprobs.empty())) return;
      if (!shared->stream) {
        shared->text += piece;
        return;
      }
      const std::vector<TokenLogprob>* lp = want_logprobs ? &shared->pending_logprobs : nullptr;
      const json chunk = chat ? chat_chunk_content_json(meta, piece, lp, include_usage)
                              : text_chunk_json(meta, piece, nullptr, lp, include_usage, shared->logprob_offset);
      for (const TokenLogprob& t : shared->pending_logprobs) shared->logprob_offset += code_points(t.token);
      shared->pending_logprobs.clear();
      shared->stream->push({sse_event(chunk)});
    };
    auto finish_reason = [shared]() {
      if (shared->matcher.stopped()) return FinishReason::kStop;
      const auto r = shared->result ? shared->result->finish_reason : engine::FinishReason::Length;
      return r == engine::FinishReason::Stop ? FinishReason::kStop : FinishReason::kLength;
    };

    // Whether this request speculates, and why not when the server could.
    GenerationStats stats;
    stats.speculative = scheduler_->speculates(gen);
    if (model_.engine->draft() != nullptr && !stats.speculative)
      stats.note = "logprobs were requested, so this request ran on the plain decoder (speculative decoding is "
                   "lossless: the output distribution is the same, only the speed differs)";

    engine::RequestCallbacks callbacks;
    callbacks.on_start = [shared](double queue_seconds) { shared->queue_seconds = queue_seconds; };
    if (want_logprobs && request.stream)
      callbacks.on_logprobs = [shared, &tokenizer](const engine::TokenLogprobs& lp) {
        shared->pending_logprobs.push_back(to_response_logprob(lp, tokenizer));
      };
    callbacks.on_token = [shared, emit](int32_t id) {
      if (shared->first_token_seconds < 0)
        shared->first_token_seconds = std::chrono::duration<double>(Clock::now() - shared->submitted).count();
      if (shared->matcher.stopped()) return false;
      emit(shared->matcher.push(shared->decoder.push(id)));
      return !shared->matcher.stopped();
    };
    callbacks.on_finish = [this, shared, emit, chat, meta, include_usage, finish_reason, started, endpoint,
                           stats](const engine::GenerationResult& result) mutable {
      shared->result = result;
      stats.decode_tokens_per_second = result.decode_tokens_per_second();
      stats.prefill_tokens_per_second = result.prefill_tokens_per_second();
      stats.time_to_first_token_seconds = shared->first_token_seconds;
      stats.queue_seconds = shared->queue_seconds;
      stats.verifications = result.verifications;
      stats.accepted_tokens = result.accepted_tokens;
      stats.attention = model_.engine->transformer().attention_plan().request_summary(
          result.prompt_tokens, result.prompt_tokens + static_cast<int64_t>(result.tokens.size()));
      shared->extension = specula_extension_json(stats);
      if (!shared->matcher.stopped()) emit(shared->matcher.push(shared->decoder.flush()));
      if (!shared->matcher.stopped()) emit(shared->matcher.flush());
      emit("", true);
      const Usage usage{result.prompt_tokens, static_cast<int64_t>(result.tokens.size())};
      {
        std::lock_guard lock(metrics_mutex_);
        ++(endpoint == Endpoint::kChatCompletions ? metrics_.chat_requests : metrics_.completion_requests);
        metrics_.prompt_tokens += static_cast<uint64_t>(result.prompt_tokens);
        metrics_.generated_tokens += result.tokens.size();
        metrics_.request_seconds.observe(std::chrono::duration<double>(Clock::now() - started).count());
      }
      if (!shared->stream) return;
      const FinishReason finish = finish_reason();
      json finish_chunk = chat ? chat_chunk_finish_json(meta, finish, include_usage)
                               : text_chunk_json(meta, "", &finish, nullptr, include_usage);
      finish_chunk["specula"] = shared->extension;
      const std::string finish_event = sse_event(finish_chunk);
      if (include_usage)
        shared->stream->push({finish_event, sse_event(chat ? chat_chunk_usage_json(meta, usage)
                                                           : text_chunk_usage_json(meta, usage)),
                              sse_done()},
                             true);
      else
        shared->stream->push({finish_event, sse_done()}, true);
    };
    callbacks.on_error = [this, shared](const std::string& message) {
      shared->error = message;
      count_error();
      if (!shared->stream) return;
      shared->stream->push({sse_event(error_json("generation failed: " + message, "server_error")), sse_done()},
                           true);
    };

    std::shared_ptr<engine::RequestHandle> handle;
    shared->submitted = Clock::now();
    try {
      handle = scheduler_->submit(std::move(gen), std::move(callbacks));
    } catch (const engine::QueueFullError& e) {
      count_error();
      res.set_header("Retry-After", "1");
      return send_error(res, 503, std::string("The server is busy: ") + e.what(), "server_error", "", "queue_full");
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

    const int sock = connection_socket(req);
    const double timeout = options_.request_timeout_seconds;
    const std::optional<Clock::time_point> deadline =
        timeout > 0 ? std::optional(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                       std::chrono::duration<double>(timeout)))
                    : std::nullopt;
    const json timeout_error = error_json("The request did not finish within the server's time limit of " +
                                              seconds_text(timeout) + " s (queue wait and generation).",
                                          "invalid_request_error", "", "request_timeout");
    if (!request.stream) {
      bool gone = false, late = false;
      while (!handle->wait_for(kWatchSeconds)) {
        gone = client_gone(sock);
        late = deadline && Clock::now() >= *deadline;
        if (gone || late) {
          scheduler_->cancel(handle);
          handle->wait();
          break;
        }
      }
      done_running();
      if (gone) return send_error(res, 499, "The client closed the connection.", "invalid_request_error");
      if (late) {
        count_timeout();
        res.status = 408;
        res.set_content(dump_json(timeout_error), "application/json");
        return;
      }
      if (!shared->error.empty() || !shared->result)
        return send_error(res, 500, "generation failed: " + (shared->error.empty() ? "cancelled" : shared->error),
                          "server_error");
      const engine::GenerationResult& r = *shared->result;
      if (r.finish_reason == engine::FinishReason::Cancelled && !shared->matcher.stopped())
        return send_error(res, 503, "The server is shutting down.", "server_error");
      const Usage usage{r.prompt_tokens, static_cast<int64_t>(r.tokens.size())};
      std::vector<TokenLogprob> logprobs;
      for (const engine::TokenLogprobs& lp : r.logprobs) logprobs.push_back(to_response_logprob(lp, tokenizer));
      const std::vector<TokenLogprob>* lp = want_logprobs ? &logprobs : nullptr;
      json body = chat ? chat_completion_json(meta, shared->text, finish_reason(), usage, lp)
                       : text_completion_json(meta, shared->text, finish_reason(), usage, lp);
      body["specula"] = shared->extension;
      res.set_content(dump_json(body), "application/json");
      return;
    }

    // Streaming: the first chat chunk carries the role; then whatever the device thread queued.
    if (chat) shared->stream->events.push_front(sse_event(chat_chunk_role_json(meta, include_usage)));
    auto state = shared->stream;
    auto* scheduler = scheduler_.get();
    const std::string timeout_event = sse_event(timeout_error);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, state, handle, scheduler, sock, deadline, timeout_event](size_t, httplib::DataSink& sink) {
          std::deque<std::string> batch;
          bool done = false, late = false;
          {
            std::unique_lock lock(state->mutex);
            state->cv.wait_for(lock, std::chrono::duration<double>(kWatchSeconds),
                               [&] { return !state->events.empty() || state->done; });
            if (!state->done && deadline && Clock::now() >= *deadline) {
              late = true;
              state->closed = true;  // the callbacks queue nothing more; the frames below end it
            }
            batch.swap(state->events);
            done = state->done;
          }
          if (client_gone(sock)) {
            scheduler->cancel(handle);
            return false;
          }
          if (late) {
            scheduler->cancel(handle);
            count_timeout();
            batch.push_back(timeout_event);
            batch.push_back(sse_done());
            done = true;
          }
          for (const std::string& event : batch)
            if (!sink.write(event.data(), event.size())) {
              scheduler->cancel(handle);  // the client went away
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

  ServedModel model_;
  HttpServerOptions options_;
  int64_t created_ = 0;
  std::unique_ptr<engine::Scheduler> scheduler_;
  httplib::Server http_;
  int port_ = 0;
  std::mutex metrics_mutex_;
  ServerMetrics metrics_;
};

HttpServer::HttpServer(ServedModel model, HttpServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(model), std::move(options))) {}

HttpServer::~HttpServer() {
  if (impl_) impl_->scheduler_->shutdown(false);
}

bool HttpServer::bind() {
  Impl& s = *impl_;
  if (s.options_.port == 0) {
    s.port_ = s.http_.bind_to_any_port(s.options_.host);
    return s.port_ > 0;
  }
  if (!s.http_.bind_to_port(s.options_.host, s.options_.port)) return false;
  s.port_ = s.options_.port;
  return true;
}

int HttpServer::port() const { return impl_->port_; }

void HttpServer::serve() { impl_->http_.listen_after_bind(); }

void HttpServer::stop() {
  impl_->scheduler_->shutdown(false);
  impl_->http_.stop();
}

engine::Scheduler& HttpServer::scheduler() { return *impl_->scheduler_; }

}  // namespace specula::server

#endif  // SPECULA_WITH_HTTPLIB
