// CUDA RMSNorm and fused residual-add + RMSNorm (ops::rms_norm, ops::add_rms_norm).
//
// One block per row. Each thread owns a fixed set of 8-element packs (element by element when
// the row length or a pointer rules out vector access) and keeps the first few in registers
// between the two phases, so a row is read from memory once: phase 1 loads (and for the fused
// op adds the scaled delta and writes the residual back), accumulating the sum of squares;
// after one block reduction, phase 2 scales and writes. Packs beyond the register cache (rows
// longer than threads x kCachedPacks x 8) are re-read in phase 2 by the same thread that wrote
// them, so in-place use (out aliasing x, or delta) stays correct without extra barriers.
//
// The fused op normalises the residual as stored (rounded to its dtype), so out equals
// rms_norm(residual) read back, whatever the residual's dtype.
//
// Launched with programmatic dependent launch where available (pdl.cuh): at decode this is one
// block between two GEMVs, so it lets the next GEMV's blocks start pulling weights while the
// norm runs, and waits for the previous kernel before touching the rows.
#include <cuda_runtime.h>

#include <algorithm>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/kernel_utils.cuh"

namespace specula::ops::cuda_impl {

namespace {

// 512 threads leave each thread up to 128 registers, room for the register cache without spills
// (1024 would cap it at 64 and spill); rows past 512 x kCachedPacks packs re-read their tail.
constexpr int kMaxThreads = 512;
constexpr int kPackElems = 8;
constexpr int kCachedPacks = 4;           // packs per thread kept in registers between the phases
constexpr int kTargetPacksPerThread = 2;  // fewer, shorter threads finish a decode row sooner

struct NormArgs {
  void* x;  // x (rms_norm) or residual (add_rms_norm, read and written)
  DType x_dtype;
  const void* delta;
  DType delta_dtype;
  float delta_scale;
  const void* weight;
  DType weight_dtype;
  float eps;
  void* out;
  DType out_dtype;
  int64_t dim;
};

template <int kPack, bool kAdd>
__device__ __forceinline__ void load_row_pack(const NormArgs& a, int64_t index, float (&v)[kPack]) {
  load_f32_dyn<kPack>(a.x, a.x_dtype, index, v);
  if constexpr (kAdd) {
    float d[kPack];
    load_f32_dyn<kPack>(a.delta, a.delta_dtype, index, d);
#pragma unroll
    for (int j = 0; j < kPack; ++j) v[j] = round_through_dyn(a.x_dtype, v[j] + a.delta_scale * d[j]);
    store_f32_dyn<kPack>(a.x, a.x_dtype, index, v);
  }
}

template <int kPack>
__device__ __forceinline__ void write_out_pack(const NormArgs& a, int64_t row_base, int64_t col, float inv,
                                               const float (&v)[kPack]) {
  float w[kPack], o[kPack];
  load_f32_dyn<kPack>(a.weight, a.weight_dtype, col, w);
#pragma unroll
  for (int j = 0; j < kPack; ++j) o[j] = w[j] * (v[j] * inv);
  store_f32_dyn<kPack>(a.out, a.out_dtype, row_base + col, o);
}

template <int kPack, bool kAdd>
__global__ void __launch_bounds__(kMaxThreads, 1) norm_kernel(NormArgs a) {
  __shared__ float scratch[kWarpSize];
  pdl_launch_dependents();
  pdl_wait();  // x, delta and out belong to earlier kernels
  const int64_t row_base = static_cast<int64_t>(blockIdx.x) * a.dim;
  const int64_t packs = a.dim / kPack;
  const int64_t stride = blockDim.x;

  float cache[kCachedPacks][kPack];
  float sum_sq = 0.0f;
#pragma unroll
  for (int c = 0; c < kCachedPacks; ++c) {
    const int64_t p = threadIdx.x + c * stride;
    if (p < packs) {
      load_row_pack<kPack, kAdd>(a, row_base + p * kPack, cache[c]);
#pragma unroll
      for (int j = 0; j < kPack; ++j) sum_sq += cache[c][j] * cache[c][j];
    }
  }
  for (int64_t p = threadIdx.x + kCachedPacks * stride; p < packs; p += stride) {
    float v[kPack];
    load_row_pack<kPack, kAdd>(a, row_base + p * kPack, v);
#pragma unroll
    for (int j = 0; j < kPack; ++j) sum_sq += v[j] * v[j];
  }

  const float total = block_sum(sum_sq, scratch);
  const float inv = 1.0f / sqrtf(total / static_cast<float>(a.dim) + a.eps);

#pragma unroll
  for (int c = 0; c < kCachedPacks; ++c) {
    const int64_t p = threadIdx.x + c * stride;
    if (p < packs) write_out_pack<kPack>(a, row_base, p * kPack, inv, cache[c]);
  }
  for (int64_t p = threadIdx.x + kCachedPacks * stride; p < packs; p += stride) {
    float v[kPack];
    load_f32_dyn<kPack>(a.x, a.x_dtype, row_base + p * kPack, v);  // as stored in phase 1
    write_out_pack<kPack>(a, row_base, p * kPack, inv, v);
  }
}

template <bool kAdd>
void launch_norm(CudaContext& ctx, const NormArgs& args, int64_t rows, const char* what) {
  if (rows == 0 || args.dim == 0) return;
  bool vector_path = args.dim % kPackElems == 0 && is_aligned(args.x, vector_alignment(args.x_dtype, kPackElems)) &&
                     is_aligned(args.weight, vector_alignment(args.weight_dtype, kPackElems)) &&
                     is_aligned(args.out, vector_alignment(args.out_dtype, kPackElems));
  if (kAdd) vector_path = vector_path && is_aligned(args.delta, vector_alignment(args.delta_dtype, kPackElems));
  const int64_t packs = args.dim / (vector_path ? kPackElems : 1);
  const int threads = static_cast<int>(std::clamp<int64_t>(
      ceil_div<int64_t>(ceil_div<int64_t>(packs, kTargetPacksPerThread), kWarpSize) * kWarpSize, kWarpSize, kMaxThreads));
  const dim3 grid(static_cast<unsigned>(rows));
  launch_kernel(ctx, what, vector_path ? norm_kernel<kPackElems, kAdd> : norm_kernel<1, kAdd>, grid, dim3(threads), 0,
                args);
}

}  // namespace

void rms_norm(CudaContext& ctx, const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  NormArgs a{x.data, x.dtype, nullptr, DType::F32, 0.0f, weight.data, weight.dtype, eps, out.data, out.dtype,
             x.row_size()};
  launch_norm<false>(ctx, a, x.rows(), "rms_norm");
}

void add_rms_norm(CudaContext& ctx, Tensor& residual, const Tensor& delta, float delta_scale, const Tensor& weight,
                  float eps, Tensor& out) {
  NormArgs a{residual.data, residual.dtype, delta.data, delta.dtype, delta_scale, weight.data, weight.dtype, eps,
             out.data, out.dtype, residual.row_size()};
  launch_norm<true>(ctx, a, residual.rows(), "add_rms_norm");
}

}  // namespace specula::ops::cuda_impl
