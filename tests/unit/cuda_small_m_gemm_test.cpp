// The small-M tensor-core GEMM (ops/cuda/gemm_small_m.cu), called directly so each case is known
// to run on it, against the CPU reference (ops::linear on the CPU, fp32) on fresh random inputs:
// token counts across its range and every n8-tile instantiation (9, 10, 17, 33, 60, 61, 100, 128),
// row counts that leave a partial last tile (72, 1000, 4104), K of one unit (64: no tile shared
// between blocks, so no reduce kernel) up to 8192 (tiles shared by many blocks: split-K partials
// and the reduce), bf16 and f16, F32/BF16/F16 outputs, with and without bias, Overwrite and
// Accumulate, alpha != 1. Also: the operands it must decline, that it keeps to the workspace
// region it is given (linear_swiglu keeps its activations in front of it), linear_swiglu at 60
// tokens through the public op, and capture into a CUDA graph replayed on new inputs.
//
// Tolerances: the 16-bit inputs are exact in fp32 and so are their products; what differs from the
// CPU is only the order (and the tensor cores' internal rounding) of the fp32 accumulation over K
// and, for shared tiles, the sum of the blocks' partials. For K <= 8192 that stays well below 1e-4
// relative to the output's rms (test::compare), the bound the cuBLASLt GEMM tests use
// (cuda_ops_test.cpp) for F32 outputs; 16-bit outputs are compared with the reference rounded to
// their dtype, within 1e-2 (one rounding step of bf16 is 2^-8). Skipped, saying why, without a GPU
// or on one older than sm_90 (the build's target).
#ifdef SPECULA_WITH_CUDA

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/cuda_graph.h"
#include "specula/ops/cuda/gemm_small_m_plan.h"
#include "specula/ops/cuda/linear_impl.h"
#include "specula/ops/ops.h"

using namespace specula;
using namespace specula::test;

namespace {

constexpr DType kNoBias = DType::U8;
constexpr int kMinComputeMajor = 9;
constexpr double kTolGemmF32 = 1e-4;  // see the top

class CudaSmallMGemm : public CudaOpsTest {
 protected:
  void SetUp() override {
    CudaOpsTest::SetUp();
    if (IsSkipped()) return;
    if (gpu_.cuda->info().sm_major < kMinComputeMajor)
      GTEST_SKIP() << "the small-M GEMM is built for sm_90a; this device is sm_" << gpu_.cuda->info().sm_major
                   << gpu_.cuda->info().sm_minor;
  }
  // Whether the shape shares tiles between blocks on this device (split-K partials + reduce).
  bool splits(int64_t n, int64_t k) const {
    return ops::cuda_impl::small_m::any_split(
        ops::cuda_impl::small_m::make_partition(n, k, gpu_.cuda->info().multiprocessors));
  }
};

struct Case {
  int64_t tokens, n, k;
  DType weight, out;
  DType bias;  // kNoBias: none
  ops::OutputMode mode;
  float alpha;
};

std::string label_of(const Case& c) {
  return "T=" + std::to_string(c.tokens) + " N=" + std::to_string(c.n) + " K=" + std::to_string(c.k) + " W " +
         name_of(c.weight) + " out " + name_of(c.out) + (c.bias != kNoBias ? " bias " + name_of(c.bias) : "") +
         (c.mode == ops::OutputMode::Accumulate ? " accumulate" : "") + " alpha " + std::to_string(c.alpha);
}

double tolerance_of(DType out) { return out == DType::F32 ? kTolGemmF32 : kTol16; }

// Inputs of one case and the CPU reference result.
struct Reference {
  std::vector<float> w, x, bias, prior, want;
};

Reference make_reference(CpuTestContext& cpu, const Case& c, uint64_t s0, uint64_t s1, uint64_t s2, uint64_t s3) {
  Reference r;
  const bool has_bias = c.bias != kNoBias;
  r.w = round_to(c.weight, random_floats(static_cast<size_t>(c.n * c.k), s0));
  r.x = round_to(c.weight, random_floats(static_cast<size_t>(c.tokens * c.k), s1));
  if (has_bias) r.bias = round_to(c.bias, random_floats(static_cast<size_t>(c.n), s2));
  // What out holds before an Accumulate call: magnitudes like the product's.
  r.prior = round_to(c.out, random_floats(static_cast<size_t>(c.tokens * c.n), s3, -10.0f, 10.0f));
  r.want = c.mode == ops::OutputMode::Accumulate ? r.prior : std::vector<float>(r.prior.size());
  Tensor cpu_out = cpu_tensor(r.want, {c.tokens, c.n});
  ops::linear(cpu.ops, cpu_tensor(r.x, {c.tokens, c.k}), cpu_tensor(r.w, {c.n, c.k}),
              has_bias ? cpu_tensor(r.bias, {c.n}) : Tensor{}, cpu_out, c.alpha, c.mode);
  r.want = round_to(c.out, r.want);
  return r;
}

TEST_F(CudaSmallMGemm, MatchesCpuAtOddShapes) {
  using ops::OutputMode;
  const Case cases[] = {
      // K = 64: one unit per tile, never shared (no reduce), the direct epilogue only.
      {9, 72, 64, DType::BF16, DType::BF16, DType::F32, OutputMode::Overwrite, 1.0f},
      {33, 4104, 64, DType::F16, DType::F32, kNoBias, OutputMode::Accumulate, 0.5f},
      {128, 1000, 64, DType::BF16, DType::F32, DType::BF16, OutputMode::Overwrite, 2.0f},
      // Shared tiles: split-K partials and the reduce, including one 72-row tile shared by 128 blocks.
      {10, 1000, 8192, DType::F16, DType::F16, kNoBias, OutputMode::Accumulate, 1.25f},
      {17, 4104, 4160, DType::BF16, DType::F32, DType::F32, OutputMode::Overwrite, 1.0f},
      {60, 4104, 4160, DType::BF16, DType::BF16, DType::BF16, OutputMode::Accumulate, 0.75f},
      {61, 72, 8192, DType::BF16, DType::F32, kNoBias, OutputMode::Overwrite, 0.5f},
      {100, 1000, 4160, DType::F16, DType::F32, DType::F16, OutputMode::Accumulate, 1.0f},
      {128, 4104, 8192, DType::BF16, DType::F32, kNoBias, OutputMode::Accumulate, 1.0f},
      // The o_proj shape of verification: 60 rows into the F32 residual stream.
      {60, 4096, 4096, DType::BF16, DType::F32, kNoBias, OutputMode::Accumulate, 1.0f},
  };
  bool saw_split = false, saw_unsplit = false;
  for (const Case& c : cases) {
    const std::string label = label_of(c) + (splits(c.n, c.k) ? " (split)" : " (no split)");
    SCOPED_TRACE(label);
    (splits(c.n, c.k) ? saw_split : saw_unsplit) = true;
    const Reference r = make_reference(cpu_, c, seed(), seed(), seed(), seed());
    const bool has_bias = c.bias != kNoBias;
    DeviceTensor d_w = upload_tensor(r.w, c.weight, {c.n, c.k});
    DeviceTensor d_x = upload_tensor(r.x, c.weight, {c.tokens, c.k});
    DeviceTensor d_bias = has_bias ? upload_tensor(r.bias, c.bias, {c.n}) : DeviceTensor{};
    DeviceTensor d_out = upload_tensor(r.prior, c.out, {c.tokens, c.n});
    if (c.mode == OutputMode::Overwrite) poison(d_out);
    const bool ran = ops::cuda_impl::try_gemm_small_m(*gpu_.cuda, d_x.tensor, d_w.tensor,
                                                      has_bias ? d_bias.tensor : Tensor{}, d_out.tensor, c.alpha,
                                                      c.mode);
    ASSERT_TRUE(ran) << "the small-M GEMM declined a shape it is meant to take";
    gpu_.sync();
    expect_close(label, download_f32(d_out), r.want, tolerance_of(c.out));
    expect_no_device_errors();
  }
  EXPECT_TRUE(saw_split) << "no case shared a tile between blocks on this device";
  EXPECT_TRUE(saw_unsplit) << "every case shared tiles between blocks";
}

TEST_F(CudaSmallMGemm, PublicLinearMatchesCpu) {
  // Through ops::linear with the kernel turned on (it is off by default: slower than cuBLASLt on
  // the H200), which then sends 9..128 tokens here first: the smallest count it sends, and the
  // fused QKV projection of a 60-row verification batch with a bias.
  gpu_.cuda->set_small_m_gemm(true);
  const Case cases[] = {
      {9, 8200, 4096, DType::BF16, DType::F32, kNoBias, ops::OutputMode::Overwrite, 1.0f},
      {60, 6144, 4096, DType::BF16, DType::BF16, DType::BF16, ops::OutputMode::Overwrite, 1.0f},
  };
  for (const Case& c : cases) {
    const std::string label = label_of(c);
    SCOPED_TRACE(label);
    const Reference r = make_reference(cpu_, c, seed(), seed(), seed(), seed());
    const bool has_bias = c.bias != kNoBias;
    DeviceTensor d_w = upload_tensor(r.w, c.weight, {c.n, c.k});
    DeviceTensor d_x = upload_tensor(r.x, c.weight, {c.tokens, c.k});
    DeviceTensor d_bias = has_bias ? upload_tensor(r.bias, c.bias, {c.n}) : DeviceTensor{};
    DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.n});
    poison(d_out);
    ops::linear(gpu_.ops, d_x.tensor, d_w.tensor, has_bias ? d_bias.tensor : Tensor{}, d_out.tensor, c.alpha, c.mode);
    gpu_.sync();
    expect_close(label, download_f32(d_out), r.want, tolerance_of(c.out));
  }
  gpu_.cuda->set_small_m_gemm(false);
  expect_no_device_errors();
}

TEST_F(CudaSmallMGemm, DeclinesWhatItCannotTake) {
  using ops::cuda_impl::try_gemm_small_m;
  auto& ctx = *gpu_.cuda;
  const auto overwrite = ops::OutputMode::Overwrite;
  DeviceTensor x = device_tensor(DType::BF16, {20, 4096}), w = device_tensor(DType::BF16, {300, 4096});
  DeviceTensor out = device_tensor(DType::F32, {20, 300});
  DeviceTensor x_f16 = device_tensor(DType::F16, {20, 4096}), x_f32 = device_tensor(DType::F32, {20, 4096});
  DeviceTensor w_f32 = device_tensor(DType::F32, {300, 4096});
  DeviceTensor x_odd = device_tensor(DType::BF16, {20, 4104}), w_odd = device_tensor(DType::BF16, {300, 4104});
  DeviceTensor x_shifted = device_tensor(DType::BF16, {20, 4096}, 2), w_shifted = device_tensor(DType::BF16, {300, 4096}, 8);
  DeviceTensor x_many = device_tensor(DType::BF16, {129, 4096}), out_many = device_tensor(DType::F32, {129, 300});
  DeviceTensor bias_i32 = device_tensor(DType::I32, {300});
  EXPECT_FALSE(try_gemm_small_m(ctx, x_f16.tensor, w.tensor, Tensor{}, out.tensor, 1, overwrite)) << "f16 x, bf16 W";
  EXPECT_FALSE(try_gemm_small_m(ctx, x_f32.tensor, w.tensor, Tensor{}, out.tensor, 1, overwrite)) << "F32 x";
  EXPECT_FALSE(try_gemm_small_m(ctx, x_f32.tensor, w_f32.tensor, Tensor{}, out.tensor, 1, overwrite)) << "F32 W";
  EXPECT_FALSE(try_gemm_small_m(ctx, x_odd.tensor, w_odd.tensor, Tensor{}, out.tensor, 1, overwrite))
      << "K not a multiple of 64";
  EXPECT_FALSE(try_gemm_small_m(ctx, x_shifted.tensor, w.tensor, Tensor{}, out.tensor, 1, overwrite))
      << "x not 16-byte aligned";
  EXPECT_FALSE(try_gemm_small_m(ctx, x.tensor, w_shifted.tensor, Tensor{}, out.tensor, 1, overwrite))
      << "weights not 16-byte aligned";
  EXPECT_FALSE(try_gemm_small_m(ctx, x_many.tensor, w.tensor, Tensor{}, out_many.tensor, 1, overwrite))
      << "129 tokens";
  EXPECT_FALSE(try_gemm_small_m(ctx, x.tensor, w.tensor, bias_i32.tensor, out.tensor, 1, overwrite)) << "I32 bias";
  // A shape whose tiles blocks share needs the workspace for its partial sums.
  ASSERT_TRUE(splits(300, 4096));
  EXPECT_FALSE(try_gemm_small_m(ctx, x.tensor, w.tensor, Tensor{}, out.tensor, 1, overwrite, nullptr, 0))
      << "no workspace";
  const auto part = ops::cuda_impl::small_m::make_partition(300, 4096, ctx.info().multiprocessors);
  const size_t need = ops::cuda_impl::small_m::partial_bytes(part, 20);
  EXPECT_FALSE(try_gemm_small_m(ctx, x.tensor, w.tensor, Tensor{}, out.tensor, 1, overwrite, ctx.workspace(), need - 4))
      << "a workspace 4 bytes short";
  gpu_.sync();
  expect_no_device_errors();
}

TEST_F(CudaSmallMGemm, RunsWithoutWorkspaceWhenNoTileIsShared) {
  const Case c{40, 1000, 64, DType::BF16, DType::F32, kNoBias, ops::OutputMode::Overwrite, 1.0f};
  ASSERT_FALSE(splits(c.n, c.k));
  const Reference r = make_reference(cpu_, c, seed(), seed(), seed(), seed());
  DeviceTensor d_w = upload_tensor(r.w, c.weight, {c.n, c.k});
  DeviceTensor d_x = upload_tensor(r.x, c.weight, {c.tokens, c.k});
  DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.n});
  poison(d_out);
  ASSERT_TRUE(ops::cuda_impl::try_gemm_small_m(*gpu_.cuda, d_x.tensor, d_w.tensor, Tensor{}, d_out.tensor, c.alpha,
                                               c.mode, nullptr, 0));
  gpu_.sync();
  expect_close(label_of(c), download_f32(d_out), r.want, tolerance_of(c.out));
}

TEST_F(CudaSmallMGemm, KeepsToItsWorkspaceRegion) {
  // A region exactly as large as the partial sums need, between two guard zones that must come
  // back untouched (linear_swiglu passes the workspace behind its activation chunk this way).
  const Case c{60, 4104, 4160, DType::BF16, DType::F32, DType::BF16, ops::OutputMode::Overwrite, 1.0f};
  ASSERT_TRUE(splits(c.n, c.k));
  const auto part = ops::cuda_impl::small_m::make_partition(c.n, c.k, gpu_.cuda->info().multiprocessors);
  const size_t need = ops::cuda_impl::small_m::partial_bytes(part, c.tokens);
  constexpr size_t kGuard = 1 << 20;
  DeviceBuffer region(kGuard + need + kGuard);
  const std::vector<uint8_t> pattern(region.bytes(), 0xA5);
  region.upload(pattern);
  const Reference r = make_reference(cpu_, c, seed(), seed(), seed(), seed());
  DeviceTensor d_w = upload_tensor(r.w, c.weight, {c.n, c.k});
  DeviceTensor d_x = upload_tensor(r.x, c.weight, {c.tokens, c.k});
  DeviceTensor d_bias = upload_tensor(r.bias, c.bias, {c.n});
  DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.n});
  poison(d_out);
  ASSERT_TRUE(ops::cuda_impl::try_gemm_small_m(*gpu_.cuda, d_x.tensor, d_w.tensor, d_bias.tensor, d_out.tensor,
                                               c.alpha, c.mode, static_cast<char*>(region.data()) + kGuard, need));
  gpu_.sync();
  expect_close(label_of(c), download_f32(d_out), r.want, tolerance_of(c.out));
  const std::vector<uint8_t> after = region.download<uint8_t>(region.bytes());
  size_t touched_front = 0, touched_back = 0;
  for (size_t i = 0; i < kGuard; ++i) {
    touched_front += after[i] != 0xA5;
    touched_back += after[kGuard + need + i] != 0xA5;
  }
  EXPECT_EQ(touched_front, 0u) << "bytes written before the workspace region";
  EXPECT_EQ(touched_back, 0u) << "bytes written past the workspace region";
}

TEST_F(CudaSmallMGemm, SwigluAtSixtyTokens) {
  // linear_swiglu at a verification batch: silu_mul into the front of the workspace, then this
  // GEMM on the rest. Activations pass through 16 bits, so 16-bit precision (as for cuBLASLt).
  struct SwigluCase {
    int64_t n, inter;
    DType dtype, out;
    ops::OutputMode mode;
    float alpha;
  };
  const SwigluCase cases[] = {
      {1000, 4160, DType::BF16, DType::F32, ops::OutputMode::Accumulate, 0.5f},
      {4104, 4096, DType::F16, DType::F16, ops::OutputMode::Overwrite, 1.0f},
  };
  const int64_t tokens = 60;
  for (const SwigluCase& c : cases) {
    const std::string label = "T=60 N=" + std::to_string(c.n) + " I=" + std::to_string(c.inter) + " " +
                              name_of(c.dtype) + " out " + name_of(c.out);
    SCOPED_TRACE(label);
    ASSERT_TRUE(splits(c.n, c.inter));
    std::vector<float> w = round_to(c.dtype, random_floats(static_cast<size_t>(c.n * c.inter), seed()));
    std::vector<float> gu =
        round_to(c.dtype, random_floats(static_cast<size_t>(tokens * 2 * c.inter), seed(), -5.0f, 5.0f));
    std::vector<float> prior = round_to(c.out, random_floats(static_cast<size_t>(tokens * c.n), seed(), -10.0f, 10.0f));
    std::vector<float> want = c.mode == ops::OutputMode::Accumulate ? prior : std::vector<float>(prior.size());
    Tensor cpu_out = cpu_tensor(want, {tokens, c.n});
    ops::linear_swiglu(cpu_.ops, cpu_tensor(gu, {tokens, 2 * c.inter}), cpu_tensor(w, {c.n, c.inter}), cpu_out,
                       c.alpha, c.mode);
    DeviceTensor d_w = upload_tensor(w, c.dtype, {c.n, c.inter});
    DeviceTensor d_gu = upload_tensor(gu, c.dtype, {tokens, 2 * c.inter});
    DeviceTensor d_out = upload_tensor(prior, c.out, {tokens, c.n});
    if (c.mode == ops::OutputMode::Overwrite) poison(d_out);
    ops::linear_swiglu(gpu_.ops, d_gu.tensor, d_w.tensor, d_out.tensor, c.alpha, c.mode);
    gpu_.sync();
    expect_close(label, download_f32(d_out), round_to(c.out, want), kTol16);
  }
  expect_no_device_errors();
}

TEST_F(CudaSmallMGemm, CapturedGraphReplaysOnNewInputs) {
  // First use of the instantiation inside the capture (its shared-memory opt-in included), then
  // two replays with different x in the same buffer: the launch holds no per-call host state.
  const Case c{60, 4104, 4160, DType::BF16, DType::F32, DType::F32, ops::OutputMode::Overwrite, 0.5f};
  ASSERT_TRUE(splits(c.n, c.k));
  const Reference first = make_reference(cpu_, c, seed(), seed(), seed(), seed());
  DeviceTensor d_w = upload_tensor(first.w, c.weight, {c.n, c.k});
  DeviceTensor d_x = upload_tensor(first.x, c.weight, {c.tokens, c.k});
  DeviceTensor d_bias = upload_tensor(first.bias, c.bias, {c.n});
  DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.n});
  auto stream = static_cast<cudaStream_t>(gpu_.cuda->stream());
  CudaGraph graph;
  graph.begin_capture(stream);
  try {
    ops::linear(gpu_.ops, d_x.tensor, d_w.tensor, d_bias.tensor, d_out.tensor, c.alpha, c.mode);
  } catch (...) {
    graph.abort_capture(stream);
    throw;
  }
  graph.end_capture(stream);
  for (int replay = 0; replay < 2; ++replay) {
    SCOPED_TRACE("replay " + std::to_string(replay));
    Reference r = first;
    if (replay == 1) {
      // Same weights and bias, new activations.
      r.x = round_to(c.weight, random_floats(r.x.size(), seed()));
      std::fill(r.want.begin(), r.want.end(), 0.0f);
      Tensor cpu_out = cpu_tensor(r.want, {c.tokens, c.n});
      ops::linear(cpu_.ops, cpu_tensor(r.x, {c.tokens, c.k}), cpu_tensor(r.w, {c.n, c.k}),
                  cpu_tensor(r.bias, {c.n}), cpu_out, c.alpha, c.mode);
      d_x.buffer.upload(encode(r.x, c.weight));
    }
    poison(d_out);
    graph.launch(stream);
    gpu_.sync();
    expect_close(label_of(c), download_f32(d_out), r.want, tolerance_of(c.out));
  }
  expect_no_device_errors();
}

}  // namespace

#endif  // SPECULA_WITH_CUDA
