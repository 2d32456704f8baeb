// CUDA ops::qkv_attention: everything from the fused QKV projection's output to the attention
// output. For one token (batch-1 decode) on sm_90 with a 16-bit cache and head_dim 64 or 128 it
// runs one fused kernel; anything else runs qkv_rope_store then attention (qkv_rope_store.cu,
// attention.cu), which is also what the fused kernel must agree with. A tree mask or block lists
// always take the two-op path (the fused kernel knows only the causal mask).
//
// Why a fused decode kernel: at short context the decode attention is a chain of dependent round
// trips, not a bandwidth problem (2 MB of cache per layer at context 512). Three kernels (RoPE and
// cache store, split-KV attention, split merge) pay three launch-and-wait boundaries and three
// chains of loads per layer. Here one kernel does it all:
//   1. Each thread-block cluster owns kHeads query heads of one KV head (the whole group, or half
//      of it so that enough clusters fill the GPU) and its kCluster blocks split the visible rows,
//      cut in tiles of kTileRows rows as attention.cu cuts its splits (attn_split_range), so the
//      grid depends only on the shapes and the length is read on the device: one captured graph
//      serves every length.
//   2. Before the grid-dependency wait a block reads the slot and requests its first K/V tiles:
//      the slot comes from the forward's host-to-device input copy, which completes before the
//      forward's first kernel, and cache rows before the slot were written by earlier forwards
//      (the new row never comes from the cache; see below). The latency of those loads then hides
//      behind the previous kernel's tail. After the wait it rotates its queries (and, in the split
//      holding the new row, the new key) from the QKV buffer with rope.cuh.
//   3. Threads own 8 dims of one row per pass (one 16-byte load each of K and V), kAhead tiles in
//      flight; each row group (the lanes of a row) keeps an online softmax over its rows; warps
//      merge through shared memory; each split stores its result into the shared memory of the
//      cluster's leader (split 0, distributed shared memory), arrives at the cluster barrier and
//      leaves; the leader waits, merges and writes the output. No partials in global memory, no
//      merge kernel, no atomics.
//   4. The block that owns the new row writes it to the cache and attends to its own fp32 copy of
//      it (rounded to the cache dtype), so no block reads a row that this kernel writes.
// Rounding matches the unfused path: q and the new K/V row are rounded to the cache dtype before
// use (as q_out and the cache hold them); scores and softmax in fp32.
//
// Contract this relies on (ops.h states it for the op): in a one-token call, nothing queued since
// the forward's input copy writes cache rows below slots[0] of this layer before this op.
//
// Measured on the H100 (bench/results/dense_history.md): 5.8 us per call at context 512 against
// 9.8 us for the three kernels, which lifts a Llama-3-8B decode step from 86.4% to 90.0-90.3% of
// the bandwidth limit. Its split count is fixed, so past about 4000 rows it is the slower one
// (27 against 23 us at 8192, 91 against 61 us at 32768: one 8-warp block per SM, each tile a chain
// of dependent shuffles); in the whole step the crossover is near 5900 rows. The engine therefore
// captures a second decode graph with this kernel off for caches longer than
// CudaContext::fused_attention_max_rows() (engine.cpp, Engine::decode_step).
// SPECULA_NO_FUSED_ATTENTION=1 turns it off for A/B runs.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "specula/core/error.h"
#include "specula/ops/cuda/attention_common.cuh"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/rope.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kThreads = 256;
// [[maybe_unused]]: the sm_80 pass compiles the kernel body away (clusters are sm_90).
[[maybe_unused]] constexpr int kWarps = kThreads / kWarpSize;
constexpr int kDimsPerLane = 8;  // one 16-byte load of a 16-bit cache row
[[maybe_unused]] constexpr int kPasses = 2;  // rows per thread per tile
[[maybe_unused]] constexpr int kAhead = 2;   // tiles in flight per block
constexpr int kMaxHeadsPerBlock = 4;  // query heads a block serves (at most kWarps, see the merge)
constexpr int kCluster = 8;           // blocks per cluster: the portable maximum, one split each
constexpr int kMinComputeMajor = 9;   // thread-block clusters and distributed shared memory
constexpr float kLog2e = 1.4426950408889634f;

struct FusedArgs : QkvRopeOperands {  // q_out in the cache dtype
  void* out;  // [n_heads * head_dim]
  DType out_dtype;
  uint32_t* error_word;
  int n_heads, n_kv, group, head_blocks, capacity;
  float scale_log2;
};

// Online-softmax state of one query head over some rows: running max m (log2 domain), sum l of
// exp2(score - m), and the exp2-weighted sum of V over this lane's dims.
struct HeadState {
  float m, l, acc[kDimsPerLane];
};

[[maybe_unused]] __device__ __forceinline__ void merge_state(HeadState& s, float m2, float l2, const float (&acc2)[kDimsPerLane]) {
  const float m = fmaxf(s.m, m2);
  if (m == -INFINITY) return;  // both empty
  const float c1 = exp2f(s.m - m), c2 = exp2f(m2 - m);
  s.l = s.l * c1 + l2 * c2;
#pragma unroll
  for (int j = 0; j < kDimsPerLane; ++j) s.acc[j] = s.acc[j] * c1 + acc2[j] * c2;
  s.m = m;
}

template <typename CacheT>
__device__ __forceinline__ void unpack_row(const uint4& r, float (&f)[kDimsPerLane]) {
  using W = detail::Words<CacheT>;
  W::unpack(r.x, &f[0]);
  W::unpack(r.y, &f[2]);
  W::unpack(r.z, &f[4]);
  W::unpack(r.w, &f[6]);
}

// Cluster barrier halves (sm_90): every thread of every block of the cluster arrives once per
// phase; `release` orders this thread's earlier writes (shared memory of other blocks included)
// before the arrival, `acquire` makes the writes of every arrived thread visible after the wait.
[[maybe_unused]] __device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
[[maybe_unused]] __device__ __forceinline__ void cluster_arrive_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}
[[maybe_unused]] __device__ __forceinline__ void cluster_wait_acquire() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// Two blocks per SM (registers capped at 128): a cluster then needs only 4 SMs of one GPC, and a
// block fits beside the bulk-copy GEMV (gemv_bulk.cu) that precedes it under PDL.
constexpr int kMinBlocksPerSm = 2;

// Grid (kCluster, head groups) in clusters of kCluster x 1 blocks: blockIdx.x is the split and the
// block's rank in its cluster, blockIdx.y the (KV head, head block) pair.
template <typename CacheT, int kHeadDim, int kHeads>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) decode_attention_kernel(const FusedArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kLanesPerRow = kHeadDim / kDimsPerLane;  // 16 or 8
  constexpr int kRowsPerPass = kThreads / kLanesPerRow;  // 16 or 32
  constexpr int kTileRows = kPasses * kRowsPerPass;      // 32 or 64
  static_assert(kHeads <= kWarps, "the split merge gives each head one warp");
  __shared__ float s_q[kHeads][kHeadDim];
  __shared__ float s_k[kHeadDim], s_v[kHeadDim];
  __shared__ float s_acc[kWarps][kHeads][kHeadDim];
  __shared__ float s_m[kWarps][kHeads], s_l[kWarps][kHeads];
  // Written by every split into the leader's (split 0's) copy: each split's unnormalised output
  // and its (max, sum) per head.
  __shared__ float s_part[kCluster][kHeads][kHeadDim];
  __shared__ float s_part_ml[kCluster][kHeads][2];
  __shared__ float s_weight[kHeads][kCluster];
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();
  constexpr int num_splits = kCluster;

  pdl_launch_dependents();
  // Phase 1 of the cluster barrier: its wait (before the first store into the leader's shared
  // memory) guarantees every block of the cluster has started; the work in between hides it.
  cluster_arrive_relaxed();
  const int tid = static_cast<int>(threadIdx.x), lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int split = static_cast<int>(blockIdx.x), group_block = static_cast<int>(blockIdx.y);
  const int kvh = group_block / a.head_blocks, hb = group_block % a.head_blocks;
  const int head0 = kvh * a.group + hb * kHeads;         // first query head of this block
  const int heads = min(kHeads, a.group - hb * kHeads);  // its real heads (the rest is padding)

  // Before the wait: the slot and this split's first tiles (see the file comment for why that is safe).
  const int slot = a.slots[0];
  const bool valid = slot >= 0 && slot < a.capacity;
  const int len_tiles = valid ? attn::ceil_div_int(slot + 1, kTileRows) : 0;
  const attn::TileRange range = attn::attn_split_range(len_tiles, num_splits, 1, split);
  const bool active = range.begin < range.end;
  const int active_splits = valid ? attn::ceil_div_int(len_tiles, attn::ceil_div_int(len_tiles, num_splits)) : 0;
  const bool owner = active && range.end == len_tiles;  // the last active split holds the new row
  const int row_begin = range.begin * kTileRows;
  const int row_end = active ? min(range.end * kTileRows, slot) : row_begin;  // cached rows only

  const int row0 = tid / kLanesPerRow, dim0 = (tid % kLanesPerRow) * kDimsPerLane;
  const int64_t head_rows = static_cast<int64_t>(kvh) * a.capacity;
  const CacheT* k_base = static_cast<const CacheT*>(a.k_cache) + head_rows * kHeadDim + dim0;
  const CacheT* v_base = static_cast<const CacheT*>(a.v_cache) + head_rows * kHeadDim + dim0;
  auto load_tile = [&](int base, uint4 (&kr)[kPasses], uint4 (&vr)[kPasses]) {
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      const int row = base + row0 + p * kRowsPerPass;
      if (row < row_end) {
        kr[p] = detail::load_v4_stream(k_base + static_cast<int64_t>(row) * kHeadDim);
        vr[p] = detail::load_v4_stream(v_base + static_cast<int64_t>(row) * kHeadDim);
      } else {
        kr[p] = vr[p] = make_uint4(0, 0, 0, 0);  // past the split: no memory access
      }
    }
  };
  uint4 k_buf[kAhead][kPasses], v_buf[kAhead][kPasses];
#pragma unroll
  for (int i = 0; i < kAhead; ++i) load_tile(row_begin + i * kTileRows, k_buf[i], v_buf[i]);

  pdl_wait();  // qkv, positions, the cache row this kernel writes and the error word are earlier kernels'
  if (!valid) {  // the same for every block: no cluster barrier is left waiting
    if (split == 0) {
      if (group_block == 0 && tid == 0) report_device_error(a.error_word, specula::cuda::kErrorSlotOutOfRange);
      for (int e = tid; e < heads * kHeadDim; e += kThreads)
        store_f32_dyn(a.out, a.out_dtype, static_cast<int64_t>(head0) * kHeadDim + e, 0.0f);
    }
    return;
  }

  // Queries (and the new K/V row, in the owner) from the QKV buffer: one warp per head.
  const int64_t kv_row = (head_rows + slot) * kHeadDim;
  const RopeAngles angles{a.inv_freq, a.attention_scaling, static_cast<float>(a.positions[0])};
  const int items = active ? heads + (owner ? 2 : 0) : 0;
  for (int item = warp; item < items; item += kWarps) {
    if (item < heads) {
      const int head = head0 + item;
      const RopeHeadSource src{a.qkv, a.qkv_dtype, static_cast<int64_t>(head) * kHeadDim, kHeadDim,
                               a.q_norm, a.q_norm_dtype, a.norm_eps};
      rope_head_warp(src, angles, lane, [&](int64_t i, float x) {
        s_q[item][i] = round_through<CacheT>(x) * a.scale_log2;
        if (split == 0) static_cast<CacheT*>(a.q_out)[static_cast<int64_t>(head) * kHeadDim + i] = from_f32<CacheT>(x);
      });
    } else if (item == heads) {
      const RopeHeadSource src{a.qkv, a.qkv_dtype, static_cast<int64_t>(a.n_heads + kvh) * kHeadDim, kHeadDim,
                               a.k_norm, a.k_norm_dtype, a.norm_eps};
      rope_head_warp(src, angles, lane, [&](int64_t i, float x) {
        s_k[i] = round_through<CacheT>(x);
        if (hb == 0) static_cast<CacheT*>(a.k_cache)[kv_row + i] = from_f32<CacheT>(x);
      });
    } else {
      const int64_t offset = static_cast<int64_t>(a.n_heads + a.n_kv + kvh) * kHeadDim;
      for (int i = lane; i < kHeadDim; i += kWarpSize) {
        const float x = load_f32_dyn(a.qkv, a.qkv_dtype, offset + i);
        s_v[i] = round_through<CacheT>(x);
        if (hb == 0) static_cast<CacheT*>(a.v_cache)[kv_row + i] = from_f32<CacheT>(x);
      }
    }
  }
  for (int e = tid; e < (kHeads - heads) * kHeadDim; e += kThreads) s_q[heads + e / kHeadDim][e % kHeadDim] = 0.0f;
  __syncthreads();

  float q[kHeads][kDimsPerLane];
  HeadState st[kHeads];
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      q[h][j] = s_q[h][dim0 + j];
      st[h].acc[j] = 0.0f;
    }
    st[h].m = -INFINITY;
    st[h].l = 0.0f;
  }

  // Scores of this lane's row for every head, reduced over the row's lanes; masked rows -inf.
  auto row_scores = [&](const float (&kf)[kDimsPerLane], bool visible, float (&score)[kHeads]) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < kDimsPerLane; ++j) dot += q[h][j] * kf[j];
#pragma unroll
      for (int offset = kLanesPerRow / 2; offset > 0; offset >>= 1) dot += __shfl_xor_sync(kFullWarpMask, dot, offset);
      score[h] = visible ? dot : -INFINITY;
    }
  };
  auto attend_tile = [&](int base, const uint4 (&kr)[kPasses], const uint4 (&vr)[kPasses]) {
    float score[kPasses][kHeads], vf[kPasses][kDimsPerLane];
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      float kf[kDimsPerLane];
      unpack_row<CacheT>(kr[p], kf);
      unpack_row<CacheT>(vr[p], vf[p]);
      row_scores(kf, base + row0 + p * kRowsPerPass < row_end, score[p]);
    }
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      const float m = fmaxf(st[h].m, fmaxf(score[0][h], score[1][h]));
      if (m == -INFINITY) continue;  // no visible row yet for this lane's row group
      const float corr = exp2f(st[h].m - m), p0 = exp2f(score[0][h] - m), p1 = exp2f(score[1][h] - m);
      st[h].l = st[h].l * corr + p0 + p1;
#pragma unroll
      for (int j = 0; j < kDimsPerLane; ++j) st[h].acc[j] = st[h].acc[j] * corr + p0 * vf[0][j] + p1 * vf[1][j];
      st[h].m = m;
    }
  };
  // kAhead tiles in flight: each slot of the ring is refilled right after it is used.
  for (int base = row_begin; base < row_end; base += kAhead * kTileRows) {
#pragma unroll
    for (int i = 0; i < kAhead; ++i) {
      const int tile = base + i * kTileRows;
      if (tile < row_end) attend_tile(tile, k_buf[i], v_buf[i]);
      load_tile(tile + kAhead * kTileRows, k_buf[i], v_buf[i]);
    }
  }

  if (owner && warp == 0) {  // the new row, in the first row group of warp 0
    float kf[kDimsPerLane], score[kHeads], vf[kDimsPerLane];
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      kf[j] = s_k[dim0 + j];
      vf[j] = s_v[dim0 + j];
    }
    row_scores(kf, lane < kLanesPerRow, score);
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
      if (score[h] != -INFINITY) merge_state(st[h], score[h], 1.0f, vf);
  }

  // Row groups of a warp -> one state per warp (butterfly), then warps -> block in shared memory.
#pragma unroll
  for (int offset = kLanesPerRow; offset < kWarpSize; offset <<= 1) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      float acc2[kDimsPerLane];
#pragma unroll
      for (int j = 0; j < kDimsPerLane; ++j) acc2[j] = __shfl_xor_sync(kFullWarpMask, st[h].acc[j], offset);
      const float m2 = __shfl_xor_sync(kFullWarpMask, st[h].m, offset);
      const float l2 = __shfl_xor_sync(kFullWarpMask, st[h].l, offset);
      merge_state(st[h], m2, l2, acc2);
    }
  }
  if (lane < kLanesPerRow) {
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
#pragma unroll
      for (int j = 0; j < kDimsPerLane; ++j) s_acc[warp][h][dim0 + j] = st[h].acc[j];
      if (lane == 0) {
        s_m[warp][h] = st[h].m;
        s_l[warp][h] = st[h].l;
      }
    }
  }
  __syncthreads();
  cluster_wait_acquire();  // phase 1: every block of the cluster is running
  if (active) {  // this split's (max, sum, unnormalised output) per head, into the leader's memory
    float* part = cluster.map_shared_rank(&s_part[split][0][0], 0);
    float* part_ml = cluster.map_shared_rank(&s_part_ml[split][0][0], 0);
    for (int e = tid; e < heads * kHeadDim; e += kThreads) {
      const int h = e / kHeadDim, d = e % kHeadDim;
      float m = -INFINITY;  // finite after the loop: an active split saw a row
#pragma unroll
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_m[w][h]);
      float o = 0.0f, l = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float f = exp2f(s_m[w][h] - m);
        o += f * s_acc[w][h][d];
        l += f * s_l[w][h];
      }
      part[h * kHeadDim + d] = o;
      if (d == 0) {
        part_ml[2 * h] = m;
        part_ml[2 * h + 1] = l;
      }
    }
  }
  // Phase 2: the splits arrive after their stores; only the leader waits, merges and writes the
  // output (the others may leave: nobody reads their shared memory).
  cluster_arrive_release();
  if (split != 0) return;
  cluster_wait_acquire();
  if (warp < heads) {  // weights exp2(m_split - m) / l of the splits for head `warp`
    const int h = warp;
    const bool seen = lane < active_splits;
    const float m_split = seen ? s_part_ml[lane][h][0] : -INFINITY, l_split = seen ? s_part_ml[lane][h][1] : 0.0f;
    float m = m_split;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(kFullWarpMask, m, offset));
    const float w = seen ? exp2f(m_split - m) : 0.0f;
    const float total = warp_sum(w * l_split);
    if (lane < kCluster) s_weight[h][lane] = w / total;
  }
  __syncthreads();
  for (int e = tid; e < heads * kHeadDim; e += kThreads) {
    const int h = e / kHeadDim, d = e % kHeadDim;
    float o = 0.0f;
#pragma unroll
    for (int r = 0; r < kCluster; ++r)
      if (r < active_splits) o += s_weight[h][r] * s_part[r][h][d];
    store_f32_dyn(a.out, a.out_dtype, static_cast<int64_t>(head0 + h) * kHeadDim + d, o);
  }
#else
  __trap();  // never launched below sm_90 (plan_fused checks the binary version)
#endif
}

int next_power_of_two_heads(int group) {
  int heads = 1;
  while (heads < group && heads < kMaxHeadsPerBlock) heads *= 2;
  return heads;
}

// Every instantiation has this signature, so a plan can carry the one it chose.
using FusedKernel = void (*)(FusedArgs);

FusedKernel pick_kernel(DType cache, int64_t head_dim, int heads) {
  auto by_heads = [&](auto tag_cache, auto tag_dim) -> FusedKernel {
    using CacheT = typename decltype(tag_cache)::type;
    constexpr int kHeadDim = decltype(tag_dim)::value;
    switch (heads) {
      case 1: return decode_attention_kernel<CacheT, kHeadDim, 1>;
      case 2: return decode_attention_kernel<CacheT, kHeadDim, 2>;
      default: return decode_attention_kernel<CacheT, kHeadDim, 4>;
    }
  };
  using D64 = std::integral_constant<int, 64>;
  using D128 = std::integral_constant<int, 128>;
  if (cache == DType::BF16)
    return head_dim == 128 ? by_heads(TypeTag<__nv_bfloat16>{}, D128{}) : by_heads(TypeTag<__nv_bfloat16>{}, D64{});
  return head_dim == 128 ? by_heads(TypeTag<__half>{}, D128{}) : by_heads(TypeTag<__half>{}, D64{});
}

// The fused kernel's launch plan for one shape; kernel == nullptr when it does not apply.
struct FusedPlan {
  FusedKernel kernel = nullptr;
  int heads_per_block = 0, head_blocks = 0;
};

// Heads per block: the GQA group rounded up to a power of two (at most kMaxHeadsPerBlock), halved
// while the clusters would fill less than half the SMs, as long as each KV head is shared by at
// most two blocks (the second read of its rows mostly hits L2). Shapes that still fill less than
// half the SMs (few KV heads: Qwen2.5's 2-4, MiniCPM4's 2) keep the three-kernel path, which
// splits long caches over more blocks. The plan is empty too when the clusters do not all fit on
// the device at once (one wave).
FusedPlan plan_fused(const CudaContext& ctx, DType cache, int64_t n_heads, int64_t n_kv, int64_t head_dim) {
  const int group = static_cast<int>(n_heads / n_kv), sms = ctx.info().multiprocessors;
  auto groups_for = [&](int h) { return static_cast<int>(n_kv) * attn::ceil_div_int(group, h); };
  auto fills_half = [&](int h) { return groups_for(h) * kCluster * 2 >= sms; };
  int heads = next_power_of_two_heads(group);
  while (heads > 1 && !fills_half(heads) && attn::ceil_div_int(group, heads / 2) <= 2) heads /= 2;
  if (ctx.fused_attention_heads() > 0) heads = std::min(ctx.fused_attention_heads(), next_power_of_two_heads(group));
  const int head_blocks = attn::ceil_div_int(group, heads), groups = groups_for(heads);
  if (head_blocks > 2 || !fills_half(heads) || groups > 65535) return {};
  const FusedKernel kernel = pick_kernel(cache, head_dim, heads);
  cudaFuncAttributes attributes{};
  SPECULA_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (attributes.binaryVersion < 90) return {};  // built without sm_90 code: the body would trap
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(kCluster, static_cast<unsigned>(groups));
  config.blockDim = dim3(kThreads);
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = kCluster;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  int clusters = 0;
  SPECULA_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &config));
  if (clusters < groups) return {};
  return {kernel, heads, head_blocks};
}

// Plans by shape and switch setting, kept in the context (CudaContext::op_cache): the attribute
// and occupancy queries above would otherwise run on every eager one-token call.
class FusedPlanCache {
 public:
  using Key = std::tuple<DType, int64_t, int64_t, int64_t, int>;  // cache, heads, KV heads, head_dim, override
  FusedPlan get(const CudaContext& ctx, const Key& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = plans_.find(key);
    if (it == plans_.end())
      it = plans_.emplace(key, plan_fused(ctx, std::get<0>(key), std::get<1>(key), std::get<2>(key), std::get<3>(key)))
               .first;
    return it->second;
  }

 private:
  std::mutex mutex_;
  std::map<Key, FusedPlan> plans_;
};

// Whether the fused kernel takes this call: sm_90, one token, a 16-bit cache with q_out in the
// same dtype (so q is rounded as the unfused path rounds it), head_dim 64 or 128, 16-byte aligned
// caches, and a plan whose clusters all fit on the device at once.
FusedPlan fused_plan_for(CudaContext& ctx, const Tensor& qkv, const Tensor& q_out, const Tensor& k_cache,
                         const Tensor& v_cache) {
  const int64_t n_heads = q_out.dim(1), hd = q_out.dim(2), n_kv = k_cache.dim(0);
  const DType cache = k_cache.dtype;
  if (!ctx.fused_decode_attention() || ctx.info().sm_major < kMinComputeMajor || qkv.dim(0) != 1) return {};
  if ((cache != DType::BF16 && cache != DType::F16) || q_out.dtype != cache) return {};
  if (hd != 64 && hd != 128) return {};
  if (!is_aligned(k_cache.data, kVectorBytes) || !is_aligned(v_cache.data, kVectorBytes)) return {};
  if (k_cache.dim(1) > INT_MAX || n_heads > INT_MAX) return {};
  std::shared_ptr<void>& slot = ctx.op_cache(CudaContext::OpCache::DecodeAttention);
  if (!slot) slot = std::make_shared<FusedPlanCache>();
  return static_cast<FusedPlanCache*>(slot.get())->get(ctx, {cache, n_heads, n_kv, hd, ctx.fused_attention_heads()});
}

}  // namespace

bool qkv_attention_is_fused(CudaContext& ctx, const Tensor& qkv, const Tensor& q_out, const Tensor& k_cache,
                            const Tensor& v_cache) {
  return fused_plan_for(ctx, qkv, q_out, k_cache, v_cache).kernel != nullptr;
}

std::string describe_qkv_attention(CudaContext& ctx, const Tensor& qkv, const Tensor& q_out,
                                   const Tensor& k_cache, const Tensor& v_cache) {
  const FusedPlan plan = fused_plan_for(ctx, qkv, q_out, k_cache, v_cache);
  if (plan.kernel == nullptr) return "three kernels";
  return "fused, clusters of " + std::to_string(kCluster) + " x " + std::to_string(plan.heads_per_block) + " heads";
}

void qkv_attention(CudaContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                   const RopeParams& rope, const Tensor& positions, const Tensor& slots, float scale, Tensor& q_out,
                   Tensor& k_cache, Tensor& v_cache, Tensor& out, const AttentionMask& mask) {
  // The fused kernel knows only the causal mask: tree and block-sparse masks take the two ops.
  const FusedPlan plan =
      mask.is_tree() || mask.is_sparse() ? FusedPlan{} : fused_plan_for(ctx, qkv, q_out, k_cache, v_cache);
  if (plan.kernel == nullptr) {
    qkv_rope_store(ctx, qkv, q_norm, k_norm, norm_eps, rope, positions, slots, q_out, k_cache, v_cache);
    attention(ctx, q_out, k_cache, v_cache, slots, scale, out, mask);
    return;
  }
  FusedArgs a{};
  static_cast<QkvRopeOperands&>(a) =
      qkv_rope_operands(qkv, q_norm, k_norm, norm_eps, rope, positions, slots, q_out, k_cache, v_cache);
  a.out = out.data;
  a.out_dtype = out.dtype;
  a.error_word = ctx.error_word();
  a.n_heads = static_cast<int>(q_out.dim(1));
  a.n_kv = static_cast<int>(k_cache.dim(0));
  a.group = a.n_heads / a.n_kv;
  a.head_blocks = plan.head_blocks;
  a.capacity = static_cast<int>(k_cache.dim(1));
  a.scale_log2 = scale * kLog2e;
  const dim3 grid(kCluster, static_cast<unsigned>(a.n_kv * a.head_blocks));
  launch_kernel_clustered(stream_of(ctx), ctx.programmatic_launch(), "qkv_attention (fused decode kernel)", plan.kernel,
                          grid, dim3(kThreads), 0, static_cast<unsigned>(kCluster), a);
}

}  // namespace specula::ops::cuda_impl
