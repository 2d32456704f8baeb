// The operator set every model definition is written in. Each op takes Tensors and runs on the
// backend of their device (all operands of one call share a device; a mix is an error). The CPU
// implementations (ops/cpu/) are the reference: simple, fp32 arithmetic, multithreaded. The CUDA
// implementations (ops/cuda/) are tested against them op by op on random inputs.
//
// Why these ops and not finer ones: batch-1 decode is bound by memory traffic and launch count, so
// the boundaries are where fusion pays (residual add + RMSNorm; q/k norm + RoPE + KV-cache store;
// SwiGLU over the fused gate/up output). Everything an op needs per step (token ids, positions,
// cache slots) is a device tensor, never a host scalar, so a CUDA step can be captured once as a
// graph and replayed with new values.
//
// Dtypes: weights BF16, F16 or F32; activations F32 on the CPU, BF16/F16 or F32 on CUDA (each op
// accepts any float activation dtype its backend supports and converts on load/store, accumulating
// in fp32). Index tensors are I32.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "specula/core/tensor.h"

namespace specula {
class ThreadPool;
namespace cuda {
struct CudaContext;
}

namespace ops {

// Optional per-op timing hook (benchmarks attach one to see where a step's time goes; nothing
// attaches one inside a captured graph).
class OpProfiler {
 public:
  virtual ~OpProfiler() = default;
  virtual void begin(std::string_view op) = 0;
  virtual void end(std::string_view op) = 0;
  // Labels the ops that follow (a phase of a step, e.g. a speculative cycle's "draft").
  virtual void section(std::string_view) {}
};

// Backend state passed down explicitly (no globals): the CPU thread pool and/or the CUDA stream,
// library handles and workspace. An op on CPU tensors needs `pool`; on CUDA tensors, `cuda`.
struct OpContext {
  ThreadPool* pool = nullptr;
  cuda::CudaContext* cuda = nullptr;
  OpProfiler* profiler = nullptr;
};

// out[t, :] = scale * table[ids[t], :].   table [V, H]; ids [T] I32; out [T, H].
// An id outside [0, V) is an error on the CPU; on CUDA the row is written as zeros and the id is
// reported through the CUDA context's error flag (no host sync inside a step).
void embedding(OpContext& ctx, const Tensor& table, const Tensor& ids, float scale, Tensor& out);

// out = weight * (x / sqrt(mean(x^2) + eps)), over the last dimension, per row.
// x [R, D]; weight [D]; out [R, D] (may alias x).
void rms_norm(OpContext& ctx, const Tensor& x, const Tensor& weight, float eps, Tensor& out);

// Fused residual update and norm: residual += delta_scale * delta; out = rms_norm(residual).
// residual [R, D] (read and written); delta [R, D]; weight [D]; out [R, D].
void add_rms_norm(OpContext& ctx, Tensor& residual, const Tensor& delta, float delta_scale,
                  const Tensor& weight, float eps, Tensor& out);

// How a matrix product's result lands in `out`: Overwrite stores it; Accumulate adds it to what
// out holds, which is how a residual update (x += s * (a @ W^T)) fuses into the product that
// feeds it: no separate add, no rounded intermediate.
enum class OutputMode { Overwrite, Accumulate };

// out = alpha * (x @ weight^T) + bias (Accumulate: out += ...).   x [T, K]; weight [N, K]
// (nn.Linear layout); bias [N] or empty; out [T, N].
void linear(OpContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
            float alpha = 1.0f, OutputMode mode = OutputMode::Overwrite);

// out = rms_norm(x) @ weight^T + bias: the norm that feeds a projection (input and
// post-attention norms), fused where the backend can (on CUDA at one token the GEMV normalises x
// itself, in fp32: once per SM on sm_90, once per block elsewhere). `normed` [T, K] is scratch in the activation dtype for the
// unfused path (rms_norm into it, then linear); whether it is written is up to the backend.
// x [T, K] (the residual stream); norm_weight [K]; weight [N, K]; bias [N] or empty; out [T, N].
void rms_norm_linear(OpContext& ctx, const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight,
                     const Tensor& bias, Tensor& normed, Tensor& out);

// Rotary embedding parameters of one model (see model/rope.h for how they are derived).
// inv_freq [head_dim / 2] F32 on the op's device; cos and sin are multiplied by attention_scaling.
struct RopeParams {
  Tensor inv_freq;
  float attention_scaling = 1.0f;
};

// Everything between the fused QKV projection and attention, in one pass:
//   q, k, v = split(qkv[t]) into [n_heads, hd], [n_kv, hd], [n_kv, hd]
//   if q_norm/k_norm are given: per-head RMSNorm (Qwen3), eps = norm_eps
//   RoPE (HF rotate-half convention) on q and k at positions[t], computed in fp32
//   q_out[t] = q;  k_cache[h, slots[t]] = k[h];  v_cache[h, slots[t]] = v[h]
// qkv [T, (n_heads + 2 n_kv) * hd]; positions, slots [T] I32; q_out [T, n_heads, hd];
// k_cache, v_cache [n_kv, capacity, hd]. Slots are cache rows, positions are RoPE angles: they
// differ for draft trees, whose tokens share positions but not rows.
void qkv_rope_store(OpContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm,
                    float norm_eps, const RopeParams& rope, const Tensor& positions, const Tensor& slots,
                    Tensor& q_out, Tensor& k_cache, Tensor& v_cache);

// Which KV-cache rows each query of an attention call sees: the one definition of visibility for
// every attention path (the CPU reference's attention_row_visible() below is its meaning; CUDA
// kernels implement the same rule). Two base kinds, and block sparsity on top of either:
//   prefix-causal (tree_bits empty): query t sees rows [0, slots[t]];
//   tree: the mask covers the `width` rows ending at the last query's own row,
//     base = slots[T-1] - width + 1; query t sees every row below base, and row base + j
//     (0 <= j < width) when bit j of its mask row is set; nothing above slots[T-1].
//   block-sparse (InfLLM-V2, `blocks` given): of the rows the base kind shows, a row of the linear
//     sequence (every row of a causal call, the rows below base of a tree call: row = position
//     there) stays visible only if its block, row / block_size, is in the query's list for the
//     KV head; a tree's own rows follow the tree bits alone (they are the query's ancestors, which
//     the sparse selection always covers: its local blocks reach back further than any tree is
//     deep, which the engine checks). A list whose first entry is kDenseQuery leaves the query
//     dense (below the dense/sparse switch).
// The tree kind serves both sides of speculative decoding: verification (the T tree nodes sit in
// rows [base, base + T), each node's bits are its ancestors and itself) and a draft level (the
// nodes of all draft levels so far sit in the last `width` rows). `base` comes from the slots on
// the device, so a graph captured for one tree shape replays at any cache length.
struct AttentionMask {
  Tensor tree_bits;   // [T, tree_words(width)] I32 on the op's device (bit j of word j / 32, LSB first)
  int64_t width = 0;  // mask columns (cache rows the tree covers)
  // Block-sparse rows: [n_kv, T, max_blocks] I32, each row the attended block indices ascending
  // and padded with -1 (or kDenseQuery first); empty for dense attention.
  Tensor blocks;
  int64_t block_size = 0;

  static constexpr int32_t kDenseQuery = -2;
  static AttentionMask causal() { return {}; }
  static AttentionMask tree(Tensor bits, int64_t width) {
    AttentionMask m;
    m.tree_bits = bits;
    m.width = width;
    return m;
  }
  // This mask with InfLLM-V2 block lists added.
  AttentionMask with_blocks(Tensor block_lists, int64_t block) const {
    AttentionMask m = *this;
    m.blocks = block_lists;
    m.block_size = block;
    return m;
  }
  bool is_tree() const { return !tree_bits.empty(); }
  bool is_sparse() const { return !blocks.empty(); }
  static int64_t tree_words(int64_t width) { return (width + 31) / 32; }
};

// Whether block `block` is in one query's block list (`list` points at its max_blocks entries).
inline bool block_listed(const int32_t* list, int64_t max_blocks, int64_t block) {
  if (max_blocks > 0 && list[0] == AttentionMask::kDenseQuery) return true;
  for (int64_t i = 0; i < max_blocks && list[i] >= 0; ++i)
    if (list[i] == block) return true;
  return false;
}

// The meaning of AttentionMask for query t of `tokens` (host-side data): whether cache row `row`
// is visible. `bits` points at the mask's [tokens, tree_words(width)] words (null for causal);
// `block_list` at the query's block list for the KV head in question (null for dense).
inline bool attention_row_visible(const int32_t* slots, int64_t tokens, const uint32_t* bits, int64_t width, int64_t t,
                                  int64_t row, const int32_t* block_list = nullptr, int64_t max_blocks = 0,
                                  int64_t block_size = 0) {
  auto linear_row_visible = [&] {
    return block_list == nullptr || block_listed(block_list, max_blocks, row / block_size);
  };
  if (bits == nullptr) return row <= slots[t] && linear_row_visible();
  const int64_t last = slots[tokens - 1], base = last - width + 1;
  if (row < base) return linear_row_visible();
  if (row > last) return false;
  const int64_t j = row - base;
  return (bits[t * AttentionMask::tree_words(width) + j / 32] >> (j % 32)) & 1u;
}

// Scaled dot-product attention of T queries over the KV cache, with visibility given by `mask`
// (prefix-causal by default: query t sees rows [0, slots[t]]). GQA: query head j uses KV head
// j / (n_heads / n_kv). q [T, n_heads, hd]; k_cache, v_cache [n_kv, capacity, hd]; slots [T] I32;
// out [T, n_heads * hd]. Softmax in fp32. A query that sees no row gets zeros.
void attention(OpContext& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
               const Tensor& slots, float scale, Tensor& out, const AttentionMask& mask = AttentionMask::causal());

// A decoder layer's attention from the fused QKV projection on: qkv_rope_store then attention
// (same arguments and results; q_out holds the rotated queries afterwards). One op because the
// CUDA backend runs a one-token call (batch-1 decode) as a single kernel, where three separate
// kernels cost more in launch boundaries and load round trips than the cache reads themselves.
// That kernel reads the cache rows below slots[0] before it waits for the previous kernel, so in
// a one-token call those rows must not be written by work queued after the forward's input copy
// (they come from earlier forwards, which is how the engine fills the cache).
void qkv_attention(OpContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                   const RopeParams& rope, const Tensor& positions, const Tensor& slots, float scale,
                   Tensor& q_out, Tensor& k_cache, Tensor& v_cache, Tensor& out,
                   const AttentionMask& mask = AttentionMask::causal());

// Moves KV-cache rows, the compaction after speculative verification: for i < count[0],
// row dst_rows[i] of every cache in `caches` becomes what row src_rows[i] held before the call
// (all sources are read before any destination is written, so the ranges may overlap).
// caches: tensors of one shape [n_kv, capacity, hd] and dtype (K and V of every layer);
// src_rows, dst_rows [n] I32; count [1] I32 (<= n), on the caches' device, so a captured graph
// serves any accepted length. A row outside the cache is an error (CPU) or reported through the
// CUDA context's error flag and skipped.
void kv_gather(OpContext& ctx, std::span<Tensor> caches, const Tensor& src_rows, const Tensor& dst_rows,
               const Tensor& count);

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, I + i].   gate_up [T, 2I]; out [T, I].
void silu_mul(OpContext& ctx, const Tensor& gate_up, Tensor& out);

// The MLP down projection fused with SwiGLU: out = alpha * silu_mul(gate_up) @ weight^T
// (Accumulate: out += ...), without the [T, I] activation in between where the backend can (on
// CUDA at 1-2 tokens the GEMV computes it on load, in fp32; more tokens go through a 16-bit copy
// in the workspace, like silu_mul). gate_up [T, 2I]; weight [N, I]; out [T, N].
void linear_swiglu(OpContext& ctx, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha = 1.0f,
                   OutputMode mode = OutputMode::Overwrite);

// out[t] = argmax_v logits[t, v] (ties: lowest id).   logits [T, V]; out [T] I32.
void argmax(OpContext& ctx, const Tensor& logits, Tensor& out);

// The k best entries of each row's log-softmax (draft trees grow from these):
//   values[r, j] = logits[r, i_j] - logsumexp(logits[r, :]),  indices[r, j] = i_j,
// ranked by value, the lower index first on ties; NaN entries are never chosen.
// logits [R, V] F32; values [R, k] F32; indices [R, k] I32; 1 <= k <= min(V, kMaxTopK).
inline constexpr int64_t kMaxTopK = 64;
void top_k_log_softmax(OpContext& ctx, const Tensor& logits, Tensor& values, Tensor& indices);

// Element-wise copy with dtype conversion between two tensors of equal element count on the
// same device.
void convert(OpContext& ctx, const Tensor& src, Tensor& dst);

// Fills a float tensor with uniform values in [-scale, scale) from a counter-based hash of
// (seed, element index), so both backends produce identical values. Used to build random
// models for benchmarks and tests without a checkpoint.
void fill_random(OpContext& ctx, Tensor& t, uint64_t seed, float scale);

}  // namespace ops
}  // namespace specula
