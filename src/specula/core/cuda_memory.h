// Thin CUDA memory helpers; defined in cuda_memory.cu (CUDA builds only), so that host-only
// translation units never include CUDA headers.
//
// HostToDeviceStager moves checkpoint bytes from a memory map to device memory through two
// pinned buffers: the CPU fills one while the copy engine drains the other, so loading runs at
// PCIe speed instead of the pageable-memcpy path, and no pinned copy of the whole model is made.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace specula {

void* cuda_device_alloc(size_t bytes);
void cuda_device_free(void* ptr);
// Synchronous copies for small things (tests, step inputs outside graphs).
void cuda_copy_to_device(void* dst, const void* src, size_t bytes);
void cuda_copy_to_host(void* dst, const void* src, size_t bytes);
size_t cuda_free_memory();
// Page-locked host memory (for per-step inputs/outputs that CUDA graphs copy).
void* cuda_host_alloc(size_t bytes);
void cuda_host_free(void* ptr);
// Device-to-device copy bandwidth in GB/s counting bytes read plus bytes written (the METHOD.md
// convention), from the median of `repeats` cudaMemcpyAsync calls over `bytes`-sized buffers.
double cuda_measure_copy_bandwidth(size_t bytes, int repeats);
// Copies ordered on `stream` (a cudaStream_t) with the kernels around them. The host side of
// the copy may be reused as soon as the call returns for pageable memory; to_host waits for the
// stream so the result can be read immediately.
void cuda_copy_to_device_on(void* stream, void* dst, const void* src, size_t bytes);
void cuda_copy_to_host_on(void* stream, void* dst, const void* src, size_t bytes);
// An asynchronous copy in either direction (inferred from the addresses), for pinned buffers
// inside captured graphs; nothing waits for it.
void cuda_copy_async_on(void* stream, void* dst, const void* src, size_t bytes);

class HostToDeviceStager {
 public:
  explicit HostToDeviceStager(size_t chunk_bytes = size_t{64} << 20);
  ~HostToDeviceStager();
  HostToDeviceStager(const HostToDeviceStager&) = delete;
  HostToDeviceStager& operator=(const HostToDeviceStager&) = delete;

  // Copies `bytes` from host `src` (any alignment, e.g. a memory map) to device `dst`.
  void copy(void* dst, const void* src, size_t bytes);
  // Like copy, but `fill(staging, offset, length)` writes bytes [offset, offset + length) of the
  // device image into the pinned buffer itself (used to convert dtypes while loading).
  void copy_generated(void* dst, size_t bytes, const std::function<void(uint8_t*, size_t, size_t)>& fill);
  // Waits for all copies issued so far.
  void finish();

 private:
  uint8_t* staging_[2] = {nullptr, nullptr};
  void* done_[2] = {nullptr, nullptr};  // cudaEvent_t per buffer
  void* stream_ = nullptr;
  size_t chunk_bytes_ = 0;
  int next_ = 0;
};

}  // namespace specula
