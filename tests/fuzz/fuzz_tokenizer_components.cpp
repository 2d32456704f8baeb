// Fuzz target: tokenizer.json components one at a time, where mutating a whole tokenizer.json
// mostly breaks its syntax or its 300-entry vocabulary. The input is one JSON value, a NUL byte,
// then a text. The first byte of the JSON picks the slot it replaces in a small byte-level
// tokenizer (tests/fuzz/data/llama3_small.json): 'n' normalizer, 'p' pre_tokenizer, 'o'
// post_processor, 'd' decoder, 'a' added_tokens, 'm' the model's options (vocab and merges kept
// unless given); the rest is the value. An accepted tokenizer then encodes the text (when it is
// valid UTF-8), decodes the ids, and stream-decodes them exactly as decode does.
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "specula/core/mapped_file.h"
#include "specula/text/tokenizer.h"

using namespace specula;
using Json = nlohmann::json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Json base = Json::parse(read_text_file(std::string(SPECULA_FUZZ_DATA) + "/llama3_small.json"));
  const std::string_view input = fuzz::as_text(data, size);
  if (input.empty()) return 0;
  const size_t nul = input.find('\0');
  const std::string_view component = input.substr(1, nul == std::string_view::npos ? std::string_view::npos : nul - 1);
  const std::string_view text = nul == std::string_view::npos ? std::string_view("Hello, world! 123 \xC3\xA9t\xC3\xA9")
                                                               : input.substr(nul + 1);
  // Any JSON value (nlohmann's parser; the tokenizer's own strict reader runs on the dump below).
  Json value = Json::parse(component.begin(), component.end(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return 0;
  Json doc = base;
  switch (input[0]) {
    case 'n': doc["normalizer"] = std::move(value); break;
    case 'p': doc["pre_tokenizer"] = std::move(value); break;
    case 'o': doc["post_processor"] = std::move(value); break;
    case 'd': doc["decoder"] = std::move(value); break;
    case 'a': doc["added_tokens"] = std::move(value); break;
    case 'm':
      if (!value.is_object()) return 0;
      for (auto it = value.begin(); it != value.end(); ++it) doc["model"][it.key()] = it.value();
      break;
    default: return 0;
  }
  std::string json;
  try {
    json = doc.dump();
  } catch (const nlohmann::json::exception&) {
    return 0;  // invalid UTF-8 inside a string of the input: not a JSON text at all
  }
  fuzz::expect_value_or_error([&] {
    const text::Tokenizer tok = text::Tokenizer::from_json_string(json, "tokenizer.json");
    for (const bool parse_special : {true, false}) {
      std::vector<int32_t> ids;
      try {
        ids = tok.encode(text, true, parse_special);
      } catch (const specula::Error&) {
        continue;  // invalid UTF-8 text
      }
      for (const int32_t id : ids)
        if (id < 0 || id >= tok.vocab_size()) std::abort();
      for (const bool skip : {false, true}) {
        const std::string decoded = tok.decode(ids, skip);
        text::StreamDecoder stream(tok, skip);
        std::string streamed;
        for (const int32_t id : ids) streamed += stream.push(id);
        streamed += stream.flush();
        if (streamed != decoded) std::abort();
      }
    }
  });
  return 0;
}
