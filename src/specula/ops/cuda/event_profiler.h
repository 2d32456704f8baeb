// CudaEventProfiler: an ops::OpProfiler that brackets every op with CUDA events on the context's
// stream and sums GPU time per op name. Used by `specula bench --profile` to say where a decode
// step's time goes (eager launches, so the sums include launch gaps between kernels).
// Host-only header; CUDA builds only.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "specula/ops/ops.h"

namespace specula::cuda {

class CudaEventProfiler : public ops::OpProfiler {
 public:
  explicit CudaEventProfiler(CudaContext& ctx) : ctx_(ctx) {}
  ~CudaEventProfiler() override;
  void begin(std::string_view op) override;
  void end(std::string_view op) override;
  // Later ops are reported as "label: op".
  void section(std::string_view label) override { section_ = std::string(label); }
  // Waits for the stream and returns op -> (calls, total milliseconds) since the last report.
  std::map<std::string, std::pair<int, double>> report();

 private:
  struct Pending {
    std::string op;
    void* start;
    void* stop;
  };
  CudaContext& ctx_;
  std::string section_;
  std::vector<Pending> pending_;
  std::vector<void*> free_events_;
  void* take_event();
};

}  // namespace specula::cuda
