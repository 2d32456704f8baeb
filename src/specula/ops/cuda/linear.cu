// CUDA linear ops: ops::linear (out = alpha * x W^T + bias, or out += that), ops::rms_norm_linear
// (the norm feeding a projection) and ops::linear_swiglu (out = (silu(gate) * up) W^T, the MLP
// down projection over the fused gate/up output).
//
// rms_norm_linear: one token (decode) runs the bulk-copy GEMV on sm_90 where the shape allows
// (gemv_bulk.cu: x normalised once per SM; measured faster than the alternative for the QKV and
// gate/up projections, and not for plain products, which stay below), else the GEMV that
// normalises x in every block (gemv.cu);
// more tokens run rms_norm into `normed` and then linear, where the norm is a small share of the
// work.
//
// Up to kGemvMaxTokens tokens (decode, short verification batches) run on the hand-written GEMV,
// which streams the weights once at close to memory bandwidth; larger counts go to cuBLASLt's
// tensor-core GEMM. The small-M tensor-core GEMM (gemm_small_m.cu, meant for verification and
// draft levels) is not on this path: on the H200 it ran at 0.26-0.86x cuBLASLt's speed on every
// 8B shape from 10 to 128 tokens (bench/results/spec.md, commit 79f117c), so it stays a tested
// op for further tuning, off by default (CudaContext::set_small_m_gemm turns it on). When
// cuBLASLt cannot take the operands either (an output dtype it does not pair with the weights',
// too small a workspace to convert x), the GEMV computes it anyway in groups of tokens: slower,
// never wrong. An x whose dtype differs from the weights' (F32 activations of the full-precision
// mode) also stays on the GEMV, which reads x in fp32: converting it for a GEMM would round it to
// 16 bits and defeat the mode's purpose.
//
// linear_swiglu: at 1-2 tokens (batch-1 decode) the fused GEMV computes silu(gate) * up on load
// and never stores it (no silu_mul kernel, no [T, I] round trip: the point of the op). From 3
// tokens on, the fused kernel's extra live registers would cost occupancy, so silu(gate) * up is
// materialised, chunk by chunk, in the front of the context's workspace (the only scratch an op
// has; it is free between launches, every op running in order on the one stream), and the chunk
// goes through the same choice as linear: the GEMV up to kGemvMaxTokens, then (when turned on) the
// small-M GEMM up to kSmallMMaxTokens, then cuBLASLt, the GEMV when neither GEMM can take it. Both GEMMs get only
// the workspace behind the activation chunk (at least half of it) for their scratch. A workspace
// too small for that leaves the call to the fused GEMV, in groups of two tokens.
#include <algorithm>

#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/linear_impl.h"

namespace specula::ops::cuda_impl {

namespace {

// Up to this many tokens linear_swiglu runs the fused GEMV (its 1- and 2-token shapes).
constexpr int64_t kFusedSwigluMaxTokens = 2;
// Fewer tokens per workspace chunk than this (when the call has more): not worth the passes over
// the weights, the fused GEMV takes the whole call instead.
constexpr int64_t kMinSwigluChunkTokens = 2 * kGemvMaxTokens;
constexpr size_t kChunkAlignment = 256;  // where the GEMMs' share of the workspace starts

// silu_mul into the workspace, then linear on it; false (nothing launched) if the workspace
// cannot hold enough activation rows.
bool swiglu_through_workspace(CudaContext& ctx, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha,
                              OutputMode mode) {
  const int64_t tokens = gate_up.rows(), inter = weight.dim(1), n = weight.dim(0);
  const size_t row_bytes = static_cast<size_t>(inter) * dtype_size(gate_up.dtype);
  if (ctx.workspace() == nullptr || row_bytes == 0) return false;
  const int64_t chunk = std::min<int64_t>(tokens, static_cast<int64_t>(ctx.workspace_bytes() / 2 / row_bytes));
  if (chunk < std::min(tokens, kMinSwigluChunkTokens)) return false;
  const size_t act_region =
      (static_cast<size_t>(chunk) * row_bytes + kChunkAlignment - 1) / kChunkAlignment * kChunkAlignment;
  char* gemm_workspace = static_cast<char*>(ctx.workspace()) + act_region;
  const size_t gemm_workspace_bytes = ctx.workspace_bytes() - act_region;

  const size_t gu_row_bytes = 2 * row_bytes, out_row_bytes = static_cast<size_t>(n) * dtype_size(out.dtype);
  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t count = std::min(chunk, tokens - t0);
    Tensor gu_chunk(static_cast<char*>(gate_up.data) + static_cast<size_t>(t0) * gu_row_bytes, gate_up.dtype,
                    {count, 2 * inter}, Device::CUDA);
    Tensor out_chunk(static_cast<char*>(out.data) + static_cast<size_t>(t0) * out_row_bytes, out.dtype, {count, n},
                     Device::CUDA);
    Tensor act(ctx.workspace(), gate_up.dtype, {count, inter}, Device::CUDA);
    silu_mul(ctx, gu_chunk, act);
    if (count > kGemvMaxTokens && act.dtype == weight.dtype) {
      if (ctx.small_m_gemm() && count <= kSmallMMaxTokens &&
          try_gemm_small_m(ctx, act, weight, Tensor(), out_chunk, alpha, mode,
                                                        gemm_workspace, gemm_workspace_bytes))
        continue;
      if (try_gemm_cublaslt(ctx, act, weight, Tensor(), out_chunk, alpha, mode, gemm_workspace, gemm_workspace_bytes))
        continue;
    }
    launch_gemv(ctx, act, weight, Tensor(), out_chunk, alpha, mode);
  }
  return true;
}

}  // namespace

void linear(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float alpha,
            OutputMode mode) {
  const int64_t tokens = x.rows();
  if (tokens > kGemvMaxTokens) {
    if (ctx.small_m_gemm() && tokens <= kSmallMMaxTokens && try_gemm_small_m(ctx, x, weight, bias, out, alpha, mode))
      return;
    if (x.dtype == weight.dtype && try_gemm_cublaslt(ctx, x, weight, bias, out, alpha, mode)) return;
  }
  launch_gemv(ctx, x, weight, bias, out, alpha, mode);
}

void rms_norm_linear(CudaContext& ctx, const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight,
                     const Tensor& bias, Tensor& normed, Tensor& out) {
  if (try_gemv_bulk(ctx, x, &norm_weight, eps, weight, bias, out, 1.0f, OutputMode::Overwrite)) return;
  if (try_gemv_rms_norm(ctx, x, norm_weight, eps, weight, bias, out)) return;
  rms_norm(ctx, x, norm_weight, eps, normed);
  linear(ctx, normed, weight, bias, out, 1.0f, OutputMode::Overwrite);
}

void linear_swiglu(CudaContext& ctx, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha,
                   OutputMode mode) {
  if (gate_up.rows() > kFusedSwigluMaxTokens && swiglu_through_workspace(ctx, gate_up, weight, out, alpha, mode))
    return;
  launch_gemv_swiglu(ctx, gate_up, weight, out, alpha, mode);
}

}  // namespace specula::ops::cuda_impl
