// Host launch of the tensor-core attention kernel (attention_mma.cuh) for one mask policy: the
// layout choice, shared-memory and occupancy setup, split planning and the combine. Shared by
// attention_mma.cu (dense masks) and attention_mma_sparse.cu (block-sparse masks), which
// instantiate it for their policies in separate translation units so the two build in parallel.
//
// Layouts: the prefill layout (64 query rows, 4 warps along the rows, double-buffered 64-row K/V
// tiles) when a KV head has more than 16 query rows in the call, else the decode layout (16 query
// rows, 4 warps along the cache rows, triple-buffered tiles). Both split the cache (or, with
// block lists, the walk's items) when the grid would otherwise leave multiprocessors idle.
#pragma once

#include <algorithm>
#include <cstdint>

#include "specula/core/error.h"
#include "specula/ops/cuda/attention_common.cuh"
#include "specula/ops/cuda/attention_mma.cuh"
#include "specula/ops/cuda/attention_sparse.cuh"
#include "specula/ops/cuda/cuda_check.cuh"

namespace specula::ops::cuda_impl::attn {

constexpr int kMmaTileRows = 64;
constexpr int kMmaDecodeMaxRows = 16;  // query rows per KV head that the decode layout holds

//                                             Elem, HD, warps M, warps N, tile rows, stages, min blocks/SM
template <typename Elem, int kHeadDim>
using PrefillConfig = MmaConfig<Elem, kHeadDim, 4, 1, kMmaTileRows, 2, 2>;
template <typename Elem, int kHeadDim>
using DecodeConfig = MmaConfig<Elem, kHeadDim, 1, 4, kMmaTileRows, 3, 2>;

// Returns false (launching nothing) only when a block-sparse union does not fit in shared memory.
template <class Cfg, class Mask>
bool launch_mma(typename Mask::Params p, int multiprocessors, size_t smem_optin, void* workspace, size_t workspace_bytes,
                cudaStream_t stream, bool programmatic) {
  const auto kernel = attention_mma_kernel<Cfg, Mask>;
  const int total_rows = p.tokens * p.group;
  size_t smem = Cfg::kSmemBytes;
  if constexpr (Mask::kSparse) {
    // The most tokens one block's rows span: rows [m0, m0 + kBlockM) start anywhere in a token.
    const int64_t max_tokens = std::min<int64_t>(p.tokens, (Cfg::kBlockM + p.group - 2) / p.group + 1);
    const int64_t blocks = static_cast<int64_t>(p.sparse_words) * 32;  // >= ceil(capacity / block_size)
    p.sparse_union_cap = static_cast<int>(std::min(max_tokens * p.block_width, blocks));
    smem = sparse_align16(Cfg::kSmemBytes) + sparse_smem_bytes(Cfg::kBlockM, p.sparse_words, p.sparse_union_cap);
    if (smem > smem_optin) return false;
  }
  SPECULA_CHECK(smem <= smem_optin, "attention: the tensor-core kernel needs ", smem,
                " bytes of shared memory per block, the device allows ", smem_optin);
  SPECULA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int blocks_per_sm = 0;
  SPECULA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, Cfg::kThreads, smem));
  const int q_tiles = ceil_div_int(total_rows, Cfg::kBlockM);
  SPECULA_CHECK(q_tiles <= 65535 && p.n_kv <= 65535, "attention: ", p.tokens, " tokens x ", p.n_heads,
                " heads exceed the kernel's grid");
  KernelShape shape{Cfg::kBlockM, Cfg::kBlockN, blocks_per_sm, std::min(total_rows, Cfg::kBlockM)};
  if constexpr (Mask::kSparse) shape.max_tiles = sparse_max_items(p, p.sparse_union_cap, Cfg::kBlockN);
  plan_splits(p, shape, q_tiles * p.n_kv, multiprocessors, workspace, workspace_bytes);
  const dim3 grid(static_cast<unsigned>(p.num_splits), static_cast<unsigned>(q_tiles), static_cast<unsigned>(p.n_kv));
  launch_kernel(stream, programmatic, Mask::kSparse ? "attention (tensor-core kernel, block-sparse)"
                                                    : "attention (tensor-core kernel)",
                kernel, grid, dim3(Cfg::kThreads), smem, p);
  if (p.num_splits > 1) launch_combine(p, stream, programmatic);
  return true;
}

template <typename Elem, int kHeadDim, class Mask>
bool launch_mma_for_mask(const typename Mask::Params& p, int multiprocessors, size_t smem_optin, void* workspace,
                         size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
  bool token_tiles = false;  // block-sparse calls only (CudaContext::sparse_token_tiles)
  if constexpr (Mask::kSparse) token_tiles = p.token_tiles;
  if (p.tokens * p.group <= kMmaDecodeMaxRows || token_tiles)
    return launch_mma<DecodeConfig<Elem, kHeadDim>, Mask>(p, multiprocessors, smem_optin, workspace,
                                                          workspace_bytes, stream, programmatic);
  return launch_mma<PrefillConfig<Elem, kHeadDim>, Mask>(p, multiprocessors, smem_optin, workspace, workspace_bytes,
                                                         stream, programmatic);
}

// Element type and head dim from the runtime values, then `launch_for<Elem, kHeadDim>`.
template <template <typename, int> class LaunchFor>
bool dispatch_mma(const SparseAttnParams& p, DType cache_dtype, int multiprocessors, size_t smem_optin, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
  const bool bf16 = cache_dtype == DType::BF16;
  SPECULA_CHECK(bf16 || cache_dtype == DType::F16, "attention: tensor-core kernel called for ",
                dtype_name(cache_dtype));
  if (p.head_dim == 64)
    return bf16 ? LaunchFor<__nv_bfloat16, 64>::run(p, multiprocessors, smem_optin, workspace, workspace_bytes,
                                                    stream, programmatic)
                : LaunchFor<__half, 64>::run(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                             programmatic);
  if (p.head_dim == 128)
    return bf16 ? LaunchFor<__nv_bfloat16, 128>::run(p, multiprocessors, smem_optin, workspace, workspace_bytes,
                                                     stream, programmatic)
                : LaunchFor<__half, 128>::run(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                              programmatic);
  fail("attention: tensor-core kernel called for head_dim ", p.head_dim);
}

}  // namespace specula::ops::cuda_impl::attn
