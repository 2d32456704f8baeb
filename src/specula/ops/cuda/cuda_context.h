// CudaContext: the CUDA backend's per-engine state, created once at load and passed to every op
// through ops::OpContext (no global handles). It owns the stream every op launches on, the
// cuBLASLt handle and its workspace (allocated once, so GEMMs never allocate during a step or a
// graph capture), the device properties kernels size their grids by, and a device-side error
// word that kernels set instead of trapping (for example an out-of-range token id), read by the
// host once per step together with the step's result.
//
// Host-only header: no CUDA types appear here, so plain C++ files can hold a CudaContext.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace specula::cuda {

// Bits of the device error word.
enum DeviceErrorBits : uint32_t {
  kErrorTokenOutOfRange = 1u << 0,
  kErrorSlotOutOfRange = 1u << 1,
  kErrorDraftTree = 1u << 2,  // a draft tree op saw an inconsistent tree or a draft id outside the FR-Spec list
  kErrorSparseSelect = 1u << 3,  // sparse_select: a tree query without a distinct ancestor at some position
};

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0;
  size_t max_shared_memory_per_block_optin = 0;
  size_t l2_cache_bytes = 0;
};

// The workspace a context gets by default, and the engine gives it from its arena: cuBLASLt's
// scratch, the attention split partials (decode of 32 heads with 33 splits needs 0.55 MB per
// token; see ops/cuda/attention.cu), the small-M GEMM's fp32 partial sums (2 KB per token and
// SM: 34.6 MB at 128 tokens on 132 SMs; see ops/cuda/gemm_small_m.cu) and InfLLM-V2
// sparse_select's kernel scores (about 32 KB per token at MiniCPM4-8B's shape and a 128K cache;
// larger calls run in token chunks, see ops/cuda/sparse_attention.cu).
constexpr size_t kDefaultWorkspaceBytes = size_t{64} << 20;
// Cache length (rows a decode step attends to) up to which the engine's decode graph runs the
// fused one-token attention kernel (ops/cuda/qkv_attention.cu); longer caches run the separate
// kernels, whose split count grows with the length. The crossover of the whole decode step on the
// H100 (Llama-3-8B shape, cedca75): fused ahead by 1.3 points at 4096 rows, behind by 0.2 at 6144,
// even near 5900 (bench/results/dense_history.md).
constexpr int64_t kDefaultFusedAttentionMaxRows = 5632;

class CudaContext {
 public:
  // Selects device `ordinal`, creates a non-blocking stream, a cuBLASLt handle and a workspace of
  // `workspace_bytes` and the error word. Throws specula::Error if there is no usable device.
  static std::unique_ptr<CudaContext> create(int ordinal = 0, size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  void* stream() const { return stream_; }             // cudaStream_t
  void* cublaslt() const { return cublaslt_; }         // cublasLtHandle_t
  void* workspace() const { return workspace_; }
  // Replaces the workspace with `bytes` of device memory owned by the caller (the engine carves it
  // from its arena, so the whole memory plan is one allocation), freeing the context's own. The
  // memory must outlive every use through this context. Only before ops capture or queue work
  // that reads the workspace: captured graphs keep the address they were captured with.
  void adopt_workspace(void* data, size_t bytes);
  size_t workspace_bytes() const { return workspace_bytes_; }
  uint32_t* error_word() const { return error_word_; } // device pointer
  const DeviceInfo& info() const { return info_; }
  // True when the decode-path kernels are launched with programmatic dependent launch: the device
  // is sm_90+, the kernels were compiled for it (their device code holds the grid-dependency
  // waits, checked on a probe kernel), and neither the environment (SPECULA_NO_PDL=1) nor
  // set_programmatic_launch(false) turned it off.
  bool programmatic_launch() const { return programmatic_launch_; }
  // Turns PDL off, or back on where supported (A/B benchmarks, tests); returns the new state.
  // Only between steps: a captured graph keeps the launches it was captured with.
  bool set_programmatic_launch(bool enable) {
    programmatic_launch_ = enable && programmatic_launch_supported_;
    return programmatic_launch_;
  }
  // True when one-token fused-norm products may use the bulk-copy GEMV (ops/cuda/gemv_bulk.cu,
  // sm_90 only; the default); false keeps them on the register-streaming GEMV, for A/B benchmarks and tests
  // (SPECULA_NO_BULK_GEMV=1 or set_bulk_gemv(false)). Only between steps: a captured graph keeps
  // the kernels it was captured with.
  bool bulk_gemv() const { return bulk_gemv_; }
  void set_bulk_gemv(bool enable) { bulk_gemv_ = enable; }
  // True when one-token ops::qkv_attention may run as one fused kernel (RoPE, cache store,
  // split-KV attention and the merge of the splits inside a thread-block cluster;
  // ops/cuda/qkv_attention.cu, sm_90; the default); false keeps the separate qkv_rope_store,
  // attention and combine kernels, for A/B benchmarks and tests (SPECULA_NO_FUSED_ATTENTION=1 or
  // set_fused_decode_attention(false)). Only between steps: a captured graph keeps its kernels
  // (the engine sets it while capturing its long-cache decode graph, see
  // fused_attention_max_rows()).
  bool fused_decode_attention() const { return fused_decode_attention_; }
  void set_fused_decode_attention(bool enable) { fused_decode_attention_ = enable; }
  // Whether ops::linear tries the small-M tensor-core GEMM for 9..128 tokens before cuBLASLt
  // (ops/cuda/linear.cu says why it is off by default). Only between steps, like the above.
  bool small_m_gemm() const { return small_m_gemm_; }
  void set_small_m_gemm(bool enable) { small_m_gemm_ = enable; }
  // Whether block-sparse attention over several tokens (prefill, verification) runs the 16-row
  // tensor-core layout, one token of a 16-head group per block (its walk is its own list), rather
  // than the 64-row layout, whose blocks walk the union of four tokens' lists. Which is faster
  // depends on how much adjacent tokens' lists overlap; off by default, an A/B setting for the
  // benchmark (SPECULA_SPARSE_TOKEN_TILES=1). Only between steps, like the above.
  bool sparse_token_tiles() const { return sparse_token_tiles_; }
  void set_sparse_token_tiles(bool enable) { sparse_token_tiles_ = enable; }
  // Query heads per block of the fused decode kernel, 0 for its own choice; a tuning override
  // (SPECULA_FUSED_ATTENTION_HEADS=1|2|4) for A/B measurements of the split between blocks.
  int fused_attention_heads() const { return fused_attention_heads_; }
  // Longest cache (in rows) for which a decode step should run the fused attention kernel; the
  // engine captures a second decode graph without it for longer caches (the kernel's split count
  // is fixed, so past this length the separate kernels are faster). A tuning override for A/B runs
  // (SPECULA_FUSED_ATTENTION_MAX_ROWS=N); read when a graph is captured.
  int64_t fused_attention_max_rows() const { return fused_attention_max_rows_; }
  void set_fused_attention_max_rows(int64_t rows) { fused_attention_max_rows_ = rows; }
  // Whether one-token steps over caches of up to `rows` rows should run the fused attention: on
  // (fused_decode_attention()) and within fused_attention_max_rows(). The engine's graph choice
  // and the benchmark's eager profile both follow it.
  bool fused_attention_for_rows(int64_t rows) const {
    return fused_decode_attention_ && rows <= fused_attention_max_rows_;
  }
  // Per-shape state that ops compute once per context and reuse (their launch decisions are host
  // queries too slow for every call of a decode step), type-erased so this header stays free of
  // CUDA types. Created by the op on first use; owned here so it lives exactly as long as the
  // context.
  enum class OpCache {
    GemmPlans,         // ops/cuda/gemm_cublaslt.cu: cuBLASLt descriptors and heuristic results
    DecodeAttention,   // ops/cuda/qkv_attention.cu: the fused kernel's plan per shape
    BulkGemvKernels,   // ops/cuda/gemv_bulk.cu: instantiations whose shared-memory limit is raised
    SmallMGemmKernels, // ops/cuda/gemm_small_m.cu: the same, for the small-M GEMM
    kCount
  };
  std::shared_ptr<void>& op_cache(OpCache which) { return op_caches_[static_cast<size_t>(which)]; }

  void synchronize() const;                  // waits for the stream; throws on a CUDA error
  // Reads and clears the error word (synchronous); throws specula::Error describing set bits.
  void check_device_errors();
  // Throws specula::Error "<what>: <cuda error string>" if the last launch failed.
  static void check_launch(const char* what);

 private:
  CudaContext() = default;
  void* stream_ = nullptr;
  void* cublaslt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  bool owns_workspace_ = false;  // false after adopt_workspace()
  uint32_t* error_word_ = nullptr;
  DeviceInfo info_;
  bool programmatic_launch_supported_ = false;
  bool programmatic_launch_ = false;
  bool bulk_gemv_ = true;
  bool fused_decode_attention_ = true;
  bool sparse_token_tiles_ = false;
  bool small_m_gemm_ = false;
  int fused_attention_heads_ = 0;
  int64_t fused_attention_max_rows_ = kDefaultFusedAttentionMaxRows;
  std::shared_ptr<void> op_caches_[static_cast<size_t>(OpCache::kCount)];
};

// Sets the context's fused_decode_attention() for a scope (while a graph is captured or a profile
// runs eagerly) and puts the previous setting back at its end, exceptions included.
class ScopedFusedDecodeAttention {
 public:
  ScopedFusedDecodeAttention(CudaContext& ctx, bool enable) : ctx_(ctx), previous_(ctx.fused_decode_attention()) {
    ctx_.set_fused_decode_attention(enable);
  }
  ~ScopedFusedDecodeAttention() { ctx_.set_fused_decode_attention(previous_); }
  ScopedFusedDecodeAttention(const ScopedFusedDecodeAttention&) = delete;
  ScopedFusedDecodeAttention& operator=(const ScopedFusedDecodeAttention&) = delete;

 private:
  CudaContext& ctx_;
  bool previous_;
};

// The value of SPECULA_FUSED_ATTENTION_HEADS (null or empty: 0, automatic); throws specula::Error
// naming the variable for anything but 0, 1, 2 or 4.
int parse_fused_attention_heads(const char* value);
// The value of SPECULA_FUSED_ATTENTION_MAX_ROWS (null or empty: the default); throws
// specula::Error naming the variable for anything but a non-negative integer.
int64_t parse_fused_attention_max_rows(const char* value);

// True if a CUDA device is present and usable (for tests that must say when they skip).
bool cuda_device_available(std::string* why_not = nullptr);

}  // namespace specula::cuda
