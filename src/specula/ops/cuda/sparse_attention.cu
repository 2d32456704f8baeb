// CUDA InfLLM-V2 block selection: ops::compress_keys and ops::sparse_select (ops/sparse_attention.h
// has the rule; ops/cpu/sparse_attention.cpp is the reference the tests compare with: F32 block
// lists equal up to fp32 near-ties, 16-bit ones up to the ties that rounding the scores makes).
//
// Everything a call depends on at run time (positions, slots, tree bits, the compressed-rows
// counter) is read on the device: a decode step or a verification is captured once as a CUDA
// graph and replayed at every cache length, so grids follow host-known shapes (tokens, capacity,
// heads, parameters) and each block works out its own range from device memory, exiting early
// when there is nothing to do.
//
// compress_keys: compress_kernel recomputes kernels [complete(min(rows, first_new)),
// complete(end)) of both tiers (mean in fp32 in row order, as the CPU does, stored in the cache
// dtype); its grid covers what a call of T tokens normally produces ((T + size)/stride + 2 per
// tier) and loops past that (a cache that fell behind). rows = end is set by a second one-thread
// kernel, because every block of the first reads the old value.
//
// sparse_select runs per chunk of tokens that fits the workspace (normally one chunk):
//   own_logits   (tree calls only) one block per (token, KV head): the kernels that include tree
//                rows, from the query's ancestors (fp32 means, not rounded, as on the CPU), and
//                their logits for the G heads of the group (at most T/stride + 2 per tier).
//   stage 1      two launches of one kernel in the style of the upstream FA2 stage-1 kernel: a
//                block owns a tile of query rows (row = token * G + head in group, whole tokens
//                only) of one KV head and a share (split) of the compressed keys, 64 kernels per
//                shared-memory tile (cp.async double buffer), S = Q K^T by mma.sync m16n8k16 in
//                fp32. Pass 1 runs over the LSE tier (C1 for MiniCPM4, C2 for 4.1) and writes each
//                row's (max, sum) per split; pass 2 merges the splits (and the tree kernels) into
//                the row's LSE, computes p = exp(s - lse) over C1, sums the group (group 16: a
//                warp's 16 rows are one token, summed by shuffles as upstream does; otherwise
//                through shared memory in head order), rounds to the query dtype (as upstream
//                stores bf16) and writes kernel scores. Splits are counted on the host (about two blocks per SM at
//                full capacity) but balanced on the device over the actual length. F32 (and
//                head dims other than 64/128, or unaligned operands) run the same two passes on
//                CUDA cores (stage1_generic_kernel), natural-log domain, no rounding: that is what
//                makes F32 agree with the CPU.
//   select       one block per (token, KV head): tree kernels' scores, max-pooling (kernels
//                b*r - 1 .. b*r + r - 1), forced/excluded blocks, the top k by a 4-pass radix
//                select on the value's order-preserving bits (ties then go to the lowest indices,
//                the CPU's rule), and the attended set written ascending by a block-wide scan,
//                -1 padded; kDenseQuery for queries below sparse_from.
//
// Workspace per call (the context's; chunks of tokens when it is smaller), for a chunk of Tc
// tokens, each region 256-byte aligned:
//   scores    n_kv * Tc * round64(complete(capacity, 32, 16)) * sizeof(query dtype)
//   partials  n_kv * Tc * G * splits * 8         (pass-1 (max, sum) per row and split)
//   lse       n_kv * Tc * G * 4
//   tree      n_kv * Tc * G * (T/16 + 2 + T/64 + 2) * 4 (tree calls only)
// MiniCPM4-8B at a 128K capacity needs about 32 KB per token (a 2048-token chunk: 66 MB, so two
// chunks in the default 64 MB workspace); one decode token about 0.1 MB.
//
// All kernels use programmatic dependent launch: each calls pdl_wait() before touching memory.
// Invalid device input (a tree query without an ancestor at some position, a slot outside the
// cache) sets kErrorSparseSelect / kErrorSlotOutOfRange in the context's error word.
#include "specula/ops/cuda/sparse_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/ptx.cuh"

namespace specula::ops::cuda_impl {

namespace {

using specula::cuda::kErrorSlotOutOfRange;
using specula::cuda::kErrorSparseSelect;

constexpr int kThreads = 128;          // stage-1, own-logits and compress blocks
constexpr int kSelectThreads = 256;    // select blocks
// Select blocks when the call has fewer (token, KV head) pairs than SMs (decode, small trees):
// the kernel is then latency-bound, one block per pair, so a pair gets the most threads.
constexpr int kSelectThreadsFew = 1024;
constexpr int kTileN = 64;             // kernels per tensor-core stage-1 tile
constexpr int kGenericTileN = 32;      // kernels per CUDA-core stage-1 tile
constexpr int kMaxTokensPerTile = 64;  // tokens in one stage-1 row tile (group 1, 64 rows)
constexpr int kMaxMmaGroup = 64;       // larger groups take the CUDA-core path
constexpr float kLog2e = 1.4426950408889634f;
constexpr size_t kRegionAlign = 256;
constexpr size_t kDefaultSmem = 48 * 1024;

__device__ __forceinline__ int complete_kernels_dev(int rows, int size, int stride) {
  return rows < size ? 0 : (rows - size) / stride + 1;
}

// ---------------------------------------------------------------------------------------------
// compress_keys

struct CompressArgs {
  const void* k;
  DType dtype;
  int n_kv, capacity, head_dim;
  void* c1;
  int c1_cap, size1, stride1;
  void* c2;  // null: no second tier
  int c2_cap, size2, stride2;
  const int32_t* slots;
  int tokens;
  bool tree;
  int32_t* rows;
  uint32_t* error_word;
};

// Linear rows of the call: [0, end) is the sequence, rows from first_new on were (re)written.
__device__ __forceinline__ void linear_rows(const CompressArgs& a, int& end, int& first_new) {
  const int last = a.slots[a.tokens - 1];
  if (a.tree) {
    end = first_new = last - a.tokens + 1;
  } else {
    end = last + 1;
    first_new = a.slots[0];
  }
  if (end < 0 || end > a.capacity) {
    report_device_error(a.error_word, kErrorSlotOutOfRange);
    end = min(max(end, 0), a.capacity);
  }
  first_new = min(max(first_new, 0), end);
}

// Sum of `rows` values of one key column (stride `pitch` elements), added in row order as the CPU
// reference does. A decode step compresses one kernel per tier, so this is latency: every load of
// a window is issued before the first add (unconditional loads, the published sizes 32 and 128
// unrolled whole), one memory round trip instead of one per row.
template <int kRows, typename T>
__device__ __forceinline__ float column_sum_fixed(const T* col, int pitch) {
  float x[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) x[r] = to_f32(col[static_cast<int64_t>(r) * pitch]);
  float acc = 0.0f;
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc += x[r];
  return acc;
}

template <typename T>
__device__ __forceinline__ float column_sum(const T* col, int rows, int pitch) {
  if (rows == 32) return column_sum_fixed<32>(col, pitch);
  if (rows == 128) return column_sum_fixed<128>(col, pitch);
  constexpr int kBatch = 32;  // other kernel sizes: batches whose loads stay in bounds
  float acc = 0.0f;
  for (int r0 = 0; r0 < rows; r0 += kBatch) {
    float x[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) x[j] = to_f32(col[static_cast<int64_t>(min(r0 + j, rows - 1)) * pitch]);
#pragma unroll
    for (int j = 0; j < kBatch; ++j)
      if (r0 + j < rows) acc += x[j];
  }
  return acc;
}

__global__ void __launch_bounds__(kThreads) compress_kernel(CompressArgs a) {
  pdl_launch_dependents();
  pdl_wait();
  int end, first_new;
  linear_rows(a, end, first_new);
  const int start = max(0, min(a.rows[0], first_new));
  const int f1 = complete_kernels_dev(start, a.size1, a.stride1);
  const int l1 = min(complete_kernels_dev(end, a.size1, a.stride1), a.c1_cap);
  const int n1 = max(0, l1 - f1);
  int f2 = 0, n2 = 0;
  if (a.c2 != nullptr) {
    f2 = complete_kernels_dev(start, a.size2, a.stride2);
    n2 = max(0, min(complete_kernels_dev(end, a.size2, a.stride2), a.c2_cap) - f2);
  }
  const int h = static_cast<int>(blockIdx.y);
  for (int item = static_cast<int>(blockIdx.x); item < n1 + n2; item += static_cast<int>(gridDim.x)) {
    const bool first_tier = item < n1;
    const int i = first_tier ? f1 + item : f2 + (item - n1);
    const int size = first_tier ? a.size1 : a.size2, stride = first_tier ? a.stride1 : a.stride2;
    const int cap = first_tier ? a.c1_cap : a.c2_cap;
    void* out = first_tier ? a.c1 : a.c2;
    const float inv = 1.0f / static_cast<float>(size);
    for (int d = static_cast<int>(threadIdx.x); d < a.head_dim; d += static_cast<int>(blockDim.x)) {
      const int64_t first = (static_cast<int64_t>(h) * a.capacity + static_cast<int64_t>(i) * stride) * a.head_dim + d;
      float acc;
      switch (a.dtype) {
        case DType::BF16: acc = column_sum(static_cast<const __nv_bfloat16*>(a.k) + first, size, a.head_dim); break;
        case DType::F16: acc = column_sum(static_cast<const __half*>(a.k) + first, size, a.head_dim); break;
        default: acc = column_sum(static_cast<const float*>(a.k) + first, size, a.head_dim); break;
      }
      store_f32_dyn(out, a.dtype, (static_cast<int64_t>(h) * cap + i) * a.head_dim + d, acc * inv);
    }
  }
}

__global__ void compress_rows_kernel(CompressArgs a) {
  pdl_launch_dependents();
  pdl_wait();
  if (threadIdx.x == 0) {
    int end, first_new;
    linear_rows(a, end, first_new);
    a.rows[0] = end;
  }
}

// ---------------------------------------------------------------------------------------------
// sparse_select: shared pieces

// One tier of compressed keys: the cache [n_kv, capacity, hd], the kernel geometry, and the most
// kernels a tree query computes itself (the stride of its logits in the workspace).
struct Tier {
  const void* keys;
  int capacity, size, stride, max_own;
};

struct SelectArgs {
  int tokens;                // T of the call
  int chunk0, chunk_tokens;  // this launch's tokens [chunk0, chunk0 + chunk_tokens)
  int n_heads, n_kv, group, head_dim;
  int k_capacity;
  const void* q;
  DType q_dtype;
  const void* k_cache;
  DType k_dtype;
  Tier c1, c2;  // c2 used by MiniCPM4.1 only
  const int32_t* positions;
  const int32_t* slots;
  const uint32_t* tree_bits;  // null for a causal call
  int tree_words;
  bool tree;
  bool v41;
  int block_size, pool_stride, init_blocks, local_blocks, topk_slots, width, nb_cap;
  int sparse_from;
  float scale;
  void* scores;  // [n_kv, chunk, score_stride] in the query dtype
  int64_t score_stride;
  float2* partials;  // [n_kv, chunk, G, lse_splits]
  int lse_splits;
  float* lse;         // [n_kv, chunk, G]
  float* own1;        // [n_kv, chunk, G, c1.max_own] (tree calls)
  float* own2;        // [n_kv, chunk, G, c2.max_own] (tree calls, 4.1)
  bool stage_scores;  // select_kernel copies a query's scores to shared memory first
  int32_t* blocks;    // [n_kv, T, width]
  uint32_t* error_word;
};

// First row past the committed prefix (tree) or past the call's rows (causal): the compressed
// caches hold the kernels complete within [0, base).
__device__ __forceinline__ int call_base(const SelectArgs& a) {
  const int last = a.slots[a.tokens - 1];
  const int base = a.tree ? last - a.tokens + 1 : last + 1;
  return min(max(base, 0), a.k_capacity);
}

// Kernels of a tier the query at position p scores: those in the cache, then (tree calls) those
// it computes from its ancestors. None below sparse_from.
struct Visible {
  int cached, own;
};

__device__ __forceinline__ Visible visible(const SelectArgs& a, const Tier& t, int p, int base) {
  if (p < a.sparse_from || p < 0) return {0, 0};
  const int all = complete_kernels_dev(p + 1, t.size, t.stride);
  const int cached = min(complete_kernels_dev(base, t.size, t.stride), t.capacity);
  return {min(all, cached), a.tree ? min(max(0, all - cached), t.max_own) : 0};
}

template <bool kLog2>
__device__ __forceinline__ float dom_exp(float x) {
  if constexpr (kLog2)
    return exp2f(x);
  else
    return expf(x);
}
template <bool kLog2>
__device__ __forceinline__ float dom_log(float x) {
  if constexpr (kLog2)
    return log2f(x);
  else
    return logf(x);
}

// (m, l) <- the log-sum-exp pair of the union (l = sum of exp(x - m)); an empty side is (-inf, 0).
template <bool kLog2>
__device__ __forceinline__ void merge_ml(float& m, float& l, float om, float ol) {
  const float nm = fmaxf(m, om);
  if (nm == -INFINITY) return;
  l = l * dom_exp<kLog2>(m - nm) + ol * dom_exp<kLog2>(om - nm);
  m = nm;
}

__device__ __forceinline__ int64_t row_index(const SelectArgs& a, int h, int tc, int g) {
  return (static_cast<int64_t>(h) * a.chunk_tokens + tc) * a.group + g;
}

// Pass 1's (max, sum) pairs of row `row` for splits first, first + step, ... merged into (m, l).
template <bool kLog2>
__device__ __forceinline__ void merge_partials(const SelectArgs& a, int64_t row, int first, int step, float& m,
                                               float& l) {
  const float2* part = a.partials + row * a.lse_splits;
#pragma unroll 4
  for (int s = first; s < a.lse_splits; s += step) {
    const float2 v = part[s];
    merge_ml<kLog2>(m, l, v.x, v.y);
  }
}

// The LSE of query row (tc, g) in the pass's domain from its merged pass-1 pair and the tree
// kernels of the LSE tier; +inf when the row has no LSE kernel (its scores are then 0).
template <bool kLog2>
__device__ float finish_lse(const SelectArgs& a, int h, int tc, int g, int p, int base, float m, float l) {
  if (a.tree) {
    const Tier& lt = a.v41 ? a.c2 : a.c1;
    const int own = visible(a, lt, p, base).own;
    const float* logits = (a.v41 ? a.own2 : a.own1) + row_index(a, h, tc, g) * lt.max_own;
    const float f = kLog2 ? kLog2e : 1.0f;
    for (int j = 0; j < own; ++j) merge_ml<kLog2>(m, l, logits[j] * f, 1.0f);
  }
  return l > 0.0f ? m + dom_log<kLog2>(l) : INFINITY;
}

__device__ __forceinline__ void split_range(int n_tiles, int split, int splits, int& begin, int& end) {
  begin = static_cast<int>(static_cast<int64_t>(split) * n_tiles / splits);
  end = static_cast<int>(static_cast<int64_t>(split + 1) * n_tiles / splits);
}

// Kernel scores of chunk token tc for KV head h (Elem: the query's storage type).
template <typename Elem>
__device__ __forceinline__ Elem* score_row(const SelectArgs& a, int h, int tc) {
  return static_cast<Elem*>(a.scores) + (static_cast<int64_t>(h) * a.chunk_tokens + tc) * a.score_stride;
}

__device__ __forceinline__ void store_score(const SelectArgs& a, int h, int tc, int i, float v) {
  store_f32_dyn(a.scores, a.q_dtype, (static_cast<int64_t>(h) * a.chunk_tokens + tc) * a.score_stride + i, v);
}

// ---------------------------------------------------------------------------------------------
// own_logits: tree queries' kernels from their ancestors

__global__ void __launch_bounds__(kThreads) own_logits_kernel(SelectArgs a) {
  extern __shared__ __align__(16) float own_smem[];
  pdl_launch_dependents();
  pdl_wait();
  const int tc = static_cast<int>(blockIdx.x), h = static_cast<int>(blockIdx.y), t = a.chunk0 + tc;
  const int G = a.group, hd = a.head_dim, tid = static_cast<int>(threadIdx.x), nthreads = static_cast<int>(blockDim.x);
  const int p = a.positions[t], base = call_base(a);
  const Visible v1 = visible(a, a.c1, p, base);
  const Visible v2 = a.v41 ? visible(a, a.c2, p, base) : Visible{0, 0};
  if (v1.own == 0 && v2.own == 0) return;        // uniform over the block
  float* qs = own_smem;                          // [G][hd]
  float* key = qs + G * hd;                      // [hd]
  int* rows = reinterpret_cast<int*>(key + hd);  // [tokens]: row of the ancestor at position base + x
  // A kernel past the cached ones ends at or before p, so p >= base and span >= 1.
  const int span = p - base + 1;
  const bool span_ok = span >= 1 && span <= a.tokens;
  for (int x = tid; x < a.tokens; x += nthreads) rows[x] = -1;
  __syncthreads();
  if (span_ok) {
    const uint32_t* bits = a.tree_bits + static_cast<int64_t>(t) * a.tree_words;
    for (int j = tid; j < a.tokens; j += nthreads)
      if ((bits[j >> 5] >> (j & 31)) & 1u) {
        const int x = a.positions[j] - base;
        if (x < 0 || x >= span || atomicCAS(&rows[x], -1, base + j) != -1)
          report_device_error(a.error_word, kErrorSparseSelect);
      }
  } else if (tid == 0) {
    report_device_error(a.error_word, kErrorSparseSelect);
  }
  const int64_t q0 = (static_cast<int64_t>(t) * a.n_heads + static_cast<int64_t>(h) * G) * hd;
  for (int e = tid; e < G * hd; e += nthreads) qs[e] = load_f32_dyn(a.q, a.q_dtype, q0 + e);
  __syncthreads();
  const int warp = tid / kWarpSize, lane = tid % kWarpSize, warps = nthreads / kWarpSize;
  for (int tier = 0; tier < 2; ++tier) {
    const Tier& tr = tier == 0 ? a.c1 : a.c2;
    const Visible& v = tier == 0 ? v1 : v2;
    float* out = (tier == 0 ? a.own1 : a.own2) + row_index(a, h, tc, 0) * tr.max_own;
    const float inv = 1.0f / static_cast<float>(tr.size);
    for (int j = 0; j < v.own; ++j) {
      const int first = (v.cached + j) * tr.stride;
      for (int d = tid; d < hd; d += nthreads) {
        float acc = 0.0f;  // row order, as the CPU reference sums
        for (int x = first; x < first + tr.size; ++x) {
          int row = x;
          if (x >= base) {
            row = span_ok ? rows[x - base] : -1;  // x <= p, so x - base < span
            if (row < 0) {
              report_device_error(a.error_word, kErrorSparseSelect);
              row = min(x, a.k_capacity - 1);
            }
          }
          acc += load_f32_dyn(a.k_cache, a.k_dtype, (static_cast<int64_t>(h) * a.k_capacity + row) * hd + d);
        }
        key[d] = acc * inv;
      }
      __syncthreads();
      for (int g = warp; g < G; g += warps) {
        float s = 0.0f;
        for (int d = lane; d < hd; d += kWarpSize) s = fmaf(qs[g * hd + d], key[d], s);
        s = warp_sum(s);
        if (lane == 0) out[static_cast<int64_t>(g) * tr.max_own + j] = s * a.scale;
      }
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Stage 1 on tensor cores

// PTX wrappers (cp.async, ldmatrix, mma_m16n8k16): ops/cuda/ptx.cuh.

// Geometry of the tensor-core stage-1 block: WM warps along the rows (16 rows each), 4 / WM
// along the 64 kernels of a tile. WM = 1 is for decode (16 rows: one token of group 16, or a few
// tokens of a smaller group), WM = 4 for everything with more rows.
template <typename Elem, int HD, int WM>
struct MmaCfg {
  static_assert(HD % 16 == 0 && (WM == 1 || WM == 4), "tile geometry");
  static constexpr int kWN = 4 / WM;
  static constexpr int kRows = 16 * WM;
  static constexpr int kWarpCols = kTileN / kWN;
  static constexpr int kNT = kWarpCols / 8;  // n8 tiles per warp (even)
  static constexpr int kKSteps = HD / 16;
  static constexpr int kStride = HD + 8;  // smem row stride: ldmatrix rows land in distinct banks
  static constexpr int kChunksPerRow = HD / 8;
  static constexpr size_t kKBytes = size_t{2} * kTileN * kStride * sizeof(Elem);
  static constexpr int kPStride = kTileN + 4;
  static constexpr size_t kPBytes = size_t{kRows} * kPStride * sizeof(float);
  static constexpr size_t kReduceBytes = size_t{2} * kWN * kRows * sizeof(float);
  static constexpr size_t smem_bytes(bool pass2) { return kKBytes + (pass2 ? kPBytes : kReduceBytes); }
  static_assert(kNT % 2 == 0, "ldmatrix.x4 loads n8 tiles in pairs");
};

// Pass 1 (kPass2 false): (max, sum) of each row's LSE-tier logits over this split, base 2.
// Pass 2: kernel scores of this split's C1 tiles. Grid (row tiles, splits, n_kv).
template <typename Elem, int HD, int WM, bool kPass2>
__global__ void __launch_bounds__(kThreads) stage1_mma_kernel(SelectArgs a, int tokens_per_tile, int splits) {
  using C = MmaCfg<Elem, HD, WM>;
  extern __shared__ __align__(16) unsigned char mma_smem[];
  __shared__ int s_vis[kMaxTokensPerTile];
  __shared__ int s_nmax;
  Elem* ktile = reinterpret_cast<Elem*>(mma_smem);
  float* fbuf = reinterpret_cast<float*>(mma_smem + C::kKBytes);  // pass 2: P tile; pass 1: reduction
  pdl_launch_dependents();
  pdl_wait();
  const int tid = static_cast<int>(threadIdx.x), lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int wm = warp % WM, wn = warp / WM;
  const int h = static_cast<int>(blockIdx.z), split = static_cast<int>(blockIdx.y);
  const int tile_t0 = static_cast<int>(blockIdx.x) * tokens_per_tile;
  const int tile_tokens = min(tokens_per_tile, a.chunk_tokens - tile_t0);
  const int G = a.group;
  const Tier& tier = kPass2 ? a.c1 : (a.v41 ? a.c2 : a.c1);
  const int base = call_base(a);

  if (warp == 0) {
    int m = 0;
    for (int tl = lane; tl < tile_tokens; tl += kWarpSize) {
      const int vis = visible(a, tier, a.positions[a.chunk0 + tile_t0 + tl], base).cached;
      s_vis[tl] = vis;
      m = max(m, vis);
    }
#pragma unroll
    for (int off = kWarpSize / 2; off > 0; off /= 2) m = max(m, __shfl_xor_sync(kFullWarpMask, m, off));
    if (lane == 0) s_nmax = m;
  }
  __syncthreads();
  const int nmax = s_nmax;

  const int n_tiles = (nmax + kTileN - 1) / kTileN;
  int tb, te;
  split_range(n_tiles, split, splits, tb, te);
  const Elem* src_head = static_cast<const Elem*>(tier.keys) + static_cast<int64_t>(h) * tier.capacity * HD;
  auto load_tile = [&](int tile, int stage) {
    Elem* dst = ktile + stage * kTileN * C::kStride;
    for (int c = tid; c < kTileN * C::kChunksPerRow; c += kThreads) {
      const int row = c / C::kChunksPerRow, ch = c % C::kChunksPerRow;
      const int i = tile * kTileN + row;
      const bool ok = i < nmax;  // kernels past every row's visible count are zero-filled, not read
      const Elem* src = ok ? src_head + static_cast<int64_t>(i) * HD + ch * 8 : src_head;
      cp_async_16(dst + row * C::kStride + ch * 8, src, ok ? 16 : 0);
    }
  };

  // Both stages' tiles are requested before anything else is loaded (the query, pass 1's
  // partials): at decode a split has one or two tiles, so this is most of the kernel's latency.
  if (tb < te) {
    load_tile(tb, 0);
    cp_async_commit();
  }
  if (tb + 1 < te) {
    load_tile(tb + 1, 1);
    cp_async_commit();
  }

  // This thread's two rows of the warp's 16 (mma fragment rows lane/4 and lane/4 + 8).
  int row_tl[2], row_g[2], row_vis[2];
  bool row_ok[2];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int r = wm * 16 + lane / 4 + 8 * k;
    row_tl[k] = r / G;
    row_g[k] = r % G;
    row_ok[k] = row_tl[k] < tile_tokens;
    row_vis[k] = row_ok[k] ? s_vis[row_tl[k]] : 0;
  }

  // Q fragments (A operand, row-major 16 x HD) straight from global memory.
  uint32_t qf[C::kKSteps][4];
  {
    const Elem* qrow[2];
#pragma unroll
    for (int k = 0; k < 2; ++k)
      qrow[k] = static_cast<const Elem*>(a.q) +
                (static_cast<int64_t>(a.chunk0 + tile_t0 + (row_ok[k] ? row_tl[k] : 0)) * a.n_heads +
                 static_cast<int64_t>(h) * G + row_g[k]) *
                    HD;
#pragma unroll
    for (int kk = 0; kk < C::kKSteps; ++kk) {
      const int c = kk * 16 + (lane % 4) * 2;
      qf[kk][0] = row_ok[0] ? *reinterpret_cast<const uint32_t*>(qrow[0] + c) : 0u;
      qf[kk][1] = row_ok[1] ? *reinterpret_cast<const uint32_t*>(qrow[1] + c) : 0u;
      qf[kk][2] = row_ok[0] ? *reinterpret_cast<const uint32_t*>(qrow[0] + c + 8) : 0u;
      qf[kk][3] = row_ok[1] ? *reinterpret_cast<const uint32_t*>(qrow[1] + c + 8) : 0u;
    }
  }

  float lse[2] = {INFINITY, INFINITY};
  if constexpr (kPass2) {
    // The four lanes that share a row merge a quarter of the splits each.
    float pm[2] = {-INFINITY, -INFINITY}, pl[2] = {0.0f, 0.0f};
#pragma unroll
    for (int k = 0; k < 2; ++k)
      if (row_ok[k]) merge_partials<true>(a, row_index(a, h, tile_t0 + row_tl[k], row_g[k]), lane % 4, 4, pm[k], pl[k]);
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        const float om = __shfl_xor_sync(kFullWarpMask, pm[k], off);
        const float ol = __shfl_xor_sync(kFullWarpMask, pl[k], off);
        merge_ml<true>(pm[k], pl[k], om, ol);
      }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (!row_ok[k]) continue;
      const int tc = tile_t0 + row_tl[k];
      lse[k] = finish_lse<true>(a, h, tc, row_g[k], a.positions[a.chunk0 + tc], base, pm[k], pl[k]);
      if (split == 0 && wn == 0 && lane % 4 == 0) a.lse[row_index(a, h, tc, row_g[k])] = lse[k];
    }
  }

  const float f = a.scale * kLog2e;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  for (int tile = tb; tile < te; ++tile) {
    const int stage = (tile - tb) & 1;
    if (tile + 1 < te)
      cp_async_wait<1>();
    else
      cp_async_wait<0>();
    __syncthreads();  // the tile landed for every thread
    const Elem* kt = ktile + stage * kTileN * C::kStride;
    float acc[C::kNT][4];
#pragma unroll
    for (int j = 0; j < C::kNT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < C::kKSteps; ++kk) {
#pragma unroll
      for (int jp = 0; jp < C::kNT / 2; ++jp) {
        const int mi = lane >> 3;
        const int n = wn * C::kWarpCols + jp * 16 + (mi >> 1) * 8 + (lane & 7);
        uint32_t b[4];
        ldmatrix_x4(b, kt + n * C::kStride + kk * 16 + (mi & 1) * 8);
        mma_m16n8k16<Elem>(acc[2 * jp], qf[kk], b[0], b[1]);
        mma_m16n8k16<Elem>(acc[2 * jp + 1], qf[kk], b[2], b[3]);
      }
    }
    // Scale into base 2 and mask kernels a row does not see.
#pragma unroll
    for (int j = 0; j < C::kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = wn * C::kWarpCols + j * 8 + (lane % 4) * 2 + (e & 1);
        acc[j][e] = tile * kTileN + col < row_vis[e >> 1] ? acc[j][e] * f : -INFINITY;
      }
    if constexpr (!kPass2) {
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        float tmax = -INFINITY;
#pragma unroll
        for (int j = 0; j < C::kNT; ++j) tmax = fmaxf(tmax, fmaxf(acc[j][2 * k], acc[j][2 * k + 1]));
        const float nm = fmaxf(m_run[k], tmax);
        if (nm == -INFINITY) continue;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < C::kNT; ++j) sum += exp2f(acc[j][2 * k] - nm) + exp2f(acc[j][2 * k + 1] - nm);
        l_run[k] = l_run[k] * exp2f(m_run[k] - nm) + sum;
        m_run[k] = nm;
      }
    } else if (G == 16) {
      // A warp's 16 rows are one token's group (row tiles hold whole tokens): sum the two rows a
      // thread holds, then across the eight lanes that share its columns (lane bits 2-4), by the
      // pairwise tree of upstream's reduction (xor 4, then 8, then 16). Done as a reduce-scatter
      // (each step keeps half the columns and sends the other half), which adds exactly the same
      // pairs as an all-reduce but takes 2V - 2 shuffles for V values instead of 3V, and leaves
      // every lane with whole column pairs to store (one 4-byte store, the warp's row contiguous).
      constexpr int V = 2 * C::kNT;  // this thread's columns: index j * 2 + e
      static_assert(V == 16 || V == 4, "the 64-column tile over 1 or 4 warps");
      float vals[V];
#pragma unroll
      for (int j = 0; j < C::kNT; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) vals[j * 2 + e] = exp2f(acc[j][e] - lse[0]) + exp2f(acc[j][2 + e] - lse[1]);
      // Reduce-scatter over lane bits 2, 3 (and 4 when V is 16): keep the lower or upper half.
      int c0 = 0;  // the first original index this lane keeps
      constexpr int kScatterSteps = V == 16 ? 3 : 2;
#pragma unroll
      for (int step = 0; step < kScatterSteps; ++step) {
        const int bit = 4 << step, half = V >> (step + 1);
        const bool upper = (lane & bit) != 0;
#pragma unroll
        for (int i = 0; i < V / 2; ++i) {
          if (i < half) {
            const float send = upper ? vals[i] : vals[i + half];
            const float keep = upper ? vals[i + half] : vals[i];
            vals[i] = keep + __shfl_xor_sync(kFullWarpMask, send, bit);
          }
        }
        if (upper) c0 += half;
      }
      constexpr int kKept = V >> kScatterSteps;  // 2, or 1 (then the xor-16 step is an all-reduce)
      bool owner = true;
      if constexpr (V == 4) {
        vals[0] += __shfl_xor_sync(kFullWarpMask, vals[0], 16);
        owner = (lane & 16) == 0;  // lanes 16-31 hold the same sums as lanes 0-15
      }
      const int tl = wm;
      const int i0 = tile * kTileN + wn * C::kWarpCols + (c0 / 2) * 8 + (lane % 4) * 2 + c0 % 2;
      if (owner && tl < tile_tokens) {
        Elem* out = score_row<Elem>(a, h, tile_t0 + tl) + i0;
        const int vis = s_vis[tl];
        if constexpr (kKept == 2) {
          if (i0 + 1 < vis) {  // i0 is even: a 4-byte store
            const float pair[2] = {vals[0], vals[1]};
            store_f32<Elem, 2>(out, pair);
          } else if (i0 < vis) {
            out[0] = from_f32<Elem>(vals[0]);
          }
        } else {
          if (i0 < vis) out[0] = from_f32<Elem>(vals[0]);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < C::kNT; ++j)
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int row = wm * 16 + lane / 4 + 8 * k;
          const int col = wn * C::kWarpCols + j * 8 + (lane % 4) * 2;
          *reinterpret_cast<float2*>(fbuf + row * C::kPStride + col) =
              make_float2(exp2f(acc[j][2 * k] - lse[k]), exp2f(acc[j][2 * k + 1] - lse[k]));
        }
      __syncthreads();  // G is uniform over the block
      // Group sum in head order, rounded to the query dtype, for the kernels each token sees.
      for (int item = tid; item < tile_tokens * kTileN; item += kThreads) {
        const int tl = item / kTileN, c = item % kTileN, i = tile * kTileN + c;
        if (i >= s_vis[tl]) continue;
        const float* col = fbuf + tl * G * C::kPStride + c;
        float sum = 0.0f;
        for (int g = 0; g < G; ++g) sum += col[g * C::kPStride];
        score_row<Elem>(a, h, tile_t0 + tl)[i] = from_f32<Elem>(sum);
      }
    }
    if (tile + 2 < te) {
      __syncthreads();  // everyone is done with this stage (and P) before it is refilled
      load_tile(tile + 2, stage);
      cp_async_commit();
    }
  }

  if constexpr (!kPass2) {
    // Merge the four lanes that share a row, then the warps that share it.
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        const float om = __shfl_xor_sync(kFullWarpMask, m_run[k], off);
        const float ol = __shfl_xor_sync(kFullWarpMask, l_run[k], off);
        merge_ml<true>(m_run[k], l_run[k], om, ol);
      }
    float* red_m = fbuf;
    float* red_l = fbuf + C::kWN * C::kRows;
    if (lane % 4 == 0)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int row = wm * 16 + lane / 4 + 8 * k;
        red_m[wn * C::kRows + row] = m_run[k];
        red_l[wn * C::kRows + row] = l_run[k];
      }
    __syncthreads();
    if (tid < C::kRows) {
      const int tl = tid / G, g = tid % G;
      if (tl < tile_tokens) {
        float m = -INFINITY, l = 0.0f;
        for (int w = 0; w < C::kWN; ++w) merge_ml<true>(m, l, red_m[w * C::kRows + tid], red_l[w * C::kRows + tid]);
        a.partials[row_index(a, h, tile_t0 + tl, g) * splits + split] = make_float2(m, l);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Stage 1 on CUDA cores (F32, other head dims, unaligned operands): one token's G rows per
// block, tiles of 32 kernels in fp32 shared memory, natural-log domain. Grid (tokens, splits, n_kv).

template <bool kPass2>
__global__ void __launch_bounds__(kThreads) stage1_generic_kernel(SelectArgs a, int splits) {
  extern __shared__ __align__(16) float gen_smem[];
  pdl_launch_dependents();
  pdl_wait();
  const int G = a.group, hd = a.head_dim, tid = static_cast<int>(threadIdx.x);
  const int tc = static_cast<int>(blockIdx.x), split = static_cast<int>(blockIdx.y), h = static_cast<int>(blockIdx.z);
  const int t = a.chunk0 + tc, p = a.positions[t], base = call_base(a);
  const Tier& tier = kPass2 ? a.c1 : (a.v41 ? a.c2 : a.c1);
  const int n = visible(a, tier, p, base).cached;
  const int kstride = hd + 1;                   // odd: the 32 kernels of a warp's dot products sit in distinct banks
  float* qs = gen_smem;                         // [G][hd]
  float* ks = qs + G * hd;                      // [32][hd + 1]
  float* xs = ks + kGenericTileN * kstride;     // [G][33]
  float* row_m = xs + G * (kGenericTileN + 1);  // [G]
  float* row_l = row_m + G;                     // [G]
  float* lse = row_l + G;                       // [G]
  const int64_t q0 = (static_cast<int64_t>(t) * a.n_heads + static_cast<int64_t>(h) * G) * hd;
  for (int e = tid; e < G * hd; e += kThreads) qs[e] = load_f32_dyn(a.q, a.q_dtype, q0 + e);
  for (int g = tid; g < G; g += kThreads) {
    row_m[g] = -INFINITY;
    row_l[g] = 0.0f;
    if constexpr (kPass2) {
      float m = -INFINITY, l = 0.0f;
      merge_partials<false>(a, row_index(a, h, tc, g), 0, 1, m, l);
      lse[g] = finish_lse<false>(a, h, tc, g, p, base, m, l);
      if (split == 0) a.lse[row_index(a, h, tc, g)] = lse[g];
    }
  }
  int tb, te;
  split_range((n + kGenericTileN - 1) / kGenericTileN, split, splits, tb, te);
  __syncthreads();
  for (int tile = tb; tile < te; ++tile) {
    for (int e = tid; e < kGenericTileN * hd; e += kThreads) {
      const int c = e / hd, d = e - c * hd, i = tile * kGenericTileN + c;
      ks[c * kstride + d] =
          i < n ? load_f32_dyn(tier.keys, a.k_dtype, (static_cast<int64_t>(h) * tier.capacity + i) * hd + d) : 0.0f;
    }
    __syncthreads();
    for (int item = tid; item < G * kGenericTileN; item += kThreads) {
      const int g = item / kGenericTileN, c = item % kGenericTileN, i = tile * kGenericTileN + c;
      float x = -INFINITY;
      if (i < n) {
        float dot = 0.0f;
        const float* qv = qs + g * hd;
        const float* kv = ks + c * kstride;
        for (int d = 0; d < hd; ++d) dot = fmaf(qv[d], kv[d], dot);
        x = dot * a.scale;
      }
      xs[g * (kGenericTileN + 1) + c] = x;
    }
    __syncthreads();
    if constexpr (!kPass2) {
      for (int g = tid; g < G; g += kThreads) {
        const float* xr = xs + g * (kGenericTileN + 1);
        float tmax = -INFINITY;
        for (int c = 0; c < kGenericTileN; ++c) tmax = fmaxf(tmax, xr[c]);
        const float nm = fmaxf(row_m[g], tmax);
        if (nm == -INFINITY) continue;
        float sum = 0.0f;
        for (int c = 0; c < kGenericTileN; ++c) sum += expf(xr[c] - nm);
        row_l[g] = row_l[g] * expf(row_m[g] - nm) + sum;
        row_m[g] = nm;
      }
    } else {
      if (tid < kGenericTileN) {
        const int i = tile * kGenericTileN + tid;
        if (i < n) {
          float sum = 0.0f;  // head order, as the CPU reference sums the group
          for (int g = 0; g < G; ++g) sum += expf(xs[g * (kGenericTileN + 1) + tid] - lse[g]);
          store_score(a, h, tc, i, sum);
        }
      }
    }
    __syncthreads();
  }
  if constexpr (!kPass2) {
    for (int g = tid; g < G; g += kThreads)
      a.partials[row_index(a, h, tc, g) * splits + split] = make_float2(row_m[g], row_l[g]);
  }
}

// ---------------------------------------------------------------------------------------------
// Pooling, forced blocks, top-k and the attended set: one block per (token, KV head).

// Bits of a float that a value of `dtype` can set: sign, 8 exponent bits and the dtype's mantissa
// (bf16: 7, f16: 10, whose subnormals are normal floats; else the whole float). Every pooled score
// is a value of the query dtype, so the top-k needs only as many 8-bit radix passes as these take.
__host__ __device__ inline int key_bits_of(DType dtype) {
  switch (dtype) {
    case DType::BF16: return 16;
    case DType::F16: return 19;
    default: return 32;
  }
}

// Order-preserving bits of a float (larger value, larger key); -0 as +0, NaN below everything.
// For a value of a 16-bit dtype the low bits are constant within each sign (zeros for positive
// keys, ones for negative ones), so the key shifted right by 32 - key_bits_of(dtype) orders and
// ties the values exactly as the whole key does.
__device__ __forceinline__ uint32_t order_key(float v) {
  if (v != v) return 0u;
  uint32_t u = __float_as_uint(v);
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum over the block (every thread calls it); `total` gets the sum. scratch: 33 ints.
__device__ __forceinline__ int block_exclusive_scan(int v, int* scratch, int& total) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  int incl = v;
#pragma unroll
  for (int off = 1; off < kWarpSize; off <<= 1) {
    const int o = __shfl_up_sync(kFullWarpMask, incl, off);
    if (lane >= off) incl += o;
  }
  if (lane == kWarpSize - 1) scratch[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int w = lane < warps ? scratch[lane] : 0;
    int wi = w;
#pragma unroll
    for (int off = 1; off < kWarpSize; off <<= 1) {
      const int o = __shfl_up_sync(kFullWarpMask, wi, off);
      if (lane >= off) wi += o;
    }
    if (lane < warps) scratch[lane] = wi - w;
    if (lane == kWarpSize - 1) scratch[kWarpSize] = wi;
  }
  __syncthreads();
  const int result = scratch[warp] + incl - v;
  total = scratch[kWarpSize];
  __syncthreads();
  return result;
}

// Shared memory of select_kernel: block keys and flags, the tree kernels' scores and the group's
// LSEs, and (when it fits) the query's kernel scores staged as floats.
struct SelectSmem {
  size_t keys, own, lse, flags, staged, bytes;
};

__host__ __device__ inline SelectSmem select_smem_layout(int nb_cap, int max_own, int group, int64_t staged_scores) {
  SelectSmem l{};
  l.keys = 0;
  l.own = l.keys + static_cast<size_t>(nb_cap) * sizeof(uint32_t);
  l.lse = l.own + static_cast<size_t>(max_own) * sizeof(float);
  l.staged = (l.lse + static_cast<size_t>(group) * sizeof(float) + 15) / 16 * 16;
  l.flags = l.staged + static_cast<size_t>(staged_scores) * sizeof(float);
  l.bytes = l.flags + static_cast<size_t>(nb_cap);
  return l;
}

template <bool kLog2>
__global__ void __launch_bounds__(kSelectThreadsFew) select_kernel(SelectArgs a) {
  extern __shared__ __align__(16) unsigned char sel_smem[];
  __shared__ unsigned hist[256];
  __shared__ int scan_scratch[kWarpSize + 1];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  pdl_launch_dependents();
  pdl_wait();
  const int tid = static_cast<int>(threadIdx.x), lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int nthreads = static_cast<int>(blockDim.x);
  const int tc = static_cast<int>(blockIdx.x), h = static_cast<int>(blockIdx.y), t = a.chunk0 + tc;
  int32_t* list = a.blocks + (static_cast<int64_t>(h) * a.tokens + t) * a.width;
  const int p = a.positions[t];
  if (p < a.sparse_from || p < 0) {
    for (int c = tid; c < a.width; c += nthreads) list[c] = c == 0 ? AttentionMask::kDenseQuery : -1;
    return;
  }
  const SelectSmem layout = select_smem_layout(a.nb_cap, a.c1.max_own, a.group, a.stage_scores ? a.score_stride : 0);
  uint32_t* keys = reinterpret_cast<uint32_t*>(sel_smem + layout.keys);  // [nb_cap]
  float* own_scores = reinterpret_cast<float*>(sel_smem + layout.own);   // [c1.max_own]
  float* lse = reinterpret_cast<float*>(sel_smem + layout.lse);          // [G]
  float* staged = reinterpret_cast<float*>(sel_smem + layout.staged);    // [score_stride] when staged
  unsigned char* flags = sel_smem + layout.flags;                        // [nb_cap]

  const int base = call_base(a);
  const Visible v = visible(a, a.c1, p, base);
  const int n_cached = v.cached, n1 = v.cached + v.own;
  const int64_t score_row = (static_cast<int64_t>(h) * a.chunk_tokens + tc) * a.score_stride;
  if (a.stage_scores) {
    // 8 scores per load (16 bytes of a 16-bit row): rows start on 64-element boundaries, and the
    // few values read past n_cached are overwritten or never pooled.
    for (int i = tid * 8; i < n_cached; i += nthreads * 8) {
      float x[8];
      load_f32_dyn<8>(a.scores, a.q_dtype, score_row + i, x);
#pragma unroll
      for (int e = 0; e < 8; ++e) staged[i + e] = x[e];
    }
  }
  if (v.own > 0) {  // uniform over the block
    for (int g = tid; g < a.group; g += nthreads) lse[g] = a.lse[row_index(a, h, tc, g)];
    __syncthreads();  // also orders the staging above before the tree scores land after it
    const float f = kLog2 ? kLog2e : 1.0f;
    for (int j = tid; j < v.own; j += nthreads) {
      float sum = 0.0f;  // head order, as the CPU reference sums the group
      for (int g = 0; g < a.group; ++g)
        sum += dom_exp<kLog2>(a.own1[row_index(a, h, tc, g) * a.c1.max_own + j] * f - lse[g]);
      sum = round_through_dyn(a.q_dtype, sum);
      own_scores[j] = sum;
      if (a.stage_scores) staged[n_cached + j] = sum;
    }
  }
  __syncthreads();

  int q_blk = p / a.block_size;
  if (q_blk >= a.nb_cap) {
    if (tid == 0) report_device_error(a.error_word, kErrorSlotOutOfRange);
    q_blk = a.nb_cap - 1;
  }
  const int nb = q_blk + 1, r = a.pool_stride, key_bits = key_bits_of(a.q_dtype);
  for (int b = tid; b < nb; b += nthreads) {
    float best = -INFINITY;
    const int hi = min(b * r + r - 1, n1 - 1);
    for (int i = max(0, b * r - 1); i <= hi; ++i) {
      const float x = a.stage_scores ? staged[i]
                      : i < n_cached ? load_f32_dyn(a.scores, a.q_dtype, score_row + i)
                                     : own_scores[i - n_cached];
      best = fmaxf(best, x);
    }
    float val = best == -INFINITY ? 0.0f : best;  // a block without kernels scores 0, as upstream's zeroed scores
    if (a.v41) {
      if (b < a.init_blocks || b >= q_blk - a.local_blocks) val = INFINITY;
    } else {
      if (b > q_blk - a.local_blocks) val = -INFINITY;
      if (b < a.init_blocks) val = INFINITY;
    }
    keys[b] = order_key(val) >> (32 - key_bits);
  }
  __syncthreads();

  // The k-th largest key, 8 bits at a time from the top; `remaining` ends as the number of keys
  // equal to it that belong to the top k (the lowest-index ones). Lanes of a warp that fall in
  // one bin add to it once (most keys share their top byte).
  const int k = min(a.topk_slots, nb);
  uint32_t prefix = 0u, prefix_mask = 0u;
  int remaining = k;
  for (int shift = (key_bits - 1) / 8 * 8; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += nthreads) hist[i] = 0u;
    __syncthreads();
    for (int b0 = warp * kWarpSize; b0 < nb; b0 += nthreads) {  // whole warps per iteration
      const int b = b0 + lane;
      const uint32_t key = b < nb ? keys[b] : 0u;
      const unsigned bin = b < nb && (key & prefix_mask) == prefix ? (key >> shift) & 0xFFu : 256u;
      const unsigned peers = __match_any_sync(kFullWarpMask, bin);
      if (bin < 256u && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
    }
    __syncthreads();
    if (warp == 0) {
      unsigned c[8], total = 0;
#pragma unroll
      for (int d = 0; d < 8; ++d) total += (c[d] = hist[lane * 8 + d]);
      unsigned suffix = total;  // keys in this lane's bins and every higher lane's
#pragma unroll
      for (int off = 1; off < kWarpSize; off <<= 1) {
        const unsigned o = __shfl_down_sync(kFullWarpMask, suffix, off);
        if (lane + off < kWarpSize) suffix += o;
      }
      unsigned above = suffix - total;  // keys in higher bins
#pragma unroll
      for (int d = 7; d >= 0; --d) {
        if (above < static_cast<unsigned>(remaining) && above + c[d] >= static_cast<unsigned>(remaining)) {
          s_prefix = prefix | (static_cast<uint32_t>(lane * 8 + d) << shift);
          s_remaining = remaining - static_cast<int>(above);
        }
        above += c[d];
      }
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    prefix_mask |= 0xFFu << shift;
  }
  const uint32_t kth = prefix;

  // The chosen set in index order: keys above the k-th, the first `remaining` equal to it, and
  // (MiniCPM4) the window [q_blk - local + 1, q_blk].
  const int per_thread = (nb + nthreads - 1) / nthreads;
  const int b_begin = min(tid * per_thread, nb), b_end = min(b_begin + per_thread, nb);
  int equal = 0;
  for (int b = b_begin; b < b_end; ++b) equal += keys[b] == kth;
  int total = 0;
  int equal_before = block_exclusive_scan(equal, scan_scratch, total);
  const int window_from = a.v41 ? INT_MAX : q_blk - a.local_blocks + 1;
  int chosen = 0;
  for (int b = b_begin; b < b_end; ++b) {
    const uint32_t key = keys[b];
    bool take = key > kth;
    if (key == kth) take = equal_before++ < remaining;
    take = take || b >= window_from;
    flags[b] = take ? 1 : 0;
    chosen += take;
  }
  int out = block_exclusive_scan(chosen, scan_scratch, total);
  if (total > a.width && tid == 0) report_device_error(a.error_word, kErrorSparseSelect);
  for (int b = b_begin; b < b_end; ++b)
    if (flags[b]) {
      if (out < a.width) list[out] = b;
      ++out;
    }
  for (int c = total + tid; c < a.width; c += nthreads) list[c] = -1;
}

// ---------------------------------------------------------------------------------------------
// Host side

size_t align_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

int64_t complete_kernels_host(int64_t rows, int64_t size, int64_t stride) {
  return complete_kernels(rows, size, stride);
}

void set_smem(const void* kernel, size_t bytes, const CudaContext& ctx, const char* what) {
  SPECULA_CHECK(bytes <= ctx.info().max_shared_memory_per_block_optin, what, " needs ", bytes,
                " bytes of shared memory per block, the device allows ", ctx.info().max_shared_memory_per_block_optin);
  if (bytes > kDefaultSmem)
    SPECULA_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Launch decisions of one call, all from host-known shapes.
struct Plan {
  bool mma = false;
  int wm = 4, tokens_per_tile = 1;
  int chunk = 1;  // tokens per launch group
  int splits1 = 1, splits2 = 1;
  int64_t score_stride = 0;
  int max_own1 = 0, max_own2 = 0;
  size_t scores_off = 0, partials_off = 0, lse_off = 0, own1_off = 0, own2_off = 0, bytes = 0;
};

struct CallShape {
  int64_t tokens, n_heads, n_kv, group, head_dim, capacity, c1_cap, c2_cap;
  DType q_dtype, k_dtype;
  bool tree, v41, aligned;
  int64_t multiprocessors;
  SparseSelectParams params;
};

CallShape call_shape(const CudaContext& ctx, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                     const AttentionMask& mask, const SparseSelectParams& params) {
  CallShape s{};
  s.tokens = q.dim(0);
  s.n_heads = q.dim(1);
  s.head_dim = q.dim(2);
  s.n_kv = k_cache.dim(0);
  s.group = s.n_heads / s.n_kv;
  s.capacity = k_cache.dim(1);
  s.c1_cap = keys.c1.dim(1);
  s.v41 = params.uses_c2();
  s.c2_cap = s.v41 ? keys.c2.dim(1) : 0;
  s.q_dtype = q.dtype;
  s.k_dtype = k_cache.dtype;
  s.tree = mask.is_tree();
  s.aligned = is_aligned(q.data, 4) && is_aligned(keys.c1.data, 16) && (!s.v41 || is_aligned(keys.c2.data, 16));
  s.multiprocessors = std::max(1, ctx.info().multiprocessors);
  s.params = params;
  return s;
}

Plan plan_chunk(const CallShape& s, int64_t chunk) {
  const SparseSelectParams& p = s.params;
  Plan plan;
  plan.mma = (s.q_dtype == DType::BF16 || s.q_dtype == DType::F16) && s.k_dtype == s.q_dtype &&
             (s.head_dim == 64 || s.head_dim == 128) && s.group <= kMaxMmaGroup && s.aligned;
  plan.chunk = static_cast<int>(chunk);
  int64_t row_blocks = chunk;  // stage-1 blocks per KV head and split
  if (plan.mma) {
    if (s.group <= 16 && chunk * s.group <= 32) {
      plan.wm = 1;
      plan.tokens_per_tile = static_cast<int>(16 / s.group);
    } else {
      plan.wm = 4;
      plan.tokens_per_tile = static_cast<int>(std::max<int64_t>(1, 64 / s.group));
    }
    row_blocks = ceil_div<int64_t>(chunk, plan.tokens_per_tile);
  }
  const int64_t tile = plan.mma ? kTileN : kGenericTileN;
  const int64_t c1_tiles = ceil_div<int64_t>(complete_kernels_host(s.capacity, p.kernel_size, p.kernel_stride), tile);
  const int64_t lse_tiles =
      s.v41 ? ceil_div<int64_t>(complete_kernels_host(s.capacity, p.c2_kernel_size(), p.c2_kernel_stride()), tile)
            : c1_tiles;
  // About two blocks per SM at full capacity, at least two tiles per split.
  const int64_t want = ceil_div<int64_t>(2 * s.multiprocessors, s.n_kv * row_blocks);
  plan.splits1 = static_cast<int>(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, lse_tiles / 2)));
  plan.splits2 = static_cast<int>(std::clamp<int64_t>(want, 1, std::max<int64_t>(1, c1_tiles / 2)));
  plan.score_stride = static_cast<int64_t>(align_up(
      static_cast<size_t>(std::max<int64_t>(1, complete_kernels_host(s.capacity, p.kernel_size, p.kernel_stride))),
      64));
  if (s.tree) {
    plan.max_own1 = static_cast<int>(s.tokens / p.kernel_stride + 2);
    plan.max_own2 = s.v41 ? static_cast<int>(s.tokens / p.c2_kernel_stride() + 2) : 0;
  }
  const size_t rows = static_cast<size_t>(s.n_kv * chunk * s.group);
  size_t off = 0;
  auto region = [&](size_t bytes) {
    const size_t at = off;
    off = align_up(off + bytes, kRegionAlign);
    return at;
  };
  plan.scores_off = region(static_cast<size_t>(s.n_kv * chunk * plan.score_stride) * dtype_size(s.q_dtype));
  plan.partials_off = region(rows * static_cast<size_t>(plan.splits1) * sizeof(float2));
  plan.lse_off = region(rows * sizeof(float));
  plan.own1_off = region(rows * static_cast<size_t>(plan.max_own1) * sizeof(float));
  plan.own2_off = region(rows * static_cast<size_t>(plan.max_own2) * sizeof(float));
  plan.bytes = off;
  return plan;
}

// The largest chunk of tokens whose scratch fits the workspace.
Plan make_plan(const CallShape& s, size_t workspace_bytes) {
  int64_t chunk = s.tokens;
  Plan plan = plan_chunk(s, chunk);
  while (plan.bytes > workspace_bytes && chunk > 1) {
    const int64_t scaled = static_cast<int64_t>(static_cast<double>(chunk) * static_cast<double>(workspace_bytes) /
                                                static_cast<double>(plan.bytes));
    chunk = std::clamp<int64_t>(scaled, 1, chunk - 1);
    plan = plan_chunk(s, chunk);
  }
  SPECULA_CHECK(plan.bytes <= workspace_bytes, "sparse_select: one query needs ", plan.bytes,
                " bytes of CUDA workspace (scores over a cache of ", s.capacity, " rows), the context has ",
                workspace_bytes);
  return plan;
}

template <typename Elem, int HD, int WM, bool kPass2>
void launch_mma_pass(CudaContext& ctx, const Plan& plan, const SelectArgs& a, int splits) {
  using C = MmaCfg<Elem, HD, WM>;
  const auto kernel = stage1_mma_kernel<Elem, HD, WM, kPass2>;
  const size_t smem = C::smem_bytes(kPass2);
  set_smem(reinterpret_cast<const void*>(kernel), smem, ctx, "sparse_select stage 1");
  const dim3 grid(static_cast<unsigned>(ceil_div(a.chunk_tokens, plan.tokens_per_tile)), static_cast<unsigned>(splits),
                  static_cast<unsigned>(a.n_kv));
  launch_kernel(ctx, kPass2 ? "sparse_select stage 1 (scores)" : "sparse_select stage 1 (LSE)", kernel, grid,
                dim3(kThreads), smem, a, plan.tokens_per_tile, splits);
}

template <typename Elem, int HD>
void launch_mma(CudaContext& ctx, const Plan& plan, const SelectArgs& a, bool pass2) {
  const int splits = pass2 ? plan.splits2 : plan.splits1;
  if (plan.wm == 1) {
    if (pass2)
      launch_mma_pass<Elem, HD, 1, true>(ctx, plan, a, splits);
    else
      launch_mma_pass<Elem, HD, 1, false>(ctx, plan, a, splits);
  } else {
    if (pass2)
      launch_mma_pass<Elem, HD, 4, true>(ctx, plan, a, splits);
    else
      launch_mma_pass<Elem, HD, 4, false>(ctx, plan, a, splits);
  }
}

void launch_stage1(CudaContext& ctx, const Plan& plan, const SelectArgs& a, bool pass2) {
  if (plan.mma) {
    const bool bf16 = a.q_dtype == DType::BF16;
    if (a.head_dim == 128) {
      if (bf16)
        launch_mma<__nv_bfloat16, 128>(ctx, plan, a, pass2);
      else
        launch_mma<__half, 128>(ctx, plan, a, pass2);
    } else {
      if (bf16)
        launch_mma<__nv_bfloat16, 64>(ctx, plan, a, pass2);
      else
        launch_mma<__half, 64>(ctx, plan, a, pass2);
    }
    return;
  }
  const int splits = pass2 ? plan.splits2 : plan.splits1;
  const size_t smem =
      (static_cast<size_t>(a.group) * a.head_dim + static_cast<size_t>(kGenericTileN) * (a.head_dim + 1) +
       static_cast<size_t>(a.group) * (kGenericTileN + 1) + 3 * static_cast<size_t>(a.group)) *
      sizeof(float);
  const auto kernel = pass2 ? stage1_generic_kernel<true> : stage1_generic_kernel<false>;
  set_smem(reinterpret_cast<const void*>(kernel), smem, ctx, "sparse_select stage 1 (CUDA cores)");
  launch_kernel(
      ctx, pass2 ? "sparse_select stage 1 (scores)" : "sparse_select stage 1 (LSE)", kernel,
      dim3(static_cast<unsigned>(a.chunk_tokens), static_cast<unsigned>(splits), static_cast<unsigned>(a.n_kv)),
      dim3(kThreads), smem, a, splits);
}

}  // namespace

void compress_keys(CudaContext& ctx, const Tensor& k_cache, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, CompressedKeys& keys) {
  const int64_t tokens = slots.numel(), n_kv = k_cache.dim(0), capacity = k_cache.dim(1), hd = k_cache.dim(2);
  SPECULA_CHECK(capacity < INT_MAX / 2 && tokens < INT_MAX / 2, "compress_keys: cache of ", capacity,
                " rows is too large for the CUDA kernels");
  CompressArgs a{};
  a.k = k_cache.data;
  a.dtype = k_cache.dtype;
  a.n_kv = static_cast<int>(n_kv);
  a.capacity = static_cast<int>(capacity);
  a.head_dim = static_cast<int>(hd);
  a.c1 = keys.c1.data;
  a.c1_cap = static_cast<int>(keys.c1.dim(1));
  a.size1 = static_cast<int>(params.kernel_size);
  a.stride1 = static_cast<int>(params.kernel_stride);
  a.c2 = params.uses_c2() ? keys.c2.data : nullptr;
  a.c2_cap = params.uses_c2() ? static_cast<int>(keys.c2.dim(1)) : 0;
  a.size2 = static_cast<int>(params.c2_kernel_size());
  a.stride2 = static_cast<int>(params.c2_kernel_stride());
  a.slots = slots.as<const int32_t>();
  a.tokens = static_cast<int>(tokens);
  a.tree = mask.is_tree();
  a.rows = keys.rows.as<int32_t>();
  a.error_word = ctx.error_word();
  // The kernels a call of T tokens normally recomputes; a cache that fell behind loops.
  int64_t items = (tokens + params.kernel_size) / params.kernel_stride + 2;
  if (params.uses_c2()) items += (tokens + params.c2_kernel_size()) / params.c2_kernel_stride() + 2;
  items = std::min<int64_t>(items, 65535);
  launch_kernel(ctx, "compress_keys", compress_kernel, dim3(static_cast<unsigned>(items), static_cast<unsigned>(n_kv)),
                dim3(kThreads), 0, a);
  launch_kernel(ctx, "compress_keys (rows)", compress_rows_kernel, dim3(1), dim3(kWarpSize), 0, a);
}

void sparse_select(CudaContext& ctx, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                   const Tensor& positions, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, Tensor& blocks, bool stage1_only) {
  const CallShape s = call_shape(ctx, q, k_cache, keys, mask, params);
  SPECULA_CHECK(s.capacity < INT_MAX / 2 && s.tokens * s.n_heads < INT_MAX / 2, "sparse_select: cache of ", s.capacity,
                " rows or ", s.tokens, " tokens is too large for the CUDA kernels");
  if (s.tree) {
    SPECULA_CHECK(mask.tree_bits.numel() >= s.tokens * AttentionMask::tree_words(mask.width),
                  "sparse_select: tree bits ", mask.tree_bits.shape_string(), " do not cover ", s.tokens, " rows of ",
                  mask.width, " columns");
    SPECULA_CHECK(s.tokens <= 8192, "sparse_select: a tree of ", s.tokens, " nodes is more than the CUDA kernels hold");
  }
  const Plan plan = make_plan(s, ctx.workspace_bytes());
  auto* ws = static_cast<unsigned char*>(ctx.workspace());
  SPECULA_CHECK(is_aligned(ws, 16), "sparse_select: the CUDA workspace is not 16-byte aligned");

  SelectArgs a{};
  a.tokens = static_cast<int>(s.tokens);
  a.n_heads = static_cast<int>(s.n_heads);
  a.n_kv = static_cast<int>(s.n_kv);
  a.group = static_cast<int>(s.group);
  a.head_dim = static_cast<int>(s.head_dim);
  a.k_capacity = static_cast<int>(s.capacity);
  a.q = q.data;
  a.q_dtype = q.dtype;
  a.k_cache = k_cache.data;
  a.k_dtype = k_cache.dtype;
  a.c1 = Tier{keys.c1.data, static_cast<int>(s.c1_cap), static_cast<int>(params.kernel_size),
              static_cast<int>(params.kernel_stride), plan.max_own1};
  a.c2 = Tier{s.v41 ? keys.c2.data : nullptr, static_cast<int>(s.c2_cap), static_cast<int>(params.c2_kernel_size()),
              static_cast<int>(params.c2_kernel_stride()), plan.max_own2};
  a.positions = positions.as<const int32_t>();
  a.slots = slots.as<const int32_t>();
  a.tree = s.tree;
  a.tree_bits = s.tree ? mask.tree_bits.as<const uint32_t>() : nullptr;
  a.tree_words = static_cast<int>(AttentionMask::tree_words(mask.width));
  a.v41 = s.v41;
  a.block_size = static_cast<int>(params.block_size);
  a.pool_stride = static_cast<int>(params.block_size / params.kernel_stride);
  a.init_blocks = static_cast<int>(std::min<int64_t>(params.init_blocks, INT_MAX / 2));
  a.local_blocks = static_cast<int>(std::min<int64_t>(params.local_blocks, INT_MAX / 2));
  a.topk_slots = static_cast<int>(std::min<int64_t>(params.topk_slots(), INT_MAX / 2));
  a.width = static_cast<int>(blocks.dim(2));
  a.nb_cap = static_cast<int>(ceil_div<int64_t>(s.capacity, params.block_size) + 1);
  a.sparse_from = static_cast<int>(std::clamp<int64_t>(params.sparse_from, INT_MIN / 2, INT_MAX / 2));
  a.scale = params.scale;
  a.scores = ws + plan.scores_off;
  a.score_stride = plan.score_stride;
  a.partials = reinterpret_cast<float2*>(ws + plan.partials_off);
  a.lse_splits = plan.splits1;
  a.lse = reinterpret_cast<float*>(ws + plan.lse_off);
  a.own1 = reinterpret_cast<float*>(ws + plan.own1_off);
  a.own2 = reinterpret_cast<float*>(ws + plan.own2_off);
  a.blocks = blocks.as<int32_t>();
  a.error_word = ctx.error_word();

  const size_t own_smem =
      (static_cast<size_t>(a.group + 1) * a.head_dim + static_cast<size_t>(a.tokens)) * sizeof(float);
  // Pooling reads each kernel score twice or more: stage the query's scores in shared memory when
  // they fit next to the keys (up to about 2M rows of cache on an H100).
  size_t select_smem = select_smem_layout(a.nb_cap, plan.max_own1, a.group, plan.score_stride).bytes;
  a.stage_scores = select_smem + 4096 <= ctx.info().max_shared_memory_per_block_optin;  // + the static arrays
  if (!a.stage_scores) select_smem = select_smem_layout(a.nb_cap, plan.max_own1, a.group, 0).bytes;
  if (s.tree) set_smem(reinterpret_cast<const void*>(own_logits_kernel), own_smem, ctx, "sparse_select tree kernels");
  const auto select = plan.mma ? select_kernel<true> : select_kernel<false>;
  set_smem(reinterpret_cast<const void*>(select), select_smem, ctx, "sparse_select top-k");

  for (int64_t c0 = 0; c0 < s.tokens; c0 += plan.chunk) {
    a.chunk0 = static_cast<int>(c0);
    a.chunk_tokens = static_cast<int>(std::min<int64_t>(plan.chunk, s.tokens - c0));
    if (s.tree)
      launch_kernel(ctx, "sparse_select tree kernels", own_logits_kernel,
                    dim3(static_cast<unsigned>(a.chunk_tokens), static_cast<unsigned>(a.n_kv)), dim3(kThreads),
                    own_smem, a);
    launch_stage1(ctx, plan, a, false);
    launch_stage1(ctx, plan, a, true);
    const bool few = static_cast<int64_t>(a.chunk_tokens) * a.n_kv < s.multiprocessors;
    if (!stage1_only)
      launch_kernel(ctx, "sparse_select top-k", select,
                    dim3(static_cast<unsigned>(a.chunk_tokens), static_cast<unsigned>(a.n_kv)),
                    dim3(few ? kSelectThreadsFew : kSelectThreads), select_smem, a);
  }
}

std::string describe_sparse_select(CudaContext& ctx, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                                   const AttentionMask& mask, const SparseSelectParams& params) {
  const CallShape s = call_shape(ctx, q, k_cache, keys, mask, params);
  const Plan plan = make_plan(s, ctx.workspace_bytes());
  std::string out = plan.mma ? "tensor cores, " + std::to_string(16 * plan.wm) + "-row tiles of " +
                                   std::to_string(plan.tokens_per_tile) + " token(s)"
                             : std::string("CUDA cores (fp32)");
  out += ", splits " + std::to_string(plan.splits1) + "/" + std::to_string(plan.splits2) + ", " +
         std::to_string(ceil_div<int64_t>(s.tokens, plan.chunk)) + " chunk(s) of " + std::to_string(plan.chunk) +
         " tokens, " + std::to_string(plan.bytes >> 10) + " KiB workspace";
  return out;
}

}  // namespace specula::ops::cuda_impl
