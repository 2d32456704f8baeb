// CUDA ops::top_k_log_softmax. Drafting asks for the top k (10, up to 64) of ~10 rows of a
// 8K-152K vocabulary at a time: one block per row would leave most of the GPU idle and run each
// row's read and sort serially, so every row is split into chunks of kChunk elements, one block
// each, and the op runs in two passes:
//   pass 1 (rows x chunks blocks): a block reads its chunk once (16-byte loads where the row
//     allows), each thread holding kPerThread values in registers. It sums the chunk's
//     exponentials (max and sum), then selects the chunk's top k without sorting the chunk: the
//     k-th largest of the threads' maxima is a threshold that at least k keys reach and at most
//     k * kPerThread keys reach (only the k threads with the largest maxima hold any), so only
//     those candidates are sorted (usually k to 2k keys, by one warp). The chunk's sorted top k
//     and its (max, sum) go to the CUDA context's workspace, which is free between launches
//     because every op runs in order on the context's one stream.
//   pass 2 (one block per row): merges the chunks' (max, sum) pairs into the log-sum-exp and
//     the chunks' sorted lists pairwise (top k of two sorted lists: elementwise max against the
//     other list reversed, then a bitonic clean-up), log2(chunks) rounds, and writes the result.
// A row of one chunk (vocabulary <= kChunk) is finished in pass 1. No allocation, no host sync:
// the grids follow the shapes, so the op can be captured in a CUDA graph; rows that do not fit
// the workspace at once go in several launches.
//
// A key packs the value's order-preserving bits above the complemented index, so one unsigned
// comparison ranks by value and then by lower index (the CPU reference's rule), and all keys of a
// row are distinct; -0 is ranked as +0 (equal values); NaN keys keep only the index, so NaN is
// never chosen while a number is left (and then the lowest-index NaN first, as on the CPU).
// Padding and out-of-range slots are key 0, below every element's key.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/top_k.h"
#include "specula/ops/ops.h"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kPerThread = 16;                       // values each pass-1 thread holds
constexpr int kChunk = kThreads * kPerThread;        // elements per pass-1 block
constexpr int kMaxK = 64;                            // the widest list (ops::kMaxTopK)
constexpr int kCandidates = kMaxK * kPerThread;      // pass-1 candidate bound, k * kPerThread
constexpr int kWarpSortMax = 64;                     // candidate counts sorted by one warp
constexpr int kMergeKeys = 4096;                     // pass-2 lists in shared memory (32 KB)
constexpr int kChunkBlocksPerSm = 4;                 // pass-1 occupancy asked of the compiler (64 registers)
constexpr int kMaxGridY = 65535;                     // CUDA limit on gridDim.y (rows per launch)
static_assert(kMaxK == ops::kMaxTopK, "the list widths cover every k the op accepts");
static_assert(kChunk % 4 == 0, "chunks start on 16-byte boundaries of a vector-loaded row");

__device__ __forceinline__ uint64_t make_key(float v, uint32_t index) {
  const uint32_t low = 0xFFFFFFFFu - index;
  if (v != v) return low;  // NaN: below every number, lower index first
  uint32_t u = __float_as_uint(v);
  if (u == 0x80000000u) u = 0;  // -0 ranks as +0
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(u) << 32) | low;
}
__device__ __forceinline__ float key_value(uint64_t key) {
  uint32_t u = static_cast<uint32_t>(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
  return __uint_as_float(u);
}
__device__ __forceinline__ int32_t key_index(uint64_t key) {
  return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}
__device__ __forceinline__ uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }
__device__ __forceinline__ uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

// The output pair of a selected key: NaN keys (upper half 0) give NaN, as x - lse does on the CPU.
__device__ __forceinline__ void write_result(uint64_t key, float lse, float* value, int32_t* index) {
  *value = (key >> 32) == 0 ? NAN : key_value(key) - lse;
  *index = key_index(key);
}

// (m, s) <- the log-sum-exp pair of the union: max and sum of exp(x - max). An empty side has
// m = -inf, s = 0; +inf inputs give NaN sums, as the CPU's exp(inf - inf) does.
__device__ __forceinline__ void merge_lse(float& m, float& s, float om, float os) {
  const float nm = fmaxf(m, om);
  s = (m == -INFINITY ? 0.0f : s * expf(m - nm)) + (om == -INFINITY ? 0.0f : os * expf(om - nm));
  m = nm;
}

// Block-wide merge_lse, the result in every thread. Every thread calls it; the scratch arrays
// (kWarps floats each) are free again when it returns.
__device__ __forceinline__ void block_merge_lse(float& m, float& s, float* red_m, float* red_s) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) {
    const float om = __shfl_xor_sync(kFullWarpMask, m, off), os = __shfl_xor_sync(kFullWarpMask, s, off);
    merge_lse(m, s, om, os);
  }
  if (lane == 0) {
    red_m[warp] = m;
    red_s[warp] = s;
  }
  __syncthreads();
  m = -INFINITY;
  s = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) merge_lse(m, s, red_m[w], red_s[w]);
  __syncthreads();
}

// Number of keys in a descending list of 32 that are greater than `key` (those form a prefix).
// A fixed number of steps, so the searches of several lists interleave.
__device__ __forceinline__ int count_greater(const uint64_t* sorted, uint64_t key) {
  int pos = 0;  // ends as min(count, 31)
#pragma unroll
  for (int step = kWarpSize / 2; step > 0; step >>= 1)
    if (sorted[pos + step - 1] > key) pos += step;
  return pos == kWarpSize - 1 && sorted[kWarpSize - 1] > key ? kWarpSize : pos;
}

// Descending bitonic sort of n_pow2 keys in shared memory by one warp (small counts, where a
// block's barriers would cost more than the comparisons).
__device__ void warp_sort_descending(uint64_t* keys, int n_pow2, int lane) {
  for (int size = 2; size <= n_pow2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = lane; i < n_pow2; i += kWarpSize) {
        const int partner = i ^ stride;
        if (partner > i) {
          const bool descending = (i & size) == 0;
          const uint64_t a = keys[i], b = keys[partner];
          if ((a < b) == descending) {
            keys[i] = b;
            keys[partner] = a;
          }
        }
      }
      __syncwarp();
    }
  }
}

// Pass 1: block (chunk, row) selects its chunk's top k. Vec is the elements per load (4: 16-byte
// loads, the row length a multiple of 4 and the data 16-byte aligned; 1 otherwise). With
// chunks == 1 it writes the op's result; otherwise the chunk's list (list_len keys, descending,
// zeros after the first k) and its (max, sum) pair to the workspace.
template <int Vec>
__global__ void __launch_bounds__(kThreads, kChunkBlocksPerSm)
    top_k_chunk_kernel(const float* logits, int64_t vocab, int k, int chunks, int list_len, uint64_t* part_keys,
                       float2* part_lse, float* values, int32_t* indices) {
  static_assert(kPerThread % Vec == 0, "whole vectors per thread");
  __shared__ uint64_t lane_max[kWarps][kWarpSize];
  __shared__ uint64_t candidates[kCandidates];
  __shared__ float red_m[kWarps], red_s[kWarps];
  __shared__ uint64_t threshold;
  __shared__ int candidate_count;

  pdl_launch_dependents();
  pdl_wait();
  const int tid = static_cast<int>(threadIdx.x), lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int64_t row = blockIdx.y;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int len = static_cast<int>(min(vocab - begin, static_cast<int64_t>(kChunk)));  // elements in the chunk
  const float* x = logits + row * vocab + begin;
  // Element e of this thread is element offset(e) of the chunk (its index in the row: begin +
  // offset(e) < 2^31): vectors of Vec interleaved across the block, so each load instruction of a
  // warp reads one contiguous span.
  auto offset = [&](int e) { return ((e / Vec) * kThreads + tid) * Vec + e % Vec; };
  auto index = [&](int e) { return static_cast<uint32_t>(begin) + static_cast<uint32_t>(offset(e)); };

  float v[kPerThread];
#pragma unroll
  for (int q = 0; q < kPerThread / Vec; ++q) {
    const int i = offset(q * Vec);
    float w[Vec];
    if (i < len) {  // with Vec = 4 the row length is a multiple of 4: the whole vector is inside
      load_f32<float, Vec>(x + i, w);
    } else {
#pragma unroll
      for (int c = 0; c < Vec; ++c) w[c] = -INFINITY;
    }
#pragma unroll
    for (int c = 0; c < Vec; ++c) v[q * Vec + c] = w[c];
  }

  // The thread's largest key and its share of the log-sum-exp.
  uint64_t my_max = 0;
  float m = -INFINITY, s = 0.0f;
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    if (offset(e) < len) {
      my_max = max_u64(my_max, make_key(v[e], index(e)));
      if (v[e] == v[e]) m = fmaxf(m, v[e]);
    }
  }
  if (m != -INFINITY) {
#pragma unroll
    for (int e = 0; e < kPerThread; ++e)
      if (offset(e) < len && v[e] == v[e] && v[e] != -INFINITY) s += expf(v[e] - m);
  }

  // Each warp's maxima, sorted descending across the lanes (bitonic, through shuffles).
  uint64_t sorted = my_max;
#pragma unroll
  for (int size = 2; size <= kWarpSize; size <<= 1) {
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      const uint64_t other = __shfl_xor_sync(kFullWarpMask, static_cast<unsigned long long>(sorted), stride);
      const bool keep_max = ((lane & stride) == 0) == ((lane & size) == 0);
      sorted = keep_max ? max_u64(sorted, other) : min_u64(sorted, other);
    }
  }
  lane_max[warp][lane] = sorted;
  if (tid == 0) {
    threshold = 0;
    candidate_count = 0;
  }
  block_merge_lse(m, s, red_m, red_s);  // its barriers also publish lane_max and the resets

  // The threshold: the k-th largest thread maximum (distinct unless 0; if fewer than k threads
  // hold an element, it stays 0 and every element is a candidate).
  int rank = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) rank += count_greater(lane_max[w], my_max);
  if (rank == k - 1) threshold = my_max;
  __syncthreads();
  const uint64_t tau = threshold;

  // Candidates: the keys >= the threshold, appended warp by warp.
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    const uint64_t key = offset(e) < len ? make_key(v[e], index(e)) : 0;
    const bool take = key != 0 && key >= tau;
    const unsigned ballot = __ballot_sync(kFullWarpMask, take);
    if (ballot != 0) {
      int base = 0;
      if (lane == 0) base = atomicAdd(&candidate_count, __popc(ballot));
      base = __shfl_sync(kFullWarpMask, base, 0);
      const int slot = base + __popc(ballot & ((1u << lane) - 1u));
      if (take && slot < kCandidates) candidates[slot] = key;
    }
  }
  __syncthreads();
  const int count = min(candidate_count, kCandidates);  // <= k * kPerThread by construction
  int n_pow2 = 1;
  while (n_pow2 < count) n_pow2 <<= 1;
  for (int i = count + tid; i < n_pow2; i += kThreads) candidates[i] = 0;
  __syncthreads();
  if (n_pow2 <= kWarpSortMax) {
    if (warp == 0) warp_sort_descending(candidates, n_pow2, lane);
  } else {
    block_sort_descending(candidates, n_pow2);
  }
  __syncthreads();

  if (chunks == 1) {
    const float lse = m + logf(s);
    for (int j = tid; j < k; j += kThreads)
      write_result(candidates[j], lse, values + row * k + j, indices + row * k + j);
    return;
  }
  uint64_t* list = part_keys + (row * chunks + blockIdx.x) * list_len;
  for (int j = tid; j < list_len; j += kThreads) list[j] = j < k && j < count ? candidates[j] : 0;
  if (tid == 0) part_lse[row * chunks + blockIdx.x] = make_float2(m, s);
}

// Pass 2: block `row` merges the row's chunks. K is the list length (a power of two >= k);
// `width` (a power of two, width * K <= kMergeKeys) lists are merged at a time: all of them
// when they fit, else the running best in slot 0 and width - 1 more per round.
template <int K>
__global__ void __launch_bounds__(kThreads)
    top_k_merge_kernel(const uint64_t* part_keys, const float2* part_lse, int chunks, int width, int k,
                       float* values, int32_t* indices) {
  __shared__ uint64_t lists[kMergeKeys];
  __shared__ float red_m[kWarps], red_s[kWarps];

  pdl_launch_dependents();
  pdl_wait();
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t row = blockIdx.x;

  float m = -INFINITY, s = 0.0f;
  for (int c = tid; c < chunks; c += kThreads) {
    const float2 p = part_lse[row * chunks + c];
    merge_lse(m, s, p.x, p.y);
  }
  block_merge_lse(m, s, red_m, red_s);
  const float lse = m + logf(s);

  const uint64_t* src = part_keys + row * chunks * K;
  int next = 0;  // the first chunk not loaded yet
  for (bool first = true; first || next < chunks; first = false) {
    const int from = first ? 0 : 1;  // after the first round slot 0 holds the best so far
    for (int e = from * K + tid; e < width * K; e += kThreads) {
      const int list = next + e / K - from;
      lists[e] = list < chunks ? src[static_cast<int64_t>(list) * K + e % K] : 0;
    }
    next += width - from;
    __syncthreads();
    for (int half = width >> 1; half >= 1; half >>= 1) {
      // List l (< half) becomes the bitonic top K of lists l and l + half ...
      for (int e = tid; e < half * K; e += kThreads) {
        const int l = e / K, j = e % K;
        lists[e] = max_u64(lists[e], lists[(l + half) * K + (K - 1 - j)]);
      }
      __syncthreads();
      // ... sorted descending again by the half-cleaners of a bitonic merge.
      for (int stride = K / 2; stride > 0; stride >>= 1) {
        for (int e = tid; e < half * (K / 2); e += kThreads) {
          const int l = e / (K / 2), p = e % (K / 2);
          uint64_t* list = lists + l * K + (((p & ~(stride - 1)) << 1) | (p & (stride - 1)));
          const uint64_t a = list[0], b = list[stride];
          if (a < b) {
            list[0] = b;
            list[stride] = a;
          }
        }
        __syncthreads();
      }
    }
  }
  for (int j = tid; j < k; j += kThreads) write_result(lists[j], lse, values + row * k + j, indices + row * k + j);
}

int list_length(int64_t k) { return k <= 16 ? 16 : (k <= 32 ? 32 : 64); }

}  // namespace

void top_k_log_softmax(CudaContext& ctx, const Tensor& logits, Tensor& values, Tensor& indices) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1), k = values.dim(1);
  SPECULA_CHECK(vocab <= INT32_MAX, "top_k_log_softmax: rows longer than 2^31 entries");
  SPECULA_CHECK(k >= 1 && k <= kMaxK && k <= vocab, "top_k_log_softmax: k = ", k, " for rows of ", vocab);
  if (rows == 0) return;
  const int list_len = list_length(k);
  const int64_t chunks = ceil_div<int64_t>(vocab, kChunk);
  const bool vector_path = vocab % 4 == 0 && is_aligned(logits.data, kVectorBytes);

  // Rows per launch: the workspace holds each row's chunk lists and (max, sum) pairs.
  int64_t batch = std::min<int64_t>(rows, kMaxGridY);
  const size_t keys_per_row = static_cast<size_t>(chunks * list_len) * sizeof(uint64_t);
  const size_t bytes_per_row = keys_per_row + static_cast<size_t>(chunks) * sizeof(float2);
  if (chunks > 1) {
    const int64_t fit = ctx.workspace() ? static_cast<int64_t>(ctx.workspace_bytes() / bytes_per_row) : 0;
    SPECULA_CHECK(fit >= 1, "top_k_log_softmax: the CUDA workspace (", ctx.workspace_bytes(),
                  " bytes) cannot hold one row's partial results (", bytes_per_row, " bytes)");
    batch = std::min(batch, fit);
  }
  int width = 1;
  while (width < chunks && width * list_len < kMergeKeys) width <<= 1;

  const float* x = logits.as<const float>();
  float* out_values = values.as<float>();
  int32_t* out_indices = indices.as<int32_t>();
  for (int64_t r0 = 0; r0 < rows; r0 += batch) {
    const int64_t n = std::min(batch, rows - r0);
    uint64_t* part_keys = chunks > 1 ? static_cast<uint64_t*>(ctx.workspace()) : nullptr;
    float2* part_lse = chunks > 1 ? reinterpret_cast<float2*>(static_cast<char*>(ctx.workspace()) +
                                                              static_cast<size_t>(n) * keys_per_row)
                                  : nullptr;
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(n));
    launch_kernel(ctx, "top_k_log_softmax", vector_path ? top_k_chunk_kernel<4> : top_k_chunk_kernel<1>, grid,
                  dim3(kThreads), 0, x + r0 * vocab, vocab, static_cast<int>(k), static_cast<int>(chunks), list_len,
                  part_keys, part_lse, out_values + r0 * k, out_indices + r0 * k);
    if (chunks == 1) continue;
    auto merge = list_len == 16 ? top_k_merge_kernel<16>
                                : (list_len == 32 ? top_k_merge_kernel<32> : top_k_merge_kernel<64>);
    launch_kernel(ctx, "top_k_log_softmax (merge)", merge, dim3(static_cast<unsigned>(n)), dim3(kThreads), 0,
                  static_cast<const uint64_t*>(part_keys), static_cast<const float2*>(part_lse),
                  static_cast<int>(chunks), width, static_cast<int>(k), out_values + r0 * k, out_indices + r0 * k);
  }
}

}  // namespace specula::ops::cuda_impl
