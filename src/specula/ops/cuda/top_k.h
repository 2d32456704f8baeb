// CUDA ops::top_k_log_softmax (declared apart from cuda_ops.h so the op's files stay one pair).
#pragma once

#include "specula/core/tensor.h"

namespace specula::cuda {
class CudaContext;
}

namespace specula::ops::cuda_impl {
using specula::cuda::CudaContext;
void top_k_log_softmax(CudaContext& ctx, const Tensor& logits, Tensor& values, Tensor& indices);
}  // namespace specula::ops::cuda_impl
