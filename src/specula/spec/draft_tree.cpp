// EAGLE-2 tree growth and selection (see draft_tree.h).
#include "specula/spec/draft_tree.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "specula/core/error.h"

namespace specula::spec {

namespace {
constexpr int kMaxTopK = 64;
constexpr int kMaxDepth = 32;

// Indices of the best `k` of `scores` (value descending, lower index first on ties), in rank order.
std::vector<int32_t> best_indices(std::span<const float> scores, size_t k) {
  std::vector<int32_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  k = std::min(k, order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(), [&](int32_t a, int32_t b) {
    return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)] ||
           (scores[static_cast<size_t>(a)] == scores[static_cast<size_t>(b)] && a < b);
  });
  order.resize(k);
  return order;
}

int words(int64_t width) { return static_cast<int>((width + 31) / 32); }
void set_bit(std::vector<int32_t>& row, int64_t column) {
  row[static_cast<size_t>(column / 32)] |= static_cast<int32_t>(1u << (column % 32));
}
}  // namespace

void DraftTreeParams::validate() const {
  SPECULA_CHECK(top_k >= 1 && top_k <= kMaxTopK, "--tree-topk must be from 1 to ", kMaxTopK, ", got ", top_k);
  SPECULA_CHECK(depth >= 1 && depth <= kMaxDepth, "--tree-depth must be from 1 to ", kMaxDepth, ", got ", depth);
  const int64_t most = 1 + static_cast<int64_t>(top_k) + static_cast<int64_t>(depth - 1) * top_k * top_k;
  SPECULA_CHECK(size >= 2 && size <= std::min<int64_t>(most, kMaxTreeSize), "--tree-size must be from 2 to ",
                std::min<int64_t>(most, kMaxTreeSize), " (root + top_k + (depth - 1) top_k^2 candidates, at most ",
                kMaxTreeSize, ") for --tree-topk ", top_k, " and --tree-depth ", depth, ", got ", size);
  SPECULA_CHECK(candidates() <= kMaxCandidates, "--tree-topk ", top_k, " and --tree-depth ", depth, " give ",
                candidates(), " draft candidates (top_k + (depth - 1) top_k^2); at most ", kMaxCandidates,
                " are supported (the device selection sorts them in shared memory)");
}

std::vector<int32_t> DraftTree::positions(int32_t root_position) const {
  std::vector<int32_t> out(depths.size());
  for (size_t i = 0; i < depths.size(); ++i) out[i] = root_position + depths[i];
  return out;
}

std::vector<int32_t> DraftTree::mask_bits() const {
  const int64_t n = size();
  const int w = words(n);
  std::vector<int32_t> bits(static_cast<size_t>(n * w), 0);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t> row(static_cast<size_t>(w), 0);
    for (int32_t a = static_cast<int32_t>(i); a >= 0; a = parents[static_cast<size_t>(a)]) set_bit(row, a);
    std::copy(row.begin(), row.end(), bits.begin() + i * w);
  }
  return bits;
}

std::vector<int32_t> DraftTree::children(int32_t i) const {
  std::vector<int32_t> out;
  for (size_t c = static_cast<size_t>(i) + 1; c < parents.size(); ++c)
    if (parents[c] == i) out.push_back(static_cast<int32_t>(c));
  return out;
}

TreeBuilder::TreeBuilder(const DraftTreeParams& params) : params_(params) { params_.validate(); }

void TreeBuilder::begin(int32_t root_token, std::span<const ScoredToken> root_top_k) {
  const int k = params_.top_k;
  SPECULA_CHECK(static_cast<int>(root_top_k.size()) == k, "draft tree: ", root_top_k.size(), " root candidates, need ", k);
  root_ = root_token;
  level_ = 1;
  candidates_.clear();
  candidates_.reserve(static_cast<size_t>(params_.candidates()));
  frontier_.clear();
  frontier_tokens_.clear();
  frontier_parent_slot_.assign(static_cast<size_t>(k), 0);
  frontier_history_.clear();
  for (int j = 0; j < k; ++j) {
    candidates_.push_back({root_top_k[static_cast<size_t>(j)].logp, root_top_k[static_cast<size_t>(j)].token, -1, 1});
    frontier_.push_back(j);
    frontier_tokens_.push_back(root_top_k[static_cast<size_t>(j)].token);
  }
  frontier_history_.push_back(frontier_);
}

std::vector<int32_t> TreeBuilder::frontier_mask_bits() const {
  const int k = params_.top_k;
  const int64_t width = static_cast<int64_t>(level_) * k;
  const int w = words(width);
  std::vector<int32_t> bits(static_cast<size_t>(k * w), 0);
  for (int f = 0; f < k; ++f) {
    std::vector<int32_t> row(static_cast<size_t>(w), 0);
    // Walk up: the node's slot in each earlier frontier is where its ancestor sits.
    int32_t cand = frontier_[static_cast<size_t>(f)];
    for (int lvl = level_; lvl >= 1; --lvl) {
      const auto& hist = frontier_history_[static_cast<size_t>(lvl - 1)];
      const auto slot = std::find(hist.begin(), hist.end(), cand) - hist.begin();
      SPECULA_CHECK(slot < k, "draft tree: a frontier ancestor is missing (internal error)");
      set_bit(row, static_cast<int64_t>(lvl - 1) * k + slot);
      cand = candidates_[static_cast<size_t>(cand)].parent;
    }
    std::copy(row.begin(), row.end(), bits.begin() + static_cast<std::ptrdiff_t>(f) * w);
  }
  return bits;
}

void TreeBuilder::expand(std::span<const ScoredToken> rows) {
  const int k = params_.top_k;
  SPECULA_CHECK(level_ >= 1 && level_ < params_.depth, "draft tree: expand() after the last level");
  SPECULA_CHECK(static_cast<int>(rows.size()) == k * k, "draft tree: ", rows.size(), " expansion rows, need ", k * k);
  const int32_t first = static_cast<int32_t>(candidates_.size());
  std::vector<float> scores(static_cast<size_t>(k * k));
  for (int f = 0; f < k; ++f) {
    const Candidate& parent = candidates_[static_cast<size_t>(frontier_[static_cast<size_t>(f)])];
    for (int j = 0; j < k; ++j) {
      const ScoredToken& c = rows[static_cast<size_t>(f * k + j)];
      const float score = parent.score + c.logp;  // fp32, as the reference sums
      scores[static_cast<size_t>(f * k + j)] = score;
      candidates_.push_back({score, c.token, frontier_[static_cast<size_t>(f)], level_ + 1});
    }
  }
  const std::vector<int32_t> best = best_indices(scores, static_cast<size_t>(k));
  frontier_.clear();
  frontier_tokens_.clear();
  frontier_parent_slot_.clear();
  for (int32_t local : best) {
    frontier_.push_back(first + local);
    frontier_tokens_.push_back(candidates_[static_cast<size_t>(first + local)].token);
    frontier_parent_slot_.push_back(local / k);
  }
  ++level_;
  frontier_history_.push_back(frontier_);
}

DraftTree TreeBuilder::finish() const {
  SPECULA_CHECK(root_ >= 0, "draft tree: finish() before begin()");
  std::vector<float> scores(candidates_.size());
  for (size_t i = 0; i < candidates_.size(); ++i) scores[i] = candidates_[i].score;
  std::vector<int32_t> chosen = best_indices(scores, static_cast<size_t>(params_.size - 1));
  std::sort(chosen.begin(), chosen.end());
  std::vector<int32_t> node_of(candidates_.size(), -1);
  DraftTree tree;
  tree.tokens.push_back(root_);
  tree.parents.push_back(-1);
  tree.depths.push_back(0);
  tree.scores.push_back(0.0f);
  for (int32_t c : chosen) {
    const Candidate& cand = candidates_[static_cast<size_t>(c)];
    const int32_t parent = cand.parent < 0 ? 0 : node_of[static_cast<size_t>(cand.parent)];
    SPECULA_CHECK(parent >= 0, "draft tree: candidate ", c, " was chosen without its parent (internal error)");
    node_of[static_cast<size_t>(c)] = static_cast<int32_t>(tree.tokens.size());
    tree.tokens.push_back(cand.token);
    tree.parents.push_back(parent);
    tree.depths.push_back(cand.depth);
    tree.scores.push_back(cand.score);
  }
  return tree;
}

}  // namespace specula::spec
