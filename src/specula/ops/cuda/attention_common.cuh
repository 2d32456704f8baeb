// Shared pieces of the CUDA attention kernels (ops::attention): the launch parameters, the split-KV
// partition every kernel and the host planner agree on, dtype load/store for the small operands
// (q, out) whose dtype is only known at run time, and the host entry points of the two kernel
// families (attention.cu: dispatch, generic CUDA-core kernel, split combine; attention_mma.cu:
// tensor-core kernels for head_dim 64/128 with 16-bit caches).
//
// Split-KV in one paragraph: the grid is sized on the host from the cache capacity (known at
// graph-capture time) as `num_splits` blocks per query tile and KV head. The current length is
// only known on the device (slots[t] + 1), so each block derives its own KV range from it:
// the length is cut into `num_splits` chunks of whole tiles (at least `min_split_tiles` tiles
// each, so partials stay small next to the KV they summarise); blocks whose chunk starts past
// the length write "empty" (lse = -inf) and leave. A graph captured at one length therefore
// stays correct, and keeps all splits busy, at any other length.
//
// Tree masks (ops::AttentionMask::tree): every query sees slots[T-1] + 1 rows (the last query's
// slot bounds them all); rows below base = slots[T-1] - width + 1 are visible to all, and row
// base + j only to the queries whose mask bit j is set. So the split ranges are the same as for
// a one-token causal call at slots[T-1], tiles entirely below base need no per-element test, and
// a split whose rows are all hidden from a query writes lse = -inf for it like an empty split.
// The bits are read from global memory (a few words per tile that reaches the window), so the
// width has no cap beyond the cache capacity and needs no shared memory.
//
// Block-sparse masks (InfLLM-V2, ops::AttentionMask::with_blocks; attention_sparse.cuh): the
// rows of the linear sequence a query sees are further restricted to the blocks in its list for
// the KV head. Those kernels iterate over "items" (a listed block's rows, 64 at a time, then the
// tree window's rows) instead of over all tiles, so an unlisted block is never loaded; the split
// partition above is then over items instead of tiles, with the same device-side derivation.
//
// Every attention kernel (generic, tensor-core, combine) follows the programmatic-dependent-launch
// contract of pdl.cuh: it waits for the previous kernel before reading q, the caches or the slots
// (or writing anything), and its launches set the attribute when `programmatic` is true.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "specula/core/dtype.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/pdl.cuh"

namespace specula::ops::cuda_impl::attn {

// Dtype of q and out, decided at run time (they are small next to the KV cache, so a switch per
// element costs nothing measurable and saves instantiating every kernel for every combination).
enum class ElemKind : int { F32 = 0, F16 = 1, BF16 = 2 };

// Partials live in CudaContext's workspace: partial_o [T, n_heads, num_splits, head_dim] F32
// (each split's output already divided by its own softmax sum) then partial_lse
// [T, n_heads, num_splits] F32 (log2 of that sum plus the split's max score, in the log2 domain
// the kernels work in, or -inf when the split saw no visible row), the second array starting
// at a kPartialAlignment boundary.
constexpr size_t kPartialAlignment = 256;
// Upper bound on splits: the combine kernel keeps one weight per split in shared memory.
constexpr int kMaxSplits = 256;
// A split must cover at least kPartialOverhead * (query rows of its block) cache rows, so the
// partials written and re-read (2 * rows * head_dim * 4 bytes) stay within a quarter of the
// 16-bit K and V bytes the split streams (4 * cache_rows * head_dim bytes).
constexpr int kPartialOverhead = 8;

struct AttnParams {
  const void* q = nullptr;   // [T, n_heads, head_dim], dtype q_kind
  const void* k = nullptr;   // [n_kv, capacity, head_dim], the kernel's cache type
  const void* v = nullptr;
  const int32_t* slots = nullptr;  // [T]
  void* out = nullptr;             // [T, n_heads * head_dim], dtype out_kind
  float* partial_o = nullptr;      // see above; null when num_splits == 1
  float* partial_lse = nullptr;
  uint32_t* error_word = nullptr;
  // Tree mask: bit rows [tokens, tree_words] (bit j of word j / 32, LSB first); null for the
  // prefix-causal mask (then the words and width are 0).
  const uint32_t* tree_bits = nullptr;
  int tree_words = 0, tree_width = 0;
  int tokens = 0, n_heads = 0, n_kv = 0, group = 0, head_dim = 0, capacity = 0;
  int num_splits = 1;       // grid.x of the attention kernel
  int min_split_tiles = 1;  // see attn_split_range
  float scale_log2 = 0.0f;  // softmax scale times log2(e): the kernels use exp2
  ElemKind q_kind = ElemKind::F32, out_kind = ElemKind::F32;
};

// The block-sparse kernels' parameters. A separate type (the sparse instantiations take it, the
// dense ones keep AttnParams) because a kernel parameter struct past 128 bytes changes how nvcc
// compiles every parameter access, and the dense kernels are to stay exactly as they were.
struct SparseAttnParams : AttnParams {
  // Block lists [n_kv, tokens, block_width] I32 (ops.h: ascending block indices padded with -1,
  // or kDenseQuery first); null for dense attention. sparse_words: 32-bit words of a bitmap over
  // all ceil(capacity / block_size) blocks; sparse_union_cap: the most distinct blocks one thread
  // block's queries can list (these two size the kernels' shared-memory union; host-set).
  const int32_t* blocks = nullptr;
  int block_width = 0, block_size = 0, sparse_words = 0, sparse_union_cap = 0;
  // Host-only: run multi-token calls in the 16-row layout, so that a block holds one token of a
  // 16-head group (its union is its own list) instead of several (CudaContext::sparse_token_tiles).
  bool token_tiles = false;
};

__host__ __device__ inline int ceil_div_int(int a, int b) { return (a + b - 1) / b; }

// KV tiles [begin, end) of split `split` when `len_tiles` tiles are visible; empty when begin == end.
struct TileRange {
  int begin, end;
};
__host__ __device__ inline TileRange attn_split_range(int len_tiles, int num_splits, int min_split_tiles, int split) {
  int chunk = ceil_div_int(len_tiles, num_splits);
  if (chunk < min_split_tiles) chunk = min_split_tiles;
  // split * chunk cannot overflow: split < kMaxSplits and chunk <= capacity / tile + min_split_tiles.
  int begin = split * chunk;
  if (begin > len_tiles) begin = len_tiles;
  int end = begin + chunk;
  if (end > len_tiles) end = len_tiles;
  return {begin, end};
}

__device__ __forceinline__ float load_elem(const void* base, ElemKind kind, int64_t index) {
  switch (kind) {
    case ElemKind::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    case ElemKind::F16: return __half2float(static_cast<const __half*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
  }
}

__device__ __forceinline__ void store_elem(void* base, ElemKind kind, int64_t index, float value) {
  switch (kind) {
    case ElemKind::BF16: static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(value); break;
    case ElemKind::F16: static_cast<__half*>(base)[index] = __float2half_rn(value); break;
    default: static_cast<float*>(base)[index] = value; break;
  }
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Cache rows query token t may see, [0, length): slots[t] + 1 (causal) or slots[T-1] + 1 (tree
// mask, whose window must also start at row 0 or later), or 0 for a slot outside the cache or a
// window reaching before row 0, reported through the context's error word (the row's output is
// then written as zeros).
template <bool kTree>
__device__ __forceinline__ int attn_query_length(const AttnParams& p, int t, bool report) {
  const int slot = p.slots[t];
  bool valid = slot >= 0 && slot < p.capacity;
  int length = slot + 1;
  if constexpr (kTree) {
    const int last = p.slots[p.tokens - 1];
    valid = valid && last >= 0 && last < p.capacity && last - p.tree_width + 1 >= 0;
    length = last + 1;
  }
  if (valid) return length;
  if (report && p.error_word != nullptr) atomicOr(p.error_word, static_cast<unsigned>(cuda::kErrorSlotOutOfRange));
  return 0;
}

__device__ __forceinline__ int attn_visible_length(const AttnParams& p, int t, bool report) {
  return attn_query_length<false>(p, t, report);
}

// First row of the tree mask's window (only meaningful when tree_bits is set).
__device__ __forceinline__ int attn_tree_base(const AttnParams& p) {
  return p.slots[p.tokens - 1] - p.tree_width + 1;
}

// Word i of a tree-mask bit row, as visibility of the rows it covers: all visible below the
// window (i < 0), none past the row's words.
__device__ __forceinline__ uint32_t attn_tree_word(const uint32_t* row_bits, int words, int i) {
  if (i < 0) return 0xffffffffu;
  return i < words ? __ldg(row_bits + i) : 0u;
}

// Visibility of the 64 rows base + offset .. base + offset + 63 to the query whose bit row is
// `row_bits` (bit k of the result: row base + offset + k); rows below the window read as visible,
// rows past the mask's words as hidden (the caller bounds rows by the query's length anyway).
__device__ __forceinline__ uint64_t attn_tree_window64(const uint32_t* row_bits, int words, int offset) {
  const int q = offset >> 5;   // floor division, also for negative offsets
  const int r = offset & 31;
  const uint64_t lo = static_cast<uint64_t>(attn_tree_word(row_bits, words, q)) |
                      (static_cast<uint64_t>(attn_tree_word(row_bits, words, q + 1)) << 32);
  if (r == 0) return lo;
  const uint64_t hi = attn_tree_word(row_bits, words, q + 2);
  return (lo >> r) | (hi << (64 - r));
}

// What the host planner needs to know about one kernel configuration.
struct KernelShape {
  int block_rows;       // query rows (token, head-in-group pairs) per block
  int tile_cols;        // cache rows per split-partition tile
  int blocks_per_sm;    // occupancy of the attention kernel
  int real_rows;        // query rows a block actually holds (<= block_rows), for the partial budget
  // The most tiles one block walks, when that is known to be below the capacity's (block-sparse
  // walks of a causal call: their lists bound it); 0: the capacity's. Only the split count
  // follows it: a block with a longer walk (a dense query in a sparse call) still covers it all.
  int max_tiles = 0;
};

// Host side, defined in attention.cu. Chooses num_splits and min_split_tiles for a grid of
// `base_blocks` blocks per split and points the partial buffers into the workspace.
void plan_splits(AttnParams& p, const KernelShape& shape, int base_blocks, int multiprocessors, void* workspace,
                 size_t workspace_bytes);
// Host side, defined in attention.cu: merges the partials into out (only when num_splits > 1).
void launch_combine(const AttnParams& p, cudaStream_t stream, bool programmatic);
// Host side, defined in attention_mma.cu: tensor-core attention; the caller has checked that
// q and caches share a 16-bit dtype, head_dim is 64 or 128 and the pointers are 16-byte aligned.
// Returns false, launching nothing, only for a block-sparse call whose shared-memory union does
// not fit the device (the caller then runs the generic kernel).
bool run_attention_mma(const SparseAttnParams& p, DType cache_dtype, int multiprocessors, size_t smem_optin, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream, bool programmatic);
// Host side, defined in attention_mma_sparse.cu: the block-sparse instantiations of the same.
bool run_attention_mma_sparse(SparseAttnParams p, DType cache_dtype, int multiprocessors, size_t smem_optin,
                              void* workspace, size_t workspace_bytes, cudaStream_t stream, bool programmatic);

}  // namespace specula::ops::cuda_impl::attn
