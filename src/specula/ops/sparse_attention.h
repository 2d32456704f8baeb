// InfLLM-V2 block selection (the sparse half of dense-sparse switchable attention, MiniCPM4/4.1):
// the ops that turn a layer's queries and KV cache into per-(KV head, query) block lists, which
// then reach ops::attention through AttentionMask::with_blocks(), the same operand draft trees use.
//
//   compress_keys  keeps the layer's compressed keys up to date with the linear part of the cache:
//                  C1[i] = mean(K[s*i, s*i + k)) (k = kernel_size 32, s = kernel_stride 16) and, for
//                  MiniCPM4.1's LSE approximation, C2[j] = mean(K[4s*j, 4s*j + 4k)); means in fp32,
//                  stored in the cache's dtype. Only complete windows exist.
//   sparse_select  stage 1 (per query head: p = exp(q.C1 * scale - LSE), summed over the GQA group
//                  and rounded to the query dtype, as the upstream kernel stores it), max-pooling
//                  of kernels onto blocks (block b takes kernels 4b-1 .. 4b+3, stride block/s,
//                  pad 1), the variant's forced and excluded blocks, top-k with ties to the lower
//                  block index, and the variant's attended set, written ascending.
//
// Where each query sees what (one rule for prefill, chunked prefill, decode and tree verification,
// which makes chunked prefill equal one-shot prefill and speculative greedy equal plain greedy):
//   a query at position p sees the C1 kernels complete at p (s*i + k - 1 <= p) and, for the LSE,
//   the C2 kernels complete at p; their keys are those of p's own past: rows of the linear sequence
//   (row = position) and, in a tree call, the query's ancestors for positions at or past the tree's
//   base. compress_keys caches kernels over linear rows only; a tree query computes the few
//   kernels that include its ancestors itself (at most depth/16 + 1 of C1).
// This is the HF reference's rule: its prefill stage 1 is causal with exactly this visibility and
// its decode compresses the new token's kernel before scoring. It differs from CPM.cu, whose
// chunks never see their own kernels and whose tree tokens score at the wrong positions.
//
// Variants (reference infllmv2.md section 0), with q_blk = p / block_size and
// local = window_size / block_size:
//   MiniCPM4:   top `topk` blocks with blocks < init_blocks forced and (q_blk - local, q_blk]
//               excluded; blocks >= q_blk dropped; attended = that set U the window
//               [q_blk - local + 1, q_blk]. LSE exact over C1.
//   MiniCPM4.1: top `topk + local` blocks with blocks < init_blocks and [q_blk - local, q_blk]
//               forced; blocks > q_blk dropped; attended = that set. LSE over C2 (a query with no
//               complete C2 kernel scores 0 everywhere).
// Future blocks are masked before top-k. The HF code picks among them (score 0) and drops them
// after; with ties going to the lower index, real blocks (scores >= 0) always rank first, so the
// sets are the same.
#pragma once

#include <cstdint>

#include "specula/core/tensor.h"
#include "specula/ops/ops.h"

namespace specula::ops {

enum class SparseVariant { MiniCPM4, MiniCPM41 };

struct SparseSelectParams {
  SparseVariant variant = SparseVariant::MiniCPM41;
  int64_t kernel_size = 32, kernel_stride = 16, block_size = 64;
  int64_t init_blocks = 1;
  int64_t local_blocks = 32;  // window_size / block_size
  int64_t topk = 64;          // sparse_config topk (4.1 adds local_blocks slots)
  // Queries at positions below this attend densely (their list starts with kDenseQuery): the
  // dense/sparse switch, decided by the caller per call (see model/sparse_attention.h).
  int64_t sparse_from = 0;
  float scale = 1.0f;  // 1/sqrt(head_dim), as in attention

  int64_t c2_kernel_size() const { return 4 * kernel_size; }
  int64_t c2_kernel_stride() const { return 4 * kernel_stride; }
  bool uses_c2() const { return variant == SparseVariant::MiniCPM41; }
  // Top-k slots, and the width of a block list (the most blocks one query attends).
  int64_t topk_slots() const { return variant == SparseVariant::MiniCPM41 ? topk + local_blocks : topk; }
  int64_t max_blocks() const { return variant == SparseVariant::MiniCPM41 ? topk_slots() : topk + local_blocks; }
};

// Complete kernels of `size` tokens with stride `stride` within the first `rows` tokens.
inline int64_t complete_kernels(int64_t rows, int64_t size, int64_t stride) {
  return rows < size ? 0 : (rows - size) / stride + 1;
}

// One layer's compressed keys. c1 [n_kv, capacity_c1, hd] and c2 [n_kv, capacity_c2, hd] (empty
// unless the variant uses C2) in the KV cache's dtype; rows [1] I32: the kernels complete within K
// rows [0, rows[0]) are current (device state, so captured graphs keep it up to date).
struct CompressedKeys {
  Tensor c1, c2, rows;
};

// Brings `keys` up to date with the linear rows of this call's cache: [0, slots[T-1] + 1) for a
// causal call (its rows are the sequence), [0, base) for a tree call (the committed prefix).
// Kernels that include a row this call rewrote (a causal call's rows from slots[0] on) are
// recomputed, so a cache truncated and refilled needs no reset.
void compress_keys(OpContext& ctx, const Tensor& k_cache, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, CompressedKeys& keys);

// Block lists for the queries q [T, n_heads, hd] (after RoPE) at `positions`, stored at `slots`,
// whose base visibility is `mask` (causal or tree; its blocks are ignored): blocks
// [n_kv, T, params.max_blocks()] I32, ascending, -1 padded, or kDenseQuery first below
// params.sparse_from. Needs compress_keys first in the same call.
void sparse_select(OpContext& ctx, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                   const Tensor& positions, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, Tensor& blocks);

}  // namespace specula::ops
