// The CPU meaning of ops::AttentionMask and ops::kv_gather, checked against independent
// constructions: a tree-masked query must equal causal attention over a cache that holds only
// the rows it may see (gathered by hand), a chain-shaped tree must equal plain causal attention,
// and kv_gather must equal a copy through a second buffer even when moves overlap.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/ops/ops.h"

using namespace specula;

namespace {

struct CpuTreeAttention : ::testing::Test {
  test::CpuTestContext cpu = test::make_cpu_context(3);
  ops::OpContext& ctx = cpu.ops;
};

std::vector<float> random_values(size_t n, uint64_t counter) { return test::random_floats(n, test::test_seed(counter)); }

// Random tree of `nodes` nodes (parent before child) as ancestor-or-self bit rows.
std::vector<int32_t> random_tree_bits(int64_t nodes, int64_t width, std::mt19937& rng, int64_t offset) {
  const int64_t words = ops::AttentionMask::tree_words(width);
  std::vector<int32_t> bits(static_cast<size_t>(nodes * words), 0);
  std::vector<int64_t> parent(static_cast<size_t>(nodes), -1);
  for (int64_t t = 0; t < nodes; ++t) {
    if (t > 0) parent[static_cast<size_t>(t)] = std::uniform_int_distribution<int64_t>(0, t - 1)(rng);
    for (int64_t a = t; a >= 0; a = parent[static_cast<size_t>(a)]) {
      const int64_t col = offset + a;
      bits[static_cast<size_t>(t * words + col / 32)] |= static_cast<int32_t>(1u << (col % 32));
    }
  }
  return bits;
}

TEST_F(CpuTreeAttention, TreeQueryEqualsCausalAttentionOverItsVisibleRows) {
  std::mt19937 rng(test::test_seed(1));
  const int64_t H = 6, KV = 2, D = 8, prefix = 37;
  for (int64_t nodes : {1, 5, 33, 70}) {
    // Draft-level layout too: the mask covers `extra` older tree rows before these queries.
    for (int64_t extra : {0, 9}) {
      const int64_t width = nodes + extra, capacity = prefix + width + 3;
      std::vector<float> k = random_values(KV * capacity * D, 10 + nodes), v = random_values(KV * capacity * D, 20 + nodes),
                         q = random_values(nodes * H * D, 30 + nodes), out(nodes * H * D);
      std::vector<int32_t> slots(static_cast<size_t>(nodes));
      for (int64_t t = 0; t < nodes; ++t) slots[static_cast<size_t>(t)] = static_cast<int32_t>(prefix + extra + t);
      std::vector<int32_t> bits = random_tree_bits(nodes, width, rng, extra);
      // Some older rows are visible to some queries only.
      for (int64_t t = 0; t < nodes; ++t)
        for (int64_t j = 0; j < extra; ++j)
          if (rng() % 2) bits[static_cast<size_t>(t * ops::AttentionMask::tree_words(width) + j / 32)] |= 1 << (j % 32);
      Tensor out_t = test::cpu_tensor(out, {nodes, H * D});
      ops::attention(ctx, test::cpu_tensor(q, {nodes, H, D}), test::cpu_tensor(k, {KV, capacity, D}),
                     test::cpu_tensor(v, {KV, capacity, D}), test::cpu_tensor(slots, {nodes}), 0.3f, out_t,
                     ops::AttentionMask::tree(test::cpu_tensor(bits, {nodes, ops::AttentionMask::tree_words(width)}), width));
      const auto* raw_bits = reinterpret_cast<const uint32_t*>(bits.data());
      for (int64_t t = 0; t < nodes; ++t) {
        // The rows query t may see, copied into a fresh cache; causal attention at its last row.
        std::vector<int64_t> rows;
        for (int64_t r = 0; r < capacity; ++r)
          if (ops::attention_row_visible(slots.data(), nodes, raw_bits, width, t, r)) rows.push_back(r);
        ASSERT_GE(rows.size(), static_cast<size_t>(prefix + 1));
        const int64_t n = static_cast<int64_t>(rows.size());
        std::vector<float> kk(KV * n * D), vv(KV * n * D), qq(q.begin() + t * H * D, q.begin() + (t + 1) * H * D), o(H * D);
        for (int64_t h = 0; h < KV; ++h)
          for (int64_t i = 0; i < n; ++i)
            for (int64_t d = 0; d < D; ++d) {
              kk[(h * n + i) * D + d] = k[(h * capacity + rows[i]) * D + d];
              vv[(h * n + i) * D + d] = v[(h * capacity + rows[i]) * D + d];
            }
        std::vector<int32_t> last = {static_cast<int32_t>(n - 1)};
        Tensor o_t = test::cpu_tensor(o, {1, H * D});
        ops::attention(ctx, test::cpu_tensor(qq, {1, H, D}), test::cpu_tensor(kk, {KV, n, D}),
                       test::cpu_tensor(vv, {KV, n, D}), test::cpu_tensor(last, {1}), 0.3f, o_t);
        for (int64_t i = 0; i < H * D; ++i)
          ASSERT_NEAR(out[t * H * D + i], o[i], 1e-5f) << "nodes " << nodes << " extra " << extra << " query " << t;
      }
    }
  }
}

TEST_F(CpuTreeAttention, ChainTreeEqualsCausal) {
  const int64_t T = 40, H = 4, KV = 4, D = 8, prefix = 11, capacity = prefix + T;
  std::vector<float> k = random_values(KV * capacity * D, 40), v = random_values(KV * capacity * D, 41),
                     q = random_values(T * H * D, 42), a(T * H * D), b(T * H * D);
  std::vector<int32_t> slots(T), bits(T * 2, 0);
  for (int64_t t = 0; t < T; ++t) {
    slots[t] = static_cast<int32_t>(prefix + t);
    for (int64_t j = 0; j <= t; ++j) bits[t * 2 + j / 32] |= static_cast<int32_t>(1u << (j % 32));
  }
  Tensor at = test::cpu_tensor(a, {T, H * D}), bt = test::cpu_tensor(b, {T, H * D});
  Tensor qt = test::cpu_tensor(q, {T, H, D}), kt = test::cpu_tensor(k, {KV, capacity, D}),
         vt = test::cpu_tensor(v, {KV, capacity, D}), st = test::cpu_tensor(slots, {T});
  ops::attention(ctx, qt, kt, vt, st, 0.2f, at);
  ops::attention(ctx, qt, kt, vt, st, 0.2f, bt, ops::AttentionMask::tree(test::cpu_tensor(bits, {T, 2}), T));
  EXPECT_EQ(a, b);
}

TEST_F(CpuTreeAttention, MaskShapeErrorsNameTheMask) {
  const int64_t T = 3, H = 2, KV = 1, D = 4, capacity = 8;
  std::vector<float> k(KV * capacity * D), v(KV * capacity * D), q(T * H * D), o(T * H * D);
  std::vector<int32_t> slots = {5, 6, 7}, bits(T * 2);
  Tensor ot = test::cpu_tensor(o, {T, H * D});
  auto run = [&](int64_t width, std::initializer_list<int64_t> shape) {
    ops::attention(ctx, test::cpu_tensor(q, {T, H, D}), test::cpu_tensor(k, {KV, capacity, D}),
                   test::cpu_tensor(v, {KV, capacity, D}), test::cpu_tensor(slots, {T}), 1.0f, ot,
                   ops::AttentionMask::tree(test::cpu_tensor(bits, shape), width));
  };
  EXPECT_THROW(run(9, {T, 2}), Error);   // wider than the cache
  EXPECT_THROW(run(40, {T, 2}), Error);  // wider than the cache, two words
  try {
    run(3, {2, 3});  // rows != tokens
    FAIL() << "a mask with the wrong row count was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tree_bits"), std::string::npos) << e.what();
  }
}

TEST_F(CpuTreeAttention, KvGatherMovesOverlappingRowsInEveryCache) {
  const int64_t KV = 3, capacity = 30, D = 5, layers = 4;
  std::mt19937 rng(test::test_seed(7));
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::vector<float>> storage;
    std::vector<Tensor> caches;
    for (int64_t i = 0; i < 2 * layers; ++i) storage.push_back(random_values(KV * capacity * D, 100 * trial + i));
    const std::vector<std::vector<float>> before = storage;
    for (auto& s : storage) caches.push_back(test::cpu_tensor(s, {KV, capacity, D}));
    // An accepted path: ascending sources at or after their destinations L, L+1, ...
    const int64_t base = 10, n = 1 + static_cast<int64_t>(rng() % 8);
    std::vector<int32_t> src, dst;
    int32_t next = static_cast<int32_t>(base);
    for (int64_t i = 0; i < n; ++i) {
      next += static_cast<int32_t>(i == 0 ? 0 : 1 + rng() % 3);
      src.push_back(next);
      dst.push_back(static_cast<int32_t>(base + i));
    }
    const int64_t count = static_cast<int64_t>(rng() % (n + 1));
    std::vector<int32_t> count_v = {static_cast<int32_t>(count)};
    ops::kv_gather(ctx, caches, test::cpu_tensor(src, {n}), test::cpu_tensor(dst, {n}), test::cpu_tensor(count_v, {1}));
    for (size_t c = 0; c < storage.size(); ++c) {
      std::vector<float> expected = before[c];
      for (int64_t h = 0; h < KV; ++h)
        for (int64_t i = 0; i < count; ++i)
          for (int64_t d = 0; d < D; ++d)
            expected[(h * capacity + dst[i]) * D + d] = before[c][(h * capacity + src[i]) * D + d];
      ASSERT_EQ(storage[c], expected) << "trial " << trial << " cache " << c;
    }
  }
}

TEST_F(CpuTreeAttention, KvGatherRefusesRowsOutsideTheCache) {
  std::vector<float> cache(2 * 4 * 3);
  std::vector<Tensor> caches = {test::cpu_tensor(cache, {2, 4, 3})};
  std::vector<int32_t> src = {5}, dst = {1}, count = {1};
  EXPECT_THROW(ops::kv_gather(ctx, caches, test::cpu_tensor(src, {1}), test::cpu_tensor(dst, {1}),
                              test::cpu_tensor(count, {1})),
               Error);
}

}  // namespace
