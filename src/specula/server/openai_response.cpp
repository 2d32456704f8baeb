// JSON bodies, SSE framing and Prometheus text of the OpenAI-compatible server (see
// openai_response.h). Objects are plain nlohmann::json like the rest of the library, so their
// keys are written sorted rather than in OpenAI's order; JSON clients do not depend on order.
#include "specula/server/openai_response.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "specula/core/error.h"
#include "specula/server/openai_request.h"
#include "specula/server/stop_matcher.h"

namespace specula::server {
namespace {

using Json = nlohmann::json;

double logprob_value(float lp) { return std::isfinite(lp) ? static_cast<double>(lp) : -9999.0; }

Json chat_token_json(const std::string& raw, float logprob) {
  return Json{{"token", logprob_token_text(raw)}, {"logprob", logprob_value(logprob)}, {"bytes", token_bytes_json(raw)}};
}

Json base_object(const ResponseMeta& meta, const char* object) {
  return Json{{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model},
              {"system_fingerprint", nullptr}};
}

// Length of the UTF-8 sequence starting at text[i] when it is valid there, else 0.
size_t valid_utf8_at(const std::string& text, size_t i) {
  for (size_t len = 1; len <= 4 && i + len <= text.size(); ++len)
    if (is_valid_utf8(std::string_view(text).substr(i, len))) return len;
  return 0;
}

}  // namespace

const char* finish_reason_name(FinishReason reason) { return reason == FinishReason::kStop ? "stop" : "length"; }

std::string logprob_token_text(const std::string& raw) {
  if (is_valid_utf8(raw)) return raw;
  std::string out = "bytes:";
  for (size_t i = 0; i < raw.size();) {
    const size_t len = valid_utf8_at(raw, i);
    if (len > 0) {
      out.append(raw, i, len);
      i += len;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(raw[i]));
      out += buf;
      ++i;
    }
  }
  return out;
}

Json token_bytes_json(const std::string& raw) {
  Json bytes = Json::array();
  for (char c : raw) bytes.push_back(static_cast<int>(static_cast<unsigned char>(c)));
  return bytes;
}

Json chat_logprobs_json(const std::vector<TokenLogprob>& tokens) {
  Json content = Json::array();
  for (const TokenLogprob& t : tokens) {
    Json entry = chat_token_json(t.token, t.logprob);
    Json top = Json::array();
    for (const TopLogprob& alt : t.top) top.push_back(chat_token_json(alt.token, alt.logprob));
    entry["top_logprobs"] = std::move(top);
    content.push_back(std::move(entry));
  }
  return Json{{"content", std::move(content)}, {"refusal", nullptr}};
}

Json completion_logprobs_json(const std::vector<TokenLogprob>& tokens, int64_t text_offset_start) {
  Json toks = Json::array(), lps = Json::array(), tops = Json::array(), offsets = Json::array();
  int64_t offset = text_offset_start;
  for (const TokenLogprob& t : tokens) {
    toks.push_back(logprob_token_text(t.token));
    lps.push_back(logprob_value(t.logprob));
    Json top = Json::object();
    for (const TopLogprob& alt : t.top) {
      const std::string key = logprob_token_text(alt.token);
      if (!top.contains(key)) top[key] = logprob_value(alt.logprob);  // two ids, one text: the likelier
    }
    tops.push_back(std::move(top));
    offsets.push_back(offset);
    for (char c : t.token)
      if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++offset;  // code points: count lead bytes
  }
  return Json{{"tokens", std::move(toks)}, {"token_logprobs", std::move(lps)}, {"top_logprobs", std::move(tops)},
              {"text_offset", std::move(offsets)}};
}

Json usage_json(const Usage& usage) {
  return Json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

Json chat_completion_json(const ResponseMeta& meta, const std::string& text, FinishReason finish, const Usage& usage,
                          const std::vector<TokenLogprob>* logprobs) {
  Json out = base_object(meta, "chat.completion");
  Json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", text}, {"refusal", nullptr}}},
                 {"logprobs", logprobs ? chat_logprobs_json(*logprobs) : Json(nullptr)},
                 {"finish_reason", finish_reason_name(finish)}};
  out["choices"] = Json::array({std::move(choice)});
  out["usage"] = usage_json(usage);
  return out;
}

Json text_completion_json(const ResponseMeta& meta, const std::string& text, FinishReason finish, const Usage& usage,
                          const std::vector<TokenLogprob>* logprobs) {
  Json out = base_object(meta, "text_completion");
  Json choice = {{"text", text},
                 {"index", 0},
                 {"logprobs", logprobs ? completion_logprobs_json(*logprobs) : Json(nullptr)},
                 {"finish_reason", finish_reason_name(finish)}};
  out["choices"] = Json::array({std::move(choice)});
  out["usage"] = usage_json(usage);
  return out;
}

namespace {
Json chat_chunk(const ResponseMeta& meta, Json delta, Json logprobs, Json finish, bool include_usage) {
  Json out = base_object(meta, "chat.completion.chunk");
  out["choices"] = Json::array(
      {Json{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)}, {"finish_reason", std::move(finish)}}});
  if (include_usage) out["usage"] = nullptr;
  return out;
}
}  // namespace

Json chat_chunk_role_json(const ResponseMeta& meta, bool include_usage) {
  return chat_chunk(meta, Json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr, include_usage);
}

Json chat_chunk_content_json(const ResponseMeta& meta, const std::string& text, const std::vector<TokenLogprob>* logprobs,
                             bool include_usage) {
  return chat_chunk(meta, Json{{"content", text}}, logprobs ? chat_logprobs_json(*logprobs) : Json(nullptr), nullptr,
                    include_usage);
}

Json chat_chunk_finish_json(const ResponseMeta& meta, FinishReason finish, bool include_usage) {
  return chat_chunk(meta, Json::object(), nullptr, finish_reason_name(finish), include_usage);
}

Json chat_chunk_usage_json(const ResponseMeta& meta, const Usage& usage) {
  Json out = base_object(meta, "chat.completion.chunk");
  out["choices"] = Json::array();
  out["usage"] = usage_json(usage);
  return out;
}

Json text_chunk_json(const ResponseMeta& meta, const std::string& text, const FinishReason* finish,
                     const std::vector<TokenLogprob>* logprobs, bool include_usage, int64_t text_offset_start) {
  Json out = base_object(meta, "text_completion");
  out["choices"] = Json::array({Json{{"text", text},
                                     {"index", 0},
                                     {"logprobs", logprobs ? completion_logprobs_json(*logprobs, text_offset_start)
                                                           : Json(nullptr)},
                                     {"finish_reason", finish ? Json(finish_reason_name(*finish)) : Json(nullptr)}}});
  if (include_usage) out["usage"] = nullptr;
  return out;
}

Json text_chunk_usage_json(const ResponseMeta& meta, const Usage& usage) {
  Json out = base_object(meta, "text_completion");
  out["choices"] = Json::array();
  out["usage"] = usage_json(usage);
  return out;
}

Json specula_extension_json(const GenerationStats& st) {
  auto number = [](double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); };
  const bool verified = st.speculative && st.verifications > 0;
  const double per_pass = verified ? static_cast<double>(st.accepted_tokens) / static_cast<double>(st.verifications) : 0.0;
  return Json{{"decode_tokens_per_second", number(st.decode_tokens_per_second)},
              {"prefill_tokens_per_second", number(st.prefill_tokens_per_second)},
              {"time_to_first_token_seconds",
               st.time_to_first_token_seconds >= 0 ? number(st.time_to_first_token_seconds) : Json(nullptr)},
              {"queue_seconds", number(st.queue_seconds)},
              {"speculative", st.speculative},
              {"accepted_tokens_per_verification", verified ? Json(per_pass) : Json(nullptr)},
              {"tokens_per_verification", verified ? Json(per_pass + 1.0) : Json(nullptr)},
              {"verifications", st.verifications},
              {"attention", st.attention},
              {"note", st.note.empty() ? Json(nullptr) : Json(st.note)}};
}

Json error_json(const std::string& message, const std::string& type, const std::string& param, const std::string& code) {
  return Json{{"error",
               {{"message", message},
                {"type", type},
                {"param", param.empty() ? Json(nullptr) : Json(param)},
                {"code", code.empty() ? Json(nullptr) : Json(code)}}}};
}

Json error_json(const RequestError& error) { return error_json(error.what(), error.type(), error.param(), error.code()); }

std::string dump_json(const Json& value) { return value.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string sse_event(const Json& value) { return "data: " + dump_json(value) + "\n\n"; }

std::string sse_done() { return "data: [DONE]\n\n"; }

// ---- Prometheus ----

Histogram::Histogram(std::string name_, std::string help_, std::vector<double> bounds)
    : name(std::move(name_)), help(std::move(help_)), upper_bounds(std::move(bounds)), counts(upper_bounds.size() + 1, 0) {}

void Histogram::observe(double value) {
  if (counts.size() != upper_bounds.size() + 1) counts.assign(upper_bounds.size() + 1, 0);
  size_t b = 0;
  while (b < upper_bounds.size() && value > upper_bounds[b]) ++b;
  ++counts[b];
  sum += value;
  ++count;
}

std::string prometheus_number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // The shortest text that reads back as the same double ("0.1", not "0.10000000000000001").
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, value);
  return std::string(buf, result.ptr);
}

namespace {

bool valid_metric_name(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':') ||
                    (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

std::string escape(const std::string& text, bool quote) {
  std::string out;
  for (char c : text) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (quote && c == '"') out += "\\\"";
    else out += c;
  }
  return out;
}

std::string labels_text(const std::vector<MetricLabel>& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    SPECULA_CHECK(valid_metric_name(labels[i].name, false) && labels[i].name.rfind("__", 0) != 0,
                  "prometheus: invalid label name '", labels[i].name, "'");
    if (i > 0) out += ',';
    out += labels[i].name + "=\"" + escape(labels[i].value, true) + "\"";
  }
  return out + "}";
}

void header(std::string& out, const std::string& name, const std::string& help, const char* type) {
  SPECULA_CHECK(valid_metric_name(name, true), "prometheus: invalid metric name '", name, "'");
  out += "# HELP " + name + " " + escape(help, false) + "\n";
  out += "# TYPE " + name + " " + type + "\n";
}

}  // namespace

std::string prometheus_text(const std::vector<MetricFamily>& families, const std::vector<Histogram>& histograms) {
  std::string out;
  for (const MetricFamily& f : families) {
    SPECULA_CHECK(f.type == "counter" || f.type == "gauge", "prometheus: metric '", f.name,
                  "': type must be counter or gauge, got '", f.type, "'");
    header(out, f.name, f.help, f.type.c_str());
    for (const MetricSample& s : f.samples) out += f.name + labels_text(s.labels) + " " + prometheus_number(s.value) + "\n";
  }
  for (const Histogram& h : histograms) {
    header(out, h.name, h.help, "histogram");
    SPECULA_CHECK(h.counts.size() == h.upper_bounds.size() + 1, "prometheus: histogram '", h.name,
                  "': counts must have one entry per bucket plus +Inf");
    uint64_t cumulative = 0;
    for (size_t b = 0; b <= h.upper_bounds.size(); ++b) {
      cumulative += h.counts[b];
      const std::string le = b < h.upper_bounds.size() ? prometheus_number(h.upper_bounds[b]) : "+Inf";
      out += h.name + "_bucket{le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
    }
    out += h.name + "_sum " + prometheus_number(h.sum) + "\n";
    out += h.name + "_count " + std::to_string(h.count) + "\n";
  }
  return out;
}

std::string prometheus_text(const ServerMetrics& m) {
  auto d = [](uint64_t v) { return static_cast<double>(v); };
  std::vector<MetricFamily> families = {
      {"specula_requests_total", "Finished requests by endpoint.", "counter",
       {{{{"endpoint", "/v1/chat/completions"}}, d(m.chat_requests)},
        {{{"endpoint", "/v1/completions"}}, d(m.completion_requests)}}},
      {"specula_request_errors_total", "Requests refused or failed.", "counter", {{{}, d(m.request_errors)}}},
      {"specula_request_timeouts_total", "Requests that ran out of time (--request-timeout, --read-timeout).",
       "counter", {{{}, d(m.request_timeouts)}}},
      {"specula_prompt_tokens_total", "Prompt tokens processed.", "counter", {{{}, d(m.prompt_tokens)}}},
      {"specula_generation_tokens_total", "Tokens generated.", "counter", {{{}, d(m.generated_tokens)}}},
      {"specula_requests_running", "Requests being served now.", "gauge", {{{}, d(m.requests_running)}}},
  };
  return prometheus_text(families, {m.request_seconds, m.first_token_seconds});
}

}  // namespace specula::server
