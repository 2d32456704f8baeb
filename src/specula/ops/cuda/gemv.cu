// CUDA-core GEMV / skinny GEMM for the linear op at decode token counts (T <= kGemvMaxTokens):
// out[t, n] = alpha * sum_k x[t, k] W[n, k] + bias[n].
//
// Decode is bound by streaming the weight matrix once, so everything here serves that stream:
// - Each lane loads whole 16-byte weight vectors (8 bf16/f16 or 4 f32) with a streaming load that
//   skips L1, kRows rows x kUnroll vectors at a time, all issued before the first use, so every
//   warp keeps several KB of loads in flight.
// - The activations x (a few KB) are re-read from L1 by every warp, converted to fp32 on load,
//   and shared by the kRows rows a warp works on. All T tokens use each weight vector while it is
//   in registers, so T <= 8 costs one pass over the weights; the token count is a template
//   parameter (1, 2, 4, 8) so the accumulators stay in registers.
// - Blocks of 8 warps; the warps of a block split into row groups of kRows rows, each row group's
//   K range split over `splits` warps (1..8) whose partial sums meet in shared memory. The host
//   picks the smallest split that gives about kTargetWarpsPerSm warps per SM, so a short matrix
//   (few rows) still fills the GPU and a tall one keeps whole rows per warp.
// - fp32 accumulation with fmaf; alpha and bias in the epilogue; bias and out dtypes are
//   run-time values (used once per output), weight and x dtypes are template parameters.
// The vector path needs K to be a multiple of the vector width and 16-byte-aligned weights
// (and x aligned to its access width), checked per call; otherwise a scalar kernel
// (one element per lane and access) computes the same thing more slowly.
//
// SwiGLU variant (ops::linear_swiglu, the down projection): x is not stored but computed on load
// from the fused [T, 2K] gate/up buffer, x[t, k] = silu(gate[t, k]) * up[t, k], in fp32 and never
// rounded to 16 bits. That removes the silu_mul kernel, its [T, K] round trip and one launch per
// layer. silu uses the fast exp and divide (a few ulp in fp32, far below the 16-bit rounding the
// unfused path applies), since each activation is recomputed by every warp that reads it. Only
// the 1- and 2-token shapes exist: beyond that the gate and up registers cut occupancy.
//
// RMSNorm variant (ops::rms_norm_linear at one token, the QKV and gate/up projections of decode,
// where the bulk-copy GEMV of gemv_bulk.cu does not run: before sm_90, F32 weights, long rows):
// x is the residual stream, and every block runs the norm for itself: a prologue reads the row
// (a few KB, from L2) and the norm weight in one round of loads, keeps norm_weight * x in fp32 in
// shared memory, where the main loop reads it, and sums x^2; the epilogue multiplies the dot
// products by 1 / rms (the product is linear in it), so the prologue needs no second pass. Every
// block computing the same norm costs some L2 reads; it saves the separate add/norm kernel, its
// launch and its 16-bit round trip, twice per layer. The first step's weights are already in
// flight while the prologue runs. The norm weight must have the weights' dtype (the host checks).
//
// Accumulate mode (OutputMode::Accumulate, the o and down projections): out += alpha * x W^T (+
// bias), each output element read and written by the one lane that owns it, so the residual
// update needs no separate kernel either.
//
// Programmatic dependent launch (pdl.cuh): the weights never depend on an earlier kernel, so
// each lane requests its first step of weights before pdl_wait() (into registers at 1 token,
// into L2 beyond, see GemvShape); those requests are in flight while the previous kernel
// finishes. x, bias, outputs and everything else come after the wait.
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/linear_impl.h"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kGemvWarps = 8;
constexpr int kGemvThreads = kGemvWarps * kWarpSize;
constexpr int kTargetWarpsPerSm = 16;  // enough 16-byte loads in flight to cover DRAM latency
constexpr int64_t kMaxGridY = 65535;   // CUDA limit on gridDim.y (token groups)
// Longest row the RMSNorm variant keeps in shared memory: the default dynamic shared memory
// limit, so the kernel needs no opt-in (hidden sizes up to 12288 fit).
constexpr size_t kMaxNormSharedBytes = 48 * 1024;

size_t norm_shared_bytes(int64_t k, int64_t tokens) {
  return static_cast<size_t>(k) * static_cast<size_t>(tokens) * sizeof(float);
}

// Rows per warp and weight vectors per lane in flight per row, by token count: more tokens need
// more accumulators and activation registers, so they trade unrolling for registers.
template <int kT>
struct GemvShape {
  static constexpr int kRows = 2;
  static constexpr int kUnroll = kT <= 2 ? 4 : 2;
  // Before pdl_wait(): load the first step's weights into registers (at 1 token the register
  // count stays in its occupancy bucket: 60, 4 blocks per SM), or only prefetch a line per row
  // into L2 (with more tokens the extra live registers cost a block per SM; ptxas -v, sm_90a).
  static constexpr bool kPreloadFirstStep = kT == 1;
};

// Where the activations come from: x as stored; silu(gate) * up computed from the fused gate/up
// buffer; or the RMSNorm of x, computed into shared memory by every block (see the top).
enum class XSource { Plain, Swiglu, Norm };

struct GemvArgs {
  const void* weight;
  const void* x;         // plain: x [T, k]; SwiGLU: the gate/up buffer [T, 2k]
  int64_t x_stride;      // elements between the rows of consecutive tokens in x
  int64_t up_offset;     // SwiGLU: elements from a gate value to its up value (k); unused otherwise
  const void* bias;  // nullptr: none
  DType bias_dtype;
  void* out;
  DType out_dtype;
  int64_t n, k, tokens;
  float alpha;
  bool accumulate;           // out += result (the residual update) instead of out = result
  const void* norm_weight;   // XSource::Norm: the RMSNorm weight [k], in the weights' dtype
  float norm_eps;
  int splits;  // warps sharing one row group's K range: 1, 2, 4 or 8
};

// One access worth of weights, kept raw until it is used so the registers hold 16-bit values.
template <typename TW, int kVec>
struct WeightVec {
  static constexpr bool kWide = kVec > 1;
  static_assert(!kWide || kVec * sizeof(TW) == kVectorBytes, "a wide weight access is one 16-byte vector");
  std::conditional_t<kWide, uint4, TW> raw;

  __device__ __forceinline__ void load(const TW* p) {
    if constexpr (kWide)
      raw = detail::load_v4_stream(p);
    else
      raw = __ldg(p);
  }
  __device__ __forceinline__ void clear() {
    if constexpr (kWide)
      raw = make_uint4(0u, 0u, 0u, 0u);
    else
      raw = from_f32<TW>(0.0f);
  }
  __device__ __forceinline__ void unpack(float (&v)[kVec]) const {
    if constexpr (kWide) {
      using W = detail::Words<TW>;
      const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) W::unpack(words[j], &v[j * W::kPerWord]);
    } else {
      v[0] = to_f32(raw);
    }
  }
};

__device__ __forceinline__ void write_output(const GemvArgs& a, int64_t row, int64_t token, float dot) {
  store_linear_output(a.out, a.out_dtype, token * a.n + row, dot, a.alpha, a.bias, a.bias_dtype, row, a.accumulate);
}

// silu(g) * u in fp32 with the fast exp and divide: for g below about -87, 1 + exp(-g) exceeds
// 2^126 and __fdividef gives 0, the limit of g / (1 + exp(-g)); NaN and infinities propagate as
// in the precise formula.
__device__ __forceinline__ float swiglu(float g, float u) { return __fdividef(g, 1.0f + __expf(-g)) * u; }

// The kVec activations of one token at x element offset `v * kVec` of its row: loaded, for the
// SwiGLU variant computed from the gate and up halves, for the norm variant read from the fp32
// norm_weight * x row in shared memory (xrow then points there, TX is float).
template <XSource kSrc, typename TX, int kVec>
__device__ __forceinline__ void load_x(const TX* xrow, int64_t v, int64_t up_offset, float (&xv)[kVec]) {
  if constexpr (kSrc == XSource::Norm) {
    static_assert(std::is_same_v<TX, float>, "the shared row is fp32");
    if constexpr (kVec % 4 == 0) {
#pragma unroll
      for (int j = 0; j < kVec; j += 4) {
        const float4 f = *reinterpret_cast<const float4*>(xrow + v * kVec + j);
        xv[j] = f.x, xv[j + 1] = f.y, xv[j + 2] = f.z, xv[j + 3] = f.w;
      }
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) xv[j] = xrow[v * kVec + j];
    }
    return;
  }
  load_f32<TX, kVec>(xrow + v * kVec, xv);
  if constexpr (kSrc == XSource::Swiglu) {
    float up[kVec];
    load_f32<TX, kVec>(xrow + up_offset + v * kVec, up);
#pragma unroll
    for (int j = 0; j < kVec; ++j) xv[j] = swiglu(xv[j], up[j]);
  }
}

// First half of one step of a lane: kUnroll weight vectors of each of its kRows rows, all issued
// before any is used. kGuard: the last step of a row, where some of the kUnroll vectors may lie
// beyond the row (those are zeroed and never used).
template <bool kGuard, typename TW, int kVec, int kRows, int kUnroll>
__device__ __forceinline__ void load_weights(WeightVec<TW, kVec> (&w)[kUnroll][kRows], const TW* const (&wrow)[kRows],
                                             int64_t v0, int64_t stride, int64_t vectors) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = v0 + u * stride;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (!kGuard || v < vectors)
        w[u][r].load(wrow[r] + v * kVec);
      else
        w[u][r].clear();
    }
  }
}

// Second half: the matching activations for every token, accumulated against the weights.
template <bool kGuard, XSource kSrc, typename TW, typename TX, int kT, int kVec, int kRows, int kUnroll>
__device__ __forceinline__ void accumulate(const WeightVec<TW, kVec> (&w)[kUnroll][kRows], const TX* const (&xrow)[kT],
                                           int64_t v0, int64_t stride, int64_t vectors, int64_t up_offset,
                                           float (&acc)[kRows][kT]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = v0 + u * stride;
    if (kGuard && v >= vectors) break;
    float xv[kT][kVec];
#pragma unroll
    for (int t = 0; t < kT; ++t) load_x<kSrc, TX, kVec>(xrow[t], v, up_offset, xv[t]);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float wf[kVec];
      w[u][r].unpack(wf);
#pragma unroll
      for (int t = 0; t < kT; ++t)
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[r][t] = fmaf(wf[j], xv[t][j], acc[r][t]);
    }
  }
}

// One step of a lane: load_weights then accumulate.
template <bool kGuard, XSource kSrc, typename TW, typename TX, int kT, int kVec, int kRows, int kUnroll>
__device__ __forceinline__ void gemv_step(const TW* const (&wrow)[kRows], const TX* const (&xrow)[kT], int64_t v0,
                                          int64_t stride, int64_t vectors, int64_t up_offset,
                                          float (&acc)[kRows][kT]) {
  WeightVec<TW, kVec> w[kUnroll][kRows];
  load_weights<kGuard, TW, kVec, kRows, kUnroll>(w, wrow, v0, stride, vectors);
  accumulate<kGuard, kSrc, TW, TX, kT, kVec, kRows, kUnroll>(w, xrow, v0, stride, vectors, up_offset, acc);
}

// XSource::Norm prologue: row t of `xs` (shared memory, k floats per token) = norm_weight * x for
// the block's tokens, and each warp's share of sum(x^2) in warp_sums. The 1 / rms factor is not
// applied here: the product is linear in it, so the epilogue multiplies the finished dot products
// by it (see rms_scales) and the prologue costs one round of loads (x and the norm weight, all
// issued before any is used) and no second pass. kPerThread elements per thread and round keep
// the registers within the kernel's occupancy bucket while the first weights are held.
template <typename TW, typename TX, int kT>
__device__ __forceinline__ void load_weighted_rows(const GemvArgs& a, const TX* const (&xrow)[kT], float* xs,
                                                   float (&warp_sums)[kGemvWarps][kT]) {
  constexpr int kPerThread = 8;
  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const TW* gamma = static_cast<const TW*>(a.norm_weight);
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    float sum_sq = 0.0f;
    for (int64_t base = 0; base < a.k; base += kPerThread * kGemvThreads) {
      float xv[kPerThread], gv[kPerThread];
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t i = base + j * kGemvThreads + tid;
        xv[j] = i < a.k ? to_f32(xrow[t][i]) : 0.0f;
        gv[j] = i < a.k ? to_f32(__ldg(gamma + i)) : 0.0f;
      }
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t i = base + j * kGemvThreads + tid;
        if (i < a.k) xs[t * a.k + i] = gv[j] * xv[j];
        sum_sq = fmaf(xv[j], xv[j], sum_sq);
      }
    }
    sum_sq = warp_sum(sum_sq);
    if (lane == 0) warp_sums[warp][t] = sum_sq;
  }
  __syncthreads();
}

// 1 / sqrt(mean(x^2) + eps) per token, from load_weighted_rows's warp sums.
template <int kT>
__device__ __forceinline__ void rms_scales(const GemvArgs& a, const float (&warp_sums)[kGemvWarps][kT],
                                           float (&scale)[kT]) {
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kGemvWarps; ++w) total += warp_sums[w][t];
    scale[t] = 1.0f / sqrtf(total / static_cast<float>(a.k) + a.norm_eps);
  }
}

// blockIdx.x: a block of kGemvWarps / splits row groups; blockIdx.y: a group of kT tokens.
template <typename TW, typename TX, int kT, int kVec, XSource kSrc>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(GemvArgs a) {
  constexpr int kRows = GemvShape<kT>::kRows, kUnroll = GemvShape<kT>::kUnroll;
  constexpr bool kSwiglu = kSrc == XSource::Swiglu, kNorm = kSrc == XSource::Norm;
  // The loop reads x as XT: the fp32 rows in shared memory for the norm variant.
  using XT = std::conditional_t<kNorm, float, TX>;
  __shared__ float partial[kGemvWarps][kRows][kT];
  __shared__ float norm_warp_sums[kNorm ? kGemvWarps : 1][kT];
  extern __shared__ float4 dynamic_shared[];  // XSource::Norm: kT rows of norm_weight * x, k floats each
  pdl_launch_dependents();

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize, lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int splits = a.splits, groups = kGemvWarps / splits;
  const int group = warp / splits, split = warp % splits;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * groups + group) * kRows;
  const int64_t token0 = static_cast<int64_t>(blockIdx.y) * kT;
  const int tokens = static_cast<int>(min(static_cast<int64_t>(kT), a.tokens - token0));
  const int64_t vectors = a.k / kVec;

  // Rows past the matrix and tokens past the batch read row 0 / token 0 instead (valid memory,
  // results never written), so the hot loop carries no bounds tests. Only addresses are formed
  // here: nothing is read before pdl_wait() but the weights.
  const TW* wrow[kRows];
  bool row_ok[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    row_ok[r] = row0 + r < a.n;
    wrow[r] = static_cast<const TW*>(a.weight) + (row_ok[r] ? row0 + r : 0) * a.k;
  }
  const TX* xrow_global[kT];
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    // a.k for the plain kernel, as x_stride is there: one 64-bit value less to keep live (-12
    // registers at 4 tokens).
    const int64_t x_stride = kSwiglu ? a.x_stride : a.k;
    xrow_global[t] = static_cast<const TX*>(a.x) + (token0 + (t < tokens ? t : 0)) * x_stride;
  }
  const XT* xrow[kT];
  float* const xs = reinterpret_cast<float*>(dynamic_shared);
#pragma unroll
  for (int t = 0; t < kT; ++t) {
    if constexpr (kNorm)
      xrow[t] = xs + t * a.k;
    else
      xrow[t] = xrow_global[t];
  }

  float acc[kRows][kT];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kT; ++t) acc[r][t] = 0.0f;

  const int64_t stride = static_cast<int64_t>(splits) * kWarpSize;
  int64_t v0 = split * kWarpSize + lane;
  // The first step's weights are requested before waiting for the previous kernel (guarded: a
  // short row may end inside it); x is only read once that kernel has completed.
  if constexpr (GemvShape<kT>::kPreloadFirstStep) {
    WeightVec<TW, kVec> first[kUnroll][kRows];
    load_weights<true, TW, kVec, kRows, kUnroll>(first, wrow, v0, stride, vectors);
    pdl_wait();
    if constexpr (kNorm) load_weighted_rows<TW, TX, kT>(a, xrow_global, xs, norm_warp_sums);
    accumulate<true, kSrc, TW, XT, kT, kVec, kRows, kUnroll>(first, xrow, v0, stride, vectors, a.up_offset, acc);
    v0 += stride * kUnroll;
  } else {
    // One line per row: prefetching every vector of the step kept their addresses live across the
    // wait (+12 registers at 4 tokens, one block per SM less).
    if (v0 < vectors) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) pdl_prefetch_l2(wrow[r] + v0 * kVec);
    }
    pdl_wait();
    if constexpr (kNorm) load_weighted_rows<TW, TX, kT>(a, xrow_global, xs, norm_warp_sums);
  }
  for (; v0 + (kUnroll - 1) * stride < vectors; v0 += stride * kUnroll)
    gemv_step<false, kSrc, TW, XT, kT, kVec, kRows, kUnroll>(wrow, xrow, v0, stride, vectors, a.up_offset, acc);
  if (v0 < vectors)
    gemv_step<true, kSrc, TW, XT, kT, kVec, kRows, kUnroll>(wrow, xrow, v0, stride, vectors, a.up_offset, acc);

#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < kT; ++t) acc[r][t] = warp_sum(acc[r][t]);
  if constexpr (kNorm) {
    float scale[kT];
    rms_scales<kT>(a, norm_warp_sums, scale);
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < kT; ++t) acc[r][t] *= scale[t];
  }

  if (splits == 1) {  // uniform over the block
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int t = 0; t < kT; ++t)
          if (row_ok[r] && t < tokens) write_output(a, row0 + r, token0 + t, acc[r][t]);
    }
    return;
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int t = 0; t < kT; ++t) partial[warp][r][t] = acc[r][t];
  }
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < groups * kRows * kT; i += kGemvThreads) {
    const int g = i / (kRows * kT), r = (i / kT) % kRows, t = i % kT;
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) sum += partial[g * splits + s][r][t];
    const int64_t row = (static_cast<int64_t>(blockIdx.x) * groups + g) * kRows + r;
    if (row < a.n && t < tokens) write_output(a, row, token0 + t, sum);
  }
}

// Smallest power-of-two split of K over warps that reaches the warp target, keeping at least
// kUnroll vectors per lane per row so a split never leaves lanes with nothing in flight.
int choose_splits(int64_t rows, int64_t vectors, int rows_per_warp, int unroll, int multiprocessors) {
  const int64_t row_groups = ceil_div<int64_t>(rows, rows_per_warp);
  const int64_t target = static_cast<int64_t>(multiprocessors) * kTargetWarpsPerSm;
  int splits = 1;
  while (splits < kGemvWarps && row_groups * splits < target && vectors / (2 * splits * kWarpSize) >= unroll)
    splits *= 2;
  return splits;
}

const char* kernel_label(XSource src) {
  switch (src) {
    case XSource::Swiglu: return "linear_swiglu (gemv)";
    case XSource::Norm: return "rms_norm_linear (gemv)";
    default: return "linear (gemv)";
  }
}

template <typename TW, typename TX, int kT, int kVec, XSource kSrc>
void run_gemv(CudaContext& ctx, GemvArgs args) {
  constexpr int kRows = GemvShape<kT>::kRows;
  const int64_t vectors = args.k / kVec;
  args.splits = choose_splits(args.n, vectors, kRows, GemvShape<kT>::kUnroll, ctx.info().multiprocessors);
  const int64_t groups = kGemvWarps / args.splits;
  const auto blocks_x = static_cast<unsigned>(ceil_div<int64_t>(ceil_div<int64_t>(args.n, kRows), groups));
  const size_t smem = kSrc == XSource::Norm ? norm_shared_bytes(args.k, kT) : 0;
  // gridDim.y counts token groups; beyond its limit, launch again on later tokens.
  const int64_t tokens_per_launch = kMaxGridY * kT, total = args.tokens;
  for (int64_t t0 = 0; t0 < total; t0 += tokens_per_launch) {
    GemvArgs slice = args;
    slice.tokens = std::min(tokens_per_launch, total - t0);
    slice.x = static_cast<const char*>(args.x) + static_cast<size_t>(t0 * args.x_stride) * sizeof(TX);
    slice.out = static_cast<char*>(args.out) + static_cast<size_t>(t0 * args.n) * dtype_size(args.out_dtype);
    const dim3 grid(blocks_x, static_cast<unsigned>(ceil_div<int64_t>(slice.tokens, kT)));
    launch_kernel(ctx, kernel_label(kSrc), gemv_kernel<TW, TX, kT, kVec, kSrc>, grid, dim3(kGemvThreads), smem, slice);
  }
}

// Whether the weights and x allow the 16-byte weight path (for SwiGLU the up half starts K
// elements into each row, as aligned as the gate half).
template <typename TW, typename TX>
bool wide_path(const GemvArgs& args) {
  constexpr int kWide = kVectorBytes / static_cast<int>(sizeof(TW));
  return args.k % kWide == 0 && is_aligned(args.weight, kVectorBytes) &&
         is_aligned(args.x, static_cast<size_t>(access_alignment<TX, kWide>()));
}

// Picks the instantiation for the operands: the vector path when K and the pointers allow it,
// then the token-count template.
template <XSource kSrc>
void dispatch_gemv(CudaContext& ctx, const GemvArgs& args, DType weight_dtype, DType x_dtype) {
  if (args.tokens == 0 || args.n == 0) return;
  constexpr bool kSwiglu = kSrc == XSource::Swiglu;
  dispatch_float(weight_dtype, [&](auto weight_tag) {
    using TW = typename decltype(weight_tag)::type;
    dispatch_float(x_dtype, [&](auto x_tag) {
      using TX = typename decltype(x_tag)::type;
      constexpr int kWide = kVectorBytes / static_cast<int>(sizeof(TW));
      const bool wide = wide_path<TW, TX>(args);
      if constexpr (kSrc == XSource::Norm) {
        // One token only (the caller checks); the scalar shape for odd K.
        if (wide)
          run_gemv<TW, TX, 1, kWide, kSrc>(ctx, args);
        else
          run_gemv<TW, TX, 1, 1, kSrc>(ctx, args);
      } else if (!wide) {
        run_gemv<TW, TX, 1, 1, kSrc>(ctx, args);
      } else if (args.tokens == 1) {
        run_gemv<TW, TX, 1, kWide, kSrc>(ctx, args);
      } else if (kSwiglu || args.tokens == 2) {
        // SwiGLU: only the 2-token shape beyond one token (more tokens would hold too many
        // activation registers for full occupancy; linear_swiglu sends them elsewhere and uses
        // this only as a fallback, in groups of two tokens).
        run_gemv<TW, TX, 2, kWide, kSrc>(ctx, args);
      } else if constexpr (!kSwiglu) {
        if (args.tokens <= 4)
          run_gemv<TW, TX, 4, kWide, kSrc>(ctx, args);
        else
          run_gemv<TW, TX, 8, kWide, kSrc>(ctx, args);
      }
    });
  });
}

GemvArgs plain_args(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float alpha,
                    OutputMode mode) {
  GemvArgs args{};
  args.weight = weight.data;
  args.x = x.data;
  args.x_stride = weight.dim(1);
  args.up_offset = 0;
  args.bias = bias.empty() ? nullptr : bias.data;
  args.bias_dtype = bias.dtype;
  args.out = out.data;
  args.out_dtype = out.dtype;
  args.n = weight.dim(0);
  args.k = weight.dim(1);
  args.tokens = x.rows();
  args.alpha = alpha;
  args.accumulate = mode == OutputMode::Accumulate;
  args.norm_weight = nullptr;
  args.norm_eps = 0.0f;
  return args;
}

}  // namespace

void launch_gemv(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                 float alpha, OutputMode mode) {
  dispatch_gemv<XSource::Plain>(ctx, plain_args(x, weight, bias, out, alpha, mode), weight.dtype, x.dtype);
}

void launch_gemv_swiglu(CudaContext& ctx, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha,
                        OutputMode mode) {
  GemvArgs args = plain_args(gate_up, weight, Tensor(), out, alpha, mode);
  args.x_stride = 2 * weight.dim(1);
  args.up_offset = weight.dim(1);
  args.bias_dtype = DType::F32;
  dispatch_gemv<XSource::Swiglu>(ctx, args, weight.dtype, gate_up.dtype);
}

bool try_gemv_rms_norm(CudaContext& ctx, const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight,
                       const Tensor& bias, Tensor& out) {
  if (x.rows() != 1 || norm_weight.dtype != weight.dtype || norm_shared_bytes(weight.dim(1), 1) > kMaxNormSharedBytes)
    return false;
  GemvArgs args = plain_args(x, weight, bias, out, 1.0f, OutputMode::Overwrite);
  args.norm_weight = norm_weight.data;
  args.norm_eps = eps;
  dispatch_gemv<XSource::Norm>(ctx, args, weight.dtype, x.dtype);
  return true;
}

}  // namespace specula::ops::cuda_impl
