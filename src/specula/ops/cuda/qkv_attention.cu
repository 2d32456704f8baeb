// CUDA ops::qkv_attention: everything from the fused QKV projection's output to the attention
// output. For one token (batch-1 decode) with a 16-bit cache and head_dim 64 or 128 it runs one
// fused kernel; anything else runs qkv_rope_store then attention (qkv_rope_store.cu,
// attention.cu), which is also what the fused kernel must agree with.
//
// Why a fused decode kernel: at short context the decode attention is a chain of dependent round
// trips, not a bandwidth problem (2 MB of cache per layer at context 512). Three kernels (RoPE and
// cache store, split-KV attention, split merge) pay three launch-and-wait boundaries and three
// chains of loads per layer; measured on the H100 that stretch cost ~15 us per layer, 8% of the
// step. Here one kernel does it all:
//   1. Each block owns one KV head (or kHeads of its query heads when the GQA group is larger
//      than 8) and one split of the visible rows, cut in tiles of kTileRows rows exactly as
//      attention.cu cuts its splits (attn_split_range), so the grid depends only on the capacity
//      and the length is read on the device: one captured graph serves every length.
//   2. Right after the grid-dependency wait it issues the loads of its first K/V tile, then
//      rotates its queries (and, in the split holding the new row, the new key) from the QKV
//      buffer with rope.cuh while those loads are in flight. The new row never comes from the
//      cache: the block that owns it writes it to the cache and uses its own copy, so cache loads
//      only touch rows before the slot, which nothing writes during the kernel.
//   3. Threads own 8 dims of one row per pass (one 16-byte load each of K and V); each half-warp
//      (a row's lanes) keeps an online softmax over its rows; warps merge through shared memory.
//   4. Splits merge without another kernel: each writes its unnormalised output and (max, sum)
//      to the workspace, takes a ticket from the context's arrival counter for its head group
//      (after a fence), and the last to arrive merges all splits and resets the counter. One
//      active split writes the output directly.
// Rounding matches the unfused path: q and the new K/V row are rounded to the cache dtype
// before use (as q_out and the cache hold them), scores and softmax in fp32.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "specula/core/error.h"
#include "specula/ops/cuda/attention_common.cuh"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/rope.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kDimsPerLane = 8;        // one 16-byte load of a 16-bit cache row
constexpr int kMaxHeadsPerBlock = 8;   // query heads a block serves (at most kWarps, see the merge)
constexpr int kMaxFusedSplits = 64;    // splits per head group; bounds the merge's shared memory
constexpr float kLog2e = 1.4426950408889634f;

struct FusedArgs {
  const void* qkv;
  DType qkv_dtype;
  const void* q_norm;  // nullptr: no per-head norm
  const void* k_norm;
  DType q_norm_dtype, k_norm_dtype;
  float norm_eps;
  const float* inv_freq;
  float attention_scaling;
  const int32_t* positions;
  const int32_t* slots;
  void* q_out;  // [n_heads, head_dim], the cache dtype
  void* k_cache;
  void* v_cache;
  void* out;  // [n_heads * head_dim]
  DType out_dtype;
  float* partial_o;   // [groups, num_splits, kHeads, head_dim]
  float* partial_ml;  // [groups, num_splits, kHeads, 2]: running max (log2 domain) and sum
  uint32_t* counters; // [groups]
  uint32_t* error_word;
  int n_heads, n_kv, group, head_blocks, capacity, num_splits;
  float scale_log2;
};

// Online-softmax state of one query head over some rows: running max m (log2 domain), sum l of
// exp2(score - m), and the exp2-weighted sum of V over this lane's dims.
struct HeadState {
  float m, l, acc[kDimsPerLane];
};

__device__ __forceinline__ void merge_state(HeadState& s, float m2, float l2, const float (&acc2)[kDimsPerLane]) {
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

template <typename CacheT, int kHeadDim, int kHeads>
__global__ void __launch_bounds__(kThreads) decode_attention_kernel(const FusedArgs a) {
  constexpr int kLanesPerRow = kHeadDim / kDimsPerLane;  // 16 or 8
  constexpr int kRowsPerPass = kThreads / kLanesPerRow;  // 16 or 32
  constexpr int kPasses = 2;
  constexpr int kTileRows = kPasses * kRowsPerPass;      // 32 or 64
  static_assert(kHeads <= kWarps, "the split merge gives each head one warp");
  __shared__ float s_q[kHeads][kHeadDim];
  __shared__ float s_k[kHeadDim], s_v[kHeadDim];
  __shared__ float s_acc[kWarps][kHeads][kHeadDim];
  __shared__ float s_m[kWarps][kHeads], s_l[kWarps][kHeads];
  __shared__ float s_weight[kHeads][kMaxFusedSplits];
  __shared__ bool s_last;

  pdl_launch_dependents();
  pdl_wait();  // qkv, the caches, slots/positions, the workspace and the counters are earlier kernels'
  const int tid = static_cast<int>(threadIdx.x), lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int split = static_cast<int>(blockIdx.x), group_block = static_cast<int>(blockIdx.y);
  const int kvh = group_block / a.head_blocks, hb = group_block % a.head_blocks;
  const int head0 = kvh * a.group + hb * kHeads;           // first query head of this block
  const int heads = min(kHeads, a.group - hb * kHeads);    // its real heads (the rest is padding)

  const int slot = a.slots[0];
  if (slot < 0 || slot >= a.capacity) {  // reported once; the output is zeros, the cache untouched
    if (split == 0) {
      if (group_block == 0 && tid == 0) report_device_error(a.error_word, specula::cuda::kErrorSlotOutOfRange);
      for (int e = tid; e < heads * kHeadDim; e += kThreads)
        store_f32_dyn(a.out, a.out_dtype, static_cast<int64_t>(head0) * kHeadDim + e, 0.0f);
    }
    return;
  }
  const int len_tiles = attn::ceil_div_int(slot + 1, kTileRows);
  const attn::TileRange range = attn::attn_split_range(len_tiles, a.num_splits, 1, split);
  if (range.begin >= range.end) return;  // a split past the length: no partial, no ticket
  const int active = attn::ceil_div_int(len_tiles, attn::ceil_div_int(len_tiles, a.num_splits));
  const bool owner = range.end == len_tiles;  // the last active split holds the new row
  const int row_begin = range.begin * kTileRows;
  const int row_end = min(range.end * kTileRows, slot);  // cached rows; row `slot` is added apart

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
        kr[p] = vr[p] = make_uint4(0, 0, 0, 0);
      }
    }
  };
  // The first tile's loads go out before the rotation below, which then hides their latency.
  uint4 k_regs[kPasses], v_regs[kPasses];
  load_tile(row_begin, k_regs, v_regs);

  // Queries (and the new K/V row, in the owner) from the QKV buffer: one warp per head.
  const int64_t kv_row = (head_rows + slot) * kHeadDim;
  const RopeAngles angles{a.inv_freq, a.attention_scaling, static_cast<float>(a.positions[0])};
  const int items = heads + (owner ? 2 : 0);
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

  // Scores of this lane's rows for every head, reduced over the row's lanes; masked rows -inf.
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

  for (int base = row_begin; base < row_end; base += kTileRows) {
    // The next tile's loads go out before this tile's arithmetic (past row_end they are zeros
    // without a memory access), so one tile is always in flight.
    uint4 k_next[kPasses], v_next[kPasses];
    load_tile(base + kTileRows, k_next, v_next);
    float score[kPasses][kHeads], vf[kPasses][kDimsPerLane];
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      float kf[kDimsPerLane];
      unpack_row<CacheT>(k_regs[p], kf);
      unpack_row<CacheT>(v_regs[p], vf[p]);
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
#pragma unroll
    for (int p = 0; p < kPasses; ++p) {
      k_regs[p] = k_next[p];
      v_regs[p] = v_next[p];
    }
  }

  if (owner && warp == 0) {  // the new row, in the first row group of warp 0
    float kf[kDimsPerLane], score[kHeads];
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) kf[j] = s_k[dim0 + j];
    row_scores(kf, lane < kLanesPerRow, score);
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      float one[kDimsPerLane];
#pragma unroll
      for (int j = 0; j < kDimsPerLane; ++j) one[j] = s_v[dim0 + j];
      if (score[h] != -INFINITY) merge_state(st[h], score[h], 1.0f, one);
    }
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

  const int group_splits = group_block * a.num_splits;
  for (int e = tid; e < heads * kHeadDim; e += kThreads) {
    const int h = e / kHeadDim, d = e % kHeadDim;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, s_m[w][h]);
    float o = 0.0f, l = 0.0f;  // m is finite: every active split sees at least one row
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = exp2f(s_m[w][h] - m);
      o += f * s_acc[w][h][d];
      l += f * s_l[w][h];
    }
    if (active == 1) {
      store_f32_dyn(a.out, a.out_dtype, static_cast<int64_t>(head0 + h) * kHeadDim + d, o / l);
    } else {
      const int64_t row = static_cast<int64_t>(group_splits + split) * kHeads + h;
      a.partial_o[row * kHeadDim + d] = o;
      if (d == 0) {
        a.partial_ml[2 * row] = m;
        a.partial_ml[2 * row + 1] = l;
      }
    }
  }
  if (active == 1) return;

  // Ticket: the fence orders this block's partials before its arrival; the last block's fence
  // orders its reads after everyone's (the classic threadfence reduction).
  __threadfence();
  __syncthreads();
  if (tid == 0) s_last = atomicAdd(&a.counters[group_block], 1u) == static_cast<unsigned>(active - 1);
  __syncthreads();
  if (!s_last) return;
  __threadfence();

  if (warp < heads) {  // weights exp2(m_s - M) / L of the splits, one warp per head
    const int h = warp;
    float m = -INFINITY;
    for (int s = lane; s < active; s += kWarpSize)
      m = fmaxf(m, __ldcg(&a.partial_ml[2 * ((static_cast<int64_t>(group_splits) + s) * kHeads + h)]));
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(kFullWarpMask, m, offset));
    float total = 0.0f;
    for (int s = lane; s < active; s += kWarpSize) {
      const int64_t row = (static_cast<int64_t>(group_splits) + s) * kHeads + h;
      const float w = exp2f(__ldcg(&a.partial_ml[2 * row]) - m);
      s_weight[h][s] = w;
      total += w * __ldcg(&a.partial_ml[2 * row + 1]);
    }
    total = warp_sum(total);
    const float inv = 1.0f / total;
    for (int s = lane; s < active; s += kWarpSize) s_weight[h][s] *= inv;
  }
  __syncthreads();
  for (int e = tid; e < heads * kHeadDim; e += kThreads) {
    const int h = e / kHeadDim, d = e % kHeadDim;
    float o = 0.0f;
#pragma unroll 4
    for (int s = 0; s < active; ++s)
      o += s_weight[h][s] * __ldcg(&a.partial_o[((static_cast<int64_t>(group_splits) + s) * kHeads + h) * kHeadDim + d]);
    store_f32_dyn(a.out, a.out_dtype, static_cast<int64_t>(head0 + h) * kHeadDim + d, o);
  }
  if (tid == 0) a.counters[group_block] = 0;  // every active split has arrived: ready for the next use
}

// Query heads per block for a GQA group: the next power of two up to kMaxHeadsPerBlock (a group
// of 7 computes one padded head; groups above 8 take several blocks per KV head, which read the
// same K/V rows, mostly from L2).
int heads_per_block(int group) {
  int heads = 1;
  while (heads < group && heads < kMaxHeadsPerBlock) heads *= 2;
  return heads;
}

template <typename CacheT, int kHeadDim, int kHeads>
void launch_fused(CudaContext& ctx, FusedArgs a, int capacity) {
  const auto kernel = decode_attention_kernel<CacheT, kHeadDim, kHeads>;
  constexpr int kTileRows = 2 * kThreads / (kHeadDim / kDimsPerLane);
  int blocks_per_sm = 0;
  SPECULA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kThreads, 0));
  const int groups = a.n_kv * a.head_blocks;
  // One full wave of blocks at long context; at short context the length leaves fewer active.
  const int target = std::max(1, ctx.info().multiprocessors) * std::max(1, blocks_per_sm);
  int splits = std::max(1, attn::ceil_div_int(target, groups));
  splits = std::min({splits, kMaxFusedSplits, attn::ceil_div_int(capacity, kTileRows)});
  const size_t per_split = static_cast<size_t>(groups) * kHeads * (kHeadDim + 2) * sizeof(float);
  const size_t fit = ctx.workspace_bytes() > attn::kPartialAlignment
                         ? (ctx.workspace_bytes() - attn::kPartialAlignment) / per_split
                         : 0;
  if (static_cast<size_t>(splits) > fit) splits = static_cast<int>(std::max<size_t>(fit, 1));
  a.num_splits = splits;
  const size_t o_bytes = static_cast<size_t>(groups) * splits * kHeads * kHeadDim * sizeof(float);
  const size_t ml_offset = (o_bytes + attn::kPartialAlignment - 1) / attn::kPartialAlignment * attn::kPartialAlignment;
  a.partial_o = static_cast<float*>(ctx.workspace());
  a.partial_ml = reinterpret_cast<float*>(static_cast<unsigned char*>(ctx.workspace()) + ml_offset);
  launch_kernel(ctx, "qkv_attention (fused decode kernel)", kernel,
                dim3(static_cast<unsigned>(splits), static_cast<unsigned>(groups)), dim3(kThreads), 0, a);
}

template <typename CacheT, int kHeadDim>
void launch_fused_heads(CudaContext& ctx, const FusedArgs& a, int heads, int capacity) {
  switch (heads) {
    case 1: launch_fused<CacheT, kHeadDim, 1>(ctx, a, capacity); return;
    case 2: launch_fused<CacheT, kHeadDim, 2>(ctx, a, capacity); return;
    case 4: launch_fused<CacheT, kHeadDim, 4>(ctx, a, capacity); return;
    default: launch_fused<CacheT, kHeadDim, 8>(ctx, a, capacity); return;
  }
}

// Whether the fused kernel takes this call: one token, a 16-bit cache with q_out in the same
// dtype (so q is rounded as the unfused path rounds it), head_dim 64 or 128, 16-byte aligned
// cache rows, enough arrival counters and a workspace for at least the partials of one split.
bool fused_applies(const CudaContext& ctx, const Tensor& qkv, const Tensor& q_out, const Tensor& k_cache,
                   const Tensor& v_cache) {
  const int64_t n_heads = q_out.dim(1), hd = q_out.dim(2), n_kv = k_cache.dim(0);
  const DType cache = k_cache.dtype;
  if (!ctx.fused_decode_attention() || qkv.dim(0) != 1) return false;
  if ((cache != DType::BF16 && cache != DType::F16) || q_out.dtype != cache) return false;
  if (hd != 64 && hd != 128) return false;
  if (!is_aligned(k_cache.data, kVectorBytes) || !is_aligned(v_cache.data, kVectorBytes)) return false;
  const int64_t group = n_heads / n_kv, heads = heads_per_block(static_cast<int>(std::min<int64_t>(group, INT_MAX)));
  const int64_t groups = n_kv * attn::ceil_div_int(static_cast<int>(group), static_cast<int>(heads));
  if (groups > specula::cuda::kArrivalCounters || k_cache.dim(1) > INT_MAX) return false;
  const size_t one_split = static_cast<size_t>(groups) * heads * (hd + 2) * sizeof(float) + attn::kPartialAlignment;
  return ctx.workspace() != nullptr && ctx.workspace_bytes() >= one_split;
}

}  // namespace

bool qkv_attention_is_fused(const CudaContext& ctx, const Tensor& qkv, const Tensor& q_out, const Tensor& k_cache,
                            const Tensor& v_cache) {
  return fused_applies(ctx, qkv, q_out, k_cache, v_cache);
}

void qkv_attention(CudaContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                   const RopeParams& rope, const Tensor& positions, const Tensor& slots, float scale, Tensor& q_out,
                   Tensor& k_cache, Tensor& v_cache, Tensor& out) {
  if (!fused_applies(ctx, qkv, q_out, k_cache, v_cache)) {
    qkv_rope_store(ctx, qkv, q_norm, k_norm, norm_eps, rope, positions, slots, q_out, k_cache, v_cache);
    attention(ctx, q_out, k_cache, v_cache, slots, scale, out);
    return;
  }
  FusedArgs a{};
  a.qkv = qkv.data;
  a.qkv_dtype = qkv.dtype;
  a.q_norm = q_norm.empty() ? nullptr : q_norm.data;
  a.k_norm = k_norm.empty() ? nullptr : k_norm.data;
  a.q_norm_dtype = q_norm.dtype;
  a.k_norm_dtype = k_norm.dtype;
  a.norm_eps = norm_eps;
  a.inv_freq = rope.inv_freq.as<const float>();
  a.attention_scaling = rope.attention_scaling;
  a.positions = positions.as<const int32_t>();
  a.slots = slots.as<const int32_t>();
  a.q_out = q_out.data;
  a.k_cache = k_cache.data;
  a.v_cache = v_cache.data;
  a.out = out.data;
  a.out_dtype = out.dtype;
  a.counters = ctx.arrival_counters();
  a.error_word = ctx.error_word();
  a.n_heads = static_cast<int>(q_out.dim(1));
  a.n_kv = static_cast<int>(k_cache.dim(0));
  a.group = a.n_heads / a.n_kv;
  a.capacity = static_cast<int>(k_cache.dim(1));
  a.scale_log2 = scale * kLog2e;
  const int heads = heads_per_block(a.group);
  a.head_blocks = attn::ceil_div_int(a.group, heads);
  const bool hd128 = q_out.dim(2) == 128;
  if (k_cache.dtype == DType::BF16) {
    if (hd128)
      launch_fused_heads<__nv_bfloat16, 128>(ctx, a, heads, a.capacity);
    else
      launch_fused_heads<__nv_bfloat16, 64>(ctx, a, heads, a.capacity);
  } else {
    if (hd128)
      launch_fused_heads<__half, 128>(ctx, a, heads, a.capacity);
    else
      launch_fused_heads<__half, 64>(ctx, a, heads, a.capacity);
  }
}

}  // namespace specula::ops::cuda_impl
