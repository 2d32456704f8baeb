// Hopper bulk-copy GEMV for one token: out = alpha * x W^T + bias (or out += that), and the same
// with x = rms_norm(x) (ops::rms_norm_linear), for 16-bit weights whose rows fit a 32 KB tile.
//
// Why a second GEMV beside gemv.cu: at batch 1 a decode step is a chain of weight streams, and
// what the register-streaming kernel loses is at the edges: every block of it re-reads x (and for
// the fused norm, re-normalises the row: 384 to 1792 blocks per projection), and a kernel's tail
// and the next one's ramp leave DRAM partly idle. Here (bench/gemv_lab.cu measured 97.3% of the
// copy bandwidth over a 32-layer step's GEMVs against 95.8% for the register kernel, H100):
// - The grid is persistent, one block per SM, so x is loaded (and normalised) once per SM, and
//   the per-block prologue is paid 132 times instead of hundreds.
// - One thread streams the weights with cp.async.bulk (the TMA engine) into a ring of kStages
//   32 KB tiles in shared memory, completing on mbarriers: up to 128 KB in flight per SM from a
//   handful of instructions, while all 8 warps compute on the tile that has landed.
// - A tile is tile_rows consecutive rows (contiguous in memory: one copy each); the warps split a
//   tile's rows (and a row's K range when tile_rows < 8), reduce with shuffles and, across warps,
//   through shared memory, and apply alpha, bias, 1/rms and the residual add in the epilogue.
// - PDL (pdl.cuh): the ring's first kStages tiles are requested before pdl_wait(), since weights
//   never depend on an earlier kernel: a block that becomes resident while the previous kernels
//   still run (attention before the output projection) has up to 128 KB of its weights landed by
//   the time its inputs are ready.
// - x sits in shared memory as fp32 (norm variant: norm_weight * x, the 1/rms factor applied to
//   the finished dot products, as in gemv.cu), split in two arrays of float4 (elements 0-3 and 4-7
//   of each 8-element group) so a warp's reads are conflict-free 16-byte accesses.
// sm_90 only (the host checks the device); other devices and shapes use gemv.cu.
//
// Where it is used (ops/cuda/linear.cu): the fused-norm projections of decode (QKV, gate/up), where
// normalising once per SM instead of once per block pays. The plain one-token products (the
// output projection, the LM head) measured faster on gemv.cu in the decode step (H100, commit
// ec94da1: eager step time of ops::linear 1040 us with this kernel, 873 us without; the graph-
// replayed step about 1 point of the bandwidth limit slower): a 32 MB matrix is too short for a
// 128 KB-per-SM ring to fill and drain without a visible edge.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <set>

#include "specula/ops/cuda/bulk_copy.cuh"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/linear_impl.h"
#include "specula/ops/cuda/pdl.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kBulkWarps = 8;
constexpr int kBulkThreads = kBulkWarps * kWarpSize;
constexpr int kStages = 4;                 // tiles in flight per SM
constexpr int64_t kTileBytes = 32 * 1024;  // one bulk copy; 4 rows of a 4096-wide bf16 matrix
constexpr int64_t kMaxTileRows = 64;       // short rows: enough per tile, bounded epilogue work
constexpr int kVec = 8;                    // 16-byte weight vector of 16-bit elements
constexpr int kMinComputeMajor = 9;        // cp.async.bulk and mbarrier transaction counts

struct BulkArgs {
  const void* weight;
  const void* x;
  const void* norm_weight;  // norm variant: [k], the weights' dtype; else null
  float norm_eps;
  const void* bias;  // nullptr: none
  DType bias_dtype;
  void* out;
  DType out_dtype;
  int64_t n, k;
  float alpha;
  bool accumulate;
  int tile_rows;
};

using namespace bulk;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void write_bulk_output(const BulkArgs& a, int64_t row, float dot) {
  store_linear_output(a.out, a.out_dtype, row, dot, a.alpha, a.bias, a.bias_dtype, row, a.accumulate);
}
#endif

template <typename TW, typename TX, bool kNorm>
__global__ void __launch_bounds__(kBulkThreads, 1) gemv_bulk_kernel(BulkArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char bulk_shared[];
  __shared__ uint64_t tile_ready[kStages];
  __shared__ float partial[kStages][kBulkWarps];
  __shared__ float norm_warp_sums[kBulkWarps];
  pdl_launch_dependents();

  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int64_t vectors = a.k / kVec;
  const int tile_rows = a.tile_rows;
  const int64_t tiles = ceil_div<int64_t>(a.n, tile_rows);
  const size_t tile_bytes = static_cast<size_t>(tile_rows) * static_cast<size_t>(a.k) * sizeof(TW);
  unsigned char* ring = bulk_shared;
  float4* x_lo = reinterpret_cast<float4*>(bulk_shared + kStages * tile_bytes);
  float4* x_hi = x_lo + vectors;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) mbarrier_init(&tile_ready[s]);
    mbarrier_init_fence();
  }
  __syncthreads();
  // Requests the block's i-th tile into stage i % kStages (thread 0 only).
  auto request = [&](int64_t i) {
    const int64_t t = blockIdx.x + i * gridDim.x;
    if (t >= tiles) return;
    const int s = static_cast<int>(i % kStages);
    const int64_t rows = min(static_cast<int64_t>(tile_rows), a.n - t * tile_rows);
    const auto bytes = static_cast<uint32_t>(rows * a.k * static_cast<int64_t>(sizeof(TW)));
    mbarrier_expect_bytes(&tile_ready[s], bytes);
    bulk_copy_to_shared(ring + s * tile_bytes, static_cast<const TW*>(a.weight) + t * tile_rows * a.k, bytes,
                        &tile_ready[s]);
  };
  if (tid == 0)
    for (int i = 0; i < kStages; ++i) request(i);

  pdl_wait();
  // x into shared memory as fp32 (times the norm weight for the norm variant), and sum(x^2).
  float sum_sq = 0.0f;
  for (int64_t v = tid; v < vectors; v += kBulkThreads) {
    float xv[kVec];
    load_f32<TX, kVec>(static_cast<const TX*>(a.x) + v * kVec, xv);
    if constexpr (kNorm) {
      float gv[kVec];
      load_f32<TW, kVec>(static_cast<const TW*>(a.norm_weight) + v * kVec, gv);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        sum_sq = fmaf(xv[j], xv[j], sum_sq);
        xv[j] *= gv[j];
      }
    }
    x_lo[v] = make_float4(xv[0], xv[1], xv[2], xv[3]);
    x_hi[v] = make_float4(xv[4], xv[5], xv[6], xv[7]);
  }
  float scale = 1.0f;
  if constexpr (kNorm) {
    sum_sq = warp_sum(sum_sq);
    if (lane == 0) norm_warp_sums[warp] = sum_sq;
  }
  __syncthreads();
  if constexpr (kNorm) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kBulkWarps; ++w) total += norm_warp_sums[w];
    scale = 1.0f / sqrtf(total / static_cast<float>(a.k) + a.norm_eps);
  }

  // Warps per row: a tile of fewer rows than warps splits each row's K range.
  const int warps_per_row = tile_rows >= kBulkWarps ? 1 : kBulkWarps / tile_rows;
  const int segment = warp % warps_per_row;
  const int64_t v_begin = segment * vectors / warps_per_row, v_end = (segment + 1) * vectors / warps_per_row;
  using W = detail::Words<TW>;
  for (int64_t i = 0;; ++i) {
    const int64_t t = blockIdx.x + i * gridDim.x;
    if (t >= tiles) break;
    const int s = static_cast<int>(i % kStages);
    mbarrier_wait(&tile_ready[s], static_cast<uint32_t>((i / kStages) & 1));
    const uint4* tile = reinterpret_cast<const uint4*>(ring + s * tile_bytes);
    const int rows = static_cast<int>(min(static_cast<int64_t>(tile_rows), a.n - t * tile_rows));
    for (int r = warp / warps_per_row; r < tile_rows; r += kBulkWarps / warps_per_row) {
      float acc = 0.0f;
      if (r < rows) {
        const uint4* wrow = tile + r * vectors;
#pragma unroll 4
        for (int64_t v = v_begin + lane; v < v_end; v += kWarpSize) {
          const uint4 raw = wrow[v];
          float wf[kVec];
          const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
          for (int j = 0; j < 4; ++j) W::unpack(words[j], &wf[j * W::kPerWord]);
          const float4 lo = x_lo[v], hi = x_hi[v];
          acc = fmaf(wf[0], lo.x, acc);
          acc = fmaf(wf[1], lo.y, acc);
          acc = fmaf(wf[2], lo.z, acc);
          acc = fmaf(wf[3], lo.w, acc);
          acc = fmaf(wf[4], hi.x, acc);
          acc = fmaf(wf[5], hi.y, acc);
          acc = fmaf(wf[6], hi.z, acc);
          acc = fmaf(wf[7], hi.w, acc);
        }
      }
      acc = warp_sum(acc);
      if (lane == 0) {
        if (warps_per_row > 1)
          partial[s][warp] = acc;
        else if (r < rows)
          write_bulk_output(a, t * tile_rows + r, acc * scale);
      }
    }
    // Every warp is done with stage s (and partial[s] is complete): the stage can be refilled.
    __syncthreads();
    if (warps_per_row > 1 && tid < rows) {
      float sum = 0.0f;
      for (int j = 0; j < warps_per_row; ++j) sum += partial[s][tid * warps_per_row + j];
      write_bulk_output(a, t * tile_rows + tid, sum * scale);
    }
    if (tid == 0) request(i + kStages);
  }
#endif
}

size_t bulk_shared_bytes(int64_t k, int tile_rows, size_t weight_size) {
  return kStages * static_cast<size_t>(tile_rows) * static_cast<size_t>(k) * weight_size +
         static_cast<size_t>(k) * sizeof(float);
}

// Largest power-of-two row count (at most kMaxTileRows) whose rows fit one tile; 0 if one row
// does not.
int bulk_tile_rows(int64_t k, size_t weight_size) {
  const int64_t row_bytes = k * static_cast<int64_t>(weight_size);
  if (row_bytes > kTileBytes) return 0;
  int rows = 1;
  while (rows * 2 <= kMaxTileRows && rows * 2 * row_bytes <= kTileBytes) rows *= 2;
  return rows;
}


template <typename TW, typename TX, bool kNorm>
void launch_bulk(CudaContext& ctx, const BulkArgs& args, size_t smem) {
  auto kernel = gemv_bulk_kernel<TW, TX, kNorm>;
  // Above 48 KB the dynamic shared memory needs the per-kernel opt-in, once per context. Always the
  // largest this instantiation can ask for (4 tiles and a 16384-wide fp32 row), never the call's
  // own size: a lower limit set by a later, smaller call would invalidate launches already
  // captured into graphs.
  std::shared_ptr<void>& slot = ctx.op_cache(CudaContext::OpCache::BulkGemvKernels);
  if (!slot) slot = std::make_shared<RaisedKernels>();
  static_cast<RaisedKernels*>(slot.get())->once(reinterpret_cast<const void*>(kernel), [&] {
    const size_t most = std::min<size_t>(
        bulk_shared_bytes(kTileBytes / static_cast<int64_t>(sizeof(TW)), 1, sizeof(TW)),
        ctx.info().max_shared_memory_per_block_optin);
    SPECULA_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most)));
  });
  const int64_t tiles = ceil_div<int64_t>(args.n, args.tile_rows);
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(tiles, ctx.info().multiprocessors));
  launch_kernel(ctx, kNorm ? "rms_norm_linear (bulk gemv)" : "linear (bulk gemv)", kernel, dim3(blocks),
                dim3(kBulkThreads), smem, args);
}

}  // namespace

bool try_gemv_bulk(CudaContext& ctx, const Tensor& x, const Tensor* norm_weight, float norm_eps, const Tensor& weight,
                   const Tensor& bias, Tensor& out, float alpha, OutputMode mode) {
  if (!ctx.bulk_gemv() || ctx.info().sm_major < kMinComputeMajor || x.rows() != 1) return false;
  if (weight.dtype != DType::BF16 && weight.dtype != DType::F16) return false;
  const int64_t n = weight.dim(0), k = weight.dim(1);
  if (n == 0 || k == 0 || k % kVec != 0 || !is_aligned(weight.data, kVectorBytes)) return false;
  if (norm_weight && (norm_weight->dtype != weight.dtype || !is_aligned(norm_weight->data, kVectorBytes)))
    return false;
  const int tile_rows = bulk_tile_rows(k, dtype_size(weight.dtype));
  if (tile_rows == 0) return false;
  const size_t smem = bulk_shared_bytes(k, tile_rows, dtype_size(weight.dtype));
  if (smem > ctx.info().max_shared_memory_per_block_optin) return false;

  BulkArgs args{};
  args.weight = weight.data;
  args.x = x.data;
  args.norm_weight = norm_weight ? norm_weight->data : nullptr;
  args.norm_eps = norm_eps;
  args.bias = bias.empty() ? nullptr : bias.data;
  args.bias_dtype = bias.empty() ? DType::F32 : bias.dtype;
  args.out = out.data;
  args.out_dtype = out.dtype;
  args.n = n;
  args.k = k;
  args.alpha = alpha;
  args.accumulate = mode == OutputMode::Accumulate;
  args.tile_rows = tile_rows;
  bool launched = false;
  dispatch_float(weight.dtype, [&](auto weight_tag) {
    using TW = typename decltype(weight_tag)::type;
    if constexpr (sizeof(TW) == 2) {
      dispatch_float(x.dtype, [&](auto x_tag) {
        using TX = typename decltype(x_tag)::type;
        if (!is_aligned(x.data, static_cast<size_t>(access_alignment<TX, kVec>()))) return;
        if (norm_weight)
          launch_bulk<TW, TX, true>(ctx, args, smem);
        else
          launch_bulk<TW, TX, false>(ctx, args, smem);
        launched = true;
      });
    }
  });
  return launched;
}

}  // namespace specula::ops::cuda_impl
