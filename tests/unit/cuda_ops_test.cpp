// CUDA ops (embedding, norms, linear, linear_swiglu, qkv_rope_store, silu_mul, argmax, convert)
// against the CPU reference ops, and the decode-path chain under programmatic dependent launch. Every check draws fresh random inputs (seeded from the test name and a counter),
// rounds them to the dtype the GPU reads so both backends see identical values, poisons the GPU
// outputs with NaN first and then requires every element to be written and within tolerance:
//   fp32 outputs of fp32 arithmetic   1e-5  (relative, see test::compare)
//   16-bit outputs                    1e-2  (against the reference rounded to that dtype)
//   exact ops (copies, conversions, argmax indices) must match exactly.
// Shapes are deliberately odd (row lengths not multiples of 8 or 32, misaligned views) so the
// scalar fallbacks run too, next to the real decode shapes of 8B-class models.
// Skipped, saying why, on machines without a CUDA device.
#ifdef SPECULA_WITH_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/ops.h"

using namespace specula;
using namespace specula::test;

namespace {

using CudaEmbedding = CudaOpsTest;
using CudaRmsNorm = CudaOpsTest;
using CudaAddRmsNorm = CudaOpsTest;
using CudaLinear = CudaOpsTest;
using CudaQkvRopeStore = CudaOpsTest;
using CudaSiluMul = CudaOpsTest;
using CudaArgmax = CudaOpsTest;
using CudaConvert = CudaOpsTest;
using CudaGraph = CudaOpsTest;
using CudaLinearSwiglu = CudaOpsTest;
using CudaPdl = CudaOpsTest;

// ---------------------------------------------------------------------------------------------
// embedding

TEST_F(CudaEmbedding, MatchesCpu) {
  struct Case {
    int64_t vocab, hidden, tokens;
    DType table, out;
    float scale;
    size_t out_offset;
  };
  const Case cases[] = {
      {1000, 4096, 5, DType::BF16, DType::F32, 1.0f, 0},
      {1000, 4096, 1, DType::F32, DType::BF16, 2.5f, 0},
      {333, 77, 9, DType::F16, DType::F16, 0.125f, 0},
      {50, 64, 3, DType::BF16, DType::F32, 1.0f, 4},  // misaligned out: scalar path
      {128256, 64, 4, DType::BF16, DType::BF16, 1.0f, 0},
      {151936, 40, 2, DType::F16, DType::F32, 3.0f, 4},
  };
  for (const Case& c : cases) {
    const std::string label = "V=" + std::to_string(c.vocab) + " H=" + std::to_string(c.hidden) + " T=" +
                              std::to_string(c.tokens) + " " + name_of(c.table) + "->" + name_of(c.out);
    SCOPED_TRACE(label);
    std::vector<float> table = round_to(c.table, random_floats(static_cast<size_t>(c.vocab * c.hidden), seed()));
    std::vector<int32_t> ids = random_ints(static_cast<size_t>(c.tokens), seed(), 0, static_cast<int32_t>(c.vocab - 1));
    ids[0] = static_cast<int32_t>(c.vocab - 1);  // the last row is the one an off-by-one misses

    std::vector<float> want(static_cast<size_t>(c.tokens * c.hidden));
    Tensor cpu_out = cpu_tensor(want, {c.tokens, c.hidden});
    ops::embedding(cpu_.ops, cpu_tensor(table, {c.vocab, c.hidden}), cpu_tensor(ids, {c.tokens}), c.scale, cpu_out);

    DeviceTensor d_table = upload_tensor(table, c.table, {c.vocab, c.hidden});
    DeviceTensor d_ids = upload_ints(ids, {c.tokens});
    DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.hidden}, c.out_offset);
    poison(d_out);
    ops::embedding(gpu_.ops, d_table.tensor, d_ids.tensor, c.scale, d_out.tensor);
    gpu_.sync();
    expect_no_device_errors();
    expect_close(label, download_f32(d_out), round_to(c.out, want), kExact);
  }
}

TEST_F(CudaEmbedding, OutOfRangeIdWritesZerosAndReportsIt) {
  const int64_t vocab = 100, hidden = 96, tokens = 4;
  std::vector<float> table = round_to(DType::BF16, random_floats(static_cast<size_t>(vocab * hidden), seed()));
  const std::vector<int32_t> ids = {3, -1, 100, 99};
  DeviceTensor d_table = upload_tensor(table, DType::BF16, {vocab, hidden});
  DeviceTensor d_ids = upload_ints(ids, {tokens});
  DeviceTensor d_out = device_tensor(DType::F32, {tokens, hidden});
  poison(d_out);
  ops::embedding(gpu_.ops, d_table.tensor, d_ids.tensor, 1.0f, d_out.tensor);
  gpu_.sync();
  try {
    gpu_.cuda->check_device_errors();
    ADD_FAILURE() << "an out-of-range id was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id"), std::string::npos) << e.what();
  }
  expect_no_device_errors();  // reading the word cleared it
  const std::vector<float> got = download_f32(d_out);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < hidden; ++i) {
      const float g = got[static_cast<size_t>(t * hidden + i)];
      const bool valid = ids[static_cast<size_t>(t)] >= 0 && ids[static_cast<size_t>(t)] < vocab;
      const float w = valid ? table[static_cast<size_t>(ids[static_cast<size_t>(t)] * hidden + i)] : 0.0f;
      ASSERT_EQ(g, w) << "token " << t << " element " << i;
    }
}

// ---------------------------------------------------------------------------------------------
// rms_norm / add_rms_norm

TEST_F(CudaRmsNorm, MatchesCpu) {
  struct Case {
    int64_t rows, dim;
    DType x, weight, out;
    bool in_place;
    size_t offset;  // applied to x and out
  };
  const Case cases[] = {
      {1, 4096, DType::F32, DType::BF16, DType::BF16, false, 0},
      {3, 4096, DType::BF16, DType::BF16, DType::BF16, false, 0},
      {17, 3584, DType::F32, DType::F32, DType::F32, false, 0},
      {5, 77, DType::F16, DType::F16, DType::F32, false, 0},
      {2, 128, DType::F32, DType::BF16, DType::F32, true, 0},
      {4, 1000, DType::BF16, DType::BF16, DType::BF16, true, 2},  // misaligned: scalar path, in place
      {2, 40000, DType::F32, DType::BF16, DType::F32, false, 0},  // longer than the register cache
      {2, 40001, DType::BF16, DType::F32, DType::BF16, false, 0},  // same, scalar path
  };
  for (const Case& c : cases) {
    const std::string label = "R=" + std::to_string(c.rows) + " D=" + std::to_string(c.dim) + " " + name_of(c.x) +
                              "/" + name_of(c.weight) + "->" + name_of(c.out) + (c.in_place ? " in place" : "");
    SCOPED_TRACE(label);
    const float eps = 1e-5f;
    std::vector<float> x = round_to(c.x, random_floats(static_cast<size_t>(c.rows * c.dim), seed(), -2.0f, 2.0f));
    std::vector<float> w = round_to(c.weight, random_floats(static_cast<size_t>(c.dim), seed(), 0.5f, 1.5f));
    std::vector<float> want(x.size());
    Tensor cpu_out = cpu_tensor(want, {c.rows, c.dim});
    ops::rms_norm(cpu_.ops, cpu_tensor(x, {c.rows, c.dim}), cpu_tensor(w, {c.dim}), eps, cpu_out);

    DeviceTensor d_x = upload_tensor(x, c.x, {c.rows, c.dim}, c.offset);
    DeviceTensor d_w = upload_tensor(w, c.weight, {c.dim});
    DeviceTensor d_out = c.in_place ? DeviceTensor{} : device_tensor(c.out, {c.rows, c.dim}, c.offset);
    if (!c.in_place) poison(d_out);
    Tensor out = c.in_place ? d_x.tensor : d_out.tensor;
    ops::rms_norm(gpu_.ops, d_x.tensor, d_w.tensor, eps, out);
    gpu_.sync();
    const DType out_dtype = c.in_place ? c.x : c.out;
    expect_close(label, download_f32(c.in_place ? d_x : d_out), round_to(out_dtype, want), tolerance_for(out_dtype));
  }
}

TEST_F(CudaAddRmsNorm, MatchesCpu) {
  struct Case {
    int64_t rows, dim;
    DType residual, delta, weight, out;
    float delta_scale;
    size_t offset;
  };
  const Case cases[] = {
      {1, 4096, DType::F32, DType::BF16, DType::BF16, DType::BF16, 1.0f, 0},
      {7, 4096, DType::F32, DType::F32, DType::BF16, DType::F32, 0.37f, 0},
      {3, 5120, DType::BF16, DType::BF16, DType::BF16, DType::BF16, 1.0f, 0},
      {5, 99, DType::F32, DType::F16, DType::F32, DType::F16, 1.4f, 0},
      {2, 2048, DType::F32, DType::BF16, DType::BF16, DType::BF16, 1.0f, 8},  // misaligned: scalar path
      {2, 36000, DType::F32, DType::BF16, DType::BF16, DType::F32, 0.5f, 0},  // beyond the register cache
  };
  for (const Case& c : cases) {
    const std::string label = "R=" + std::to_string(c.rows) + " D=" + std::to_string(c.dim) + " res " +
                              name_of(c.residual) + " delta " + name_of(c.delta) + " out " + name_of(c.out);
    SCOPED_TRACE(label);
    const float eps = 1e-6f;
    const size_t n = static_cast<size_t>(c.rows * c.dim);
    std::vector<float> residual = round_to(c.residual, random_floats(n, seed(), -3.0f, 3.0f));
    std::vector<float> delta = round_to(c.delta, random_floats(n, seed()));
    std::vector<float> w = round_to(c.weight, random_floats(static_cast<size_t>(c.dim), seed(), 0.5f, 1.5f));

    // Reference: the CPU op on an F32 residual. A 16-bit residual is stored rounded, and the GPU
    // normalises the stored value, so the reference rounds the updated residual before the norm.
    std::vector<float> want_residual = residual, want_out(n);
    Tensor cpu_res = cpu_tensor(want_residual, {c.rows, c.dim});
    Tensor cpu_out = cpu_tensor(want_out, {c.rows, c.dim});
    if (c.residual == DType::F32) {
      ops::add_rms_norm(cpu_.ops, cpu_res, cpu_tensor(delta, {c.rows, c.dim}), c.delta_scale, cpu_tensor(w, {c.dim}),
                        eps, cpu_out);
    } else {
      for (size_t i = 0; i < n; ++i) want_residual[i] = round_to(c.residual, residual[i] + c.delta_scale * delta[i]);
      ops::rms_norm(cpu_.ops, cpu_res, cpu_tensor(w, {c.dim}), eps, cpu_out);
    }

    DeviceTensor d_res = upload_tensor(residual, c.residual, {c.rows, c.dim}, c.offset);
    DeviceTensor d_delta = upload_tensor(delta, c.delta, {c.rows, c.dim});
    DeviceTensor d_w = upload_tensor(w, c.weight, {c.dim});
    DeviceTensor d_out = device_tensor(c.out, {c.rows, c.dim}, c.offset);
    poison(d_out);
    ops::add_rms_norm(gpu_.ops, d_res.tensor, d_delta.tensor, c.delta_scale, d_w.tensor, eps, d_out.tensor);
    gpu_.sync();
    expect_close(label + " residual", download_f32(d_res), want_residual, tolerance_for(c.residual));
    expect_close(label + " out", download_f32(d_out), round_to(c.out, want_out), tolerance_for(c.out));
  }
}

// ---------------------------------------------------------------------------------------------
// linear

struct LinearCase {
  int64_t tokens, n, k;
  DType weight, x, out;
  DType bias;  // DType::U8 stands for "no bias"
  float alpha;
  size_t x_offset = 0;
  double tolerance = -1.0;  // < 0: tolerance_for(out)
};

class CudaLinearRunner {
 public:
  CudaLinearRunner(CpuTestContext& cpu, CudaTestContext& gpu) : cpu_(cpu), gpu_(gpu) {}

  void run(const LinearCase& c, uint64_t seed_a, uint64_t seed_b, uint64_t seed_c) {
    const bool has_bias = c.bias != DType::U8;
    const std::string label = "T=" + std::to_string(c.tokens) + " N=" + std::to_string(c.n) + " K=" +
                              std::to_string(c.k) + " W " + name_of(c.weight) + " x " + name_of(c.x) + " out " +
                              name_of(c.out) + (has_bias ? " bias " + name_of(c.bias) : "") +
                              (c.x_offset ? " misaligned x" : "");
    SCOPED_TRACE(label);
    std::vector<float> w = round_to(c.weight, random_floats(static_cast<size_t>(c.n * c.k), seed_a));
    std::vector<float> x = round_to(c.x, random_floats(static_cast<size_t>(c.tokens * c.k), seed_b));
    std::vector<float> bias = has_bias ? round_to(c.bias, random_floats(static_cast<size_t>(c.n), seed_c)) : std::vector<float>{};

    std::vector<float> want(static_cast<size_t>(c.tokens * c.n));
    Tensor cpu_out = cpu_tensor(want, {c.tokens, c.n});
    const Tensor cpu_bias = has_bias ? cpu_tensor(bias, {c.n}) : Tensor{};
    ops::linear(cpu_.ops, cpu_tensor(x, {c.tokens, c.k}), cpu_tensor(w, {c.n, c.k}), cpu_bias, cpu_out, c.alpha);

    DeviceTensor d_w = upload_tensor(w, c.weight, {c.n, c.k});
    DeviceTensor d_x = upload_tensor(x, c.x, {c.tokens, c.k}, c.x_offset);
    DeviceTensor d_bias = has_bias ? upload_tensor(bias, c.bias, {c.n}) : DeviceTensor{};
    DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.n});
    poison(d_out);
    ops::linear(gpu_.ops, d_x.tensor, d_w.tensor, has_bias ? d_bias.tensor : Tensor{}, d_out.tensor, c.alpha);
    gpu_.sync();
    expect_close(label, download_f32(d_out), round_to(c.out, want), c.tolerance >= 0 ? c.tolerance : tolerance_for(c.out));
  }

 private:
  CpuTestContext& cpu_;
  CudaTestContext& gpu_;
};

constexpr DType kNoBias = DType::U8;

TEST_F(CudaLinear, GemvMatchesCpu) {
  const LinearCase cases[] = {
      // T = 1..8: the vector GEMV (each template token count), every weight/x dtype pair.
      {1, 257, 4096, DType::BF16, DType::BF16, DType::BF16, kNoBias, 1.0f},
      {1, 257, 4096, DType::BF16, DType::F32, DType::F32, kNoBias, 1.0f},
      {1, 64, 4096, DType::F16, DType::F16, DType::F32, DType::F16, 0.5f},  // few rows: K split over warps
      {2, 300, 1024, DType::F32, DType::F32, DType::F32, DType::F32, 1.0f},
      {3, 129, 2048, DType::BF16, DType::F16, DType::BF16, DType::BF16, 1.0f},
      {4, 1000, 512, DType::F16, DType::BF16, DType::F16, kNoBias, 2.0f},
      {5, 4099, 512, DType::BF16, DType::BF16, DType::F32, DType::F32, 1.0f},
      {8, 96, 768, DType::F32, DType::BF16, DType::F32, kNoBias, 1.0f},
      {7, 33, 4104, DType::BF16, DType::F32, DType::F32, DType::BF16, 0.25f},
      // Scalar fallbacks: K not a multiple of the vector width, or a misaligned x.
      {1, 37, 4095, DType::BF16, DType::BF16, DType::F32, kNoBias, 1.0f},
      {3, 70, 99, DType::F16, DType::F32, DType::F32, DType::F32, 1.0f},
      {2, 45, 102, DType::F32, DType::F32, DType::F32, kNoBias, 1.0f},
      {3, 50, 256, DType::BF16, DType::F32, DType::F32, kNoBias, 1.0f, 4},
  };
  CudaLinearRunner runner(cpu_, gpu_);
  for (const LinearCase& c : cases) runner.run(c, seed(), seed(), seed());
}

TEST_F(CudaLinear, DecodeShapesMatchCpu) {
  // Llama-3-8B decode shapes (fused QKV, o_proj, fused gate/up, down_proj, LM head) at T = 1 and
  // a 4-token verification batch.
  const int64_t shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}, {128256, 4096}};
  CudaLinearRunner runner(cpu_, gpu_);
  for (const auto& s : shapes) {
    const bool lm_head = s[0] == 128256;  // 1 GB of weights: one output dtype (logits are F32)
    if (!lm_head) runner.run({1, s[0], s[1], DType::BF16, DType::BF16, DType::BF16, kNoBias, 1.0f}, seed(), seed(), seed());
    runner.run({1, s[0], s[1], DType::BF16, DType::BF16, DType::F32, kNoBias, 1.0f}, seed(), seed(), seed());
  }
  runner.run({4, 6144, 4096, DType::BF16, DType::BF16, DType::BF16, DType::BF16, 1.0f}, seed(), seed(), seed());
}

TEST_F(CudaLinear, GemmMatchesCpu) {
  // Tensor-core accumulation is fp32 but not in the CPU's order; bf16 operands are exact in fp32.
  constexpr double kTolGemmF32 = 1e-4;
  const LinearCase cases[] = {
      // 9..128 tokens, 16-bit weights with x in their dtype, K a multiple of 64: the small-M GEMM
      // (cuda_small_m_gemm_test.cpp calls it directly), bias in the output's dtype or another.
      {9, 256, 512, DType::BF16, DType::BF16, DType::BF16, DType::BF16, 1.0f},
      {64, 1000, 1024, DType::BF16, DType::BF16, DType::F32, DType::F32, 0.5f, 0, kTolGemmF32},
      {33, 384, 4096, DType::F16, DType::F16, DType::F16, DType::F32, 1.0f},
      // cuBLASLt (more tokens, or K not a multiple of 64), bias through the epilogue (same dtype as
      // out) or the separate kernel.
      {136, 256, 512, DType::BF16, DType::BF16, DType::BF16, DType::BF16, 1.0f},
      {150, 1000, 1024, DType::BF16, DType::BF16, DType::F32, DType::F32, 0.5f, 0, kTolGemmF32},
      {17, 130, 264, DType::BF16, DType::BF16, DType::F32, DType::BF16, 1.0f, 0, kTolGemmF32},
      {200, 4096, 4096, DType::BF16, DType::BF16, DType::BF16, kNoBias, 1.0f},
      // F32 x converted to bf16 in the workspace first: bf16-GEMM precision.
      {40, 512, 1024, DType::BF16, DType::F32, DType::F32, kNoBias, 1.0f, 0, kTol16},
      {12, 96, 4104, DType::BF16, DType::F32, DType::BF16, DType::BF16, 1.0f},
      // F32 weights and x: fp32 cuBLASLt (no TF32).
      {20, 300, 700, DType::F32, DType::F32, DType::F32, DType::F32, 1.0f, 0, kTolGemmF32},
      // Combinations cuBLASLt lacks: the GEMV in token groups.
      {20, 200, 512, DType::BF16, DType::F16, DType::F16, kNoBias, 1.0f},
      {12, 64, 300, DType::F32, DType::F32, DType::BF16, DType::F32, 1.0f},
      {19, 77, 99, DType::F16, DType::F32, DType::BF16, kNoBias, 1.0f},
      // Odd K with 16-bit operands (cuBLASLt with low alignment, or the GEMV).
      {16, 100, 1001, DType::BF16, DType::BF16, DType::F32, kNoBias, 1.0f, 0, kTolGemmF32},
  };
  CudaLinearRunner runner(cpu_, gpu_);
  for (const LinearCase& c : cases) runner.run(c, seed(), seed(), seed());
}

// ---------------------------------------------------------------------------------------------
// qkv_rope_store

struct QkvCase {
  int64_t tokens, n_heads, n_kv, head_dim, capacity;
  bool qk_norm;
  DType qkv, q_out, cache;
  float attention_scaling;
};

void run_qkv_case(CpuTestContext& cpu, CudaTestContext& gpu, const QkvCase& c,
                  const std::vector<uint64_t>& seeds, const std::vector<int32_t>& gpu_slots) {
  const int64_t width = (c.n_heads + 2 * c.n_kv) * c.head_dim, half = c.head_dim / 2;
  const std::string label = "T=" + std::to_string(c.tokens) + " heads " + std::to_string(c.n_heads) + "/" +
                            std::to_string(c.n_kv) + " hd=" + std::to_string(c.head_dim) +
                            (c.qk_norm ? " qk-norm" : "") + " qkv " + name_of(c.qkv) + " q " + name_of(c.q_out) +
                            " cache " + name_of(c.cache);
  SCOPED_TRACE(label);
  std::vector<float> qkv = round_to(c.qkv, random_floats(static_cast<size_t>(c.tokens * width), seeds[0], -2.0f, 2.0f));
  std::vector<float> qn, kn;
  if (c.qk_norm) {
    qn = round_to(DType::BF16, random_floats(static_cast<size_t>(c.head_dim), seeds[1], 0.5f, 1.5f));
    kn = round_to(DType::BF16, random_floats(static_cast<size_t>(c.head_dim), seeds[2], 0.5f, 1.5f));
  }
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[static_cast<size_t>(i)] =
        1.0f / std::pow(500000.0f, static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
  // Positions up to 2e5: large angles exercise sincosf's slow argument reduction.
  std::vector<int32_t> positions = random_ints(static_cast<size_t>(c.tokens), seeds[3], 0, 200000);
  const size_t cache_elems = static_cast<size_t>(c.n_kv * c.capacity * c.head_dim);
  std::vector<float> k_cache = round_to(c.cache, random_floats(cache_elems, seeds[4]));
  std::vector<float> v_cache = round_to(c.cache, random_floats(cache_elems, seeds[5]));

  // CPU reference. Slots the GPU must reject are replaced by valid scratch rows here and their
  // rows restored afterwards, so the expected cache is "untouched" there.
  std::vector<int32_t> cpu_slots = gpu_slots;
  std::vector<bool> rejected(cpu_slots.size(), false);
  for (size_t t = 0; t < cpu_slots.size(); ++t)
    if (cpu_slots[t] < 0 || cpu_slots[t] >= c.capacity) {
      rejected[t] = true;
      cpu_slots[t] = static_cast<int32_t>(c.capacity - 1 - static_cast<int64_t>(t));
    }
  std::vector<float> want_q(static_cast<size_t>(c.tokens * c.n_heads * c.head_dim));
  std::vector<float> want_k = k_cache, want_v = v_cache;
  ops::RopeParams cpu_rope{cpu_tensor(inv_freq, {half}), c.attention_scaling};
  Tensor cpu_q = cpu_tensor(want_q, {c.tokens, c.n_heads, c.head_dim});
  Tensor cpu_k = cpu_tensor(want_k, {c.n_kv, c.capacity, c.head_dim});
  Tensor cpu_v = cpu_tensor(want_v, {c.n_kv, c.capacity, c.head_dim});
  ops::qkv_rope_store(cpu.ops, cpu_tensor(qkv, {c.tokens, width}), c.qk_norm ? cpu_tensor(qn, {c.head_dim}) : Tensor{},
                      c.qk_norm ? cpu_tensor(kn, {c.head_dim}) : Tensor{}, 1e-6f, cpu_rope,
                      cpu_tensor(positions, {c.tokens}), cpu_tensor(cpu_slots, {c.tokens}), cpu_q, cpu_k, cpu_v);
  for (size_t t = 0; t < rejected.size(); ++t) {
    if (!rejected[t]) continue;
    for (int64_t h = 0; h < c.n_kv; ++h) {
      const size_t row = static_cast<size_t>((h * c.capacity + cpu_slots[t]) * c.head_dim);
      for (int64_t i = 0; i < c.head_dim; ++i) {
        want_k[row + static_cast<size_t>(i)] = k_cache[row + static_cast<size_t>(i)];
        want_v[row + static_cast<size_t>(i)] = v_cache[row + static_cast<size_t>(i)];
      }
    }
  }

  DeviceTensor d_qkv = upload_tensor(qkv, c.qkv, {c.tokens, width});
  DeviceTensor d_qn = c.qk_norm ? upload_tensor(qn, DType::BF16, {c.head_dim}) : DeviceTensor{};
  DeviceTensor d_kn = c.qk_norm ? upload_tensor(kn, DType::BF16, {c.head_dim}) : DeviceTensor{};
  DeviceTensor d_freq = upload_tensor(inv_freq, DType::F32, {half});
  DeviceTensor d_pos = upload_ints(positions, {c.tokens});
  DeviceTensor d_slots = upload_ints(gpu_slots, {c.tokens});
  DeviceTensor d_q = device_tensor(c.q_out, {c.tokens, c.n_heads, c.head_dim});
  poison(d_q);
  DeviceTensor d_k = upload_tensor(k_cache, c.cache, {c.n_kv, c.capacity, c.head_dim});
  DeviceTensor d_v = upload_tensor(v_cache, c.cache, {c.n_kv, c.capacity, c.head_dim});
  ops::RopeParams gpu_rope{d_freq.tensor, c.attention_scaling};
  ops::qkv_rope_store(gpu.ops, d_qkv.tensor, c.qk_norm ? d_qn.tensor : Tensor{}, c.qk_norm ? d_kn.tensor : Tensor{},
                      1e-6f, gpu_rope, d_pos.tensor, d_slots.tensor, d_q.tensor, d_k.tensor, d_v.tensor);
  gpu.sync();
  expect_close(label + " q", download_f32(d_q), round_to(c.q_out, want_q), tolerance_for(c.q_out));
  expect_close(label + " k cache", download_f32(d_k), round_to(c.cache, want_k), tolerance_for(c.cache));
  expect_close(label + " v cache", download_f32(d_v), round_to(c.cache, want_v), kExact);
}

TEST_F(CudaQkvRopeStore, MatchesCpu) {
  const QkvCase cases[] = {
      {1, 32, 8, 128, 64, false, DType::BF16, DType::BF16, DType::BF16, 1.0f},  // Llama-3-8B decode, GQA 4
      {7, 8, 8, 64, 33, false, DType::F32, DType::F32, DType::F32, 1.0f},      // GQA 1
      {5, 32, 4, 128, 40, true, DType::BF16, DType::F32, DType::F16, 1.0f},    // Qwen3-style norms, GQA 8
      {3, 16, 1, 128, 17, true, DType::F32, DType::BF16, DType::BF16, 1.2f},   // GQA 16, scaled cos/sin
      {2, 4, 2, 80, 9, false, DType::F16, DType::F32, DType::F32, 1.0f},       // half = 40: partial warp
      {2, 2, 1, 256, 5, true, DType::F32, DType::F32, DType::F32, 1.0f},       // hd 256
  };
  for (const QkvCase& c : cases) {
    std::vector<uint64_t> seeds;
    for (int i = 0; i < 6; ++i) seeds.push_back(seed());
    // Distinct random rows of the cache.
    std::vector<int32_t> slots;
    std::vector<int32_t> pool = random_ints(static_cast<size_t>(c.capacity), seed(), 0, 1 << 30);
    std::vector<int32_t> order(static_cast<size_t>(c.capacity));
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return pool[static_cast<size_t>(a)] < pool[static_cast<size_t>(b)];
    });
    for (int64_t t = 0; t < c.tokens; ++t) slots.push_back(order[static_cast<size_t>(t)]);
    run_qkv_case(cpu_, gpu_, c, seeds, slots);
    expect_no_device_errors();
  }
}

TEST_F(CudaQkvRopeStore, OutOfRangeSlotIsReportedAndSkipped) {
  const QkvCase c{3, 8, 2, 64, 16, false, DType::BF16, DType::BF16, DType::BF16, 1.0f};
  std::vector<uint64_t> seeds;
  for (int i = 0; i < 6; ++i) seeds.push_back(seed());
  run_qkv_case(cpu_, gpu_, c, seeds, {5, -1, 16});
  try {
    gpu_.cuda->check_device_errors();
    ADD_FAILURE() << "an out-of-range slot was not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("slot"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// silu_mul

TEST_F(CudaSiluMul, MatchesCpu) {
  struct Case {
    int64_t tokens, inter;
    DType in, out;
    size_t offset;
  };
  const Case cases[] = {
      {1, 14336, DType::BF16, DType::BF16, 0}, {4, 14336, DType::F32, DType::BF16, 0},
      {33, 77, DType::F32, DType::F32, 0},     {3, 8, DType::F16, DType::F32, 0},
      {5, 1024, DType::BF16, DType::F16, 2},   {70000, 8, DType::BF16, DType::BF16, 0},  // rows > grid.y limit
  };
  for (const Case& c : cases) {
    const std::string label =
        "T=" + std::to_string(c.tokens) + " I=" + std::to_string(c.inter) + " " + name_of(c.in) + "->" + name_of(c.out);
    SCOPED_TRACE(label);
    std::vector<float> gu = round_to(c.in, random_floats(static_cast<size_t>(c.tokens * 2 * c.inter), seed(), -6.0f, 6.0f));
    std::vector<float> want(static_cast<size_t>(c.tokens * c.inter));
    Tensor cpu_out = cpu_tensor(want, {c.tokens, c.inter});
    ops::silu_mul(cpu_.ops, cpu_tensor(gu, {c.tokens, 2 * c.inter}), cpu_out);
    DeviceTensor d_gu = upload_tensor(gu, c.in, {c.tokens, 2 * c.inter}, c.offset);
    DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.inter});
    poison(d_out);
    ops::silu_mul(gpu_.ops, d_gu.tensor, d_out.tensor);
    gpu_.sync();
    expect_close(label, download_f32(d_out), round_to(c.out, want), tolerance_for(c.out));
  }
}

// ---------------------------------------------------------------------------------------------
// linear_swiglu: the down projection with SwiGLU computed on load (fused GEMV, T <= 2), or through
// silu_mul into the workspace and then the GEMV (T <= 8), the small-M GEMM (T <= 128, equal 16-bit
// dtypes, I a multiple of 64) or cuBLASLt (beyond, or what the small-M GEMM declines), against
// silu_mul + linear on the CPU.

struct SwigluCase {
  int64_t tokens, n, inter;
  DType weight, gate_up, out;
  size_t gu_offset = 0;
  double tolerance = -1.0;  // < 0: see default_tolerance
};

// The fused GEMV computes silu with the fast exp and divide (a few ulp per activation in fp32):
// kTolSwigluF32.

// F32 outputs: fp32 activations (fused at T <= 2, or an F32 gate_up) are held to kTolSwigluF32;
// beyond two tokens a 16-bit gate_up gives 16-bit activations, so 16-bit precision.
double default_tolerance(const SwigluCase& c) {
  if (c.out != DType::F32) return tolerance_for(c.out);
  return c.tokens <= 2 || c.gate_up == DType::F32 ? kTolSwigluF32 : kTol16;
}

// Runs one case on the CPU reference and on `gpu_ops` (the test's context or one with a smaller
// workspace).
void run_swiglu_case(CpuTestContext& cpu, ops::OpContext& gpu_ops, const SwigluCase& c, uint64_t seed_w,
                     uint64_t seed_x) {
  const std::string label = "T=" + std::to_string(c.tokens) + " N=" + std::to_string(c.n) + " I=" +
                            std::to_string(c.inter) + " W " + name_of(c.weight) + " gate_up " + name_of(c.gate_up) +
                            " out " + name_of(c.out) + (c.gu_offset ? " misaligned gate_up" : "");
  SCOPED_TRACE(label);
  std::vector<float> w = round_to(c.weight, random_floats(static_cast<size_t>(c.n * c.inter), seed_w));
  // Gates over [-5, 5] cover both tails of silu.
  std::vector<float> gu =
      round_to(c.gate_up, random_floats(static_cast<size_t>(c.tokens * 2 * c.inter), seed_x, -5.0f, 5.0f));
  std::vector<float> want(static_cast<size_t>(c.tokens * c.n));
  Tensor cpu_out = cpu_tensor(want, {c.tokens, c.n});
  ops::linear_swiglu(cpu.ops, cpu_tensor(gu, {c.tokens, 2 * c.inter}), cpu_tensor(w, {c.n, c.inter}), cpu_out);

  DeviceTensor d_w = upload_tensor(w, c.weight, {c.n, c.inter});
  DeviceTensor d_gu = upload_tensor(gu, c.gate_up, {c.tokens, 2 * c.inter}, c.gu_offset);
  DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.n});
  poison(d_out);
  ops::linear_swiglu(gpu_ops, d_gu.tensor, d_w.tensor, d_out.tensor);
  gpu_ops.cuda->synchronize();
  const double tolerance = c.tolerance >= 0 ? c.tolerance : default_tolerance(c);
  expect_close(label, download_f32(d_out), round_to(c.out, want), tolerance);
}

TEST_F(CudaLinearSwiglu, DecodeMatchesCpu) {
  const SwigluCase cases[] = {
      // Llama-3-8B down projection at T = 1, 2 (fused) and a 4-token verification batch.
      {1, 4096, 14336, DType::BF16, DType::BF16, DType::BF16},
      {1, 4096, 14336, DType::BF16, DType::BF16, DType::F32},
      {2, 4096, 14336, DType::BF16, DType::BF16, DType::F32},
      {4, 4096, 14336, DType::BF16, DType::BF16, DType::BF16},
      // Every token-count template and dtype pairing, odd row counts.
      {1, 257, 4096, DType::BF16, DType::F32, DType::F32},  // full-precision mode: F32 gate_up
      {2, 300, 1024, DType::F32, DType::F32, DType::F32},
      {3, 129, 2048, DType::F16, DType::F16, DType::F16},
      {5, 64, 4096, DType::BF16, DType::BF16, DType::F32},  // few rows: K split over warps
      {8, 96, 768, DType::F16, DType::BF16, DType::F32},
      {7, 33, 4104, DType::BF16, DType::BF16, DType::BF16},
      // Scalar path: I not a multiple of the vector width, or a misaligned gate_up view.
      {1, 37, 1001, DType::BF16, DType::BF16, DType::F32},
      {2, 45, 102, DType::F32, DType::F32, DType::F32},
      {2, 50, 256, DType::BF16, DType::BF16, DType::F32, 2},
      {3, 50, 256, DType::BF16, DType::BF16, DType::F32, 2},  // through the workspace: scalar silu_mul
  };
  for (const SwigluCase& c : cases) run_swiglu_case(cpu_, gpu_.ops, c, seed(), seed());
}

TEST_F(CudaLinearSwiglu, LargeTokenCountsMatchCpu) {
  // Equal dtypes go through silu_mul (16-bit activations) and a GEMM (the small-M one up to 128
  // tokens where I is a multiple of 64, else cuBLASLt): bf16-GEMM precision.
  constexpr double kTolGemmF32 = 1e-4;
  const SwigluCase cases[] = {
      {9, 256, 512, DType::BF16, DType::BF16, DType::BF16},
      {64, 1000, 1024, DType::BF16, DType::BF16, DType::F32, 0, kTol16},
      {33, 384, 4096, DType::F16, DType::F16, DType::F16},
      {70, 130, 264, DType::BF16, DType::BF16, DType::BF16, 2},  // misaligned gate_up: scalar silu_mul
      {19, 77, 99, DType::F32, DType::F32, DType::F32, 0, kTolGemmF32},  // fp32 cuBLASLt, exact silu
      {140, 300, 1024, DType::BF16, DType::BF16, DType::F32, 0, kTol16},  // past the small-M range: cuBLASLt
      // cuBLASLt lacks F32 weights -> BF16 out: the chunk falls back to the fused GEMV.
      {12, 64, 300, DType::F32, DType::F32, DType::BF16},
      // Mixed dtypes stay on the fused GEMV in token groups.
      {20, 200, 512, DType::BF16, DType::F16, DType::F16},
      {40, 128, 1024, DType::BF16, DType::F32, DType::F32},
  };
  for (const SwigluCase& c : cases) run_swiglu_case(cpu_, gpu_.ops, c, seed(), seed());
}

TEST_F(CudaLinearSwiglu, SmallWorkspaceChunksOrFallsBack) {
  // 1 MB of workspace holds 64 activation rows of I = 4096 (half of it; cuBLASLt gets the rest):
  // 150 tokens run as three chunks. 64 KB holds 4 rows, too few: the fused GEMV takes the call
  // (in groups of two tokens, fp32 activations).
  for (const size_t workspace : {size_t{1} << 20, size_t{64} << 10}) {
    SCOPED_TRACE("workspace " + std::to_string(workspace) + " bytes");
    std::unique_ptr<cuda::CudaContext> small = cuda::CudaContext::create(0, workspace);
    ops::OpContext small_ops;
    small_ops.cuda = small.get();
    run_swiglu_case(cpu_, small_ops, {150, 256, 4096, DType::BF16, DType::BF16, DType::BF16}, seed(), seed());
    run_swiglu_case(cpu_, small_ops, {20, 96, 4096, DType::BF16, DType::BF16, DType::F32, 0, kTol16}, seed(),
                    seed());
    EXPECT_NO_THROW(small->check_device_errors());
  }
}

TEST_F(CudaLinearSwiglu, RejectsMismatchedShapes) {
  DeviceTensor gu = device_tensor(DType::BF16, {2, 64});
  DeviceTensor w = device_tensor(DType::BF16, {16, 30});  // needs gate_up rows of 60
  DeviceTensor out = device_tensor(DType::BF16, {2, 16});
  EXPECT_THROW(ops::linear_swiglu(gpu_.ops, gu.tensor, w.tensor, out.tensor), Error);
  DeviceTensor w_ok = device_tensor(DType::BF16, {16, 32});
  DeviceTensor out_bad = device_tensor(DType::BF16, {2, 17});
  EXPECT_THROW(ops::linear_swiglu(gpu_.ops, gu.tensor, w_ok.tensor, out_bad.tensor), Error);
}

// ---------------------------------------------------------------------------------------------
// argmax

std::vector<int32_t> cpu_argmax(CpuTestContext& cpu, std::vector<float>& logits, int64_t rows, int64_t vocab) {
  std::vector<int32_t> out(static_cast<size_t>(rows));
  Tensor t_out = cpu_tensor(out, {rows});
  ops::argmax(cpu.ops, cpu_tensor(logits, {rows, vocab}), t_out);
  return out;
}

std::vector<int32_t> gpu_argmax(CudaTestContext& gpu, const std::vector<float>& logits, DType dtype, int64_t rows,
                                int64_t vocab, size_t offset = 0) {
  DeviceTensor d_logits = upload_tensor(logits, dtype, {rows, vocab}, offset);
  DeviceTensor d_out = device_tensor(DType::I32, {rows});
  poison(d_out);
  ops::argmax(gpu.ops, d_logits.tensor, d_out.tensor);
  gpu.sync();
  return download_ints(d_out);
}

TEST_F(CudaArgmax, MatchesCpu) {
  struct Case {
    int64_t rows, vocab;
    DType dtype;
    size_t offset;
  };
  const Case cases[] = {
      {1, 128256, DType::F32, 0}, {1, 151936, DType::BF16, 0}, {3, 128256, DType::F16, 0},
      {64, 151936, DType::F32, 0}, {300, 5000, DType::BF16, 0},  // many rows: one block per row
      {2, 100003, DType::F32, 0}, {5, 77, DType::BF16, 0},       {1, 1, DType::F32, 0},
      {4, 4096, DType::F32, 4},                                  // misaligned: scalar path
  };
  for (const Case& c : cases) {
    const std::string label = "R=" + std::to_string(c.rows) + " V=" + std::to_string(c.vocab) + " " + name_of(c.dtype);
    SCOPED_TRACE(label);
    std::vector<float> logits =
        round_to(c.dtype, random_floats(static_cast<size_t>(c.rows * c.vocab), seed(), -20.0f, 20.0f));
    // A planted tie at the maximum in every other row: the lower index must win.
    std::vector<int32_t> spots = random_ints(static_cast<size_t>(2 * c.rows), seed(), 0, static_cast<int32_t>(c.vocab - 1));
    for (int64_t r = 0; r < c.rows; r += 2) {
      float* row = &logits[static_cast<size_t>(r * c.vocab)];
      row[spots[static_cast<size_t>(2 * r)]] = 30.0f;
      row[spots[static_cast<size_t>(2 * r + 1)]] = 30.0f;
    }
    const std::vector<int32_t> want = cpu_argmax(cpu_, logits, c.rows, c.vocab);
    const std::vector<int32_t> got = gpu_argmax(gpu_, logits, c.dtype, c.rows, c.vocab, c.offset);
    EXPECT_EQ(got, want) << label;
  }
}

TEST_F(CudaArgmax, TiesNansAndSignedZerosFollowCpu) {
  const int64_t vocab = 128256;
  std::vector<std::vector<float>> rows;
  std::vector<float> base = random_floats(static_cast<size_t>(vocab), seed(), -5.0f, -1.0f);
  {  // NaNs scattered (not at 0) are never chosen
    std::vector<float> r = base;
    r[10] = NAN, r[70000] = NAN, r[vocab - 1] = NAN;
    r[50000] = 3.0f;
    rows.push_back(r);
  }
  {  // NaN at element 0: the CPU answers 0
    std::vector<float> r = base;
    r[0] = NAN;
    r[99999] = 7.0f;
    rows.push_back(r);
  }
  {  // -0 and +0 tie: lowest index wins
    std::vector<float> r = base;
    r[70001] = -0.0f, r[90000] = 0.0f;
    rows.push_back(r);
  }
  {  // all -inf: index 0
    rows.push_back(std::vector<float>(static_cast<size_t>(vocab), -INFINITY));
  }
  {  // the maximum at the last element, another at the first chunk boundary
    std::vector<float> r = base;
    r[vocab - 1] = 100.0f;
    r[2048] = 99.0f;
    rows.push_back(r);
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE("row case " + std::to_string(i));
    std::vector<float> logits = rows[i];
    const std::vector<int32_t> want = cpu_argmax(cpu_, logits, 1, vocab);
    EXPECT_EQ(gpu_argmax(gpu_, logits, DType::F32, 1, vocab), want);
    std::vector<float> rounded = round_to(DType::BF16, rows[i]);  // creates ties of its own
    const std::vector<int32_t> want_bf16 = cpu_argmax(cpu_, rounded, 1, vocab);
    EXPECT_EQ(gpu_argmax(gpu_, rounded, DType::BF16, 1, vocab), want_bf16);
  }
}

// ---------------------------------------------------------------------------------------------
// convert

TEST_F(CudaConvert, EveryDtypePairIsExact) {
  const DType dtypes[] = {DType::F32, DType::BF16, DType::F16};
  const int64_t sizes[] = {1, 7, 4096, 100003};
  for (DType src : dtypes)
    for (DType dst : dtypes)
      for (int64_t n : sizes)
        for (bool misaligned : {false, true}) {
          const std::string label = name_of(src) + "->" + name_of(dst) + " n=" + std::to_string(n) +
                                    (misaligned ? " misaligned" : "");
          SCOPED_TRACE(label);
          std::vector<float> values = round_to(src, random_floats(static_cast<size_t>(n), seed(), -100.0f, 100.0f));
          // One element off a 16-byte boundary: aligned for scalar access, not for vectors.
          DeviceTensor d_src = upload_tensor(values, src, {n}, misaligned ? dtype_size(src) : 0);
          DeviceTensor d_dst = device_tensor(dst, {n}, misaligned ? dtype_size(dst) : 0);
          poison(d_dst);
          ops::convert(gpu_.ops, d_src.tensor, d_dst.tensor);
          gpu_.sync();
          expect_close(label, download_f32(d_dst), round_to(dst, values), kExact);
        }
}

// ---------------------------------------------------------------------------------------------
// CUDA graph capture: the ops neither allocate nor synchronise, so a step captured with the
// strictest capture mode replays to the same bits as eager execution.

class GraphStep {
 public:
  GraphStep(uint64_t s0, uint64_t s1, uint64_t s2, uint64_t s3)
      : x_(upload_tensor(random_floats(kHidden, s0), DType::F32, {1, kHidden})),
        norm_(upload_tensor(random_floats(kHidden, s1, 0.5f, 1.5f), DType::BF16, {kHidden})),
        w1_(upload_tensor(random_floats(2 * kInter * kHidden, s2), DType::BF16, {2 * kInter, kHidden})),
        w2_(upload_tensor(random_floats(kVocab * kInter, s3), DType::BF16, {kVocab, kInter})),
        xs_(upload_tensor(random_floats(kBatch * kHidden, s0 + 1), DType::BF16, {kBatch, kHidden})),
        h_(device_tensor(DType::BF16, {1, kHidden})),
        gu_(device_tensor(DType::BF16, {1, 2 * kInter})),
        act_(device_tensor(DType::BF16, {1, kInter})),
        logits_(device_tensor(DType::F32, {1, kVocab})),
        batch_out_(device_tensor(DType::BF16, {kBatch, 2 * kInter})),
        xl_(upload_tensor(random_floats(kLongBatch * kHidden, s0 + 2), DType::BF16, {kLongBatch, kHidden})),
        long_out_(device_tensor(DType::BF16, {kLongBatch, 2 * kInter})),
        token_(device_tensor(DType::I32, {1})) {}

  void enqueue(ops::OpContext& ctx) {
    ops::rms_norm(ctx, x_.tensor, norm_.tensor, 1e-5f, h_.tensor);
    ops::linear(ctx, h_.tensor, w1_.tensor, Tensor{}, gu_.tensor);          // GEMV
    ops::silu_mul(ctx, gu_.tensor, act_.tensor);
    ops::linear(ctx, act_.tensor, w2_.tensor, Tensor{}, logits_.tensor);    // GEMV, F32 out
    ops::argmax(ctx, logits_.tensor, token_.tensor);                        // two passes via workspace
    ops::linear(ctx, xs_.tensor, w1_.tensor, Tensor{}, batch_out_.tensor);  // small-M GEMM (+ reduce)
    ops::linear(ctx, xl_.tensor, w1_.tensor, Tensor{}, long_out_.tensor);   // cuBLASLt
  }
  void poison_outputs() {
    for (DeviceTensor* d : {&h_, &gu_, &act_, &logits_, &batch_out_, &long_out_, &token_}) poison(*d);
  }
  std::vector<std::vector<float>> results() const {
    std::vector<std::vector<float>> r;
    for (const DeviceTensor* d : {&h_, &gu_, &act_, &logits_, &batch_out_, &long_out_}) r.push_back(download_f32(*d));
    r.push_back({static_cast<float>(download_ints(token_)[0])});
    return r;
  }

 private:
  static constexpr int64_t kHidden = 1024, kInter = 1536, kVocab = 32000, kBatch = 24, kLongBatch = 136;
  DeviceTensor x_, norm_, w1_, w2_, xs_, h_, gu_, act_, logits_, batch_out_, xl_, long_out_, token_;
};

void run_captured(CudaTestContext& gpu, GraphStep& step) {
  auto stream = static_cast<cudaStream_t>(gpu.cuda->stream());
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  SPECULA_TEST_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  try {
    step.enqueue(gpu.ops);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  SPECULA_TEST_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  SPECULA_TEST_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  SPECULA_TEST_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  gpu.sync();
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

void expect_same_results(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) expect_close("output " + std::to_string(i), a[i], b[i], kExact);
}

TEST_F(CudaGraph, CapturedStepMatchesEagerAfterWarmUp) {
  GraphStep step(seed(), seed(), seed(), seed());
  step.poison_outputs();
  step.enqueue(gpu_.ops);
  gpu_.sync();
  const auto eager = step.results();
  step.poison_outputs();
  ASSERT_NO_THROW(run_captured(gpu_, step));
  expect_same_results(step.results(), eager);
  expect_no_device_errors();
}

TEST_F(CudaGraph, FirstUseOfAShapeMayBeCaptured) {
  // Cold caches: cuBLASLt's heuristic query and the small-M GEMM's shared-memory opt-in run during
  // capture.
  GraphStep step(seed(), seed(), seed(), seed());
  step.poison_outputs();
  ASSERT_NO_THROW(run_captured(gpu_, step));
  const auto captured = step.results();
  step.poison_outputs();
  step.enqueue(gpu_.ops);
  gpu_.sync();
  expect_same_results(step.results(), captured);
  expect_no_device_errors();
}

// ---------------------------------------------------------------------------------------------
// Programmatic dependent launch (ops/cuda/pdl.cuh). The decode-path kernels may start before
// their predecessor has finished and must wait for it before touching its data; a kernel that
// read or wrote too early would see stale values only under some timings, so the chain below is
// run three ways on one device -- eager without PDL, eager with PDL, and captured once (with
// PDL) as a graph replayed step after step -- and the three must agree bit for bit (the kernels
// are deterministic). The eager result must also match the CPU reference run on the same
// 16-bit-rounded intermediates.

TEST_F(CudaPdl, EnabledWhereSupported) {
  cuda::CudaContext& cuda = *gpu_.cuda;
  const char* env = std::getenv("SPECULA_NO_PDL");
  const bool env_off = env != nullptr && env[0] != '\0' && std::string(env) != "0";
  std::printf("  sm_%d%d: programmatic dependent launch %s%s\n", cuda.info().sm_major, cuda.info().sm_minor,
              cuda.programmatic_launch() ? "on" : "off", env_off ? " (SPECULA_NO_PDL set)" : "");
  if (cuda.info().sm_major < 9) EXPECT_FALSE(cuda.programmatic_launch());
  if (cuda.info().sm_major >= 9 && !env_off)
    EXPECT_TRUE(cuda.programmatic_launch()) << "sm_90+ device, yet the kernels are not launched with PDL "
                                               "(were they built for this architecture?)";
  const bool supported = cuda.set_programmatic_launch(true);
  if (cuda.info().sm_major < 9) EXPECT_FALSE(supported);
  EXPECT_FALSE(cuda.set_programmatic_launch(false));
  EXPECT_FALSE(cuda.programmatic_launch());
  EXPECT_EQ(cuda.set_programmatic_launch(true), supported);
}

namespace chain {

// Two small transformer layers: GQA 4 with head_dim 64 (the tensor-core attention), a KV cache of
// two 64-row tiles filled past the first tile so both KV splits work and the combine kernel runs.
constexpr int64_t kLayers = 2, kHidden = 512, kHeads = 8, kKvHeads = 2, kHeadDim = 64, kInter = 768;
constexpr int64_t kQkv = (kHeads + 2 * kKvHeads) * kHeadDim, kAttn = kHeads * kHeadDim;
constexpr int64_t kCapacity = 128, kPrefix = 90;
constexpr int kSteps = 5;
constexpr int32_t kPositionOffset = 1000;  // RoPE positions differ from cache rows, as in draft trees
constexpr float kEps = 1e-5f;
constexpr float kResidualScale = 0.75f;  // a muP-style residual scale, so Accumulate's alpha is exercised
// GPU and CPU differ by accumulation order, rounding flips of 16-bit intermediates and the
// tensor-core attention's bf16 probabilities, and the differences compound over two layers and
// five appended steps (measured on an H100: up to 4.2e-2 at T=3, step 4, with PDL off -- so not
// a PDL effect; PDL runs are compared bit for bit against the non-PDL run). A race would show as
// gross errors.
constexpr double kTolerance = 6e-2;

// The model and the initial state as floats; everything the GPU stores in bf16 is bf16-exact.
struct Host {
  std::vector<std::vector<float>> norm_in, norm_post, wqkv, bqkv, wo, wgu, wd, k_cache, v_cache;
  std::vector<float> x0, inv_freq;
};

Host make_host(uint64_t seed, int64_t tokens) {
  Host h;
  uint64_t n = 0;
  auto next = [&] { return seed + 0x9e3779b97f4a7c15ull * ++n; };
  // Uniform with unit output variance for unit-variance inputs.
  auto weights = [&](int64_t rows, int64_t k) {
    const float a = std::sqrt(3.0f / static_cast<float>(k));
    return round_to(DType::BF16, random_floats(static_cast<size_t>(rows * k), next(), -a, a));
  };
  const size_t cache = static_cast<size_t>(kKvHeads * kCapacity * kHeadDim);
  for (int64_t l = 0; l < kLayers; ++l) {
    h.norm_in.push_back(round_to(DType::BF16, random_floats(kHidden, next(), 0.5f, 1.5f)));
    h.norm_post.push_back(round_to(DType::BF16, random_floats(kHidden, next(), 0.5f, 1.5f)));
    h.wqkv.push_back(weights(kQkv, kHidden));
    h.bqkv.push_back(round_to(DType::BF16, random_floats(kQkv, next(), -0.1f, 0.1f)));
    h.wo.push_back(weights(kHidden, kAttn));
    h.wgu.push_back(weights(2 * kInter, kHidden));
    h.wd.push_back(weights(kHidden, kInter));
    h.k_cache.push_back(round_to(DType::BF16, random_floats(cache, next())));
    h.v_cache.push_back(round_to(DType::BF16, random_floats(cache, next())));
  }
  h.x0 = random_floats(static_cast<size_t>(tokens * kHidden), next());
  for (int64_t i = 0; i < kHeadDim / 2; ++i)
    h.inv_freq.push_back(1.0f / std::pow(500000.0f, static_cast<float>(2 * i) / static_cast<float>(kHeadDim)));
  return h;
}

// Cache rows and RoPE positions of step `step`'s tokens.
std::vector<int32_t> step_slots(int step, int64_t tokens) {
  std::vector<int32_t> slots;
  for (int64_t j = 0; j < tokens; ++j) slots.push_back(static_cast<int32_t>(kPrefix + step * tokens + j));
  return slots;
}
std::vector<int32_t> step_positions(int step, int64_t tokens) {
  std::vector<int32_t> pos = step_slots(step, tokens);
  for (int32_t& p : pos) p += kPositionOffset;
  return pos;
}

// The chain on the GPU: BF16 weights, activations and caches, F32 residual stream.
class Gpu {
 public:
  Gpu(const Host& h, int64_t tokens) {
    for (int64_t l = 0; l < kLayers; ++l) {
      const auto i = static_cast<size_t>(l);
      norm_in_.push_back(upload_tensor(h.norm_in[i], DType::BF16, {kHidden}));
      norm_post_.push_back(upload_tensor(h.norm_post[i], DType::BF16, {kHidden}));
      wqkv_.push_back(upload_tensor(h.wqkv[i], DType::BF16, {kQkv, kHidden}));
      bqkv_.push_back(upload_tensor(h.bqkv[i], DType::BF16, {kQkv}));
      wo_.push_back(upload_tensor(h.wo[i], DType::BF16, {kHidden, kAttn}));
      wgu_.push_back(upload_tensor(h.wgu[i], DType::BF16, {2 * kInter, kHidden}));
      wd_.push_back(upload_tensor(h.wd[i], DType::BF16, {kHidden, kInter}));
      k_.push_back(upload_tensor(h.k_cache[i], DType::BF16, {kKvHeads, kCapacity, kHeadDim}));
      v_.push_back(upload_tensor(h.v_cache[i], DType::BF16, {kKvHeads, kCapacity, kHeadDim}));
    }
    inv_freq_ = upload_tensor(h.inv_freq, DType::F32, {kHeadDim / 2});
    x_ = upload_tensor(h.x0, DType::F32, {tokens, kHidden});
    h_ = device_tensor(DType::BF16, {tokens, kHidden});
    qkv_ = device_tensor(DType::BF16, {tokens, kQkv});
    q_ = device_tensor(DType::BF16, {tokens, kHeads, kHeadDim});
    a_ = device_tensor(DType::BF16, {tokens, kAttn});
    gu_ = device_tensor(DType::BF16, {tokens, 2 * kInter});
    pos_ = device_tensor(DType::I32, {tokens});
    slots_ = device_tensor(DType::I32, {tokens});
  }

  void set_step(int step, int64_t tokens) {
    pos_.buffer.upload(step_positions(step, tokens), pos_.offset);
    slots_.buffer.upload(step_slots(step, tokens), slots_.offset);
  }

  void enqueue(ops::OpContext& ctx) {
    const ops::RopeParams rope{inv_freq_.tensor, 1.0f};
    const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    for (size_t l = 0; l < static_cast<size_t>(kLayers); ++l) {
      ops::rms_norm_linear(ctx, x_.tensor, norm_in_[l].tensor, kEps, wqkv_[l].tensor, bqkv_[l].tensor, h_.tensor,
                           qkv_.tensor);
      ops::qkv_rope_store(ctx, qkv_.tensor, Tensor{}, Tensor{}, kEps, rope, pos_.tensor, slots_.tensor, q_.tensor,
                          k_[l].tensor, v_[l].tensor);
      ops::attention(ctx, q_.tensor, k_[l].tensor, v_[l].tensor, slots_.tensor, scale, a_.tensor);
      ops::linear(ctx, a_.tensor, wo_[l].tensor, Tensor{}, x_.tensor, kResidualScale, ops::OutputMode::Accumulate);
      ops::rms_norm_linear(ctx, x_.tensor, norm_post_[l].tensor, kEps, wgu_[l].tensor, Tensor{}, h_.tensor,
                           gu_.tensor);
      ops::linear_swiglu(ctx, gu_.tensor, wd_[l].tensor, x_.tensor, kResidualScale, ops::OutputMode::Accumulate);
    }
  }

  // Residual, last gate/up output, then every layer's K and V caches. (The normed scratch is
  // written only on the unfused path, so it is not part of the compared state.)
  std::vector<std::vector<float>> state() const {
    std::vector<std::vector<float>> s{download_f32(x_), download_f32(gu_)};
    for (size_t l = 0; l < static_cast<size_t>(kLayers); ++l) {
      s.push_back(download_f32(k_[l]));
      s.push_back(download_f32(v_[l]));
    }
    return s;
  }

 private:
  std::vector<DeviceTensor> norm_in_, norm_post_, wqkv_, bqkv_, wo_, wgu_, wd_, k_, v_;
  DeviceTensor inv_freq_, x_, h_, qkv_, q_, a_, gu_, pos_, slots_;
};

void round_bf16(std::vector<float>& v) {
  for (float& x : v) x = round_to(DType::BF16, x);
}

// The same chain on the CPU reference, rounding to bf16 wherever the GPU stores bf16 (the normed
// row only on the GPU's unfused path, which the tolerance covers).
class Cpu {
 public:
  Cpu(const Host& h, int64_t tokens)
      : h_(h), tokens_(tokens), x_(h.x0), hn_(static_cast<size_t>(tokens * kHidden)),
        qkv_(static_cast<size_t>(tokens * kQkv)), q_(static_cast<size_t>(tokens * kAttn)),
        a_(static_cast<size_t>(tokens * kAttn)), gu_(static_cast<size_t>(tokens * 2 * kInter)) {}

  void step(CpuTestContext& cpu, int step) {
    const int64_t T = tokens_;
    std::vector<int32_t> pos = step_positions(step, T), slots = step_slots(step, T);
    const ops::RopeParams rope{cpu_tensor(h_.inv_freq, {kHeadDim / 2}), 1.0f};
    const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
    ops::OpContext& ctx = cpu.ops;
    for (size_t l = 0; l < static_cast<size_t>(kLayers); ++l) {
      Tensor x = cpu_tensor(x_, {T, kHidden}), hn = cpu_tensor(hn_, {T, kHidden});
      Tensor qkv = cpu_tensor(qkv_, {T, kQkv}), q = cpu_tensor(q_, {T, kHeads, kHeadDim});
      Tensor a = cpu_tensor(a_, {T, kAttn}), gu = cpu_tensor(gu_, {T, 2 * kInter});
      Tensor k = cpu_tensor(h_.k_cache[l], {kKvHeads, kCapacity, kHeadDim});
      Tensor v = cpu_tensor(h_.v_cache[l], {kKvHeads, kCapacity, kHeadDim});
      ops::rms_norm_linear(ctx, x, cpu_tensor(h_.norm_in[l], {kHidden}), kEps, cpu_tensor(h_.wqkv[l], {kQkv, kHidden}),
                           cpu_tensor(h_.bqkv[l], {kQkv}), hn, qkv);
      round_bf16(qkv_);
      ops::qkv_rope_store(ctx, qkv, Tensor{}, Tensor{}, kEps, rope, cpu_tensor(pos, {T}), cpu_tensor(slots, {T}), q, k,
                          v);
      round_bf16(q_);
      round_bf16(h_.k_cache[l]);
      round_bf16(h_.v_cache[l]);
      ops::attention(ctx, q, k, v, cpu_tensor(slots, {T}), scale, a);
      round_bf16(a_);
      ops::linear(ctx, a, cpu_tensor(h_.wo[l], {kHidden, kAttn}), Tensor{}, x, kResidualScale,
                  ops::OutputMode::Accumulate);
      ops::rms_norm_linear(ctx, x, cpu_tensor(h_.norm_post[l], {kHidden}), kEps,
                           cpu_tensor(h_.wgu[l], {2 * kInter, kHidden}), Tensor{}, hn, gu);
      round_bf16(gu_);
      ops::linear_swiglu(ctx, gu, cpu_tensor(h_.wd[l], {kHidden, kInter}), x, kResidualScale,
                         ops::OutputMode::Accumulate);
    }
  }

  std::vector<std::vector<float>> state() const {
    std::vector<std::vector<float>> s{x_, gu_};
    for (size_t l = 0; l < static_cast<size_t>(kLayers); ++l) {
      s.push_back(h_.k_cache[l]);
      s.push_back(h_.v_cache[l]);
    }
    return s;
  }

 private:
  Host h_;  // weights, plus the caches this chain updates
  int64_t tokens_;
  std::vector<float> x_, hn_, qkv_, q_, a_, gu_;
};

const char* const kStateNames[] = {"residual", "gate_up", "k cache 0", "v cache 0", "k cache 1", "v cache 1"};

}  // namespace chain

// A stream's work captured once as a graph and replayable.
class CapturedGraph {
 public:
  template <typename Enqueue>
  CapturedGraph(cudaStream_t stream, Enqueue&& enqueue) : stream_(stream) {
    SPECULA_TEST_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeGlobal));
    try {
      enqueue();
    } catch (...) {
      cudaGraph_t partial = nullptr;
      cudaStreamEndCapture(stream_, &partial);
      if (partial) cudaGraphDestroy(partial);
      throw;
    }
    SPECULA_TEST_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph_));
    SPECULA_TEST_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
  }
  ~CapturedGraph() {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;

  void launch() { SPECULA_TEST_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

  // Edges along which the downstream kernel may start early (what PDL launches become).
  size_t programmatic_edges() const {
    size_t count = 0;
    SPECULA_TEST_CUDA_CHECK(cudaGraphGetEdges(graph_, nullptr, nullptr, nullptr, &count));
    std::vector<cudaGraphNode_t> from(count), to(count);
    std::vector<cudaGraphEdgeData> data(count);
    SPECULA_TEST_CUDA_CHECK(cudaGraphGetEdges(graph_, from.data(), to.data(), data.data(), &count));
    size_t programmatic = 0;
    for (size_t i = 0; i < count; ++i) programmatic += data[i].type == cudaGraphDependencyTypeProgrammatic ? 1 : 0;
    return programmatic;
  }

 private:
  cudaStream_t stream_;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

TEST_F(CudaPdl, CapturedLayerChainMatchesEagerAndCpu) {
  using namespace chain;
  cuda::CudaContext& cuda = *gpu_.cuda;
  const bool supported = cuda.set_programmatic_launch(true);
  for (const int64_t tokens : {int64_t{1}, int64_t{3}}) {
    SCOPED_TRACE("T=" + std::to_string(tokens));
    const Host host = make_host(seed(), tokens);
    Cpu reference(host, tokens);
    Gpu plain(host, tokens), eager(host, tokens), graphed(host, tokens);

    cuda.set_programmatic_launch(true);
    CapturedGraph graph(static_cast<cudaStream_t>(cuda.stream()), [&] { graphed.enqueue(gpu_.ops); });
    std::printf("  T=%lld: PDL %s, %zu programmatic edges in the captured chain\n", static_cast<long long>(tokens),
                supported ? "on" : "unsupported", graph.programmatic_edges());

    for (int step = 0; step < kSteps; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      for (Gpu* g : {&plain, &eager, &graphed}) g->set_step(step, tokens);
      cuda.set_programmatic_launch(false);
      plain.enqueue(gpu_.ops);
      gpu_.sync();
      cuda.set_programmatic_launch(true);
      eager.enqueue(gpu_.ops);
      gpu_.sync();
      graph.launch();
      gpu_.sync();
      reference.step(cpu_, step);

      const auto want = plain.state(), got_eager = eager.state(), got_graph = graphed.state(),
                 want_cpu = reference.state();
      ASSERT_EQ(want.size(), std::size(kStateNames));
      for (size_t i = 0; i < want.size(); ++i) {
        const std::string name = kStateNames[i];
        expect_close(name + ", eager with PDL vs without", got_eager[i], want[i], kExact);
        expect_close(name + ", graph with PDL vs eager without", got_graph[i], want[i], kExact);
        expect_close(name + ", GPU vs CPU", want[i], want_cpu[i], kTolerance);
      }
    }
    expect_no_device_errors();
  }
  cuda.set_programmatic_launch(true);
}

}  // namespace

#endif  // SPECULA_WITH_CUDA
