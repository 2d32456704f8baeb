// CPU split of the fused QKV projection, optional per-head q/k RMSNorm (Qwen3), RoPE and KV-cache
// store (reference for ops/cuda/qkv_rope_store.cu). RoPE follows transformers' rotate-half
// convention with angles p * inv_freq[i] computed in fp32.
#include <cmath>

#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"
#include "specula/ops/cpu/vector_math.h"

namespace specula::ops::cpu {

namespace {
void head_rms_norm(float* x, const float* weight, float eps, int64_t hd) {
  double sum_sq = 0.0;
  for (int64_t i = 0; i < hd; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / static_cast<double>(hd)) + eps);
  for (int64_t i = 0; i < hd; ++i) x[i] = weight[i] * (x[i] * inv);
}

void rotate(float* x, const float* cos_a, const float* sin_a, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos_a[i] - b * sin_a[i];
    x[i + half] = b * cos_a[i] + a * sin_a[i];
  }
}

}  // namespace

void qkv_rope_store(ThreadPool& pool, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                    const RopeParams& rope, const Tensor& positions, const Tensor& slots, Tensor& q_out,
                    Tensor& k_cache, Tensor& v_cache) {
  const int64_t tokens = qkv.dim(0), n_heads = q_out.dim(1), hd = q_out.dim(2), n_kv = k_cache.dim(0),
                capacity = k_cache.dim(1), half = hd / 2;
  const float* qn = tensor_f32(q_norm, Scratch::NormWeight);
  const float* kn = tensor_f32(k_norm, Scratch::KNormWeight);
  const float* inv_freq = rope.inv_freq.as<const float>();
  const int32_t* pos = positions.as<const int32_t>();
  const int32_t* slot = slots.as<const int32_t>();
  for (int64_t t = 0; t < tokens; ++t)
    SPECULA_CHECK(slot[t] >= 0 && slot[t] < capacity, "qkv_rope_store: cache slot ", slot[t],
                  " is outside the KV cache of ", capacity, " rows");
  pool.parallel_for(tokens, [&](int64_t begin, int64_t end) {
    float* cos_a = scratch_f32(Scratch::Cos, static_cast<size_t>(half));
    float* sin_a = scratch_f32(Scratch::Sin, static_cast<size_t>(half));
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(pos[t]) * inv_freq[i];
        cos_a[i] = std::cos(angle) * rope.attention_scaling;
        sin_a[i] = std::sin(angle) * rope.attention_scaling;
      }
      const float* row = qkv.as<const float>() + t * qkv.dim(1);
      for (int64_t h = 0; h < n_heads; ++h) {
        float* q = q_out.as<float>() + (t * n_heads + h) * hd;
        std::copy(row + h * hd, row + (h + 1) * hd, q);
        if (qn) head_rms_norm(q, qn, norm_eps, hd);
        rotate(q, cos_a, sin_a, half);
      }
      for (int64_t h = 0; h < n_kv; ++h) {
        float* k = k_cache.as<float>() + (h * capacity + slot[t]) * hd;
        float* v = v_cache.as<float>() + (h * capacity + slot[t]) * hd;
        const float* k_src = row + (n_heads + h) * hd;
        const float* v_src = row + (n_heads + n_kv + h) * hd;
        std::copy(k_src, k_src + hd, k);
        std::copy(v_src, v_src + hd, v);
        if (kn) head_rms_norm(k, kn, norm_eps, hd);
        rotate(k, cos_a, sin_a, half);
      }
    }
  });
}

}  // namespace specula::ops::cpu
