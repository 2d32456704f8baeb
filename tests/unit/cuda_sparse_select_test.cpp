// CUDA InfLLM-V2 block selection (ops::compress_keys + ops::sparse_select) against the CPU
// reference on fresh random inputs: chunked prompts then decode steps over one cache, long
// caches (8K-64K rows) at the MiniCPM4-8B and a GQA-4 shape, a verification tree whose kernels
// reach into the tree, a CUDA graph replayed at other lengths, a workspace too small for one
// launch, odd group sizes and head dims. Every call checks the compressed caches and the rows
// counter exactly as well as every block list.
//
// How block lists are compared. F32 caches and queries: the CUDA kernels compute what the CPU
// does in fp32 (no rounding of the scores), so the lists must be equal; the only allowance is a
// near-tie (the blocks on either side of the cut within 3e-5 relative in a fp64 recomputation),
// which a different fp32 summation order may decide either way, and at most 0.5% of the lists
// may need it. 16-bit caches and queries: the CUDA kernels round the group-summed scores to the
// query dtype before pooling (the upstream kernel stores bf16), so blocks whose scores fall into
// one rounding step tie and go to the lower index, where the CPU (fp32, unrounded) ranks them by
// value; the CPU runs on the same 16-bit values (queries, keys, and the compressed keys the GPU
// stored), and a list may differ from the CPU's only by blocks whose fp64 scores lie within one
// rounding step (2^-7 relative for bf16, 2^-10 for f16) of each other. Each test prints how many
// lists were equal and how many differed by such ties; a wrong block (a real gap, a forced block
// missing, a future block, a bad pad) fails.
//
// The CPU-only test at the end checks the comparison itself against the CPU op (the fp64
// recomputation ranks like the op, a moved block is caught), so it runs in every build.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/ops/ops.h"
#include "specula/ops/sparse_attention.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/sparse_attention.h"
#endif

using namespace specula;
using namespace specula::test;
using ops::SparseSelectParams;
using ops::SparseVariant;

namespace {

// ---------------------------------------------------------------------------------------------
// The rule in fp64, for judging differences

using Kernels = std::vector<std::vector<double>>;

// Kernel keys of one tier complete at position p: below `cached` from `cache` (the compressed keys
// the op reads, [.., hd] of one head), above it the mean of the rows key_row(x) of K.
Kernels query_kernels(int64_t size, int64_t stride, int64_t p, int64_t cached, const float* cache, int64_t hd,
                      const std::function<const float*(int64_t)>& key_row) {
  Kernels out;
  for (int64_t i = 0; stride * i + size - 1 <= p; ++i) {
    std::vector<double> v(static_cast<size_t>(hd), 0.0);
    if (i < cached) {
      for (int64_t d = 0; d < hd; ++d) v[static_cast<size_t>(d)] = cache[i * hd + d];
    } else {
      for (int64_t x = stride * i; x < stride * i + size; ++x)
        for (int64_t d = 0; d < hd; ++d) v[static_cast<size_t>(d)] += key_row(x)[d];
      for (double& e : v) e /= static_cast<double>(size);
    }
    out.push_back(std::move(v));
  }
  return out;
}

// Pooled block scores [0, q_blk] of one query (its G heads at q_group, each hd values), with the
// variant's forced (+inf) and excluded (-inf) blocks.
std::vector<double> reference_pooled(const float* q_group, int64_t group, int64_t hd, int64_t p, const Kernels& c1,
                                     const Kernels& c2, const SparseSelectParams& s) {
  const bool v41 = s.variant == SparseVariant::MiniCPM41;
  std::vector<double> score(c1.size(), 0.0);
  for (int64_t g = 0; g < group; ++g) {
    const float* qv = q_group + g * hd;
    auto logits = [&](const Kernels& ks) {
      std::vector<double> out;
      for (const auto& k : ks) {
        double dot = 0.0;
        for (int64_t d = 0; d < hd; ++d) dot += static_cast<double>(qv[d]) * k[static_cast<size_t>(d)];
        out.push_back(dot * s.scale);
      }
      return out;
    };
    const std::vector<double> l1 = logits(c1);
    std::vector<double> l2;
    if (v41) l2 = logits(c2);
    const std::vector<double>& for_lse = v41 ? l2 : l1;
    if (for_lse.empty()) continue;
    double m = -INFINITY, sum = 0.0;
    for (double x : for_lse) m = std::max(m, x);
    for (double x : for_lse) sum += std::exp(x - m);
    const double lse = m + std::log(sum);
    for (size_t i = 0; i < l1.size(); ++i) score[i] += std::exp(l1[i] - lse);
  }
  const int64_t q_blk = p / s.block_size, r = s.block_size / s.kernel_stride;
  std::vector<double> pooled(static_cast<size_t>(q_blk + 1), 0.0);
  for (int64_t b = 0; b <= q_blk; ++b) {
    double best = -INFINITY;
    for (int64_t i = std::max<int64_t>(0, b * r - 1); i <= b * r + r - 1 && i < static_cast<int64_t>(score.size()); ++i)
      best = std::max(best, score[static_cast<size_t>(i)]);
    double v = best == -INFINITY ? 0.0 : best;
    if (v41) {
      if (b < s.init_blocks || b >= q_blk - s.local_blocks) v = INFINITY;
    } else {
      if (b > q_blk - s.local_blocks) v = -INFINITY;
      if (b < s.init_blocks) v = INFINITY;
    }
    pooled[static_cast<size_t>(b)] = v;
  }
  return pooled;
}

// The attended set the rule gives for pooled scores (ties to the lower index).
std::vector<int32_t> set_from_pooled(const std::vector<double>& pooled, const SparseSelectParams& s) {
  const int64_t q_blk = static_cast<int64_t>(pooled.size()) - 1;
  std::vector<int64_t> order(pooled.size());
  for (size_t b = 0; b < order.size(); ++b) order[b] = static_cast<int64_t>(b);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return pooled[static_cast<size_t>(a)] > pooled[static_cast<size_t>(b)];
  });
  const int64_t k = std::min<int64_t>(s.topk_slots(), q_blk + 1);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < k; ++i) out.push_back(static_cast<int32_t>(order[static_cast<size_t>(i)]));
  if (s.variant == SparseVariant::MiniCPM4)
    for (int64_t b = std::max<int64_t>(0, q_blk - s.local_blocks + 1); b <= q_blk; ++b)
      out.push_back(static_cast<int32_t>(b));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// Tolerance of a tie, relative: what rounding the group-summed scores to `dtype` can merge.
double tie_tolerance(DType dtype) {
  switch (dtype) {
    case DType::BF16:
      return std::ldexp(1.0, -7) * 1.05 + 1e-5;
    case DType::F16:
      return std::ldexp(1.0, -10) * 1.05 + 1e-5;
    default:
      return 3e-5;
  }
}

enum class Verdict { Exact, Tie, Bad };

struct Tally {
  int64_t exact = 0, ties = 0, bad = 0;
  void add(Verdict v) { (v == Verdict::Exact ? exact : v == Verdict::Tie ? ties : bad) += 1; }
  int64_t total() const { return exact + ties + bad; }
};

// Judges the row `got` (width entries as written by the op) against the reference row `want`.
// pooled() gives the fp64 scores of the query's blocks, asked for only when the rows differ.
Verdict judge(const std::vector<int32_t>& got, const std::vector<int32_t>& want,
              const std::function<std::vector<double>()>& pooled, double tol, std::string& why) {
  if (got == want) return Verdict::Exact;
  auto parse = [](const std::vector<int32_t>& row, std::vector<int32_t>& out) {
    size_t i = 0;
    for (; i < row.size() && row[i] >= 0; ++i) {
      if (!out.empty() && row[i] <= out.back()) return false;  // ascending, no repeats
      out.push_back(row[i]);
    }
    for (; i < row.size(); ++i)
      if (row[i] != -1) return false;  // -1 padding only
    return true;
  };
  std::vector<int32_t> g, w;
  if (!parse(got, g) || !parse(want, w)) {
    why = "malformed list (not ascending, a dense marker, or bad padding)";
    return Verdict::Bad;
  }
  if (g.size() != w.size()) {
    why = "list lengths " + std::to_string(g.size()) + " vs " + std::to_string(w.size());
    return Verdict::Bad;
  }
  std::vector<int32_t> diff;
  std::set_symmetric_difference(g.begin(), g.end(), w.begin(), w.end(), std::back_inserter(diff));
  const std::vector<double> p = pooled();
  double lo = INFINITY, hi = -INFINITY;
  for (int32_t b : diff) {
    if (b >= static_cast<int32_t>(p.size()) || !std::isfinite(p[static_cast<size_t>(b)])) {
      why = "block " + std::to_string(b) + " is a future, forced or excluded block";
      return Verdict::Bad;
    }
    lo = std::min(lo, p[static_cast<size_t>(b)]);
    hi = std::max(hi, p[static_cast<size_t>(b)]);
  }
  if (hi - lo <= tol * std::fabs(hi)) return Verdict::Tie;
  why = "differing blocks span scores " + std::to_string(lo) + " .. " + std::to_string(hi) + " (tolerance " +
        std::to_string(tol) + " relative):";
  for (int32_t b : diff)
    why += " " + std::to_string(b) + (std::binary_search(g.begin(), g.end(), b) ? "(got)" : "(want)");
  return Verdict::Bad;
}

SparseSelectParams small_params(SparseVariant variant, int64_t hd) {
  SparseSelectParams s;
  s.variant = variant;
  s.init_blocks = 1;
  s.local_blocks = 2;
  s.topk = 3;
  s.sparse_from = 0;
  s.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  return s;
}

SparseSelectParams real_params(SparseVariant variant, int64_t hd) {
  SparseSelectParams s;  // the MiniCPM4.1 sparse_config: init 1, window 2048 (32 blocks), topk 64
  s.variant = variant;
  s.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  return s;
}

const char* variant_name(SparseVariant v) { return v == SparseVariant::MiniCPM4 ? "MiniCPM4" : "MiniCPM4.1"; }

// Random keys with a per-block offset, so that kernels differ by more than noise and the scores
// spread as real ones do (a few blocks stand out), rounded to `dtype`.
std::vector<float> random_keys(int64_t n_kv, int64_t capacity, int64_t hd, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> k(static_cast<size_t>(n_kv * capacity * hd));
  std::vector<float> offset(static_cast<size_t>(hd));
  for (int64_t h = 0; h < n_kv; ++h)
    for (int64_t x = 0; x < capacity; ++x) {
      if (x % 64 == 0)
        for (float& o : offset) o = u(rng);
      for (int64_t d = 0; d < hd; ++d)
        k[static_cast<size_t>((h * capacity + x) * hd + d)] = round_to(dtype, u(rng) + offset[static_cast<size_t>(d)]);
    }
  return k;
}

// ---------------------------------------------------------------------------------------------
// CPU-side state of one layer: K as the device holds it and the CPU's compressed keys.

struct CpuLayer {
  int64_t kv, group, heads, hd, capacity, cap1, cap2;
  SparseSelectParams s;
  DType dtype;
  std::vector<float> k, c1, c2;
  std::vector<int32_t> rows{0};

  CpuLayer(int64_t n_kv, int64_t group_size, int64_t head_dim, int64_t cap, const SparseSelectParams& params, DType dt,
           uint64_t seed)
      : kv(n_kv),
        group(group_size),
        heads(n_kv * group_size),
        hd(head_dim),
        capacity(cap),
        cap1(std::max<int64_t>(1, ops::complete_kernels(cap, params.kernel_size, params.kernel_stride))),
        cap2(std::max<int64_t>(1, ops::complete_kernels(cap, params.c2_kernel_size(), params.c2_kernel_stride()))),
        s(params),
        dtype(dt),
        k(random_keys(n_kv, cap, head_dim, dt, seed)),
        c1(static_cast<size_t>(n_kv * cap1 * head_dim)),
        c2(static_cast<size_t>(n_kv * cap2 * head_dim)) {}

  Tensor k_tensor() { return cpu_tensor(k, {kv, capacity, hd}); }
  ops::CompressedKeys keys() {
    ops::CompressedKeys out;
    out.c1 = cpu_tensor(c1, {kv, cap1, hd});
    if (s.uses_c2()) out.c2 = cpu_tensor(c2, {kv, cap2, hd});
    out.rows = cpu_tensor(rows, {1});
    return out;
  }
  // The compressed keys as a `dtype` cache holds them (what the GPU's stage 1 reads).
  std::vector<float> stored_c1() const { return round_to(dtype, c1); }
  std::vector<float> stored_c2() const { return round_to(dtype, c2); }
};

// One call's inputs on the host.
struct Call {
  std::vector<int32_t> positions, slots, bits;  // bits empty: causal
  int64_t width = 0;                            // tree mask width
  std::vector<float> q;                         // [T, heads, hd], rounded to the dtype
  int64_t tokens() const { return static_cast<int64_t>(positions.size()); }
};

// A causal call of `tokens` rows from `first`; without queries (with_q false) it only compresses.
Call causal_call(const CpuLayer& L, int64_t first, int64_t tokens, uint64_t seed, bool with_q = true) {
  Call c;
  for (int64_t t = 0; t < tokens; ++t) {
    c.positions.push_back(static_cast<int32_t>(first + t));
    c.slots.push_back(static_cast<int32_t>(first + t));
  }
  if (with_q) c.q = round_to(L.dtype, random_floats(static_cast<size_t>(tokens * L.heads * L.hd), seed, -3.0f, 3.0f));
  return c;
}

// A verification tree of `nodes` nodes at the end of a committed prefix of `committed` rows: a
// chain of `chain` nodes, then branches hanging off random earlier nodes (parents before
// children), so deep nodes complete kernels of their own.
Call tree_call(const CpuLayer& L, int64_t committed, int64_t nodes, int64_t chain, uint64_t seed,
               std::vector<int64_t>& parent, std::vector<int64_t>& depth) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  parent.assign(static_cast<size_t>(nodes), -1);
  depth.assign(static_cast<size_t>(nodes), 0);
  for (int64_t j = 1; j < nodes; ++j) {
    parent[static_cast<size_t>(j)] = j < chain ? j - 1 : std::uniform_int_distribution<int64_t>(0, j - 1)(rng);
    depth[static_cast<size_t>(j)] = depth[static_cast<size_t>(parent[static_cast<size_t>(j)])] + 1;
  }
  Call c;
  c.width = nodes;
  const int64_t words = ops::AttentionMask::tree_words(nodes);
  c.bits.assign(static_cast<size_t>(nodes * words), 0);
  for (int64_t j = 0; j < nodes; ++j) {
    c.positions.push_back(static_cast<int32_t>(committed + depth[static_cast<size_t>(j)]));
    c.slots.push_back(static_cast<int32_t>(committed + j));
    for (int64_t a = j; a >= 0; a = parent[static_cast<size_t>(a)])
      c.bits[static_cast<size_t>(j * words + a / 32)] |= static_cast<int32_t>(1u << (a % 32));
  }
  c.q = round_to(L.dtype, random_floats(static_cast<size_t>(nodes * L.heads * L.hd), seed + 1, -3.0f, 3.0f));
  return c;
}

// fp64 pooled scores of query t of `call` for KV head h, with the compressed keys `c1`/`c2` (as
// the op read them) and, for a tree call, the query's own kernels from its ancestors' keys.
std::vector<double> pooled_for(const CpuLayer& L, const Call& call, const std::vector<float>& c1,
                               const std::vector<float>& c2, int64_t h, int64_t t) {
  const SparseSelectParams& s = L.s;
  const int64_t T = call.tokens(), p = call.positions[static_cast<size_t>(t)];
  const bool tree = !call.bits.empty();
  const int64_t base =
      tree ? call.slots[static_cast<size_t>(T - 1)] - call.width + 1 : call.slots[static_cast<size_t>(T - 1)] + 1;
  std::vector<int64_t> path;  // cache row of each position >= base on the query's path
  if (tree) {
    const int64_t words = ops::AttentionMask::tree_words(call.width);
    path.assign(static_cast<size_t>(std::max<int64_t>(0, p - base + 1)), -1);
    for (int64_t j = 0; j < T; ++j)
      if ((static_cast<uint32_t>(call.bits[static_cast<size_t>(t * words + j / 32)]) >> (j % 32)) & 1u)
        path[static_cast<size_t>(call.positions[static_cast<size_t>(j)] - base)] = base + j;
  }
  auto key_row = [&](int64_t x) {
    const int64_t row = x < base ? x : path[static_cast<size_t>(x - base)];
    return L.k.data() + (h * L.capacity + row) * L.hd;
  };
  const int64_t cached1 = ops::complete_kernels(base, s.kernel_size, s.kernel_stride);
  const int64_t cached2 = ops::complete_kernels(base, s.c2_kernel_size(), s.c2_kernel_stride());
  const Kernels k1 =
      query_kernels(s.kernel_size, s.kernel_stride, p, cached1, c1.data() + h * L.cap1 * L.hd, L.hd, key_row);
  const Kernels k2 = s.uses_c2() ? query_kernels(s.c2_kernel_size(), s.c2_kernel_stride(), p, cached2,
                                                 c2.data() + h * L.cap2 * L.hd, L.hd, key_row)
                                 : Kernels{};
  return reference_pooled(call.q.data() + (t * L.heads + h * L.group) * L.hd, L.group, L.hd, p, k1, k2, s);
}

// The CPU op on `call`: compress_keys on L's state, then sparse_select with the compressed keys
// `select_c1`/`select_c2` (the CPU's own for F32; the GPU's 16-bit copies otherwise).
std::vector<int32_t> cpu_select(ops::OpContext& ctx, CpuLayer& L, Call& call, std::vector<float>& select_c1,
                                std::vector<float>& select_c2) {
  const int64_t T = call.tokens(), width = L.s.max_blocks();
  std::vector<int32_t> blocks(static_cast<size_t>(L.kv * T * width), -777);
  Tensor pos = cpu_tensor(call.positions, {T}), slots = cpu_tensor(call.slots, {T});
  ops::AttentionMask mask = ops::AttentionMask::causal();
  if (!call.bits.empty())
    mask = ops::AttentionMask::tree(cpu_tensor(call.bits, {T, ops::AttentionMask::tree_words(call.width)}), call.width);
  ops::CompressedKeys keys;
  keys.c1 = cpu_tensor(select_c1, {L.kv, L.cap1, L.hd});
  if (L.s.uses_c2()) keys.c2 = cpu_tensor(select_c2, {L.kv, L.cap2, L.hd});
  keys.rows = cpu_tensor(L.rows, {1});
  Tensor out = cpu_tensor(blocks, {L.kv, T, width});
  Tensor k = L.k_tensor();
  ops::sparse_select(ctx, cpu_tensor(call.q, {T, L.heads, L.hd}), k, keys, pos, slots, mask, L.s, out);
  return blocks;
}

void cpu_compress(ops::OpContext& ctx, CpuLayer& L, Call& call) {
  const int64_t T = call.tokens();
  ops::AttentionMask mask = ops::AttentionMask::causal();
  if (!call.bits.empty())
    mask = ops::AttentionMask::tree(cpu_tensor(call.bits, {T, ops::AttentionMask::tree_words(call.width)}), call.width);
  ops::CompressedKeys keys = L.keys();
  Tensor k = L.k_tensor();
  ops::compress_keys(ctx, k, cpu_tensor(call.slots, {T}), mask, L.s, keys);
}

// Judges every list of a call (rows [KV head][token][width]) and reports failures with context.
void judge_call(const CpuLayer& L, const Call& call, const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                const std::vector<float>& c1, const std::vector<float>& c2, Tally& tally, const std::string& what) {
  const int64_t T = call.tokens(), width = L.s.max_blocks();
  const double tol = tie_tolerance(L.dtype);
  for (int64_t h = 0; h < L.kv; ++h)
    for (int64_t t = 0; t < T; ++t) {
      const size_t at = static_cast<size_t>((h * T + t) * width);
      const std::vector<int32_t> g(got.begin() + static_cast<std::ptrdiff_t>(at),
                                   got.begin() + static_cast<std::ptrdiff_t>(at + static_cast<size_t>(width)));
      const std::vector<int32_t> w(want.begin() + static_cast<std::ptrdiff_t>(at),
                                   want.begin() + static_cast<std::ptrdiff_t>(at + static_cast<size_t>(width)));
      std::string why;
      const Verdict v = judge(
          g, w, [&] { return pooled_for(L, call, c1, c2, h, t); }, tol, why);
      tally.add(v);
      if (v == Verdict::Bad) {
        std::string gs, ws;
        for (int32_t b : g) gs += " " + std::to_string(b);
        for (int32_t b : w) ws += " " + std::to_string(b);
        ADD_FAILURE() << what << ": KV head " << h << ", query " << t << " at position "
                      << call.positions[static_cast<size_t>(t)] << ": " << why << "\n  got: " << gs << "\n want:" << ws;
      }
    }
}

// Prints the tally and applies the F32 rule (near-ties at most 0.5% of the lists).
void report(const Tally& tally, DType dtype, const std::string& what) {
  std::printf("  [%s] %lld lists: %lld equal to the CPU's, %lld differ only by %s ties, %lld wrong\n", what.c_str(),
              static_cast<long long>(tally.total()), static_cast<long long>(tally.exact),
              static_cast<long long>(tally.ties), dtype == DType::F32 ? "fp32 near-" : "rounding",
              static_cast<long long>(tally.bad));
  EXPECT_EQ(tally.bad, 0) << what;
  if (dtype == DType::F32)
    EXPECT_LE(tally.ties * 200, std::max<int64_t>(tally.total(), 400)) << what << ": too many near-ties for F32";
}

// ---------------------------------------------------------------------------------------------
// The comparison itself (CPU only): the fp64 recomputation ranks blocks like the CPU op, and a
// list with a block moved is judged wrong.

TEST(SparseSelectComparison, ReferenceScoresRankLikeTheCpuOpAndMovedBlocksAreCaught) {
  CpuTestContext cpu = make_cpu_context(2);
  for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41}) {
    SparseSelectParams s = small_params(variant, 32);
    s.topk = 4;
    CpuLayer L(2, 4, 32, 1500, s, DType::F32, test_seed(1));
    Call prompt = causal_call(L, 0, 1300, test_seed(2));
    cpu_compress(cpu.ops, L, prompt);
    Call call = causal_call(L, 1300, 40, test_seed(3));
    cpu_compress(cpu.ops, L, call);
    const std::vector<int32_t> cpu_lists = cpu_select(cpu.ops, L, call, L.c1, L.c2);
    const int64_t width = s.max_blocks();
    int64_t moved = 0;
    for (int64_t h = 0; h < L.kv; ++h)
      for (int64_t t = 0; t < call.tokens(); ++t) {
        const size_t at = static_cast<size_t>((h * call.tokens() + t) * width);
        std::vector<int32_t> row(cpu_lists.begin() + static_cast<std::ptrdiff_t>(at),
                                 cpu_lists.begin() + static_cast<std::ptrdiff_t>(at + static_cast<size_t>(width)));
        const std::vector<double> pooled = pooled_for(L, call, L.c1, L.c2, h, t);
        // The set the fp64 scores give equals the op's, up to a near-tie.
        std::vector<int32_t> derived = set_from_pooled(pooled, s);
        derived.resize(static_cast<size_t>(width), -1);
        std::string why;
        EXPECT_NE(judge(
                      derived, row, [&] { return pooled; }, tie_tolerance(DType::F32), why),
                  Verdict::Bad)
            << variant_name(variant) << " query " << t << ": " << why;
        EXPECT_EQ(judge(
                      row, row, [&] { return pooled; }, 0.0, why),
                  Verdict::Exact);
        // A clearly worse block (under half the score) in place of the lowest-scored chosen
        // candidate: the judge must call that wrong, even at the bf16 tolerance.
        int32_t worst = -1, best = -1;
        for (int32_t b = 0; b < static_cast<int32_t>(pooled.size()); ++b) {
          if (!std::isfinite(pooled[static_cast<size_t>(b)])) continue;
          const bool listed = std::find(row.begin(), row.end(), b) != row.end();
          if (listed && (worst < 0 || pooled[static_cast<size_t>(b)] < pooled[static_cast<size_t>(worst)])) worst = b;
          if (!listed && (best < 0 || pooled[static_cast<size_t>(b)] > pooled[static_cast<size_t>(best)])) best = b;
        }
        if (worst < 0 || best < 0) continue;
        int32_t far = -1;
        for (int32_t b = 0; b < static_cast<int32_t>(pooled.size()); ++b)
          if (std::isfinite(pooled[static_cast<size_t>(b)]) && std::find(row.begin(), row.end(), b) == row.end() &&
              pooled[static_cast<size_t>(b)] < 0.5 * pooled[static_cast<size_t>(worst)])
            far = b;
        if (far < 0) continue;
        std::vector<int32_t> bad(row.begin(), row.end());
        bad.erase(std::remove(bad.begin(), bad.end(), -1), bad.end());
        std::replace(bad.begin(), bad.end(), worst, far);
        std::sort(bad.begin(), bad.end());
        bad.resize(static_cast<size_t>(width), -1);
        EXPECT_EQ(judge(
                      bad, row, [&] { return pooled; }, tie_tolerance(DType::BF16), why),
                  Verdict::Bad);
        ++moved;
      }
    EXPECT_GT(moved, 10) << "the data must give clear gaps to test the judge";
  }
}

#ifdef SPECULA_WITH_CUDA

// ---------------------------------------------------------------------------------------------
// GPU side

class CudaSparseSelect : public CudaOpsTest {
 protected:
  // The device copy of a CpuLayer: K, the compressed caches (poisoned with NaN, so a kernel read
  // before it was computed shows) and the rows counter.
  struct GpuLayer {
    DeviceTensor k, c1, c2, rows;
    ops::CompressedKeys keys(const SparseSelectParams& s) const {
      ops::CompressedKeys out;
      out.c1 = c1.tensor;
      if (s.uses_c2()) out.c2 = c2.tensor;
      out.rows = rows.tensor;
      return out;
    }
  };

  GpuLayer upload(const CpuLayer& L) {
    GpuLayer g;
    g.k = upload_tensor(L.k, L.dtype, {L.kv, L.capacity, L.hd});
    g.c1 = device_tensor(L.dtype, {L.kv, L.cap1, L.hd});
    g.c2 = device_tensor(L.dtype, {L.kv, L.cap2, L.hd});
    poison(g.c1);
    poison(g.c2);
    g.rows = upload_ints(L.rows, {1});
    return g;
  }

  struct DeviceCall {
    DeviceTensor positions, slots, bits, q, blocks;
    ops::AttentionMask mask;
  };

  DeviceCall upload(const CpuLayer& L, const Call& call) {
    DeviceCall d;
    const int64_t T = call.tokens();
    d.positions = upload_ints(call.positions, {T});
    d.slots = upload_ints(call.slots, {T});
    if (!call.q.empty()) {  // a compress-only call has no queries
      d.q = upload_tensor(call.q, L.dtype, {T, L.heads, L.hd});
      d.blocks = device_tensor(DType::I32, {L.kv, T, L.s.max_blocks()});
      poison(d.blocks);
    }
    d.mask = ops::AttentionMask::causal();
    if (!call.bits.empty()) {
      d.bits = upload_ints(call.bits, {T, ops::AttentionMask::tree_words(call.width)});
      d.mask = ops::AttentionMask::tree(d.bits.tensor, call.width);
    }
    return d;
  }

  // The GPU's compressed keys and rows counter equal the CPU's (rounded to the cache dtype: both
  // sum the same values in the same order in fp32) for every kernel complete within the rows.
  void expect_compressed_equal(const CpuLayer& L, const GpuLayer& g, const std::string& what) {
    const std::vector<int32_t> rows = download_ints(g.rows);
    ASSERT_EQ(rows[0], L.rows[0]) << what << ": rows counter";
    auto check = [&](const DeviceTensor& t, const std::vector<float>& stored, int64_t cap, int64_t size, int64_t stride,
                     const char* tier) {
      const std::vector<float> got = download_f32(t);
      const int64_t n = ops::complete_kernels(L.rows[0], size, stride);
      int64_t wrong = 0;
      for (int64_t h = 0; h < L.kv; ++h)
        for (int64_t i = 0; i < n; ++i)
          for (int64_t d = 0; d < L.hd; ++d) {
            const size_t at = static_cast<size_t>((h * cap + i) * L.hd + d);
            if (!(got[at] == stored[at]) && wrong++ < 5)
              ADD_FAILURE() << what << ": " << tier << " head " << h << " kernel " << i << " dim " << d << ": got "
                            << got[at] << " want " << stored[at];
          }
      EXPECT_EQ(wrong, 0) << what << ": " << tier << " values differ";
    };
    check(g.c1, L.stored_c1(), L.cap1, L.s.kernel_size, L.s.kernel_stride, "C1");
    if (L.s.uses_c2()) check(g.c2, L.stored_c2(), L.cap2, L.s.c2_kernel_size(), L.s.c2_kernel_stride(), "C2");
  }

  // One call on both backends: compress_keys (checked), then, if `select`, sparse_select (every
  // list judged).
  void run_call(CpuLayer& L, GpuLayer& g, Call& call, bool select, Tally& tally, const std::string& what) {
    DeviceCall d = upload(L, call);
    cpu_compress(cpu_.ops, L, call);
    ops::CompressedKeys keys = g.keys(L.s);
    ops::compress_keys(gpu_.ops, g.k.tensor, d.slots.tensor, d.mask, L.s, keys);
    gpu_.sync();
    expect_no_device_errors();
    expect_compressed_equal(L, g, what);
    if (!select) return;
    SPECULA_CHECK(!call.q.empty(), "run_call: a selecting call needs queries");
    // The CPU selects with the compressed keys the GPU stored (the same values for F32).
    std::vector<float> c1 = L.stored_c1(), c2 = L.stored_c2();
    const std::vector<int32_t> want = cpu_select(cpu_.ops, L, call, c1, c2);
    ops::sparse_select(gpu_.ops, d.q.tensor, g.k.tensor, keys, d.positions.tensor, d.slots.tensor, d.mask, L.s,
                       d.blocks.tensor);
    gpu_.sync();
    expect_no_device_errors();
    judge_call(L, call, download_ints(d.blocks), want, c1, c2, tally, what);
  }
};

std::string describe(SparseVariant v, int64_t kv, int64_t group, int64_t hd, DType dt) {
  return std::string(variant_name(v)) + " kv " + std::to_string(kv) + " group " + std::to_string(group) + " hd " +
         std::to_string(hd) + " " + name_of(dt);
}

// A prompt in chunks (odd sizes, one of a single token), then decode steps across kernel and
// block boundaries, over one cache: groups 1, 4, 16, head dims 64 and 128, both variants, F32
// (CUDA-core path) and BF16 (tensor cores).
TEST_F(CudaSparseSelect, ChunkedPromptThenDecodeMatchesTheCpu) {
  for (DType dt : {DType::F32, DType::BF16})
    for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41})
      for (int64_t group : {1, 4, 16})
        for (int64_t hd : {64, 128}) {
          const int64_t kv = 2, capacity = 2700;
          SparseSelectParams s = small_params(variant, hd);
          s.topk = group == 4 ? 5 : 3;
          CpuLayer L(kv, group, hd, capacity, s, dt, seed());
          GpuLayer g = upload(L);
          const std::string what = describe(variant, kv, group, hd, dt);
          Tally tally;
          int64_t first = 0;
          for (int64_t chunk : {700, 1, 500, 1399}) {
            Call call = causal_call(L, first, chunk, seed());
            run_call(L, g, call, true, tally, what + " chunk at " + std::to_string(first));
            first += chunk;
          }
          for (int64_t step = 0; step < 40; ++step, ++first) {
            Call call = causal_call(L, first, 1, seed());
            run_call(L, g, call, true, tally, what + " decode at " + std::to_string(first));
          }
          report(tally, dt, what);
          if (HasFailure()) return;
        }
}

// Long caches (8K to 64K rows) with the released parameters (init 1, 32 local blocks, top 64):
// the prompt compressed in one call, then a 48-token chunk and decode steps, at the MiniCPM4-8B
// shape (2 KV heads of group 16, hd 128) and a GQA-4 shape with hd 64.
TEST_F(CudaSparseSelect, LongCachesMatchTheCpu) {
  struct Case {
    int64_t kv, group, hd, length;
  };
  const Case cases[] = {{2, 16, 128, 8192 + 37}, {2, 16, 128, 65536 - 5}, {4, 4, 64, 20000}};
  for (const Case& c : cases)
    for (DType dt : {DType::F32, DType::BF16})
      for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41}) {
        const SparseSelectParams s = real_params(variant, c.hd);
        CpuLayer L(c.kv, c.group, c.hd, c.length + 8, s, dt, seed());
        GpuLayer g = upload(L);
        const std::string what = describe(variant, c.kv, c.group, c.hd, dt) + " length " + std::to_string(c.length);
        Tally tally;
        const int64_t prompt = c.length - 48 - 3;
        Call fill = causal_call(L, 0, prompt, seed(), false);
        run_call(L, g, fill, false, tally, what + " prompt");
        Call chunk = causal_call(L, prompt, 48, seed());
        run_call(L, g, chunk, true, tally, what + " chunk");
        for (int64_t step = 0; step < 3; ++step) {
          Call call = causal_call(L, prompt + 48 + step, 1, seed());
          run_call(L, g, call, true, tally, what + " decode");
        }
        report(tally, dt, what);
        if (HasFailure()) return;
      }
}

// A verification tree at the end of a committed prefix: a 25-node chain and random branches, so
// nodes complete C1 (and C2) kernels that include tree rows, which each node must build from its
// own ancestors; also over a long prefix with the released parameters.
TEST_F(CudaSparseSelect, TreeQueriesMatchTheCpu) {
  struct Case {
    int64_t committed, nodes, chain;
    bool real;
  };
  const Case cases[] = {{300, 40, 25, false}, {1000 - 7, 64, 40, false}, {9000 + 3, 64, 30, true}};
  for (const Case& c : cases)
    for (DType dt : {DType::F32, DType::BF16})
      for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41})
        for (int64_t group : {4, 16})
          for (int64_t hd : {64, 128}) {
            const int64_t kv = 2;
            const SparseSelectParams s = c.real ? real_params(variant, hd) : small_params(variant, hd);
            CpuLayer L(kv, group, hd, c.committed + c.nodes, s, dt, seed());
            GpuLayer g = upload(L);
            const std::string what = describe(variant, kv, group, hd, dt) + " tree of " + std::to_string(c.nodes) +
                                     " at " + std::to_string(c.committed);
            Tally tally;
            Call prefix = causal_call(L, 0, c.committed, seed(), false);
            run_call(L, g, prefix, false, tally, what + " prefix");
            std::vector<int64_t> parent, depth;
            Call tree = tree_call(L, c.committed, c.nodes, c.chain, seed(), parent, depth);
            run_call(L, g, tree, true, tally, what);
            EXPECT_EQ(L.rows[0], c.committed) << "a tree call compresses the committed prefix only";
            const int64_t deepest = *std::max_element(depth.begin(), depth.end());
            ASSERT_GE(ops::complete_kernels(c.committed + deepest + 1, s.kernel_size, s.kernel_stride),
                      ops::complete_kernels(c.committed, s.kernel_size, s.kernel_stride) + 1)
                << "the tree must reach kernels of its own";
            report(tally, dt, what);
            if (HasFailure()) return;
          }
}

// A decode-shaped call (compress_keys + sparse_select of one token) captured once and replayed
// at three cache lengths, the position, slot and query changed in device memory between replays
// (the second replay catches up 6000 rows of compression, the third goes back to a shorter cache).
TEST_F(CudaSparseSelect, GraphReplaysAtOtherLengths) {
  for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41}) {
    const int64_t kv = 2, group = 16, hd = 128, capacity = 10000;
    const DType dt = DType::BF16;
    SparseSelectParams s = real_params(variant, hd);
    s.topk = 16;
    s.local_blocks = 4;
    CpuLayer L(kv, group, hd, capacity, s, dt, seed());
    GpuLayer g = upload(L);
    const std::string what = describe(variant, kv, group, hd, dt) + " graph";
    Tally tally;
    Call prompt = causal_call(L, 0, 2999, seed(), false);
    run_call(L, g, prompt, false, tally, what + " prompt");

    Call call = causal_call(L, 2999, 1, seed());
    DeviceCall d = upload(L, call);
    ops::CompressedKeys keys = g.keys(s);
    const auto stream = static_cast<cudaStream_t>(gpu_.cuda->stream());
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    SPECULA_TEST_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    ops::compress_keys(gpu_.ops, g.k.tensor, d.slots.tensor, d.mask, s, keys);
    ops::sparse_select(gpu_.ops, d.q.tensor, g.k.tensor, keys, d.positions.tensor, d.slots.tensor, d.mask, s,
                       d.blocks.tensor);
    SPECULA_TEST_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    SPECULA_TEST_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int64_t length : {3000, 9000, 5000}) {
      call = causal_call(L, length - 1, 1, seed());
      d.positions.buffer.upload(call.positions, d.positions.offset);
      d.slots.buffer.upload(call.slots, d.slots.offset);
      d.q.buffer.upload(encode(call.q, dt), d.q.offset);
      poison(d.blocks);
      SPECULA_TEST_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      gpu_.sync();
      expect_no_device_errors();
      cpu_compress(cpu_.ops, L, call);
      expect_compressed_equal(L, g, what + " replay at " + std::to_string(length));
      std::vector<float> c1 = L.stored_c1(), c2 = L.stored_c2();
      const std::vector<int32_t> want = cpu_select(cpu_.ops, L, call, c1, c2);
      judge_call(L, call, download_ints(d.blocks), want, c1, c2, tally, what + " replay at " + std::to_string(length));
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    report(tally, dt, what);
  }
}

// A prefill chunk whose scratch does not fit a small workspace runs in token chunks (several
// launch groups) and still matches the CPU.
TEST_F(CudaSparseSelect, SmallWorkspaceRunsInChunks) {
  const int64_t kv = 2, group = 16, hd = 128, length = 4100;
  for (DType dt : {DType::BF16, DType::F32}) {
    const SparseSelectParams s = small_params(SparseVariant::MiniCPM41, hd);
    CpuLayer L(kv, group, hd, length, s, dt, seed());
    GpuLayer g = upload(L);
    Tally tally;
    Call prompt = causal_call(L, 0, 3800, seed(), false);
    run_call(L, g, prompt, false, tally, "prompt");
    Call call = causal_call(L, 3800, 300, seed());
    DeviceCall d = upload(L, call);
    ops::CompressedKeys keys = g.keys(s);
    ops::compress_keys(gpu_.ops, g.k.tensor, d.slots.tensor, d.mask, s, keys);
    gpu_.sync();
    cpu_compress(cpu_.ops, L, call);
    expect_compressed_equal(L, g, "chunk");

    auto small = cuda::CudaContext::create(0, size_t{160} << 10);
    ops::OpContext small_ops;
    small_ops.cuda = small.get();
    const std::string plan = ops::cuda_impl::describe_sparse_select(*small, d.q.tensor, g.k.tensor, keys, d.mask, s);
    std::printf("  [%s, 160 KiB workspace] %s\n", name_of(dt).c_str(), plan.c_str());
    EXPECT_EQ(plan.find(" 1 chunk(s)"), std::string::npos) << "the workspace must force several chunks: " << plan;
    ops::sparse_select(small_ops, d.q.tensor, g.k.tensor, keys, d.positions.tensor, d.slots.tensor, d.mask, s,
                       d.blocks.tensor);
    small->synchronize();
    EXPECT_NO_THROW(small->check_device_errors());
    std::vector<float> c1 = L.stored_c1(), c2 = L.stored_c2();
    const std::vector<int32_t> want = cpu_select(cpu_.ops, L, call, c1, c2);
    judge_call(L, call, download_ints(d.blocks), want, c1, c2, tally, "small workspace " + name_of(dt));
    report(tally, dt, "small workspace " + name_of(dt));
  }
}

// Groups that do not divide a 16-row tile (3) or span two warps (32), head dims that take the
// CUDA-core path in 16 bits (96), F16, and queries below sparse_from (dense marker).
TEST_F(CudaSparseSelect, OddGroupsHeadDimsAndTheDenseSwitch) {
  struct Case {
    int64_t kv, group, hd;
    DType dtype;
  };
  const Case cases[] = {{2, 3, 128, DType::BF16},
                        {1, 32, 64, DType::F16},
                        {2, 5, 96, DType::BF16},
                        {3, 2, 80, DType::F32},
                        {1, 64, 64, DType::BF16}};
  for (const Case& c : cases)
    for (SparseVariant variant : {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41}) {
      SparseSelectParams s = small_params(variant, c.hd);
      s.topk = 4;
      s.sparse_from = 1500;
      CpuLayer L(c.kv, c.group, c.hd, 1700, s, c.dtype, seed());
      GpuLayer g = upload(L);
      const std::string what = describe(variant, c.kv, c.group, c.hd, c.dtype);
      Tally tally;
      Call prompt = causal_call(L, 0, 1400, seed());
      run_call(L, g, prompt, true, tally, what + " prompt");  // all dense
      Call chunk = causal_call(L, 1400, 200, seed());         // dense up to 1499, then sparse
      run_call(L, g, chunk, true, tally, what + " chunk");
      for (int64_t step = 0; step < 5; ++step) {
        Call call = causal_call(L, 1600 + step, 1, seed());
        run_call(L, g, call, true, tally, what + " decode");
      }
      report(tally, c.dtype, what);
      if (HasFailure()) return;
    }
}

// A tree query that misses the ancestor at some position is invalid input: reported through the
// error word, not a crash.
TEST_F(CudaSparseSelect, TreeWithoutAncestorsIsReported) {
  const SparseSelectParams s = small_params(SparseVariant::MiniCPM41, 64);
  CpuLayer L(1, 4, 64, 400, s, DType::BF16, seed());
  GpuLayer g = upload(L);
  Tally tally;
  Call prefix = causal_call(L, 0, 300, seed(), false);
  run_call(L, g, prefix, false, tally, "prefix");
  std::vector<int64_t> parent, depth;
  Call tree = tree_call(L, 300, 40, 40, seed(), parent, depth);
  const int64_t words = ops::AttentionMask::tree_words(40);
  tree.bits[static_cast<size_t>(39 * words + 10 / 32)] &=
      ~static_cast<int32_t>(1u << (10 % 32));  // node 39 loses node 10
  DeviceCall d = upload(L, tree);
  ops::CompressedKeys keys = g.keys(s);
  ops::compress_keys(gpu_.ops, g.k.tensor, d.slots.tensor, d.mask, s, keys);
  ops::sparse_select(gpu_.ops, d.q.tensor, g.k.tensor, keys, d.positions.tensor, d.slots.tensor, d.mask, s,
                     d.blocks.tensor);
  gpu_.sync();
  EXPECT_THROW(gpu_.cuda->check_device_errors(), Error);
}

#endif  // SPECULA_WITH_CUDA

}  // namespace
