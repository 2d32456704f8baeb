// Regular expressions for tokenizer.json patterns, with the semantics Hugging Face `tokenizers`
// gives them. HF compiles `{"Regex": ...}` patterns with Oniguruma (Oniguruma syntax, UTF-8,
// no options); we compile them with PCRE2 (UTF + UCP, JIT when available) after translating the
// constructs whose meaning differs between the two engines:
//   \s \S      Oniguruma: Unicode White_Space. PCRE2 UCP also counts U+180E, so use \p{White_Space}.
//   \d \D      Oniguruma: General_Category Nd; spelled \p{Nd} so it cannot depend on PCRE2 options.
//   \w \W      Oniguruma: Letter | Mark | Number | Connector_Punctuation (PCRE2 UCP lacks marks).
//   \h \H      Oniguruma: hexadecimal digit (PCRE2: horizontal space).
//   \uHHHH     Oniguruma escape; PCRE2 spells it \x{HHHH}.
//   ^ $        Oniguruma: line anchors always (PCRE2 needs (?m)); newline is LF only.
//   (?m)       Oniguruma (Ruby option letters): dot matches newline, i.e. PCRE2 (?s).
//   \p{Letter} long property names, unknown to PCRE2 10.42, mapped to short ones.
// \b and \B keep PCRE2's UCP word definition (letters, numbers, underscore), which lacks marks.
// Both are backtracking, leftmost-first engines, so alternation order, lazy and possessive
// quantifiers, lookaround and (?i:...) (full Unicode simple case folding) behave the same.
// Constructs we cannot translate faithfully (class set operations `&&`, \W or \H inside a class,
// nested classes) are rejected with an error instead of being approximated.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace specula::text {

struct Match {
  size_t start;
  size_t end;
};

class Regex {
 public:
  // `where` names the pattern's place in the file for error messages.
  static Regex compile_oniguruma(std::string_view pattern, const std::string& where);
  // Exposed for tests: the PCRE2 pattern the translation produces.
  static std::string translate_oniguruma(std::string_view pattern, const std::string& where);

  // All matches, found as Rust's `onig` crate `find_iter` does: each search starts where the
  // previous match ended, and an empty match right at the end of the previous match is skipped
  // by moving the search start one character on. `text` must be valid UTF-8.
  std::vector<Match> find_all(std::string_view text) const;

  const std::string& source() const { return source_; }

 private:
  struct Compiled;
  std::shared_ptr<const Compiled> compiled_;
  std::string source_;
};

// Splits `text` into matched and unmatched ranges covering it, in order (HF `Pattern::find_matches`):
// empty text gives one unmatched empty range.
struct MatchRange {
  size_t start;
  size_t end;
  bool is_match;
};
std::vector<MatchRange> ranges_from_matches(std::string_view text, const std::vector<Match>& matches);

// Non-overlapping, leftmost occurrences of a non-empty literal.
std::vector<Match> find_literal(std::string_view text, std::string_view literal);

}  // namespace specula::text
