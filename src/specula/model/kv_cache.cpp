// KV cache allocation and bookkeeping (see kv_cache.h).
#include "specula/model/kv_cache.h"

#include <vector>

#include "specula/core/error.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/core/cuda_memory.h"
#endif

namespace specula::model {

void KvCache::plan(const KvCacheShape& s, ArenaPlan& plan) {
  for (int64_t i = 0; i < 2 * s.layers; ++i) plan.add(s.dtype, {s.kv_heads, s.capacity, s.head_dim});
  if (s.c1_capacity > 0) {
    for (int64_t l = 0; l < s.layers; ++l) {
      plan.add(s.dtype, {s.kv_heads, s.c1_capacity, s.head_dim});
      if (s.c2_capacity > 0) plan.add(s.dtype, {s.kv_heads, s.c2_capacity, s.head_dim});
    }
    plan.add(DType::I32, {s.layers});
  }
}

KvCache::KvCache(const KvCacheShape& s, Arena& arena) : shape_(s) {
  SPECULA_CHECK(s.layers >= 1 && s.kv_heads >= 1 && s.capacity >= 1 && s.head_dim >= 1,
                "KV cache: layers, heads, capacity and head_dim must be positive");
  for (int64_t i = 0; i < 2 * s.layers; ++i) tensors_.push_back(arena.alloc(s.dtype, {s.kv_heads, s.capacity, s.head_dim}));
  if (s.c1_capacity > 0) {
    for (int64_t l = 0; l < s.layers; ++l) {
      c1_.push_back(arena.alloc(s.dtype, {s.kv_heads, s.c1_capacity, s.head_dim}));
      if (s.c2_capacity > 0) c2_.push_back(arena.alloc(s.dtype, {s.kv_heads, s.c2_capacity, s.head_dim}));
    }
    compressed_rows_ = arena.alloc(DType::I32, {s.layers});
    // Nothing compressed yet (arena memory starts undefined).
    const std::vector<int32_t> zeros(static_cast<size_t>(s.layers), 0);
    if (compressed_rows_.device == Device::CPU) {
      std::copy(zeros.begin(), zeros.end(), compressed_rows_.as<int32_t>());
    } else {
#ifdef SPECULA_WITH_CUDA
      cuda_copy_to_device(compressed_rows_.data, zeros.data(), zeros.size() * sizeof(int32_t));
#endif
    }
  }
}

ops::CompressedKeys KvCache::compressed(int64_t layer) {
  SPECULA_CHECK(has_compressed() && layer >= 0 && layer < shape_.layers, "KV cache: no compressed keys for layer ",
                layer);
  ops::CompressedKeys keys;
  keys.c1 = c1_[static_cast<size_t>(layer)];
  if (!c2_.empty()) keys.c2 = c2_[static_cast<size_t>(layer)];
  keys.rows = compressed_rows_.slice_outer(layer, 1);
  return keys;
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
