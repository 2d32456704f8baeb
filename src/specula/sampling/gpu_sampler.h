// Token sampling on the GPU for one sequence, so that decode never copies a logits row to the host:
// the CPU Sampler's processors (repetition penalty, presence/frequency penalties, temperature,
// top-k, top-p, min-p, in that order, with its tie rules) and its inverse-CDF draw with
// uniform01(seed, counter), run by a fixed chain of kernels (ops/cuda/sampling.cu). The same
// logits, seed and history give the same tokens as the CPU Sampler, up to floating-point
// summation order at exact decision boundaries (all sums here are exact; the CPU's are double).
//
// Plain C++ (no CUDA types). In a build without CUDA the class exists but its constructor throws.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "specula/core/tensor.h"
#include "specula/sampling/params.h"

namespace specula::cuda {
class CudaContext;
}

namespace specula::sampling {

// Device-side state for sampling one sequence: penalty counts over the vocabulary, the draw
// counter and scratch, all allocated once at construction (device memory), so sample() launches
// kernels only and can be captured inside a CUDA graph and replayed each step.
class GpuSampler {
 public:
  // vocab_size in [1, 2^24). max_batch_rows bounds the rows one sample() call may take.
  // device_memory: device_bytes(vocab_size) bytes of device memory (256-byte aligned) owned by the
  // caller, e.g. carved from the engine's arena; null: the sampler allocates its own.
  GpuSampler(cuda::CudaContext& ctx, int64_t vocab_size, int64_t max_batch_rows = 1, void* device_memory = nullptr);
  // Device memory one sampler of this vocabulary uses (its state, counts and histograms).
  static size_t device_bytes(int64_t vocab_size);
  ~GpuSampler();
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  // Resets counts/counter for a new request: prompt ids (host span) seed the repetition-penalty
  // "seen" set; presence/frequency counts start at zero. Validates `params` and, when the
  // repetition penalty is active, the prompt ids (specula::Error, as the CPU Sampler). Synchronous.
  void begin(const SamplingParams& params, std::span<const int32_t> prompt_ids);

  // logits: [vocab] F32 device tensor, modified in place (penalties and temperature applied);
  // out_token: [1] I32 device tensor. Samples like Sampler::sample with the current history, writes
  // the token to out_token and records it in the device counts (so the next step's penalties
  // include it), and advances the device draw counter. Launches only, on ctx.stream(): no
  // allocation, no host synchronisation. The parameters from begin() are baked into the launches,
  // so a graph captured after begin() stays valid for later begin() calls with equal parameters.
  //
  // Also accepts logits [R, vocab] with R <= max_batch_rows and out_token [R]: the rows are R
  // consecutive steps of this sequence (row r sees the tokens of rows < r in its penalties and
  // uses draw counter n + r), i.e. the same as R calls with one row each.
  //
  // Invalid logits (NaN, +inf, all -inf, or +inf after the penalties/temperature) cannot throw
  // from the device: the step writes token 0, records nothing, leaves the counter alone and sets a
  // bit that check_errors() reports.
  void sample(const Tensor& logits, Tensor& out_token);
  // sample() of one row that is skipped whole (nothing drawn, recorded or counted, out_token left
  // as it was) when the device word `active` ([1] I32) holds 0 when the step runs: the draws of a
  // speculative tree walk, which stop where the walk ends, inside one captured graph.
  void sample_if(const Tensor& logits, Tensor& out_token, const Tensor& active);

  // Throws specula::Error describing invalid logits seen since the last check (then clears them).
  // Synchronous: call it where the step's token is read anyway.
  void check_errors();
  // Draws made since begin(), i.e. the counter the next step passes to uniform01. Synchronous.
  uint64_t draw_counter() const;

  const SamplingParams& params() const { return params_; }
  int64_t vocab_size() const { return vocab_; }
  int64_t max_batch_rows() const { return max_rows_; }

 private:
  cuda::CudaContext& ctx_;
  int64_t vocab_ = 0;
  int64_t max_rows_ = 1;
  void* device_ = nullptr;  // one region: control words, histograms, per-vocab state
  bool owns_device_ = false;
  SamplingParams params_;
  bool begun_ = false;
  std::vector<int32_t> host_state_;  // staging for begin(), reused across requests
};

}  // namespace specula::sampling
