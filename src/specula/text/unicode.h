// UTF-8 and Unicode helpers shared by the tokenizer pieces.
// Hugging Face `tokenizers` works on Rust `&str`, so every string it sees is valid UTF-8 and every
// byte sequence it turns back into text goes through `String::from_utf8_lossy`. These helpers
// reproduce exactly those two contracts (validation at the API edge, lossy decoding with the
// "maximal subpart" rule) plus the few Unicode predicates the pipeline needs. Character tables come
// from utf8proc, never from hand-written lists, except the short, fixed White_Space list that Rust's
// regex `\s` and Oniguruma's `\s` both define.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace specula::text {

// Returns the offset of the first byte that is not part of a valid UTF-8 sequence, or npos.
size_t find_invalid_utf8(std::string_view bytes);

// Byte length of the UTF-8 sequence starting with `lead` (1 for bytes that cannot lead one).
inline size_t utf8_sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// Decodes the code point at `pos` of valid UTF-8 `text`; sets `length` to its byte length.
char32_t decode_utf8(std::string_view text, size_t pos, size_t* length);
void append_utf8(std::string& out, char32_t code_point);

// Appends the lossy decoding of `bytes` (Rust `String::from_utf8_lossy`: each maximal ill-formed
// subpart becomes one U+FFFD). With `final_chunk` false, a trailing sequence that is a valid but
// incomplete prefix is not decoded; the return value is the number of bytes consumed, so the caller
// keeps the rest for the next chunk. Lossy decoding of a concatenation equals the concatenation of
// chunked decodings done this way.
size_t append_utf8_lossy(std::string& out, std::string_view bytes, bool final_chunk);
inline std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  append_utf8_lossy(out, bytes, true);
  return out;
}

// Unicode White_Space (what `\s` means in Rust regex and Oniguruma).
bool is_white_space(char32_t c);
// Rust regex `\w` (Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control);
// Alphabetic is approximated by the letter categories, Nl and the Other_Alphabetic symbol ranges.
bool is_word_char(char32_t c);

enum class NormalizationForm { NFC, NFD, NFKC, NFKD };
// Unicode normalization through utf8proc; `text` must be valid UTF-8.
std::string normalize_unicode(std::string_view text, NormalizationForm form);

// GPT-2 byte-level alphabet: bytes 33..126, 161..172 and 174..255 map to themselves, the other 68
// bytes, in increasing order, to U+0100 and up. Built at compile time.
struct ByteLevelAlphabet {
  std::array<char32_t, 256> byte_to_char{};
  // UTF-8 encodings of byte_to_char, so encoding a byte is a table copy.
  std::array<std::array<char, 2>, 256> byte_to_utf8{};
  std::array<uint8_t, 256> byte_to_utf8_length{};
  // Inverse map for code points below 0x144 (the largest mapped code point is U+0143).
  std::array<int16_t, 0x144> char_to_byte{};
};
const ByteLevelAlphabet& byte_level_alphabet();

}  // namespace specula::text
