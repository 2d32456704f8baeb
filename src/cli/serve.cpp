// `specula serve`: the OpenAI-compatible HTTP server (issue 12) as a program. The server itself
// is server::HttpServer in the library (routes, streaming, cancellation, metrics); this file only
// parses the flags, loads the model, warns about an open address without a key, and turns
// SIGINT/SIGTERM into a clean stop (exit status 0).
#include "commands.h"

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "model_loading.h"
#include "options.h"
#include "specula/core/error.h"
#include "specula/server/http_server.h"

namespace specula::cli {

namespace {

// A validator for a seconds flag in [lo, hi] (fractions allowed), with a readable error.
CLI::Validator seconds_in_range(double lo, double hi) {
  char range[64];
  std::snprintf(range, sizeof range, "%g to %g", lo, hi);
  const std::string r = range;
  return CLI::Validator(
      [lo, hi, r](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (!text.empty() && end == text.c_str() + text.size() && v >= lo && v <= hi) return {};
        return "must be a number of seconds from " + r + ", got '" + text + "'";
      },
      "SECONDS in " + r);
}

struct ServeArgs : EngineArgs {
  std::string model_dir;
  server::HttpServerOptions http;
};

void run_serve(const ServeArgs& a) {
#ifndef SPECULA_WITH_HTTPLIB
  SPECULA_CHECK(false, "this build of specula has no `serve`: cpp-httplib was not found when it was built "
                "(install libcpp-httplib-dev, or run scripts/fetch-device-deps.sh, and rebuild)");
#endif
  check_model_dir(a.model_dir);
  parse_device(a.device);
  if (!a.draft_dir.empty()) a.tree.validate();
  if (!server::is_loopback_host(a.http.host) && a.http.api_key.empty())
    std::fprintf(stderr, "warning: serving on %s without --api-key: anyone who can reach this address can use "
                 "the model\n", a.http.host.c_str());
  // SIGINT/SIGTERM go to one thread that stops the server; every other thread has them blocked
  // (the mask is inherited by the threads started below). A broken connection is an error
  // return, not a signal.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  const text::Tokenizer tokenizer = load_tokenizer(a.model_dir);
  const std::unique_ptr<engine::Engine> engine = load_engine(a.model_dir, a);
  server::ServedModel model;
  std::filesystem::path p(a.model_dir);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
  model.id = p.filename().string();
  model.alias = a.model_dir;
  model.engine = engine.get();
  model.tokenizer = &tokenizer;
  // A tokenizer without the template's special tokens (a base model, the demo model): chat
  // still works, the template's markers are then plain text and only end-of-sequence stops it.
  model.chat_style = chat_style_of(a.model_dir, *engine);
  try {
    check_chat_tokens(model.chat_style, tokenizer, a.model_dir, "/v1/chat/completions");
  } catch (const Error& e) {
    std::fprintf(stderr, "warning: %s; chat renders the template's markers as plain text\n", e.what());
  }
  model.stop_ids = engine->config().eos_token_ids;
  model.chat_stop_ids = model.stop_ids;
  add_chat_stop_ids(model.chat_style, tokenizer, model.chat_stop_ids);

  server::HttpServer server(std::move(model), a.http);
  SPECULA_CHECK(server.bind(), "cannot listen on ", a.http.host, ":", a.http.port, " (is the port in use?)");
  std::fprintf(stderr, "serving %s on http://%s:%d/v1 (queue %lld)\n", p.filename().string().c_str(),
               a.http.host.c_str(), server.port(), static_cast<long long>(a.http.max_queue));
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
  server.serve();
  {
    std::lock_guard lock(stop_mutex);
    serving_ended = true;
  }
  pthread_kill(signal_thread.native_handle(), SIGTERM);  // ends the sigwait if no signal came
  signal_thread.join();
  server.stop();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (/v1/chat/completions, "
                                              "/v1/completions, /v1/models, /health, /metrics)");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("-m,--model", a->model_dir, "Hugging Face model folder (config.json, weights, tokenizer.json)")
      ->required();
  cmd->add_option("--host", a->http.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", a->http.port, "TCP port")->capture_default_str()->check(int_in_range<int>(1, 65535));
  cmd->add_option("--api-key", a->http.api_key,
                  "Require 'Authorization: Bearer KEY' on every /v1 route (strongly advised off loopback)");
  cmd->add_option("--max-queue", a->http.max_queue, "Requests that may wait for the device; more get 503")
      ->capture_default_str()->check(int_in_range<int64_t>(1, 1 << 20));
  cmd->add_option("--request-timeout", a->http.request_timeout_seconds,
                  "Seconds a completion may take, queue wait included (0 = no limit); past it a request gets 408, "
                  "a stream a last error event")
      ->capture_default_str()->check(seconds_in_range(0, 86400 * 7));
  cmd->add_option("--read-timeout", a->http.read_timeout_seconds,
                  "Seconds a client may stay silent while sending a request, and the most a request body may "
                  "take to arrive (408)")
      ->capture_default_str()->check(seconds_in_range(0.001, 3600));
  add_engine_options(cmd, *a);
  cmd->callback([a] { run_serve(*a); });
}

}  // namespace specula::cli
