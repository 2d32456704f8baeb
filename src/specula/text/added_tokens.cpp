// Leftmost-longest added-token search and the HF segment rules (see added_tokens.h).
#include "specula/text/added_tokens.h"

#include <algorithm>

#include "specula/text/unicode.h"

namespace specula::text {
namespace {

// Code point ending at byte `end` of valid UTF-8 `text` (end > 0).
char32_t code_point_before(std::string_view text, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  size_t length = 0;
  return decode_utf8(text, start, &length);
}

// Start of the run of whitespace that ends at `end` (HF: `\s*$`).
size_t whitespace_run_start_before(std::string_view text, size_t end) {
  size_t pos = end;
  while (pos > 0) {
    size_t start = pos - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    size_t length = 0;
    if (!is_white_space(decode_utf8(text, start, &length))) break;
    pos = start;
  }
  return pos;
}

// End of the run of whitespace that starts at `start` (HF: `^\s*`).
size_t whitespace_run_end_after(std::string_view text, size_t start) {
  size_t pos = start;
  while (pos < text.size()) {
    size_t length = 0;
    if (!is_white_space(decode_utf8(text, pos, &length))) break;
    pos += length;
  }
  return pos;
}

}  // namespace

void AddedTokenMatcher::add(std::string_view pattern, const AddedToken* token) {
  if (pattern.empty()) return;  // an empty pattern would match everywhere; HF never matches it either
  int32_t node = 0;
  for (char ch : pattern) {
    const auto byte = static_cast<unsigned char>(ch);
    int32_t child = -1;
    for (const auto& [b, index] : nodes_[node].children) {
      if (b == byte) child = index;
    }
    if (child < 0) {
      child = static_cast<int32_t>(nodes_.size());
      nodes_[node].children.emplace_back(byte, child);
      nodes_.emplace_back();
    }
    node = child;
  }
  // The first token listed wins a duplicate pattern, as the first inserted pattern does in HF.
  if (nodes_[node].token == nullptr) nodes_[node].token = token;
  first_byte_[static_cast<unsigned char>(pattern[0])] = true;
}

const AddedToken* AddedTokenMatcher::longest_match_at(std::string_view text, size_t pos, size_t* length) const {
  const AddedToken* best = nullptr;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    int32_t child = -1;
    for (const auto& [b, index] : nodes_[node].children) {
      if (b == byte) {
        child = index;
        break;
      }
    }
    if (child < 0) break;
    node = child;
    if (nodes_[node].token != nullptr) {
      best = nodes_[node].token;
      *length = i + 1 - pos;
    }
  }
  return best;
}

std::vector<TextSegment> AddedTokenMatcher::split(std::string_view text, bool parse_special) const {
  std::vector<TextSegment> segments;
  size_t consumed = 0;  // end of the previous kept match (HF start_offset)
  size_t scan = 0;      // where the non-overlapping search resumes
  while (scan < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[scan])]) {
      ++scan;
      continue;
    }
    size_t length = 0;
    const AddedToken* token = longest_match_at(text, scan, &length);
    if (token == nullptr) {
      ++scan;
      continue;
    }
    size_t start = scan;
    size_t stop = scan + length;
    scan = stop;
    if (!parse_special && token->special) continue;
    if (token->single_word) {
      const bool space_before = start == 0 || !is_word_char(code_point_before(text, start));
      size_t next_length = 0;
      const bool space_after = stop == text.size() || !is_word_char(decode_utf8(text, stop, &next_length));
      if (!space_before || !space_after) continue;
    }
    if (token->lstrip) start = std::max(whitespace_run_start_before(text, start), consumed);
    if (token->rstrip) stop = whitespace_run_end_after(text, stop);
    if (consumed < start) segments.push_back({consumed, start, -1});
    segments.push_back({start, stop, token->id});
    // The search resumes at the end of the match itself even when rstrip absorbed more, as in HF.
    consumed = stop;
  }
  if (consumed < text.size()) segments.push_back({consumed, text.size(), -1});
  return segments;
}

}  // namespace specula::text
