// CPU linear layer out (=, +=) alpha * x W^T + b (reference for ops/cuda/linear.cu and the CPU
// backend's matmul). Work is split over output features: each thread converts a weight row to
// fp32 once and reuses it for every token, so decode (T = 1) streams the weights once and
// prefill amortises the conversion over the whole chunk. linear_swiglu is silu_mul into a
// temporary followed by linear: the reference the fused CUDA kernel is tested against.
#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"
#include "specula/ops/cpu/vector_math.h"

namespace specula::ops::cpu {

void linear(ThreadPool& pool, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float alpha,
            OutputMode mode) {
  const int64_t tokens = x.rows(), in_features = weight.dim(1), out_features = weight.dim(0);
  const size_t row_bytes = static_cast<size_t>(in_features) * dtype_size(weight.dtype);
  const float* bias_f32 = tensor_f32(bias, Scratch::Bias);
  const float* xs = x.as<const float>();
  float* ys = out.as<float>();
  const bool accumulate = mode == OutputMode::Accumulate;
  pool.parallel_for(out_features, [&](int64_t begin, int64_t end) {
    const size_t k = static_cast<size_t>(in_features);
    float* row = scratch_f32(Scratch::WeightRow, k);
    for (int64_t n = begin; n < end; ++n) {
      row_to_f32(weight.as<const char>() + static_cast<size_t>(n) * row_bytes, weight.dtype, k, row);
      const float b = bias_f32 ? bias_f32[n] : 0.0f;
      for (int64_t t = 0; t < tokens; ++t) {
        float& y = ys[t * out_features + n];
        const float product = alpha * dot_f32(xs + t * in_features, row, k) + b;
        y = accumulate ? y + product : product;
      }
    }
  }, 16);
}

void linear_swiglu(ThreadPool& pool, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha,
                   OutputMode mode) {
  const int64_t tokens = gate_up.rows(), inter = weight.dim(1);
  Tensor act_view(scratch_f32(Scratch::Activation, static_cast<size_t>(tokens * inter)), DType::F32, {tokens, inter});
  silu_mul(pool, gate_up, act_view);
  linear(pool, act_view, weight, Tensor(), out, alpha, mode);
}

}  // namespace specula::ops::cpu
