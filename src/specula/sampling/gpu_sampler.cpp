// GpuSampler host side: argument checks (tensors, parameters, prompt ids) happen here, once, on
// host metadata only, so sample() is safe inside a graph capture; the kernels and the device
// memory layout live in ops/cuda/sampling.cu behind ops/cuda/sampling_kernels.h.
#include "specula/sampling/gpu_sampler.h"

#include <algorithm>
#include <string>

#include "specula/core/error.h"

#ifdef SPECULA_WITH_CUDA
#include "specula/core/cuda_memory.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/sampling_kernels.h"
#endif

namespace specula::sampling {

#ifdef SPECULA_WITH_CUDA

namespace kernels = ops::cuda_impl::sampler;

namespace {
constexpr uintptr_t kDeviceMemoryAlignment = 256;  // what cudaMalloc and the arena give
}  // namespace

size_t GpuSampler::device_bytes(int64_t vocab_size) {
  SPECULA_CHECK(vocab_size > 0 && vocab_size < kernels::kMaxVocab, "GpuSampler: vocab_size must be in [1, ",
                kernels::kMaxVocab, "), got ", vocab_size);
  return kernels::device_bytes(vocab_size);
}

GpuSampler::GpuSampler(cuda::CudaContext& ctx, int64_t vocab_size, int64_t max_batch_rows, void* device_memory)
    : ctx_(ctx), vocab_(vocab_size), max_rows_(max_batch_rows) {
  const size_t bytes = device_bytes(vocab_size);
  SPECULA_CHECK(max_batch_rows >= 1, "GpuSampler: max_batch_rows must be >= 1, got ", max_batch_rows);
  SPECULA_CHECK(reinterpret_cast<uintptr_t>(device_memory) % kDeviceMemoryAlignment == 0,
                "GpuSampler: device memory must be ", kDeviceMemoryAlignment, "-byte aligned");
  owns_device_ = device_memory == nullptr;
  device_ = owns_device_ ? cuda_device_alloc(bytes) : device_memory;
  try {
    host_state_.assign(static_cast<size_t>(vocab_), 0);
    kernels::reset(ctx_, device_, vocab_, host_state_.data());
  } catch (...) {
    if (owns_device_) cuda_device_free(device_);
    throw;
  }
}

GpuSampler::~GpuSampler() {
  // Kernels of this sampler may still be queued: wait before freeing. Destructors must not throw.
  try {
    ctx_.synchronize();
  } catch (...) {
  }
  if (owns_device_) cuda_device_free(device_);
}

void GpuSampler::begin(const SamplingParams& params, std::span<const int32_t> prompt_ids) {
  params.validate();
  std::fill(host_state_.begin(), host_state_.end(), 0);
  // As the CPU Sampler: prompt ids are only read (and range-checked) when a penalty uses them.
  if (params.repetition_penalty != 1.0f) {
    for (size_t i = 0; i < prompt_ids.size(); ++i) {
      const int32_t id = prompt_ids[i];
      if (id < 0 || id >= vocab_) {
        fail("sampling: prompt_ids[", i, "] = ", id, " is outside the vocabulary [0, ", vocab_, ")");
      }
      host_state_[static_cast<size_t>(id)] = 1;  // bit 0: seen
    }
  }
  kernels::reset(ctx_, device_, vocab_, host_state_.data());
  params_ = params;
  begun_ = true;
}

void GpuSampler::sample(const Tensor& logits, Tensor& out_token) {
  SPECULA_CHECK(begun_, "GpuSampler::sample: call begin() first");
  SPECULA_CHECK(!logits.empty() && logits.device == Device::CUDA && logits.dtype == DType::F32 &&
                    (logits.rank == 1 || logits.rank == 2) && logits.row_size() == vocab_,
                "GpuSampler::sample: logits ", logits.shape_string(), " on ", device_name(logits.device),
                " must be a CUDA F32 tensor [", vocab_, "] or [rows, ", vocab_, "]");
  const int64_t rows = logits.rows();
  SPECULA_CHECK(rows >= 1 && rows <= max_rows_, "GpuSampler::sample: ", rows,
                " rows of logits, but the sampler was built for at most ", max_rows_);
  SPECULA_CHECK(!out_token.empty() && out_token.device == Device::CUDA && out_token.dtype == DType::I32 &&
                    out_token.numel() == rows,
                "GpuSampler::sample: out_token ", out_token.shape_string(), " on ", device_name(out_token.device),
                " must be a CUDA I32 tensor of ", rows, " entries");
  float* data = logits.as<float>();
  int32_t* tokens = out_token.as<int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    kernels::step(ctx_, device_, vocab_, params_, data + r * vocab_, tokens + r);
  }
}

void GpuSampler::sample_if(const Tensor& logits, Tensor& out_token, const Tensor& active) {
  SPECULA_CHECK(logits.rows() == 1, "GpuSampler::sample_if: one row of logits, got ", logits.shape_string());
  SPECULA_CHECK(!active.empty() && active.device == Device::CUDA && active.dtype == DType::I32 && active.numel() == 1,
                "GpuSampler::sample_if: active ", active.shape_string(), " must be a CUDA I32 tensor of 1 entry");
  SPECULA_CHECK(begun_, "GpuSampler::sample_if: call begin() first");
  SPECULA_CHECK(!logits.empty() && logits.device == Device::CUDA && logits.dtype == DType::F32 &&
                    logits.row_size() == vocab_ && !out_token.empty() && out_token.device == Device::CUDA &&
                    out_token.dtype == DType::I32 && out_token.numel() == 1,
                "GpuSampler::sample_if: logits ", logits.shape_string(), " and out_token ", out_token.shape_string(),
                " must be CUDA F32 [1, ", vocab_, "] and I32 [1]");
  kernels::step(ctx_, device_, vocab_, params_, logits.as<float>(), out_token.as<int32_t>(), active.as<const int32_t>());
}

void GpuSampler::check_errors() {
  const uint32_t bits = kernels::take_errors(ctx_, device_, vocab_);
  if (bits == 0) return;
  std::string what;
  if (bits & kernels::kErrorNanLogit) what += " a logit is NaN;";
  if (bits & kernels::kErrorPosInfLogit) what += " a logit is +inf;";
  if (bits & kernels::kErrorNoFinite) what += " every logit is -inf, nothing can be sampled;";
  if (bits & kernels::kErrorOverflow) what += " a logit overflowed to +inf after the penalties and temperature;";
  fail("sampling (GPU): invalid logits in a sampled step (token 0 was written):", what);
}

uint64_t GpuSampler::draw_counter() const { return kernels::draw_counter(ctx_, device_, vocab_); }

#else  // !SPECULA_WITH_CUDA

GpuSampler::GpuSampler(cuda::CudaContext& ctx, int64_t vocab_size, int64_t max_batch_rows, void*)
    : ctx_(ctx), vocab_(vocab_size), max_rows_(max_batch_rows) {
  fail("GpuSampler: this build has no CUDA backend");
}

GpuSampler::~GpuSampler() = default;

void GpuSampler::begin(const SamplingParams&, std::span<const int32_t>) {
  fail("GpuSampler: this build has no CUDA backend");
}

void GpuSampler::sample(const Tensor&, Tensor&) { fail("GpuSampler: this build has no CUDA backend"); }

void GpuSampler::sample_if(const Tensor&, Tensor&, const Tensor&) { fail("GpuSampler: this build has no CUDA backend"); }

void GpuSampler::check_errors() { fail("GpuSampler: this build has no CUDA backend"); }

uint64_t GpuSampler::draw_counter() const { fail("GpuSampler: this build has no CUDA backend"); }

#endif  // SPECULA_WITH_CUDA

}  // namespace specula::sampling
