// Instantiations of the tensor-core attention kernel (attention_mma.cuh) for the dense masks
// (causal and tree) with BF16/F16 caches and head_dim 64 or 128; the launch itself is
// attention_mma_launch.cuh's. Block-sparse calls go to attention_mma_sparse.cu.
#include "specula/ops/cuda/attention_common.cuh"
#include "specula/ops/cuda/attention_mma.cuh"
#include "specula/ops/cuda/attention_mma_launch.cuh"

namespace specula::ops::cuda_impl::attn {

namespace {

// The causal instantiations are the ones every prefill and decode step runs; the tree-mask ones
// only speculative verification and drafting.
template <typename Elem, int kHeadDim>
struct LaunchDense {
  static bool run(const SparseAttnParams& p, int multiprocessors, size_t smem_optin, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
    if (p.tree_bits != nullptr)
      return launch_mma_for_mask<Elem, kHeadDim, TreeMask>(p, multiprocessors, smem_optin, workspace,
                                                           workspace_bytes, stream, programmatic);
    return launch_mma_for_mask<Elem, kHeadDim, CausalBySlotMask>(p, multiprocessors, smem_optin, workspace,
                                                                 workspace_bytes, stream, programmatic);
  }
};

}  // namespace

bool run_attention_mma(const SparseAttnParams& p, DType cache_dtype, int multiprocessors, size_t smem_optin, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
  if (p.blocks != nullptr)
    return run_attention_mma_sparse(p, cache_dtype, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                    programmatic);
  return dispatch_mma<LaunchDense>(p, cache_dtype, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                   programmatic);
}

}  // namespace specula::ops::cuda_impl::attn
