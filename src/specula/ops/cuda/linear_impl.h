// The two engines behind the CUDA linear op (ops/cuda/linear.cu chooses between them):
// a hand-written GEMV for decode-sized token counts (gemv.cu) and cuBLASLt for everything larger
// (gemm_cublaslt.cu). Host-only declarations.
#pragma once

#include <cstddef>
#include <cstdint>

#include "specula/core/tensor.h"
#include "specula/ops/ops.h"
#include "specula/ops/cuda/cuda_context.h"

namespace specula::ops::cuda_impl {

using specula::cuda::CudaContext;

// Token counts up to this run on the GEMV: it streams the weights once for all of them, which
// at these sizes beats a tensor-core GEMM whose tiles would be mostly padding.
constexpr int64_t kGemvMaxTokens = 8;

// out = alpha * x W^T + bias (or out += that, OutputMode::Accumulate) on the CUDA cores, any
// float dtypes, any token count (beyond kGemvMaxTokens it runs in groups of kGemvMaxTokens tokens,
// each group re-reading the weights: correct but slow, the fallback when cuBLASLt cannot take the
// operands).
void launch_gemv(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                 float alpha, OutputMode mode);

// out (=, +=) alpha * (silu(gate) * up) W^T, on the CUDA cores with the activation computed on
// load (never stored): gate_up [T, 2K] (gate then up per row), weight [N, K], out [T, N]. Any
// float dtypes and token count; beyond one token it runs in groups of two, each re-reading the
// weights.
void launch_gemv_swiglu(CudaContext& ctx, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha,
                        OutputMode mode);

// out = rms_norm(x) W^T + bias for one token, the norm computed by every block into shared
// memory (gemv.cu). Returns false, having launched nothing, for more than one token, a norm weight
// whose dtype differs from the weights', or a row too long to keep in
// shared memory (more than 12288 elements).
bool try_gemv_rms_norm(CudaContext& ctx, const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight,
                       const Tensor& bias, Tensor& out);

// One token on sm_90: out = alpha * x W^T + bias (Accumulate: out += ...), with x replaced by
// rms_norm(x, *norm_weight, norm_eps) when norm_weight is given, through the bulk-copy GEMV
// (gemv_bulk.cu). Returns false, having launched nothing, when the context has it off, the device
// is older, there is more than one token, the weights are not 16-bit with rows of at most 32 KB
// and K a multiple of 8, a norm weight's dtype differs from the weights', or a pointer is not
// aligned for 16-byte access.
bool try_gemv_bulk(CudaContext& ctx, const Tensor& x, const Tensor* norm_weight, float norm_eps, const Tensor& weight,
                   const Tensor& bias, Tensor& out, float alpha, OutputMode mode);

// Runs the same through cuBLASLt (tensor cores for bf16/f16 weights, fp32 accumulation). An x
// whose dtype differs from the weights' is converted into the context's workspace first, in
// token chunks. Returns false, having launched nothing, when the combination is not one
// cuBLASLt supports (output dtype, workspace too small, no algorithm for the shape).
// OutputMode::Accumulate adds to what out holds (beta = 1).
bool try_gemm_cublaslt(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                       float alpha, OutputMode mode = OutputMode::Overwrite);

// As above with an explicit device scratch region in place of the context's whole workspace (for
// callers that keep their own data in the rest of it); `workspace` may be null when
// workspace_bytes is 0.
bool try_gemm_cublaslt(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                       float alpha, OutputMode mode, void* workspace, size_t workspace_bytes);

}  // namespace specula::ops::cuda_impl
