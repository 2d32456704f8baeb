// OpenAI response bodies checked field by field against OpenAI's documented shapes
// (chat.completion, chat.completion.chunk, text_completion, the error object), SSE framing, and
// the Prometheus exposition parsed back line by line.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "specula/core/error.h"
#include "specula/server/openai_request.h"
#include "specula/server/openai_response.h"

namespace specula::server {
namespace {

using Json = nlohmann::json;

const ResponseMeta kMeta{"chatcmpl-abc", 1700000000, "demo"};

std::set<std::string> keys(const Json& object) {
  std::set<std::string> out;
  for (auto it = object.begin(); it != object.end(); ++it) out.insert(it.key());
  return out;
}

void expect_base(const Json& j, const char* object) {
  EXPECT_EQ(j.at("id"), "chatcmpl-abc");
  EXPECT_EQ(j.at("object"), object);
  EXPECT_EQ(j.at("created"), 1700000000);
  EXPECT_EQ(j.at("model"), "demo");
  EXPECT_TRUE(j.at("system_fingerprint").is_null());
}

TEST(ServerResponse, ChatCompletion) {
  const Json j = chat_completion_json(kMeta, "Hello!", FinishReason::kStop, Usage{9, 3});
  EXPECT_EQ(keys(j), (std::set<std::string>{"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}));
  expect_base(j, "chat.completion");
  ASSERT_EQ(j["choices"].size(), 1u);
  const Json& c = j["choices"][0];
  EXPECT_EQ(keys(c), (std::set<std::string>{"index", "message", "logprobs", "finish_reason"}));
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["message"]["role"], "assistant");
  EXPECT_EQ(c["message"]["content"], "Hello!");
  EXPECT_TRUE(c["message"]["refusal"].is_null());
  EXPECT_TRUE(c["logprobs"].is_null());
  EXPECT_EQ(c["finish_reason"], "stop");
  EXPECT_EQ(j["usage"], (Json{{"prompt_tokens", 9}, {"completion_tokens", 3}, {"total_tokens", 12}}));
  EXPECT_EQ(chat_completion_json(kMeta, "", FinishReason::kLength, Usage{})["choices"][0]["finish_reason"], "length");
}

TEST(ServerResponse, ChatLogprobs) {
  const std::vector<TokenLogprob> lps = {
      {"Hi", -0.25f, {{"Hi", -0.25f}, {"Hello", -1.5f}}},
      {"\xe2\x82", -std::numeric_limits<float>::infinity(), {}},  // first two bytes of the euro sign
  };
  const Json j = chat_completion_json(kMeta, "Hi", FinishReason::kStop, Usage{1, 2}, &lps);
  const Json& l = j["choices"][0]["logprobs"];
  EXPECT_EQ(keys(l), (std::set<std::string>{"content", "refusal"}));
  ASSERT_EQ(l["content"].size(), 2u);
  const Json& t0 = l["content"][0];
  EXPECT_EQ(keys(t0), (std::set<std::string>{"token", "logprob", "bytes", "top_logprobs"}));
  EXPECT_EQ(t0["token"], "Hi");
  EXPECT_DOUBLE_EQ(t0["logprob"].get<double>(), -0.25);
  EXPECT_EQ(t0["bytes"], Json::array({72, 105}));
  ASSERT_EQ(t0["top_logprobs"].size(), 2u);
  EXPECT_EQ(keys(t0["top_logprobs"][1]), (std::set<std::string>{"token", "logprob", "bytes"}));
  EXPECT_EQ(t0["top_logprobs"][1]["token"], "Hello");
  EXPECT_DOUBLE_EQ(t0["top_logprobs"][1]["logprob"].get<double>(), -1.5);
  const Json& t1 = l["content"][1];
  EXPECT_EQ(t1["token"], "bytes:\\xe2\\x82");
  EXPECT_EQ(t1["bytes"], Json::array({0xe2, 0x82}));
  EXPECT_DOUBLE_EQ(t1["logprob"].get<double>(), -9999.0);
  EXPECT_TRUE(t1["top_logprobs"].empty());
  // The whole body serialises (no invalid UTF-8 left in it).
  EXPECT_NO_THROW(j.dump());
}

TEST(ServerResponse, LogprobTokenText) {
  EXPECT_EQ(logprob_token_text("abc"), "abc");
  EXPECT_EQ(logprob_token_text("\xc3\xa9"), "\xc3\xa9");
  EXPECT_EQ(logprob_token_text("a\xff"), "bytes:a\\xff");
  EXPECT_EQ(logprob_token_text("\xc3\xa9\xe2"), "bytes:\xc3\xa9\\xe2");
  EXPECT_EQ(token_bytes_json(""), Json::array());
}

TEST(ServerResponse, TextCompletion) {
  const std::vector<TokenLogprob> lps = {{" a", -0.5f, {{" a", -0.5f}, {" b", -1.0f}, {" a", -3.0f}}},
                                         {"\xc3\xa9t\xc3\xa9", -0.1f, {}}, {"!", -0.2f, {}}};
  ResponseMeta meta = kMeta;
  meta.id = "cmpl-1";
  const Json j = text_completion_json(meta, " a\xc3\xa9t\xc3\xa9!", FinishReason::kLength, Usage{4, 3}, &lps);
  EXPECT_EQ(keys(j), (std::set<std::string>{"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"], "cmpl-1");
  const Json& c = j["choices"][0];
  EXPECT_EQ(keys(c), (std::set<std::string>{"text", "index", "logprobs", "finish_reason"}));
  EXPECT_EQ(c["text"], " a\xc3\xa9t\xc3\xa9!");
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["finish_reason"], "length");
  const Json& l = c["logprobs"];
  EXPECT_EQ(keys(l), (std::set<std::string>{"tokens", "token_logprobs", "top_logprobs", "text_offset"}));
  EXPECT_EQ(l["tokens"], Json::array({" a", "\xc3\xa9t\xc3\xa9", "!"}));
  EXPECT_DOUBLE_EQ(l["token_logprobs"][0].get<double>(), -0.5);
  EXPECT_EQ(l["top_logprobs"][0].size(), 2u);  // " a" twice: the first (likelier) kept
  EXPECT_DOUBLE_EQ(l["top_logprobs"][0][" a"].get<double>(), -0.5);
  EXPECT_DOUBLE_EQ(l["top_logprobs"][0][" b"].get<double>(), -1.0);
  EXPECT_EQ(l["top_logprobs"][1], Json::object());
  EXPECT_EQ(l["text_offset"], Json::array({0, 2, 5}));  // code points
  EXPECT_EQ(j["usage"]["total_tokens"], 7);
  EXPECT_TRUE(text_completion_json(meta, "x", FinishReason::kStop, Usage{})["choices"][0]["logprobs"].is_null());
}

TEST(ServerResponse, ChatStreamChunks) {
  const Json role = chat_chunk_role_json(kMeta);
  expect_base(role, "chat.completion.chunk");
  EXPECT_EQ(keys(role), (std::set<std::string>{"id", "object", "created", "model", "system_fingerprint", "choices"}));
  const Json& rc = role["choices"][0];
  EXPECT_EQ(keys(rc), (std::set<std::string>{"index", "delta", "logprobs", "finish_reason"}));
  EXPECT_EQ(rc["delta"], (Json{{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(rc["finish_reason"].is_null());
  // With include_usage every chunk carries "usage": null, the first (role) chunk too.
  const Json role_usage = chat_chunk_role_json(kMeta, true);
  ASSERT_TRUE(role_usage.contains("usage"));
  EXPECT_TRUE(role_usage["usage"].is_null());

  const Json content = chat_chunk_content_json(kMeta, "Hel");
  EXPECT_EQ(content["choices"][0]["delta"], (Json{{"content", "Hel"}}));
  EXPECT_TRUE(content["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(content["choices"][0]["logprobs"].is_null());
  EXPECT_FALSE(content.contains("usage"));

  const std::vector<TokenLogprob> lps = {{"Hel", -0.1f, {}}};
  const Json with_lp = chat_chunk_content_json(kMeta, "Hel", &lps, /*include_usage=*/true);
  EXPECT_EQ(with_lp["choices"][0]["logprobs"]["content"][0]["token"], "Hel");
  EXPECT_TRUE(with_lp.contains("usage"));
  EXPECT_TRUE(with_lp["usage"].is_null());

  const Json fin = chat_chunk_finish_json(kMeta, FinishReason::kStop, true);
  EXPECT_EQ(fin["choices"][0]["delta"], Json::object());
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(fin["usage"].is_null());

  const Json usage = chat_chunk_usage_json(kMeta, Usage{5, 7});
  expect_base(usage, "chat.completion.chunk");
  EXPECT_EQ(usage["choices"], Json::array());
  EXPECT_EQ(usage["usage"], (Json{{"prompt_tokens", 5}, {"completion_tokens", 7}, {"total_tokens", 12}}));
}

TEST(ServerResponse, TextStreamChunks) {
  const Json mid = text_chunk_json(kMeta, "abc", nullptr);
  expect_base(mid, "text_completion");
  EXPECT_EQ(keys(mid["choices"][0]), (std::set<std::string>{"text", "index", "logprobs", "finish_reason"}));
  EXPECT_EQ(mid["choices"][0]["text"], "abc");
  EXPECT_TRUE(mid["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(mid.contains("usage"));
  const FinishReason len = FinishReason::kLength;
  const Json last = text_chunk_json(kMeta, "", &len, nullptr, true);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(last["usage"].is_null());
  // A later chunk's logprobs continue the text offsets of the earlier chunks' tokens.
  const std::vector<TokenLogprob> two = {{"h\xC3\xA9", -0.5f, {}}, {"llo", -1.0f, {}}};
  const Json later = text_chunk_json(kMeta, "h\xC3\xA9llo", nullptr, &two, false, 7);
  EXPECT_EQ(later["choices"][0]["logprobs"]["text_offset"], (Json{7, 9}));
  const Json usage = text_chunk_usage_json(kMeta, Usage{1, 1});
  EXPECT_EQ(usage["object"], "text_completion");
  EXPECT_EQ(usage["choices"], Json::array());
  EXPECT_EQ(usage["usage"]["total_tokens"], 2);
}

TEST(ServerResponse, SpeculaExtensionObject) {
  GenerationStats st;
  st.decode_tokens_per_second = 50.0;
  st.prefill_tokens_per_second = 900.0;
  st.queue_seconds = 0.25;
  Json plain = specula_extension_json(st);
  EXPECT_EQ(keys(plain), (std::set<std::string>{"decode_tokens_per_second", "prefill_tokens_per_second",
                                                 "time_to_first_token_seconds", "queue_seconds", "speculative",
                                                 "accepted_tokens_per_verification", "tokens_per_verification",
                                                 "verifications", "attention", "note"}));
  EXPECT_EQ(plain["decode_tokens_per_second"], 50.0);
  EXPECT_TRUE(plain["time_to_first_token_seconds"].is_null());  // no token
  EXPECT_EQ(plain["speculative"], false);
  EXPECT_TRUE(plain["accepted_tokens_per_verification"].is_null());
  EXPECT_EQ(plain["attention"], "dense");
  EXPECT_TRUE(plain["note"].is_null());
  st.speculative = true;
  st.verifications = 4;
  st.accepted_tokens = 10;
  st.time_to_first_token_seconds = 0.5;
  st.note = "why";
  const Json spec = specula_extension_json(st);
  EXPECT_EQ(spec["accepted_tokens_per_verification"], 2.5);
  EXPECT_EQ(spec["tokens_per_verification"], 3.5);
  EXPECT_EQ(spec["verifications"], 4);
  EXPECT_EQ(spec["time_to_first_token_seconds"], 0.5);
  EXPECT_EQ(spec["note"], "why");
}

TEST(ServerResponse, SseFraming) {
  const Json chunk = chat_chunk_content_json(kMeta, "a\nb");
  const std::string event = sse_event(chunk);
  ASSERT_EQ(event.rfind("data: ", 0), 0u);
  ASSERT_GE(event.size(), 8u);
  EXPECT_EQ(event.substr(event.size() - 2), "\n\n");
  const std::string payload = event.substr(6, event.size() - 8);
  EXPECT_EQ(payload.find('\n'), std::string::npos);  // one line: newlines in text are escaped
  EXPECT_EQ(Json::parse(payload), chunk);
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  // A whole stream: role, content, finish, usage, [DONE] -- each event parses on its own.
  std::string stream = sse_event(chat_chunk_role_json(kMeta)) + event +
                       sse_event(chat_chunk_finish_json(kMeta, FinishReason::kStop, true)) +
                       sse_event(chat_chunk_usage_json(kMeta, Usage{2, 1})) + sse_done();
  std::vector<std::string> events;
  for (size_t pos = 0; pos < stream.size();) {
    const size_t end = stream.find("\n\n", pos);
    ASSERT_NE(end, std::string::npos);
    events.push_back(stream.substr(pos, end - pos));
    pos = end + 2;
  }
  ASSERT_EQ(events.size(), 5u);
  EXPECT_EQ(events.back(), "data: [DONE]");
  EXPECT_EQ(Json::parse(events[3].substr(6))["usage"]["total_tokens"], 3);
  // dump_json never throws on invalid UTF-8 (replaced).
  EXPECT_NO_THROW(dump_json(Json("\xff")));
}

TEST(ServerResponse, ErrorObject) {
  const Json e = error_json("bad", "invalid_request_error", "messages[0].role");
  EXPECT_EQ(keys(e), std::set<std::string>{"error"});
  EXPECT_EQ(keys(e["error"]), (std::set<std::string>{"message", "type", "param", "code"}));
  EXPECT_EQ(e["error"]["message"], "bad");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "messages[0].role");
  EXPECT_TRUE(e["error"]["code"].is_null());
  const Json none = error_json("boom", "server_error");
  EXPECT_TRUE(none["error"]["param"].is_null());
  try {
    parse_chat_completion_request(R"({"messages":[{"role":"user","content":"x"}],"n":2})");
    FAIL();
  } catch (const RequestError& err) {
    const Json j = error_json(err);
    EXPECT_EQ(j["error"]["param"], "n");
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_EQ(j["error"]["message"], err.what());
  }
  EXPECT_EQ(error_json(RequestError(404, "invalid_request_error", "model", "no such model", "model_not_found"))
                ["error"]["code"], "model_not_found");
}

// Parses Prometheus text back: HELP/TYPE per family, and "name{labels} value" samples.
struct Parsed {
  std::map<std::string, std::string> help, type;
  std::map<std::string, std::string> samples;  // "name{labels}" -> value text
  std::vector<std::string> order;              // sample keys in order
};

Parsed parse_prometheus(const std::string& text) {
  Parsed p;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    EXPECT_FALSE(line.empty());
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string rest = line.substr(7);
      p.help[rest.substr(0, rest.find(' '))] = rest.substr(rest.find(' ') + 1);
    } else if (line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      p.type[rest.substr(0, rest.find(' '))] = rest.substr(rest.find(' ') + 1);
    } else {
      const size_t sp = line.rfind(' ');
      EXPECT_NE(sp, std::string::npos) << line;
      p.samples[line.substr(0, sp)] = line.substr(sp + 1);
      p.order.push_back(line.substr(0, sp));
    }
  }
  EXPECT_EQ(text.back(), '\n');
  return p;
}

TEST(ServerResponse, PrometheusFamiliesAndEscaping) {
  const std::vector<MetricFamily> families = {
      {"x_total", "Things\\counted\nhere.", "counter", {{{{"path", "a\"b\\c\nd"}, {"code", "200"}}, 3}, {{}, 0.5}}},
      {"y", "A gauge.", "gauge", {{{}, -2}}}};
  const std::string text = prometheus_text(families, {});
  EXPECT_EQ(text,
            "# HELP x_total Things\\\\counted\\nhere.\n"
            "# TYPE x_total counter\n"
            "x_total{path=\"a\\\"b\\\\c\\nd\",code=\"200\"} 3\n"
            "x_total 0.5\n"
            "# HELP y A gauge.\n"
            "# TYPE y gauge\n"
            "y -2\n");
  EXPECT_THROW(prometheus_text({{"bad name", "h", "counter", {}}}, {}), Error);
  EXPECT_THROW(prometheus_text({{"9lives", "h", "counter", {}}}, {}), Error);
  EXPECT_THROW(prometheus_text({{"ok", "h", "summary", {}}}, {}), Error);
  EXPECT_THROW(prometheus_text({{"ok", "h", "counter", {{{{"le-x", "1"}}, 1}}}}, {}), Error);
  EXPECT_THROW(prometheus_text({{"ok", "h", "counter", {{{{"__name", "1"}}, 1}}}}, {}), Error);
  EXPECT_EQ(prometheus_number(3), "3");
  EXPECT_EQ(prometheus_number(0.25), "0.25");
  EXPECT_EQ(prometheus_number(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(prometheus_number(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(prometheus_number(std::nan("")), "NaN");
  EXPECT_EQ(std::stod(prometheus_number(0.1)), 0.1);  // round-trips
}

TEST(ServerResponse, PrometheusHistogramParsedBack) {
  Histogram h("lat_seconds", "Latency.", {0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 2.0, 20.0, 30.0}) h.observe(v);
  const Parsed p = parse_prometheus(prometheus_text({}, {h}));
  EXPECT_EQ(p.type.at("lat_seconds"), "histogram");
  EXPECT_EQ(p.help.at("lat_seconds"), "Latency.");
  EXPECT_EQ(p.samples.at("lat_seconds_bucket{le=\"0.1\"}"), "2");  // le is inclusive
  EXPECT_EQ(p.samples.at("lat_seconds_bucket{le=\"1\"}"), "3");
  EXPECT_EQ(p.samples.at("lat_seconds_bucket{le=\"10\"}"), "4");
  EXPECT_EQ(p.samples.at("lat_seconds_bucket{le=\"+Inf\"}"), "6");
  EXPECT_DOUBLE_EQ(std::stod(p.samples.at("lat_seconds_sum")), 52.65);
  EXPECT_EQ(p.samples.at("lat_seconds_count"), "6");
  EXPECT_EQ(p.order.size(), 6u);
  EXPECT_EQ(p.order.front(), "lat_seconds_bucket{le=\"0.1\"}");
  EXPECT_EQ(p.order.back(), "lat_seconds_count");
}

TEST(ServerResponse, PrometheusServerMetrics) {
  ServerMetrics m;
  m.chat_requests = 5;
  m.completion_requests = 2;
  m.request_errors = 1;
  m.request_timeouts = 3;
  m.prompt_tokens = 100;
  m.generated_tokens = 250;
  m.requests_running = 1;
  m.request_seconds.observe(0.3);
  m.first_token_seconds.observe(0.02);
  const Parsed p = parse_prometheus(prometheus_text(m));
  EXPECT_EQ(p.samples.at("specula_requests_total{endpoint=\"/v1/chat/completions\"}"), "5");
  EXPECT_EQ(p.samples.at("specula_requests_total{endpoint=\"/v1/completions\"}"), "2");
  EXPECT_EQ(p.samples.at("specula_request_errors_total"), "1");
  EXPECT_EQ(p.samples.at("specula_request_timeouts_total"), "3");
  EXPECT_EQ(p.samples.at("specula_prompt_tokens_total"), "100");
  EXPECT_EQ(p.samples.at("specula_generation_tokens_total"), "250");
  EXPECT_EQ(p.type.at("specula_requests_running"), "gauge");
  EXPECT_EQ(p.samples.at("specula_requests_running"), "1");
  EXPECT_EQ(p.type.at("specula_request_duration_seconds"), "histogram");
  EXPECT_EQ(p.samples.at("specula_request_duration_seconds_bucket{le=\"0.25\"}"), "0");
  EXPECT_EQ(p.samples.at("specula_request_duration_seconds_bucket{le=\"0.5\"}"), "1");
  EXPECT_EQ(p.samples.at("specula_request_duration_seconds_count"), "1");
  EXPECT_EQ(p.samples.at("specula_time_to_first_token_seconds_bucket{le=\"0.025\"}"), "1");
  EXPECT_EQ(p.samples.at("specula_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), "1");
  for (const auto& [name, type] : p.type) EXPECT_TRUE(p.help.count(name)) << name;
}

}  // namespace
}  // namespace specula::server
