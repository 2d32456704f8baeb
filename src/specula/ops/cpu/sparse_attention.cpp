// CPU reference of the InfLLM-V2 selection ops (ops/sparse_attention.h has the rule). Written
// to be read next to the reference's description, one step per block of code: kernel keys, the
// per-head LSE, the group sum, max-pooling, forced/excluded blocks, top-k, the attended set. The
// CUDA kernels are tested against this, block sets compared exactly.
#include "specula/ops/cpu/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/vector_math.h"

namespace specula::ops::cpu {

namespace {

// Rows of the cache that hold the linear sequence for this call, and where this call's writes begin.
struct LinearRows {
  int64_t end = 0;         // rows [0, end) are the sequence (row = position)
  int64_t first_new = 0;   // rows from here on were (re)written by this call
};

LinearRows linear_rows(const Tensor& slots, const AttentionMask& mask) {
  const int32_t* slot = slots.as<const int32_t>();
  const int64_t tokens = slots.numel(), last = slot[tokens - 1];
  if (mask.is_tree()) return {last - mask.width + 1, last - mask.width + 1};
  return {last + 1, slot[0]};
}

// mean over rows [first, first + size) of one head's keys, into out[hd].
void mean_rows(const float* head_keys, int64_t hd, int64_t first, int64_t size, float* out) {
  std::fill(out, out + hd, 0.0f);
  for (int64_t r = first; r < first + size; ++r)
    for (int64_t d = 0; d < hd; ++d) out[d] += head_keys[r * hd + d];
  const float inv = 1.0f / static_cast<float>(size);
  for (int64_t d = 0; d < hd; ++d) out[d] *= inv;
}

void compress_tier(ThreadPool& pool, const Tensor& k_cache, int64_t start_row, int64_t end_row, int64_t size,
                   int64_t stride, Tensor& out) {
  const int64_t n_kv = k_cache.dim(0), capacity = k_cache.dim(1), hd = k_cache.dim(2);
  const int64_t first = complete_kernels(start_row, size, stride), last = complete_kernels(end_row, size, stride);
  if (last <= first) return;
  SPECULA_CHECK(last <= out.dim(1), "compress_keys: ", last, " kernels do not fit the compressed cache of ",
                out.dim(1));
  const int64_t count = last - first;
  pool.parallel_for(n_kv * count, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / count, i = first + item % count;
      mean_rows(k_cache.as<const float>() + h * capacity * hd, hd, i * stride, size,
                out.as<float>() + (h * out.dim(1) + i) * hd);
    }
  });
}

}  // namespace

void compress_keys(ThreadPool& pool, const Tensor& k_cache, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, CompressedKeys& keys) {
  const LinearRows lin = linear_rows(slots, mask);
  int32_t* rows = keys.rows.as<int32_t>();
  const int64_t start = std::min<int64_t>(rows[0], lin.first_new);
  compress_tier(pool, k_cache, start, lin.end, params.kernel_size, params.kernel_stride, keys.c1);
  if (params.uses_c2())
    compress_tier(pool, k_cache, start, lin.end, params.c2_kernel_size(), params.c2_kernel_stride(), keys.c2);
  rows[0] = static_cast<int32_t>(lin.end);
}

namespace {

// The keys one query scores against: cached kernels below `cached`, and kernels it computes from
// its own past above (tree calls), with the cache row of each past position.
class QueryKernels {
 public:
  QueryKernels(const Tensor& k_cache, int64_t head, const Tensor& compressed, int64_t cached, int64_t size,
               int64_t stride, const std::vector<int64_t>* tree_rows, int64_t base)
      : hd_(k_cache.dim(2)), size_(size), stride_(stride), cached_(cached), base_(base), tree_rows_(tree_rows),
        keys_(k_cache.as<const float>() + head * k_cache.dim(1) * k_cache.dim(2)),
        compressed_(compressed.empty() ? nullptr : compressed.as<const float>() + head * compressed.dim(1) * hd_) {}

  // Key vector of kernel i (valid until the next call).
  const float* kernel(int64_t i) {
    if (i < cached_) return compressed_ + i * hd_;
    own_.assign(static_cast<size_t>(hd_), 0.0f);
    for (int64_t x = i * stride_; x < i * stride_ + size_; ++x) {
      const int64_t row = x < base_ ? x : (*tree_rows_)[static_cast<size_t>(x - base_)];
      for (int64_t d = 0; d < hd_; ++d) own_[static_cast<size_t>(d)] += keys_[row * hd_ + d];
    }
    const float inv = 1.0f / static_cast<float>(size_);
    for (float& v : own_) v *= inv;
    return own_.data();
  }

 private:
  int64_t hd_, size_, stride_, cached_, base_;
  const std::vector<int64_t>* tree_rows_;
  const float* keys_;
  const float* compressed_;
  std::vector<float> own_;
};

}  // namespace

void sparse_select(ThreadPool& pool, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                   const Tensor& positions, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, Tensor& blocks) {
  const int64_t tokens = q.dim(0), n_heads = q.dim(1), hd = q.dim(2), n_kv = k_cache.dim(0),
                group = n_heads / n_kv, width = blocks.dim(2);
  const int32_t* pos = positions.as<const int32_t>();
  const uint32_t* bits = mask.is_tree() ? mask.tree_bits.as<const uint32_t>() : nullptr;
  const LinearRows lin = linear_rows(slots, mask);
  const int64_t base = lin.end;
  const int64_t cached_c1 = complete_kernels(base, params.kernel_size, params.kernel_stride);
  const int64_t cached_c2 = complete_kernels(base, params.c2_kernel_size(), params.c2_kernel_stride());
  const int64_t B = params.block_size, pool_stride = params.block_size / params.kernel_stride;

  pool.parallel_for(n_kv * tokens, [&](int64_t begin, int64_t end) {
    std::vector<float> lse(static_cast<size_t>(group)), score, pooled;
    std::vector<int64_t> tree_rows, order, chosen;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / tokens, t = item % tokens, p = pos[t];
      int32_t* list = blocks.as<int32_t>() + (h * tokens + t) * width;
      std::fill(list, list + width, -1);
      if (p < params.sparse_from) {
        list[0] = AttentionMask::kDenseQuery;
        continue;
      }
      // A tree query's past at positions >= base: its ancestors (tree row base + j, node j).
      tree_rows.clear();
      if (bits != nullptr) {
        tree_rows.assign(static_cast<size_t>(p - base + 1), -1);
        for (int64_t j = 0; j < mask.width; ++j)
          if ((bits[t * AttentionMask::tree_words(mask.width) + j / 32] >> (j % 32)) & 1u) {
            const int64_t x = pos[j];
            SPECULA_CHECK(x >= base && x <= p && tree_rows[static_cast<size_t>(x - base)] < 0, "sparse_select: tree ",
                          "node ", j, " at position ", x, " is not a distinct ancestor position of query ", t);
            tree_rows[static_cast<size_t>(x - base)] = base + j;
          }
        for (int64_t x = base; x <= p; ++x)
          SPECULA_CHECK(tree_rows[static_cast<size_t>(x - base)] >= 0, "sparse_select: query ", t,
                        " has no ancestor at position ", x);
      }

      // Stage 1: per-head softmax over the C1 kernels complete at p, LSE exact (MiniCPM4) or over
      // the C2 kernels (4.1), summed over the group.
      const int64_t n1 = complete_kernels(p + 1, params.kernel_size, params.kernel_stride);
      QueryKernels c1(k_cache, h, keys.c1, cached_c1, params.kernel_size, params.kernel_stride, &tree_rows, base);
      score.assign(static_cast<size_t>(n1), 0.0f);
      std::vector<float> s1(static_cast<size_t>(group * n1));
      for (int64_t i = 0; i < n1; ++i) {
        const float* key = c1.kernel(i);
        for (int64_t g = 0; g < group; ++g)
          s1[static_cast<size_t>(g * n1 + i)] =
              params.scale * dot_f32(q.as<const float>() + (t * n_heads + h * group + g) * hd, key, static_cast<size_t>(hd));
      }
      bool has_lse = true;
      if (params.uses_c2()) {
        const int64_t n2 = complete_kernels(p + 1, params.c2_kernel_size(), params.c2_kernel_stride());
        has_lse = n2 > 0;
        QueryKernels c2(k_cache, h, keys.c2, cached_c2, params.c2_kernel_size(), params.c2_kernel_stride(), &tree_rows,
                        base);
        std::vector<float> s2(static_cast<size_t>(group * n2));
        for (int64_t j = 0; j < n2; ++j) {
          const float* key = c2.kernel(j);
          for (int64_t g = 0; g < group; ++g)
            s2[static_cast<size_t>(g * n2 + j)] = params.scale * dot_f32(q.as<const float>() + (t * n_heads + h * group + g) * hd,
                                                                         key, static_cast<size_t>(hd));
        }
        for (int64_t g = 0; g < group && has_lse; ++g) {
          float m = -INFINITY, sum = 0.0f;
          for (int64_t j = 0; j < n2; ++j) m = std::max(m, s2[static_cast<size_t>(g * n2 + j)]);
          for (int64_t j = 0; j < n2; ++j) sum += std::exp(s2[static_cast<size_t>(g * n2 + j)] - m);
          lse[static_cast<size_t>(g)] = m + std::log(sum);
        }
      } else {
        has_lse = n1 > 0;
        for (int64_t g = 0; g < group && has_lse; ++g) {
          float m = -INFINITY, sum = 0.0f;
          for (int64_t i = 0; i < n1; ++i) m = std::max(m, s1[static_cast<size_t>(g * n1 + i)]);
          for (int64_t i = 0; i < n1; ++i) sum += std::exp(s1[static_cast<size_t>(g * n1 + i)] - m);
          lse[static_cast<size_t>(g)] = m + std::log(sum);
        }
      }
      if (has_lse)
        for (int64_t i = 0; i < n1; ++i) {
          float sum = 0.0f;
          for (int64_t g = 0; g < group; ++g)
            sum += std::exp(s1[static_cast<size_t>(g * n1 + i)] - lse[static_cast<size_t>(g)]);
          score[static_cast<size_t>(i)] = sum;  // F32 queries: stored as is (the upstream kernel stores q's dtype)
        }

      // Max-pooling onto blocks [0, q_blk]: block b takes kernels b*r - 1 .. b*r + r - 1 that exist
      // (0 when none does, as upstream's zero-initialised scores give).
      const int64_t q_blk = p / B;
      pooled.assign(static_cast<size_t>(q_blk + 1), 0.0f);
      for (int64_t b = 0; b <= q_blk; ++b) {
        float best = -INFINITY;
        for (int64_t i = std::max<int64_t>(0, b * pool_stride - 1); i <= b * pool_stride + pool_stride - 1 && i < n1; ++i)
          best = std::max(best, score[static_cast<size_t>(i)]);
        pooled[static_cast<size_t>(b)] = best == -INFINITY ? 0.0f : best;
      }
      // Forced (+inf) and excluded (-inf) blocks.
      const bool v41 = params.variant == SparseVariant::MiniCPM41;
      for (int64_t b = 0; b <= q_blk; ++b) {
        float& v = pooled[static_cast<size_t>(b)];
        if (v41) {
          if (b < params.init_blocks || b >= q_blk - params.local_blocks) v = INFINITY;
        } else {
          if (b > q_blk - params.local_blocks) v = -INFINITY;
          if (b < params.init_blocks) v = INFINITY;
        }
      }
      // Top-k, ties to the lower block index.
      order.resize(static_cast<size_t>(q_blk + 1));
      for (int64_t b = 0; b <= q_blk; ++b) order[static_cast<size_t>(b)] = b;
      const int64_t k = std::min<int64_t>(params.topk_slots(), q_blk + 1);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
        const float va = pooled[static_cast<size_t>(a)], vb = pooled[static_cast<size_t>(b)];
        return va != vb ? va > vb : a < b;
      });
      chosen.assign(order.begin(), order.begin() + k);
      if (!v41) {
        std::erase_if(chosen, [&](int64_t b) { return b >= q_blk; });
        for (int64_t b = std::max<int64_t>(0, q_blk - params.local_blocks + 1); b <= q_blk; ++b) chosen.push_back(b);
      }
      std::sort(chosen.begin(), chosen.end());
      chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
      SPECULA_CHECK(static_cast<int64_t>(chosen.size()) <= width, "sparse_select: ", chosen.size(),
                    " blocks do not fit a list of ", width);
      for (size_t i = 0; i < chosen.size(); ++i) list[i] = static_cast<int32_t>(chosen[i]);
    }
  });
}

}  // namespace specula::ops::cpu
