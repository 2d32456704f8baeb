// CPU embedding lookup (reference for ops/cuda/embedding.cu).
#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"
#include "specula/ops/cpu/vector_math.h"
#include "specula/ops/op_checks.h"

namespace specula::ops::cpu {

void embedding(ThreadPool& pool, const Tensor& table, const Tensor& ids, float scale, Tensor& out) {
  const int64_t vocab = table.dim(0), hidden = table.dim(1), tokens = ids.numel();
  const int32_t* id = ids.as<int32_t>();
  for (int64_t t = 0; t < tokens; ++t)
    SPECULA_CHECK(id[t] >= 0 && id[t] < vocab, "embedding: token id ", id[t], " is outside the vocabulary [0, ", vocab,
                  ")");
  const size_t row_bytes = static_cast<size_t>(hidden) * dtype_size(table.dtype);
  pool.parallel_for(tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      float* dst = out.as<float>() + t * hidden;
      row_to_f32(table.as<const char>() + static_cast<size_t>(id[t]) * row_bytes, table.dtype,
                 static_cast<size_t>(hidden), dst);
      if (scale != 1.0f)
        for (int64_t i = 0; i < hidden; ++i) dst[i] *= scale;
    }
  });
}

}  // namespace specula::ops::cpu
