// Programmatic dependent launch (PDL, sm_90+) for the decode-path kernels: the device-side wait
// and trigger, and the host launch that asks for it.
//
// Why: a batch-1 decode step is ~230 kernels of a few to a few tens of microseconds, so every
// kernel boundary (the previous grid's last wave draining, then the next grid's launch and ramp)
// is a bubble in the weight stream. A kernel launched with programmatic stream serialization may
// start once every block of the previous kernel has called pdl_launch_dependents() (or exited):
// its blocks become resident early, and a GEMV can already pull its first weight tiles.
//
// The contract every kernel launched through launch_kernel() keeps:
// - pdl_wait() is called by every thread, on every path, before the first access (read OR write:
//   a write could race a reader in the previous grid) to memory that an earlier op in the stream
//   writes: activations, caches, slots/positions, the workspace, the error word. It returns once
//   the previous grid has completed and its writes are visible. Only data no kernel writes during
//   a step (weights, norm weights, RoPE tables) may be touched before it.
// - Because each converted kernel waits unconditionally, its completion implies its
//   predecessor's, so visibility stays transitive along the stream.
// - pdl_launch_dependents() may come anywhere; the kernels here call it first thing, since it
//   only lets the next grid's blocks be scheduled (they then sit in their own pdl_wait()).
// Kernels that do not wait (not converted) must be launched plainly (<<<>>>), which keeps full
// serialization. On sm_80 the device calls compile to nothing and the context never sets the
// attribute; launched without the attribute, griddepcontrol.wait returns at once, so converted
// kernels are also correct in plain launches. Stream capture records the programmatic edges.
//
// Compiled only by nvcc (included from .cu files only).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_context.h"

namespace specula::ops::cuda_impl {

// Blocks until the grids this one depends on have completed and their memory is visible.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Allows the next kernel in the stream (if launched with PDL) to be scheduled.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Asks L2 to fetch the line holding `p`, for read-only data a kernel wants before its pdl_wait()
// returns. Nothing below sm_90, where kernels never start early and the load follows at once.
__device__ __forceinline__ void pdl_prefetch_l2(const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization
// when `programmatic` (the context's programmatic_launch()) and, when cluster_x > 0, in thread-block
// clusters of cluster_x x 1 x 1 blocks (sm_90; grid.x must be a multiple). Throws "<what>: <error>"
// if the launch is rejected. The kernel must follow the contract above.
template <typename... Params, typename... Args>
void launch_kernel_clustered(cudaStream_t stream, bool programmatic, const char* what, void (*kernel)(Params...),
                             dim3 grid, dim3 block, size_t smem, unsigned cluster_x, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attributes[2]{};
  unsigned count = 0;
  if (programmatic) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  if (cluster_x > 0) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count].val.clusterDim.x = cluster_x;
    attributes[count].val.clusterDim.y = 1;
    attributes[count].val.clusterDim.z = 1;
    ++count;
  }
  config.attrs = count > 0 ? attributes : nullptr;
  config.numAttrs = count;
  const cudaError_t status = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (status != cudaSuccess) {
    cudaGetLastError();  // the launch error is not sticky; clear it so later checks start clean
    fail(what, ": ", cudaGetErrorString(status));
  }
}

template <typename... Params, typename... Args>
void launch_kernel(cudaStream_t stream, bool programmatic, const char* what, void (*kernel)(Params...), dim3 grid,
                   dim3 block, size_t smem, Args&&... args) {
  launch_kernel_clustered(stream, programmatic, what, kernel, grid, block, smem, 0u, std::forward<Args>(args)...);
}

template <typename... Params, typename... Args>
void launch_kernel(const specula::cuda::CudaContext& ctx, const char* what, void (*kernel)(Params...), dim3 grid,
                   dim3 block, size_t smem, Args&&... args) {
  launch_kernel(static_cast<cudaStream_t>(ctx.stream()), ctx.programmatic_launch(), what, kernel, grid, block, smem,
                std::forward<Args>(args)...);
}

}  // namespace specula::ops::cuda_impl
