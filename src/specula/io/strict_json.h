// JSON parsing for untrusted inputs: config.json, generation_config.json, tokenizer.json,
// tokenizer_config.json; and the checks any other JSON reader (such as the streaming safetensors
// header and shard index readers) can share.
// Three things nlohmann::json does not do for us live here, shared by every JSON reader:
//   - a nesting-depth limit, checked on the raw text before any tree exists (nlohmann parses
//     iteratively, but dump(), copies and comparisons of a value recurse once per level, so a
//     value nested 100,000 deep overflows the stack as soon as anything touches it);
//   - duplicate keys refused at every depth (nlohmann silently keeps one of the two, and a
//     header or config where the same name appears twice is ambiguous);
//   - short excerpts for error messages, so a hostile value (a gigabyte array, a string of
//     terminal escapes) is never pasted whole into an error.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

namespace specula::io {

// The deepest nesting of arrays and objects any JSON input may have. Real files nest a few
// levels (a tokenizer.json Sequence of Sequences is about 6); 128 leaves ample room yet keeps
// every recursive walk of a parsed value (dump, copy, ==, the tokenizer's component builders)
// a few kilobytes of stack.
constexpr size_t kMaxJsonDepth = 128;

// How many characters of an untrusted value an error message quotes: enough to recognise it.
constexpr size_t kExcerptChars = 64;

// What every JSON reader checks on the text before parsing it; throws, prefixing `what`, when the
// text contains a NUL byte (nlohmann's lexer takes it for the end of input and would ignore the
// rest) or nests arrays/objects deeper than `max_depth`. A linear scan that allocates nothing.
void check_json_text(std::string_view text, const std::string& what, size_t max_depth = kMaxJsonDepth);

// `text` cut to at most `max_chars` bytes (at a UTF-8 boundary) with "..." and the full length
// appended when cut; control characters are written as \xNN so a message cannot drive a terminal.
std::string text_excerpt(std::string_view text, size_t max_chars = kExcerptChars);

// A compact JSON rendering of `value` cut like text_excerpt; never serialises more than about
// `max_chars` of it, however large or deep the value is.
std::string json_excerpt(const nlohmann::json& value, size_t max_chars = kExcerptChars);

// The message of one of nlohmann's exceptions, cut to a few hundred characters: its parse errors
// quote the token being read ("last read: '...'"), which can be a whole multi-megabyte string.
std::string json_error_excerpt(const nlohmann::json::exception& e);

// The keys of each object still open during a streaming (SAX) parse, for refusing duplicates.
// Used by parse_strict_json and by the tokenizer.json reader.
class DuplicateKeys {
 public:
  void open_object() { open_.emplace_back(); }
  void close_object() {
    if (!open_.empty()) open_.pop_back();
  }
  // Records `key` in the innermost open object; false when it was already there.
  bool add(const std::string& key) { return open_.empty() || open_.back().insert(key).second; }

 private:
  std::vector<std::unordered_set<std::string>> open_;
};

// Assembles a document from SAX events in their order: each value goes into the innermost open
// container (under the last key when that is an object), and a key repeated in one object is
// refused. Pointers to open containers stay valid (a container that holds an open one gets no new
// element until it closes). parse_strict_json's handler and the tokenizer.json reader (which
// diverts its vocab and merges before they reach a tree) both build with it.
class JsonTreeBuilder {
 public:
  nlohmann::json root;

  void value(nlohmann::json&& v) { insert(std::move(v)); }
  void open_object();
  void open_array();
  void close();  // the innermost open object or array
  // A key of the innermost open object; false (nothing recorded) when it is already there.
  bool key(std::string&& k);
  const std::string& current_key() const { return key_; }
  size_t depth() const { return open_.size(); }
  // The open container at `level` (0 = outermost) and the key it sits under in its parent object
  // ("" for the root and for array elements).
  const nlohmann::json& container(size_t level) const { return *open_[level]; }
  const std::string& key_of(size_t level) const { return open_keys_[level]; }

 private:
  nlohmann::json* insert(nlohmann::json&& v);
  void open(nlohmann::json&& container);
  std::vector<nlohmann::json*> open_;
  std::vector<std::string> open_keys_;
  std::string key_;
  DuplicateKeys keys_;
};

// Parses `text` as one JSON document (surrounding whitespace allowed) after check_json_text;
// `what` (usually the file name) starts every error message.
nlohmann::json parse_strict_json(std::string_view text, const std::string& what);

// parse_strict_json, and the top level must be an object (config files, indexes).
nlohmann::json parse_strict_json_object(std::string_view text, const std::string& what);

}  // namespace specula::io
