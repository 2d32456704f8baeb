// Error checking for CUDA runtime calls inside the CUDA backend: every call's status becomes a
// specula::Error naming the call, file and line (the library never aborts).
#pragma once

#include <cuda_runtime.h>

#include "specula/core/error.h"

#define SPECULA_CUDA_CHECK(call)                                                                   \
  do {                                                                                             \
    const cudaError_t specula_cuda_status_ = (call);                                               \
    if (specula_cuda_status_ != cudaSuccess)                                                       \
      ::specula::fail(#call, " failed at ", __FILE__, ":", __LINE__, ": ",                         \
                      cudaGetErrorString(specula_cuda_status_));                                   \
  } while (0)

// After a kernel launch: reports a bad launch configuration immediately (no sync).
#define SPECULA_CUDA_CHECK_LAUNCH(what) ::specula::cuda::CudaContext::check_launch(what)
