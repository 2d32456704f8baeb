// CPU RMSNorm and fused residual-add + RMSNorm (reference for ops/cuda/rms_norm.cu).
// Matches transformers' LlamaRMSNorm in fp32: y = x * rsqrt(mean(x^2) + eps) * weight.
#include <cmath>

#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"
#include "specula/ops/cpu/vector_math.h"

namespace specula::ops::cpu {

namespace {
void normalize_row(const float* x, const float* weight, float eps, int64_t dim, float* out) {
  double sum_sq = 0.0;
  for (int64_t i = 0; i < dim; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / static_cast<double>(dim)) + eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = weight[i] * (x[i] * inv);
}

}  // namespace

void rms_norm(ThreadPool& pool, const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const int64_t dim = x.row_size(), rows = x.rows();
  const float* w = tensor_f32(weight, Scratch::NormWeight);
  pool.parallel_for(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) normalize_row(x.as<float>() + r * dim, w, eps, dim, out.as<float>() + r * dim);
  }, 4);
}

void add_rms_norm(ThreadPool& pool, Tensor& residual, const Tensor& delta, float delta_scale, const Tensor& weight,
                  float eps, Tensor& out) {
  const int64_t dim = residual.row_size(), rows = residual.rows();
  const float* w = tensor_f32(weight, Scratch::NormWeight);
  pool.parallel_for(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* res = residual.as<float>() + r * dim;
      axpy_f32(delta_scale, delta.as<const float>() + r * dim, res, static_cast<size_t>(dim));
      normalize_row(res, w, eps, dim, out.as<float>() + r * dim);
    }
  }, 4);
}

}  // namespace specula::ops::cpu
