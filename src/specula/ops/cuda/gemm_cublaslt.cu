// cuBLASLt path of the CUDA linear op, for token counts above the small-M GEMM's (prefill chunks)
// and for the short batches that one declines (F32 weights, K not a multiple of 64, a workspace
// too small for its partial sums): tensor cores for bf16/f16 weights, fp32 accumulation, output in
// out's dtype (the weights' 16-bit dtype or F32), bias fused as cuBLASLt's epilogue where it can be.
//
// Row-major to cuBLAS's column-major: out[T, N] row-major is out^T [N, T] column-major, and
// out^T = W x^T, where W [N, K] row-major is a column-major K x N matrix used transposed and
// x [T, K] row-major a column-major K x T matrix used as is ("TN", the layout every cuBLASLt
// kernel family supports).
//
// Nothing here allocates device memory or synchronises (the op runs inside graph capture): the
// workspace is the context's, and the per-shape state (descriptors, layouts, the heuristic's
// algorithm) is built on first use and kept in a cache owned by the CudaContext, so a repeated
// shape costs one map lookup. An x whose dtype differs from the weights' (F32 residual-stream
// activations, say) is converted chunk by chunk into the front half of the workspace first; that
// rounds x to the weights' 16-bit dtype, the usual precision of a bf16 GEMM.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/linear_impl.h"

namespace specula::ops::cuda_impl {

namespace {

constexpr uint32_t kMaxAlignment = 256;        // cuBLASLt's default (and largest) alignment preference
constexpr size_t kBiasEpilogueAlignment = 16;  // bias vectors less aligned than this take the separate kernel
constexpr int64_t kMinConvertChunkTokens = 16;  // fewer tokens per converted chunk: not worth it, use the GEMV
constexpr int kBiasThreads = 256;
constexpr int kBiasBlocksPerSm = 4;

cudaDataType_t cuda_data_type(DType d) {
  switch (d) {
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: return CUDA_R_32F;
  }
}

// Largest power of two (up to 256) dividing the address.
uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 1;
  while (a < kMaxAlignment && address % (2 * a) == 0) a *= 2;
  return a;
}

void check_lt(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("linear: cuBLASLt ", what, " failed with status ", static_cast<int>(status));
}

struct PlanKey {
  int64_t n, k, tokens;
  DType ab, out;
  bool bias_epilogue;
  uint32_t align_a, align_b, align_d;
  size_t workspace_bytes;
  bool operator<(const PlanKey& o) const {
    return std::tie(n, k, tokens, ab, out, bias_epilogue, align_a, align_b, align_d, workspace_bytes) <
           std::tie(o.n, o.k, o.tokens, o.ab, o.out, o.bias_epilogue, o.align_a, o.align_b, o.align_d,
                    o.workspace_bytes);
  }
};

// Descriptors for one shape and the algorithm cuBLASLt's heuristic picked (found == false: none).
class Plan {
 public:
  Plan(const PlanKey& key, cublasLtHandle_t handle) {
    check_lt(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul descriptor");
    const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
    check_lt(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose), "TRANSA");
    check_lt(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof keep), "TRANSB");
    if (key.bias_epilogue) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      check_lt(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue),
               "bias epilogue");
    }
    const cudaDataType_t ab = cuda_data_type(key.ab), out = cuda_data_type(key.out);
    const auto n = static_cast<uint64_t>(key.n), k = static_cast<uint64_t>(key.k), t = static_cast<uint64_t>(key.tokens);
    check_lt(cublasLtMatrixLayoutCreate(&a_, ab, k, n, static_cast<int64_t>(k)), "layout of W");
    check_lt(cublasLtMatrixLayoutCreate(&b_, ab, k, t, static_cast<int64_t>(k)), "layout of x");
    check_lt(cublasLtMatrixLayoutCreate(&d_, out, n, t, static_cast<int64_t>(n)), "layout of out");

    cublasLtMatmulPreference_t pref = nullptr;
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const uint64_t workspace = key.workspace_bytes;
    cublasStatus_t status =
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace);
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
    for (const auto& [attribute, value] : alignments)
      if (status == CUBLAS_STATUS_SUCCESS)
        status = cublasLtMatmulPreferenceSetAttribute(pref, attribute, &value, sizeof value);
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulAlgoGetHeuristic(handle, desc_, a_, b_, d_, d_, pref, 1, &result, &count);
    cublasLtMatmulPreferenceDestroy(pref);
    found_ = status == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (found_) algo_ = result.algo;
  }
  ~Plan() {
    if (d_) cublasLtMatrixLayoutDestroy(d_);
    if (b_) cublasLtMatrixLayoutDestroy(b_);
    if (a_) cublasLtMatrixLayoutDestroy(a_);
    if (desc_) cublasLtMatmulDescDestroy(desc_);
  }
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  bool found() const { return found_; }

  // Enqueues out = alpha * x W^T + beta * out (+ bias through the epilogue) on `stream`.
  void run(cublasLtHandle_t handle, float alpha, float beta, const void* w, const void* x, const void* bias,
           void* out, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (bias)
      check_lt(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
               "bias pointer");
    check_lt(cublasLtMatmul(handle, desc_, &alpha, w, a_, x, b_, &beta, out, d_, out, d_, &algo_, workspace,
                            workspace_bytes, stream),
             "matmul");
  }

 private:
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, d_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
  bool found_ = false;
};

// Plans by shape, owned by the CudaContext (see CudaContext::op_cache). The mutex covers
// lookups and runs, since a run writes the shared descriptor's bias pointer.
class GemmPlanCache {
 public:
  std::mutex& mutex() { return mutex_; }
  Plan& get(const PlanKey& key, cublasLtHandle_t handle) {
    auto it = plans_.find(key);
    if (it == plans_.end()) it = plans_.emplace(key, std::make_unique<Plan>(key, handle)).first;
    return *it->second;
  }

 private:
  std::mutex mutex_;
  std::map<PlanKey, std::unique_ptr<Plan>> plans_;
};

GemmPlanCache& plan_cache(CudaContext& ctx) {
  std::shared_ptr<void>& slot = ctx.op_cache(CudaContext::OpCache::GemmPlans);
  if (!slot) slot = std::make_shared<GemmPlanCache>();
  return *static_cast<GemmPlanCache*>(slot.get());
}

// out[t, n] += bias[n], for a bias the epilogue cannot take (dtype or alignment).
__global__ void __launch_bounds__(kBiasThreads)
    add_bias_kernel(void* out, DType out_dtype, const void* bias, DType bias_dtype, int64_t tokens, int64_t n) {
  const int64_t total = tokens * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    store_f32_dyn(out, out_dtype, i, load_f32_dyn(out, out_dtype, i) + load_f32_dyn(bias, bias_dtype, i % n));
}

bool lt_supports(DType ab, DType out) {
  if (ab == DType::BF16 || ab == DType::F16) return out == ab || out == DType::F32;
  return ab == DType::F32 && out == DType::F32;
}

}  // namespace

bool try_gemm_cublaslt(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                       float alpha, OutputMode mode) {
  return try_gemm_cublaslt(ctx, x, weight, bias, out, alpha, mode, ctx.workspace(), ctx.workspace_bytes());
}

bool try_gemm_cublaslt(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                       float alpha, OutputMode mode, void* workspace_base, size_t workspace_size) {
  const int64_t tokens = x.rows(), n = weight.dim(0), k = weight.dim(1);
  const DType ab = weight.dtype;
  if (!lt_supports(ab, out.dtype) || ctx.cublaslt() == nullptr || tokens == 0 || n == 0 || k == 0) return false;
  auto handle = static_cast<cublasLtHandle_t>(ctx.cublaslt());
  const cudaStream_t stream = stream_of(ctx);

  // An x of another dtype is converted in chunks into the front half of the workspace.
  const bool convert_x = x.dtype != ab;
  char* workspace = static_cast<char*>(workspace_base);
  size_t workspace_bytes = workspace_base != nullptr ? workspace_size : 0;
  int64_t chunk = tokens;
  size_t x_region = 0;
  if (convert_x) {
    if (workspace == nullptr) return false;
    const size_t row_bytes = static_cast<size_t>(k) * dtype_size(ab);
    chunk = std::min<int64_t>(tokens, static_cast<int64_t>(workspace_bytes / 2 / row_bytes));
    if (chunk < std::min(tokens, kMinConvertChunkTokens)) return false;
    x_region = (static_cast<size_t>(chunk) * row_bytes + kMaxAlignment - 1) / kMaxAlignment * kMaxAlignment;
    workspace += x_region;
    workspace_bytes -= x_region;
  }

  const bool bias_epilogue = !bias.empty() && bias.dtype == out.dtype && is_aligned(bias.data, kBiasEpilogueAlignment);
  const size_t out_row_bytes = static_cast<size_t>(n) * dtype_size(out.dtype);
  const size_t x_row_bytes = static_cast<size_t>(k) * dtype_size(x.dtype);
  auto key_for = [&](int64_t count, int64_t t0, bool epilogue) {
    PlanKey key{};
    key.n = n;
    key.k = k;
    key.tokens = count;
    key.ab = ab;
    key.out = out.dtype;
    key.bias_epilogue = epilogue;
    key.align_a = alignment_of(weight.data);
    key.align_b = convert_x ? kMaxAlignment : alignment_of(static_cast<const char*>(x.data) + t0 * x_row_bytes);
    key.align_d = alignment_of(static_cast<const char*>(out.data) + t0 * out_row_bytes);
    key.workspace_bytes = workspace_bytes;
    return key;
  };

  GemmPlanCache& cache = plan_cache(ctx);
  std::lock_guard<std::mutex> lock(cache.mutex());
  // Plan every chunk before launching anything, so a missing algorithm means "nothing done".
  // A bias epilogue without an algorithm falls back to a plain plan and the bias kernel.
  bool use_epilogue = bias_epilogue;
  for (int pass = 0; pass < 2; ++pass) {
    bool all_found = true;
    for (int64_t t0 = 0; t0 < tokens && all_found; t0 += chunk)
      all_found = cache.get(key_for(std::min(chunk, tokens - t0), t0, use_epilogue), handle).found();
    if (all_found) break;
    if (!use_epilogue) return false;
    use_epilogue = false;
  }

  for (int64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const int64_t count = std::min(chunk, tokens - t0);
    const void* x_chunk = static_cast<const char*>(x.data) + t0 * x_row_bytes;
    if (convert_x) {
      Tensor src(const_cast<void*>(x_chunk), x.dtype, {count, k}, Device::CUDA);
      Tensor dst(workspace_base, ab, {count, k}, Device::CUDA);
      convert(ctx, src, dst);
      x_chunk = workspace_base;
    }
    void* out_chunk = static_cast<char*>(out.data) + t0 * out_row_bytes;
    const float beta = mode == OutputMode::Accumulate ? 1.0f : 0.0f;
    cache.get(key_for(count, t0, use_epilogue), handle)
        .run(handle, alpha, beta, weight.data, x_chunk, use_epilogue ? bias.data : nullptr, out_chunk, workspace,
             workspace_bytes, stream);
  }

  if (!bias.empty() && !use_epilogue) {
    const int64_t blocks = std::clamp<int64_t>(ceil_div<int64_t>(tokens * n, kBiasThreads), 1,
                                               static_cast<int64_t>(ctx.info().multiprocessors) * kBiasBlocksPerSm);
    add_bias_kernel<<<static_cast<unsigned>(blocks), kBiasThreads, 0, stream>>>(out.data, out.dtype, bias.data,
                                                                                bias.dtype, tokens, n);
    SPECULA_CUDA_CHECK_LAUNCH("linear (bias)");
  }
  return true;
}

}  // namespace specula::ops::cuda_impl
