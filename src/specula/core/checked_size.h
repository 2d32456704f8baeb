// Checked size arithmetic: the one place where element counts and byte sizes are multiplied
// and added. Every size in this engine can come from an untrusted source (a checkpoint header,
// a pickle, config.json, a command-line flag), and a wrapped product is how a hostile file turns
// into a small allocation followed by a large write. So Tensor, ArenaPlan and every reader build
// sizes through these helpers, which either return the exact value or throw specula::Error
// naming what was being sized. The limit is INT64_MAX: sizes must also fit the int64 element
// counts that tensors and torch use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <span>
#include <string_view>

#include "specula/core/dtype.h"
#include "specula/core/error.h"

namespace specula {

constexpr uint64_t kMaxCheckedSize = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// a * b, or false when the product leaves [0, limit] (nothing is written then).
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t limit, uint64_t& out) {
  if (a != 0 && b > limit / a) return false;
  out = a * b;
  return true;
}

// a + b, or false when the sum leaves [0, limit].
inline bool checked_add(uint64_t a, uint64_t b, uint64_t limit, uint64_t& out) {
  if (a > limit || b > limit - a) return false;
  out = a + b;
  return true;
}

// a * b; throws naming `what` when the product exceeds INT64_MAX.
inline uint64_t mul_size(uint64_t a, uint64_t b, std::string_view what) {
  uint64_t out = 0;
  SPECULA_CHECK(checked_mul(a, b, kMaxCheckedSize, out), what, ": size ", a, " x ", b, " overflows");
  return out;
}

// a + b; throws naming `what` when the sum exceeds INT64_MAX.
inline uint64_t add_size(uint64_t a, uint64_t b, std::string_view what) {
  uint64_t out = 0;
  SPECULA_CHECK(checked_add(a, b, kMaxCheckedSize, out), what, ": size ", a, " + ", b, " overflows");
  return out;
}

// Rounds `n` up to a multiple of `alignment` (> 0); throws naming `what` on overflow.
inline uint64_t align_size(uint64_t n, uint64_t alignment, std::string_view what) {
  const uint64_t rounded = add_size(n, alignment - 1, what);
  return rounded / alignment * alignment;
}

// The element count of a shape: every dimension must be >= 0 and the product must fit int64.
inline int64_t checked_numel(std::span<const int64_t> dims, std::string_view what) {
  uint64_t n = 1;
  for (const int64_t d : dims) {
    SPECULA_CHECK(d >= 0, what, ": negative dimension ", d);
    SPECULA_CHECK(checked_mul(n, static_cast<uint64_t>(d), kMaxCheckedSize, n), what,
                  ": element count overflows (a dimension of ", d, ")");
  }
  return static_cast<int64_t>(n);
}
inline int64_t checked_numel(std::initializer_list<int64_t> dims, std::string_view what) {
  return checked_numel(std::span<const int64_t>(dims.begin(), dims.size()), what);
}

// Bytes of `numel` elements of `dtype`; throws naming `what` when that exceeds INT64_MAX.
inline size_t checked_nbytes(int64_t numel, DType dtype, std::string_view what) {
  SPECULA_CHECK(numel >= 0, what, ": negative element count ", numel);
  uint64_t bytes = 0;
  SPECULA_CHECK(checked_mul(static_cast<uint64_t>(numel), dtype_size(dtype), kMaxCheckedSize, bytes), what, ": ",
                numel, " elements of ", dtype_name(dtype), " overflow the byte count");
  return static_cast<size_t>(bytes);
}

}  // namespace specula
