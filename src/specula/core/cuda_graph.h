// CudaGraph: capture a sequence of launches on a stream once, replay it many times. The decode
// step is captured this way: every kernel reads the step's token, position and slot from device
// buffers, so one capture serves every step. Host-only header (no CUDA types); CUDA builds only.
#pragma once

namespace specula {

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Everything launched on `stream` between begin_capture and end_capture becomes the graph.
  // On an exception in between, call abort_capture() so the stream leaves capture mode.
  void begin_capture(void* stream);
  void end_capture(void* stream);
  void abort_capture(void* stream);
  void launch(void* stream) const;
  bool ready() const { return exec_ != nullptr; }

 private:
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
};

}  // namespace specula
