// UTF-8 validation, lossy decoding with Rust's replacement rule, Unicode predicates and
// normalization (utf8proc), and the GPT-2 byte alphabet. See unicode.h for why each exists.
#include "specula/text/unicode.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>

#include "specula/core/error.h"

namespace specula::text {
namespace {

bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// Length of the longest prefix of `bytes` (starting at a lead byte) that is either a complete
// well-formed sequence (complete = true) or a well-formed but truncated one (complete = false).
// Returns 0 when the lead byte itself is invalid. Ranges follow Unicode table 3-7.
struct SequenceCheck {
  size_t length = 0;
  bool complete = false;
};
SequenceCheck check_sequence(std::string_view bytes, size_t pos) {
  const auto b0 = static_cast<unsigned char>(bytes[pos]);
  if (b0 < 0x80) return {1, true};
  size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    need = 2;
  } else if (b0 == 0xED) {
    need = 2, hi = 0x9F;
  } else if (b0 == 0xF0) {
    need = 3, lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    need = 3;
  } else if (b0 == 0xF4) {
    need = 3, hi = 0x8F;
  } else {
    return {0, false};
  }
  size_t i = 1;
  for (; i <= need; ++i) {
    if (pos + i >= bytes.size()) return {i, false};
    const auto b = static_cast<unsigned char>(bytes[pos + i]);
    const bool ok = (i == 1) ? (b >= lo && b <= hi) : is_continuation(b);
    if (!ok) return {i, false};
  }
  return {i, true};
}

constexpr ByteLevelAlphabet make_byte_level_alphabet() {
  ByteLevelAlphabet a{};
  for (auto& v : a.char_to_byte) v = -1;
  char32_t next_extra = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const char32_t c = printable ? static_cast<char32_t>(b) : next_extra++;
    a.byte_to_char[b] = c;
    if (c < 0x80) {
      a.byte_to_utf8[b] = {static_cast<char>(c), 0};
      a.byte_to_utf8_length[b] = 1;
    } else {
      a.byte_to_utf8[b] = {static_cast<char>(0xC0 | (c >> 6)), static_cast<char>(0x80 | (c & 0x3F))};
      a.byte_to_utf8_length[b] = 2;
    }
    a.char_to_byte[c] = static_cast<int16_t>(b);
  }
  return a;
}

constexpr ByteLevelAlphabet kByteLevelAlphabet = make_byte_level_alphabet();

}  // namespace

size_t find_invalid_utf8(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const SequenceCheck s = check_sequence(bytes, pos);
    if (!s.complete) return pos;
    pos += s.length;
  }
  return std::string_view::npos;
}

char32_t decode_utf8(std::string_view text, size_t pos, size_t* length) {
  const auto b0 = static_cast<unsigned char>(text[pos]);
  const size_t n = utf8_sequence_length(b0);
  *length = n;
  if (n == 1) return b0;
  char32_t c = b0 & (0x7F >> n);
  for (size_t i = 1; i < n; ++i) c = (c << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  return c;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

size_t append_utf8_lossy(std::string& out, std::string_view bytes, bool final_chunk) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  size_t pos = 0;
  while (pos < bytes.size()) {
    const SequenceCheck s = check_sequence(bytes, pos);
    if (s.complete) {
      out.append(bytes.substr(pos, s.length));
      pos += s.length;
      continue;
    }
    // A truncated-but-valid prefix that reaches the end may still be completed by the next chunk.
    if (!final_chunk && s.length > 0 && pos + s.length == bytes.size()) return pos;
    out.append(kReplacement);
    pos += s.length == 0 ? 1 : s.length;
  }
  return pos;
}

bool is_white_space(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  switch (c) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

bool is_word_char(char32_t c) {
  if (c < 0x80) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  if (c == 0x200C || c == 0x200D) return true;  // Join_Control
  // Other_Alphabetic symbols (circled and squared Latin letters) are category So.
  if ((c >= 0x24B6 && c <= 0x24E9) || (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
      (c >= 0x1F170 && c <= 0x1F189)) {
    return true;
  }
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

std::string normalize_unicode(std::string_view text, NormalizationForm form) {
  bool ascii = true;
  for (char ch : text) {
    if (static_cast<unsigned char>(ch) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(text);  // ASCII is invariant under all four forms
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalizationForm::NFC: options |= UTF8PROC_COMPOSE; break;
    case NormalizationForm::NFD: options |= UTF8PROC_DECOMPOSE; break;
    case NormalizationForm::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalizationForm::NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &result,
                                          static_cast<utf8proc_option_t>(options));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(result, &std::free);
  if (n < 0) fail("Unicode normalization failed: ", utf8proc_errmsg(n));
  return std::string(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
}

const ByteLevelAlphabet& byte_level_alphabet() { return kByteLevelAlphabet; }

}  // namespace specula::text
