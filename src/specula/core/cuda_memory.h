// Thin CUDA allocation helpers used by Arena; defined in cuda_memory.cu (CUDA builds only),
// so that host-only translation units never include CUDA headers.
#pragma once

#include <cstddef>

namespace specula {
void* cuda_device_alloc(size_t bytes);
void cuda_device_free(void* ptr);
}  // namespace specula
