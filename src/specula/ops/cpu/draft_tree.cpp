// CPU reference of the draft-tree ops (ops/draft_tree.h): the tree rule written out plainly over
// the state tensors, one thread (a tree is at most a few thousand candidates). The CUDA kernels
// are tested against these, and these against spec::TreeBuilder, the host builder.
#include "specula/ops/cpu/draft_tree.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "specula/core/error.h"

namespace specula::ops::cpu {

namespace {

int64_t words(int64_t width) { return (width + 31) / 32; }

// NaN scores rank as -inf (a NaN log-probability is a broken draft row, never a best choice).
float sanitize(float v) { return v != v ? -std::numeric_limits<float>::infinity() : v; }

// Candidate a ranks before candidate b: higher score, then lower index.
bool ranks_before(const float* score, int32_t a, int32_t b) {
  return score[a] > score[b] || (score[a] == score[b] && a < b);
}

int32_t full_id(const Tensor& vocab_map, int32_t draft_id) {
  if (vocab_map.empty()) return draft_id;
  SPECULA_CHECK(draft_id >= 0 && draft_id < vocab_map.numel(), "draft tree: draft id ", draft_id,
                " is outside the FR-Spec list of ", vocab_map.numel());
  return vocab_map.as<const int32_t>()[draft_id];
}

// Level `level`'s head inputs from the frontier history: node f of the level runs at position
// L + level - 1 in row L + (level - 1) k + f, paired with `gather[f]`, and sees its frontier
// ancestors and itself among the (level k) rows of the levels so far.
void write_level_inputs(const DraftTreeState& tree, int level, const std::vector<int32_t>& gather,
                        DraftLevelInputs& in) {
  const int k = tree.top_k;
  const int32_t L = tree.cycle.as<const int32_t>()[kCycleCommitted];
  const int32_t* frontier = tree.frontier.as<const int32_t>();
  const int32_t* frontier_parent = tree.frontier_parent.as<const int32_t>();
  const int32_t* token = tree.cand_token.as<const int32_t>();
  const int64_t w = words(static_cast<int64_t>(level) * k);
  auto* mask = in.mask.as<int32_t>();
  for (int f = 0; f < k; ++f) {
    in.tokens.as<int32_t>()[f] = token[frontier[(level - 1) * k + f]];
    in.positions.as<int32_t>()[f] = L + level - 1;
    in.slots.as<int32_t>()[f] = L + (level - 1) * k + f;
    in.gather.as<int32_t>()[f] = gather[static_cast<size_t>(f)];
    int32_t* row = mask + f * w;
    std::fill(row, row + w, 0);
    for (int l = level, slot = f; l >= 1; --l) {
      const int64_t bit = static_cast<int64_t>(l - 1) * k + slot;
      row[bit / 32] |= static_cast<int32_t>(1u << (bit % 32));
      slot = frontier_parent[(l - 1) * k + slot];
    }
  }
}

}  // namespace

void draft_tree_begin(DraftTreeState& tree, const Tensor& values, const Tensor& indices, const Tensor& vocab_map,
                      DraftLevelInputs& level_inputs) {
  const int k = tree.top_k;
  for (int j = 0; j < k; ++j) {
    tree.cand_score.as<float>()[j] = sanitize(values.as<const float>()[j]);
    tree.cand_token.as<int32_t>()[j] = full_id(vocab_map, indices.as<const int32_t>()[j]);
    tree.cand_parent.as<int32_t>()[j] = -1;
    tree.frontier.as<int32_t>()[j] = j;
    tree.frontier_parent.as<int32_t>()[j] = 0;
  }
  const int32_t root_row = tree.cycle.as<const int32_t>()[kCycleRootRow];
  write_level_inputs(tree, 1, std::vector<int32_t>(static_cast<size_t>(k), root_row), level_inputs);
}

void draft_tree_expand(DraftTreeState& tree, int level, const Tensor& values, const Tensor& indices,
                       const Tensor& vocab_map, DraftLevelInputs& level_inputs) {
  const int k = tree.top_k;
  const int32_t first = k + (level - 1) * k * k;  // candidate index of this expansion's first child
  float* score = tree.cand_score.as<float>();
  int32_t* frontier = tree.frontier.as<int32_t>();
  for (int f = 0; f < k; ++f) {
    const int32_t parent = frontier[(level - 1) * k + f];
    for (int j = 0; j < k; ++j) {
      const int32_t c = first + f * k + j;
      score[c] = sanitize(score[parent] + values.as<const float>()[f * k + j]);  // fp32, as the reference sums
      tree.cand_token.as<int32_t>()[c] = full_id(vocab_map, indices.as<const int32_t>()[f * k + j]);
      tree.cand_parent.as<int32_t>()[c] = parent;
    }
  }
  std::vector<int32_t> order(static_cast<size_t>(k) * k);
  std::iota(order.begin(), order.end(), first);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int32_t a, int32_t b) { return ranks_before(score, a, b); });
  std::vector<int32_t> parent_slots(static_cast<size_t>(k));
  for (int r = 0; r < k; ++r) {
    frontier[level * k + r] = order[static_cast<size_t>(r)];
    parent_slots[static_cast<size_t>(r)] = (order[static_cast<size_t>(r)] - first) / k;
    tree.frontier_parent.as<int32_t>()[level * k + r] = parent_slots[static_cast<size_t>(r)];
  }
  if (level + 1 < tree.depth) write_level_inputs(tree, level + 1, parent_slots, level_inputs);
}

void draft_tree_select(DraftTreeState& tree, VerifyInputs& verify) {
  const int64_t C = tree.candidates();
  const int n = tree.size;
  const float* score = tree.cand_score.as<const float>();
  std::vector<int32_t> order(static_cast<size_t>(C));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + (n - 1), order.end(),
                    [&](int32_t a, int32_t b) { return ranks_before(score, a, b); });
  order.resize(static_cast<size_t>(n - 1));
  std::sort(order.begin(), order.end());  // level order: parents first

  const int32_t* cycle = tree.cycle.as<const int32_t>();
  const int32_t L = cycle[kCycleCommitted];
  int32_t* cand_node = tree.cand_node.as<int32_t>();
  std::fill(cand_node, cand_node + C, -1);
  int32_t *node_cand = tree.node_cand.as<int32_t>(), *node_token = tree.node_token.as<int32_t>(),
          *node_parent = tree.node_parent.as<int32_t>(), *node_depth = tree.node_depth.as<int32_t>();
  float* node_score = tree.node_score.as<float>();
  node_cand[0] = -1;
  node_token[0] = cycle[kCycleRoot];
  node_parent[0] = -1;
  node_depth[0] = 0;
  node_score[0] = 0.0f;
  for (int i = 1; i < n; ++i) {
    const int32_t c = order[static_cast<size_t>(i - 1)];
    const int32_t parent_cand = tree.cand_parent.as<const int32_t>()[c];
    const int32_t parent = parent_cand < 0 ? 0 : cand_node[parent_cand];
    SPECULA_CHECK(parent >= 0, "draft tree: candidate ", c, " was chosen without its parent (internal error)");
    cand_node[c] = i;
    node_cand[i] = c;
    node_token[i] = tree.cand_token.as<const int32_t>()[c];
    node_parent[i] = parent;
    node_depth[i] = node_depth[parent] + 1;
    node_score[i] = score[c];
  }
  const int64_t w = words(n);
  auto* mask = verify.mask.as<int32_t>();
  std::fill(mask, mask + n * w, 0);
  for (int i = 0; i < n; ++i) {
    verify.tokens.as<int32_t>()[i] = node_token[i];
    verify.positions.as<int32_t>()[i] = L + node_depth[i];
    verify.slots.as<int32_t>()[i] = L + i;
    for (int32_t a = i; a >= 0; a = node_parent[a]) mask[i * w + a / 32] |= static_cast<int32_t>(1u << (a % 32));
  }
}

void draft_tree_accept(DraftTreeState& tree, const Tensor& target_tokens, CatchUpInputs& catch_up) {
  const int n = tree.size, depth = tree.depth;
  const int32_t* x = target_tokens.as<const int32_t>();
  const int32_t *node_token = tree.node_token.as<const int32_t>(), *node_parent = tree.node_parent.as<const int32_t>();
  int32_t* record = tree.record.as<int32_t>();
  int32_t* path = record + DraftTreeState::record_path(depth);
  int32_t m = 0, u = 0;
  for (;;) {
    int32_t next = -1;
    for (int c = u + 1; c < n && next < 0; ++c)
      if (node_parent[c] == u && node_token[c] == x[u]) next = c;
    if (next < 0 || m == depth) break;  // m == depth cannot have children; the check keeps the record in bounds
    record[1 + m] = x[u];
    path[m++] = next;
    u = next;
  }
  record[0] = m;
  record[1 + m] = x[u];

  int32_t* cycle = tree.cycle.as<int32_t>();
  const int32_t L = cycle[kCycleCommitted];
  for (int i = 0; i <= depth; ++i) {
    const bool valid = i <= m;
    catch_up.tokens.as<int32_t>()[i] = record[1 + (valid ? i : m)];
    catch_up.positions.as<int32_t>()[i] = L + i;
    catch_up.slots.as<int32_t>()[i] = L + i;
    // Row i pairs the target's feature at the root (i = 0) or accepted node i with the next token;
    // rows past m repeat the last one (their results are never used).
    catch_up.gather.as<int32_t>()[i] = valid ? (i == 0 ? 0 : path[i - 1]) : (m == 0 ? 0 : path[m - 1]);
  }
  for (int i = 0; i < depth; ++i) {
    const int j = i < m ? i : std::max(m - 1, 0);
    catch_up.kv_src.as<int32_t>()[i] = L + (m == 0 ? 0 : path[j]);
    catch_up.kv_dst.as<int32_t>()[i] = L + 1 + j;
  }
  catch_up.kv_count.as<int32_t>()[0] = m;
  cycle[kCycleCommitted] = L + m + 1;
  cycle[kCycleRoot] = record[1 + m];
  cycle[kCycleRootRow] = m;
}

void draft_tree_walk_begin(DraftTreeState& tree) {
  tree.walk.as<int32_t>()[kWalkNode] = 0;
  tree.walk.as<int32_t>()[kWalkActive] = 1;
}

void draft_tree_walk_step(DraftTreeState& tree, const Tensor& drawn, Tensor& target_tokens) {
  int32_t* walk = tree.walk.as<int32_t>();
  if (walk[kWalkActive] == 0) return;
  const int32_t u = walk[kWalkNode], x = drawn.as<const int32_t>()[0];
  target_tokens.as<int32_t>()[u] = x;
  const int32_t *node_token = tree.node_token.as<const int32_t>(), *node_parent = tree.node_parent.as<const int32_t>();
  for (int c = u + 1; c < tree.size; ++c)
    if (node_parent[c] == u && node_token[c] == x) {
      walk[kWalkNode] = c;
      return;
    }
  walk[kWalkActive] = 0;
}

}  // namespace specula::ops::cpu
