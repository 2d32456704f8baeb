// Tensor-core attention over the KV cache (flash-attention-2 style), the kernel behind both the
// prefill and the decode path of ops::attention for 16-bit caches and head_dim 64/128.
//
// Why one kernel for both: a block owns a tile of query *rows*, where a row is a (token,
// query-head-in-GQA-group) pair of one KV head (row = token * group + head_in_group). Folding the
// group into the M dimension means every K/V tile brought into shared memory serves all query
// heads that share it, which is what both decode (1 token x group heads) and prefill (many tokens)
// want. Two warp layouts of the same code cover the two regimes:
//   - prefill (WarpsM = 4, WarpsN = 1): 64 query rows, each warp 16 rows against the whole tile;
//   - decode  (WarpsM = 1, WarpsN = 4): 16 query rows, each warp a quarter of the tile's cache
//     rows with its own online softmax; the four states are merged through shared memory at the
//     end, so a 16-row tile does not leave three warps idle.
// Split-KV (attention_common.cuh) is orthogonal: any configuration can write partials.
//
// Masking goes through a policy type (FlashInfer-style) so the tree-mask variant for speculative
// decoding (TreeMask below) and the block-sparse variant for InfLLM-V2 (SparseMask) reuse the
// pipeline: the policy says how far the tile's columns reach, whether a whole KV tile is visible
// to every row (no per-element test), what a row needs to test the columns of one warp's tile
// slice (computed once per tile, only when the tile is not wholly visible), and whether one (row,
// column) pair is visible. The block-sparse policy also picks which tiles to visit: the loop runs
// over "items" (attention_sparse.cuh), each at most one tile of cache rows, instead of over
// consecutive tiles; the dense policies' instantiations keep the contiguous tile loop as it was
// (every sparse difference sits behind `if constexpr (Mask::kSparse)`).
//
// Data path per KV tile: cp.async 16-byte copies into a kStages-deep ring of padded shared-memory
// tiles (row stride head_dim + 8 elements, which makes the ldmatrix row addresses of a phase fall
// into distinct bank groups); S = Q K^T and O += P V with mma.sync m16n8k16 (fp32 accumulate);
// softmax in fp32 in the log2 domain (scores pre-multiplied by scale * log2 e, exp2).
// Cache rows at or past the tile's longest visible length are zero-filled rather than read, so
// stale or poisoned cache memory past the current position never reaches the arithmetic.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

#include "specula/ops/cuda/attention_common.cuh"
#include "specula/ops/cuda/attention_sparse.cuh"
#include "specula/ops/cuda/ptx.cuh"

namespace specula::ops::cuda_impl::attn {

// PTX wrappers (smem_addr, cp_async_16/commit/wait, ldmatrix_x4[_trans], mma_m16n8k16): ops/cuda/ptx.cuh.

// Per-element-type packing of two fp32 values into one mma operand register (lower column in the
// lower half, as the mma fragment layout expects); the mma itself is ptx.cuh's mma_m16n8k16.
template <typename Elem>
struct MmaElem;

template <>
struct MmaElem<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <>
struct MmaElem<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

// ---- mask policies --------------------------------------------------------------------------

// Causal by cache row: query row r sees cache rows [0, len(r)), len = slots[token] + 1 (0 for an
// invalid slot). `min_len`/`max_len` are over the block's real rows.
struct CausalBySlotMask {
  static constexpr bool kTree = false;
  static constexpr bool kSparse = false;
  using Params = AttnParams;  // the kernel's parameter type
  using RowState = int;   // the row's visible length, held in a register
  using TileState = int;  // the same: nothing more is needed per tile
  int min_len = INT_MAX;
  int max_len = 0;
  __device__ __forceinline__ void init(const AttnParams&) {}
  __device__ __forceinline__ RowState row_state(const AttnParams&, int /*token*/, int len) const { return len; }
  // Columns at or past this are visible to no row of the tile (and are not even loaded).
  __device__ __forceinline__ int column_end() const { return max_len; }
  // True if every row sees every column in [col_begin, col_end): no per-element test needed.
  __device__ __forceinline__ bool all_visible(int /*col_begin*/, int col_end) const { return col_end <= min_len; }
  __device__ __forceinline__ TileState tile_state(RowState len, int /*col0*/) const { return len; }
  __device__ __forceinline__ bool visible(TileState len, int col) const { return col < len; }
};

// Tree mask (ops::AttentionMask::tree): every real row's length is slots[T-1] + 1 (0 for invalid
// input); columns below `base` are visible to all, columns in [base, length) by the row token's
// bits. Per tile a row fetches the 64 bits covering its warp's columns (three words, L1/L2 hits)
// once, then tests a column with a shift.
struct TreeMask {
  static constexpr bool kTree = true;
  static constexpr bool kSparse = false;
  using Params = AttnParams;
  struct RowState {
    int len;
    const uint32_t* bits;  // the query token's bit row
  };
  struct TileState {
    int len, col0;
    uint64_t bits;  // bit k: column col0 + k
  };
  int min_len = INT_MAX;
  int max_len = 0;
  int base = 0, words = 0;
  __device__ __forceinline__ void init(const AttnParams& p) {
    base = attn_tree_base(p);
    words = p.tree_words;
  }
  __device__ __forceinline__ RowState row_state(const AttnParams& p, int token, int len) const {
    return {len, p.tree_bits + static_cast<int64_t>(min(token, p.tokens - 1)) * words};
  }
  __device__ __forceinline__ int column_end() const { return max_len; }
  __device__ __forceinline__ bool all_visible(int /*col_begin*/, int col_end) const {
    return col_end <= min_len && col_end <= base;
  }
  __device__ __forceinline__ TileState tile_state(RowState row, int col0) const {
    return {row.len, col0, row.len > 0 ? attn_tree_window64(row.bits, words, col0 - base) : 0ull};
  }
  __device__ __forceinline__ bool visible(const TileState& s, int col) const {
    return col < s.len && ((s.bits >> (col - s.col0)) & 1ull) != 0ull;
  }
};

// Block-sparse lists (InfLLM-V2) over a causal (kTreeT false) or tree base mask; the walk over
// items and its three modes are attention_sparse.cuh's. Every visibility test goes through 64
// column bits per (row, warp slice), built once per tile: the row's length bound, its token's
// listing of the item's block (union walk), its list per block (mixed walk) and the tree bits for
// rows at or past the tree base (a row of a dense token sees the whole linear part).
template <bool kTreeT>
struct SparseMask {
  static constexpr bool kTree = kTreeT;
  static constexpr bool kSparse = true;
  using Params = SparseAttnParams;
  struct RowState {
    int len;
    int tok;                // the token's index among the block's tokens (bit of SparseItem::tokens)
    bool dense;             // its list is kDenseQuery
    const int32_t* list;    // its block list (mixed walk)
    const uint32_t* bits;   // its tree bit row (kTree)
  };
  struct TileState {
    uint64_t bits;  // bit k: column col0 + k
    int col0;
  };
  int min_len = INT_MAX;
  int max_len = 0;
  int base = 0, words = 0;      // tree
  int width = 0, block_size = 1;
  int kvh = 0, tok0 = 0, n_tok = 1;
  unsigned long long all_tokens = 1ull;
  const int* tok_class = nullptr;
  SparseWalk walk;

  __device__ __forceinline__ void init(const SparseAttnParams& p) {
    if constexpr (kTree) {
      base = attn_tree_base(p);
      words = p.tree_words;
    }
    width = p.block_width;
    block_size = p.block_size;
  }
  // Before the barrier that follows the tokens' records: the block's tokens and this thread's
  // first list entry (sparse_prefetch_entry).
  __device__ __forceinline__ int prefetch(const SparseAttnParams& p, int kv_head, int m0, int rows_here, int group) {
    kvh = kv_head;
    tok0 = m0 / group;
    n_tok = (m0 + rows_here - 1) / group - tok0 + 1;
    all_tokens = n_tok >= 64 ? ~0ull : (1ull << n_tok) - 1ull;
    return sparse_prefetch_entry(p, kvh, tok0, n_tok);
  }
  // After init and the min/max lengths: all threads; returns the block's item count.
  template <int kThreads>
  __device__ int setup(const SparseAttnParams& p, const SparseSmem& s, int first_entry) {
    tok_class = s.tok_class;
    return sparse_setup<kThreads, kTree>(p, s, kvh, tok0, n_tok, max_len, base, first_entry, walk);
  }
  // Columns at or past this are visible to no row of the block (items never reach past it).
  __device__ __forceinline__ int column_end() const { return max_len; }
  __device__ __forceinline__ SparseItem item(int u) const { return walk.item(u); }
  __device__ __forceinline__ RowState row_state(const SparseAttnParams& p, int token, int len) const {
    const int local = min(max(token - tok0, 0), n_tok - 1);  // padding rows (len 0) clamp
    const int t = min(token, p.tokens - 1);
    RowState r;
    r.len = len;
    r.tok = local;
    r.dense = tok_class[local] == kTokDense;
    r.list = sparse_list(p, kvh, t);
    r.bits = kTree ? p.tree_bits + static_cast<int64_t>(t) * words : nullptr;
    return r;
  }
  __device__ __forceinline__ bool all_visible(const SparseItem& it, int /*col_begin*/, int col_end) const {
    if (walk.mode == kSparseDenseWalk) return col_end <= min_len && (!kTree || col_end <= base);
    if (it.kind == kItemListed) return it.tokens == all_tokens && col_end <= it.end && col_end <= min_len;
    return false;
  }
  __device__ __forceinline__ TileState tile_state(const RowState& r, const SparseItem& it, int col0) const {
    uint64_t vis = sparse_ones_below(min(r.len, it.end) - col0);
    if (it.kind == kItemListed) {
      if (((it.tokens >> r.tok) & 1ull) == 0ull) vis = 0ull;
    } else if (vis != 0ull) {
      uint64_t lin = ~0ull;
      if (walk.mode == kSparseMixed && !r.dense)
        lin = sparse_listed_bits(r.list, width, block_size, col0, kTree ? min(base, r.len) : r.len);
      if constexpr (kTree) {
        const uint64_t below = sparse_ones_below(base - col0);
        vis &= attn_tree_window64(r.bits, words, col0 - base) & (lin | ~below);
      } else {
        vis &= lin;
      }
    }
    return {vis, col0};
  }
  __device__ __forceinline__ bool visible(const TileState& s, int col) const {
    return ((s.bits >> (col - s.col0)) & 1ull) != 0ull;
  }
};

// ---- configuration --------------------------------------------------------------------------

template <typename ElemT, int kHeadDimT, int kWarpsMT, int kWarpsNT, int kBlockNT, int kStagesT, int kMinBlocksT>
struct MmaConfig {
  using Elem = ElemT;
  static constexpr int kHeadDim = kHeadDimT;
  static constexpr int kWarpsM = kWarpsMT;
  static constexpr int kWarpsN = kWarpsNT;
  static constexpr int kBlockN = kBlockNT;  // cache rows per tile
  static constexpr int kStages = kStagesT;
  static constexpr int kMinBlocks = kMinBlocksT;

  static constexpr int kMmaM = 16, kMmaN = 8, kMmaK = 16;
  static constexpr int kBlockM = kMmaM * kWarpsM;  // query rows per block
  static constexpr int kWarps = kWarpsM * kWarpsN;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kWarpCols = kBlockN / kWarpsN;  // cache rows of a tile one warp scores
  static constexpr int kScoreTiles = kWarpCols / kMmaN;   // n8 tiles of S per warp
  static constexpr int kOutTiles = kHeadDim / kMmaN;      // n8 tiles of O per warp
  static constexpr int kHeadSteps = kHeadDim / kMmaK;     // k16 steps of Q K^T

  static constexpr int kPadElems = 8;  // 16 bytes: keeps ldmatrix phases conflict-free
  static constexpr int kRowStride = kHeadDim + kPadElems;
  static constexpr int kChunkElems = 16 / static_cast<int>(sizeof(Elem));  // elements per 16-byte copy
  static constexpr int kChunksPerRow = kHeadDim / kChunkElems;

  static constexpr size_t kLenBytes = ((kBlockM * sizeof(int) + 15) / 16) * 16;
  static constexpr size_t kQBytes = static_cast<size_t>(kBlockM) * kRowStride * sizeof(Elem);
  static constexpr size_t kTileBytes = static_cast<size_t>(kBlockN) * kRowStride * sizeof(Elem);
  static constexpr size_t kStageBytes = 2 * kTileBytes;  // K then V
  // Cross-warp merge buffers (decode layout only), reusing the stage ring once it is drained.
  static constexpr int kMergeStride = kHeadDim + 4;  // floats; breaks the power-of-two row stride
  static constexpr size_t kMergeBytes =
      kWarpsN > 1 ? (static_cast<size_t>(kWarpsN) * kMmaM * kMergeStride + 2 * kWarpsN * kMmaM + 2 * kMmaM) * sizeof(float)
                  : 0;
  static constexpr size_t kRingBytes = kStages * kStageBytes > kMergeBytes ? kStages * kStageBytes : kMergeBytes;
  static constexpr size_t kSmemBytes = kLenBytes + kQBytes + kRingBytes;

  static_assert(sizeof(Elem) == 2, "tensor-core path takes 16-bit operands");
  static_assert(kHeadDim % kMmaK == 0, "head_dim must be a multiple of 16");
  static_assert(kWarpCols % kMmaK == 0, "each warp scores whole k16 steps of the tile");
  static_assert(kWarpsM == 1 || kWarpsN == 1, "warps split either query rows or cache rows");
  static_assert(kThreads >= kBlockM, "one thread per query row reads its slot");
  static_assert((kBlockM * kChunksPerRow) % kThreads == 0, "Q tile copies divide evenly");
  static_assert((kBlockN * kChunksPerRow) % kThreads == 0, "K/V tile copies divide evenly");
  static_assert(kStages >= 2, "at least double buffering");
};

// ---- the kernel -----------------------------------------------------------------------------

// grid: (num_splits, query tiles, n_kv); block: Cfg::kThreads; dynamic smem: Cfg::kSmemBytes
// (block-sparse masks: then, from sparse_align16(Cfg::kSmemBytes), the union's shared memory,
// sparse_smem_bytes(Cfg::kBlockM, p.sparse_words, p.sparse_union_cap)).
template <class Cfg, class Mask>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks) attention_mma_kernel(const typename Mask::Params p) {
  using Elem = typename Cfg::Elem;
  using Ops = MmaElem<Elem>;
  constexpr int kHeadDim = Cfg::kHeadDim, kBlockM = Cfg::kBlockM, kBlockN = Cfg::kBlockN;
  constexpr int kRowStride = Cfg::kRowStride, kStages = Cfg::kStages, kThreads = Cfg::kThreads;
  constexpr int kWarpCols = Cfg::kWarpCols, kChunksPerRow = Cfg::kChunksPerRow, kChunkElems = Cfg::kChunkElems;

  extern __shared__ __align__(16) unsigned char smem[];
  int* s_len = reinterpret_cast<int*>(smem);
  Elem* s_q = reinterpret_cast<Elem*>(smem + Cfg::kLenBytes);
  unsigned char* s_ring = smem + Cfg::kLenBytes + Cfg::kQBytes;
  [[maybe_unused]] SparseSmem s_sparse{};
  if constexpr (Mask::kSparse) {
    static_assert(kBlockM <= 64, "a union entry's token bits fit 64 tokens");
    s_sparse = sparse_smem_carve(smem + sparse_align16(Cfg::kSmemBytes), kBlockM, p.sparse_words, p.sparse_union_cap);
  }

  pdl_launch_dependents();
  pdl_wait();  // q, the caches, the slots and the partials' workspace belong to earlier kernels
  const int split = blockIdx.x;
  // Later query tiles see more of the cache: launch them first so the causal tail is short.
  const int q_tile = gridDim.y - 1 - blockIdx.y;
  const int kvh = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / Cfg::kWarpsN, wn = warp % Cfg::kWarpsN;
  const int group = p.group;
  const int total_rows = p.tokens * group;
  const int m0 = q_tile * kBlockM;
  const int rows_here = min(kBlockM, total_rows - m0);

  Mask mask;
  [[maybe_unused]] int first_entry = -1;
  if constexpr (Mask::kSparse) first_entry = mask.prefetch(p, kvh, m0, rows_here, group);
  // Visible length of every query row of the tile (0 for padding rows past the last token).
  if (tid < kBlockM) {
    int len = 0;
    if (tid < rows_here) len = attn_query_length<Mask::kTree>(p, (m0 + tid) / group, split == 0 && kvh == 0);
    s_len[tid] = len;
    if constexpr (Mask::kSparse) {
      // The thread of a token's first row in this block records the token (class, length).
      const int r = m0 + tid, t = r / group;
      if (tid < rows_here && (tid == 0 || r - t * group == 0)) sparse_store_token(p, s_sparse, kvh, t, t - m0 / group, len);
    }
  }
  __syncthreads();
  mask.init(p);
  for (int i = 0; i < rows_here; ++i) {
    mask.min_len = min(mask.min_len, s_len[i]);
    mask.max_len = max(mask.max_len, s_len[i]);
  }
  const int col_end = mask.column_end();
  int n_items;  // tiles (dense masks) or sparse walk items, each at most kBlockN cache rows
  if constexpr (Mask::kSparse) {
    static_assert(kBlockN == kSparseItemRows, "one sparse item per KV tile");
    n_items = mask.template setup<kThreads>(p, s_sparse, first_entry);
  } else {
    n_items = ceil_div_int(col_end, kBlockN);
  }
  const TileRange range = attn_split_range(n_items, p.num_splits, p.min_split_tiles, split);
  const int n_tiles = range.end - range.begin;

  // Fragment coordinates: this thread holds query rows g and g + 8 of its warp's 16, and within
  // each n8 tile the two columns 2 * quad and 2 * quad + 1.
  const int g = lane >> 2, quad = lane & 3;
  const int row_a = wm * 16 + g, row_b = row_a + 8;  // block-local query rows
  const typename Mask::RowState state_a = mask.row_state(p, (m0 + row_a) / group, s_len[row_a]);
  const typename Mask::RowState state_b = mask.row_state(p, (m0 + row_b) / group, s_len[row_b]);
  static_assert((!Mask::kTree && !Mask::kSparse) || kWarpCols <= 64, "a tile state holds 64 columns");
  // Warps whose 16 rows are all padding skip the arithmetic but still help copy tiles.
  const bool warp_active = wm * 16 < rows_here;

  float o_acc[Cfg::kOutTiles][4];
#pragma unroll
  for (int i = 0; i < Cfg::kOutTiles; ++i) o_acc[i][0] = o_acc[i][1] = o_acc[i][2] = o_acc[i][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY;  // running max (log2 domain) of rows a and b
  float l_a = 0.0f, l_b = 0.0f;            // running sums; this thread's columns only until the end

  const Elem* k_base = static_cast<const Elem*>(p.k) + static_cast<int64_t>(kvh) * p.capacity * kHeadDim;
  const Elem* v_base = static_cast<const Elem*>(p.v) + static_cast<int64_t>(kvh) * p.capacity * kHeadDim;

  if (n_tiles > 0) {
    // Q tile: row r of the block is query head kvh * group + (r % group) of token r / group.
    {
      const Elem* q = static_cast<const Elem*>(p.q);
#pragma unroll
      for (int i = 0; i < kBlockM * kChunksPerRow / kThreads; ++i) {
        const int c = tid + i * kThreads;
        const int row = c / kChunksPerRow, ch = c % kChunksPerRow;
        const Elem* src = q;
        int bytes = 0;
        if (row < rows_here) {
          const int r = m0 + row, t = r / group, hg = r - t * group;
          src = q + (static_cast<int64_t>(t) * p.n_heads + kvh * group + hg) * kHeadDim + ch * kChunkElems;
          bytes = 16;
        }
        cp_async_16(s_q + row * kRowStride + ch * kChunkElems, src, bytes);
      }
    }
    auto load_tile = [&](int tile, int stage) {
      Elem* s_k = reinterpret_cast<Elem*>(s_ring + stage * Cfg::kStageBytes);
      Elem* s_v = s_k + kBlockN * kRowStride;
      int col0 = tile * kBlockN, live_end = col_end;
      if constexpr (Mask::kSparse) {  // the item's rows; its end <= col_end <= capacity
        const SparseItem item = mask.item(tile);
        col0 = item.col0;
        live_end = item.end;
      }
#pragma unroll
      for (int i = 0; i < kBlockN * kChunksPerRow / kThreads; ++i) {
        const int c = tid + i * kThreads;
        const int row = c / kChunksPerRow, ch = c % kChunksPerRow;
        const int col = col0 + row;
        const bool live = col < live_end;  // live_end <= capacity, so live rows are in bounds
        const int64_t off = static_cast<int64_t>(live ? col : 0) * kHeadDim + ch * kChunkElems;
        cp_async_16(s_k + row * kRowStride + ch * kChunkElems, k_base + off, live ? 16 : 0);
        cp_async_16(s_v + row * kRowStride + ch * kChunkElems, v_base + off, live ? 16 : 0);
      }
    };

    // Prologue: group 0 = Q + first tile, then one group per further stage (possibly empty, so
    // that the group count, and with it the wait depth, is the same for every iteration).
    load_tile(range.begin, 0);
    cp_async_commit();
#pragma unroll
    for (int s = 1; s < kStages - 1; ++s) {
      if (s < n_tiles) load_tile(range.begin + s, s);
      cp_async_commit();
    }

    uint32_t q_frag[Cfg::kHeadSteps][4];
    for (int it = 0; it < n_tiles; ++it) {
      cp_async_wait<kStages - 2>();  // this thread's copies of tile `it` (and Q) have landed
      __syncthreads();               // everyone's have; and everyone is done with tile it - 1
      {
        const int next = it + kStages - 1;  // refills the stage tile it - 1 used
        if (next < n_tiles) load_tile(range.begin + next, next % kStages);
        cp_async_commit();
      }
      if (!warp_active) continue;

      if (it == 0) {
#pragma unroll
        for (int kk = 0; kk < Cfg::kHeadSteps; ++kk)
          ldmatrix_x4(q_frag[kk], s_q + (wm * 16 + (lane & 15)) * kRowStride + kk * 16 + (lane >> 4) * 8);
      }

      const int stage = it % kStages;
      const Elem* s_k = reinterpret_cast<const Elem*>(s_ring + stage * Cfg::kStageBytes);
      const Elem* s_v = s_k + kBlockN * kRowStride;
      int tile_col0 = (range.begin + it) * kBlockN;
      [[maybe_unused]] SparseItem item{};
      if constexpr (Mask::kSparse) {
        item = mask.item(range.begin + it);
        tile_col0 = item.col0;
      }
      const int warp_col0 = wn * kWarpCols;  // tile-local first cache row of this warp

      // S = Q K^T over this warp's cache rows. One ldmatrix.x4 of K gives the B fragments of two
      // n8 tiles at one k16 step: matrices (rows 0-7, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 0-7),
      // (rows 8-15, k 8-15).
      float s_acc[Cfg::kScoreTiles][4];
#pragma unroll
      for (int i = 0; i < Cfg::kScoreTiles; ++i) s_acc[i][0] = s_acc[i][1] = s_acc[i][2] = s_acc[i][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < Cfg::kHeadSteps; ++kk) {
#pragma unroll
        for (int np = 0; np < Cfg::kScoreTiles / 2; ++np) {
          uint32_t b[4];
          const int krow = warp_col0 + np * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int kcol = kk * 16 + ((lane >> 3) & 1) * 8;
          ldmatrix_x4(b, s_k + krow * kRowStride + kcol);
          mma_m16n8k16<Elem>(s_acc[2 * np], q_frag[kk], b[0], b[1]);
          mma_m16n8k16<Elem>(s_acc[2 * np + 1], q_frag[kk], b[2], b[3]);
        }
      }

      // Scale into the log2 domain and hide what the mask hides (select, not add, so a garbage
      // score of a hidden column cannot leak through as NaN).
      bool whole;
      if constexpr (Mask::kSparse)
        whole = mask.all_visible(item, tile_col0 + warp_col0, tile_col0 + warp_col0 + kWarpCols);
      else
        whole = mask.all_visible(tile_col0 + warp_col0, tile_col0 + warp_col0 + kWarpCols);
      typename Mask::TileState tile_a{}, tile_b{};
      if (!whole) {
        if constexpr (Mask::kSparse) {
          tile_a = mask.tile_state(state_a, item, tile_col0 + warp_col0);
          tile_b = mask.tile_state(state_b, item, tile_col0 + warp_col0);
        } else {
          tile_a = mask.tile_state(state_a, tile_col0 + warp_col0);
          tile_b = mask.tile_state(state_b, tile_col0 + warp_col0);
        }
      }
      float tile_max_a = -INFINITY, tile_max_b = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < Cfg::kScoreTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float s = s_acc[nt][e] * p.scale_log2;
          if (!whole) {
            const int col = tile_col0 + warp_col0 + nt * 8 + 2 * quad + (e & 1);
            if (!mask.visible(e < 2 ? tile_a : tile_b, col)) s = -INFINITY;
          }
          s_acc[nt][e] = s;
        }
        tile_max_a = fmaxf(tile_max_a, fmaxf(s_acc[nt][0], s_acc[nt][1]));
        tile_max_b = fmaxf(tile_max_b, fmaxf(s_acc[nt][2], s_acc[nt][3]));
      }
      // The four threads of a quad hold the same two rows.
      tile_max_a = fmaxf(tile_max_a, __shfl_xor_sync(0xffffffffu, tile_max_a, 1));
      tile_max_a = fmaxf(tile_max_a, __shfl_xor_sync(0xffffffffu, tile_max_a, 2));
      tile_max_b = fmaxf(tile_max_b, __shfl_xor_sync(0xffffffffu, tile_max_b, 1));
      tile_max_b = fmaxf(tile_max_b, __shfl_xor_sync(0xffffffffu, tile_max_b, 2));

      // Online softmax. A row that has seen nothing visible yet keeps max -inf; exponentiating
      // against 0 instead keeps exp2(-inf - (-inf)) = NaN out of it.
      const float new_a = fmaxf(m_a, tile_max_a), new_b = fmaxf(m_b, tile_max_b);
      const float ref_a = new_a == -INFINITY ? 0.0f : new_a;
      const float ref_b = new_b == -INFINITY ? 0.0f : new_b;
      const float corr_a = exp2f(m_a - ref_a), corr_b = exp2f(m_b - ref_b);
      m_a = new_a;
      m_b = new_b;
      float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
      for (int nt = 0; nt < Cfg::kScoreTiles; ++nt) {
        s_acc[nt][0] = exp2f(s_acc[nt][0] - ref_a);
        s_acc[nt][1] = exp2f(s_acc[nt][1] - ref_a);
        s_acc[nt][2] = exp2f(s_acc[nt][2] - ref_b);
        s_acc[nt][3] = exp2f(s_acc[nt][3] - ref_b);
        sum_a += s_acc[nt][0] + s_acc[nt][1];
        sum_b += s_acc[nt][2] + s_acc[nt][3];
      }
      l_a = l_a * corr_a + sum_a;
      l_b = l_b * corr_b + sum_b;
#pragma unroll
      for (int dt = 0; dt < Cfg::kOutTiles; ++dt) {
        o_acc[dt][0] *= corr_a;
        o_acc[dt][1] *= corr_a;
        o_acc[dt][2] *= corr_b;
        o_acc[dt][3] *= corr_b;
      }

      // O += P V. The S accumulators of n8 tiles 2j and 2j+1 are exactly the A fragment of k16
      // step j; V's B fragments come from a transposing ldmatrix.x4: matrices (rows 0-7, d 0-7),
      // (rows 8-15, d 0-7), (rows 0-7, d 8-15), (rows 8-15, d 8-15).
#pragma unroll
      for (int kk = 0; kk < kWarpCols / 16; ++kk) {
        uint32_t a[4];
        a[0] = Ops::pack(s_acc[2 * kk][0], s_acc[2 * kk][1]);
        a[1] = Ops::pack(s_acc[2 * kk][2], s_acc[2 * kk][3]);
        a[2] = Ops::pack(s_acc[2 * kk + 1][0], s_acc[2 * kk + 1][1]);
        a[3] = Ops::pack(s_acc[2 * kk + 1][2], s_acc[2 * kk + 1][3]);
        const int vrow = warp_col0 + kk * 16 + (lane & 15);
#pragma unroll
        for (int np = 0; np < Cfg::kOutTiles / 2; ++np) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, s_v + vrow * kRowStride + np * 16 + (lane >> 4) * 8);
          mma_m16n8k16<Elem>(o_acc[2 * np], a, b[0], b[1]);
          mma_m16n8k16<Elem>(o_acc[2 * np + 1], a, b[2], b[3]);
        }
      }
    }
  }

  // Row sums so far cover this thread's columns only.
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);

  const bool direct = p.num_splits == 1;
  const int64_t head_stride = kHeadDim;
  // Destination of block-local query row `row`: (token * n_heads + head), the index of both the
  // output row and the partial row group.
  auto out_row = [&](int row) {
    const int r = m0 + row, t = r / group;
    return static_cast<int64_t>(t) * p.n_heads + kvh * group + (r - t * group);
  };

  if constexpr (Cfg::kWarpsN == 1) {
    if (!warp_active) return;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = half == 0 ? row_a : row_b;
      if (row >= rows_here) continue;
      const float l = half == 0 ? l_a : l_b, m = half == 0 ? m_a : m_b;
      const int64_t orow = out_row(row);
      if (direct) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int dt = 0; dt < Cfg::kOutTiles; ++dt) {
          const int64_t idx = orow * head_stride + dt * 8 + 2 * quad;
          store_elem(p.out, p.out_kind, idx, o_acc[dt][2 * half] * inv);
          store_elem(p.out, p.out_kind, idx + 1, o_acc[dt][2 * half + 1] * inv);
        }
      } else {
        const int64_t prow = orow * p.num_splits + split;
        if (l > 0.0f) {
          const float inv = 1.0f / l;
          float* po = p.partial_o + prow * head_stride;
#pragma unroll
          for (int dt = 0; dt < Cfg::kOutTiles; ++dt)
            *reinterpret_cast<float2*>(po + dt * 8 + 2 * quad) =
                make_float2(o_acc[dt][2 * half] * inv, o_acc[dt][2 * half + 1] * inv);
        }
        if (quad == 0) p.partial_lse[prow] = l > 0.0f ? m + log2f(l) : -INFINITY;
      }
    }
  } else {
    // Decode layout: kWarpsN warps hold disjoint column sets of the same 16 rows; merge them.
    constexpr int kRows = Cfg::kMmaM, kWarpsN = Cfg::kWarpsN, kMergeStride = Cfg::kMergeStride;
    cp_async_wait<0>();
    __syncthreads();  // the ring is free
    float* red_o = reinterpret_cast<float*>(s_ring);            // [kWarpsN][kRows][kMergeStride]
    float* red_m = red_o + kWarpsN * kRows * kMergeStride;      // [kWarpsN][kRows]
    float* red_l = red_m + kWarpsN * kRows;                     // [kWarpsN][kRows]
    float* row_scale = red_l + kWarpsN * kRows;                 // [kRows]: 1 / merged sum
    float* row_lse = row_scale + kRows;                         // [kRows]
#pragma unroll
    for (int dt = 0; dt < Cfg::kOutTiles; ++dt) {
      const int col = dt * 8 + 2 * quad;
      red_o[(wn * kRows + g) * kMergeStride + col] = o_acc[dt][0];
      red_o[(wn * kRows + g) * kMergeStride + col + 1] = o_acc[dt][1];
      red_o[(wn * kRows + g + 8) * kMergeStride + col] = o_acc[dt][2];
      red_o[(wn * kRows + g + 8) * kMergeStride + col + 1] = o_acc[dt][3];
    }
    if (quad == 0) {
      red_m[wn * kRows + g] = m_a;
      red_m[wn * kRows + g + 8] = m_b;
      red_l[wn * kRows + g] = l_a;
      red_l[wn * kRows + g + 8] = l_b;
    }
    __syncthreads();
    // One thread per row turns the kWarpsN (max, sum) pairs into weights; red_m becomes them.
    if (tid < kRows) {
      float mx = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarpsN; ++w) mx = fmaxf(mx, red_m[w * kRows + tid]);
      const float ref = mx == -INFINITY ? 0.0f : mx;
      float total = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarpsN; ++w) {
        const float f = exp2f(red_m[w * kRows + tid] - ref);
        red_m[w * kRows + tid] = f;
        total += f * red_l[w * kRows + tid];
      }
      row_scale[tid] = total > 0.0f ? 1.0f / total : 0.0f;
      row_lse[tid] = total > 0.0f ? mx + log2f(total) : -INFINITY;
    }
    __syncthreads();
    for (int idx = tid; idx < kRows * kHeadDim; idx += kThreads) {
      const int row = idx / kHeadDim, col = idx - row * kHeadDim;
      if (row >= rows_here) break;  // rows are ascending in idx
      float acc = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarpsN; ++w) acc += red_m[w * kRows + row] * red_o[(w * kRows + row) * kMergeStride + col];
      acc *= row_scale[row];
      const int64_t orow = out_row(row);
      if (direct) {
        store_elem(p.out, p.out_kind, orow * head_stride + col, acc);
      } else {
        const int64_t prow = orow * p.num_splits + split;
        if (row_lse[row] != -INFINITY) p.partial_o[prow * head_stride + col] = acc;
        if (col == 0) p.partial_lse[prow] = row_lse[row];
      }
    }
  }
}

}  // namespace specula::ops::cuda_impl::attn
