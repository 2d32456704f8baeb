// CudaEventProfiler implementation (see event_profiler.h).
#include <cuda_runtime.h>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/event_profiler.h"

namespace specula::cuda {

CudaEventProfiler::~CudaEventProfiler() {
  for (const Pending& p : pending_) {
    cudaEventDestroy(static_cast<cudaEvent_t>(p.start));
    cudaEventDestroy(static_cast<cudaEvent_t>(p.stop));
  }
  for (void* e : free_events_) cudaEventDestroy(static_cast<cudaEvent_t>(e));
}

void* CudaEventProfiler::take_event() {
  if (!free_events_.empty()) {
    void* e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  SPECULA_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}

void CudaEventProfiler::begin(std::string_view op) {
  void* start = take_event();
  SPECULA_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(start), static_cast<cudaStream_t>(ctx_.stream())));
  pending_.push_back({section_.empty() ? std::string(op) : section_ + ": " + std::string(op), start, nullptr});
}

void CudaEventProfiler::end(std::string_view) {
  void* stop = take_event();
  SPECULA_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(stop), static_cast<cudaStream_t>(ctx_.stream())));
  pending_.back().stop = stop;
}

std::map<std::string, std::pair<int, double>> CudaEventProfiler::report() {
  SPECULA_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(ctx_.stream())));
  std::map<std::string, std::pair<int, double>> totals;
  for (const Pending& p : pending_) {
    float ms = 0;
    SPECULA_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(p.start), static_cast<cudaEvent_t>(p.stop)));
    auto& [calls, total] = totals[p.op];
    ++calls;
    total += ms;
    free_events_.push_back(p.start);
    free_events_.push_back(p.stop);
  }
  pending_.clear();
  return totals;
}

}  // namespace specula::cuda
