// The fused forms of the linear ops that the decode step is built from, CUDA against the CPU
// reference on fresh random inputs:
//   - ops::linear and ops::linear_swiglu with OutputMode::Accumulate (the residual update folded
//     into the o and down projections): GEMV at 1-8 tokens, the small-M GEMM at 9-128, cuBLASLt
//     (beta = 1) above or where K is not a multiple of 64, with F32 and 16-bit outputs that already
//     hold values;
//   - ops::rms_norm_linear: the one-token GEMV that normalises x in every block (vector and
//     scalar paths), and the unfused path (rms_norm into `normed`, then linear) for more tokens
//     or rows too long for shared memory.
// Tolerances as in cuda_ops_test.cpp: F32 outputs of fp32 arithmetic 1e-5 relative (5e-5 where
// SwiGLU's fast exp is involved), 16-bit results 1e-2. Skipped, saying why, without a GPU.
#ifdef SPECULA_WITH_CUDA

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/ops/ops.h"

using namespace specula;
using namespace specula::test;

namespace {

constexpr DType kNoBias = DType::U8;

using CudaFusedLinear = CudaOpsTest;

// "T=.. N=.. K=.. W .. x .. out .." for the trace of one case.
std::string linear_label(int64_t tokens, int64_t n, int64_t k, DType weight, DType x, DType out, bool has_bias) {
  return "T=" + std::to_string(tokens) + " N=" + std::to_string(n) + " K=" + std::to_string(k) + " W " +
         name_of(weight) + " x " + name_of(x) + " out " + name_of(out) + (has_bias ? " bias" : "");
}

// ---------------------------------------------------------------------------------------------
// linear, OutputMode::Accumulate

struct AccumulateCase {
  int64_t tokens, n, k;
  DType weight, x, out;
  DType bias;  // kNoBias: none
  float alpha;
};

TEST_F(CudaFusedLinear, LinearAccumulateMatchesCpu) {
  const AccumulateCase cases[] = {
      // Decode o_proj shape into the F32 residual stream, with a muP-style scale.
      {1, 4096, 4096, DType::BF16, DType::BF16, DType::F32, kNoBias, 1.4f / 6.0f},
      // Every GEMV token template, odd row counts, a bias, a 16-bit output.
      {2, 257, 1024, DType::BF16, DType::BF16, DType::F32, DType::BF16, 1.0f},
      {3, 129, 2048, DType::F16, DType::F16, DType::F16, kNoBias, 0.5f},
      {8, 96, 768, DType::F32, DType::F32, DType::F32, DType::F32, 1.0f},
      // Scalar path (K not a multiple of the vector width).
      {1, 37, 4095, DType::BF16, DType::F32, DType::F32, kNoBias, 1.0f},
      // The small-M GEMM: bf16 operands into F32 (verification's residual update) and into bf16.
      {40, 1000, 512, DType::BF16, DType::BF16, DType::F32, kNoBias, 0.75f},
      {33, 257, 1024, DType::BF16, DType::BF16, DType::BF16, DType::BF16, 1.0f},
      {17, 300, 256, DType::F16, DType::F16, DType::F32, DType::F16, 1.0f},
      // cuBLASLt with beta = 1: prefill's residual update into F32, and K not a multiple of 64.
      {140, 1000, 512, DType::BF16, DType::BF16, DType::F32, kNoBias, 0.75f},
      {33, 257, 1000, DType::BF16, DType::BF16, DType::BF16, DType::BF16, 1.0f},
  };
  for (const AccumulateCase& c : cases) {
    const bool has_bias = c.bias != kNoBias;
    const std::string label = linear_label(c.tokens, c.n, c.k, c.weight, c.x, c.out, has_bias);
    SCOPED_TRACE(label);
    std::vector<float> w = round_to(c.weight, random_floats(static_cast<size_t>(c.n * c.k), seed()));
    std::vector<float> x = round_to(c.x, random_floats(static_cast<size_t>(c.tokens * c.k), seed()));
    std::vector<float> bias = has_bias ? round_to(c.bias, random_floats(static_cast<size_t>(c.n), seed()))
                                       : std::vector<float>{};
    // What out holds before the call: magnitudes like the product's, so neither term dominates.
    std::vector<float> prior =
        round_to(c.out, random_floats(static_cast<size_t>(c.tokens * c.n), seed(), -10.0f, 10.0f));

    std::vector<float> want = prior;
    Tensor cpu_out = cpu_tensor(want, {c.tokens, c.n});
    ops::linear(cpu_.ops, cpu_tensor(x, {c.tokens, c.k}), cpu_tensor(w, {c.n, c.k}),
                has_bias ? cpu_tensor(bias, {c.n}) : Tensor{}, cpu_out, c.alpha, ops::OutputMode::Accumulate);

    DeviceTensor d_w = upload_tensor(w, c.weight, {c.n, c.k});
    DeviceTensor d_x = upload_tensor(x, c.x, {c.tokens, c.k});
    DeviceTensor d_bias = has_bias ? upload_tensor(bias, c.bias, {c.n}) : DeviceTensor{};
    DeviceTensor d_out = upload_tensor(prior, c.out, {c.tokens, c.n});
    ops::linear(gpu_.ops, d_x.tensor, d_w.tensor, has_bias ? d_bias.tensor : Tensor{}, d_out.tensor, c.alpha,
                ops::OutputMode::Accumulate);
    gpu_.sync();
    expect_close(label, download_f32(d_out), round_to(c.out, want), c.out == DType::F32 ? kTolF32 : kTol16);
  }
}

// ---------------------------------------------------------------------------------------------
// linear_swiglu, OutputMode::Accumulate

TEST_F(CudaFusedLinear, SwigluAccumulateMatchesCpu) {
  struct Case {
    int64_t tokens, n, inter;
    DType weight, gate_up, out;
    float alpha;
  };
  const Case cases[] = {
      {1, 4096, 14336, DType::BF16, DType::BF16, DType::F32, 1.4f / 6.0f},  // fused GEMV, decode shape
      {2, 257, 1024, DType::BF16, DType::BF16, DType::F32, 1.0f},           // fused GEMV, 2 tokens
      {1, 37, 1001, DType::BF16, DType::BF16, DType::F32, 1.0f},            // scalar path
      {4, 300, 1024, DType::F16, DType::F16, DType::F32, 0.5f},             // workspace + GEMV
      {24, 260, 512, DType::BF16, DType::BF16, DType::F32, 0.75f},          // workspace + small-M GEMM
      {140, 260, 512, DType::BF16, DType::BF16, DType::F32, 0.75f},         // workspace + cuBLASLt
  };
  for (const Case& c : cases) {
    const std::string label = "T=" + std::to_string(c.tokens) + " N=" + std::to_string(c.n) + " I=" +
                              std::to_string(c.inter) + " W " + name_of(c.weight);
    SCOPED_TRACE(label);
    std::vector<float> w = round_to(c.weight, random_floats(static_cast<size_t>(c.n * c.inter), seed()));
    std::vector<float> gu =
        round_to(c.gate_up, random_floats(static_cast<size_t>(c.tokens * 2 * c.inter), seed(), -5.0f, 5.0f));
    std::vector<float> prior =
        round_to(c.out, random_floats(static_cast<size_t>(c.tokens * c.n), seed(), -10.0f, 10.0f));
    std::vector<float> want = prior;
    Tensor cpu_out = cpu_tensor(want, {c.tokens, c.n});
    ops::linear_swiglu(cpu_.ops, cpu_tensor(gu, {c.tokens, 2 * c.inter}), cpu_tensor(w, {c.n, c.inter}), cpu_out,
                       c.alpha, ops::OutputMode::Accumulate);

    DeviceTensor d_w = upload_tensor(w, c.weight, {c.n, c.inter});
    DeviceTensor d_gu = upload_tensor(gu, c.gate_up, {c.tokens, 2 * c.inter});
    DeviceTensor d_out = upload_tensor(prior, c.out, {c.tokens, c.n});
    ops::linear_swiglu(gpu_.ops, d_gu.tensor, d_w.tensor, d_out.tensor, c.alpha, ops::OutputMode::Accumulate);
    gpu_.sync();
    // Beyond two tokens the activation goes through a 16-bit copy (see linear_swiglu).
    const double tolerance = c.tokens <= 2 ? kTolSwigluF32 : kTol16;
    expect_close(label, download_f32(d_out), round_to(c.out, want), tolerance);
  }
}

TEST_F(CudaFusedLinear, OpsUseAnAdoptedWorkspace) {
  // The engine hands the context a workspace carved from its arena (CudaContext::adopt_workspace);
  // the ops that use it (linear_swiglu beyond two tokens: the activation chunk, and the small-M
  // GEMM's partial sums or cuBLASLt's scratch) must compute the same there. The adopted memory
  // starts as garbage.
  const int64_t n = 260, inter = 512;
  constexpr size_t kWorkspace = size_t{8} << 20;
  DeviceBuffer workspace(kWorkspace);
  SPECULA_TEST_CUDA_CHECK(cudaMemset(workspace.data(), 0x7f, kWorkspace));
  gpu_.cuda->adopt_workspace(workspace.data(), kWorkspace);
  EXPECT_EQ(gpu_.cuda->workspace(), workspace.data());
  EXPECT_EQ(gpu_.cuda->workspace_bytes(), kWorkspace);
  // workspace + GEMV, + small-M GEMM (partial sums behind the activations), + cuBLASLt
  for (int64_t tokens : {int64_t{4}, int64_t{24}, int64_t{140}}) {
    SCOPED_TRACE("T=" + std::to_string(tokens));
    std::vector<float> w = round_to(DType::BF16, random_floats(static_cast<size_t>(n * inter), seed()));
    std::vector<float> gu =
        round_to(DType::BF16, random_floats(static_cast<size_t>(tokens * 2 * inter), seed(), -5.0f, 5.0f));
    std::vector<float> want(static_cast<size_t>(tokens * n));
    Tensor cpu_out = cpu_tensor(want, {tokens, n});
    ops::linear_swiglu(cpu_.ops, cpu_tensor(gu, {tokens, 2 * inter}), cpu_tensor(w, {n, inter}), cpu_out);
    DeviceTensor d_w = upload_tensor(w, DType::BF16, {n, inter});
    DeviceTensor d_gu = upload_tensor(gu, DType::BF16, {tokens, 2 * inter});
    DeviceTensor d_out = device_tensor(DType::F32, {tokens, n});
    poison(d_out);
    ops::linear_swiglu(gpu_.ops, d_gu.tensor, d_w.tensor, d_out.tensor);
    gpu_.sync();
    expect_close("adopted workspace", download_f32(d_out), want, kTol16);
  }
  expect_no_device_errors();
  gpu_.cuda.reset();  // the context must not free the adopted memory (the buffer does, after it)
}

TEST_F(CudaFusedLinear, AdoptingNoMemoryIsAnError) {
  try {
    gpu_.cuda->adopt_workspace(nullptr, 4096);
    FAIL() << "a null workspace of 4096 bytes was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("null memory"), std::string::npos) << e.what();
  }
  EXPECT_EQ(gpu_.cuda->workspace_bytes(), cuda::kDefaultWorkspaceBytes) << "a refused workspace replaced the old one";
}

// ---------------------------------------------------------------------------------------------
// rms_norm_linear

struct NormLinearCase {
  int64_t tokens, n, k;
  DType weight, x, normed, out;
  DType bias;  // kNoBias: none
  double tolerance;
};

TEST_F(CudaFusedLinear, RmsNormLinearMatchesCpu) {
  const NormLinearCase cases[] = {
      // One token: the fused GEMV (normalised row in fp32, so F32 precision), decode shapes of the
      // QKV (with a Qwen2-style bias) and gate/up projections, and odd ones.
      {1, 6144, 4096, DType::BF16, DType::F32, DType::BF16, DType::F32, DType::BF16, kTolF32},
      {1, 28672, 4096, DType::BF16, DType::F32, DType::BF16, DType::BF16, kNoBias, kTol16},
      {1, 129, 1000, DType::F16, DType::F32, DType::F16, DType::F32, kNoBias, kTolF32},
      {1, 70, 768, DType::F32, DType::F32, DType::F32, DType::F32, DType::F32, kTolF32},
      {1, 33, 999, DType::BF16, DType::F32, DType::BF16, DType::F32, kNoBias, kTolF32},  // scalar path
      {1, 50, 512, DType::BF16, DType::BF16, DType::BF16, DType::F32, kNoBias, kTolF32},  // 16-bit x
      // Unfused: a row too long for shared memory, several tokens (GEMV), a prefill chunk
      // (cuBLASLt). `normed` is 16-bit there, so 16-bit precision.
      {1, 40, 16000, DType::BF16, DType::F32, DType::BF16, DType::F32, kNoBias, kTol16},
      {3, 257, 1024, DType::BF16, DType::F32, DType::BF16, DType::F32, DType::BF16, kTol16},
      {37, 300, 512, DType::BF16, DType::F32, DType::BF16, DType::BF16, kNoBias, kTol16},
      {9, 64, 256, DType::F32, DType::F32, DType::F32, DType::F32, kNoBias, kTolF32},
  };
  const float eps = 1e-5f;
  for (const NormLinearCase& c : cases) {
    const bool has_bias = c.bias != kNoBias;
    const std::string label = linear_label(c.tokens, c.n, c.k, c.weight, c.x, c.out, has_bias);
    SCOPED_TRACE(label);
    std::vector<float> w = round_to(c.weight, random_floats(static_cast<size_t>(c.n * c.k), seed()));
    // A residual stream with a large mean square, so the norm's scale matters.
    std::vector<float> x = round_to(c.x, random_floats(static_cast<size_t>(c.tokens * c.k), seed(), -30.0f, 30.0f));
    std::vector<float> gamma = round_to(c.weight, random_floats(static_cast<size_t>(c.k), seed(), 0.2f, 2.0f));
    std::vector<float> bias = has_bias ? round_to(c.bias, random_floats(static_cast<size_t>(c.n), seed()))
                                       : std::vector<float>{};

    std::vector<float> want(static_cast<size_t>(c.tokens * c.n)), normed(static_cast<size_t>(c.tokens * c.k));
    Tensor cpu_out = cpu_tensor(want, {c.tokens, c.n}), cpu_normed = cpu_tensor(normed, {c.tokens, c.k});
    ops::rms_norm_linear(cpu_.ops, cpu_tensor(x, {c.tokens, c.k}), cpu_tensor(gamma, {c.k}), eps,
                         cpu_tensor(w, {c.n, c.k}), has_bias ? cpu_tensor(bias, {c.n}) : Tensor{}, cpu_normed,
                         cpu_out);

    DeviceTensor d_w = upload_tensor(w, c.weight, {c.n, c.k});
    DeviceTensor d_x = upload_tensor(x, c.x, {c.tokens, c.k});
    DeviceTensor d_gamma = upload_tensor(gamma, c.weight, {c.k});
    DeviceTensor d_bias = has_bias ? upload_tensor(bias, c.bias, {c.n}) : DeviceTensor{};
    DeviceTensor d_normed = device_tensor(c.normed, {c.tokens, c.k});
    DeviceTensor d_out = device_tensor(c.out, {c.tokens, c.n});
    poison(d_out);
    ops::rms_norm_linear(gpu_.ops, d_x.tensor, d_gamma.tensor, eps, d_w.tensor,
                         has_bias ? d_bias.tensor : Tensor{}, d_normed.tensor, d_out.tensor);
    gpu_.sync();
    expect_close(label, download_f32(d_out), round_to(c.out, want), c.tolerance);
    expect_no_device_errors();
  }
}

TEST_F(CudaFusedLinear, RmsNormLinearRejectsMismatchedShapes) {
  DeviceTensor x = device_tensor(DType::F32, {1, 64}), gamma = device_tensor(DType::BF16, {63});
  DeviceTensor w = device_tensor(DType::BF16, {32, 64}), normed = device_tensor(DType::BF16, {1, 64});
  DeviceTensor out = device_tensor(DType::F32, {1, 32}), normed_bad = device_tensor(DType::BF16, {1, 65});
  DeviceTensor gamma_ok = device_tensor(DType::BF16, {64});
  EXPECT_THROW(ops::rms_norm_linear(gpu_.ops, x.tensor, gamma.tensor, 1e-5f, w.tensor, Tensor{}, normed.tensor,
                                    out.tensor),
               Error);
  EXPECT_THROW(ops::rms_norm_linear(gpu_.ops, x.tensor, gamma_ok.tensor, 1e-5f, w.tensor, Tensor{},
                                    normed_bad.tensor, out.tensor),
               Error);
}

}  // namespace

#endif  // SPECULA_WITH_CUDA
