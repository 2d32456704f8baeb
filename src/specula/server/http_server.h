// HttpServer: the OpenAI-compatible HTTP front end over one loaded model (issue 12). Routes:
// POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with "stream":
// true), GET /v1/models, /health and /metrics (Prometheus).
//
// Why it lives in the library and not in `specula serve`: the request and response shapes
// (openai_request.h, openai_response.h) and the scheduler are library pieces, and the glue
// between them -- cpp-httplib's worker threads on one side, the engine::Scheduler's one device
// thread on the other -- is what the tests drive; the CLI only parses flags, loads the model and
// handles signals. The scheduler's callbacks never block (they append to a per-request queue);
// the HTTP thread that owns the connection waits on that queue and writes.
//
// cpp-httplib stays out of this header (pimpl), so front ends that do not serve need not see it.
// In a build without cpp-httplib the class exists but its constructor throws, saying why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "specula/text/chat_template.h"

namespace specula::engine {
class Engine;
class Scheduler;
}  // namespace specula::engine
namespace specula::text {
class Tokenizer;
}

namespace specula::server {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: the kernel picks one (port() tells which)
  std::string api_key;  // non-empty: every /v1 route needs "Authorization: Bearer KEY"
  int64_t max_queue = 64;                  // requests that may wait for the device; more get 503
  size_t max_body_bytes = size_t{4} << 20; // larger request bodies get 413
  // Seconds a completion may take from its submission to its last token, queue wait included;
  // 0 = no limit. A non-streaming request that runs out gets 408 with an error object; a
  // streaming one (its status is long sent) gets a last event {"error": {...}} and then
  // data: [DONE]. Either way its generation is cancelled.
  double request_timeout_seconds = 600.0;
  // A client that sends nothing for this long while the server reads its request is dropped,
  // and a request body must arrive in full within it (else 408), so slow clients cannot hold
  // HTTP workers. > 0.
  double read_timeout_seconds = 30.0;
};

// What is served: a loaded model and its text side. The engine and tokenizer must outlive the
// server; nothing else may use the engine meanwhile (the server's scheduler owns it).
struct ServedModel {
  std::string id;     // the name /v1/models lists
  std::string alias;  // also accepted as a request's "model" (e.g. the folder as given)
  engine::Engine* engine = nullptr;
  const text::Tokenizer* tokenizer = nullptr;
  text::ChatStyle chat_style = text::ChatStyle::Llama3;
  std::vector<int32_t> stop_ids;       // end tokens of completions (the config's eos ids)
  std::vector<int32_t> chat_stop_ids;  // end tokens of chat: those and the template's end tokens
};

class HttpServer {
 public:
  HttpServer(ServedModel model, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket; false when the address cannot be bound.
  bool bind();
  // The bound port (after bind()).
  int port() const;
  // Serves until stop(); returns then.
  void serve();
  // From any thread (a signal-handling thread, a test): cancels the queued and running
  // generations (so no handler waits on one) and ends serve(). Idempotent.
  void stop();
  engine::Scheduler& scheduler();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Whether `host` is a loopback address (binding elsewhere without an API key deserves a warning).
bool is_loopback_host(const std::string& host);

}  // namespace specula::server
