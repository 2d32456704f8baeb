// The Hopper bulk-copy GEMV (ops/cuda/gemv_bulk.cu), called directly so each case is known to run
// on it, against the CPU reference on fresh random inputs: linear (Overwrite and Accumulate, with
// and without bias) and the fused RMSNorm form, at shapes that reach each of its tile layouts:
// several rows per tile with K split over warps (unevenly too), one row per warp, several rows per
// warp, one 32 KB row per tile, and a last tile with fewer rows. Also the shapes it must decline
// (leaving them to gemv.cu), and that the public ops agree with it switched off.
// F32 outputs 1e-5 relative (fp32 arithmetic throughout), 16-bit outputs 1e-2. Skipped, saying
// why, without a GPU or on one older than sm_90.
#ifdef SPECULA_WITH_CUDA

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/ops/cuda/linear_impl.h"
#include "specula/ops/ops.h"

using namespace specula;
using namespace specula::test;

namespace {

constexpr DType kNoBias = DType::U8;
constexpr int kBulkMinComputeMajor = 9;

class CudaBulkGemv : public CudaOpsTest {
 protected:
  void SetUp() override {
    CudaOpsTest::SetUp();
    if (IsSkipped()) return;
    if (gpu_.cuda->info().sm_major < kBulkMinComputeMajor)
      GTEST_SKIP() << "the bulk-copy GEMV needs sm_90; this device is sm_" << gpu_.cuda->info().sm_major
                   << gpu_.cuda->info().sm_minor;
  }
};

struct Case {
  int64_t n, k;
  DType weight, x, out;
  DType bias;  // kNoBias: none
  bool norm;
  ops::OutputMode mode;
  float alpha;
};

std::string label_of(const Case& c) {
  return "N=" + std::to_string(c.n) + " K=" + std::to_string(c.k) + " W " + name_of(c.weight) + " x " +
         name_of(c.x) + " out " + name_of(c.out) + (c.bias != kNoBias ? " bias" : "") + (c.norm ? " norm" : "") +
         (c.mode == ops::OutputMode::Accumulate ? " accumulate" : "");
}

TEST_F(CudaBulkGemv, MatchesCpuAtEveryTileLayout) {
  using ops::OutputMode;
  const Case cases[] = {
      // o_proj-like into the F32 residual: 4 rows per 32 KB tile, 2 warps per row, last tile 3 rows.
      {4099, 4096, DType::BF16, DType::BF16, DType::F32, kNoBias, false, OutputMode::Accumulate, 0.75f},
      // One 32 KB row per tile, K split over all 8 warps, F32 x, bias, 16-bit out.
      {37, 16384, DType::BF16, DType::F32, DType::BF16, DType::BF16, false, OutputMode::Overwrite, 1.0f},
      // 16-byte rows: 64 rows per tile, 8 per warp, last tile 41 rows.
      {1001, 8, DType::F16, DType::F16, DType::F32, DType::F32, false, OutputMode::Overwrite, 1.0f},
      // 4 rows per tile with 257 vectors per row: K split unevenly between a row's two warps.
      {129, 2056, DType::BF16, DType::BF16, DType::F32, kNoBias, false, OutputMode::Overwrite, 2.0f},
      // 8 rows per tile, one warp per row.
      {300, 1032, DType::F16, DType::F32, DType::F16, kNoBias, false, OutputMode::Accumulate, 1.0f},
      // The fused norm: decode QKV shape with a Qwen2-style bias, and a long odd row.
      {6144, 4096, DType::BF16, DType::F32, DType::BF16, DType::BF16, true, OutputMode::Overwrite, 1.0f},
      {77, 12296, DType::BF16, DType::F32, DType::F32, kNoBias, true, OutputMode::Overwrite, 1.0f},
      {515, 1000, DType::F16, DType::F16, DType::F32, kNoBias, true, OutputMode::Overwrite, 1.0f},
  };
  const float eps = 1e-5f;
  for (const Case& c : cases) {
    const std::string label = label_of(c);
    SCOPED_TRACE(label);
    const bool has_bias = c.bias != kNoBias;
    std::vector<float> w = round_to(c.weight, random_floats(static_cast<size_t>(c.n * c.k), seed()));
    std::vector<float> x = round_to(c.x, random_floats(static_cast<size_t>(c.k), seed(), -30.0f, 30.0f));
    std::vector<float> gamma = round_to(c.weight, random_floats(static_cast<size_t>(c.k), seed(), 0.2f, 2.0f));
    std::vector<float> bias =
        has_bias ? round_to(c.bias, random_floats(static_cast<size_t>(c.n), seed())) : std::vector<float>{};
    std::vector<float> prior = round_to(c.out, random_floats(static_cast<size_t>(c.n), seed(), -10.0f, 10.0f));

    // CPU reference: rms_norm then linear (the norm form), or linear with the mode.
    std::vector<float> want = c.mode == OutputMode::Accumulate ? prior : std::vector<float>(static_cast<size_t>(c.n));
    std::vector<float> normed = x;
    Tensor cpu_out = cpu_tensor(want, {1, c.n}), cpu_normed = cpu_tensor(normed, {1, c.k});
    if (c.norm) ops::rms_norm(cpu_.ops, cpu_tensor(x, {1, c.k}), cpu_tensor(gamma, {c.k}), eps, cpu_normed);
    ops::linear(cpu_.ops, cpu_normed, cpu_tensor(w, {c.n, c.k}), has_bias ? cpu_tensor(bias, {c.n}) : Tensor{},
                cpu_out, c.alpha, c.mode);

    DeviceTensor d_w = upload_tensor(w, c.weight, {c.n, c.k});
    DeviceTensor d_x = upload_tensor(x, c.x, {1, c.k});
    DeviceTensor d_gamma = upload_tensor(gamma, c.weight, {c.k});
    DeviceTensor d_bias = has_bias ? upload_tensor(bias, c.bias, {c.n}) : DeviceTensor{};
    DeviceTensor d_out = upload_tensor(prior, c.out, {1, c.n});
    if (c.mode == OutputMode::Overwrite) poison(d_out);
    const bool ran = ops::cuda_impl::try_gemv_bulk(*gpu_.cuda, d_x.tensor, c.norm ? &d_gamma.tensor : nullptr, eps,
                                                   d_w.tensor, has_bias ? d_bias.tensor : Tensor{}, d_out.tensor,
                                                   c.alpha, c.mode);
    ASSERT_TRUE(ran) << "the bulk GEMV declined a shape it is meant to take";
    gpu_.sync();
    expect_close(label, download_f32(d_out), round_to(c.out, want), tolerance_for(c.out));
    expect_no_device_errors();
  }
}

TEST_F(CudaBulkGemv, DeclinesWhatItCannotTake) {
  DeviceTensor x1 = device_tensor(DType::BF16, {1, 4096}), x2 = device_tensor(DType::BF16, {2, 4096});
  DeviceTensor w = device_tensor(DType::BF16, {64, 4096}), out1 = device_tensor(DType::F32, {1, 64});
  DeviceTensor out2 = device_tensor(DType::F32, {2, 64});
  DeviceTensor w_f32 = device_tensor(DType::F32, {64, 4096});
  DeviceTensor x_long = device_tensor(DType::BF16, {1, 16392}), w_long = device_tensor(DType::BF16, {64, 16392});
  DeviceTensor x_odd = device_tensor(DType::BF16, {1, 4095}), w_odd = device_tensor(DType::BF16, {64, 4095});
  DeviceTensor gamma_f32 = device_tensor(DType::F32, {4096});
  auto& ctx = *gpu_.cuda;
  const auto overwrite = ops::OutputMode::Overwrite;
  EXPECT_FALSE(ops::cuda_impl::try_gemv_bulk(ctx, x2.tensor, nullptr, 0, w.tensor, Tensor{}, out2.tensor, 1, overwrite))
      << "two tokens";
  EXPECT_FALSE(
      ops::cuda_impl::try_gemv_bulk(ctx, x1.tensor, nullptr, 0, w_f32.tensor, Tensor{}, out1.tensor, 1, overwrite))
      << "F32 weights";
  EXPECT_FALSE(
      ops::cuda_impl::try_gemv_bulk(ctx, x_long.tensor, nullptr, 0, w_long.tensor, Tensor{}, out1.tensor, 1, overwrite))
      << "a row longer than a 32 KB tile";
  EXPECT_FALSE(
      ops::cuda_impl::try_gemv_bulk(ctx, x_odd.tensor, nullptr, 0, w_odd.tensor, Tensor{}, out1.tensor, 1, overwrite))
      << "K not a multiple of 8";
  EXPECT_FALSE(
      ops::cuda_impl::try_gemv_bulk(ctx, x1.tensor, &gamma_f32.tensor, 1e-5f, w.tensor, Tensor{}, out1.tensor, 1,
                                    overwrite))
      << "a norm weight in another dtype than the weights'";
  ctx.set_bulk_gemv(false);
  EXPECT_FALSE(ops::cuda_impl::try_gemv_bulk(ctx, x1.tensor, nullptr, 0, w.tensor, Tensor{}, out1.tensor, 1, overwrite))
      << "switched off in the context";
  ctx.set_bulk_gemv(true);
  gpu_.sync();
  expect_no_device_errors();
}

TEST_F(CudaBulkGemv, PublicOpsAgreeWithItOnAndOff) {
  // ops::rms_norm_linear at one token takes the bulk GEMV by default and gemv.cu with it off;
  // both must match (within fp32 summation-order differences), and ops::linear (gemv.cu either
  // way) must not depend on the switch.
  const int64_t n = 1027, k = 4096;
  std::vector<float> w = round_to(DType::BF16, random_floats(static_cast<size_t>(n * k), seed()));
  std::vector<float> x = random_floats(static_cast<size_t>(k), seed(), -30.0f, 30.0f);
  std::vector<float> gamma = round_to(DType::BF16, random_floats(static_cast<size_t>(k), seed(), 0.2f, 2.0f));
  DeviceTensor d_w = upload_tensor(w, DType::BF16, {n, k}), d_x = upload_tensor(x, DType::F32, {1, k});
  DeviceTensor d_gamma = upload_tensor(gamma, DType::BF16, {k}), d_normed = device_tensor(DType::BF16, {1, k});
  std::vector<float> results[2][2];  // [bulk on/off][linear, rms_norm_linear]
  for (int off = 0; off < 2; ++off) {
    gpu_.cuda->set_bulk_gemv(off == 0);
    DeviceTensor a = device_tensor(DType::F32, {1, n}), b = device_tensor(DType::F32, {1, n});
    poison(a);
    poison(b);
    ops::linear(gpu_.ops, d_x.tensor, d_w.tensor, Tensor{}, a.tensor);
    ops::rms_norm_linear(gpu_.ops, d_x.tensor, d_gamma.tensor, 1e-5f, d_w.tensor, Tensor{}, d_normed.tensor, b.tensor);
    gpu_.sync();
    results[off][0] = download_f32(a);
    results[off][1] = download_f32(b);
  }
  gpu_.cuda->set_bulk_gemv(true);
  expect_close("linear", results[0][0], results[1][0], kTolF32);
  expect_close("rms_norm_linear", results[0][1], results[1][1], kTolF32);
  expect_no_device_errors();
}

}  // namespace

#endif  // SPECULA_WITH_CUDA
