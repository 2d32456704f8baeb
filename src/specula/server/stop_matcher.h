// Stop strings for the OpenAI server: a streaming filter between the engine's decoded text and
// the client. Generated text arrives in pieces (whole UTF-8, one or a few tokens each); a stop
// string may span several pieces, so text that could still turn out to be the start of a stop
// string is held back until it either completes the stop (then it is never sent) or cannot
// (then it is released). This is what lets a stream never show a client part of a stop string.
//
// Semantics, independent of how the text is split into pieces: generation ends at the first
// position of the text where some stop string ends (a generator cannot look further ahead than
// that); among stop strings ending there, the longest (earliest-starting) one is the match. The
// emitted text is everything before the match.
//
// One KMP automaton per stop string keeps, across pieces, the longest suffix of the text that is
// a prefix of that stop, so each byte is examined once per stop: linear per piece in the number
// of stops, whatever their length. Stops are bounded (kMaxStops, kMaxStopBytes) so the held-back
// text is bounded too. The held-back boundary is moved back to a UTF-8 code point boundary, so
// what is emitted never ends inside a character.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace specula::server {

// OpenAI allows up to 4 stop sequences; the byte bound keeps the held-back text small.
constexpr size_t kMaxStops = 4;
constexpr size_t kMaxStopBytes = 256;

class StopMatcher {
 public:
  // Throws specula::Error when there are more than kMaxStops strings, or one is empty, longer
  // than kMaxStopBytes or not valid UTF-8. No stops: every piece passes through unchanged.
  explicit StopMatcher(std::vector<std::string> stops = {});

  // Feeds the next piece of generated text; returns the text that is safe to emit now. Once a
  // stop string has completed, returns the text up to it and stopped() becomes true; later
  // pieces are ignored (return "").
  std::string push(std::string_view piece);
  // End of generation (without a stop): releases the held-back text. "" after a stop.
  std::string flush();

  bool stopped() const { return matched_ >= 0; }
  // Index (into the constructor's list) of the stop string that ended the text; -1 if none.
  int matched_stop() const { return matched_; }
  // Bytes currently held back (never more than the longest stop minus one, plus a partial
  // UTF-8 character's worth).
  size_t held_bytes() const { return held_.size(); }
  const std::vector<std::string>& stops() const { return stops_; }

 private:
  std::vector<std::string> stops_;
  std::vector<std::vector<size_t>> failure_;  // KMP failure function per stop
  std::vector<size_t> state_;                 // matched prefix length per stop
  std::string held_;                          // text received but not yet emitted
  int matched_ = -1;
};

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF).
bool is_valid_utf8(std::string_view text);

}  // namespace specula::server
