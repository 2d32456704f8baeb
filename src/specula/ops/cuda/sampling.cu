// CUDA kernels of sampling::GpuSampler: the CPU Sampler's processors (repetition penalty,
// presence/frequency penalties, temperature, top-k, top-p, min-p) and its inverse-CDF draw, so
// that decode never copies a logits row to the host. Everything runs as a fixed chain of kernels
// on the context's stream with no host synchronisation, so a step can be captured in a graph.
//
// Why it is built this way:
//  * A 128K-152K row in one block would leave all but one SM idle, and a device-wide sort costs
//    more than the whole step should. Each kernel therefore spreads the row over ~150 blocks of
//    1024 entries, and the block that finishes last (a ticket counter, the threadfence-reduction
//    pattern: no co-residency assumptions) does the small serial part: picking a radix digit or
//    the drawn token. The row stays in L2 across the chain, so each extra pass is cheap; launches
//    are the cost (2 kernels for plain temperature sampling, 5 for top-p, 7 with top-k as well).
//  * Top-k and top-p are radix selections over a 32-bit order key of the processed logit, three
//    levels of 11 + 11 + 10 bits with histograms built in shared memory. Top-k counts entries;
//    top-p sums probability mass per bucket and walks the buckets in ascending key order exactly
//    as the CPU walks its sorted array ("remove while cumulative <= 1 - top_p"), so no sort is
//    needed. Tokens tied at the cut key are resolved by id (lower ids kept, the CPU's rule)
//    arithmetically: they all have the same weight.
//  * Masses are exact: each weight w = exp(x - max) (rounded to float, as on the CPU) becomes the
//    integer floor(w * 2^63), and every sum (totals, histogram buckets, prefix sums of the draw) is
//    an exact 128-bit integer. Results are therefore independent of block order and atomics
//    order (bit-reproducible, graph replay == direct call), and agree with the CPU's double sums
//    to ~1e-16 relative. All decisions convert those sums to double and make the CPU's own
//    comparisons (cumulative / total > limit, w / total >= min_p / total, cumulative > u * total).
//  * The penalties and temperature use the CPU's exact float operations (no FMA contraction), and
//    exp is evaluated in double and rounded to float (glibc's expf is within 0.502 ulp, so the
//    two differ by one ulp in a few inputs in 10^4: far below any decision boundary's width).
//  * The draw walks the kept support in ascending id order like the CPU: the last block finds the
//    1024-entry chunk where the exact prefix sum first exceeds u * total, then scans that chunk.
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/sampling_kernels.h"
#include "specula/sampling/random.h"

namespace specula::ops::cuda_impl::sampler {

namespace {

using u32 = unsigned int;
using u64 = unsigned long long;
using u128 = unsigned __int128;

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kItems = 4;                     // entries per thread per chunk
constexpr int kChunk = kThreads * kItems;     // entries per block
constexpr int kLevels = 3;                    // radix levels over the 32-bit key
constexpr int kMaxBins = 2048;                // bins of the widest level
constexpr int kFixedBits = 63;                // weight w in [0, 1] -> floor(w * 2^63)
constexpr int kPieceBits = 21;                // shared-memory pieces of a fixed weight: 3 x 21 bits,
constexpr int kPieces = 3;                    // so a block's 1024 entries sum below 2^31 per piece
constexpr u64 kPieceMask = (u64{1} << kPieceBits) - 1;
constexpr u64 kLow32 = 0xffffffffull;
constexpr u32 kNegInfKey = 0x007fffffu;       // order_key(-inf): every finite or +inf key is larger
constexpr size_t kAlign = 256;

static_assert(kMaxBins % kThreads == 0 && kChunk == 1024, "bins and chunks are split evenly over threads");
static_assert(int64_t{kChunk} * (int64_t{1} << kPieceBits) <= (int64_t{1} << 32), "piece sums fit 32 bits");

// Radix levels: bits [31:21], [20:10], [9:0] of the key.
template <int L>
constexpr int level_shift() {
  return L == 0 ? 21 : (L == 1 ? 10 : 0);
}
template <int L>
constexpr int level_bits() {
  return L == 2 ? 10 : 11;
}
template <int L>
constexpr int level_bins() {
  return 1 << level_bits<L>();
}

// Device-side control block: published results of each kernel for the next one, accumulators
// (zero between kernels: the kernel that fills one resets it after use) and per-sequence state.
struct Control {
  u128 total;   // mass of the support after top-k
  u128 below;   // top-p: support mass with keys below the current bucket
  u128 above;   // top-p: support mass with keys above the current bucket
  u128 kept;    // mass after top-p (min-p's normaliser)
  u64 tie_weight;  // fixed weight of one token at the top-p cut key
  u64 counter;     // draws made so far (uniform01's counter)
  u64 acc_best;    // greedy: max (value key, ~id)
  u64 acc_total[2];  // 128-bit sums split as (v >> 32, v & 0xffffffff) so 64-bit atomics add them exactly
  u64 acc_final[2];
  u32 acc_final_ties;
  u32 acc_max_key;
  u32 done;        // last-block ticket
  u32 step_flags;  // this step's errors, folded into `errors` by the first kernel's last block
  u32 errors;      // sticky error bits, read and cleared by the host
  u32 abort;       // this step failed: later kernels skip, the last one writes token 0
  float max_value;
  u32 topk_prefix, topk_rank, kth_key, topk_done;
  u32 topp_prefix, cut_key, ties_keep;
};

struct Layout {
  int64_t blocks = 0;
  size_t control = 0, hist_count = 0, hist_mass = 0, blk_mass = 0, blk_ties = 0, state = 0, bytes = 0;
};

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Scratch first (zeroed by reset), then the vocab-sized state.
Layout layout_of(int64_t vocab) {
  Layout l;
  l.blocks = (vocab + kChunk - 1) / kChunk;
  size_t off = 0;
  l.control = off;
  off = align_up(off + sizeof(Control));
  l.hist_count = off;
  off = align_up(off + kMaxBins * sizeof(u32));
  l.hist_mass = off;
  off = align_up(off + kPieces * kMaxBins * sizeof(u64));
  l.blk_mass = off;
  off = align_up(off + 2 * static_cast<size_t>(l.blocks) * sizeof(u64));
  l.blk_ties = off;
  off = align_up(off + static_cast<size_t>(l.blocks) * sizeof(u32));
  l.state = off;
  off = align_up(off + static_cast<size_t>(vocab) * sizeof(int32_t));
  l.bytes = off;
  return l;
}

// Everything a kernel of the chain needs, passed by value (baked into a captured graph).
struct StepArgs {
  float* logits;
  int32_t* out_token;
  int32_t* state;     // [vocab]: bit 0 seen (prompt or output), bits 1.. times generated
  Control* ctrl;
  u32* hist_count;    // [kMaxBins]
  u64* hist_mass;     // [kPieces][kMaxBins]
  u64* blk_mass;      // [2][blocks]: per-block kept mass, split like acc_total
  u32* blk_ties;      // [blocks]: per-block tokens tied at the top-p cut
  int vocab;
  int blocks;
  int top_k;
  float temperature, min_p, repetition, presence, frequency;
  double top_p_limit;  // 1 - top_p, in double as the CPU computes it
  u64 seed;
  bool use_repetition, use_additive, use_top_k, use_top_p, use_min_p;
  // Optional [1] word: when it holds 0 the whole step is skipped (every kernel returns at once,
  // nothing is drawn, recorded or counted); a speculative walk that has ended skips its draws.
  const int32_t* active;
};

__device__ __forceinline__ bool step_skipped(const StepArgs& a) { return a.active != nullptr && *a.active == 0; }

// ---------------------------------------------------------------------------------------------
// Scalar helpers

__device__ __forceinline__ bool is_finite(float x) { return x > -INFINITY && x < INFINITY; }

// Unsigned key with the order of the floats; -0 is folded onto +0 so key equality is float
// equality (the CPU's tie rules compare floats).
__device__ __forceinline__ u32 order_key(float x) {
  u32 b = __float_as_uint(x);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(u32 k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// body(id) for this thread's entries of its block's chunk of the vocabulary, in order: every
// pass over the logits reads them in this one layout.
template <class Body>
__device__ __forceinline__ void for_each_chunk_id(int64_t vocab, Body&& body) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kChunk;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int64_t id = base + it * kThreads + static_cast<int>(threadIdx.x);
    if (id >= vocab) break;
    body(id);
  }
}

// body(id, x, order_key(x)) for this thread's finite processed logits (the passes after the first).
template <class Body>
__device__ __forceinline__ void for_each_finite_logit(const float* logits, int64_t vocab, Body&& body) {
  for_each_chunk_id(vocab, [&](int64_t id) {
    const float x = logits[id];
    if (is_finite(x)) body(id, x, order_key(x));
  });
}

// The CPU's processors in its order and with its float operations: the _rn intrinsics keep the
// compiler from fusing a multiply and a subtract into an FMA the CPU does not do.
__device__ __forceinline__ float process(float raw, int32_t state, const StepArgs& a, bool greedy) {
  float x = raw;
  if (a.use_repetition && (state & 1)) x = x < 0.0f ? __fmul_rn(x, a.repetition) : __fdiv_rn(x, a.repetition);
  if (a.use_additive) {
    const int32_t count = state >> 1;
    if (count > 0) {
      x = __fsub_rn(x, __fmul_rn(a.frequency, static_cast<float>(count)));
      x = __fsub_rn(x, a.presence);
    }
  }
  if (!greedy && a.temperature != 1.0f) x = __fdiv_rn(x, a.temperature);
  return x;
}

// exp(x - max) rounded to float, as std::exp(float) gives on the CPU (see the file comment).
__device__ __forceinline__ float weight_of(float x, float max_value) {
  return static_cast<float>(exp(static_cast<double>(__fsub_rn(x, max_value))));
}

// floor(w * 2^63): exact for every w >= 2^-40, and below that an error under 2^-63 per token.
__device__ __forceinline__ u64 fixed_of(float w) { return __double2ull_rz(static_cast<double>(w) * 0x1p63); }

// An exact fixed-point sum as a double in weight units, correctly rounded (sums stay < 2^88).
__device__ __forceinline__ double to_real(u128 v) {
  const u64 high = static_cast<u64>(v >> 64), low = static_cast<u64>(v);
  if (high == 0) return ldexp(__ull2double_rn(low), -kFixedBits);
  const int s = 64 - __clzll(static_cast<long long>(high));  // 1..24
  u64 top = (high << (64 - s)) | (low >> s);
  if ((low << (64 - s)) != 0) top |= 1;  // sticky bit: the rounding below sees the dropped bits
  return ldexp(__ull2double_rn(top), s - kFixedBits);
}

__device__ __forceinline__ u128 join(u64 high32, u64 low32) { return (static_cast<u128>(high32) << 32) + low32; }

// ---------------------------------------------------------------------------------------------
// Warp and block primitives (blockDim.x == kThreads; every thread of the block must call them)

__device__ __forceinline__ u32 shfl_up(u32 v, int d) { return __shfl_up_sync(kFullMask, v, d); }
__device__ __forceinline__ u128 shfl_up(u128 v, int d) {
  const u64 lo = __shfl_up_sync(kFullMask, static_cast<u64>(v), d);
  const u64 hi = __shfl_up_sync(kFullMask, static_cast<u64>(v >> 64), d);
  return (static_cast<u128>(hi) << 64) | lo;
}
__device__ __forceinline__ int shfl_xor(int v, int d) { return __shfl_xor_sync(kFullMask, v, d); }
__device__ __forceinline__ u32 shfl_xor(u32 v, int d) { return __shfl_xor_sync(kFullMask, v, d); }
__device__ __forceinline__ u64 shfl_xor(u64 v, int d) { return __shfl_xor_sync(kFullMask, v, d); }
__device__ __forceinline__ u128 shfl_xor(u128 v, int d) {
  const u64 lo = __shfl_xor_sync(kFullMask, static_cast<u64>(v), d);
  const u64 hi = __shfl_xor_sync(kFullMask, static_cast<u64>(v >> 64), d);
  return (static_cast<u128>(hi) << 64) | lo;
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};
struct MinOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a < b ? a : b; }
};

// Reduction over the block, returned to every thread; the fixed shuffle tree and warp order make
// it deterministic.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op) {
  __shared__ T scratch[kWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int d = kWarp / 2; d > 0; d /= 2) v = op(v, shfl_xor(v, d));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = op(r, scratch[w]);
  __syncthreads();
  return r;
}

// Exclusive prefix sum in thread order; `total` receives the block's sum.
template <typename T>
__device__ T block_exclusive_scan(T v, T& total) {
  __shared__ T scratch[kWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  T incl = v;
#pragma unroll
  for (int d = 1; d < kWarp; d *= 2) {
    const T t = shfl_up(incl, d);
    if (lane >= d) incl += t;
  }
  if (lane == kWarp - 1) scratch[warp] = incl;
  __syncthreads();
  T before = 0, sum = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const T s = scratch[w];
    if (w < warp) before += s;
    sum += s;
  }
  __syncthreads();
  total = sum;
  return before + incl - v;
}

// True in the block that arrives last; it then sees every other block's global writes and
// atomics (each block fences before taking its ticket). That block resets `done` when finished.
__device__ bool arrive_last(Control* c) {
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&c->done, 1u) == gridDim.x - 1 ? 1 : 0;
  __syncthreads();
  const bool last = s_last != 0;
  if (last) __threadfence();
  return last;
}

// Writes the step's token and records it for the next step's penalties (one thread).
__device__ void finish_step(const StepArgs& a, u32 flags, int32_t token) {
  Control* const c = a.ctrl;
  if (flags != 0) {
    c->errors |= flags;
    *a.out_token = 0;  // a valid id, so a captured graph's next embedding lookup stays in range
    return;
  }
  *a.out_token = token;
  a.state[token] = (a.state[token] | 1) + 2;
  c->counter += 1;
}

template <int L>
__device__ __forceinline__ bool same_prefix(u32 key, u32 prefix) {
  if constexpr (L == 0) {
    return true;
  } else {
    return ((key ^ prefix) >> (level_shift<L>() + level_bits<L>())) == 0;
  }
}

template <int L>
__device__ __forceinline__ u32 digit_of(u32 key) {
  return (key >> level_shift<L>()) & static_cast<u32>(level_bins<L>() - 1);
}

template <int kBins>
__device__ void flush_counts(const u32* s_count, u32* g_count) {
  __syncthreads();
  for (int i = threadIdx.x; i < kBins; i += kThreads) {
    const u32 n = s_count[i];
    if (n != 0) atomicAdd(&g_count[i], n);
  }
}

// ---------------------------------------------------------------------------------------------
// Top-k: the k-th largest finite value, found digit by digit from the top (last block only).

template <int L>
__device__ void topk_select(const StepArgs& a) {
  constexpr int kBins = level_bins<L>(), kPer = kBins / kThreads;
  Control* const c = a.ctrl;
  const int tid = threadIdx.x;
  __shared__ u32 s_digit, s_rank;
  if (tid == 0) s_digit = 0, s_rank = 1;
  u32 cnt[kPer];
  u32 mine = 0;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    cnt[j] = __ldcg(&a.hist_count[tid * kPer + j]);
    mine += cnt[j];
  }
  u32 total = 0;
  const u32 before = block_exclusive_scan(mine, total);
  if (L == 0 && static_cast<int64_t>(a.top_k) >= static_cast<int64_t>(total)) {
    // k >= number of finite logits: top-k keeps everything (the CPU skips it).
    if (tid == 0) c->kth_key = 0, c->topk_done = 1;
    return;
  }
  const u32 rank = L == 0 ? static_cast<u32>(a.top_k) : c->topk_rank;  // 1-based, among this prefix
  u32 above = total - before - mine;  // entries in higher bins than this thread's
#pragma unroll
  for (int j = kPer - 1; j >= 0; --j) {
    if (above < rank && rank <= above + cnt[j]) s_digit = static_cast<u32>(tid * kPer + j), s_rank = rank - above;
    above += cnt[j];
  }
  __syncthreads();
  if (tid == 0) {
    const u32 prefix = (L == 0 ? 0u : c->topk_prefix) | (s_digit << level_shift<L>());
    if (L == kLevels - 1) {
      c->kth_key = prefix;
      c->topk_done = 1;
    } else {
      c->topk_prefix = prefix;
      c->topk_rank = s_rank;
      c->topk_done = 0;
    }
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------
// Kernel 1: penalties + temperature (written back in place), max, errors; greedy: the argmax and
// the whole step; top-k: the first-level count histogram.

template <bool kGreedy, bool kTopK>
__global__ void __launch_bounds__(kThreads) prepare_kernel(const StepArgs a) {
  if (step_skipped(a)) return;  // the whole grid returns together
  constexpr int kBins = kTopK ? level_bins<0>() : 1;
  __shared__ u32 s_count[kBins];
  __shared__ u32 s_abort;
  Control* const c = a.ctrl;
  const int tid = threadIdx.x;
  if constexpr (kTopK) {
    for (int i = tid; i < kBins; i += kThreads) s_count[i] = 0;
    __syncthreads();
  }
  const bool uses_state = a.use_repetition || a.use_additive;
  u32 flags = 0, max_key = 0;
  u64 best = 0;
  for_each_chunk_id(a.vocab, [&](int64_t id) {
    const float raw = a.logits[id];
    if (isnan(raw)) {
      flags |= kErrorNanLogit;
    } else if (raw == INFINITY) {
      flags |= kErrorPosInfLogit;
    }
    const float x = process(raw, uses_state ? a.state[id] : 0, a, kGreedy);
    if constexpr (kGreedy) {
      // Larger key = larger value, then lower id: the CPU's strict-> scan keeps the first maximum.
      const u64 key = (static_cast<u64>(order_key(x)) << 32) | static_cast<u64>(~static_cast<u32>(id));
      if (!isnan(x) && key > best) best = key;
    } else {
      a.logits[id] = x;
      if (is_finite(x)) {
        const u32 k = order_key(x);
        if (k > max_key) max_key = k;
        if constexpr (kTopK) atomicAdd(&s_count[digit_of<0>(k)], 1u);
      } else if (x == INFINITY && raw != INFINITY) {
        flags |= kErrorOverflow;
      }
    }
  });
  if (flags != 0) atomicOr(&c->step_flags, flags);
  if constexpr (kGreedy) {
    best = block_reduce(best, MaxOp());
    if (tid == 0 && best != 0) atomicMax(&c->acc_best, best);
  } else {
    max_key = block_reduce(max_key, MaxOp());
    if (tid == 0 && max_key != 0) atomicMax(&c->acc_max_key, max_key);
  }
  if constexpr (kTopK) flush_counts<kBins>(s_count, a.hist_count);
  if (!arrive_last(c)) return;

  if constexpr (kGreedy) {
    if (tid == 0) {
      u32 f = __ldcg(&c->step_flags);
      c->step_flags = 0;
      const u64 key = __ldcg(&c->acc_best);
      c->acc_best = 0;
      if (static_cast<u32>(key >> 32) <= kNegInfKey) f |= kErrorNoFinite;  // also when nothing was seen
      finish_step(a, f, static_cast<int32_t>(~static_cast<u32>(key)));
      c->done = 0;
    }
  } else {
    if (tid == 0) {
      u32 f = __ldcg(&c->step_flags);
      c->step_flags = 0;
      const u32 mk = __ldcg(&c->acc_max_key);
      c->acc_max_key = 0;
      if (mk == 0) f |= kErrorNoFinite;
      c->max_value = key_value(mk);
      c->abort = f != 0 ? 1u : 0u;
      c->errors |= f;
      s_abort = f;
    }
    __syncthreads();
    if constexpr (kTopK) {
      if (s_abort == 0) topk_select<0>(a);
      __syncthreads();
      for (int i = tid; i < kBins; i += kThreads) a.hist_count[i] = 0;
    }
    if (tid == 0) c->done = 0;
  }
}

// Kernels 2-3 (top-k only): count histograms of the next digit among entries whose key matches
// the digits chosen so far.
template <int L>
__global__ void __launch_bounds__(kThreads) topk_level_kernel(const StepArgs a) {
  if (step_skipped(a)) return;
  constexpr int kBins = level_bins<L>();
  __shared__ u32 s_count[kBins];
  Control* const c = a.ctrl;
  if (c->abort != 0 || c->topk_done != 0) return;  // the whole grid returns together
  const int tid = threadIdx.x;
  const u32 prefix = c->topk_prefix;
  for (int i = tid; i < kBins; i += kThreads) s_count[i] = 0;
  __syncthreads();
  for_each_finite_logit(a.logits, a.vocab, [&](int64_t, float, u32 k) {
    if (same_prefix<L>(k, prefix)) atomicAdd(&s_count[digit_of<L>(k)], 1u);
  });
  flush_counts<kBins>(s_count, a.hist_count);
  if (!arrive_last(c)) return;
  topk_select<L>(a);
  for (int i = tid; i < kBins; i += kThreads) a.hist_count[i] = 0;
  if (tid == 0) c->done = 0;
}

// ---------------------------------------------------------------------------------------------
// Top-p: the cut in ascending key order, found digit by digit from the probability mass per
// bucket (last block only). The first bucket whose inclusive cumulative mass exceeds
// (1 - top_p) * total holds the CPU's cut: everything below it is removed, everything above kept.

template <int L>
__device__ void topp_select(const StepArgs& a, u128 total, float max_value) {
  constexpr int kBins = level_bins<L>(), kPer = kBins / kThreads;
  Control* const c = a.ctrl;
  const int tid = threadIdx.x;
  __shared__ int s_found;
  __shared__ u128 s_below, s_mass;
  __shared__ u32 s_count;
  if (tid == 0) s_found = INT_MAX;
  u32 cnt[kPer];
  u128 mass[kPer];
  u128 mine = 0;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int b = tid * kPer + j;
    cnt[j] = __ldcg(&a.hist_count[b]);
    mass[j] = (static_cast<u128>(__ldcg(&a.hist_mass[b])) << (2 * kPieceBits)) +
              (static_cast<u128>(__ldcg(&a.hist_mass[kMaxBins + b])) << kPieceBits) +
              static_cast<u128>(__ldcg(&a.hist_mass[2 * kMaxBins + b]));
    mine += mass[j];
  }
  u128 level_total = 0;
  const u128 before = block_exclusive_scan(mine, level_total);
  const double total_real = to_real(total);
  const u128 below0 = L == 0 ? u128{0} : c->below;
  u128 run = below0 + before;
  int found = INT_MAX;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const u128 incl = run + mass[j];
    if (found == INT_MAX && cnt[j] != 0 && to_real(incl) / total_real > a.top_p_limit) found = tid * kPer + j;
    run = incl;
  }
  if (found != INT_MAX) atomicMin(&s_found, found);
  __syncthreads();
  int d = s_found;
  if (d == INT_MAX) {
    // Unreachable in exact arithmetic (the last non-empty bucket's inclusive mass is the whole
    // support at level 0, and the previous level's bucket crossed); keep the highest bucket.
    int last = -1;
#pragma unroll
    for (int j = 0; j < kPer; ++j)
      if (cnt[j] != 0) last = tid * kPer + j;
    d = block_reduce(last, MaxOp());
    if (d < 0) d = 0;
  }
  if (d >= tid * kPer && d < (tid + 1) * kPer) {
    u128 r = below0 + before;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      if (tid * kPer + j == d) s_below = r, s_mass = mass[j], s_count = cnt[j];
      r += mass[j];
    }
  }
  __syncthreads();
  if (tid == 0) {
    const u128 below = s_below;
    const u128 above = (L == 0 ? u128{0} : c->above) + (level_total - (below - below0) - s_mass);
    const u32 prefix = (L == 0 ? 0u : c->topp_prefix) | (static_cast<u32>(d) << level_shift<L>());
    if constexpr (L < kLevels - 1) {
      c->topp_prefix = prefix;
      c->below = below;
      c->above = above;
    } else {
      // `prefix` is now the cut key; its n tokens share one weight. In the CPU's ascending order
      // they come highest id first, so the cut after j of them keeps the n - j lowest ids. The
      // smallest j whose cumulative mass exceeds the limit is found by bisection (monotone).
      const u64 tie = fixed_of(weight_of(key_value(prefix), max_value));
      const u32 n = s_count > 0 ? s_count : 1;
      u32 lo = 0, hi = n - 1;
      while (lo < hi) {
        const u32 mid = lo + (hi - lo) / 2;
        if (to_real(below + static_cast<u128>(mid + 1) * tie) / total_real > a.top_p_limit) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      const u32 keep = n - lo;
      c->cut_key = prefix;
      c->ties_keep = keep;
      c->tie_weight = tie;
      c->kept = above + static_cast<u128>(keep) * tie;
    }
  }
  __syncthreads();
}

// Kernels 4-6: weights of the support (after top-k); level 0 also sums the total. With
// kHist, mass histograms of the next digit among entries matching the top-p digits chosen so
// far; without it (min-p but no top-p) only the total.
template <int L, bool kHist, bool kTotal>
__global__ void __launch_bounds__(kThreads) topp_level_kernel(const StepArgs a) {
  if (step_skipped(a)) return;
  constexpr int kBins = kHist ? level_bins<L>() : 1;
  __shared__ u32 s_count[kBins];
  __shared__ u32 s_mass[kPieces][kBins];
  __shared__ u128 s_total;
  Control* const c = a.ctrl;
  if (c->abort != 0) return;  // the whole grid returns together
  const int tid = threadIdx.x;
  const float max_value = c->max_value;
  const u32 kth_key = a.use_top_k ? c->kth_key : 0u;
  const u32 prefix = L > 0 ? c->topp_prefix : 0u;
  if constexpr (kHist) {
    for (int i = tid; i < kBins; i += kThreads) {
      s_count[i] = 0;
#pragma unroll
      for (int p = 0; p < kPieces; ++p) s_mass[p][i] = 0;
    }
    __syncthreads();
  }
  u128 sum = 0;
  for_each_finite_logit(a.logits, a.vocab, [&](int64_t, float x, u32 k) {
    if (k < kth_key || !same_prefix<L>(k, prefix)) return;
    const u64 f = fixed_of(weight_of(x, max_value));
    if constexpr (kTotal) sum += f;
    if constexpr (kHist) {
      const u32 d = digit_of<L>(k);
      atomicAdd(&s_count[d], 1u);
      atomicAdd(&s_mass[0][d], static_cast<u32>(f >> (2 * kPieceBits)));
      atomicAdd(&s_mass[1][d], static_cast<u32>((f >> kPieceBits) & kPieceMask));
      atomicAdd(&s_mass[2][d], static_cast<u32>(f & kPieceMask));
    }
  });
  if constexpr (kTotal) {
    sum = block_reduce(sum, SumOp());
    if (tid == 0 && sum != 0) {
      atomicAdd(&c->acc_total[0], static_cast<u64>(sum >> 32));
      atomicAdd(&c->acc_total[1], static_cast<u64>(sum) & kLow32);
    }
  }
  if constexpr (kHist) {
    __syncthreads();
    for (int i = tid; i < kBins; i += kThreads) {
      const u32 n = s_count[i];
      if (n == 0) continue;
      atomicAdd(&a.hist_count[i], n);
#pragma unroll
      for (int p = 0; p < kPieces; ++p) atomicAdd(&a.hist_mass[p * kMaxBins + i], static_cast<u64>(s_mass[p][i]));
    }
  }
  if (!arrive_last(c)) return;
  if (tid == 0) {
    if constexpr (kTotal) {
      const u128 total = join(__ldcg(&c->acc_total[0]), __ldcg(&c->acc_total[1]));
      c->acc_total[0] = 0;
      c->acc_total[1] = 0;
      c->total = total;
      if constexpr (!kHist) c->kept = total;  // no top-p: min-p normalises by the whole support
      s_total = total;
    } else {
      s_total = c->total;
    }
  }
  __syncthreads();
  if constexpr (kHist) {
    topp_select<L>(a, s_total, max_value);
    for (int i = tid; i < kBins; i += kThreads) {
      a.hist_count[i] = 0;
#pragma unroll
      for (int p = 0; p < kPieces; ++p) a.hist_mass[p * kMaxBins + i] = 0;
    }
  }
  if (tid == 0) c->done = 0;
}

// ---------------------------------------------------------------------------------------------
// Final kernel: the kept support, per-block masses, and (last block) the draw.

struct Filter {
  float max_value;
  u32 kth_key, cut_key;
  bool top_p, min_p;
  double kept_real, threshold;
};

__device__ Filter load_filter(const StepArgs& a) {
  const Control* c = a.ctrl;
  Filter f;
  f.max_value = c->max_value;
  f.kth_key = a.use_top_k ? c->kth_key : 0u;
  f.top_p = a.use_top_p;
  f.cut_key = a.use_top_p ? c->cut_key : 0u;
  f.min_p = a.use_min_p;
  f.kept_real = a.use_min_p ? to_real(c->kept) : 1.0;
  // The CPU: threshold = min_p * (max_weight / total), and the top weight is exactly 1.
  f.threshold = static_cast<double>(a.min_p) * (1.0 / f.kept_real);
  return f;
}

enum Class : int { kOut = 0, kKept = 1, kTie = 2 };

// Whether logit x is in the final support; kTie marks a token at the top-p cut key, kept or not
// by its rank among the ties (decided by the caller). Sets `fixed` to its fixed-point weight.
__device__ __forceinline__ int classify(float x, const Filter& f, u64& fixed) {
  if (!is_finite(x)) return kOut;
  const u32 k = order_key(x);
  if (k < f.kth_key || (f.top_p && k < f.cut_key)) return kOut;
  const float w = weight_of(x, f.max_value);
  if (f.min_p && !(static_cast<double>(w) / f.kept_real >= f.threshold)) return kOut;
  fixed = fixed_of(w);
  return f.top_p && k == f.cut_key ? kTie : kKept;
}

// The last block: total kept mass, target u * total, the chunk where the exact prefix sum first
// exceeds it (per-block sums in id order), then the token inside that chunk.
__device__ void draw(const StepArgs& a, const Filter& f) {
  Control* const c = a.ctrl;
  const int tid = threadIdx.x;
  __shared__ u32 s_keep;
  __shared__ u64 s_tie;
  __shared__ double s_target;
  __shared__ int s_star;
  __shared__ u128 s_star_before;
  __shared__ u32 s_star_ties_before;
  if (tid == 0) {
    const u128 nontie = join(__ldcg(&c->acc_final[0]), __ldcg(&c->acc_final[1]));
    const u32 ties = __ldcg(&c->acc_final_ties);
    c->acc_final[0] = 0;
    c->acc_final[1] = 0;
    c->acc_final_ties = 0;
    const u32 keep = f.top_p ? min(c->ties_keep, ties) : 0u;
    const u64 tie = f.top_p ? c->tie_weight : 0ull;
    const u128 total = nontie + static_cast<u128>(keep) * tie;
    const float u = ::specula::sampling::uniform01(a.seed, c->counter);
    s_keep = keep;
    s_tie = tie;
    s_target = static_cast<double>(u) * to_real(total);  // the CPU: target = u * total
    s_star = -1;
  }
  __syncthreads();
  const u32 keep = s_keep;
  const u64 tie = s_tie;
  const double target = s_target;

  // Pass over the per-block sums in block (= id) order, one tile of kThreads blocks at a time.
  u128 carry = 0;
  u32 carry_ties = 0;
  for (int tile = 0; tile < a.blocks; tile += kThreads) {
    const int b = tile + tid;
    u128 nontie_b = 0;
    u32 ties_b = 0;
    if (b < a.blocks) {
      nontie_b = join(__ldcg(&a.blk_mass[b]), __ldcg(&a.blk_mass[a.blocks + b]));
      ties_b = __ldcg(&a.blk_ties[b]);
    }
    u32 tile_ties = 0;
    const u32 ties_before = carry_ties + block_exclusive_scan(ties_b, tile_ties);
    const u32 kept_ties = ties_before >= keep ? 0u : min(keep - ties_before, ties_b);  // lowest ids first
    const u128 mass_b = nontie_b + static_cast<u128>(kept_ties) * tie;
    u128 tile_mass = 0;
    const u128 before = carry + block_exclusive_scan(mass_b, tile_mass);
    const bool crosses = mass_b != 0 && to_real(before + mass_b) > target;
    const int first = block_reduce(crosses ? b : INT_MAX, MinOp());
    if (first != INT_MAX) {
      if (b == first) s_star = b, s_star_before = before, s_star_ties_before = ties_before;
      break;
    }
    // Rounding fallback (unreachable: the last non-empty block's inclusive sum is the total and
    // u < 1): remember the last non-empty block, as the CPU returns the last support token.
    const int last = block_reduce(mass_b != 0 ? b : -1, MaxOp());
    if (last >= 0 && b == last) s_star = b, s_star_before = before, s_star_ties_before = ties_before;
    carry += tile_mass;
    carry_ties += tile_ties;
  }
  __syncthreads();
  const int star = s_star;
  if (star < 0) {  // no support at all: cannot happen after kernel 1's checks
    if (tid == 0) {
      finish_step(a, kErrorNoFinite, 0);
      c->done = 0;
    }
    return;
  }

  // Scan chunk `star` in id order: thread t owns ids base + 4t .. base + 4t + 3.
  const int64_t first_id = static_cast<int64_t>(star) * kChunk + static_cast<int64_t>(tid) * kItems;
  int cls[kItems];
  u64 fx[kItems];
  u32 my_ties = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    cls[j] = kOut;
    fx[j] = 0;
    const int64_t id = first_id + j;
    if (id < a.vocab) cls[j] = classify(a.logits[id], f, fx[j]);
    if (cls[j] == kTie) ++my_ties;
  }
  u32 unused_ties = 0;
  u32 rank = s_star_ties_before + block_exclusive_scan(my_ties, unused_ties);
  u128 mine = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    if (cls[j] == kTie) {
      if (rank >= keep) cls[j] = kOut;
      ++rank;
    }
    if (cls[j] != kOut) mine += fx[j];
  }
  u128 unused_mass = 0;
  u128 run = s_star_before + block_exclusive_scan(mine, unused_mass);
  int hit = INT_MAX, last = -1;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    if (cls[j] == kOut || fx[j] == 0) continue;  // zero weight: never drawn (the CPU skips it)
    run += fx[j];
    last = static_cast<int>(first_id + j);
    if (hit == INT_MAX && to_real(run) > target) hit = static_cast<int>(first_id + j);
  }
  hit = block_reduce(hit, MinOp());
  last = block_reduce(last, MaxOp());
  if (tid == 0) {
    const int token = hit != INT_MAX ? hit : last;
    finish_step(a, token >= 0 ? 0u : static_cast<u32>(kErrorNoFinite), token >= 0 ? token : 0);
    c->done = 0;
  }
}

__global__ void __launch_bounds__(kThreads) final_kernel(const StepArgs a) {
  if (step_skipped(a)) return;
  Control* const c = a.ctrl;
  const int tid = threadIdx.x;
  if (c->abort != 0) {  // the whole grid returns together; kernel 1 already recorded the error
    if (blockIdx.x == 0 && tid == 0) *a.out_token = 0;
    return;
  }
  const Filter f = load_filter(a);
  u128 sum = 0;
  u32 ties = 0;
  for_each_chunk_id(a.vocab, [&](int64_t id) {
    u64 fx = 0;
    const int cls = classify(a.logits[id], f, fx);
    if (cls == kKept) sum += fx;
    if (cls == kTie) ++ties;
  });
  sum = block_reduce(sum, SumOp());
  ties = block_reduce(ties, SumOp());
  if (tid == 0) {
    a.blk_mass[blockIdx.x] = static_cast<u64>(sum >> 32);
    a.blk_mass[a.blocks + blockIdx.x] = static_cast<u64>(sum) & kLow32;
    a.blk_ties[blockIdx.x] = ties;
    if (sum != 0) {
      atomicAdd(&c->acc_final[0], static_cast<u64>(sum >> 32));
      atomicAdd(&c->acc_final[1], static_cast<u64>(sum) & kLow32);
    }
    if (ties != 0) atomicAdd(&c->acc_final_ties, ties);
  }
  if (!arrive_last(c)) return;
  draw(a, f);
}

// ---------------------------------------------------------------------------------------------
// Host side

cudaStream_t stream_of(const cuda::CudaContext& ctx) { return static_cast<cudaStream_t>(ctx.stream()); }

Control* control_of(void* device, const Layout& l) {
  return reinterpret_cast<Control*>(static_cast<char*>(device) + l.control);
}

StepArgs args_of(void* device, const Layout& l, int64_t vocab, const ::specula::sampling::SamplingParams& p, float* logits,
                 int32_t* out_token) {
  char* base = static_cast<char*>(device);
  StepArgs a{};
  a.logits = logits;
  a.out_token = out_token;
  a.state = reinterpret_cast<int32_t*>(base + l.state);
  a.ctrl = reinterpret_cast<Control*>(base + l.control);
  a.hist_count = reinterpret_cast<u32*>(base + l.hist_count);
  a.hist_mass = reinterpret_cast<u64*>(base + l.hist_mass);
  a.blk_mass = reinterpret_cast<u64*>(base + l.blk_mass);
  a.blk_ties = reinterpret_cast<u32*>(base + l.blk_ties);
  a.vocab = static_cast<int>(vocab);
  a.blocks = static_cast<int>(l.blocks);
  a.top_k = p.top_k;
  a.temperature = p.temperature;
  a.min_p = p.min_p;
  a.repetition = p.repetition_penalty;
  a.presence = p.presence_penalty;
  a.frequency = p.frequency_penalty;
  a.top_p_limit = 1.0 - static_cast<double>(p.top_p);
  a.seed = p.seed;
  // The CPU's switches: each processor runs only when it is not the neutral value.
  a.use_repetition = p.repetition_penalty != 1.0f;
  a.use_additive = p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
  a.use_top_k = p.top_k > 0 && static_cast<int64_t>(p.top_k) < vocab;
  a.use_top_p = p.top_p < 1.0f;
  a.use_min_p = p.min_p > 0.0f;
  return a;
}

}  // namespace

size_t device_bytes(int64_t vocab) { return layout_of(vocab).bytes; }

void reset(cuda::CudaContext& ctx, void* device, int64_t vocab, const int32_t* state) {
  const Layout l = layout_of(vocab);
  const cudaStream_t s = stream_of(ctx);
  SPECULA_CUDA_CHECK(cudaMemsetAsync(device, 0, l.state, s));
  SPECULA_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(device) + l.state, state,
                                     static_cast<size_t>(vocab) * sizeof(int32_t), cudaMemcpyHostToDevice, s));
  SPECULA_CUDA_CHECK(cudaStreamSynchronize(s));
}

void step(cuda::CudaContext& ctx, void* device, int64_t vocab, const ::specula::sampling::SamplingParams& p, float* logits,
          int32_t* out_token, const int32_t* active) {
  const Layout l = layout_of(vocab);
  StepArgs a = args_of(device, l, vocab, p, logits, out_token);
  a.active = active;
  const cudaStream_t s = stream_of(ctx);
  const dim3 grid(static_cast<unsigned>(l.blocks)), block(kThreads);
  if (p.is_greedy()) {
    prepare_kernel<true, false><<<grid, block, 0, s>>>(a);
    SPECULA_CUDA_CHECK_LAUNCH("sampling: greedy kernel");
    return;
  }
  if (a.use_top_k) {
    prepare_kernel<false, true><<<grid, block, 0, s>>>(a);
  } else {
    prepare_kernel<false, false><<<grid, block, 0, s>>>(a);
  }
  SPECULA_CUDA_CHECK_LAUNCH("sampling: prepare kernel");
  if (a.use_top_k) {
    topk_level_kernel<1><<<grid, block, 0, s>>>(a);
    SPECULA_CUDA_CHECK_LAUNCH("sampling: top-k level 1");
    topk_level_kernel<2><<<grid, block, 0, s>>>(a);
    SPECULA_CUDA_CHECK_LAUNCH("sampling: top-k level 2");
  }
  if (a.use_top_p) {
    topp_level_kernel<0, true, true><<<grid, block, 0, s>>>(a);
    SPECULA_CUDA_CHECK_LAUNCH("sampling: top-p level 0");
    topp_level_kernel<1, true, false><<<grid, block, 0, s>>>(a);
    SPECULA_CUDA_CHECK_LAUNCH("sampling: top-p level 1");
    topp_level_kernel<2, true, false><<<grid, block, 0, s>>>(a);
    SPECULA_CUDA_CHECK_LAUNCH("sampling: top-p level 2");
  } else if (a.use_min_p) {
    topp_level_kernel<0, false, true><<<grid, block, 0, s>>>(a);
    SPECULA_CUDA_CHECK_LAUNCH("sampling: support total");
  }
  final_kernel<<<grid, block, 0, s>>>(a);
  SPECULA_CUDA_CHECK_LAUNCH("sampling: draw kernel");
}

uint32_t take_errors(cuda::CudaContext& ctx, void* device, int64_t vocab) {
  const Layout l = layout_of(vocab);
  const cudaStream_t s = stream_of(ctx);
  u32* word = &control_of(device, l)->errors;
  uint32_t bits = 0;
  SPECULA_CUDA_CHECK(cudaMemcpyAsync(&bits, word, sizeof bits, cudaMemcpyDeviceToHost, s));
  SPECULA_CUDA_CHECK(cudaMemsetAsync(word, 0, sizeof bits, s));
  SPECULA_CUDA_CHECK(cudaStreamSynchronize(s));
  return bits;
}

uint64_t draw_counter(cuda::CudaContext& ctx, void* device, int64_t vocab) {
  const Layout l = layout_of(vocab);
  const cudaStream_t s = stream_of(ctx);
  uint64_t counter = 0;
  SPECULA_CUDA_CHECK(cudaMemcpyAsync(&counter, &control_of(device, l)->counter, sizeof counter,
                                     cudaMemcpyDeviceToHost, s));
  SPECULA_CUDA_CHECK(cudaStreamSynchronize(s));
  return counter;
}

}  // namespace specula::ops::cuda_impl::sampler
