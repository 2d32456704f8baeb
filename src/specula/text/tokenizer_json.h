// Streaming reader for tokenizer.json. Nearly all of a tokenizer.json is model.vocab (150k
// entries) and model.merges (up to 300k); building them as a JSON DOM of map nodes and then
// copying them out costs most of the load time, so a SAX pass sends those two straight into flat
// vectors and builds an ordinary DOM for everything else (small: components, added tokens).
// Values of an unexpected shape inside vocab/merges are reported with their index or token.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "specula/text/bpe_model.h"

namespace specula::text {

struct TokenizerJson {
  nlohmann::json root;  // without model.vocab / model.merges when those were streamed out
  BpeTables tables;     // what was streamed out
};

// Throws Error("invalid JSON: ...") on malformed JSON, nesting beyond io::kMaxJsonDepth and
// duplicate keys, and an Error naming the entry for vocab/merges entries of the wrong shape.
TokenizerJson read_tokenizer_json(const std::string& text);

}  // namespace specula::text
