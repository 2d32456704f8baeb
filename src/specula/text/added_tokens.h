// Added tokens ("added_tokens" in tokenizer.json): strings that bypass the model and map straight
// to an id (chat markers, BOS/EOS, reserved tokens, Qwen's <think>).
// Matching follows HF `AddedVocabulary`: a byte trie searched leftmost-longest, non-overlapping
// (aho-corasick's LeftmostLongest); tokens with `normalized: false` are found in the raw text,
// `normalized: true` ones in each normalized segment (their patterns normalized the same way).
// `single_word` discards a match touching a word character, `lstrip`/`rstrip` widen it over
// adjacent whitespace, and when special-token parsing is off a special match is discarded (its
// text then stays ordinary text, as with HF's `encode_special_tokens`). A discarded match still
// consumes its span for the scan, as in HF, so a shorter token inside it is not tried.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace specula::text {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// A piece of text: either an added token (token_id >= 0) or ordinary text to tokenize.
struct TextSegment {
  size_t start;
  size_t end;
  int32_t token_id;
};

class AddedTokenMatcher {
 public:
  // `patterns[i]` is what token `tokens[i]` looks like in the text being searched.
  AddedTokenMatcher() = default;
  void add(std::string_view pattern, const AddedToken* token);
  bool empty() const { return nodes_.size() <= 1; }

  // Splits `text` (non-empty) into segments; empty segments are dropped.
  std::vector<TextSegment> split(std::string_view text, bool parse_special) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    const AddedToken* token = nullptr;
  };
  // Longest match starting at `pos`, or nullptr; sets `length`.
  const AddedToken* longest_match_at(std::string_view text, size_t pos, size_t* length) const;
  std::vector<Node> nodes_{Node{}};
  bool first_byte_[256] = {};
};

}  // namespace specula::text
