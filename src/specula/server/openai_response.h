// The response side of the OpenAI-compatible server: the JSON bodies it sends (chat.completion,
// text_completion, their streaming chunks, the error object), the server-sent-events framing of
// a stream, and a Prometheus text exposition of the server's metrics. Pure functions of plain
// structs, so the shapes are tested field by field against OpenAI's documented ones without an
// engine or a socket.
//
// Token text in logprobs: a token of a byte-level vocabulary can be part of a UTF-8 character.
// OpenAI then reports the raw bytes in "bytes" and a token string that is still valid JSON; we
// write valid UTF-8 as is and otherwise "bytes:" followed by \xNN escapes of the invalid bytes
// (as OpenAI does). A log-probability of -inf (JSON has none) is written as -9999.0, OpenAI's
// convention.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace specula::server {

class RequestError;

enum class FinishReason { kStop, kLength };
const char* finish_reason_name(FinishReason reason);  // "stop" / "length"

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

struct TopLogprob {
  std::string token;  // raw bytes of the token's text
  float logprob = 0.0f;
};

struct TokenLogprob {
  std::string token;  // raw bytes of the token's text
  float logprob = 0.0f;
  std::vector<TopLogprob> top;  // most likely first
};

// What every object of one response repeats.
struct ResponseMeta {
  std::string id;       // "chatcmpl-..." / "cmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

// A token's text as a JSON string (see above) and its bytes as a list of integers.
std::string logprob_token_text(const std::string& raw);
nlohmann::json token_bytes_json(const std::string& raw);

// {"content":[{token, logprob, bytes, top_logprobs:[{token, logprob, bytes}]}], "refusal":null}
nlohmann::json chat_logprobs_json(const std::vector<TokenLogprob>& tokens);
// {"tokens":[...], "token_logprobs":[...], "top_logprobs":[{token: logprob}], "text_offset":[...]};
// text offsets count code points from `text_offset_start` (the completion starts after the
// prompt only when echoing, which is not supported, so the server passes 0).
nlohmann::json completion_logprobs_json(const std::vector<TokenLogprob>& tokens, int64_t text_offset_start = 0);

nlohmann::json usage_json(const Usage& usage);

// Non-streaming bodies. `logprobs` null: the choice's "logprobs" is null.
nlohmann::json chat_completion_json(const ResponseMeta& meta, const std::string& text, FinishReason finish,
                                    const Usage& usage, const std::vector<TokenLogprob>* logprobs = nullptr);
nlohmann::json text_completion_json(const ResponseMeta& meta, const std::string& text, FinishReason finish,
                                    const Usage& usage, const std::vector<TokenLogprob>* logprobs = nullptr);

// Streaming chat: the first chunk carries delta {"role":"assistant","content":""}; then content
// chunks; then one chunk with an empty delta and the finish_reason; with include_usage, every
// chunk has "usage":null and a last chunk has "choices":[] and the usage.
nlohmann::json chat_chunk_role_json(const ResponseMeta& meta, bool include_usage = false);
nlohmann::json chat_chunk_content_json(const ResponseMeta& meta, const std::string& text,
                                       const std::vector<TokenLogprob>* logprobs = nullptr, bool include_usage = false);
nlohmann::json chat_chunk_finish_json(const ResponseMeta& meta, FinishReason finish, bool include_usage = false);
nlohmann::json chat_chunk_usage_json(const ResponseMeta& meta, const Usage& usage);
// Streaming completions: text_completion objects with one choice {text, index, logprobs,
// finish_reason}; finish null but on the last; usage chunk as for chat. `text_offset_start`: the
// logprobs' text offsets continue from the code points of the tokens in earlier chunks.
nlohmann::json text_chunk_json(const ResponseMeta& meta, const std::string& text, const FinishReason* finish,
                               const std::vector<TokenLogprob>* logprobs = nullptr, bool include_usage = false,
                               int64_t text_offset_start = 0);
nlohmann::json text_chunk_usage_json(const ResponseMeta& meta, const Usage& usage);

// specula's extension object, "specula" at the top level of a non-streamed body and of the
// streamed chunk that carries the finish_reason (the standard fields are untouched; OpenAI
// clients pass unknown fields through). Figures of this one request:
//   decode_tokens_per_second, prefill_tokens_per_second  (GenerationResult's rates)
//   time_to_first_token_seconds, queue_seconds            (from submission)
//   speculative          whether it ran on the speculative decoder
//   accepted_tokens_per_verification  mean draft tokens accepted per verification pass, and
//   tokens_per_verification           that plus the target's own token; null when not speculative
//   verifications        verification passes
//   attention            "dense" (the only attention path so far)
//   note                 why a server that speculates ran this request without (logprobs)
struct GenerationStats {
  double decode_tokens_per_second = 0.0;
  double prefill_tokens_per_second = 0.0;
  double time_to_first_token_seconds = -1.0;  // < 0: no token (written as null)
  double queue_seconds = 0.0;
  bool speculative = false;
  int64_t verifications = 0;
  int64_t accepted_tokens = 0;
  std::string attention = "dense";
  std::string note;  // "" = none (written as null)
};
nlohmann::json specula_extension_json(const GenerationStats& stats);

// {"error":{"message","type","param","code"}}; param and code are null when empty.
nlohmann::json error_json(const std::string& message, const std::string& type, const std::string& param = "",
                          const std::string& code = "");
nlohmann::json error_json(const RequestError& error);

// Compact JSON (invalid UTF-8, which should never reach here, is replaced rather than thrown on).
std::string dump_json(const nlohmann::json& value);
// Server-sent events: "data: <compact json>\n\n" and the terminator "data: [DONE]\n\n".
std::string sse_event(const nlohmann::json& value);
std::string sse_done();

// ---- Prometheus text exposition (format 0.0.4) ----

struct MetricLabel {
  std::string name;
  std::string value;
};

struct MetricSample {
  std::vector<MetricLabel> labels;
  double value = 0.0;
};

// A counter or gauge family: # HELP, # TYPE, then one line per sample.
struct MetricFamily {
  std::string name;
  std::string help;
  std::string type = "counter";  // "counter" or "gauge"
  std::vector<MetricSample> samples;
};

// A histogram with fixed upper bounds (ascending; +Inf is implicit).
struct Histogram {
  std::string name;
  std::string help;
  std::vector<double> upper_bounds;
  std::vector<uint64_t> counts;  // per bucket, not cumulative; size upper_bounds.size() + 1
  double sum = 0.0;
  uint64_t count = 0;

  Histogram() = default;
  Histogram(std::string name, std::string help, std::vector<double> upper_bounds);
  void observe(double value);
};

// The server's metrics, as a snapshot the HTTP layer takes under its own lock.
struct ServerMetrics {
  uint64_t chat_requests = 0;        // finished requests per endpoint
  uint64_t completion_requests = 0;
  uint64_t request_errors = 0;       // refused or failed requests (timeouts included)
  uint64_t request_timeouts = 0;     // requests that ran out of time (408, or an error event)
  uint64_t prompt_tokens = 0;
  uint64_t generated_tokens = 0;
  uint64_t requests_running = 0;     // gauge
  Histogram request_seconds{"specula_request_duration_seconds", "Time from request to last token.",
                            {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
  Histogram first_token_seconds{"specula_time_to_first_token_seconds", "Time from request to first token.",
                                {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
};

// Writes families and histograms in order. Throws specula::Error on an invalid metric or label
// name; label values are escaped (\\, \", \n).
std::string prometheus_text(const std::vector<MetricFamily>& families, const std::vector<Histogram>& histograms);
std::string prometheus_text(const ServerMetrics& metrics);
// A number as Prometheus writes it: integers without a fraction, +Inf, -Inf, NaN.
std::string prometheus_number(double value);

}  // namespace specula::server
