// CUDA prefetch_to_l2: pulls a read-only tensor (a weight matrix) into L2 ahead of the op that
// reads it.
//
// Why: in a batch-1 decode step, the kernels between the QKV projection and the output
// projection (RoPE + cache store, attention and its split merge) are latency-bound: at short
// context they read a few MB, and DRAM sits mostly idle for several microseconds per layer. The
// output projection's weights (32 MB for Llama-3-8B) fit in the H100's 50 MB L2, so fetching them
// during that window turns idle DRAM time into weight streaming, and the projection then reads L2.
// The bytes read from DRAM per step stay the same.
//
// How: one thread per 64 KB chunk issues an asynchronous bulk prefetch (sm_90:
// cp.async.bulk.prefetch.L2, fire and forget, no completion to wait for); below sm_90 each line
// gets a prefetch.global.L2. The kernel follows the PDL contract (pdl.cuh) and waits for the
// previous kernel before it issues anything, so the prefetched lines are not evicted by the
// previous kernel's own stream, and the window they arrive in is the latency-bound one after it.
// Only addresses inside the tensor are prefetched: the bulk form covers the 16-byte-aligned
// interior, the ragged ends get line prefetches.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/pdl.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kThreads = 128;
constexpr uint64_t kChunkBytes = 64 * 1024;  // one bulk prefetch; a 32 MB matrix is 512 of them
constexpr uint64_t kLineBytes = 128;
constexpr uint64_t kBulkAlign = 16;  // cp.async.bulk address and size granularity

__device__ __forceinline__ void prefetch_line(const char* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

__device__ __forceinline__ void prefetch_range(const char* p, uint64_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(static_cast<uint32_t>(bytes)) : "memory");
#else
  for (uint64_t off = 0; off < bytes; off += kLineBytes) prefetch_line(p + off);
#endif
}

// begin/end: the 16-byte-aligned interior [begin, end) of the tensor [data, data + bytes).
__global__ void __launch_bounds__(kThreads) prefetch_l2_kernel(const char* data, uint64_t bytes, uint64_t begin,
                                                               uint64_t end) {
  pdl_launch_dependents();
  pdl_wait();
  const uint64_t thread = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const uint64_t threads = static_cast<uint64_t>(gridDim.x) * kThreads;
  for (uint64_t off = begin + thread * kChunkBytes; off < end; off += threads * kChunkBytes)
    prefetch_range(data + off, end - off < kChunkBytes ? end - off : kChunkBytes);
  if (thread == 0) {  // the ragged ends outside the aligned interior
    if (begin > 0) prefetch_line(data);
    if (end < bytes) prefetch_line(data + bytes - 1);
  }
}

}  // namespace

void prefetch_to_l2(CudaContext& ctx, const Tensor& t) {
  const uint64_t bytes = t.nbytes();
  if (bytes == 0 || !ctx.l2_prefetch()) return;
  const auto address = reinterpret_cast<uintptr_t>(t.data);
  const uint64_t begin = std::min<uint64_t>(bytes, (kBulkAlign - address % kBulkAlign) % kBulkAlign);
  const uint64_t end = std::max<uint64_t>(begin, begin + (bytes - begin) / kBulkAlign * kBulkAlign);
  const uint64_t chunks = (end - begin + kChunkBytes - 1) / kChunkBytes;
  const auto blocks = static_cast<unsigned>(std::clamp<uint64_t>((chunks + kThreads - 1) / kThreads, 1,
                                                                 static_cast<uint64_t>(ctx.info().multiprocessors)));
  launch_kernel(ctx, "prefetch_to_l2", prefetch_l2_kernel, dim3(blocks), dim3(kThreads), 0,
                static_cast<const char*>(t.data), bytes, begin, end);
}

}  // namespace specula::ops::cuda_impl
