// InfLLM-V2 block selection (ops::compress_keys + ops::sparse_select) against an independent
// brute-force reading of the rule in ops/sparse_attention.h: every kernel recomputed from the raw
// keys of the query's own past, every block ranked by a full sort. The op under test caches
// kernels incrementally across calls, splits prompts into chunks and computes tree queries'
// kernels from their ancestors, so agreement on random inputs over many calls checks exactly the
// bookkeeping the brute force does not have. Plus properties read straight from the reference
// (forced and excluded blocks, the window, no future block, a key aligned with the query wins)
// and the block-sparse attention it feeds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/ops/ops.h"
#include "specula/ops/sparse_attention.h"

using namespace specula;
using ops::SparseSelectParams;
using ops::SparseVariant;

namespace {

// Keys of positions: key(h, x) -> pointer to hd floats.
using KeyAt = std::function<const float*(int64_t h, int64_t x)>;

// The rule, written from the reference without the op's structure: for query heads q_g (g < G)
// of KV head h at position p.
std::vector<int32_t> brute_force_blocks(const std::vector<const float*>& q_heads, int64_t hd, int64_t h, int64_t p,
                                        const KeyAt& key, const SparseSelectParams& s) {
  auto kernel_keys = [&](int64_t size, int64_t stride) {
    std::vector<std::vector<float>> out;
    for (int64_t i = 0; stride * i + size - 1 <= p; ++i) {
      std::vector<float> mean(static_cast<size_t>(hd), 0.0f);
      for (int64_t x = stride * i; x < stride * i + size; ++x)
        for (int64_t d = 0; d < hd; ++d) mean[static_cast<size_t>(d)] += key(h, x)[d];
      for (float& m : mean) m *= 1.0f / static_cast<float>(size);
      out.push_back(mean);
    }
    return out;
  };
  auto logits = [&](const std::vector<std::vector<float>>& kernels, const float* qv) {
    std::vector<float> out;
    for (const auto& k : kernels) {
      float dot = 0.0f;
      for (int64_t d = 0; d < hd; ++d) dot += qv[d] * k[static_cast<size_t>(d)];
      out.push_back(s.scale * dot);
    }
    return out;
  };
  auto log_sum_exp = [](const std::vector<float>& v) {
    float m = -INFINITY, sum = 0.0f;
    for (float x : v) m = std::max(m, x);
    for (float x : v) sum += std::exp(x - m);
    return m + std::log(sum);
  };
  const auto c1 = kernel_keys(s.kernel_size, s.kernel_stride);
  const auto c2 = s.variant == SparseVariant::MiniCPM41 ? kernel_keys(4 * s.kernel_size, 4 * s.kernel_stride)
                                                         : std::vector<std::vector<float>>{};
  std::vector<float> score(c1.size(), 0.0f);
  for (const float* qv : q_heads) {
    const std::vector<float> l1 = logits(c1, qv);
    const std::vector<float>& for_lse = s.variant == SparseVariant::MiniCPM41 ? logits(c2, qv) : l1;
    if (for_lse.empty()) continue;
    const float lse = log_sum_exp(for_lse);
    for (size_t i = 0; i < c1.size(); ++i) score[i] += std::exp(l1[i] - lse);
  }
  const int64_t q_blk = p / s.block_size, r = s.block_size / s.kernel_stride, local = s.local_blocks;
  std::vector<std::pair<float, int64_t>> ranked;
  for (int64_t b = 0; b <= q_blk; ++b) {
    float v = 0.0f;
    bool any = false;
    for (int64_t i = b * r - 1; i <= b * r + r - 1; ++i)
      if (i >= 0 && i < static_cast<int64_t>(c1.size())) v = any ? std::max(v, score[static_cast<size_t>(i)]) : score[static_cast<size_t>(i)], any = true;
    if (s.variant == SparseVariant::MiniCPM41) {
      if (b < s.init_blocks || (b >= q_blk - local && b <= q_blk)) v = INFINITY;
    } else {
      if (b > q_blk - local) v = -INFINITY;
      if (b < s.init_blocks) v = INFINITY;
    }
    ranked.push_back({v, b});
  }
  std::sort(ranked.begin(), ranked.end(),
            [](auto a, auto b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  const int64_t slots = s.variant == SparseVariant::MiniCPM41 ? s.topk + local : s.topk;
  std::vector<int32_t> out;
  for (int64_t i = 0; i < std::min<int64_t>(slots, static_cast<int64_t>(ranked.size())); ++i) {
    const int64_t b = ranked[static_cast<size_t>(i)].second;
    if (s.variant == SparseVariant::MiniCPM4 && b >= q_blk) continue;
    out.push_back(static_cast<int32_t>(b));
  }
  if (s.variant == SparseVariant::MiniCPM4)
    for (int64_t b = std::max<int64_t>(0, q_blk - local + 1); b <= q_blk; ++b) out.push_back(static_cast<int32_t>(b));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<int32_t> listed(const std::vector<int32_t>& blocks, int64_t n_kv_index, int64_t tokens, int64_t t,
                            int64_t width) {
  std::vector<int32_t> out;
  for (int64_t i = 0; i < width; ++i) {
    const int32_t b = blocks[static_cast<size_t>((n_kv_index * tokens + t) * width + i)];
    if (b < 0) break;
    out.push_back(b);
  }
  return out;
}

SparseSelectParams small_params(SparseVariant variant, int64_t hd) {
  SparseSelectParams s;
  s.variant = variant;
  s.kernel_size = 32;
  s.kernel_stride = 16;
  s.block_size = 64;
  s.init_blocks = 1;
  s.local_blocks = 2;
  s.topk = 3;
  s.sparse_from = 0;
  s.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  return s;
}

struct Layer {
  int64_t kv, heads, hd, capacity;
  std::vector<float> k, c1, c2;
  std::vector<int32_t> rows{0};
  ops::CompressedKeys keys(const SparseSelectParams& s) {
    ops::CompressedKeys out;
    out.c1 = test::cpu_tensor(c1, {kv, static_cast<int64_t>(c1.size()) / kv / hd, hd});
    if (s.uses_c2()) out.c2 = test::cpu_tensor(c2, {kv, static_cast<int64_t>(c2.size()) / kv / hd, hd});
    out.rows = test::cpu_tensor(rows, {1});
    return out;
  }
  Layer(int64_t n_kv, int64_t n_heads, int64_t head_dim, int64_t cap, const SparseSelectParams& s, uint64_t seed)
      : kv(n_kv), heads(n_heads), hd(head_dim), capacity(cap),
        k(test::random_floats(static_cast<size_t>(n_kv * cap * head_dim), seed)),
        c1(static_cast<size_t>(n_kv * std::max<int64_t>(1, ops::complete_kernels(cap, s.kernel_size, s.kernel_stride)) * head_dim)),
        c2(static_cast<size_t>(n_kv * std::max<int64_t>(1, ops::complete_kernels(cap, s.c2_kernel_size(), s.c2_kernel_stride())) * head_dim)) {}
};

struct SparseSelect : ::testing::Test {
  test::CpuTestContext cpu = test::make_cpu_context(2);
  ops::OpContext& ctx = cpu.ops;
};

// A prompt in chunks, then single-token decode steps, over one layer whose queries and keys are
// random; every query's lists equal the brute force's (linear calls: row = position).
TEST_F(SparseSelect, LinearCallsMatchTheBruteForceForEveryGroupAndVariant) {
  for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41})
    for (int64_t group : {1, 4, 16})
      for (int64_t chunk : {77, 1000}) {
        const int64_t kv = 2, hd = 16, heads = kv * group, prompt = 611, steps = 70, capacity = prompt + steps + 5;
        SparseSelectParams s = small_params(variant, hd);
        s.topk = group == 4 ? 2 : 3;
        Layer layer(kv, heads, hd, capacity, s, test::test_seed(100 + group + chunk));
        Tensor k_cache = test::cpu_tensor(layer.k, {kv, capacity, hd});
        auto key = [&](int64_t h, int64_t x) { return layer.k.data() + (h * capacity + x) * hd; };
        const int64_t width = s.max_blocks();
        auto check_call = [&](int64_t first, int64_t tokens) {
          std::vector<float> q = test::random_floats(static_cast<size_t>(tokens * heads * hd),
                                                     test::test_seed(7 * first + tokens + group), -3.0f, 3.0f);
          std::vector<int32_t> pos(static_cast<size_t>(tokens)), blocks(static_cast<size_t>(kv * tokens * width));
          for (int64_t t = 0; t < tokens; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(first + t);
          ops::CompressedKeys keys = layer.keys(s);
          Tensor pos_t = test::cpu_tensor(pos, {tokens}), blocks_t = test::cpu_tensor(blocks, {kv, tokens, width});
          ops::compress_keys(ctx, k_cache, pos_t, ops::AttentionMask::causal(), s, keys);
          ops::sparse_select(ctx, test::cpu_tensor(q, {tokens, heads, hd}), k_cache, keys, pos_t, pos_t,
                             ops::AttentionMask::causal(), s, blocks_t);
          for (int64_t t = 0; t < tokens; t += (tokens > 40 ? 13 : 1))
            for (int64_t h = 0; h < kv; ++h) {
              std::vector<const float*> qh;
              for (int64_t g = 0; g < group; ++g) qh.push_back(q.data() + (t * heads + h * group + g) * hd);
              ASSERT_EQ(listed(blocks, h, tokens, t, width), brute_force_blocks(qh, hd, h, first + t, key, s))
                  << "variant " << static_cast<int>(variant) << " group " << group << " chunk " << chunk
                  << " position " << first + t << " kv head " << h;
            }
        };
        for (int64_t b = 0; b < prompt; b += chunk) check_call(b, std::min(chunk, prompt - b));
        for (int64_t i = 0; i < steps; ++i) check_call(prompt + i, 1);
      }
}

// A verification tree at the end of a committed prefix: each node's kernels that reach into the
// tree are built from its own ancestors (the other branches' keys must not leak in).
TEST_F(SparseSelect, TreeQueriesUseTheirAncestorsKeys) {
  for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41}) {
    const int64_t kv = 1, group = 4, heads = 4, hd = 16, committed = 300, nodes = 40, capacity = committed + nodes;
    SparseSelectParams s = small_params(variant, hd);
    Layer layer(kv, heads, hd, capacity, s, test::test_seed(9));
    Tensor k_cache = test::cpu_tensor(layer.k, {kv, capacity, hd});
    std::mt19937 rng(test::test_seed(10));
    // Random tree: node 0 the root at position `committed`, parents before children.
    std::vector<int64_t> parent(nodes, -1), depth(nodes, 0);
    for (int64_t j = 1; j < nodes; ++j) {
      // A 25-node chain, then random branches, so branches run deep enough to complete kernels of their own.
      parent[static_cast<size_t>(j)] = j < 25 ? j - 1 : std::uniform_int_distribution<int64_t>(0, j - 1)(rng);
      depth[static_cast<size_t>(j)] = depth[static_cast<size_t>(parent[static_cast<size_t>(j)])] + 1;
    }
    const int64_t words = ops::AttentionMask::tree_words(nodes);
    std::vector<int32_t> bits(static_cast<size_t>(nodes * words), 0), pos(nodes), slots(nodes);
    for (int64_t j = 0; j < nodes; ++j) {
      pos[static_cast<size_t>(j)] = static_cast<int32_t>(committed + depth[static_cast<size_t>(j)]);
      slots[static_cast<size_t>(j)] = static_cast<int32_t>(committed + j);
      for (int64_t a = j; a >= 0; a = parent[static_cast<size_t>(a)])
        bits[static_cast<size_t>(j * words + a / 32)] |= static_cast<int32_t>(1u << (a % 32));
    }
    // The committed prefix compressed by an earlier linear call.
    {
      std::vector<int32_t> prefix(committed);
      for (int64_t x = 0; x < committed; ++x) prefix[static_cast<size_t>(x)] = static_cast<int32_t>(x);
      ops::CompressedKeys keys = layer.keys(s);
      ops::compress_keys(ctx, k_cache, test::cpu_tensor(prefix, {committed}), ops::AttentionMask::causal(), s, keys);
    }
    std::vector<float> q = test::random_floats(static_cast<size_t>(nodes * heads * hd), test::test_seed(11), -3.0f, 3.0f);
    const int64_t width = s.max_blocks();
    std::vector<int32_t> blocks(static_cast<size_t>(kv * nodes * width));
    Tensor blocks_t = test::cpu_tensor(blocks, {kv, nodes, width});
    const ops::AttentionMask mask = ops::AttentionMask::tree(test::cpu_tensor(bits, {nodes, words}), nodes);
    ops::CompressedKeys keys = layer.keys(s);
    Tensor pos_t = test::cpu_tensor(pos, {nodes}), slots_t = test::cpu_tensor(slots, {nodes});
    ops::compress_keys(ctx, k_cache, slots_t, mask, s, keys);
    EXPECT_EQ(layer.rows[0], committed) << "a tree call compresses the committed prefix only";
    ops::sparse_select(ctx, test::cpu_tensor(q, {nodes, heads, hd}), k_cache, keys, pos_t, slots_t, mask, s, blocks_t);
    int64_t deep = 0;
    for (int64_t j = 0; j < nodes; ++j) {
      // Node j's past: committed rows, then its ancestors' rows by depth.
      std::vector<int64_t> path(static_cast<size_t>(depth[static_cast<size_t>(j)] + 1));
      for (int64_t a = j; a >= 0; a = parent[static_cast<size_t>(a)]) path[static_cast<size_t>(depth[static_cast<size_t>(a)])] = committed + a;
      auto key = [&](int64_t h, int64_t x) {
        const int64_t row = x < committed ? x : path[static_cast<size_t>(x - committed)];
        return layer.k.data() + (h * capacity + row) * hd;
      };
      std::vector<const float*> qh;
      for (int64_t g = 0; g < group; ++g) qh.push_back(q.data() + (j * heads + g) * hd);
      EXPECT_EQ(listed(blocks, 0, nodes, j, width), brute_force_blocks(qh, hd, 0, pos[static_cast<size_t>(j)], key, s))
          << "node " << j << " at depth " << depth[static_cast<size_t>(j)];
      deep = std::max(deep, depth[static_cast<size_t>(j)]);
    }
    // Kernel 17 ends at position 303, 18 at 319, C2 kernel 3 at 319: some nodes must reach past them.
    ASSERT_GE(committed + deep, 319) << "the tree must reach kernels of its own";
  }
}

// Read straight from the reference: with keys that make one old block stand out for the query,
// that block is chosen; forced blocks are always there, future blocks never, and a query below
// sparse_from is marked dense.
TEST_F(SparseSelect, PropertiesOfTheVariants) {
  const int64_t kv = 1, heads = 2, hd = 8, length = 1000, capacity = length;
  for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41}) {
    SparseSelectParams s = small_params(variant, hd);
    s.topk = variant == SparseVariant::MiniCPM41 ? 3 : 2;  // 4.1: 4 forced blocks + 1 chosen
    Layer layer(kv, heads, hd, capacity, s, test::test_seed(21));
    for (float& v : layer.k) v *= 0.01f;
    std::vector<float> q(static_cast<size_t>(heads * hd), 0.0f);
    q[0] = q[hd] = 4.0f;  // both heads look along dimension 0
    const int64_t hot = 5;  // block 5's keys point that way
    for (int64_t x = hot * 64; x < hot * 64 + 64; ++x) layer.k[static_cast<size_t>(x * hd)] = 3.0f;
    Tensor k_cache = test::cpu_tensor(layer.k, {kv, capacity, hd});
    std::vector<int32_t> all(length);
    for (int64_t x = 0; x < length; ++x) all[static_cast<size_t>(x)] = static_cast<int32_t>(x);
    ops::CompressedKeys keys = layer.keys(s);
    ops::compress_keys(ctx, k_cache, test::cpu_tensor(all, {length}), ops::AttentionMask::causal(), s, keys);
    std::vector<int32_t> pos{static_cast<int32_t>(length - 1)}, blocks(static_cast<size_t>(s.max_blocks()));
    Tensor pos_t = test::cpu_tensor(pos, {1}), blocks_t = test::cpu_tensor(blocks, {1, 1, s.max_blocks()});
    ops::sparse_select(ctx, test::cpu_tensor(q, {1, heads, hd}), k_cache, keys, pos_t, pos_t,
                       ops::AttentionMask::causal(), s, blocks_t);
    const std::vector<int32_t> got = listed(blocks, 0, 1, 0, s.max_blocks());
    const int64_t q_blk = (length - 1) / 64;  // 15
    std::vector<int32_t> expected = variant == SparseVariant::MiniCPM41
                                        ? std::vector<int32_t>{0, static_cast<int32_t>(hot), 13, 14, 15}
                                        : std::vector<int32_t>{0, static_cast<int32_t>(hot), 14, 15};
    EXPECT_EQ(got, expected) << "variant " << static_cast<int>(variant) << ", q_blk " << q_blk;
    // Below the switch: dense.
    s.sparse_from = length;
    ops::sparse_select(ctx, test::cpu_tensor(q, {1, heads, hd}), k_cache, keys, pos_t, pos_t,
                       ops::AttentionMask::causal(), s, blocks_t);
    EXPECT_EQ(blocks[0], ops::AttentionMask::kDenseQuery);
  }
}

// Equal scores everywhere (all keys zero): every tie goes to the lower block index, as PyTorch's
// CUDA top-k does in the reference code; another rule would pick other blocks.
TEST_F(SparseSelect, TiesGoToTheLowerBlockIndex) {
  const int64_t kv = 1, heads = 3, hd = 8, length = 1000;
  for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41}) {
    SparseSelectParams s = small_params(variant, hd);
    s.topk = variant == SparseVariant::MiniCPM41 ? 4 : 3;
    Layer layer(kv, heads, hd, length, s, test::test_seed(41));
    std::fill(layer.k.begin(), layer.k.end(), 0.0f);
    Tensor k_cache = test::cpu_tensor(layer.k, {kv, length, hd});
    std::vector<int32_t> pos{static_cast<int32_t>(length - 1)}, blocks(static_cast<size_t>(s.max_blocks()));
    std::vector<float> q = test::random_floats(static_cast<size_t>(heads * hd), test::test_seed(42));
    ops::CompressedKeys keys = layer.keys(s);
    Tensor pos_t = test::cpu_tensor(pos, {1}), blocks_t = test::cpu_tensor(blocks, {1, 1, s.max_blocks()});
    ops::compress_keys(ctx, k_cache, pos_t, ops::AttentionMask::causal(), s, keys);
    ops::sparse_select(ctx, test::cpu_tensor(q, {1, heads, hd}), k_cache, keys, pos_t, pos_t,
                       ops::AttentionMask::causal(), s, blocks_t);
    const std::vector<int32_t> expected = variant == SparseVariant::MiniCPM41 ? std::vector<int32_t>{0, 1, 2, 13, 14, 15}
                                                                              : std::vector<int32_t>{0, 1, 2, 14, 15};
    EXPECT_EQ(listed(blocks, 0, 1, 0, s.max_blocks()), expected) << "variant " << static_cast<int>(variant);
  }
}

// Block-sparse attention equals dense attention over a cache holding only the listed blocks'
// rows (copied by hand), and a dense marker equals plain causal attention.
TEST_F(SparseSelect, BlockListsRestrictAttentionToTheirRows) {
  const int64_t kv = 2, heads = 4, hd = 8, length = 400, B = 64;
  std::vector<float> k = test::random_floats(kv * length * hd, test::test_seed(31)),
                     v = test::random_floats(kv * length * hd, test::test_seed(32)),
                     q = test::random_floats(2 * heads * hd, test::test_seed(33)), out(2 * heads * hd);
  std::vector<int32_t> slots{250, static_cast<int32_t>(length - 1)};
  const int64_t W = 4;
  std::vector<int32_t> blocks{0, 2, 3, -1, /*t1*/ ops::AttentionMask::kDenseQuery, -1, -1, -1,
                              /*h1*/ 1, 3, -1, -1, /*t1*/ 0, 1, 5, 6};
  Tensor out_t = test::cpu_tensor(out, {2, heads * hd});
  ops::attention(ctx, test::cpu_tensor(q, {2, heads, hd}), test::cpu_tensor(k, {kv, length, hd}),
                 test::cpu_tensor(v, {kv, length, hd}), test::cpu_tensor(slots, {2}), 0.4f, out_t,
                 ops::AttentionMask::causal().with_blocks(test::cpu_tensor(blocks, {kv, 2, W}), B));
  for (int64_t t = 0; t < 2; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv);
      std::vector<int64_t> rows;
      for (int64_t r = 0; r <= slots[static_cast<size_t>(t)]; ++r) {
        const int32_t* list = blocks.data() + (g * 2 + t) * W;
        if (ops::block_listed(list, W, r / B)) rows.push_back(r);
      }
      // softmax over those rows by hand
      std::vector<double> w;
      double m = -1e30, sum = 0;
      for (int64_t r : rows) {
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += q[static_cast<size_t>((t * heads + h) * hd + d)] * k[static_cast<size_t>((g * length + r) * hd + d)];
        w.push_back(0.4 * dot);
        m = std::max(m, w.back());
      }
      for (double& x : w) sum += (x = std::exp(x - m));
      for (int64_t d = 0; d < hd; ++d) {
        double o = 0;
        for (size_t i = 0; i < rows.size(); ++i) o += w[i] / sum * v[static_cast<size_t>((g * length + rows[i]) * hd + d)];
        EXPECT_NEAR(out[static_cast<size_t>((t * heads + h) * hd + d)], o, 1e-5) << "t " << t << " h " << h;
      }
      if (t == 1 && g == 0) EXPECT_EQ(static_cast<int64_t>(rows.size()), length) << "the dense marker sees every row";
    }
}

}  // namespace
