// One head of the fused QKV row through the per-head RMSNorm (optional, Qwen3's q_norm/k_norm)
// and RoPE in the rotate-half convention, computed by one warp. Shared by qkv_rope_store.cu (every
// head of every token) and qkv_attention.cu (the fused decode kernel, which rotates its own
// queries and the new key), so both paths produce the same values bit for bit.
//
// Lane l handles the rotation pairs (i, i + hd/2) for i = l, l + 32, ...: each pair needs one
// angle, so a lane computes exactly the cos/sin it uses, and the warp's loads of consecutive i are
// coalesced. With a norm the warp first reduces the head's sum of squares and then re-reads the
// head (an L1 hit), which works for any head_dim without a register cap.
//
// Angles follow the CPU reference bit for bit: float(position) * inv_freq[i] in fp32, then the
// precise sincosf (never the __sinf intrinsics, whose error grows with the angle and positions
// reach 1e5+ radians); cos and sin are scaled by attention_scaling.
//
// Compiled only by nvcc as C++17 (included from .cu files only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "specula/core/dtype.h"
#include "specula/ops/cuda/kernel_utils.cuh"

namespace specula::ops::cuda_impl {

// Where a head's rotation reads from: the head's first element in `qkv`, its length, and the
// norm weight to apply first (null for none).
struct RopeHeadSource {
  const void* qkv;
  DType qkv_dtype;
  int64_t offset;  // element offset of the head in qkv
  int64_t head_dim;
  const void* norm;
  DType norm_dtype;
  float norm_eps;
};

struct RopeAngles {
  const float* inv_freq;  // [head_dim / 2]
  float attention_scaling;
  float position;
};

// Calls store(i, value) once for every element i of the rotated head (each on one lane of the
// calling warp). Every lane of the warp must call it (the norm reduces across the warp).
template <typename Store>
__device__ __forceinline__ void rope_head_warp(const RopeHeadSource& src, const RopeAngles& rope, int lane,
                                               Store&& store) {
  const int64_t hd = src.head_dim, half = hd / 2;
  float inv = 1.0f;
  if (src.norm) {
    float sum_sq = 0.0f;
    for (int64_t i = lane; i < hd; i += kWarpSize) {
      const float x = load_f32_dyn(src.qkv, src.qkv_dtype, src.offset + i);
      sum_sq += x * x;
    }
    sum_sq = warp_sum(sum_sq);
    inv = 1.0f / sqrtf(sum_sq / static_cast<float>(hd) + src.norm_eps);
  }
  for (int64_t i = lane; i < half; i += kWarpSize) {
    float x0 = load_f32_dyn(src.qkv, src.qkv_dtype, src.offset + i);
    float x1 = load_f32_dyn(src.qkv, src.qkv_dtype, src.offset + i + half);
    if (src.norm) {
      x0 = load_f32_dyn(src.norm, src.norm_dtype, i) * (x0 * inv);
      x1 = load_f32_dyn(src.norm, src.norm_dtype, i + half) * (x1 * inv);
    }
    const float angle = rope.position * rope.inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    c *= rope.attention_scaling;
    s *= rope.attention_scaling;
    store(i, x0 * c - x1 * s);
    store(i + half, x1 * c + x0 * s);
  }
}

}  // namespace specula::ops::cuda_impl
