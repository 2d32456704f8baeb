// Small CPU ops: SwiGLU over the fused gate/up output, argmax and dtype conversion
// (references for ops/cuda/elementwise.cu).
#include <cmath>

#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"
#include "specula/ops/cpu/vector_math.h"
#include "specula/ops/random_hash.h"

namespace specula::ops::cpu {

void silu_mul(ThreadPool& pool, const Tensor& gate_up, Tensor& out) {
  const int64_t tokens = gate_up.rows(), inter = out.row_size();
  pool.parallel_for(tokens * inter, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i / inter, c = i % inter;
      const float g = gate_up.as<const float>()[t * 2 * inter + c];
      const float u = gate_up.as<const float>()[t * 2 * inter + inter + c];
      out.as<float>()[i] = g / (1.0f + std::exp(-g)) * u;
    }
  }, 4096);
}

void argmax(ThreadPool& pool, const Tensor& logits, Tensor& out) {
  const int64_t rows = logits.rows(), vocab = logits.row_size();
  pool.parallel_for(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = logits.as<const float>() + r * vocab;
      int64_t best = 0;
      for (int64_t v = 1; v < vocab; ++v)
        if (row[v] > row[best]) best = v;
      out.as<int32_t>()[r] = static_cast<int32_t>(best);
    }
  });
}

void convert(ThreadPool& pool, const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  SPECULA_CHECK(dst.dtype == DType::F32 || dst.dtype == DType::BF16 || dst.dtype == DType::F16,
                "convert: unsupported destination dtype ", dtype_name(dst.dtype));
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float v = load_as_f32(src.data, src.dtype, static_cast<size_t>(i));
      switch (dst.dtype) {
        case DType::F32: dst.as<float>()[i] = v; break;
        case DType::BF16: dst.as<uint16_t>()[i] = f32_to_bf16(v); break;
        case DType::F16: dst.as<uint16_t>()[i] = f32_to_f16(v); break;
        default: break;  // rejected above
      }
    }
  }, 4096);
}

}  // namespace specula::ops::cpu

namespace specula::ops::cpu {

void fill_random(ThreadPool& pool, Tensor& t, uint64_t seed, float scale) {
  pool.parallel_for(t.numel(), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float v = random_uniform_symmetric(seed, static_cast<uint64_t>(i), scale);
      switch (t.dtype) {
        case DType::F32: t.as<float>()[i] = v; break;
        case DType::BF16: t.as<uint16_t>()[i] = f32_to_bf16(v); break;
        default: t.as<uint16_t>()[i] = f32_to_f16(v); break;  // F16 (checked by the dispatcher)
      }
    }
  }, 1 << 16);
}

}  // namespace specula::ops::cpu
