// CPU reference of ops::kv_gather: moves accepted draft-tree rows of every KV cache to their
// committed places. Sources are copied out first, then written, so overlapping ranges (the usual
// case: an accepted path moves a few rows down by a few places) are handled by construction.
#include <cstring>
#include <vector>

#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"

namespace specula::ops::cpu {

void kv_gather(ThreadPool& pool, std::span<Tensor> caches, const Tensor& src_rows, const Tensor& dst_rows,
               const Tensor& count) {
  if (caches.empty()) return;
  const int64_t n = count.as<const int32_t>()[0];
  SPECULA_CHECK(n >= 0 && n <= src_rows.numel(), "kv_gather: count ", n, " is outside [0, ", src_rows.numel(), "]");
  const int64_t n_kv = caches[0].dim(0), capacity = caches[0].dim(1);
  const size_t row_bytes = static_cast<size_t>(caches[0].dim(2)) * dtype_size(caches[0].dtype);
  const int32_t* src = src_rows.as<const int32_t>();
  const int32_t* dst = dst_rows.as<const int32_t>();
  for (int64_t i = 0; i < n; ++i)
    SPECULA_CHECK(src[i] >= 0 && src[i] < capacity && dst[i] >= 0 && dst[i] < capacity, "kv_gather: move ", src[i],
                  " -> ", dst[i], " is outside the KV cache of ", capacity, " rows");
  const int64_t items = static_cast<int64_t>(caches.size()) * n_kv;
  pool.parallel_for(items, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> staged(static_cast<size_t>(n) * row_bytes);
    for (int64_t item = begin; item < end; ++item) {
      auto* head = static_cast<uint8_t*>(caches[static_cast<size_t>(item / n_kv)].data) +
                   static_cast<size_t>(item % n_kv) * static_cast<size_t>(capacity) * row_bytes;
      for (int64_t i = 0; i < n; ++i)
        std::memcpy(staged.data() + static_cast<size_t>(i) * row_bytes, head + static_cast<size_t>(src[i]) * row_bytes,
                    row_bytes);
      for (int64_t i = 0; i < n; ++i)
        std::memcpy(head + static_cast<size_t>(dst[i]) * row_bytes, staged.data() + static_cast<size_t>(i) * row_bytes,
                    row_bytes);
    }
  });
}

}  // namespace specula::ops::cpu
