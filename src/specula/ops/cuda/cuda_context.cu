// CudaContext implementation (see cuda_context.h).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"

namespace specula::cuda {

namespace {

// Compiled with the same architecture list as every kernel of the library, so its attributes
// tell which device code the driver picked for this device: PTX ISA version 9.0+ means the
// kernels' griddepcontrol instructions are there (code JIT-compiled from compute_80 PTX on a
// Hopper has none, and must not be launched with PDL).
__global__ void pdl_probe_kernel() {}

constexpr int kPdlMinComputeMajor = 9;
constexpr int kPdlMinPtxVersion = 90;

bool pdl_supported(const cudaDeviceProp& prop) {
  if (prop.major < kPdlMinComputeMajor) return false;
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, pdl_probe_kernel) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attributes.ptxVersion >= kPdlMinPtxVersion && attributes.binaryVersion >= kPdlMinPtxVersion;
}

// True when the environment variable `name` is set to anything but "" or "0" (the A/B switches
// SPECULA_NO_PDL, SPECULA_NO_BULK_GEMV, SPECULA_NO_FUSED_ATTENTION and SPECULA_SPARSE_TOKEN_TILES).
bool set_in_environment(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

}  // namespace

int parse_fused_attention_heads(const char* value) {
  if (value == nullptr || value[0] == '\0') return 0;
  const std::string text = value;
  SPECULA_CHECK(text == "0" || text == "1" || text == "2" || text == "4",
                "SPECULA_FUSED_ATTENTION_HEADS must be 1, 2 or 4 (or 0 for automatic), got '", text, "'");
  return text[0] - '0';
}

int64_t parse_fused_attention_max_rows(const char* value) {
  if (value == nullptr || value[0] == '\0') return kDefaultFusedAttentionMaxRows;
  const std::string text = value;
  char* end = nullptr;
  errno = 0;
  const long long rows = std::strtoll(text.c_str(), &end, 10);
  const bool digits_only = std::isdigit(static_cast<unsigned char>(text[0])) && *end == '\0';
  SPECULA_CHECK(digits_only && errno == 0 && rows >= 0,
                "SPECULA_FUSED_ATTENTION_MAX_ROWS must be a non-negative integer (cache rows), got '", text, "'");
  return static_cast<int64_t>(rows);
}

std::unique_ptr<CudaContext> CudaContext::create(int ordinal, size_t workspace_bytes) {
  std::string why;
  SPECULA_CHECK(cuda_device_available(&why), "no usable CUDA device: ", why);
  int count = 0;
  SPECULA_CUDA_CHECK(cudaGetDeviceCount(&count));
  SPECULA_CHECK(ordinal >= 0 && ordinal < count, "CUDA device ", ordinal, " does not exist (", count, " present)");
  SPECULA_CUDA_CHECK(cudaSetDevice(ordinal));
  std::unique_ptr<CudaContext> ctx(new CudaContext());
  cudaDeviceProp prop{};
  SPECULA_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal));
  ctx->info_.ordinal = ordinal;
  ctx->info_.name = prop.name;
  ctx->info_.sm_major = prop.major;
  ctx->info_.sm_minor = prop.minor;
  ctx->info_.multiprocessors = prop.multiProcessorCount;
  ctx->info_.total_memory = prop.totalGlobalMem;
  ctx->info_.max_shared_memory_per_block_optin = prop.sharedMemPerBlockOptin;
  ctx->info_.l2_cache_bytes = static_cast<size_t>(prop.l2CacheSize);
  SPECULA_CHECK(prop.major >= 8, "CUDA device ", prop.name, " has compute capability ", prop.major, ".", prop.minor,
                "; specula needs 8.0 (Ampere) or newer");
  ctx->programmatic_launch_supported_ = pdl_supported(prop);
  ctx->programmatic_launch_ = ctx->programmatic_launch_supported_ && !set_in_environment("SPECULA_NO_PDL");
  ctx->bulk_gemv_ = !set_in_environment("SPECULA_NO_BULK_GEMV");
  ctx->fused_decode_attention_ = !set_in_environment("SPECULA_NO_FUSED_ATTENTION");
  ctx->sparse_token_tiles_ = set_in_environment("SPECULA_SPARSE_TOKEN_TILES");
  ctx->fused_attention_max_rows_ = parse_fused_attention_max_rows(std::getenv("SPECULA_FUSED_ATTENTION_MAX_ROWS"));
  ctx->fused_attention_heads_ = parse_fused_attention_heads(std::getenv("SPECULA_FUSED_ATTENTION_HEADS"));

  cudaStream_t stream = nullptr;
  SPECULA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  ctx->stream_ = stream;
  cublasLtHandle_t lt = nullptr;
  const cublasStatus_t status = cublasLtCreate(&lt);
  SPECULA_CHECK(status == CUBLAS_STATUS_SUCCESS, "cublasLtCreate failed with status ", static_cast<int>(status));
  ctx->cublaslt_ = lt;
  if (workspace_bytes > 0) SPECULA_CUDA_CHECK(cudaMalloc(&ctx->workspace_, workspace_bytes));
  ctx->workspace_bytes_ = workspace_bytes;
  ctx->owns_workspace_ = workspace_bytes > 0;
  SPECULA_CUDA_CHECK(cudaMalloc(&ctx->error_word_, sizeof(uint32_t)));
  SPECULA_CUDA_CHECK(cudaMemset(ctx->error_word_, 0, sizeof(uint32_t)));
  return ctx;
}

CudaContext::~CudaContext() {
  // Destructors must not throw: errors here are ignored on purpose.
  if (stream_) cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  if (cublaslt_) cublasLtDestroy(static_cast<cublasLtHandle_t>(cublaslt_));
  if (workspace_ && owns_workspace_) cudaFree(workspace_);
  if (error_word_) cudaFree(error_word_);
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void CudaContext::adopt_workspace(void* data, size_t bytes) {
  SPECULA_CHECK(data != nullptr || bytes == 0, "CudaContext::adopt_workspace: null memory for ", bytes, " bytes");
  synchronize();  // nothing queued may still use the old workspace
  if (workspace_ && owns_workspace_) SPECULA_CUDA_CHECK(cudaFree(workspace_));
  workspace_ = data;
  workspace_bytes_ = bytes;
  owns_workspace_ = false;
}

void CudaContext::synchronize() const { SPECULA_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_))); }

void CudaContext::check_device_errors() {
  uint32_t word = 0;
  auto stream = static_cast<cudaStream_t>(stream_);
  SPECULA_CUDA_CHECK(cudaMemcpyAsync(&word, error_word_, sizeof word, cudaMemcpyDeviceToHost, stream));
  SPECULA_CUDA_CHECK(cudaMemsetAsync(error_word_, 0, sizeof word, stream));
  SPECULA_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (word == 0) return;
  std::string what;
  if (word & kErrorTokenOutOfRange) what += " token id outside the vocabulary;";
  if (word & kErrorSlotOutOfRange)
    what += " KV-cache slot or row outside the cache (attention slots, tree-mask window, kv_gather rows or count);";
  if (word & kErrorDraftTree) what += " draft tree: a draft id outside the FR-Spec list or a chosen node without its parent;";
  if (word & kErrorSparseSelect)
    what += " sparse_select: a tree query without exactly one ancestor at each position past the committed prefix;";
  fail("CUDA kernels reported invalid input:", what);
}

void CudaContext::check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fail(what, ": ", cudaGetErrorString(err));
}

bool cuda_device_available(std::string* why_not) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why_not) *why_not = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return false;
  }
  if (count == 0) {
    if (why_not) *why_not = "no CUDA devices found";
    return false;
  }
  return true;
}

}  // namespace specula::cuda
