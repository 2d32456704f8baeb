// Draft-tree ops: EAGLE-2 tree growth, selection and acceptance as device ops, so that a whole
// speculative cycle (draft levels, verification, acceptance, draft catch-up) runs on the device
// and replays as one CUDA graph, with one small read per cycle (the accepted tokens).
//
// The rule is spec::TreeBuilder's (spec/draft_tree.h; reference eagle-frspec.md s.0/s.7), kept
// here in device memory:
//  * level 1 = the root's top_k draft tokens; level d + 1 = the best top_k of the top_k^2
//    children of level d's frontier, by cumulative log-probability (fp32 sums), the lower
//    candidate index first on ties;
//  * the tree = the root plus the best size - 1 of all candidates (same order), in candidate
//    order (level order), so parents come before children;
//  * acceptance walks from the root: at node u the target's token x[u] is accepted when a child
//    of u carries it (the walk moves there), else x[u] is the cycle's last token.
// Candidate indices: level-1 candidate j is j; the children of frontier slot f of level d are
// top_k + (d - 1) top_k^2 + f top_k + j.
//
// Everything that changes from cycle to cycle (the committed length, the root token, the tree)
// lives in DraftTreeState's device tensors; the ops take the level and the shape as host values
// only, which are fixed for a captured graph. The ops write the step inputs of the next forward
// (the head's level inputs, the target's verification inputs, the head's catch-up inputs)
// straight into those forwards' input buffers.
//
// Positions (reference s.7 item 2): with L tokens committed, level d's nodes run through the head
// at position L + d - 1 in cache rows L + (d - 1) top_k + f; the target sees tree node i at
// position L + depth(i) in row L + i; the catch-up runs rows L .. L + depth at positions L + i.
#pragma once

#include <cstdint>

#include "specula/core/tensor.h"

namespace specula::ops {

struct OpContext;

// Most candidates a tree may have (top_k + (depth - 1) top_k^2): the CUDA selection sorts them
// in shared memory.
inline constexpr int64_t kMaxDraftCandidates = 8192;

// Words of DraftTreeState::cycle.
enum DraftCycleWord : int {
  kCycleCommitted = 0,  // L: rows both KV caches hold; the root sits at position L
  kCycleRoot = 1,       // the root token (the target's last choice)
  kCycleRootRow = 2,    // the head's output row (of its last forward) that level 1 pairs with
  kCycleWords = 3,
};

// Words of DraftTreeState::walk: a sampled cycle's walk on the device (the node it is at, and
// whether it still goes on).
enum DraftWalkWord : int { kWalkNode = 0, kWalkActive = 1, kWalkWords = 2 };

struct DraftTreeState {
  int top_k = 0, depth = 0, size = 0;
  Tensor cycle;            // I32 [kCycleWords]
  Tensor cand_score;       // F32 [C] cumulative draft log-probability
  Tensor cand_token;       // I32 [C] full-vocabulary id
  Tensor cand_parent;      // I32 [C] parent candidate, -1 under the root
  Tensor cand_node;        // I32 [C] scratch: tree node of a chosen candidate
  Tensor frontier;         // I32 [depth, top_k] candidate of each frontier slot per level
  Tensor frontier_parent;  // I32 [depth, top_k] slot of its parent in the level above (level 1: 0)
  Tensor node_cand;        // I32 [size] candidate of each tree node (-1 for the root)
  Tensor node_token;       // I32 [size]
  Tensor node_parent;      // I32 [size] (-1 for the root)
  Tensor node_depth;       // I32 [size]
  Tensor node_score;       // F32 [size] (0 for the root)
  Tensor record;           // I32 [record_words(depth)]: see below
  Tensor walk;             // I32 [kWalkWords] (only the walk ops use it)

  int64_t candidates() const { return top_k + static_cast<int64_t>(depth - 1) * top_k * top_k; }
  // The cycle's result, the one thing read back: [0] m, the accepted draft tokens;
  // [1, 2 + m) the m accepted tokens then the target's own; [record_path(depth), + m) the accepted
  // nodes.
  static int64_t record_words(int depth) { return 2 + 2 * static_cast<int64_t>(depth); }
  static int64_t record_path(int depth) { return 2 + static_cast<int64_t>(depth); }
};

// The head's inputs for one draft level ([rows >= top_k] I32 each; mask [top_k, words(width)]).
struct DraftLevelInputs {
  Tensor tokens, positions, slots, gather, mask;
};
// The target's inputs for verification ([rows >= size]; mask [size, words(size)]).
struct VerifyInputs {
  Tensor tokens, positions, slots, mask;
};
// The head's catch-up over rows L .. L + depth (tokens, positions, slots, gather [rows >= depth + 1])
// and the target's KV compaction (kv_src, kv_dst [depth], kv_count [1]).
struct CatchUpInputs {
  Tensor tokens, positions, slots, gather, kv_src, kv_dst, kv_count;
};

// Level 1 from the root's top-k row (values [1, top_k] F32 log-probabilities, indices [1, top_k]
// draft ids; vocab_map [draft_vocab] maps them to full ids, empty = identity). Writes level 1's
// head inputs (mask width top_k; gather = the root row for every node).
void draft_tree_begin(OpContext& ctx, DraftTreeState& tree, const Tensor& values, const Tensor& indices,
                      const Tensor& vocab_map, DraftLevelInputs& level_inputs);
// After level `level` (1 .. depth - 1) ran through the head: values/indices [top_k, top_k] are
// the top-k rows of its frontier nodes. Adds level + 1's candidates, picks its frontier, and
// (when level + 1 < depth) writes level + 1's head inputs (mask width (level + 1) top_k; gather =
// each node's parent slot, the row of the parent's output in the last forward).
void draft_tree_expand(OpContext& ctx, DraftTreeState& tree, int level, const Tensor& values, const Tensor& indices,
                       const Tensor& vocab_map, DraftLevelInputs& level_inputs);
// Picks the tree from all candidates and writes the node arrays and the target's inputs.
void draft_tree_select(OpContext& ctx, DraftTreeState& tree, VerifyInputs& verify);
// Walks the tree with the target's token at each node (target_tokens [size] I32: the argmax of
// each node's logits, or, for sampling, the sampler's draws at the nodes the walk visits), writes
// the record and the catch-up inputs, and advances the cycle: L += m + 1, root = the target's
// token, root row = m (the catch-up's row of the new root).
void draft_tree_accept(OpContext& ctx, DraftTreeState& tree, const Tensor& target_tokens, CatchUpInputs& catch_up);

// The target's tokens of a sampled cycle, drawn on the device: walk_begin puts the walk at the
// root; then, depth + 1 times, the caller draws the target's token at the walk's node (the node's
// logits row, the request's sampler, skipped once the walk has ended: GpuSampler::sample_if with
// the kWalkActive word) and walk_step records it in target_tokens[node] and moves to the child
// that carries it, or ends the walk. The draws are exactly the tokens the cycle emits, in order,
// so the sampler's counter and penalty history follow the output. draft_tree_accept then walks
// the same path.
void draft_tree_walk_begin(OpContext& ctx, DraftTreeState& tree);
// drawn [1] I32; target_tokens [size] I32. Does nothing once the walk has ended.
void draft_tree_walk_step(OpContext& ctx, DraftTreeState& tree, const Tensor& drawn, Tensor& target_tokens);

}  // namespace specula::ops
