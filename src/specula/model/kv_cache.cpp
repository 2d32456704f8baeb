// KV cache allocation and bookkeeping (see kv_cache.h).
#include "specula/model/kv_cache.h"

#include "specula/core/error.h"

namespace specula::model {

void KvCache::plan(const KvCacheShape& s, ArenaPlan& plan) {
  for (int64_t i = 0; i < 2 * s.layers; ++i) plan.add(s.dtype, {s.kv_heads, s.capacity, s.head_dim});
}

KvCache::KvCache(const KvCacheShape& s, Arena& arena) : shape_(s) {
  SPECULA_CHECK(s.layers >= 1 && s.kv_heads >= 1 && s.capacity >= 1 && s.head_dim >= 1,
                "KV cache: layers, heads, capacity and head_dim must be positive");
  for (int64_t i = 0; i < 2 * s.layers; ++i) tensors_.push_back(arena.alloc(s.dtype, {s.kv_heads, s.capacity, s.head_dim}));
}

void KvCache::truncate(int64_t length) {
  SPECULA_CHECK(length >= 0 && length <= length_, "KV cache: cannot truncate to ", length, " rows (", length_,
                " committed)");
  length_ = length;
}

void KvCache::append(int64_t rows) {
  SPECULA_CHECK(rows >= 0 && length_ + rows <= shape_.capacity, "KV cache: ", rows, " more rows after ", length_,
                " exceed the capacity of ", shape_.capacity);
  length_ += rows;
}

void KvCache::gather(ops::OpContext& ctx, const Tensor& src_rows, const Tensor& dst_rows, const Tensor& count) {
  ops::kv_gather(ctx, all(), src_rows, dst_rows, count);
}

}  // namespace specula::model
