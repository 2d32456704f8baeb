// CUDA ops::qkv_attention (the fused one-token decode kernel, and the unfused path it replaces)
// against the CPU reference: qkv_rope_store then attention on F32 tensors.
//
// The reference sees exactly what the GPU sees: the cache rows are rounded to the cache dtype,
// and after the reference's qkv_rope_store the rotated q and the new K/V row are rounded too (the
// GPU keeps them in the cache dtype before attending). Cache rows from the slot on are NaN on the
// device, so a kernel that reads the new row from the cache before writing it, or any row past
// it, produces NaN. Chosen V rows are scaled up ("spikes") at tile and split edges and just
// before the slot, so an off-by-one row shows above the rounding noise.
//
// Lengths cover one and several 32- and 64-row tiles per split, every split active, splits past
// the length, and the new row alone in its split; group sizes 1, 2, 4, 6 and 7 (padded heads, two
// blocks per KV head), head_dim 64 and 128, bf16 and f16 caches, Qwen3-style norms; and shapes
// with few KV heads, which stay on the three-kernel path.
//
// Tolerance of the attention output: |gpu - ref| <= tol * max(|ref|, rms(ref)) per element
// (test::compare), tol 2e-2 with bf16 anywhere (P and the output are rounded to bf16 on the
// unfused path, the output on the fused one), 5e-3 with f16. q_out and the K row: one rounding
// (kTol16); the V row is a copy (exact).
// Skipped, saying why, on machines without a CUDA device.
#ifdef SPECULA_WITH_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/ops.h"

using namespace specula;
using namespace specula::test;

namespace {

struct FusedCase {
  int64_t n_heads, n_kv, head_dim, capacity;
  bool qk_norm;
  DType qkv, cache, out;
  // Whether the fused kernel must take this shape on an sm_90 GPU: 8 or more KV heads fill half
  // of any such GPU's SMs with clusters; fewer KV heads with large groups keep the three kernels.
  bool fusable = true;
  std::string label() const {
    return "heads " + std::to_string(n_heads) + "/" + std::to_string(n_kv) + " hd=" + std::to_string(head_dim) +
           " cap=" + std::to_string(capacity) + (qk_norm ? " qk-norm" : "") + " qkv " + name_of(qkv) + " cache " +
           name_of(cache) + " out " + name_of(out);
  }
  int64_t width() const { return (n_heads + 2 * n_kv) * head_dim; }
};

constexpr float kSpike = 32.0f;
constexpr float kNormEps = 1e-6f;

double attention_tolerance(const FusedCase& c) {
  auto any = [&](DType d) { return c.qkv == d || c.cache == d || c.out == d; };
  return any(DType::BF16) ? 2e-2 : 5e-3;
}

// Host inputs of one case at one slot, already rounded to the device dtypes.
struct FusedInputs {
  std::vector<float> qkv, q_norm, k_norm, inv_freq, k_cache, v_cache;
  int32_t position = 0;
  // A tree mask over the last tree_width rows when tree_width > 0 (one bit row: one token).
  std::vector<int32_t> tree_bits;
  int64_t tree_width = 0;
};

FusedInputs make_inputs(const FusedCase& c, int32_t slot, uint64_t seed) {
  FusedInputs in;
  in.qkv = round_to(c.qkv, random_floats(static_cast<size_t>(c.width()), seed, -2.0f, 2.0f));
  if (c.qk_norm) {
    in.q_norm = round_to(DType::BF16, random_floats(static_cast<size_t>(c.head_dim), seed + 1, 0.5f, 1.5f));
    in.k_norm = round_to(DType::BF16, random_floats(static_cast<size_t>(c.head_dim), seed + 2, 0.5f, 1.5f));
  }
  const int64_t half = c.head_dim / 2;
  in.inv_freq.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    in.inv_freq[static_cast<size_t>(i)] =
        1.0f / std::pow(500000.0f, static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
  in.position = slot + static_cast<int32_t>(random_ints(1, seed + 3, 0, 1000)[0]);
  const size_t elems = static_cast<size_t>(c.n_kv * c.capacity * c.head_dim);
  in.k_cache = random_floats(elems, seed + 4);
  in.v_cache = random_floats(elems, seed + 5);
  const std::vector<int> spikes = {0, 31, 32, 63, 64, 65, 127, 128, slot - 1, slot - 32, slot - 33};
  for (int64_t h = 0; h < c.n_kv; ++h) {
    for (int64_t row = 0; row < c.capacity; ++row) {
      const bool spike = std::find(spikes.begin(), spikes.end(), static_cast<int>(row)) != spikes.end();
      for (int64_t d = 0; d < c.head_dim; ++d) {
        const size_t i = static_cast<size_t>((h * c.capacity + row) * c.head_dim + d);
        if (row >= slot) {
          in.k_cache[i] = in.v_cache[i] = NAN;  // the new row comes from qkv; later rows are never visible
          continue;
        }
        in.k_cache[i] = round_to(c.cache, in.k_cache[i]);
        in.v_cache[i] = round_to(c.cache, in.v_cache[i] * (spike ? kSpike : 1.0f));
      }
    }
  }
  return in;
}

struct Expected {
  std::vector<float> q, k_cache, v_cache, out;
};

Expected reference(const FusedCase& c, FusedInputs in, int32_t slot) {
  CpuTestContext cpu = make_cpu_context();
  const int64_t hd = c.head_dim, half = hd / 2;
  Expected e;
  e.q.assign(static_cast<size_t>(c.n_heads * hd), NAN);
  e.k_cache = in.k_cache;
  e.v_cache = in.v_cache;
  e.out.assign(static_cast<size_t>(c.n_heads * hd), NAN);
  std::vector<int32_t> pos = {in.position}, slots = {slot};
  ops::RopeParams rope{cpu_tensor(in.inv_freq, {half}), 1.0f};
  Tensor q = cpu_tensor(e.q, {1, c.n_heads, hd});
  Tensor k = cpu_tensor(e.k_cache, {c.n_kv, c.capacity, hd});
  Tensor v = cpu_tensor(e.v_cache, {c.n_kv, c.capacity, hd});
  ops::qkv_rope_store(cpu.ops, cpu_tensor(in.qkv, {1, c.width()}), c.qk_norm ? cpu_tensor(in.q_norm, {hd}) : Tensor{},
                      c.qk_norm ? cpu_tensor(in.k_norm, {hd}) : Tensor{}, kNormEps, rope, cpu_tensor(pos, {1}),
                      cpu_tensor(slots, {1}), q, k, v);
  // In place: the tensors above view these vectors.
  for (std::vector<float>* v : {&e.q, &e.k_cache, &e.v_cache})
    for (float& x : *v) x = round_to(c.cache, x);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  Tensor out = cpu_tensor(e.out, {1, c.n_heads * hd});
  const ops::AttentionMask mask =
      in.tree_width > 0 ? ops::AttentionMask::tree(cpu_tensor(in.tree_bits, {1, static_cast<int64_t>(in.tree_bits.size())}),
                                                   in.tree_width)
                        : ops::AttentionMask::causal();
  ops::attention(cpu.ops, q, k, v, cpu_tensor(slots, {1}), scale, out, mask);
  return e;
}

// Device operands of one case.
struct DeviceOperands {
  DeviceTensor qkv, q_norm, k_norm, inv_freq, positions, slots, q, k_cache, v_cache, out, tree_bits;
  int64_t tree_width = 0;

  void run(ops::OpContext& ctx, const FusedCase& c) {
    ops::RopeParams rope{inv_freq.tensor, 1.0f};
    const ops::AttentionMask mask =
        tree_width > 0 ? ops::AttentionMask::tree(tree_bits.tensor, tree_width) : ops::AttentionMask::causal();
    ops::qkv_attention(ctx, qkv.tensor, c.qk_norm ? q_norm.tensor : Tensor{}, c.qk_norm ? k_norm.tensor : Tensor{},
                       kNormEps, rope, positions.tensor, slots.tensor,
                       1.0f / std::sqrt(static_cast<float>(c.head_dim)), q.tensor, k_cache.tensor, v_cache.tensor,
                       out.tensor, mask);
  }
};

DeviceOperands upload(const FusedCase& c, const FusedInputs& in, int32_t slot) {
  DeviceOperands d;
  const int64_t hd = c.head_dim;
  d.qkv = upload_tensor(in.qkv, c.qkv, {1, c.width()});
  if (c.qk_norm) {
    d.q_norm = upload_tensor(in.q_norm, DType::BF16, {hd});
    d.k_norm = upload_tensor(in.k_norm, DType::BF16, {hd});
  }
  d.inv_freq = upload_tensor(in.inv_freq, DType::F32, {hd / 2});
  d.positions = upload_ints({in.position}, {1});
  d.slots = upload_ints({slot}, {1});
  d.q = device_tensor(c.cache, {1, c.n_heads, hd});
  poison(d.q);
  d.k_cache = upload_tensor(in.k_cache, c.cache, {c.n_kv, c.capacity, hd});
  d.v_cache = upload_tensor(in.v_cache, c.cache, {c.n_kv, c.capacity, hd});
  d.out = device_tensor(c.out, {1, c.n_heads * hd});
  poison(d.out);
  if (in.tree_width > 0) {
    d.tree_bits = upload_ints(in.tree_bits, {1, static_cast<int64_t>(in.tree_bits.size())});
    d.tree_width = in.tree_width;
  }
  return d;
}

void expect_matches(const FusedCase& c, DeviceOperands& d, const Expected& e, const std::string& label) {
  expect_close(label + " out", download_f32(d.out), round_to(c.out, e.out), attention_tolerance(c));
  expect_close(label + " q_out", download_f32(d.q), e.q, kTol16);
  expect_close(label + " k cache", download_f32(d.k_cache), e.k_cache, kTol16);
  expect_close(label + " v cache", download_f32(d.v_cache), e.v_cache, kExact);
}

class CudaQkvAttention : public CudaOpsTest {
 protected:
  // The fused kernel needs thread-block clusters (sm_90); elsewhere every call is unfused.
  bool fused_available() const { return gpu_.cuda->info().sm_major >= 9; }

  // Runs one case at each slot with the fused kernel on (it must be the one that runs) and off.
  void check(const FusedCase& c, const std::vector<int32_t>& slots) {
    for (int32_t slot : slots) {
      const FusedInputs in = make_inputs(c, slot, seed());
      const Expected want = reference(c, in, slot);
      for (bool fused : {true, false}) {
        const std::string label = c.label() + " slot " + std::to_string(slot) + (fused ? " fused" : " unfused");
        SCOPED_TRACE(label);
        gpu_.cuda->set_fused_decode_attention(fused);
        DeviceOperands d = upload(c, in, slot);
        EXPECT_EQ(ops::cuda_impl::qkv_attention_is_fused(*gpu_.cuda, d.qkv.tensor, d.q.tensor, d.k_cache.tensor,
                                                    d.v_cache.tensor),
                  fused && c.fusable && fused_available());
        d.run(gpu_.ops, c);
        gpu_.sync();
        expect_no_device_errors();
        expect_matches(c, d, want, label);
      }
    }
    gpu_.cuda->set_fused_decode_attention(true);
  }
};

TEST_F(CudaQkvAttention, Llama3DecodeLengths) {
  // Lengths at and around the fused kernel's 32-row tiles, its split boundaries and the capacity.
  check({32, 8, 128, 8197, false, DType::BF16, DType::BF16, DType::BF16},
        {0, 1, 30, 31, 32, 33, 511, 512, 1055, 4097, 8196});
}

TEST_F(CudaQkvAttention, GqaGroupsAndHeadDims) {
  check({16, 16, 64, 1000, false, DType::BF16, DType::BF16, DType::BF16}, {0, 63, 64, 999});  // group 1, hd 64
  check({56, 8, 64, 700, false, DType::BF16, DType::BF16, DType::F32}, {5, 130, 699});  // group 7: a padded head
  check({48, 8, 128, 333, false, DType::F32, DType::F16, DType::F16}, {17, 200, 332});  // group 6, f16 cache
  check({16, 8, 128, 77, true, DType::BF16, DType::BF16, DType::BF16}, {0, 40, 76});  // group 2, Qwen3-style norms
  check({32, 8, 64, 4099, false, DType::F16, DType::F16, DType::F32}, {2047, 4098});  // group 4, hd 64 tiles of 64
  // Few KV heads: the three-kernel path (still checked, and the switch must not matter).
  check({32, 2, 128, 2111, true, DType::BF16, DType::BF16, DType::BF16, false}, {3, 1500, 2110});  // group 16
  check({14, 2, 64, 300, false, DType::BF16, DType::BF16, DType::BF16, false}, {150});            // Qwen2.5-0.5B
}

TEST_F(CudaQkvAttention, GraphReplayFollowsDeviceSlots) {
  // One capture, replays at other lengths: the grid depends on the shapes only, and the slot is
  // read on the device (before the grid-dependency wait, in the fused kernel).
  const FusedCase c{32, 8, 128, 4133, false, DType::BF16, DType::BF16, DType::BF16};
  const FusedInputs first = make_inputs(c, 100, seed());
  DeviceOperands d = upload(c, first, 100);
  const auto stream = static_cast<cudaStream_t>(gpu_.cuda->stream());
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  SPECULA_TEST_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  d.run(gpu_.ops, c);
  SPECULA_TEST_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  SPECULA_TEST_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int32_t slot : {100, 0, 31, 32, 1000, 4132, 64, 2500, 2500}) {
    SCOPED_TRACE("replay at slot " + std::to_string(slot));
    const FusedInputs in = make_inputs(c, slot, seed());
    const Expected want = reference(c, in, slot);
    d.qkv.buffer.upload(encode(in.qkv, c.qkv));
    d.positions.buffer.upload(std::vector<int32_t>{in.position});
    d.slots.buffer.upload(std::vector<int32_t>{slot});
    d.k_cache.buffer.upload(encode(in.k_cache, c.cache));
    d.v_cache.buffer.upload(encode(in.v_cache, c.cache));
    poison(d.out);
    poison(d.q);
    SPECULA_TEST_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    gpu_.sync();
    expect_no_device_errors();
    expect_matches(c, d, want, "graph replay slot " + std::to_string(slot));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_F(CudaQkvAttention, InvalidSlotIsReportedAndZeroed) {
  const FusedCase c{32, 8, 128, 300, false, DType::BF16, DType::BF16, DType::BF16};
  const FusedInputs in = make_inputs(c, 299, seed());
  for (int32_t bad : {300, -1}) {
    DeviceOperands d = upload(c, in, bad);
    ASSERT_EQ(ops::cuda_impl::qkv_attention_is_fused(*gpu_.cuda, d.qkv.tensor, d.q.tensor, d.k_cache.tensor,
                                                 d.v_cache.tensor),
              fused_available());
    d.run(gpu_.ops, c);
    gpu_.sync();
    EXPECT_THROW(gpu_.cuda->check_device_errors(), Error) << "slot " << bad;
    for (float x : download_f32(d.out)) ASSERT_EQ(x, 0.0f) << "slot " << bad;
    // The cache is untouched (NaN from row 299 on, as uploaded).
    const std::vector<float> k = download_f32(d.k_cache);
    for (size_t i = 0; i < k.size(); ++i)
      if (std::isnan(in.k_cache[i])) ASSERT_TRUE(std::isnan(k[i])) << "slot " << bad << " element " << i;
    // A valid call afterwards still works: no cluster was left waiting.
    DeviceOperands ok = upload(c, in, 299);
    ok.run(gpu_.ops, c);
    gpu_.sync();
    expect_no_device_errors();
    expect_matches(c, ok, reference(c, in, 299), "valid call after an invalid slot");
  }
}

TEST_F(CudaQkvAttention, TreeMaskNeverTakesTheFusedKernel) {
  // One token with a tree mask (a draft step): the fused kernel knows only the causal mask, so
  // the op must take the two-op path even where the shape is fusable; a mask that hides rows
  // makes any other path disagree with the reference.
  const FusedCase c{32, 8, 128, 700, false, DType::BF16, DType::BF16, DType::BF16};
  for (int32_t slot : {40, 650}) {
    for (int64_t width : {int64_t{8}, int64_t{41}}) {
      FusedInputs in = make_inputs(c, slot, seed());
      const int64_t words = ops::AttentionMask::tree_words(width);
      in.tree_width = width;
      in.tree_bits.assign(static_cast<size_t>(words), 0);
      const std::vector<int32_t> pick = random_ints(static_cast<size_t>(width), seed(), 0, 2);
      for (int64_t j = 0; j < width; ++j)  // its own row (the last) and about a third of the rest
        if (j == width - 1 || pick[static_cast<size_t>(j)] == 0)
          in.tree_bits[static_cast<size_t>(j / 32)] |= static_cast<int32_t>(1u << (j % 32));
      const Expected want = reference(c, in, slot);
      for (bool fused : {true, false}) {
        const std::string label = "tree width " + std::to_string(width) + " slot " + std::to_string(slot) +
                                  (fused ? " (fused allowed)" : " (fused off)");
        SCOPED_TRACE(label);
        gpu_.cuda->set_fused_decode_attention(fused);
        DeviceOperands d = upload(c, in, slot);
        d.run(gpu_.ops, c);
        gpu_.sync();
        expect_no_device_errors();
        expect_matches(c, d, want, label);
      }
    }
  }
  gpu_.cuda->set_fused_decode_attention(true);
}

TEST_F(CudaQkvAttention, SeveralTokensTakeTheUnfusedPath) {
  // The op's contract for T > 1 (prefill, verification) is the two-op path: checked end to end
  // against the same reference elsewhere; here only that the fused kernel declines it.
  const FusedCase c{32, 8, 128, 64, false, DType::BF16, DType::BF16, DType::BF16};
  DeviceTensor qkv = device_tensor(DType::BF16, {3, c.width()});
  DeviceTensor q = device_tensor(DType::BF16, {3, c.n_heads, c.head_dim});
  DeviceTensor k = device_tensor(DType::BF16, {c.n_kv, c.capacity, c.head_dim});
  DeviceTensor v = device_tensor(DType::BF16, {c.n_kv, c.capacity, c.head_dim});
  EXPECT_FALSE(ops::cuda_impl::qkv_attention_is_fused(*gpu_.cuda, qkv.tensor, q.tensor, k.tensor, v.tensor));
  DeviceTensor q32 = device_tensor(DType::F32, {1, c.n_heads, c.head_dim});
  DeviceTensor qkv1 = device_tensor(DType::BF16, {1, c.width()});
  EXPECT_FALSE(ops::cuda_impl::qkv_attention_is_fused(*gpu_.cuda, qkv1.tensor, q32.tensor, k.tensor, v.tensor))
      << "q_out in another dtype than the cache must take the unfused path";
  DeviceTensor q1 = device_tensor(DType::BF16, {1, c.n_heads, c.head_dim});
  EXPECT_EQ(ops::cuda_impl::qkv_attention_is_fused(*gpu_.cuda, qkv1.tensor, q1.tensor, k.tensor, v.tensor),
            fused_available());
  gpu_.cuda->set_fused_decode_attention(false);
  EXPECT_FALSE(ops::cuda_impl::qkv_attention_is_fused(*gpu_.cuda, qkv1.tensor, q1.tensor, k.tensor, v.tensor))
      << "the A/B switch must turn the fused kernel off";
}

// The tuning override is read from the environment when a context is created; a value the fused
// kernel has no instantiation for is refused by name. Needs no GPU.
TEST(CudaQkvAttentionSwitch, HeadsOverrideTakesOnlyZeroOneTwoOrFour) {
  EXPECT_EQ(cuda::parse_fused_attention_heads(nullptr), 0);
  EXPECT_EQ(cuda::parse_fused_attention_heads(""), 0);
  EXPECT_EQ(cuda::parse_fused_attention_heads("0"), 0);
  EXPECT_EQ(cuda::parse_fused_attention_heads("1"), 1);
  EXPECT_EQ(cuda::parse_fused_attention_heads("2"), 2);
  EXPECT_EQ(cuda::parse_fused_attention_heads("4"), 4);
  expect_rejected_by_name(cuda::parse_fused_attention_heads, {"3", "8", "two", "2 ", "-1", "04"},
                          "SPECULA_FUSED_ATTENTION_HEADS");
}

}  // namespace

#endif  // SPECULA_WITH_CUDA
