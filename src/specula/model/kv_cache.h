// KvCache: the K and V rows of every layer of one sequence, an object of its own so that what
// speculative decoding does to it has one home: a verification pass writes its tree's rows past
// the committed length, then commit() moves the accepted path's rows down (ops::kv_gather, on the
// device) and truncate() forgets the rest. The Transformer and the EAGLE draft head each own one.
//
// Memory comes from the caller's arena (planned with plan()); the committed length is host-side
// bookkeeping of the decoder that drives the cache: kernels never read it (they get slots).
//
// With InfLLM-V2 sparse attention the cache also holds each layer's compressed keys (C1, and C2
// for MiniCPM4.1's LSE approximation) and, per layer, how many K rows they are current with: device
// state kept by ops::compress_keys, which recomputes whatever a call rewrote, so truncate() and the
// speculative compaction need not touch it.
#pragma once

#include <span>
#include <vector>

#include "specula/core/arena.h"
#include "specula/core/tensor.h"
#include "specula/ops/ops.h"
#include "specula/ops/sparse_attention.h"

namespace specula::model {

struct KvCacheShape {
  int64_t layers = 0, kv_heads = 0, capacity = 0, head_dim = 0;
  DType dtype = DType::F32;
  // Compressed-key kernels per layer and head (0: no sparse attention; c2 0: no second tier).
  int64_t c1_capacity = 0, c2_capacity = 0;
};

class KvCache {
 public:
  KvCache() = default;
  static void plan(const KvCacheShape& shape, ArenaPlan& plan);
  KvCache(const KvCacheShape& shape, Arena& arena);

  const KvCacheShape& shape() const { return shape_; }
  int64_t capacity() const { return shape_.capacity; }
  // [kv_heads, capacity, head_dim] of one layer.
  Tensor& k(int64_t layer) { return tensors_[static_cast<size_t>(2 * layer)]; }
  Tensor& v(int64_t layer) { return tensors_[static_cast<size_t>(2 * layer + 1)]; }
  // K and V of every layer (the operand of ops::kv_gather).
  std::span<Tensor> all() { return tensors_; }
  // One layer's compressed keys (needs c1_capacity > 0).
  ops::CompressedKeys compressed(int64_t layer);
  bool has_compressed() const { return shape_.c1_capacity > 0; }

  // Rows [0, length) hold the committed sequence.
  int64_t length() const { return length_; }
  // Forgets every row from `length` on (they are overwritten by the next writes).
  void truncate(int64_t length);
  // Marks `rows` more rows (already written in place) as committed.
  void append(int64_t rows);
  // Moves the rows src_rows[i] to dst_rows[i] for i < count[0] in every layer (device tensors, so
  // the move can be captured in a graph); the caller then sets the length with truncate/append.
  void gather(ops::OpContext& ctx, const Tensor& src_rows, const Tensor& dst_rows, const Tensor& count);

 private:
  KvCacheShape shape_;
  std::vector<Tensor> tensors_;  // K0, V0, K1, V1, ...
  std::vector<Tensor> c1_, c2_;   // per layer, when sparse
  Tensor compressed_rows_;        // [layers] I32
  int64_t length_ = 0;
};

}  // namespace specula::model
