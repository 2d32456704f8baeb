// StopMatcher: fixed cases (stops spanning pieces, overlapping stops, UTF-8) and randomized
// piece splits checked against a reference on the concatenated text: the cut is where the first
// stop string ends (ties: the longest), the emitted text is everything before that stop, and
// at no moment has more been emitted than the final answer (nothing of a stop ever leaks).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "specula/core/error.h"
#include "specula/server/stop_matcher.h"

namespace specula::server {
namespace {

struct Outcome {
  std::string emitted;
  bool stopped = false;
  int stop = -1;
};

// Reference: the first end position where a stop ends; among those, the longest stop.
Outcome reference(const std::string& text, const std::vector<std::string>& stops) {
  for (size_t end = 1; end <= text.size(); ++end) {
    int best = -1;
    for (size_t s = 0; s < stops.size(); ++s) {
      const std::string& p = stops[s];
      if (p.size() <= end && text.compare(end - p.size(), p.size(), p) == 0 &&
          (best < 0 || p.size() > stops[best].size()))
        best = static_cast<int>(s);
    }
    if (best >= 0) return {text.substr(0, end - stops[best].size()), true, best};
  }
  return {text, false, -1};
}

// Feeds `pieces`, checking after every push that the emitted text is a prefix of `expected`
// and on a code point boundary.
Outcome run(const std::vector<std::string>& pieces, const std::vector<std::string>& stops, const Outcome& expected) {
  StopMatcher m(stops);
  Outcome out;
  for (const std::string& p : pieces) {
    out.emitted += m.push(p);
    EXPECT_EQ(expected.emitted.compare(0, out.emitted.size(), out.emitted), 0)
        << "emitted past the answer: '" << out.emitted << "'";
    EXPECT_TRUE(is_valid_utf8(out.emitted)) << "split a code point";
    EXPECT_LE(m.held_bytes(), kMaxStopBytes + p.size());
  }
  out.stopped = m.stopped();
  out.stop = m.matched_stop();
  out.emitted += m.flush();
  return out;
}

void expect_matches(const std::vector<std::string>& pieces, const std::vector<std::string>& stops) {
  std::string text;
  for (const auto& p : pieces) text += p;
  const Outcome want = reference(text, stops);
  const Outcome got = run(pieces, stops, want);
  EXPECT_EQ(got.emitted, want.emitted) << "text '" << text << "'";
  EXPECT_EQ(got.stopped, want.stopped) << "text '" << text << "'";
  if (want.stopped) {
    EXPECT_EQ(stops[got.stop], stops[want.stop]);
  }
}

TEST(ServerStopMatcher, NoStopsPassesThrough) {
  StopMatcher m;
  EXPECT_EQ(m.push("hello "), "hello ");
  EXPECT_EQ(m.push("world"), "world");
  EXPECT_EQ(m.held_bytes(), 0u);
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.matched_stop(), -1);
}

TEST(ServerStopMatcher, HoldsBackPartialStopThenReleases) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.push("abcST"), "abc");
  EXPECT_EQ(m.held_bytes(), 2u);
  EXPECT_EQ(m.push("x"), "STx");  // not a stop after all
  EXPECT_EQ(m.push("ST"), "");
  EXPECT_EQ(m.flush(), "ST");     // end of generation releases held text
  EXPECT_FALSE(m.stopped());
}

TEST(ServerStopMatcher, StopSpanningThreePieces) {
  StopMatcher m({"<|end|>"});
  EXPECT_EQ(m.push("answer<|"), "answer");
  EXPECT_EQ(m.push("en"), "");
  EXPECT_EQ(m.push("d|>trailing"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched_stop(), 0);
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(ServerStopMatcher, StopInsideOnePiece) {
  StopMatcher m({"\n\n", "END"});
  EXPECT_EQ(m.push("line one\n\nline two END"), "line one");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched_stop(), 0);
}

TEST(ServerStopMatcher, OverlappingStopsPreferTheLongestEndingFirst) {
  StopMatcher m({"b", "ab"});
  EXPECT_EQ(m.push("xa"), "x");
  EXPECT_EQ(m.push("b"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.matched_stop(), 1);  // "ab" and "b" both end here; the cut is before "ab"
}

TEST(ServerStopMatcher, ShorterStopEndingEarlierWins) {
  // "c" completes before "abcd" could: generation stops there.
  expect_matches({"abcd"}, {"abcd", "c"});
  StopMatcher m({"abcd", "c"});
  EXPECT_EQ(m.push("ab"), "");
  EXPECT_EQ(m.push("cd"), "ab");
  EXPECT_EQ(m.matched_stop(), 1);
}

TEST(ServerStopMatcher, SelfOverlappingStop) {
  expect_matches({"aa", "a", "ab"}, {"aab"});
  expect_matches({"xaaa", "aab", "z"}, {"aaab"});
  expect_matches({"abab", "abac"}, {"ababac"});
}

TEST(ServerStopMatcher, Utf8NeverSplit) {
  // The stop starts with the same lead byte as the text's character, but the text's character
  // differs in its last byte: the held-back boundary must not fall inside the character.
  StopMatcher m({"\xc3\xa9t\xc3\xa9"});  // "été"
  std::string out = m.push("caf\xc3\xa9");  // "café"
  EXPECT_EQ(out, "caf");
  out += m.push("s");
  EXPECT_EQ(out, "caf\xc3\xa9s");
  EXPECT_TRUE(is_valid_utf8(out));
  expect_matches({"\xe4\xbd\xa0\xe5\xa5\xbd", "\xe4\xb8\x96", "\xe7\x95\x8c!"}, {"\xe4\xb8\x96\xe7\x95\x8c"});
  expect_matches({"\xf0\x9f\x98\x80 ok \xf0\x9f\x98", "\x81"}, {"\xf0\x9f\x98\x81"});
}

TEST(ServerStopMatcher, RefusesBadStops) {
  EXPECT_THROW(StopMatcher({""}), Error);
  EXPECT_THROW(StopMatcher({"a", "b", "c", "d", "e"}), Error);
  EXPECT_THROW(StopMatcher({std::string(kMaxStopBytes + 1, 'x')}), Error);
  EXPECT_NO_THROW(StopMatcher({std::string(kMaxStopBytes, 'x')}));
  EXPECT_THROW(StopMatcher({"\xff"}), Error);
  EXPECT_THROW(StopMatcher({"\xc3"}), Error);
}

TEST(ServerStopMatcher, Utf8Validator) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("abc \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xc0\x80"));          // overlong
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));          // truncated
  EXPECT_FALSE(is_valid_utf8("\x80"));
}

// Random texts over a small alphabet (so stops occur often), including multi-byte characters,
// split at random code point boundaries.
TEST(ServerStopMatcher, RandomizedAgainstReference) {
  std::mt19937 rng(12345);
  const std::vector<std::string> alphabet = {"a", "b", "c", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", " "};
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  auto random_text = [&](size_t max_chars, size_t min_chars) {
    std::vector<std::string> chars;
    const size_t n = min_chars + pick(max_chars - min_chars + 1);
    for (size_t i = 0; i < n; ++i) chars.push_back(alphabet[pick(alphabet.size())]);
    return chars;
  };
  int stopped_cases = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<std::string> stops;
    const size_t nstops = pick(kMaxStops + 1);
    for (size_t s = 0; s < nstops; ++s) {
      std::string stop;
      for (const auto& c : random_text(4, 1)) stop += c;
      stops.push_back(stop);
    }
    const std::vector<std::string> chars = random_text(40, 0);
    std::vector<std::string> pieces;
    std::string cur;
    for (const auto& c : chars) {
      cur += c;
      if (pick(3) == 0) {
        pieces.push_back(cur);
        cur.clear();
      }
    }
    pieces.push_back(cur);
    if (pick(4) == 0) pieces.insert(pieces.begin() + static_cast<long>(pick(pieces.size())), "");
    std::string text;
    for (const auto& p : pieces) text += p;
    if (reference(text, stops).stopped) ++stopped_cases;
    expect_matches(pieces, stops);
    if (HasFailure()) {
      ADD_FAILURE() << "iteration " << iter;
      return;
    }
  }
  EXPECT_GT(stopped_cases, 1000);  // the generator exercises the stop path often
}

TEST(ServerStopMatcher, LongPieceIsLinear) {
  // 8 MB of near-misses against a self-overlapping stop: KMP keeps this quick.
  StopMatcher m({std::string(255, 'a') + "b"});
  const std::string piece(1 << 20, 'a');
  size_t emitted = 0;
  for (int i = 0; i < 8; ++i) emitted += m.push(piece).size();
  EXPECT_EQ(m.held_bytes(), 255u);
  emitted += m.flush().size();
  EXPECT_EQ(emitted, 8u << 20);
}

}  // namespace
}  // namespace specula::server
