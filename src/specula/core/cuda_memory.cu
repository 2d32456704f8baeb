// CUDA device allocation for Arena: errors become specula::Error with the size asked.
#include <cuda_runtime.h>

#include "specula/core/cuda_memory.h"
#include "specula/core/error.h"

namespace specula {

void* cuda_device_alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) fail("cudaMalloc of ", bytes, " bytes failed: ", cudaGetErrorString(err));
  return p;
}

void cuda_device_free(void* ptr) { cudaFree(ptr); }

}  // namespace specula
