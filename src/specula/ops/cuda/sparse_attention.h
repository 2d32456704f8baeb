// CUDA InfLLM-V2 selection ops (declared apart from cuda_ops.h so the op's files stay one pair;
// see ops/sparse_attention.h for the rule and ops/cuda/sparse_attention.cu for the kernels).
#pragma once

#include <cstddef>
#include <string>

#include "specula/ops/sparse_attention.h"

namespace specula::cuda {
class CudaContext;
}

namespace specula::ops::cuda_impl {
using specula::cuda::CudaContext;

void compress_keys(CudaContext& ctx, const Tensor& k_cache, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, CompressedKeys& keys);

// `stage1_only` stops after stage 1 (block lists not written): for benchmarks that time stage 1's
// share of the op.
void sparse_select(CudaContext& ctx, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                   const Tensor& positions, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, Tensor& blocks, bool stage1_only = false);

// How sparse_select runs with these operands, in words: stage-1 path (tensor cores or the fp32
// fallback), row tile, splits per pass, token chunks and workspace bytes per chunk.
std::string describe_sparse_select(CudaContext& ctx, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                                   const AttentionMask& mask, const SparseSelectParams& params);
}  // namespace specula::ops::cuda_impl
