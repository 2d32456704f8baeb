// The engines behind the CUDA linear op (ops/cuda/linear.cu chooses between them): a hand-written
// GEMV for decode-sized token counts (gemv.cu, and gemv_bulk.cu for one token on sm_90), a
// weight-streaming tensor-core GEMM for short batches (gemm_small_m.cu: verification of a draft
// tree, the draft head's levels) and cuBLASLt for everything larger or that the others decline
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

// Token counts above kGemvMaxTokens and up to this try the small-M GEMM first: it streams the
// weights once at close to the memory rate where cuBLASLt's tiles do not (a 60-row verification
// batch); larger counts are compute-bound prefill work for cuBLASLt.
constexpr int64_t kSmallMMaxTokens = 128;

// out = alpha * x W^T + bias (or out += that, OutputMode::Accumulate) on the CUDA cores, any
// float dtypes, any token count (beyond kGemvMaxTokens it runs in groups of kGemvMaxTokens tokens,
// each group re-reading the weights: correct but slow, the fallback when neither GEMM below can
// take the operands).
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

// out = alpha * x W^T + bias (Accumulate: out += ...) for 1..kSmallMMaxTokens tokens on the tensor
// cores (mma.sync, fp32 accumulation) with the weights streamed once (gemm_small_m.cu); out BF16,
// F16 or F32, bias any float dtype or empty. Tiles that several blocks share are added up from fp32
// partial sums in the context's workspace (up to 2 KB per token and SM) by a second kernel, in a
// fixed order (the result does not depend on timing). Returns false, having launched nothing, when
// the weights are not BF16/F16, x's dtype differs from theirs, K is not a multiple of 64, the
// weights or x are not 16-byte aligned, the token count is out of range, the device is older than
// sm_80 or lacks the shared memory, or the workspace cannot hold the partial sums.
bool try_gemm_small_m(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                      float alpha, OutputMode mode = OutputMode::Overwrite);

// As above with an explicit device scratch region in place of the context's whole workspace (for
// callers that keep their own data in the rest of it: linear_swiglu's activation chunk); `workspace`
// may be null when workspace_bytes is 0 (then only shapes whose tiles no two blocks share run).
bool try_gemm_small_m(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                      float alpha, OutputMode mode, void* workspace, size_t workspace_bytes);

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
