// Parsing of OpenAI request bodies (see openai_request.h for the policy). One pass over the
// top-level object: each key is looked up in a table of known fields; a field's handler checks
// its type and range and fills CompletionRequest, naming the field in any RequestError.
#include "specula/server/openai_request.h"

#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "specula/engine/limits.h"
#include "specula/io/strict_json.h"
#include "specula/server/stop_matcher.h"

namespace specula::server {
namespace {

using Json = nlohmann::json;

[[noreturn]] void refuse(const std::string& param, const std::string& message) {
  throw RequestError::invalid(param, message);
}

const char* type_name(const Json& v) {
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();  // "null", "boolean", "string", "array", "object"
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const Json& v) {
  refuse(param, detail::concat("Invalid type for '", param, "': expected ", expected, ", but got ", type_name(v), "."));
}

bool is_int(const Json& v) { return v.is_number_integer() || v.is_number_unsigned(); }

std::string get_string(const Json& v, const std::string& param) {
  if (!v.is_string()) wrong_type(param, "a string", v);
  return v.get<std::string>();
}

bool get_bool(const Json& v, const std::string& param) {
  if (!v.is_boolean()) wrong_type(param, "a boolean", v);
  return v.get<bool>();
}

// An integer in [lo, hi].
int64_t get_int(const Json& v, const std::string& param, int64_t lo, int64_t hi) {
  if (!is_int(v)) wrong_type(param, "an integer", v);
  bool in_range;
  int64_t x = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    in_range = u <= static_cast<uint64_t>(hi) && (lo <= 0 || u >= static_cast<uint64_t>(lo));
    if (in_range) x = static_cast<int64_t>(u);
  } else {
    x = v.get<int64_t>();
    in_range = x >= lo && x <= hi;
  }
  if (!in_range)
    refuse(param, detail::concat("Invalid value for '", param, "': expected an integer in [", lo, ", ", hi,
                                 "], but got ", io::json_excerpt(v), "."));
  return x;
}

// A number in [lo, hi] (open at lo when lo_open).
float get_number(const Json& v, const std::string& param, double lo, double hi, bool lo_open = false) {
  if (!v.is_number()) wrong_type(param, "a number", v);
  const double x = v.get<double>();
  if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
    refuse(param, detail::concat("Invalid value for '", param, "': expected a number in ", lo_open ? "(" : "[", lo,
                                 ", ", hi, "], but got ", io::json_excerpt(v), "."));
  return static_cast<float>(x);
}

void refuse_unsupported(const std::string& param, const std::string& what) {
  refuse(param, detail::concat("'", param, "': ", what, " is not supported by this server."));
}

std::string text_of_content(const Json& content, const std::string& param) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) wrong_type(param, "a string or an array of content parts", content);
  if (content.empty()) refuse(param, "Invalid '" + param + "': an array of content parts must not be empty.");
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const Json& part = content[j];
    const std::string pp = param + "[" + std::to_string(j) + "]";
    if (!part.is_object()) wrong_type(pp, "an object", part);
    const auto type_it = part.find("type");
    if (type_it == part.end()) refuse(pp + ".type", "Missing required parameter: '" + pp + ".type'.");
    const std::string type = get_string(*type_it, pp + ".type");
    if (type != "text") {
      if (type == "image_url" || type == "input_audio" || type == "file" || type == "refusal")
        refuse_unsupported(pp + ".type", "content of type '" + type + "'");
      refuse(pp + ".type", "Invalid value for '" + pp + ".type': '" + io::text_excerpt(type) +
                               "'. Supported value: 'text'.");
    }
    for (auto it = part.begin(); it != part.end(); ++it)
      if (it.key() != "type" && it.key() != "text")
        refuse(pp + "." + it.key(), "Unrecognized content part argument: '" + io::text_excerpt(it.key()) + "'.");
    const auto text_it = part.find("text");
    if (text_it == part.end()) refuse(pp + ".text", "Missing required parameter: '" + pp + ".text'.");
    if (j > 0) text += '\n';
    text += get_string(*text_it, pp + ".text");
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const Json& v) {
  if (!v.is_array()) wrong_type("messages", "an array", v);
  if (v.empty()) refuse("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1.");
  std::vector<ChatMessage> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& m = v[i];
    const std::string mp = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) wrong_type(mp, "an object", m);
    ChatMessage msg;
    const auto role_it = m.find("role");
    if (role_it == m.end()) refuse(mp + ".role", "Missing required parameter: '" + mp + ".role'.");
    msg.role = get_string(*role_it, mp + ".role");
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant")
      refuse(mp + ".role", "Invalid value for '" + mp + ".role': '" + io::text_excerpt(msg.role) +
                               "'. Supported values are: 'system', 'user' and 'assistant'.");
    bool has_content = false;
    for (auto it = m.begin(); it != m.end(); ++it) {
      const std::string& key = it.key();
      const std::string kp = mp + "." + key;
      if (key == "role") continue;
      if (key == "content") {
        msg.content = text_of_content(it.value(), kp);
        has_content = true;
      } else if (key == "name") {
        get_string(it.value(), kp);  // accepted, not used by the chat templates
      } else if ((key == "tool_calls" || key == "function_call" || key == "audio" || key == "refusal") &&
                 it.value().is_null()) {
        // null: absent
      } else if (key == "tool_calls" || key == "function_call" || key == "tool_call_id" || key == "audio") {
        refuse_unsupported(kp, "'" + key + "'");
      } else {
        refuse(kp, "Unrecognized message argument: '" + io::text_excerpt(key) + "' in " + mp + ".");
      }
    }
    if (!has_content) refuse(mp + ".content", "Missing required parameter: '" + mp + ".content'.");
    out.push_back(std::move(msg));
  }
  return out;
}

std::vector<std::string> parse_stop(const Json& v) {
  std::vector<std::string> stops;
  auto check_one = [](const Json& s, const std::string& param) {
    std::string text = get_string(s, param);
    if (text.empty()) refuse(param, "Invalid '" + param + "': stop strings must not be empty.");
    if (text.size() > kMaxStopBytes)
      refuse(param, detail::concat("Invalid '", param, "': stop strings are at most ", kMaxStopBytes,
                                   " bytes, got ", text.size(), "."));
    return text;
  };
  if (v.is_string()) {
    stops.push_back(check_one(v, "stop"));
  } else if (v.is_array()) {
    if (v.size() > kMaxStops)
      refuse("stop", detail::concat("Invalid 'stop': array too long. Expected an array with maximum length ",
                                    kMaxStops, ", but got an array with length ", v.size(), " instead."));
    for (size_t i = 0; i < v.size(); ++i) stops.push_back(check_one(v[i], "stop[" + std::to_string(i) + "]"));
  } else {
    wrong_type("stop", "a string or an array of strings", v);
  }
  return stops;
}

// Fields OpenAI clients send routinely that do not change the generated text: type-checked
// loosely (any JSON) and ignored.
bool is_ignored_field(const std::string& key) {
  return key == "user" || key == "metadata" || key == "store" || key == "service_tier" ||
         key == "parallel_tool_calls" || key == "safety_identifier" || key == "prompt_cache_key";
}

CompletionRequest parse_fields(Endpoint endpoint, const Json& body) {
  const bool chat = endpoint == Endpoint::kChatCompletions;
  CompletionRequest r;
  r.endpoint = endpoint;
  r.sampling.temperature = 1.0f;
  bool have_input = false;
  int64_t max_tokens = 0, max_completion_tokens = 0;
  bool top_logprobs_given = false;
  const Json* stream_options = nullptr;
  constexpr int64_t kMaxTopLogprobs = 20;

  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& key = it.key();
    const Json& v = it.value();
    if (is_ignored_field(key)) continue;
    if (chat && key == "messages") {
      r.messages = parse_messages(v);
      have_input = true;
      continue;
    }
    if (!chat && key == "prompt") {
      if (v.is_string()) {
        r.prompt = v.get<std::string>();
      } else if (v.is_array() && v.size() == 1 && v[0].is_string()) {
        r.prompt = v[0].get<std::string>();
      } else if (v.is_array() && v.size() > 1) {
        refuse("prompt", "'prompt': a batch of several prompts is not supported by this server; send one string.");
      } else if (v.is_array() && v.size() == 1) {
        refuse("prompt", "'prompt': token-id prompts are not supported by this server; send one string.");
      } else {
        wrong_type("prompt", "a string or an array of one string", v);
      }
      have_input = true;
      continue;
    }
    if (v.is_null()) {
      // null means absent for every optional field (still refused below if unknown).
      if (key == "model" || key == "max_tokens" || key == "max_completion_tokens" || key == "temperature" ||
          key == "top_p" || key == "top_k" || key == "min_p" || key == "presence_penalty" ||
          key == "frequency_penalty" || key == "repetition_penalty" || key == "stop" || key == "seed" ||
          key == "logprobs" || key == "top_logprobs" || key == "stream" || key == "stream_options" || key == "n" ||
          key == "tools" || key == "tool_choice" || key == "functions" || key == "function_call" ||
          key == "response_format" || key == "logit_bias" || key == "modalities" || key == "echo" ||
          key == "best_of" || key == "suffix")
        continue;
    }
    if (key == "model") {
      r.model = get_string(v, key);
    } else if (key == "max_tokens") {
      max_tokens = get_int(v, key, 1, engine::kMaxNewTokens);
    } else if (key == "max_completion_tokens" && chat) {
      max_completion_tokens = get_int(v, key, 1, engine::kMaxNewTokens);
    } else if (key == "temperature") {
      r.sampling.temperature = get_number(v, key, 0.0, 2.0);
    } else if (key == "top_p") {
      r.sampling.top_p = get_number(v, key, 0.0, 1.0, /*lo_open=*/true);
    } else if (key == "top_k") {
      const int64_t k = get_int(v, key, -1, std::numeric_limits<int32_t>::max());
      r.sampling.top_k = k < 0 ? 0 : static_cast<int>(k);
    } else if (key == "min_p") {
      r.sampling.min_p = get_number(v, key, 0.0, 1.0);
    } else if (key == "presence_penalty") {
      r.sampling.presence_penalty = get_number(v, key, -2.0, 2.0);
    } else if (key == "frequency_penalty") {
      r.sampling.frequency_penalty = get_number(v, key, -2.0, 2.0);
    } else if (key == "repetition_penalty") {
      r.sampling.repetition_penalty = get_number(v, key, 0.0, 2.0, /*lo_open=*/true);
    } else if (key == "stop") {
      r.stop = parse_stop(v);
    } else if (key == "seed") {
      if (!is_int(v)) wrong_type(key, "an integer", v);
      r.sampling.seed = v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
      r.seed_given = true;
    } else if (key == "logprobs") {
      if (chat) {
        r.logprobs = get_bool(v, key);
      } else {
        r.top_logprobs = static_cast<int>(get_int(v, key, 0, kMaxTopLogprobs));
        r.logprobs = true;
      }
    } else if (key == "top_logprobs" && chat) {
      r.top_logprobs = static_cast<int>(get_int(v, key, 0, kMaxTopLogprobs));
      top_logprobs_given = true;
    } else if (key == "stream") {
      r.stream = get_bool(v, key);
    } else if (key == "stream_options") {
      if (!v.is_object()) wrong_type(key, "an object", v);
      stream_options = &v;
    } else if (key == "n" || (key == "best_of" && !chat)) {
      if (get_int(v, key, 1, std::numeric_limits<int32_t>::max()) != 1)
        refuse(key, "'" + key + "': only 1 is supported by this server (one choice per request).");
    } else if (key == "tools" || (key == "functions" && chat)) {
      if (!v.is_array()) wrong_type(key, "an array", v);
      if (!v.empty()) refuse_unsupported(key, "tool and function calling");
    } else if (key == "tool_choice" || (key == "function_call" && chat)) {
      if (!(v.is_string() && v.get<std::string>() == "none")) refuse_unsupported(key, "tool and function calling");
    } else if (key == "response_format" && chat) {
      if (!v.is_object()) wrong_type(key, "an object", v);
      const auto t = v.find("type");
      if (t == v.end()) refuse("response_format.type", "Missing required parameter: 'response_format.type'.");
      const std::string type = get_string(*t, "response_format.type");
      if (type != "text") refuse_unsupported("response_format.type", "response_format type '" + io::text_excerpt(type) + "'");
      for (auto f = v.begin(); f != v.end(); ++f)
        if (f.key() != "type")
          refuse("response_format." + f.key(), "Unrecognized argument: 'response_format." + io::text_excerpt(f.key()) + "'.");
    } else if (key == "logit_bias") {
      if (!v.is_object()) wrong_type(key, "an object", v);
      if (!v.empty()) refuse_unsupported(key, "logit_bias");
    } else if (key == "modalities" && chat) {
      if (!v.is_array()) wrong_type(key, "an array", v);
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string p = "modalities[" + std::to_string(i) + "]";
        if (get_string(v[i], p) != "text") refuse_unsupported(p, "output modality '" + io::text_excerpt(v[i].get<std::string>()) + "'");
      }
    } else if (key == "echo" && !chat) {
      if (get_bool(v, key)) refuse_unsupported(key, "echo=true");
    } else if (key == "suffix" && !chat) {
      if (!get_string(v, key).empty()) refuse_unsupported(key, "suffix (insertion)");
    } else {
      refuse(key, "Unrecognized request argument supplied: " + io::text_excerpt(key));
    }
  }

  if (!have_input) {
    const char* what = chat ? "messages" : "prompt";
    refuse(what, std::string("Missing required parameter: '") + what + "'.");
  }
  r.max_tokens = max_completion_tokens > 0 ? max_completion_tokens : max_tokens;
  if (chat && top_logprobs_given && !r.logprobs && r.top_logprobs > 0)
    refuse("top_logprobs", "Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.");
  if (stream_options != nullptr) {
    if (!r.stream) refuse("stream_options", "'stream_options' is only allowed when 'stream' is true.");
    for (auto it = stream_options->begin(); it != stream_options->end(); ++it) {
      const std::string p = "stream_options." + it.key();
      if (it.key() == "include_usage") {
        if (!it.value().is_null()) r.include_usage = get_bool(it.value(), p);
      } else if (it.key() == "include_obfuscation" && (it.value().is_boolean() || it.value().is_null())) {
        // no obfuscation padding is ever added; nothing to turn off
      } else {
        refuse(p, "Unrecognized argument: '" + io::text_excerpt(p) + "'.");
      }
    }
  }
  try {
    r.sampling.validate();
  } catch (const std::exception& e) {
    refuse("", e.what());  // unreachable when the ranges above agree with validate()
  }
  return r;
}

}  // namespace

CompletionRequest parse_request(Endpoint endpoint, std::string_view body) {
  Json json;
  try {
    json = io::parse_strict_json_object(body, "request body");
  } catch (const std::exception& e) {
    throw RequestError::invalid("", std::string("We could not parse the JSON body of your request: ") + e.what());
  }
  return parse_fields(endpoint, json);
}

CompletionRequest parse_chat_completion_request(std::string_view body) {
  return parse_request(Endpoint::kChatCompletions, body);
}

CompletionRequest parse_completion_request(std::string_view body) {
  return parse_request(Endpoint::kCompletions, body);
}

}  // namespace specula::server
