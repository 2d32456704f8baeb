// Running one op on the backend its tensors live on, for the op families dispatched outside
// ops.cpp (draft trees, InfLLM-V2 selection): the profiler section around it, the thread pool on
// the CPU, the CUDA context on the GPU, and one message when either is missing or the build has no
// CUDA backend. `on_cpu` takes the ThreadPool&, `on_cuda` the cuda::CudaContext& (only called, and
// so only compiled into anything, in CUDA builds).
#pragma once

#include <string_view>

#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/ops.h"

namespace specula::ops {

template <typename CpuFn, typename CudaFn>
void run_on_device(std::string_view op, OpContext& ctx, Device device, CpuFn&& on_cpu,
                   [[maybe_unused]] CudaFn&& on_cuda) {
  if (ctx.profiler) ctx.profiler->begin(op);
  if (device == Device::CPU) {
    SPECULA_CHECK(ctx.pool != nullptr, op, ": CPU tensors but no thread pool in the op context");
    on_cpu(*ctx.pool);
  } else {
#ifdef SPECULA_WITH_CUDA
    SPECULA_CHECK(ctx.cuda != nullptr, op, ": CUDA tensors but no CUDA context in the op context");
    on_cuda(*ctx.cuda);
#else
    fail(op, ": CUDA tensors but this build has no CUDA backend");
#endif
  }
  if (ctx.profiler) ctx.profiler->end(op);
}

}  // namespace specula::ops
