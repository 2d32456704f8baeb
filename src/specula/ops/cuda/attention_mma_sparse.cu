// Block-sparse (InfLLM-V2) instantiations of the tensor-core attention kernel: SparseMask over a
// causal or a tree base mask (attention_mma.cuh, attention_sparse.cuh), BF16/F16 caches, head_dim
// 64 or 128, both layouts. A separate translation unit from the dense instantiations, so that
// the two build in parallel and the dense kernels are compiled exactly as before.
#include "specula/ops/cuda/attention_common.cuh"
#include "specula/ops/cuda/attention_mma.cuh"
#include "specula/ops/cuda/attention_mma_launch.cuh"

namespace specula::ops::cuda_impl::attn {

namespace {

template <typename Elem, int kHeadDim>
struct LaunchSparse {
  static bool run(const SparseAttnParams& p, int multiprocessors, size_t smem_optin, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
    if (p.tree_bits != nullptr)
      return launch_mma_for_mask<Elem, kHeadDim, SparseMask<true>>(p, multiprocessors, smem_optin, workspace,
                                                                   workspace_bytes, stream, programmatic);
    return launch_mma_for_mask<Elem, kHeadDim, SparseMask<false>>(p, multiprocessors, smem_optin, workspace,
                                                                  workspace_bytes, stream, programmatic);
  }
};

}  // namespace

bool run_attention_mma_sparse(SparseAttnParams p, DType cache_dtype, int multiprocessors, size_t smem_optin,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
  return dispatch_mma<LaunchSparse>(p, cache_dtype, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                    programmatic);
}

}  // namespace specula::ops::cuda_impl::attn
