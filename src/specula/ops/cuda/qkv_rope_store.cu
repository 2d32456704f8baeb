// CUDA split of the fused QKV projection into rotated queries and the KV cache
// (ops::qkv_rope_store): per head, optional RMSNorm (Qwen3's q_norm/k_norm), RoPE in the
// rotate-half convention, then q to q_out and k/v to their cache rows.
//
// One warp per (token, head) over all n_heads + 2 n_kv heads of the fused row, so every head is
// independent and the grid grows with tokens for prefill. The rotation itself is rope.cuh's
// rope_head_warp, which the fused decode kernel (qkv_attention.cu) shares. A slot outside the
// cache sets kErrorSlotOutOfRange and skips that token's K/V store; its queries are still written.
//
// Launched with programmatic dependent launch where available (pdl.cuh): every warp waits for
// the QKV projection before reading anything, including on its early-exit paths.
#include <cuda_runtime.h>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/rope.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kWarpsPerBlock = 4;

struct QkvArgs : QkvRopeOperands {
  int64_t tokens, n_heads, n_kv, head_dim, capacity;
  uint32_t* error_word;
};

__global__ void __launch_bounds__(kWarpsPerBlock * kWarpSize) qkv_rope_store_kernel(QkvArgs a) {
  pdl_launch_dependents();
  pdl_wait();  // qkv, positions, slots, the caches and the error word belong to earlier kernels
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t heads_per_token = a.n_heads + 2 * a.n_kv;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (item >= a.tokens * heads_per_token) return;  // whole warps only: no block barrier below
  const int64_t t = item / heads_per_token, h = item % heads_per_token;
  const int64_t hd = a.head_dim;
  const int64_t src = t * heads_per_token * hd + h * hd;  // element offset of this head in qkv

  const bool is_q = h < a.n_heads, is_v = h >= a.n_heads + a.n_kv;
  const int64_t kv_head = is_q ? 0 : (is_v ? h - a.n_heads - a.n_kv : h - a.n_heads);
  int64_t dst;  // element offset of the destination row
  void* dst_base;
  DType dst_dtype;
  if (is_q) {
    dst = (t * a.n_heads + h) * hd;
    dst_base = a.q_out;
    dst_dtype = a.q_dtype;
  } else {
    const int32_t slot = a.slots[t];
    if (slot < 0 || slot >= a.capacity) {
      if (lane == 0) report_device_error(a.error_word, specula::cuda::kErrorSlotOutOfRange);
      return;
    }
    dst = (kv_head * a.capacity + slot) * hd;
    dst_base = is_v ? a.v_cache : a.k_cache;
    dst_dtype = a.cache_dtype;
  }

  if (is_v) {
    for (int64_t i = lane; i < hd; i += kWarpSize)
      store_f32_dyn(dst_base, dst_dtype, dst + i, load_f32_dyn(a.qkv, a.qkv_dtype, src + i));
    return;
  }

  const RopeHeadSource head{a.qkv, a.qkv_dtype, src, hd, is_q ? a.q_norm : a.k_norm,
                            is_q ? a.q_norm_dtype : a.k_norm_dtype, a.norm_eps};
  const RopeAngles angles{a.inv_freq, a.attention_scaling, static_cast<float>(a.positions[t])};
  rope_head_warp(head, angles, lane, [&](int64_t i, float v) { store_f32_dyn(dst_base, dst_dtype, dst + i, v); });
}

}  // namespace

void qkv_rope_store(CudaContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                    const RopeParams& rope, const Tensor& positions, const Tensor& slots, Tensor& q_out,
                    Tensor& k_cache, Tensor& v_cache) {
  QkvArgs a{};
  static_cast<QkvRopeOperands&>(a) =
      qkv_rope_operands(qkv, q_norm, k_norm, norm_eps, rope, positions, slots, q_out, k_cache, v_cache);
  a.tokens = qkv.dim(0);
  a.n_heads = q_out.dim(1);
  a.head_dim = q_out.dim(2);
  a.n_kv = k_cache.dim(0);
  a.capacity = k_cache.dim(1);
  a.error_word = ctx.error_word();
  const int64_t items = a.tokens * (a.n_heads + 2 * a.n_kv);
  if (items == 0 || a.head_dim == 0) return;
  const auto blocks = static_cast<unsigned>(ceil_div<int64_t>(items, kWarpsPerBlock));
  launch_kernel(ctx, "qkv_rope_store", qkv_rope_store_kernel, dim3(blocks), dim3(kWarpsPerBlock * kWarpSize), 0, a);
}

}  // namespace specula::ops::cuda_impl
