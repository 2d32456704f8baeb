// Small inner loops shared by the CPU ops: row conversion to fp32 and dot products written so
// that GCC vectorises them without -ffast-math (independent lane accumulators instead of one
// serial sum), compiled for AVX2/FMA with a portable fallback chosen at run time.
#pragma once

#include <cstddef>
#include <cstdint>

#include "specula/core/dtype.h"
#include "specula/core/tensor.h"

namespace specula::ops::cpu {

// dst[i] = float(src[i]) for a row of `n` elements of float dtype `dtype`.
void row_to_f32(const void* src, DType dtype, size_t n, float* dst);
// sum_i a[i] * b[i] over fp32 rows.
float dot_f32(const float* a, const float* b, size_t n);
// out[j] += w * x[j]
void axpy_f32(float w, const float* x, float* out, size_t n);

// Per-thread fp32 scratch that grows but never shrinks, so the CPU ops (run once per layer per
// token) allocate nothing in steady state. Buffers a thread uses at the same time take different
// slots; a buffer filled by the calling thread before a parallel_for may be read by the workers.
enum class Scratch { WeightRow, Bias, NormWeight, KNormWeight, Activation, Cos, Sin, Scores, Count };
float* scratch_f32(Scratch slot, size_t n);
// The fp32 copy of a (small) float tensor in a scratch slot; nullptr for an absent (empty) tensor.
const float* tensor_f32(const Tensor& t, Scratch slot);

}  // namespace specula::ops::cpu
