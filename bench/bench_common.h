// Helpers shared by the CUDA micro-benchmarks (attention_bench.cpp, cuda_kernels_bench.cpp):
// error checks, a device buffer, and event timing with warm-up and a median, as METHOD.md asks.
// The copy-bandwidth baseline is specula::cuda_measure_copy_bandwidth (core/cuda_memory.h), the
// same probe `specula bench` uses, so every benchmark divides by one definition of bandwidth.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "specula/core/cuda_graph.h"
#include "specula/core/error.h"

namespace specula::bench {

constexpr int kWarmup = 3;
constexpr size_t kCopyBytes = size_t{1} << 30;  // device-to-device copy probe

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail(what, ": ", cudaGetErrorString(err));
}

class DeviceMemory {
 public:
  explicit DeviceMemory(size_t bytes) { check(cudaMalloc(&ptr_, std::max<size_t>(bytes, 1)), "cudaMalloc"); }
  ~DeviceMemory() { cudaFree(ptr_); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median milliseconds of `body` over `repeats` runs on `stream`, after kWarmup untimed runs.
template <typename Body>
double time_ms(cudaStream_t stream, int repeats, Body&& body) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < kWarmup; ++i) body();
  check(cudaStreamSynchronize(stream), "warm-up");
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    check(cudaEventRecord(start, stream), "cudaEventRecord");
    body();
    check(cudaEventRecord(stop, stream), "cudaEventRecord");
    check(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return median(times);
}

// Captures `calls` (the work of one replay, issued on `stream`) into a CUDA graph, replays it
// `repeats` times as time_ms does and returns the median milliseconds per replay. The decode
// benchmarks run this way because the engine replays its steps as graphs.
template <typename Calls>
double time_graph_ms(cudaStream_t stream, int repeats, Calls&& calls) {
  CudaGraph graph;
  graph.begin_capture(stream);
  try {
    calls();
  } catch (...) {
    graph.abort_capture(stream);
    throw;
  }
  graph.end_capture(stream);
  return time_ms(stream, repeats, [&] { graph.launch(stream); });
}

// How many distinct copies of an operand of `bytes` one replay should rotate through so that it
// reads `l2_multiple` times the L2 cache (at least `at_least`), within `max_bytes` in all.
inline int rotation_copies(size_t bytes, size_t l2_bytes, int l2_multiple, size_t max_bytes, int at_least) {
  const size_t want = static_cast<size_t>(l2_multiple) * std::max<size_t>(l2_bytes, 1);
  const size_t copies = std::max<size_t>(static_cast<size_t>(at_least), (want + bytes - 1) / bytes);
  return static_cast<int>(std::min(copies, std::max<size_t>(1, max_bytes / bytes)));
}

// The command line both micro-benchmarks take: [--json PATH] [--repeats N] [--only SECTION,...]
// (sections by substring: each benchmark's usage line names its sections).
struct BenchArgs {
  std::string json_path;  // empty: no JSON report
  int repeats = 0;
  std::vector<std::string> only;  // --only a,b: run the sections whose names contain one of these

  bool wants(const std::string& section) const {
    if (only.empty()) return true;
    for (const std::string& o : only)
      if (section.find(o) != std::string::npos) return true;
    return false;
  }
};

// Parses argv; on anything else (or a --repeats that is not a positive integer) prints why to
// stderr and returns nothing (the caller exits with 2).
inline std::optional<BenchArgs> parse_bench_args(int argc, char** argv, int default_repeats) {
  BenchArgs args;
  args.repeats = default_repeats;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) {
      args.json_path = argv[++i];
    } else if (arg == "--repeats" && i + 1 < argc) {
      char* end = nullptr;
      const long n = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || n < 1 || n > 1000000) {
        std::fprintf(stderr, "%s: --repeats wants a positive integer, got '%s'\n", argv[0], argv[i]);
        return std::nullopt;
      }
      args.repeats = static_cast<int>(n);
    } else if (arg == "--only" && i + 1 < argc) {
      std::string list = argv[++i];
      for (size_t at = 0; at <= list.size();) {
        const size_t comma = std::min(list.find(',', at), list.size());
        if (comma > at) args.only.push_back(list.substr(at, comma - at));
        at = comma + 1;
      }
    } else {
      std::fprintf(stderr, "usage: %s [--json PATH] [--repeats N] [--only SECTION,...]\n", argv[0]);
      return std::nullopt;
    }
  }
  return args;
}

}  // namespace specula::bench
