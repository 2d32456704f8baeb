// Dispatch of the draft-tree ops (ops/draft_tree.h): checks the state and the input buffers from
// tensor metadata (host side, so safe during graph capture), then runs the CPU reference or the
// CUDA kernels.
#include "specula/ops/draft_tree.h"

#include <string_view>

#include "specula/ops/cpu/draft_tree.h"
#include "specula/ops/op_checks.h"
#include "specula/ops/op_dispatch.h"
#include "specula/ops/ops.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/draft_tree.h"
#endif

namespace specula::ops {

namespace {

void check_i32(std::string_view op, std::string_view what, const Tensor& t, int64_t at_least) {
  check_dtype(op, what, t, DType::I32);
  SPECULA_CHECK(t.numel() >= at_least, op, ": ", what, " ", t.shape_string(), " needs at least ", at_least, " entries");
}

Device check_state(std::string_view op, const DraftTreeState& t) {
  SPECULA_CHECK(t.top_k >= 1 && t.top_k <= kMaxTopK && t.depth >= 1 && t.size >= 2 && t.size <= 1 + t.candidates() &&
                    t.candidates() <= kMaxDraftCandidates,
                op, ": tree shape top_k ", t.top_k, ", depth ", t.depth, ", size ", t.size, " is outside the limits");
  const int64_t C = t.candidates();
  check_i32(op, "cycle", t.cycle, kCycleWords);
  check_dtype(op, "cand_score", t.cand_score, DType::F32);
  SPECULA_CHECK(t.cand_score.numel() >= C, op, ": cand_score needs ", C, " entries");
  check_i32(op, "cand_token", t.cand_token, C);
  check_i32(op, "cand_parent", t.cand_parent, C);
  check_i32(op, "cand_node", t.cand_node, C);
  check_i32(op, "frontier", t.frontier, static_cast<int64_t>(t.depth) * t.top_k);
  check_i32(op, "frontier_parent", t.frontier_parent, static_cast<int64_t>(t.depth) * t.top_k);
  check_i32(op, "node_cand", t.node_cand, t.size);
  check_i32(op, "node_token", t.node_token, t.size);
  check_i32(op, "node_parent", t.node_parent, t.size);
  check_i32(op, "node_depth", t.node_depth, t.size);
  check_dtype(op, "node_score", t.node_score, DType::F32);
  SPECULA_CHECK(t.node_score.numel() >= t.size, op, ": node_score needs ", t.size, " entries");
  check_i32(op, "record", t.record, DraftTreeState::record_words(t.depth));
  return common_device(op, {&t.cycle, &t.cand_score, &t.cand_token, &t.cand_parent, &t.cand_node, &t.frontier,
                            &t.frontier_parent, &t.node_cand, &t.node_token, &t.node_parent, &t.node_depth,
                            &t.node_score, &t.record});
}

void check_top_k(std::string_view op, const DraftTreeState& t, int64_t rows, const Tensor& values, const Tensor& indices,
                 const Tensor& vocab_map, Device device) {
  check_dtype(op, "values", values, DType::F32);
  check_dtype(op, "indices", indices, DType::I32);
  SPECULA_CHECK(values.rank == 2 && values.dim(0) == rows && values.dim(1) == t.top_k && indices.rank == 2 &&
                    indices.dim(0) == rows && indices.dim(1) == t.top_k,
                op, ": values ", values.shape_string(), " and indices ", indices.shape_string(), " must be [", rows,
                ", ", t.top_k, "]");
  if (!vocab_map.empty()) check_dtype(op, "vocab_map", vocab_map, DType::I32);
  SPECULA_CHECK(common_device(op, {&values, &indices, &vocab_map}) == device, op, ": operands on different devices");
}

void check_level_inputs(std::string_view op, const DraftTreeState& t, int level, const DraftLevelInputs& in,
                        Device device) {
  check_i32(op, "tokens", in.tokens, t.top_k);
  check_i32(op, "positions", in.positions, t.top_k);
  check_i32(op, "slots", in.slots, t.top_k);
  check_i32(op, "gather", in.gather, t.top_k);
  check_i32(op, "mask", in.mask, t.top_k * AttentionMask::tree_words(static_cast<int64_t>(level) * t.top_k));
  SPECULA_CHECK(common_device(op, {&in.tokens, &in.positions, &in.slots, &in.gather, &in.mask}) == device, op,
                ": operands on different devices");
}


}  // namespace

void draft_tree_begin(OpContext& ctx, DraftTreeState& tree, const Tensor& values, const Tensor& indices,
                      const Tensor& vocab_map, DraftLevelInputs& level_inputs) {
  constexpr std::string_view op = "draft_tree_begin";
  const Device device = check_state(op, tree);
  check_top_k(op, tree, 1, values, indices, vocab_map, device);
  check_level_inputs(op, tree, 1, level_inputs, device);
  run_on_device(
      op, ctx, device, [&](ThreadPool&) { cpu::draft_tree_begin(tree, values, indices, vocab_map, level_inputs); },
      [&]([[maybe_unused]] auto& c) {
#ifdef SPECULA_WITH_CUDA
        cuda_impl::draft_tree_begin(c, tree, values, indices, vocab_map, level_inputs);
#endif
      });
}

void draft_tree_expand(OpContext& ctx, DraftTreeState& tree, int level, const Tensor& values, const Tensor& indices,
                       const Tensor& vocab_map, DraftLevelInputs& level_inputs) {
  constexpr std::string_view op = "draft_tree_expand";
  const Device device = check_state(op, tree);
  SPECULA_CHECK(level >= 1 && level < tree.depth, op, ": level ", level, " is outside [1, ", tree.depth, ")");
  check_top_k(op, tree, tree.top_k, values, indices, vocab_map, device);
  if (level + 1 < tree.depth) check_level_inputs(op, tree, level + 1, level_inputs, device);
  run_on_device(
      op, ctx, device,
      [&](ThreadPool&) { cpu::draft_tree_expand(tree, level, values, indices, vocab_map, level_inputs); },
      [&]([[maybe_unused]] auto& c) {
#ifdef SPECULA_WITH_CUDA
        cuda_impl::draft_tree_expand(c, tree, level, values, indices, vocab_map, level_inputs);
#endif
      });
}

void draft_tree_select(OpContext& ctx, DraftTreeState& tree, VerifyInputs& verify) {
  constexpr std::string_view op = "draft_tree_select";
  const Device device = check_state(op, tree);
  check_i32(op, "tokens", verify.tokens, tree.size);
  check_i32(op, "positions", verify.positions, tree.size);
  check_i32(op, "slots", verify.slots, tree.size);
  check_i32(op, "mask", verify.mask, tree.size * AttentionMask::tree_words(tree.size));
  SPECULA_CHECK(common_device(op, {&verify.tokens, &verify.positions, &verify.slots, &verify.mask}) == device, op,
                ": operands on different devices");
  run_on_device(op, ctx, device, [&](ThreadPool&) { cpu::draft_tree_select(tree, verify); },
      [&]([[maybe_unused]] auto& c) {
#ifdef SPECULA_WITH_CUDA
        cuda_impl::draft_tree_select(c, tree, verify);
#endif
      });
}

void draft_tree_accept(OpContext& ctx, DraftTreeState& tree, const Tensor& target_tokens, CatchUpInputs& catch_up) {
  constexpr std::string_view op = "draft_tree_accept";
  const Device device = check_state(op, tree);
  check_i32(op, "target_tokens", target_tokens, tree.size);
  const int64_t rows = tree.depth + 1;
  check_i32(op, "tokens", catch_up.tokens, rows);
  check_i32(op, "positions", catch_up.positions, rows);
  check_i32(op, "slots", catch_up.slots, rows);
  check_i32(op, "gather", catch_up.gather, rows);
  check_i32(op, "kv_src", catch_up.kv_src, tree.depth);
  check_i32(op, "kv_dst", catch_up.kv_dst, tree.depth);
  check_i32(op, "kv_count", catch_up.kv_count, 1);
  SPECULA_CHECK(common_device(op, {&target_tokens, &catch_up.tokens, &catch_up.positions, &catch_up.slots,
                                   &catch_up.gather, &catch_up.kv_src, &catch_up.kv_dst, &catch_up.kv_count}) == device,
                op, ": operands on different devices");
  run_on_device(op, ctx, device, [&](ThreadPool&) { cpu::draft_tree_accept(tree, target_tokens, catch_up); },
      [&]([[maybe_unused]] auto& c) {
#ifdef SPECULA_WITH_CUDA
        cuda_impl::draft_tree_accept(c, tree, target_tokens, catch_up);
#endif
      });
}

void draft_tree_walk_begin(OpContext& ctx, DraftTreeState& tree) {
  constexpr std::string_view op = "draft_tree_walk_begin";
  const Device device = check_state(op, tree);
  check_i32(op, "walk", tree.walk, kWalkWords);
  SPECULA_CHECK(tree.walk.device == device, op, ": operands on different devices");
  run_on_device(op, ctx, device, [&](ThreadPool&) { cpu::draft_tree_walk_begin(tree); },
      [&]([[maybe_unused]] auto& c) {
#ifdef SPECULA_WITH_CUDA
        cuda_impl::draft_tree_walk_begin(c, tree);
#endif
      });
}

void draft_tree_walk_step(OpContext& ctx, DraftTreeState& tree, const Tensor& drawn, Tensor& target_tokens) {
  constexpr std::string_view op = "draft_tree_walk_step";
  const Device device = check_state(op, tree);
  check_i32(op, "walk", tree.walk, kWalkWords);
  check_i32(op, "drawn", drawn, 1);
  check_i32(op, "target_tokens", target_tokens, tree.size);
  SPECULA_CHECK(common_device(op, {&tree.walk, &drawn, &target_tokens}) == device, op,
                ": operands on different devices");
  run_on_device(op, ctx, device, [&](ThreadPool&) { cpu::draft_tree_walk_step(tree, drawn, target_tokens); },
      [&]([[maybe_unused]] auto& c) {
#ifdef SPECULA_WITH_CUDA
        cuda_impl::draft_tree_walk_step(c, tree, drawn, target_tokens);
#endif
      });
}

}  // namespace specula::ops
