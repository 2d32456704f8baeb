// JSON parsing for untrusted checkpoint metadata (safetensors headers, shard indexes).
// nlohmann::json silently keeps one of two duplicate keys; a header where the same tensor name
// appears twice is ambiguous, so this parser rejects duplicate keys at every depth, and turns
// parse errors into specula::Error naming the source.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace specula::io {

// Parses `text` as one JSON document (surrounding whitespace allowed); `what` prefixes errors.
nlohmann::json parse_strict_json(std::string_view text, const std::string& what);

}  // namespace specula::io
