// EAGLE-2 dynamic draft trees, the part that is plain data and host logic: the tree handed to
// the target (tokens, parents, depths, positions, cumulative scores, ancestor masks) and the
// builder that grows it level by level from each frontier node's top-k draft log-probabilities.
//
// The rule (EAGLE-2 `topK_genrate`, corrected as in ../shared/reference/eagle-frspec.md s.0/s.7):
//  * level 1 = the top_k tokens of the root's draft distribution; each later level expands the
//    top_k frontier nodes of the level before into top_k children each (top_k^2 candidates),
//    and keeps the top_k of those (by cumulative log-probability) as the next frontier;
//  * `depth` levels in all, so top_k + (depth - 1) * top_k^2 candidates;
//  * the tree is the root plus the best size - 1 candidates by cumulative log-probability
//    (fp32 sums), ties going to the lower candidate index, then ordered by candidate index
//    (level order), so parents come before children. A parent always outranks its child: a
//    log-probability is <= 0, and at equality the parent's index is lower.
// Candidate indices: level-1 candidate j is j; the children of frontier node f of level d >= 2
// are top_k + (d - 2) * top_k^2 + f * top_k + j.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace specula::spec {

struct DraftTreeParams {
  int top_k = 10;  // children per expanded node and frontier width
  int depth = 6;   // draft levels below the root (the most drafted tokens one cycle can accept)
  int size = 60;   // tree nodes including the root
  // Checks the ranges (top_k 1..64, depth 1..32, size 2..1 + top_k + (depth - 1) top_k^2, and
  // at most kMaxTreeSize; at most kMaxCandidates candidates); the message names the CLI flag.
  void validate() const;
  int candidates() const { return top_k + (depth - 1) * top_k * top_k; }
};
inline constexpr int kMaxTreeSize = 1024;
// Candidates of one tree at most (ops::kMaxDraftCandidates, where the device ops are defined).
inline constexpr int kMaxCandidates = 8192;

// One token with its draft log-probability, as a top-k op returns it.
struct ScoredToken {
  float logp;
  int32_t token;
};

struct DraftTree {
  std::vector<int32_t> tokens;   // node 0 is the root (the token the target chose last)
  std::vector<int32_t> parents;  // -1 for the root; parents[i] < i
  std::vector<int32_t> depths;   // 0 for the root
  std::vector<float> scores;     // cumulative draft log-probability; 0 for the root
  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
  // Target positions when the root sits at `root_position`: root_position + depth.
  std::vector<int32_t> positions(int32_t root_position) const;
  // Ancestor-or-self bit rows [size, words(size)] for ops::AttentionMask::tree (bit j of word
  // j / 32, as I32 words).
  std::vector<int32_t> mask_bits() const;
  // Children of node `i` in index order.
  std::vector<int32_t> children(int32_t i) const;
};

// Grows one tree. Usage: begin(root, top-k of the root's draft distribution); then for each
// level d = 2..depth: frontier() names the nodes to run through the draft (their tokens,
// parents among earlier frontiers, and the draft mask), expand(top-k rows of those nodes);
// finally finish() selects and orders the tree.
class TreeBuilder {
 public:
  explicit TreeBuilder(const DraftTreeParams& params);

  void begin(int32_t root_token, std::span<const ScoredToken> root_top_k);
  // The current frontier (top_k nodes of the deepest level so far), in frontier order.
  int level() const { return level_; }
  std::span<const int32_t> frontier_tokens() const { return frontier_tokens_; }
  // For drafting the frontier: row f of the draft mask over the frontier nodes of every level so
  // far (width level * top_k, oldest level first): bits of f's frontier ancestors and itself.
  std::vector<int32_t> frontier_mask_bits() const;
  // Index (0..top_k-1) of each frontier node's parent in the previous frontier (the draft hidden
  // state a node is paired with); level 1 nodes all hang off the root (0).
  std::span<const int32_t> frontier_parent_slots() const { return frontier_parent_slot_; }
  // `rows[f * top_k + j]`: the j-th best token of frontier node f's draft distribution.
  void expand(std::span<const ScoredToken> rows);
  DraftTree finish() const;

 private:
  struct Candidate {
    float score;
    int32_t token;
    int32_t parent;  // candidate index, -1 for a child of the root
    int32_t depth;
  };
  DraftTreeParams params_;
  int level_ = 0;
  int32_t root_ = -1;
  std::vector<Candidate> candidates_;
  std::vector<int32_t> frontier_;               // candidate indices of the current frontier
  std::vector<int32_t> frontier_tokens_;
  std::vector<int32_t> frontier_parent_slot_;
  std::vector<std::vector<int32_t>> frontier_history_;  // frontier candidate indices per level
};

}  // namespace specula::spec
