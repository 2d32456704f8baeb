// CUDA fill_random: the same hash as the CPU implementation (ops/random_hash.h), so a random
// model built on the GPU equals the one built on the CPU bit for bit. Used by benchmarks to make
// an 8B-shaped model in device memory without a 16 GB file.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/random_hash.h"

namespace specula::ops::cuda_impl {

namespace {
constexpr int kThreads = 256;

template <typename T>
__device__ T from_float(float v);
template <>
__device__ float from_float<float>(float v) { return v; }
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __half from_float<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__global__ void fill_random_kernel(T* out, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(random_uniform_symmetric(seed, static_cast<uint64_t>(i), scale));
}

template <typename T>
void launch(CudaContext& ctx, void* data, int64_t n, uint64_t seed, float scale) {
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{ctx.info().multiprocessors} * 32);
  fill_random_kernel<T><<<static_cast<unsigned>(std::max<int64_t>(blocks, 1)), kThreads, 0,
                          static_cast<cudaStream_t>(ctx.stream())>>>(static_cast<T*>(data), n, seed, scale);
  SPECULA_CUDA_CHECK_LAUNCH("fill_random");
}
}  // namespace

void fill_random(CudaContext& ctx, Tensor& t, uint64_t seed, float scale) {
  switch (t.dtype) {
    case DType::F32: launch<float>(ctx, t.data, t.numel(), seed, scale); break;
    case DType::BF16: launch<__nv_bfloat16>(ctx, t.data, t.numel(), seed, scale); break;
    default: launch<__half>(ctx, t.data, t.numel(), seed, scale); break;
  }
}

}  // namespace specula::ops::cuda_impl
