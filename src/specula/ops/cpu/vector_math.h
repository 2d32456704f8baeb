// Small inner loops shared by the CPU ops: row conversion to fp32 and dot products written so
// that GCC vectorises them without -ffast-math (independent lane accumulators instead of one
// serial sum), compiled for AVX2/FMA with a portable fallback chosen at run time.
#pragma once

#include <cstddef>
#include <cstdint>

#include "specula/core/dtype.h"

namespace specula::ops::cpu {

// dst[i] = float(src[i]) for a row of `n` elements of float dtype `dtype`.
void row_to_f32(const void* src, DType dtype, size_t n, float* dst);
// sum_i a[i] * b[i] over fp32 rows.
float dot_f32(const float* a, const float* b, size_t n);
// out[j] += w * x[j]
void axpy_f32(float w, const float* x, float* out, size_t n);

}  // namespace specula::ops::cpu
