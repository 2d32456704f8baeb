// CUDA linear op (ops::linear): out = alpha * x W^T + bias.
//
// Up to kGemvMaxTokens tokens (decode, short verification batches) run on the hand-written GEMV,
// which streams the weights once at close to memory bandwidth; larger counts go to cuBLASLt's
// tensor-core GEMM. When cuBLASLt cannot take the operands (an output dtype it does not pair with
// the weights', too small a workspace to convert x), the GEMV computes it anyway in groups of
// tokens: slower, never wrong. An x whose dtype differs from the weights' (F32 activations of the
// full-precision mode) also stays on the GEMV, which reads x in fp32: converting it for cuBLASLt
// would round it to 16 bits and defeat the mode's purpose.
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/linear_impl.h"

namespace specula::ops::cuda_impl {

void linear(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float alpha) {
  if (x.rows() > kGemvMaxTokens && x.dtype == weight.dtype && try_gemm_cublaslt(ctx, x, weight, bias, out, alpha))
    return;
  launch_gemv(ctx, x, weight, bias, out, alpha);
}

}  // namespace specula::ops::cuda_impl
