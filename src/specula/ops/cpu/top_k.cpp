// CPU reference of ops::top_k_log_softmax: per row, log-sum-exp in double (the reference the
// CUDA kernel's fp32 online sum is compared against), then a partial sort of the indices by
// (value descending, index ascending).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"

namespace specula::ops::cpu {

void top_k_log_softmax(ThreadPool& pool, const Tensor& logits, Tensor& values, Tensor& indices) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1), k = values.dim(1);
  pool.parallel_for(rows, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    for (int64_t r = begin; r < end; ++r) {
      const float* x = logits.as<const float>() + r * vocab;
      float max_logit = -INFINITY;
      for (int64_t i = 0; i < vocab; ++i)
        if (!std::isnan(x[i])) max_logit = std::max(max_logit, x[i]);
      double sum = 0.0;
      for (int64_t i = 0; i < vocab; ++i)
        if (!std::isnan(x[i])) sum += std::exp(static_cast<double>(x[i]) - max_logit);
      const float lse = max_logit + static_cast<float>(std::log(sum));
      std::iota(order.begin(), order.end(), 0);
      // NaN ranks below everything (it is never chosen while a number is left).
      auto key = [&](int32_t i) { return std::isnan(x[i]) ? -INFINITY : x[i]; };
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        const float ka = key(a), kb = key(b);
        return ka > kb || (ka == kb && (std::isnan(x[a]) == std::isnan(x[b]) ? a < b : std::isnan(x[b])));
      });
      for (int64_t j = 0; j < k; ++j) {
        const int32_t i = order[static_cast<size_t>(j)];
        values.as<float>()[r * k + j] = x[i] - lse;
        indices.as<int32_t>()[r * k + j] = i;
      }
    }
  });
}

}  // namespace specula::ops::cpu
