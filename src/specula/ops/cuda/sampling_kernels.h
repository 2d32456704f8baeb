// Host-side entry points of the token-sampling kernels (ops/cuda/sampling.cu), used only by
// sampling::GpuSampler. It has no CUDA types, so both the .cu file and the host side include it
// and share one declaration of the device-memory layout and the error bits.
#pragma once

#include <cstddef>
#include <cstdint>

#include "specula/sampling/params.h"

namespace specula::cuda {
class CudaContext;
}

namespace specula::ops::cuda_impl::sampler {

// Bits of the sampler's own device error word (sticky until take_errors()). A bad step does not
// stop a captured graph: it writes token 0, records nothing and leaves the draw counter alone.
enum ErrorBits : uint32_t {
  kErrorNanLogit = 1u << 0,     // a logit is NaN
  kErrorPosInfLogit = 1u << 1,  // a logit is +inf
  kErrorNoFinite = 1u << 2,     // every logit is -inf
  kErrorOverflow = 1u << 3,     // a finite logit became +inf through the penalties or temperature
};

// Exact fixed-point sums need vocab * 2^63 < 2^87 (well inside 128 bits) and the per-block
// shared-memory pieces vocab-independent; ids must also fit the 32-bit halves of the sort keys.
// 2^24 keeps every bound with a wide margin and is far above any real vocabulary.
constexpr int64_t kMaxVocab = int64_t{1} << 24;

// Bytes of device memory one sampler needs for `vocab` entries (one allocation).
size_t device_bytes(int64_t vocab);

// Zeroes the control words, histograms and counters in `device` and uploads `state` (`vocab`
// words: bit 0 = id seen in prompt or output, bits 1.. = times generated). Synchronous.
void reset(cuda::CudaContext& ctx, void* device, int64_t vocab, const int32_t* state);

// One draw for one row of logits: launches only (no allocation, no host synchronisation), all on
// ctx.stream(), so it can be captured in a CUDA graph. `params` must already be validated; its
// values are baked into the launches. `active` (a device word, or null): when it holds 0 at run
// time the step is skipped whole (nothing drawn, recorded or counted).
void step(cuda::CudaContext& ctx, void* device, int64_t vocab, const ::specula::sampling::SamplingParams& params,
          float* logits, int32_t* out_token, const int32_t* active = nullptr);

// Synchronous reads: the error word (cleared by the read) and the draw counter.
uint32_t take_errors(cuda::CudaContext& ctx, void* device, int64_t vocab);
uint64_t draw_counter(cuda::CudaContext& ctx, void* device, int64_t vocab);

}  // namespace specula::ops::cuda_impl::sampler
