// CPU attention over the KV cache with the visibility of an ops::AttentionMask (the reference for
// the CUDA prefill, decode and tree kernels). Two passes per (token, head): scores over the
// visible rows, then the softmax-weighted sum of their values. Invisible rows are skipped, not
// given -inf, so the sums run over exactly the rows the mask names; with InfLLM-V2 block lists the
// same rule drops the rows of unlisted blocks (the reference for the block-sparse kernels).
#include <algorithm>
#include <cmath>

#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"
#include "specula/ops/cpu/vector_math.h"

namespace specula::ops::cpu {

void attention(ThreadPool& pool, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& slots,
               float scale, Tensor& out, const AttentionMask& mask) {
  const int64_t tokens = q.dim(0), n_heads = q.dim(1), hd = q.dim(2), n_kv = k_cache.dim(0),
                capacity = k_cache.dim(1), group = n_heads / n_kv;
  const int32_t* slot = slots.as<const int32_t>();
  for (int64_t t = 0; t < tokens; ++t)
    SPECULA_CHECK(slot[t] >= 0 && slot[t] < capacity, "attention: cache slot ", slot[t],
                  " is outside the KV cache of ", capacity, " rows");
  const uint32_t* bits = mask.is_tree() ? mask.tree_bits.as<const uint32_t>() : nullptr;
  if (bits != nullptr)
    SPECULA_CHECK(slot[tokens - 1] - mask.width + 1 >= 0, "attention: the tree mask covers ", mask.width,
                  " rows ending at row ", slot[tokens - 1], ", which starts before row 0");
  const bool sparse = mask.is_sparse();
  const int64_t max_blocks = sparse ? mask.blocks.dim(2) : 0;
  pool.parallel_for(tokens * n_heads, [&](int64_t begin, int64_t end) {
    float* scores = scratch_f32(Scratch::Scores, static_cast<size_t>(capacity));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / n_heads, h = item % n_heads, kv = h / group;
      // Rows past the last query's slot are never visible; below that the mask decides.
      const int64_t length = static_cast<int64_t>(bits ? slot[tokens - 1] : slot[t]) + 1;
      const int32_t* list =
          sparse ? mask.blocks.as<const int32_t>() + (kv * tokens + t) * max_blocks : nullptr;
      auto visible = [&](int64_t j) {
        return (bits == nullptr && list == nullptr) ||
               attention_row_visible(slot, tokens, bits, mask.width, t, j, list, max_blocks, mask.block_size);
      };
      const float* qv = q.as<const float>() + (t * n_heads + h) * hd;
      const float* keys = k_cache.as<const float>() + kv * capacity * hd;
      const float* values = v_cache.as<const float>() + kv * capacity * hd;
      float max_score = -INFINITY;
      for (int64_t j = 0; j < length; ++j) {
        if (!visible(j)) continue;
        scores[j] = scale * dot_f32(qv, keys + j * hd, static_cast<size_t>(hd));
        max_score = std::max(max_score, scores[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < length; ++j)
        if (visible(j)) sum += (scores[j] = std::exp(scores[j] - max_score));
      float* o = out.as<float>() + (t * n_heads + h) * hd;
      std::fill(o, o + hd, 0.0f);
      if (sum == 0.0f) continue;  // no visible row: zeros, as the CUDA kernels write
      for (int64_t j = 0; j < length; ++j)
        if (visible(j)) axpy_f32(scores[j] / sum, values + j * hd, o, static_cast<size_t>(hd));
    }
  });
}

}  // namespace specula::ops::cpu
