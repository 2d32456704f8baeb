// CUDA ops::top_k_log_softmax: one block per row (drafting asks for top_k rows of a 8K-152K
// vocabulary at a time). Each thread streams its strided share of the row once, keeping an
// online max/sum for the log-sum-exp and its own best K keys in registers (sorted insertion,
// most elements rejected by one compare); the block's THREADS * K keys are then bitonic-sorted
// in shared memory and the first k written. A key packs the value's order-preserving bits above
// the complemented index, so one unsigned comparison ranks by value and then by lower index
// (the CPU reference's rule); NaN keys keep only the index, so NaN is never chosen while a
// number is left (and then the lowest-index NaN first, as on the CPU).
#include <cuda_runtime.h>

#include <cstdint>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/top_k.h"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kSortKeys = 4096;  // THREADS * K for every instantiation: 32 KB of keys in shared memory

__device__ __forceinline__ uint64_t make_key(float v, int64_t index) {
  if (v != v) return 0xFFFFFFFFu - static_cast<uint32_t>(index);  // NaN: below every number, lower index first
  uint32_t u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(u) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(index));
}
__device__ __forceinline__ float key_value(uint64_t key) {
  uint32_t u = static_cast<uint32_t>(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
  return __uint_as_float(u);
}
__device__ __forceinline__ int32_t key_index(uint64_t key) {
  return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

template <int K, int THREADS>
__global__ void __launch_bounds__(THREADS)
    top_k_log_softmax_kernel(const float* logits, int64_t vocab, int k, float* values, int32_t* indices) {
  static_assert(K * THREADS == kSortKeys, "the sort buffer holds THREADS * K keys");
  __shared__ uint64_t keys[kSortKeys];
  __shared__ float red_max[THREADS / 32], red_sum[THREADS / 32];
  const int64_t row = blockIdx.x;
  const float* x = logits + row * vocab;
  const int tid = threadIdx.x;

  uint64_t best[K];
#pragma unroll
  for (int j = 0; j < K; ++j) best[j] = 0;
  float m = -INFINITY, s = 0.0f;
  for (int64_t i = tid; i < vocab; i += THREADS) {
    const float v = x[i];
    if (v == v && v != -INFINITY) {
      if (v > m) {
        s = s * expf(m - v) + 1.0f;
        m = v;
      } else {
        s += expf(v - m);
      }
    }
    const uint64_t key = make_key(v, i);
    if (key > best[K - 1]) {
      // Sorted insertion, unrolled so the list stays in registers.
      uint64_t carry = key;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const uint64_t cur = best[j];
        const bool take = carry > cur;
        best[j] = take ? carry : cur;
        carry = take ? cur : carry;
      }
    }
  }
  // Block log-sum-exp: merge (m, s) pairs across the warp, then across warps.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float om = __shfl_xor_sync(0xFFFFFFFFu, m, off), os = __shfl_xor_sync(0xFFFFFFFFu, s, off);
    const float nm = fmaxf(m, om);
    s = (m == -INFINITY ? 0.0f : s * expf(m - nm)) + (om == -INFINITY ? 0.0f : os * expf(om - nm));
    m = nm;
  }
  if ((tid & 31) == 0) {
    red_max[tid / 32] = m;
    red_sum[tid / 32] = s;
  }
#pragma unroll
  for (int j = 0; j < K; ++j) keys[tid * K + j] = best[j];
  __syncthreads();
  float lse_max = -INFINITY, lse_sum = 0.0f;
  for (int w = 0; w < THREADS / 32; ++w) {
    const float wm = red_max[w];
    const float nm = fmaxf(lse_max, wm);
    lse_sum = (lse_max == -INFINITY ? 0.0f : lse_sum * expf(lse_max - nm)) +
              (wm == -INFINITY ? 0.0f : red_sum[w] * expf(wm - nm));
    lse_max = nm;
  }
  const float lse = lse_max + logf(lse_sum);

  block_sort_descending(keys, kSortKeys);
  for (int j = tid; j < k; j += THREADS) {
    const uint64_t key = keys[j];
    values[row * k + j] = (key >> 32) == 0 ? NAN : key_value(key) - lse;
    indices[row * k + j] = key_index(key);
  }
}

template <int K>
void launch(const Tensor& logits, Tensor& values, Tensor& indices, cudaStream_t stream) {
  constexpr int kThreads = kSortKeys / K;
  const int64_t rows = logits.dim(0);
  top_k_log_softmax_kernel<K, kThreads><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logits.as<const float>(), logits.dim(1), static_cast<int>(values.dim(1)), values.as<float>(),
      indices.as<int32_t>());
}

}  // namespace

void top_k_log_softmax(CudaContext& ctx, const Tensor& logits, Tensor& values, Tensor& indices) {
  const int64_t k = values.dim(1);
  SPECULA_CHECK(logits.dim(1) <= INT32_MAX, "top_k_log_softmax: rows longer than 2^31 entries");
  if (logits.dim(0) == 0) return;
  const cudaStream_t stream = stream_of(ctx);
  if (k <= 16) {
    launch<16>(logits, values, indices, stream);
  } else if (k <= 32) {
    launch<32>(logits, values, indices, stream);
  } else {
    launch<64>(logits, values, indices, stream);
  }
  SPECULA_CUDA_CHECK_LAUNCH("top_k_log_softmax");
}

}  // namespace specula::ops::cuda_impl
