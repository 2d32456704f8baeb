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
// Compiled only by nvcc (included from .cu files only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "specula/core/dtype.h"
#include "specula/core/tensor.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/ops.h"

namespace specula::ops::cuda_impl {

// The operands of the split of the fused QKV row into rotated queries and cache rows, as the
// kernels that do it take them (the argument structs of qkv_rope_store.cu and qkv_attention.cu
// derive from it).
struct QkvRopeOperands {
  const void* qkv;
  DType qkv_dtype;
  const void* q_norm;  // nullptr: no per-head norm
  const void* k_norm;
  DType q_norm_dtype, k_norm_dtype;
  float norm_eps;
  const float* inv_freq;
  float attention_scaling;
  const int32_t* positions;
  const int32_t* slots;
  void* q_out;
  DType q_dtype;
  void* k_cache;
  void* v_cache;
  DType cache_dtype;
};

inline QkvRopeOperands qkv_rope_operands(const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                                         const RopeParams& rope, const Tensor& positions, const Tensor& slots,
                                         Tensor& q_out, Tensor& k_cache, Tensor& v_cache) {
  QkvRopeOperands o{};
  o.qkv = qkv.data;
  o.qkv_dtype = qkv.dtype;
  o.q_norm = q_norm.empty() ? nullptr : q_norm.data;
  o.k_norm = k_norm.empty() ? nullptr : k_norm.data;
  o.q_norm_dtype = q_norm.dtype;
  o.k_norm_dtype = k_norm.dtype;
  o.norm_eps = norm_eps;
  o.inv_freq = rope.inv_freq.as<const float>();
  o.attention_scaling = rope.attention_scaling;
  o.positions = positions.as<const int32_t>();
  o.slots = slots.as<const int32_t>();
  o.q_out = q_out.data;
  o.q_dtype = q_out.dtype;
  o.k_cache = k_cache.data;
  o.v_cache = v_cache.data;
  o.cache_dtype = k_cache.dtype;
  return o;
}

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
