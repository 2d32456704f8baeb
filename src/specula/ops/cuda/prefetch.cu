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
#include <cstdlib>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/pdl.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr uint64_t kLineBytes = 128;
constexpr uint64_t kBulkChunkBytes = 16 * 1024;
constexpr uint64_t kBulkAlign = 16;

__device__ __forceinline__ void prefetch_line(const char* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Line mode: thread i prefetches lines i, i + threads, ... of the tensor (the first line's
// address clamped to the tensor's start).
__global__ void __launch_bounds__(kThreads) prefetch_lines_kernel(const char* data, uint64_t bytes) {
  pdl_launch_dependents();
  pdl_wait();
  const uint64_t head = reinterpret_cast<uintptr_t>(data) % kLineBytes;
  const uint64_t lines = (head + bytes + kLineBytes - 1) / kLineBytes;
  const uint64_t threads = static_cast<uint64_t>(gridDim.x) * kThreads;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x; i < lines; i += threads)
    prefetch_line(data + (i == 0 ? 0 : i * kLineBytes - head));
}

// Bulk mode (sm_90): one cp.async.bulk.prefetch.L2 per 16 KB chunk of the aligned interior.
__global__ void __launch_bounds__(kThreads) prefetch_bulk_kernel(const char* data, uint64_t bytes, uint64_t begin,
                                                                 uint64_t end) {
  pdl_launch_dependents();
  pdl_wait();
  const uint64_t thread = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const uint64_t threads = static_cast<uint64_t>(gridDim.x) * kThreads;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  for (uint64_t off = begin + thread * kBulkChunkBytes; off < end; off += threads * kBulkChunkBytes) {
    const uint64_t n = end - off < kBulkChunkBytes ? end - off : kBulkChunkBytes;
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(data + off), "r"(static_cast<uint32_t>(n))
                 : "memory");
  }
#endif
  if (thread == 0) {
    if (begin > 0) prefetch_line(data);
    if (end < bytes) prefetch_line(data + bytes - 1);
  }
}

}  // namespace

void prefetch_to_l2(CudaContext& ctx, const Tensor& t) {
  const uint64_t bytes = t.nbytes();
  if (bytes == 0 || !ctx.l2_prefetch()) return;
  const auto blocks = static_cast<unsigned>(ctx.info().multiprocessors);
  static const bool bulk = std::getenv("SPECULA_L2_PREFETCH_BULK") != nullptr;  // EXPERIMENT
  if (bulk && ctx.info().sm_major >= 9) {
    const auto address = reinterpret_cast<uintptr_t>(t.data);
    const uint64_t begin = std::min<uint64_t>(bytes, (kBulkAlign - address % kBulkAlign) % kBulkAlign);
    const uint64_t end = std::max<uint64_t>(begin, begin + (bytes - begin) / kBulkAlign * kBulkAlign);
    launch_kernel(ctx, "prefetch_to_l2", prefetch_bulk_kernel, dim3(blocks), dim3(kThreads), 0,
                  static_cast<const char*>(t.data), bytes, begin, end);
    return;
  }
  launch_kernel(ctx, "prefetch_to_l2", prefetch_lines_kernel, dim3(blocks), dim3(kThreads), 0,
                static_cast<const char*>(t.data), bytes);
}

}  // namespace specula::ops::cuda_impl
