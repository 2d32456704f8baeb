// Bounds-checked little-endian reads over untrusted bytes, shared by the io readers.
// Every checkpoint format here is parsed straight out of a memory map, so each read names its
// offset and length and is checked against the end of the buffer before any byte is touched;
// a failed check throws specula::Error with the caller's context instead of reading past the map.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "specula/core/checked_size.h"
#include "specula/core/error.h"

namespace specula::io {

// True when [offset, offset + length) lies inside a buffer of `size` bytes, without overflow.
inline bool range_fits(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

// Sizes taken from untrusted headers are built with core/checked_size.h (checked_mul,
// checked_numel, checked_nbytes), never with bare multiplication.

// A view of untrusted bytes; `what` prefixes every error (e.g. "model.bin: zip central directory").
class ByteReader {
 public:
  ByteReader(std::string_view bytes, std::string what) : bytes_(bytes), what_(std::move(what)) {}

  size_t size() const { return bytes_.size(); }
  const std::string& what() const { return what_; }

  std::string_view slice(uint64_t offset, uint64_t length) const {
    SPECULA_CHECK(range_fits(offset, length, bytes_.size()), what_, ": ", length, " bytes at offset ", offset,
                  " run past the end (", bytes_.size(), " bytes)");
    return bytes_.substr(static_cast<size_t>(offset), static_cast<size_t>(length));
  }
  uint8_t u8(uint64_t offset) const { return load<uint8_t>(offset); }
  uint16_t u16(uint64_t offset) const { return load<uint16_t>(offset); }
  uint32_t u32(uint64_t offset) const { return load<uint32_t>(offset); }
  uint64_t u64(uint64_t offset) const { return load<uint64_t>(offset); }

 private:
  // Assembles the value byte by byte: independent of host endianness and of alignment.
  template <typename T>
  T load(uint64_t offset) const {
    const std::string_view b = slice(offset, sizeof(T));
    T value = 0;
    for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(static_cast<T>(static_cast<uint8_t>(b[i])) << (8 * i));
    return value;
  }

  std::string_view bytes_;
  std::string what_;
};

// Strict UTF-8 check (no overlong forms, no surrogates, nothing above U+10FFFF), as Rust's
// str::from_utf8 and Python's decoder apply it to safetensors headers and pickle strings.
inline bool is_valid_utf8(std::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto c = static_cast<uint8_t>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t extra;
    uint32_t min_value;
    uint32_t value;
    if ((c & 0xe0) == 0xc0) {
      extra = 1, min_value = 0x80, value = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2, min_value = 0x800, value = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3, min_value = 0x10000, value = c & 0x07;
    } else {
      return false;
    }
    if (n - i <= extra) return false;
    for (size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<uint8_t>(text[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      value = (value << 6) | (cc & 0x3f);
    }
    if (value < min_value || value > 0x10ffff || (value >= 0xd800 && value <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

}  // namespace specula::io
