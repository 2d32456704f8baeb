// CUDA draft-tree ops (declared apart from cuda_ops.h so the op's files stay one pair; see
// ops/draft_tree.h for the rule).
#pragma once

#include "specula/ops/draft_tree.h"

namespace specula::cuda {
class CudaContext;
}

namespace specula::ops::cuda_impl {
using specula::cuda::CudaContext;
void draft_tree_begin(CudaContext& ctx, DraftTreeState& tree, const Tensor& values, const Tensor& indices,
                      const Tensor& vocab_map, DraftLevelInputs& level_inputs);
void draft_tree_expand(CudaContext& ctx, DraftTreeState& tree, int level, const Tensor& values, const Tensor& indices,
                       const Tensor& vocab_map, DraftLevelInputs& level_inputs);
void draft_tree_select(CudaContext& ctx, DraftTreeState& tree, VerifyInputs& verify);
void draft_tree_accept(CudaContext& ctx, DraftTreeState& tree, const Tensor& target_tokens, CatchUpInputs& catch_up);
void draft_tree_walk_begin(CudaContext& ctx, DraftTreeState& tree);
void draft_tree_walk_step(CudaContext& ctx, DraftTreeState& tree, const Tensor& drawn, Tensor& target_tokens);
}  // namespace specula::ops::cuda_impl
