// Properties of the CPU reference ops that the CUDA tests take for granted: the fused forms are
// exactly their unfused compositions (Accumulate = Overwrite + what out held; rms_norm_linear =
// rms_norm then linear), and their errors name the problem. Runs everywhere.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/ops/ops.h"

using namespace specula;

namespace {

struct CpuOps : ::testing::Test {
  test::CpuTestContext cpu = test::make_cpu_context(3);
  ops::OpContext& ctx = cpu.ops;
};

std::vector<float> random_values(size_t n, uint64_t counter) { return test::random_floats(n, test::test_seed(counter)); }
Tensor view(std::vector<float>& v, std::initializer_list<int64_t> shape) { return test::cpu_tensor(v, shape); }

TEST_F(CpuOps, LinearAccumulateIsOverwritePlusPrior) {
  const int64_t tokens = 3, n = 19, k = 37;
  std::vector<float> w = random_values(n * k, 1), x = random_values(tokens * k, 2), bias = random_values(n, 3);
  std::vector<float> prior = random_values(tokens * n, 4), product(prior.size()), accumulated = prior;
  Tensor product_t = view(product, {tokens, n}), accumulated_t = view(accumulated, {tokens, n});
  ops::linear(ctx, view(x, {tokens, k}), view(w, {n, k}), view(bias, {n}), product_t, 0.5f);
  ops::linear(ctx, view(x, {tokens, k}), view(w, {n, k}), view(bias, {n}), accumulated_t, 0.5f,
              ops::OutputMode::Accumulate);
  for (size_t i = 0; i < prior.size(); ++i) EXPECT_EQ(accumulated[i], prior[i] + product[i]) << "element " << i;
}

TEST_F(CpuOps, SwigluAccumulateIsOverwritePlusPrior) {
  const int64_t tokens = 2, n = 11, inter = 23;
  std::vector<float> w = random_values(n * inter, 5), gu = random_values(tokens * 2 * inter, 6);
  std::vector<float> prior = random_values(tokens * n, 7), product(prior.size()), accumulated = prior;
  Tensor product_t = view(product, {tokens, n}), accumulated_t = view(accumulated, {tokens, n});
  ops::linear_swiglu(ctx, view(gu, {tokens, 2 * inter}), view(w, {n, inter}), product_t, 0.25f);
  ops::linear_swiglu(ctx, view(gu, {tokens, 2 * inter}), view(w, {n, inter}), accumulated_t, 0.25f,
                     ops::OutputMode::Accumulate);
  for (size_t i = 0; i < prior.size(); ++i) EXPECT_EQ(accumulated[i], prior[i] + product[i]) << "element " << i;
}

TEST_F(CpuOps, RmsNormLinearIsNormThenLinear) {
  const int64_t tokens = 4, n = 13, k = 29;
  std::vector<float> x = random_values(tokens * k, 8), gamma = random_values(k, 9), w = random_values(n * k, 10);
  std::vector<float> bias = random_values(n, 11);
  std::vector<float> normed(tokens * k), fused(tokens * n), normed2(tokens * k), unfused(tokens * n);
  Tensor normed_t = view(normed, {tokens, k}), fused_t = view(fused, {tokens, n});
  ops::rms_norm_linear(ctx, view(x, {tokens, k}), view(gamma, {k}), 1e-6f, view(w, {n, k}), view(bias, {n}), normed_t,
                       fused_t);
  Tensor normed2_t = view(normed2, {tokens, k}), unfused_t = view(unfused, {tokens, n});
  ops::rms_norm(ctx, view(x, {tokens, k}), view(gamma, {k}), 1e-6f, normed2_t);
  ops::linear(ctx, normed2_t, view(w, {n, k}), view(bias, {n}), unfused_t);
  EXPECT_EQ(fused, unfused);
}

TEST_F(CpuOps, RmsNormLinearNamesMismatchedShapes) {
  std::vector<float> x(2 * 8), gamma(7), w(5 * 8), normed(2 * 8), out(2 * 5);
  Tensor normed_t = view(normed, {2, 8}), out_t = view(out, {2, 5});
  try {
    ops::rms_norm_linear(ctx, view(x, {2, 8}), view(gamma, {7}), 1e-6f, view(w, {5, 8}), Tensor(), normed_t, out_t);
    FAIL() << "a norm weight of the wrong length was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("norm_weight"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {

// Operands of one qkv_attention call: T tokens, 8 query heads over 2 KV heads of 16 dims.
struct QkvAttentionOperands {
  static constexpr int64_t kTokens = 3, kHeads = 8, kKv = 2, kDim = 16, kCapacity = 11;
  std::vector<float> qkv, inv_freq, k_cache, v_cache, q, out;
  std::vector<int32_t> positions = {4, 5, 5}, slots = {4, 5, 7};
  explicit QkvAttentionOperands(uint64_t seed)
      : qkv(random_values(kTokens * (kHeads + 2 * kKv) * kDim, seed)),
        inv_freq(random_values(kDim / 2, seed + 1)),
        k_cache(random_values(kKv * kCapacity * kDim, seed + 2)),
        v_cache(random_values(kKv * kCapacity * kDim, seed + 3)),
        q(kTokens * kHeads * kDim),
        out(kTokens * kHeads * kDim) {}
  ops::RopeParams rope() { return {view(inv_freq, {kDim / 2}), 1.0f}; }
};

}  // namespace

TEST_F(CpuOps, QkvAttentionIsRopeStoreThenAttention) {
  QkvAttentionOperands fused(12), parts(12);
  const int64_t T = QkvAttentionOperands::kTokens, H = QkvAttentionOperands::kHeads, KV = QkvAttentionOperands::kKv,
                D = QkvAttentionOperands::kDim, C = QkvAttentionOperands::kCapacity;
  Tensor fq = view(fused.q, {T, H, D}), fk = view(fused.k_cache, {KV, C, D}), fv = view(fused.v_cache, {KV, C, D}),
         fo = view(fused.out, {T, H * D});
  ops::qkv_attention(ctx, view(fused.qkv, {T, (H + 2 * KV) * D}), Tensor(), Tensor(), 1e-6f, fused.rope(),
                     test::cpu_tensor(fused.positions, {T}), test::cpu_tensor(fused.slots, {T}), 0.25f, fq, fk, fv, fo);
  Tensor pq = view(parts.q, {T, H, D}), pk = view(parts.k_cache, {KV, C, D}), pv = view(parts.v_cache, {KV, C, D}),
         po = view(parts.out, {T, H * D});
  ops::qkv_rope_store(ctx, view(parts.qkv, {T, (H + 2 * KV) * D}), Tensor(), Tensor(), 1e-6f, parts.rope(),
                      test::cpu_tensor(parts.positions, {T}), test::cpu_tensor(parts.slots, {T}), pq, pk, pv);
  ops::attention(ctx, pq, pk, pv, test::cpu_tensor(parts.slots, {T}), 0.25f, po);
  EXPECT_EQ(fused.q, parts.q);
  EXPECT_EQ(fused.k_cache, parts.k_cache);
  EXPECT_EQ(fused.v_cache, parts.v_cache);
  EXPECT_EQ(fused.out, parts.out);
}

TEST_F(CpuOps, QkvAttentionNamesAMismatchedOutput) {
  QkvAttentionOperands a(13);
  const int64_t T = QkvAttentionOperands::kTokens, H = QkvAttentionOperands::kHeads, KV = QkvAttentionOperands::kKv,
                D = QkvAttentionOperands::kDim, C = QkvAttentionOperands::kCapacity;
  Tensor q = view(a.q, {T, H, D}), k = view(a.k_cache, {KV, C, D}), v = view(a.v_cache, {KV, C, D});
  std::vector<float> short_out((T - 1) * H * D);
  Tensor out = view(short_out, {T - 1, H * D});
  try {
    ops::qkv_attention(ctx, view(a.qkv, {T, (H + 2 * KV) * D}), Tensor(), Tensor(), 1e-6f, a.rope(),
                       test::cpu_tensor(a.positions, {T}), test::cpu_tensor(a.slots, {T}), 0.25f, q, k, v, out);
    ADD_FAILURE() << "a two-row output for three tokens was accepted";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("qkv_attention"), std::string::npos) << what;
    EXPECT_NE(what.find("out"), std::string::npos) << what;
  }
}
