// OpenAI request parsing: every accepted field lands in CompletionRequest, and every refusal is
// a RequestError with status 400, type invalid_request_error and the offending `param`.
#include <gtest/gtest.h>

#include <string>

#include "specula/server/openai_request.h"

namespace specula::server {
namespace {

// The RequestError a body is refused with (fails the test if it is accepted).
RequestError refusal(Endpoint endpoint, const std::string& body) {
  try {
    parse_request(endpoint, body);
  } catch (const RequestError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a RequestError: " << e.what();
    return RequestError::invalid("?", "?");
  }
  ADD_FAILURE() << "accepted: " << body;
  return RequestError::invalid("?", "?");
}

// Expects a 400 invalid_request_error naming `param` whose message contains `fragment`.
void expect_refused(Endpoint endpoint, const std::string& body, const std::string& param,
                    const std::string& fragment = "") {
  const RequestError e = refusal(endpoint, body);
  EXPECT_EQ(e.status(), 400) << body;
  EXPECT_EQ(e.type(), "invalid_request_error") << body;
  EXPECT_EQ(e.param(), param) << body << " -> " << e.what();
  if (!fragment.empty()) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

void chat_refused(const std::string& fields, const std::string& param, const std::string& fragment = "") {
  expect_refused(Endpoint::kChatCompletions, R"({"messages":[{"role":"user","content":"hi"}])" + fields + "}",
                 param, fragment);
}

void completion_refused(const std::string& fields, const std::string& param, const std::string& fragment = "") {
  expect_refused(Endpoint::kCompletions, R"({"prompt":"hi")" + fields + "}", param, fragment);
}

CompletionRequest chat(const std::string& fields) {
  return parse_chat_completion_request(R"({"messages":[{"role":"user","content":"hi"}])" + fields + "}");
}

TEST(ServerRequest, MinimalChatHasOpenAIDefaults) {
  const CompletionRequest r = chat("");
  EXPECT_EQ(r.endpoint, Endpoint::kChatCompletions);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].role, "user");
  EXPECT_EQ(r.messages[0].content, "hi");
  EXPECT_EQ(r.model, "");
  EXPECT_EQ(r.max_tokens, 0);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_FALSE(r.seed_given);
  EXPECT_TRUE(r.stop.empty());
  EXPECT_FALSE(r.logprobs);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
}

TEST(ServerRequest, EveryChatField) {
  const CompletionRequest r = parse_chat_completion_request(R"({
    "model": "llama-3",
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "bob"},
      {"role": "assistant", "content": "ok", "tool_calls": null, "refusal": null},
      {"role": "user", "content": ""}
    ],
    "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
    "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
    "stop": ["\n\n", "END"], "seed": 42, "logprobs": true, "top_logprobs": 5,
    "stream": true, "stream_options": {"include_usage": true}, "n": 1,
    "user": "u-1", "metadata": {"k": "v"}, "store": false, "parallel_tool_calls": false,
    "service_tier": "auto", "tools": [], "tool_choice": "none", "logit_bias": {},
    "response_format": {"type": "text"}, "modalities": ["text"], "functions": null
  })");
  EXPECT_EQ(r.model, "llama-3");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[0].content, "Be brief.");
  EXPECT_EQ(r.messages[1].content, "a\nb");
  EXPECT_EQ(r.messages[2].role, "assistant");
  EXPECT_EQ(r.messages[3].content, "");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_TRUE(r.seed_given);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 5);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(ServerRequest, NullMeansAbsent) {
  const CompletionRequest r = chat(R"(,"model":null,"max_tokens":null,"temperature":null,"stop":null,"seed":null,
      "n":null,"stream":null,"logprobs":null,"top_logprobs":null,"tools":null,"tool_choice":null,"logit_bias":null,
      "response_format":null,"stream_options":null,"top_k":null,"min_p":null)");
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_FALSE(r.seed_given);
  EXPECT_TRUE(r.stop.empty());
}

TEST(ServerRequest, MaxCompletionTokensWinsOverMaxTokens) {
  EXPECT_EQ(chat(R"(,"max_tokens":10,"max_completion_tokens":20)").max_tokens, 20);
  EXPECT_EQ(chat(R"(,"max_completion_tokens":20,"max_tokens":10)").max_tokens, 20);
  EXPECT_EQ(chat(R"(,"max_completion_tokens":3)").max_tokens, 3);
  chat_refused(R"(,"max_tokens":0)", "max_tokens", "[1, 16777216]");
  chat_refused(R"(,"max_completion_tokens":-1)", "max_completion_tokens");
  chat_refused(R"(,"max_tokens":16777217)", "max_tokens");
  chat_refused(R"(,"max_tokens":18446744073709551615)", "max_tokens");
  chat_refused(R"(,"max_tokens":10.5)", "max_tokens", "expected an integer");
  chat_refused(R"(,"max_tokens":"10")", "max_tokens", "got string");
  EXPECT_EQ(chat(R"(,"max_tokens":16777216)").max_tokens, 16777216);
  // max_completion_tokens is a chat field only.
  completion_refused(R"(,"max_completion_tokens":5)", "max_completion_tokens", "Unrecognized request argument");
}

TEST(ServerRequest, SamplingRanges) {
  EXPECT_FLOAT_EQ(chat(R"(,"temperature":0)").sampling.temperature, 0.0f);
  EXPECT_TRUE(chat(R"(,"temperature":0)").sampling.is_greedy());
  EXPECT_FLOAT_EQ(chat(R"(,"temperature":2)").sampling.temperature, 2.0f);
  chat_refused(R"(,"temperature":2.01)", "temperature", "[0, 2]");
  chat_refused(R"(,"temperature":-0.1)", "temperature");
  expect_refused(Endpoint::kChatCompletions, R"({"messages":[],"temperature":1e400})", "", "overflow");
  chat_refused(R"(,"temperature":"hot")", "temperature", "expected a number");
  chat_refused(R"(,"top_p":0)", "top_p", "(0, 1]");
  chat_refused(R"(,"top_p":1.5)", "top_p");
  EXPECT_EQ(chat(R"(,"top_k":-1)").sampling.top_k, 0);
  chat_refused(R"(,"top_k":-2)", "top_k");
  chat_refused(R"(,"top_k":1.5)", "top_k");
  chat_refused(R"(,"min_p":1.1)", "min_p");
  chat_refused(R"(,"presence_penalty":2.5)", "presence_penalty", "[-2, 2]");
  chat_refused(R"(,"frequency_penalty":-3)", "frequency_penalty");
  chat_refused(R"(,"repetition_penalty":0)", "repetition_penalty");
  chat_refused(R"(,"repetition_penalty":true)", "repetition_penalty", "got boolean");
}

TEST(ServerRequest, Seed) {
  EXPECT_EQ(chat(R"(,"seed":18446744073709551615)").sampling.seed, 18446744073709551615ull);
  EXPECT_EQ(chat(R"(,"seed":-1)").sampling.seed, 18446744073709551615ull);
  EXPECT_EQ(chat(R"(,"seed":0)").sampling.seed, 0u);
  EXPECT_TRUE(chat(R"(,"seed":0)").seed_given);
  chat_refused(R"(,"seed":1.5)", "seed");
  chat_refused(R"(,"seed":"7")", "seed");
}

TEST(ServerRequest, Stop) {
  EXPECT_EQ(chat(R"(,"stop":"x")").stop, std::vector<std::string>{"x"});
  EXPECT_EQ(chat(R"(,"stop":[])").stop.size(), 0u);
  EXPECT_EQ(chat(R"(,"stop":["a","b","c","d"])").stop.size(), 4u);
  chat_refused(R"(,"stop":["a","b","c","d","e"])", "stop", "maximum length 4");
  chat_refused(R"(,"stop":"")", "stop", "must not be empty");
  chat_refused(R"(,"stop":["a",""])", "stop[1]", "must not be empty");
  chat_refused(R"(,"stop":["a",3])", "stop[1]", "expected a string");
  chat_refused(R"(,"stop":3)", "stop");
  const std::string at_limit(256, 'x');
  EXPECT_EQ(chat(R"(,"stop":")" + at_limit + "\"").stop[0], at_limit);
  chat_refused(R"(,"stop":[")" + at_limit + "x\"]", "stop[0]", "at most 256 bytes");
}

TEST(ServerRequest, Logprobs) {
  EXPECT_TRUE(chat(R"(,"logprobs":true)").logprobs);
  EXPECT_EQ(chat(R"(,"logprobs":true,"top_logprobs":20)").top_logprobs, 20);
  EXPECT_EQ(chat(R"(,"top_logprobs":0)").top_logprobs, 0);
  chat_refused(R"(,"logprobs":true,"top_logprobs":21)", "top_logprobs", "[0, 20]");
  chat_refused(R"(,"top_logprobs":3)", "top_logprobs", "'logprobs' must be set to true");
  chat_refused(R"(,"logprobs":false,"top_logprobs":3)", "top_logprobs");
  chat_refused(R"(,"logprobs":1)", "logprobs", "expected a boolean");
  // Legacy completions: logprobs is the number of alternatives.
  const CompletionRequest r = parse_completion_request(R"({"prompt":"x","logprobs":3})");
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_TRUE(parse_completion_request(R"({"prompt":"x","logprobs":0})").logprobs);
  EXPECT_FALSE(parse_completion_request(R"({"prompt":"x","logprobs":null})").logprobs);
  completion_refused(R"(,"logprobs":true)", "logprobs", "expected an integer");
  completion_refused(R"(,"logprobs":21)", "logprobs");
  completion_refused(R"(,"top_logprobs":2)", "top_logprobs", "Unrecognized");
}

TEST(ServerRequest, StreamOptions) {
  EXPECT_FALSE(chat(R"(,"stream":true,"stream_options":{"include_usage":false})").include_usage);
  EXPECT_FALSE(chat(R"(,"stream":true,"stream_options":{})").include_usage);
  EXPECT_TRUE(chat(R"(,"stream":true,"stream_options":{"include_usage":true,"include_obfuscation":false})").include_usage);
  chat_refused(R"(,"stream_options":{"include_usage":true})", "stream_options", "only allowed when 'stream' is true");
  chat_refused(R"(,"stream":false,"stream_options":{"include_usage":true})", "stream_options");
  chat_refused(R"(,"stream":true,"stream_options":{"include_usage":1})", "stream_options.include_usage");
  chat_refused(R"(,"stream":true,"stream_options":{"chunk":1})", "stream_options.chunk");
  chat_refused(R"(,"stream":true,"stream_options":[])", "stream_options");
  chat_refused(R"(,"stream":"yes")", "stream", "expected a boolean");
}

TEST(ServerRequest, UnsupportedFeatures) {
  chat_refused(R"(,"n":2)", "n", "only 1");
  chat_refused(R"(,"n":0)", "n");
  EXPECT_NO_THROW(chat(R"(,"n":1)"));
  chat_refused(R"(,"tools":[{"type":"function","function":{"name":"f"}}])", "tools", "not supported");
  chat_refused(R"(,"tools":{})", "tools");
  chat_refused(R"(,"tool_choice":"auto")", "tool_choice", "not supported");
  chat_refused(R"(,"tool_choice":{"type":"function"})", "tool_choice");
  chat_refused(R"(,"functions":[{"name":"f"}])", "functions");
  chat_refused(R"(,"function_call":"auto")", "function_call");
  chat_refused(R"(,"response_format":{"type":"json_object"})", "response_format.type", "not supported");
  chat_refused(R"(,"response_format":{"type":"json_schema","json_schema":{}})", "response_format.type");
  chat_refused(R"(,"response_format":{})", "response_format.type", "Missing");
  chat_refused(R"(,"response_format":{"type":"text","x":1})", "response_format.x");
  chat_refused(R"(,"response_format":"text")", "response_format");
  chat_refused(R"(,"logit_bias":{"50256":-100})", "logit_bias", "not supported");
  chat_refused(R"(,"logit_bias":[])", "logit_bias");
  chat_refused(R"(,"modalities":["text","audio"])", "modalities[1]");
  chat_refused(R"(,"audio":{"voice":"alloy"})", "audio", "Unrecognized request argument");
  chat_refused(R"(,"prediction":{})", "prediction");
  chat_refused(R"(,"reasoning_effort":"low")", "reasoning_effort");
  chat_refused(R"(,"temprature":0.5)", "temprature", "Unrecognized request argument supplied: temprature");
  chat_refused(R"(,"prompt":"x")", "prompt");  // a completions field on chat
}

TEST(ServerRequest, MessagesErrors) {
  const auto E = Endpoint::kChatCompletions;
  expect_refused(E, R"({})", "messages", "Missing required parameter");
  expect_refused(E, R"({"model":"m"})", "messages");
  expect_refused(E, R"({"messages":[]})", "messages", "empty array");
  expect_refused(E, R"({"messages":null})", "messages");
  expect_refused(E, R"({"messages":{"role":"user"}})", "messages", "expected an array");
  expect_refused(E, R"({"messages":["hi"]})", "messages[0]", "expected an object");
  expect_refused(E, R"({"messages":[{"content":"hi"}]})", "messages[0].role", "Missing");
  expect_refused(E, R"({"messages":[{"role":"user"}]})", "messages[0].content", "Missing");
  expect_refused(E, R"({"messages":[{"role":"user","content":"a"},{"role":"tool","content":"b"}]})",
                 "messages[1].role", "'tool'");
  expect_refused(E, R"({"messages":[{"role":"developer","content":"a"}]})", "messages[0].role");
  expect_refused(E, R"({"messages":[{"role":"User","content":"a"}]})", "messages[0].role");
  expect_refused(E, R"({"messages":[{"role":1,"content":"a"}]})", "messages[0].role", "expected a string");
  expect_refused(E, R"({"messages":[{"role":"user","content":null}]})", "messages[0].content");
  expect_refused(E, R"({"messages":[{"role":"user","content":5}]})", "messages[0].content");
  expect_refused(E, R"({"messages":[{"role":"user","content":[]}]})", "messages[0].content", "must not be empty");
  expect_refused(E, R"({"messages":[{"role":"user","content":["hi"]}]})", "messages[0].content[0]");
  expect_refused(E,
                 R"({"messages":[{"role":"user","content":"a"},{"role":"user","content":[{"type":"text","text":"x"},
                     {"type":"image_url","image_url":{"url":"http://x/y.png"}}]}]})",
                 "messages[1].content[1].type", "'image_url'");
  expect_refused(E, R"({"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]})",
                 "messages[0].content[0].type", "not supported");
  expect_refused(E, R"({"messages":[{"role":"user","content":[{"type":"video"}]}]})", "messages[0].content[0].type",
                 "Supported value: 'text'");
  expect_refused(E, R"({"messages":[{"role":"user","content":[{"text":"x"}]}]})", "messages[0].content[0].type");
  expect_refused(E, R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})", "messages[0].content[0].text");
  expect_refused(E, R"({"messages":[{"role":"user","content":[{"type":"text","text":1}]}]})",
                 "messages[0].content[0].text");
  expect_refused(E, R"({"messages":[{"role":"user","content":[{"type":"text","text":"x","cache":1}]}]})",
                 "messages[0].content[0].cache");
  expect_refused(E, R"({"messages":[{"role":"assistant","content":"x","tool_calls":[{}]}]})",
                 "messages[0].tool_calls", "not supported");
  expect_refused(E, R"({"messages":[{"role":"user","content":"x","tool_call_id":"1"}]})", "messages[0].tool_call_id");
  expect_refused(E, R"({"messages":[{"role":"user","content":"x","extra":1}]})", "messages[0].extra",
                 "Unrecognized message argument");
  expect_refused(E, R"({"messages":[{"role":"user","content":"x","name":3}]})", "messages[0].name");
}

TEST(ServerRequest, MalformedJson) {
  const auto E = Endpoint::kChatCompletions;
  expect_refused(E, "", "", "could not parse the JSON body");
  expect_refused(E, "{", "", "could not parse");
  expect_refused(E, R"({"messages":[{"role":"user","content":"hi"}]} trailing)", "");
  expect_refused(E, R"([{"role":"user"}])", "", "expected a JSON object");
  expect_refused(E, R"("hello")", "");
  expect_refused(E, R"({"messages":[{"role":"user","content":"hi"}],"model":"a","model":"b"})", "", "appears twice");
  expect_refused(E, std::string(200, '[') + std::string(200, ']'), "", "depth");
  expect_refused(E, std::string("{\"messages\":\"a\0b\"}", 19), "", "NUL");
  expect_refused(E, "{\"model\":\"\xff\"}", "", "could not parse");  // invalid UTF-8
}

TEST(ServerRequest, Completions) {
  const CompletionRequest r = parse_completion_request(
      R"({"model":"m","prompt":"Once upon","max_tokens":16,"temperature":0,"stop":"\n","echo":false,"suffix":null,
          "best_of":1,"n":1,"seed":3,"stream":true,"stream_options":{"include_usage":true},"user":"x"})");
  EXPECT_EQ(r.endpoint, Endpoint::kCompletions);
  EXPECT_EQ(r.prompt, "Once upon");
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_TRUE(r.sampling.is_greedy());
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.messages.empty());
  EXPECT_EQ(parse_completion_request(R"({"prompt":["one"]})").prompt, "one");
  EXPECT_EQ(parse_completion_request(R"({"prompt":""})").prompt, "");
  const auto E = Endpoint::kCompletions;
  expect_refused(E, R"({"model":"m"})", "prompt", "Missing required parameter: 'prompt'");
  expect_refused(E, R"({"prompt":["a","b"]})", "prompt", "batch");
  expect_refused(E, R"({"prompt":[1,2,3]})", "prompt");
  expect_refused(E, R"({"prompt":[[1,2]]})", "prompt", "token-id");
  expect_refused(E, R"({"prompt":[]})", "prompt");
  expect_refused(E, R"({"prompt":5})", "prompt");
  expect_refused(E, R"({"prompt":null})", "prompt");
  completion_refused(R"(,"echo":true)", "echo", "not supported");
  completion_refused(R"(,"suffix":"end")", "suffix");
  completion_refused(R"(,"best_of":2)", "best_of", "only 1");
  completion_refused(R"(,"n":3)", "n");
  completion_refused(R"(,"messages":[])", "messages", "Unrecognized");
  completion_refused(R"(,"response_format":{"type":"text"})", "response_format");
  completion_refused(R"(,"tools":[{}])", "tools");
}

TEST(ServerRequest, ErrorIsASpeculaError) {
  try {
    parse_chat_completion_request("{}");
    FAIL();
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find("messages"), std::string::npos);
  }
}

}  // namespace
}  // namespace specula::server
