// Block-sparse (InfLLM-V2) visibility for the CUDA attention kernels: which cache rows a thread
// block visits when its queries carry block lists (ops::AttentionMask::with_blocks), shared by the
// tensor-core kernel (attention_mma.cuh) and the generic kernel (attention.cu).
//
// The point is traffic: a sparse query sees ~96 blocks of 64 rows out of up to thousands, so a
// block must walk the listed blocks, not every tile with a skip test. A thread block holds the
// query rows of one KV head for one or more tokens (tokens x GQA group), and each token has its own
// list, so the block walks the ascending UNION of its tokens' lists (built once per block in
// shared memory: a bitmap over the blocks, an exclusive popcount scan, then the compacted block
// indices and, per union entry, which of the block's tokens list it). A listed block is therefore
// loaded once per thread block, i.e. once per (token, KV head) when the block holds one token
// (decode) and once for several adjacent tokens in prefill, whose lists mostly coincide. A
// one-token block whose list is already in sparse_select's form (strictly ascending, -1 padded)
// takes it as its union without the bitmap: every decode step.
//
// The walk is a sequence of "items", each at most 64 cache rows [col0, end):
//   - union walk (every token of the block sparse): per union block, its rows below the linear
//     limit (the query's own row for causal calls, the tree base for tree calls) in 64-row pieces;
//     then, for a tree call, the tree window [base, slots[T-1]] in 64-row pieces (those rows
//     follow the tree bits alone);
//   - dense walk (every token dense, i.e. kDenseQuery, or seeing nothing): the 64-aligned tiles
//     of [0, longest length), exactly what the dense kernels visit;
//   - mixed walk (dense and sparse tokens in one block: only near the dense/sparse switch): the
//     dense walk, with each sparse row testing its list per block (slow, rare, exact).
// The item count is known only on the device, after the union is built; the split-KV partition
// (attention_common.cuh) is then over items, so the grid still depends only on host-known shapes.
//
// Lists are honoured exactly as ops::block_listed() reads them: entries up to the first negative
// one, in any order and with repeats (the union makes order and repeats irrelevant); a list whose
// first entry is kDenseQuery is dense. Entries whose rows lie past the token's linear limit are
// dropped (they hold no visible row), so no item reaches past the longest length or the capacity.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "specula/ops/cuda/attention_common.cuh"

namespace specula::ops::cuda_impl::attn {

constexpr int kSparseItemRows = 64;           // rows per item: the kernels' KV tile
constexpr int32_t kSparseDenseMarker = -2;    // ops::AttentionMask::kDenseQuery (checked in attention.cu)
constexpr int kSparseScanSlots = 32;          // per-warp totals of the union's scan (up to 1024 threads)

// Per-token class, written by the thread that owns the token's first query row in the block.
enum SparseTokenClass : int { kTokEmpty = 0, kTokDense = 1, kTokSparse = 2 };
enum SparseMode : int { kSparseDenseWalk = 0, kSparseUnion = 1, kSparseMixed = 2 };
enum SparseItemKind : int { kItemWalk = 0, kItemListed = 1, kItemWindow = 2 };

__host__ __device__ inline size_t sparse_align16(size_t x) { return (x + 15) / 16 * 16; }

// Dynamic shared memory of the union, after the kernel's own (which the host rounds up to 16).
__host__ __device__ inline size_t sparse_smem_bytes(int max_tokens, int words, int union_cap) {
  const size_t t = static_cast<size_t>(max_tokens), w = static_cast<size_t>(words), u = static_cast<size_t>(union_cap);
  return sparse_align16(3 * t * sizeof(int)) + sparse_align16(kSparseScanSlots * sizeof(int)) +
         2 * sparse_align16(w * sizeof(uint32_t)) + sparse_align16(u * sizeof(int)) +
         sparse_align16(u * sizeof(unsigned long long));
}

struct SparseSmem {
  int* tok_class;              // [max_tokens] SparseTokenClass
  int* tok_len;                // [max_tokens] visible length (attn_query_length)
  int* tok_first_neg;          // [max_tokens] index of the list's first negative entry (or width)
  int* scan;                   // [kSparseScanSlots]
  uint32_t* words;             // [words] union bitmap, bit b % 32 of word b / 32 = block b
  int* prefix;                 // [words] union entries before word w
  int* blocks;                 // [union_cap] the union, ascending
  unsigned long long* tokens;  // [union_cap] bit i: the block's token i lists the entry
};

__device__ inline SparseSmem sparse_smem_carve(unsigned char* base, int max_tokens, int words, int union_cap) {
  SparseSmem s;
  unsigned char* at = base;
  s.tok_class = reinterpret_cast<int*>(at);
  s.tok_len = s.tok_class + max_tokens;
  s.tok_first_neg = s.tok_len + max_tokens;
  at += sparse_align16(3 * static_cast<size_t>(max_tokens) * sizeof(int));
  s.scan = reinterpret_cast<int*>(at);
  at += sparse_align16(kSparseScanSlots * sizeof(int));
  s.words = reinterpret_cast<uint32_t*>(at);
  at += sparse_align16(static_cast<size_t>(words) * sizeof(uint32_t));
  s.prefix = reinterpret_cast<int*>(at);
  at += sparse_align16(static_cast<size_t>(words) * sizeof(int));
  s.blocks = reinterpret_cast<int*>(at);
  at += sparse_align16(static_cast<size_t>(union_cap) * sizeof(int));
  s.tokens = reinterpret_cast<unsigned long long*>(at);
  return s;
}

// The block list of token t for KV head kvh.
__device__ __forceinline__ const int32_t* sparse_list(const SparseAttnParams& p, int kvh, int t) {
  return p.blocks + (static_cast<int64_t>(kvh) * p.tokens + t) * p.block_width;
}

// Host side: the most walk items a block of a causal call with at most `union_cap` distinct
// listed blocks visits (kSparseItemRows-row items, `tile_cols` the kernel's split tile, equal to
// it), or 0 for a tree call (its window follows the tree) and for walks no shorter than the
// capacity's: the split planner's bound (KernelShape::max_tiles).
inline int sparse_max_items(const SparseAttnParams& p, int union_cap, int tile_cols) {
  if (p.tree_bits != nullptr || tile_cols != kSparseItemRows) return 0;
  const int64_t items = static_cast<int64_t>(union_cap) * ceil_div_int(p.block_size, kSparseItemRows);
  return items < p.capacity / kSparseItemRows ? static_cast<int>(items) : 0;
}

// Records token `local` of the block (called once per token, before the barrier that precedes
// sparse_setup): its class from its length and the list's first entry.
__device__ __forceinline__ void sparse_store_token(const SparseAttnParams& p, const SparseSmem& s, int kvh, int token,
                                                   int local, int len) {
  int cls = kTokEmpty;
  if (len > 0) cls = __ldg(sparse_list(p, kvh, token)) == kSparseDenseMarker ? kTokDense : kTokSparse;
  s.tok_class[local] = cls;
  s.tok_len[local] = len;
  s.tok_first_neg[local] = p.block_width;
}

// Bits [0, n) set (n clamped to [0, 64]).
__device__ __forceinline__ uint64_t sparse_ones_below(int n) {
  if (n <= 0) return 0ull;
  if (n >= 64) return ~0ull;
  return (1ull << n) - 1ull;
}

// ops::block_listed for a list that does not start with kDenseQuery.
__device__ __forceinline__ bool sparse_block_listed(const int32_t* list, int width, int block) {
  for (int j = 0; j < width; ++j) {
    const int v = __ldg(list + j);
    if (v < 0) return false;
    if (v == block) return true;
  }
  return false;
}

// Visibility, as bits over columns col0 .. col0 + 63, of the rows of the linear sequence that a
// sparse token's list names (only rows below `hi` are considered; bit k: row col0 + k).
__device__ inline uint64_t sparse_listed_bits(const int32_t* list, int width, int block_size, int col0, int hi) {
  uint64_t bits = 0ull;
  const int end = min(hi, col0 + 64);
  for (int b = col0 / block_size; b * block_size < end; ++b) {
    if (!sparse_block_listed(list, width, b)) continue;
    const int lo = max(b * block_size, col0) - col0, up = min(b * block_size + block_size, col0 + 64) - col0;
    bits |= sparse_ones_below(up) & ~sparse_ones_below(lo);
  }
  return bits;
}

// Exclusive prefix of the popcounts of words[0, n) into prefix; returns the total. Each thread
// owns a contiguous run of words. All threads of the block call it; it ends with a barrier.
template <int kThreads>
__device__ int sparse_popc_scan(const uint32_t* words, int* prefix, int n, int* scratch) {
  static_assert(kThreads % 32 == 0 && kThreads / 32 <= kSparseScanSlots, "one scan slot per warp");
  constexpr int kWarps = kThreads / 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int per = ceil_div_int(n, kThreads);
  const int begin = min(tid * per, n), end = min(begin + per, n);
  int local = 0;
  for (int w = begin; w < end; ++w) local += __popc(words[w]);
  int incl = local;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  int offset = 0, total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const int v = scratch[w];
    if (w < warp) offset += v;
    total += v;
  }
  int run = offset + incl - local;
  for (int w = begin; w < end; ++w) {
    prefix[w] = run;
    run += __popc(words[w]);
  }
  __syncthreads();
  return total;
}

// One item of a block's walk: cache rows [col0, end) (rows past end up to col0 + 63 are not
// loaded and hidden); for a listed item, which of the block's tokens list its block.
struct SparseItem {
  int col0, end;
  int kind;
  unsigned long long tokens;
};

// Per-block walk state (uniform across the block, kept in registers).
struct SparseWalk {
  int mode = kSparseDenseWalk;
  int col_end = 0;    // longest visible length of the block's queries
  int lin_end = 0;    // union walk: rows below this belong to listed blocks (causal: col_end; tree: base)
  int base = 0;       // tree window's first row
  int n_listed = 0;   // union walk: listed items (union size x pieces per block)
  int pieces = 1;     // items per listed block: ceil(block_size / 64)
  int block_size = 1;
  const int* blocks = nullptr;
  const unsigned long long* tokens = nullptr;

  __device__ __forceinline__ SparseItem item(int u) const {
    if (mode != kSparseUnion) {
      const int col0 = u * kSparseItemRows;
      return {col0, min(col0 + kSparseItemRows, col_end), kItemWalk, 0ull};
    }
    if (u < n_listed) {
      const int e = pieces == 1 ? u : u / pieces;
      const int block0 = blocks[e] * block_size;
      const int col0 = block0 + (u - e * pieces) * kSparseItemRows;
      const int end = min(min(col0 + kSparseItemRows, block0 + block_size), lin_end);
      return {col0, end, kItemListed, tokens[e]};
    }
    const int col0 = base + (u - n_listed) * kSparseItemRows;
    return {col0, min(col0 + kSparseItemRows, col_end), kItemWindow, 0ull};
  }
};

// Entry threadIdx.x of the lists of tokens tok0 .. tok0 + n_tok - 1 (consecutive in memory), or
// -1 past them: loaded before the barrier that precedes sparse_setup, so that the first round of
// list reads overlaps the slot reads instead of following them (decode is latency-bound).
__device__ __forceinline__ int sparse_prefetch_entry(const SparseAttnParams& p, int kvh, int tok0, int n_tok) {
  const int k = threadIdx.x;
  return k < n_tok * p.block_width ? __ldg(sparse_list(p, kvh, tok0) + k) : -1;
}

// Chooses the block's walk and, for the union walk, builds the union; returns the item count.
// tok0 .. tok0 + n_tok - 1 are the block's tokens (their SparseSmem entries written and behind a
// barrier); max_len their longest visible length; base the tree base (kTree); first_entry this
// thread's sparse_prefetch_entry(). Every thread of the block calls it with the same arguments
// (the barriers inside are reached uniformly).
template <int kThreads, bool kTree>
__device__ int sparse_setup(const SparseAttnParams& p, const SparseSmem& s, int kvh, int tok0, int n_tok, int max_len,
                            int base, int first_entry, SparseWalk& walk) {
  walk.col_end = max_len;
  walk.base = base;
  walk.block_size = p.block_size;
  walk.pieces = ceil_div_int(p.block_size, kSparseItemRows);
  walk.mode = kSparseDenseWalk;
  if (max_len <= 0) return 0;  // nothing visible (or invalid slots): no item
  bool any_dense = false, any_sparse = false;
  for (int i = 0; i < n_tok; ++i) {
    const int c = s.tok_class[i];
    any_dense |= c == kTokDense;
    any_sparse |= c == kTokSparse;
  }
  if (!any_sparse || any_dense) {
    walk.mode = any_sparse ? kSparseMixed : kSparseDenseWalk;
    return ceil_div_int(max_len, kSparseItemRows);
  }
  walk.mode = kSparseUnion;
  // A valid tree call has 0 <= base < max_len; a causal one's linear rows end at the longest length.
  walk.lin_end = kTree ? base : max_len;

  const int width = p.block_width, bs = p.block_size;
  const int n_words = ceil_div_int(ceil_div_int(walk.lin_end, bs), 32);  // <= p.sparse_words
  const int entries = n_tok * width;
  const int32_t* lists = sparse_list(p, kvh, tok0);  // the block's tokens' lists are consecutive
  const int tid = threadIdx.x;
  auto limit = [&](int i) { return kTree ? min(base, s.tok_len[i]) : s.tok_len[i]; };
  walk.blocks = s.blocks;
  walk.tokens = s.tokens;

  // One token whose list is in sparse_select's form (strictly ascending, -1 padded: checked
  // here, two barriers) is its own union, and its visible entries are a prefix of it. This is
  // every decode step, which is latency-bound, so it skips the bitmap's four barriers.
  if (n_tok == 1 && width <= kThreads) {
    const int v = tid < width ? first_entry : -1;
    const int prev = tid > 0 && tid < width ? __ldg(lists + tid - 1) : -1;
    const bool canonical = v < 0 || tid == 0 || (prev >= 0 && prev < v);
    const bool shown = v >= 0 && static_cast<int64_t>(v) * bs < limit(0);
    if (shown) {
      s.blocks[tid] = v;
      s.tokens[tid] = 1ull;
    }
    if (__syncthreads_and(canonical)) {
      const int total = __syncthreads_count(shown);
      walk.n_listed = total * walk.pieces;
      const int window = kTree ? ceil_div_int(max_len - base, kSparseItemRows) : 0;
      return walk.n_listed + window;
    }
  }

  // 1. Clear the bitmap; find each list's first negative entry (its end, as block_listed reads it).
  for (int w = tid; w < n_words; w += kThreads) s.words[w] = 0u;
  for (int k = tid; k < entries; k += kThreads) {
    const int i = k / width;
    const int v = k == tid ? first_entry : __ldg(lists + k);
    if (s.tok_class[i] == kTokSparse && v < 0) atomicMin(&s.tok_first_neg[i], k - i * width);
  }
  __syncthreads();
  // 2. Mark every listed block with a visible row.
  auto entry_block = [&](int k, int& i) {  // the entry's block, or -1 when it names no visible row
    i = k / width;
    if (s.tok_class[i] != kTokSparse || k - i * width >= s.tok_first_neg[i]) return -1;
    const int b = __ldg(lists + k);  // >= 0: before the first negative entry
    return static_cast<int64_t>(b) * bs < limit(i) ? b : -1;
  };
  for (int k = tid; k < entries; k += kThreads) {
    int i;
    const int b = entry_block(k, i);
    if (b >= 0) atomicOr(&s.words[b >> 5], 1u << (b & 31));
  }
  __syncthreads();
  // 3. Where each word's blocks start in the union.
  const int total = sparse_popc_scan<kThreads>(s.words, s.prefix, n_words, s.scan);
  // 4. Compact: the union ascending. A one-token block needs no token bits (its token lists all).
  const bool one_token = n_tok == 1;
  for (int w = tid; w < n_words; w += kThreads) {
    uint32_t bits = s.words[w];
    int at = s.prefix[w];
    while (bits != 0u) {
      const int b = __ffs(static_cast<int>(bits)) - 1;
      bits &= bits - 1u;
      s.blocks[at] = w * 32 + b;
      s.tokens[at] = one_token ? 1ull : 0ull;
      ++at;
    }
  }
  if (!one_token) {
    __syncthreads();
    // 5. Which tokens list each union entry (its index: the block's rank in the bitmap).
    for (int k = tid; k < entries; k += kThreads) {
      int i;
      const int b = entry_block(k, i);
      if (b < 0) continue;
      const int u = s.prefix[b >> 5] + __popc(s.words[b >> 5] & ((1u << (b & 31)) - 1u));
      atomicOr(&s.tokens[u], 1ull << i);
    }
  }
  __syncthreads();
  walk.n_listed = total * walk.pieces;
  const int window = kTree ? ceil_div_int(max_len - base, kSparseItemRows) : 0;
  return walk.n_listed + window;
}

}  // namespace specula::ops::cuda_impl::attn
