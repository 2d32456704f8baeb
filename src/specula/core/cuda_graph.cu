// CudaGraph implementation (see cuda_graph.h).
#include <cuda_runtime.h>

#include "specula/core/cuda_graph.h"
#include "specula/core/error.h"

namespace specula {

namespace {
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail(what, " failed: ", cudaGetErrorString(err));
}
}  // namespace

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void CudaGraph::begin_capture(void* stream) {
  SPECULA_CHECK(exec_ == nullptr, "CUDA graph captured twice");
  check(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal),
        "cudaStreamBeginCapture");
}

void CudaGraph::end_capture(void* stream) {
  cudaGraph_t graph = nullptr;
  check(cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph), "cudaStreamEndCapture");
  graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  exec_ = exec;
}

void CudaGraph::abort_capture(void* stream) {
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();  // the failed capture's error is reported by the exception already in flight
}

void CudaGraph::launch(void* stream) const {
  SPECULA_CHECK(exec_ != nullptr, "CUDA graph launched before capture");
  check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), static_cast<cudaStream_t>(stream)), "cudaGraphLaunch");
}

}  // namespace specula
