// Host-side declarations of the CUDA implementations of ops/ops.h (defined in ops/cuda/*.cu).
// Plain C++ with no CUDA headers, so ops.cpp can dispatch to them; shapes and dtypes have already
// been checked by the dispatcher when these run.
#pragma once

#include <span>

#include <cstddef>
#include <string>

#include "specula/core/tensor.h"
#include "specula/ops/ops.h"

namespace specula::ops::cuda_impl {

using specula::cuda::CudaContext;

void embedding(CudaContext& ctx, const Tensor& table, const Tensor& ids, float scale, Tensor& out);
void rms_norm(CudaContext& ctx, const Tensor& x, const Tensor& weight, float eps, Tensor& out);
void add_rms_norm(CudaContext& ctx, Tensor& residual, const Tensor& delta, float delta_scale, const Tensor& weight,
                  float eps, Tensor& out);
void linear(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float alpha,
            OutputMode mode);
void rms_norm_linear(CudaContext& ctx, const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight,
                     const Tensor& bias, Tensor& normed, Tensor& out);
void linear_swiglu(CudaContext& ctx, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha,
                   OutputMode mode);
void qkv_rope_store(CudaContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                    const RopeParams& rope, const Tensor& positions, const Tensor& slots, Tensor& q_out,
                    Tensor& k_cache, Tensor& v_cache);
void attention(CudaContext& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& slots,
               float scale, Tensor& out, const AttentionMask& mask);
void qkv_attention(CudaContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                   const RopeParams& rope, const Tensor& positions, const Tensor& slots, float scale, Tensor& q_out,
                   Tensor& k_cache, Tensor& v_cache, Tensor& out, const AttentionMask& mask);
// kv_gather over `n_caches` caches from `caches` on (defined in kv_gather.cu), and the span form
// ops.cpp calls.
void kv_gather(CudaContext& ctx, Tensor* caches, size_t n_caches, const Tensor& src_rows, const Tensor& dst_rows,
               const Tensor& count);
inline void kv_gather(CudaContext& ctx, std::span<Tensor> caches, const Tensor& src_rows, const Tensor& dst_rows,
                      const Tensor& count) {
  kv_gather(ctx, caches.data(), caches.size(), src_rows, dst_rows, count);
}
// Whether qkv_attention with these operands and the causal mask runs the fused decode kernel (for
// tests; a tree mask never does).
bool qkv_attention_is_fused(CudaContext& ctx, const Tensor& qkv, const Tensor& q_out, const Tensor& k_cache,
                            const Tensor& v_cache);
// Which path qkv_attention takes with these operands, in words (benchmarks print it).
std::string describe_qkv_attention(CudaContext& ctx, const Tensor& qkv, const Tensor& q_out,
                                   const Tensor& k_cache, const Tensor& v_cache);
void silu_mul(CudaContext& ctx, const Tensor& gate_up, Tensor& out);
void argmax(CudaContext& ctx, const Tensor& logits, Tensor& out);
void convert(CudaContext& ctx, const Tensor& src, Tensor& dst);
void fill_random(CudaContext& ctx, Tensor& t, uint64_t seed, float scale);

}  // namespace specula::ops::cuda_impl
