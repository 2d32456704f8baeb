// Streaming stop-string filter (see stop_matcher.h): per-stop KMP automata over the incoming
// bytes, a held-back suffix as long as the longest partial match, moved back to a UTF-8 boundary.
#include "specula/server/stop_matcher.h"

#include <algorithm>
#include <cstdint>

#include "specula/core/error.h"

namespace specula::server {

bool is_valid_utf8(std::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto d = static_cast<unsigned char>(text[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
    i += len;
  }
  return true;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  SPECULA_CHECK(stops_.size() <= kMaxStops, "stop: at most ", kMaxStops, " stop strings, got ", stops_.size());
  for (size_t s = 0; s < stops_.size(); ++s) {
    const std::string& p = stops_[s];
    SPECULA_CHECK(!p.empty(), "stop[", s, "]: stop strings must not be empty");
    SPECULA_CHECK(p.size() <= kMaxStopBytes, "stop[", s, "]: stop strings are at most ", kMaxStopBytes,
                  " bytes, got ", p.size());
    SPECULA_CHECK(is_valid_utf8(p), "stop[", s, "]: not valid UTF-8");
    // failure[k] = length of the longest proper border of p[0, k).
    std::vector<size_t> f(p.size() + 1, 0);
    size_t k = 0;
    for (size_t i = 1; i < p.size(); ++i) {
      while (k > 0 && p[i] != p[k]) k = f[k];
      if (p[i] == p[k]) ++k;
      f[i + 1] = k;
    }
    failure_.push_back(std::move(f));
  }
  state_.assign(stops_.size(), 0);
}

std::string StopMatcher::push(std::string_view piece) {
  if (stopped()) return {};
  const size_t base = held_.size();  // offset of piece[0] within held_
  held_.append(piece);
  for (size_t i = 0; i < piece.size(); ++i) {
    const char c = piece[i];
    int best = -1;  // the longest stop completing at this byte
    for (size_t s = 0; s < stops_.size(); ++s) {
      const std::string& p = stops_[s];
      size_t k = state_[s];
      if (k == p.size()) k = failure_[s][k];
      while (k > 0 && p[k] != c) k = failure_[s][k];
      if (p[k] == c) ++k;
      state_[s] = k;
      if (k == p.size() && (best < 0 || p.size() > stops_[best].size())) best = static_cast<int>(s);
    }
    if (best >= 0) {
      matched_ = best;
      // The hold-back invariant guarantees the whole match lies within held_.
      const size_t end = base + i + 1;
      const size_t start = end - stops_[best].size();
      std::string out = held_.substr(0, start);
      held_.clear();
      return out;
    }
  }
  size_t hold = 0;
  for (size_t s = 0; s < stops_.size(); ++s) hold = std::max(hold, state_[s]);
  size_t cut = held_.size() - std::min(hold, held_.size());
  while (cut > 0 && (static_cast<unsigned char>(held_[cut]) & 0xC0) == 0x80 && cut < held_.size()) --cut;
  std::string out = held_.substr(0, cut);
  held_.erase(0, cut);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(held_);
  std::fill(state_.begin(), state_.end(), 0);
  return out;
}

}  // namespace specula::server
