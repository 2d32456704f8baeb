// Oniguruma-semantics regexes on PCRE2: the translations that matter for tokenizer.json patterns
// (\s as White_Space, \w, \h, \d, anchors, inline options), case-insensitive contractions, the
// `\s+(?!\S)` lookahead, Oniguruma's empty-match iteration, and constructs rejected outright.
#include <gtest/gtest.h>

#include "specula/core/error.h"
#include "specula/text/regex.h"

using specula::text::Match;
using specula::text::Regex;

namespace {

std::vector<std::string> pieces(const std::string& pattern, std::string_view text) {
  const Regex regex = Regex::compile_oniguruma(pattern, "test");
  std::vector<std::string> out;
  for (const Match& m : regex.find_all(text)) out.emplace_back(text.substr(m.start, m.end - m.start));
  return out;
}

using Pieces = std::vector<std::string>;

const std::string kLlama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

}  // namespace

TEST(TokenizerRegex, WhitespaceIsUnicodeWhiteSpace) {
  // NEL (U+0085) and NBSP are White_Space; U+180E (Mongolian vowel separator) is not, although
  // PCRE2's own UCP \s still counts it.
  EXPECT_EQ(pieces("\\s+", "a\xC2\x85\xC2\xA0" "b"), (Pieces{"\xC2\x85\xC2\xA0"}));
  EXPECT_EQ(pieces("\\s", "a\xE1\xA0\x8E" "b"), Pieces{});
  EXPECT_EQ(pieces("[^\\s]+", "a\xE1\xA0\x8E" "b c"), (Pieces{"a\xE1\xA0\x8E" "b", "c"}));
  EXPECT_EQ(pieces("\\S+", "\xE3\x80\x80x\xE3\x80\x80"), (Pieces{"x"}));  // U+3000 ideographic space
}

TEST(TokenizerRegex, OnigurumaEscapesAndOptions) {
  EXPECT_EQ(pieces("\\h+", "zz0fA9g"), (Pieces{"0fA9"}));   // hex digit, not horizontal space
  EXPECT_EQ(pieces("\\d+", "a12\xD9\xA3" "b"), (Pieces{"12\xD9\xA3"}));  // Arabic-Indic digit is Nd
  EXPECT_EQ(pieces("\\w+", "e\xCC\x81t\xC3\xA9_1 x"), (Pieces{"e\xCC\x81t\xC3\xA9_1", "x"}));  // marks are word chars
  EXPECT_EQ(pieces("\\u00e9", "caf\xC3\xA9"), (Pieces{"\xC3\xA9"}));
  EXPECT_EQ(pieces("^a", "a\na"), (Pieces{"a", "a"}));      // ^ is a line anchor in Oniguruma
  EXPECT_EQ(pieces("(?m:a.b)", "a\nb"), (Pieces{"a\nb"}));  // Ruby's m: dot matches newline
  EXPECT_EQ(pieces("a.b", "a\nb"), Pieces{});
  EXPECT_EQ(pieces("\\p{Letter}+", "ab1"), (Pieces{"ab"}));
  EXPECT_EQ(pieces("\\p{^L}+", "ab12"), (Pieces{"12"}));
}

TEST(TokenizerRegex, CaseInsensitiveContractionsUseUnicodeFolding) {
  EXPECT_EQ(pieces("(?i:'s|'ll)", "'S 'Ll 's \xE2\x80\x99s"), (Pieces{"'S", "'Ll", "'s"}));
  // U+017F LATIN SMALL LETTER LONG S folds to 's' in both engines.
  EXPECT_EQ(pieces("(?i:'s)", "'\xC5\xBF"), (Pieces{"'\xC5\xBF"}));
}

TEST(TokenizerRegex, Llama3PatternSplitsLikeHuggingFace) {
  EXPECT_EQ(pieces(kLlama3, "Hello world"), (Pieces{"Hello", " world"}));
  // \s+(?!\S) leaves the last space of a run for the next word.
  EXPECT_EQ(pieces(kLlama3, " hello  world\n\n  x"), (Pieces{" hello", " ", " world", "\n\n", " ", " x"}));
  EXPECT_EQ(pieces(kLlama3, "I'm 12345 DON'T"), (Pieces{"I", "'m", " ", "123", "45", " DON", "'T"}));
  EXPECT_EQ(pieces(kLlama3, "a...\n\nb"), (Pieces{"a", "...\n\n", "b"}));
}

TEST(TokenizerRegex, EmptyMatchesFollowOnigurumaIteration) {
  // An empty match right where the previous match ended is skipped by moving on one character.
  const Regex regex = Regex::compile_oniguruma("a*", "test");
  const std::vector<Match> matches = regex.find_all("baaac");
  ASSERT_EQ(matches.size(), 3u);
  EXPECT_EQ(matches[0].start, 0u);
  EXPECT_EQ(matches[0].end, 0u);
  EXPECT_EQ(matches[1].start, 1u);
  EXPECT_EQ(matches[1].end, 4u);
  EXPECT_EQ(matches[2].start, 5u);
  EXPECT_EQ(matches[2].end, 5u);
}

TEST(TokenizerRegex, UntranslatableConstructsAreRejected) {
  for (const char* pattern : {"[a&&b]", "[\\W]", "[[a]]", "(?y)a", "[abc", "\\u12"}) {
    EXPECT_THROW(Regex::compile_oniguruma(pattern, "test"), specula::Error) << pattern;
  }
  try {
    Regex::compile_oniguruma("(?<=a+)b", "pre_tokenizer (Split)");
    ADD_FAILURE() << "variable-length lookbehind compiled";
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find("pre_tokenizer (Split)"), std::string::npos) << e.what();
  }
}
