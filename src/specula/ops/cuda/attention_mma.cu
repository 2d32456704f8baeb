// Instantiations and launch of the tensor-core attention kernel (attention_mma.cuh) for BF16/F16
// caches with head_dim 64 or 128: the prefill layout (64 query rows, 4 warps along the rows,
// double-buffered 64-row K/V tiles) when a KV head has more than 16 query rows in the call, else
// the decode layout (16 query rows, 4 warps along the cache rows, triple-buffered tiles). Both
// split the cache when the grid would otherwise leave multiprocessors idle.
#include <algorithm>

#include "specula/core/error.h"
#include "specula/ops/cuda/attention_common.cuh"
#include "specula/ops/cuda/attention_mma.cuh"
#include "specula/ops/cuda/cuda_check.cuh"

namespace specula::ops::cuda_impl::attn {

namespace {

constexpr int kTileRows = 64;
constexpr int kDecodeMaxRows = 16;  // query rows per KV head that the decode layout holds

//                                             Elem, HD, warps M, warps N, tile rows, stages, min blocks/SM
template <typename Elem, int kHeadDim>
using PrefillConfig = MmaConfig<Elem, kHeadDim, 4, 1, kTileRows, 2, 2>;
template <typename Elem, int kHeadDim>
using DecodeConfig = MmaConfig<Elem, kHeadDim, 1, 4, kTileRows, 3, 2>;

template <class Cfg, class Mask>
void launch(AttnParams p, int multiprocessors, size_t smem_optin, void* workspace, size_t workspace_bytes,
            cudaStream_t stream, bool programmatic) {
  const auto kernel = attention_mma_kernel<Cfg, Mask>;
  SPECULA_CHECK(Cfg::kSmemBytes <= smem_optin, "attention: the tensor-core kernel needs ", Cfg::kSmemBytes,
                " bytes of shared memory per block, the device allows ", smem_optin);
  SPECULA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(Cfg::kSmemBytes)));
  int blocks_per_sm = 0;
  SPECULA_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, Cfg::kThreads, Cfg::kSmemBytes));
  const int total_rows = p.tokens * p.group;
  const int q_tiles = ceil_div_int(total_rows, Cfg::kBlockM);
  SPECULA_CHECK(q_tiles <= 65535 && p.n_kv <= 65535, "attention: ", p.tokens, " tokens x ", p.n_heads,
                " heads exceed the kernel's grid");
  const KernelShape shape{Cfg::kBlockM, Cfg::kBlockN, blocks_per_sm, std::min(total_rows, Cfg::kBlockM)};
  plan_splits(p, shape, q_tiles * p.n_kv, multiprocessors, workspace, workspace_bytes);
  const dim3 grid(static_cast<unsigned>(p.num_splits), static_cast<unsigned>(q_tiles), static_cast<unsigned>(p.n_kv));
  launch_kernel(stream, programmatic, "attention (tensor-core kernel)", kernel, grid, dim3(Cfg::kThreads),
                Cfg::kSmemBytes, p);
  if (p.num_splits > 1) launch_combine(p, stream, programmatic);
}

template <typename Elem, int kHeadDim, class Mask>
void launch_for_mask(AttnParams p, int multiprocessors, size_t smem_optin, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream, bool programmatic) {
  if (p.tokens * p.group <= kDecodeMaxRows)
    launch<DecodeConfig<Elem, kHeadDim>, Mask>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                               programmatic);
  else
    launch<PrefillConfig<Elem, kHeadDim>, Mask>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                                programmatic);
}

// The causal instantiations are the ones every prefill and decode step runs; the tree-mask ones
// only speculative verification and drafting.
template <typename Elem, int kHeadDim>
void launch_for(AttnParams p, int multiprocessors, size_t smem_optin, void* workspace, size_t workspace_bytes,
                cudaStream_t stream, bool programmatic) {
  if (p.tree_bits != nullptr)
    launch_for_mask<Elem, kHeadDim, TreeMask>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                              programmatic);
  else
    launch_for_mask<Elem, kHeadDim, CausalBySlotMask>(p, multiprocessors, smem_optin, workspace, workspace_bytes,
                                                      stream, programmatic);
}

}  // namespace

void run_attention_mma(AttnParams p, DType cache_dtype, int multiprocessors, size_t smem_optin, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
  const bool bf16 = cache_dtype == DType::BF16;
  SPECULA_CHECK(bf16 || cache_dtype == DType::F16, "attention: tensor-core kernel called for ",
                dtype_name(cache_dtype));
  if (p.head_dim == 64) {
    if (bf16)
      launch_for<__nv_bfloat16, 64>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream, programmatic);
    else
      launch_for<__half, 64>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream, programmatic);
  } else if (p.head_dim == 128) {
    if (bf16)
      launch_for<__nv_bfloat16, 128>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream, programmatic);
    else
      launch_for<__half, 128>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream, programmatic);
  } else {
    fail("attention: tensor-core kernel called for head_dim ", p.head_dim);
  }
}

}  // namespace specula::ops::cuda_impl::attn
