// CUDA allocation and host<->device copies (see cuda_memory.h). Errors become specula::Error
// naming the call and size.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "specula/core/cuda_memory.h"
#include "specula/core/error.h"

namespace specula {

namespace {
void check(cudaError_t err, const char* what, size_t bytes) {
  if (err != cudaSuccess) fail(what, " (", bytes, " bytes) failed: ", cudaGetErrorString(err));
}
}  // namespace

void* cuda_device_alloc(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc", bytes);
  return p;
}

void cuda_device_free(void* ptr) { cudaFree(ptr); }

void cuda_copy_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy host to device", bytes);
  // A pageable copy may return before its DMA lands; kernels on non-blocking streams would not
  // wait for it.
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after a host to device copy", bytes);
}

void cuda_copy_to_host(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy device to host", bytes);
}

void cuda_copy_to_device_on(void* stream, void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync host to device", bytes);
}

void cuda_copy_to_host_on(void* stream, void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync device to host", bytes);
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize", bytes);
}

void cuda_copy_async_on(void* stream, void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)), "cudaMemcpyAsync",
        bytes);
}

size_t cuda_free_memory() {
  size_t free_bytes = 0, total = 0;
  check(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo", 0);
  return free_bytes;
}

void* cuda_host_alloc(size_t bytes) {
  void* p = nullptr;
  check(cudaMallocHost(&p, bytes), "cudaMallocHost", bytes);
  return p;
}

void cuda_host_free(void* ptr) { cudaFreeHost(ptr); }

double cuda_measure_copy_bandwidth(size_t bytes, int repeats) {
  void *a = nullptr, *b = nullptr;
  check(cudaMalloc(&a, bytes), "cudaMalloc", bytes);
  check(cudaMalloc(&b, bytes), "cudaMalloc", bytes);
  check(cudaMemset(a, 1, bytes), "cudaMemset", bytes);
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaEventCreate(&start), "cudaEventCreate", 0);
  check(cudaEventCreate(&stop), "cudaEventCreate", 0);
  std::vector<float> ms;
  for (int i = 0; i < repeats + 2; ++i) {
    check(cudaEventRecord(start), "cudaEventRecord", 0);
    check(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpyAsync", bytes);
    check(cudaEventRecord(stop), "cudaEventRecord", 0);
    check(cudaEventSynchronize(stop), "cudaEventSynchronize", 0);
    float t = 0;
    check(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime", 0);
    if (i >= 2) ms.push_back(t);  // the first two warm up
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  std::sort(ms.begin(), ms.end());
  const double median_s = ms[ms.size() / 2] * 1e-3;
  return 2.0 * static_cast<double>(bytes) / median_s / 1e9;
}

HostToDeviceStager::HostToDeviceStager(size_t chunk_bytes) : chunk_bytes_(chunk_bytes) {
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate", 0);
  stream_ = stream;
  for (int i = 0; i < 2; ++i) {
    check(cudaMallocHost(reinterpret_cast<void**>(&staging_[i]), chunk_bytes_), "cudaMallocHost", chunk_bytes_);
    cudaEvent_t ev = nullptr;
    check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate", 0);
    done_[i] = ev;
  }
}

HostToDeviceStager::~HostToDeviceStager() {
  if (stream_) cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  for (int i = 0; i < 2; ++i) {
    if (staging_[i]) cudaFreeHost(staging_[i]);
    if (done_[i]) cudaEventDestroy(static_cast<cudaEvent_t>(done_[i]));
  }
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void HostToDeviceStager::copy(void* dst, const void* src, size_t bytes) {
  const auto* bytes_src = static_cast<const uint8_t*>(src);
  copy_generated(dst, bytes, [&](uint8_t* out, size_t offset, size_t length) {
    std::memcpy(out, bytes_src + offset, length);
  });
}

void HostToDeviceStager::copy_generated(void* dst, size_t bytes,
                                        const std::function<void(uint8_t*, size_t, size_t)>& fill) {
  auto stream = static_cast<cudaStream_t>(stream_);
  for (size_t offset = 0; offset < bytes; offset += chunk_bytes_) {
    const size_t length = std::min(chunk_bytes_, bytes - offset);
    const int buffer = next_;
    next_ ^= 1;
    // The buffer's previous copy must have left it before the CPU overwrites it.
    check(cudaEventSynchronize(static_cast<cudaEvent_t>(done_[buffer])), "cudaEventSynchronize", length);
    fill(staging_[buffer], offset, length);
    check(cudaMemcpyAsync(static_cast<uint8_t*>(dst) + offset, staging_[buffer], length, cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync host to device", length);
    check(cudaEventRecord(static_cast<cudaEvent_t>(done_[buffer]), stream), "cudaEventRecord", 0);
  }
}

void HostToDeviceStager::finish() {
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "cudaStreamSynchronize", 0);
}

}  // namespace specula
