// The request side of the OpenAI-compatible server: POST bodies of /v1/chat/completions and
// /v1/completions parsed into a plain struct, with no HTTP and no engine in sight, so every field
// and every refusal is unit-tested on strings.
//
// Why it is strict: a client that sends a parameter we do not implement (n > 1, tools, images,
// a JSON response_format, logit_bias) would otherwise get a plausible answer that silently
// ignores what it asked for. So, as OpenAI does ("Unrecognized request argument supplied"),
// unknown top-level fields are refused with 400, and known-but-unsupported values are refused
// naming the field (`param`, e.g. "messages[1].content[0].type"). The exception is a short list
// of fields that OpenAI clients send routinely and that change nothing about the generated text
// (user, metadata, store, service_tier, parallel_tool_calls, ...): those are accepted and ignored.
// Every optional field may be null, meaning absent, as in OpenAI's API.
//
// Decisions (documented here because clients will hit them):
//   - max_completion_tokens (the current name) wins over max_tokens (deprecated by OpenAI) when
//     both are given; each must be an integer in [1, engine::kMaxNewTokens]. Absent: 0 here,
//     meaning "the server's default" (what remains of the context).
//   - temperature defaults to 1 (OpenAI's default), not the library's greedy default; ranges are
//     OpenAI's: temperature [0, 2], top_p (0, 1], presence/frequency_penalty [-2, 2]. The
//     extensions top_k (>= 0, -1 also means off, as in vLLM), min_p [0, 1] and
//     repetition_penalty (0, 2] are accepted on both endpoints.
//   - stop: a string or a list of at most 4 non-empty strings of at most 256 bytes each
//     (kMaxStops, kMaxStopBytes of stop_matcher.h).
//   - chat: logprobs is a bool and top_logprobs an integer in [0, 20] that needs logprobs=true;
//     completions: logprobs is the legacy integer in [0, 20] (0 = only the chosen token's).
//   - content may be a string or a non-empty list of {"type":"text","text":...} parts; parts are
//     joined with "\n" (as vLLM does). Roles: system, user, assistant; anything else is refused.
//     A message's "name" is accepted and ignored.
//   - prompt: a string or a list of exactly one string (token-id prompts are refused for now).
//   - seed: any JSON integer; a negative one is taken modulo 2^64.
// The body size limit belongs to the HTTP layer; parsing here is linear in the body size.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "specula/core/error.h"
#include "specula/sampling/params.h"

namespace specula::server {

// A request the server refuses, with what OpenAI's error object needs: the HTTP status, the
// error type, the offending parameter ("" when none) and a code ("" when none).
class RequestError : public specula::Error {
 public:
  RequestError(int status, std::string type, std::string param, const std::string& message, std::string code = "")
      : Error(message), status_(status), type_(std::move(type)), param_(std::move(param)), code_(std::move(code)) {}
  // The usual case: 400 invalid_request_error naming `param`.
  static RequestError invalid(std::string param, const std::string& message) {
    return RequestError(400, "invalid_request_error", std::move(param), message);
  }
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }

 private:
  int status_;
  std::string type_;
  std::string param_;
  std::string code_;
};

enum class Endpoint { kChatCompletions, kCompletions };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kChatCompletions;
  std::string model;                  // "" when absent (the server decides whether it must match)
  std::vector<ChatMessage> messages;  // chat only; never empty there
  std::string prompt;                 // completions only
  int64_t max_tokens = 0;             // 0 = server default
  sampling::SamplingParams sampling;  // validated; temperature 1 when absent
  bool seed_given = false;            // false: the server draws a seed
  std::vector<std::string> stop;
  bool logprobs = false;
  int top_logprobs = 0;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parse a POST body; throw RequestError (never another exception type) when it is refused.
CompletionRequest parse_chat_completion_request(std::string_view body);
CompletionRequest parse_completion_request(std::string_view body);
CompletionRequest parse_request(Endpoint endpoint, std::string_view body);

}  // namespace specula::server
