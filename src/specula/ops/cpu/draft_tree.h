// CPU reference of the draft-tree ops (declared apart from cpu_ops.h so the op's files stay one
// pair; see ops/draft_tree.h for the rule).
#pragma once

#include "specula/ops/draft_tree.h"

namespace specula::ops::cpu {
void draft_tree_begin(DraftTreeState& tree, const Tensor& values, const Tensor& indices, const Tensor& vocab_map,
                      DraftLevelInputs& level_inputs);
void draft_tree_expand(DraftTreeState& tree, int level, const Tensor& values, const Tensor& indices,
                       const Tensor& vocab_map, DraftLevelInputs& level_inputs);
void draft_tree_select(DraftTreeState& tree, VerifyInputs& verify);
void draft_tree_accept(DraftTreeState& tree, const Tensor& target_tokens, CatchUpInputs& catch_up);
void draft_tree_walk_begin(DraftTreeState& tree);
void draft_tree_walk_step(DraftTreeState& tree, const Tensor& drawn, Tensor& target_tokens);
}  // namespace specula::ops::cpu
