// Token sampler for one sequence on the CPU: logits processors with transformers' semantics
// (repetition penalty, then OpenAI presence/frequency penalties, temperature, top-k, top-p,
// min-p, in that order) followed by an inverse-CDF draw with a counter-based uniform.
// It is the reference the CUDA sampler is checked against and the source of the exact
// post-processing distribution that speculative-decoding acceptance needs.
//
// Conventions where transformers leaves things open:
//  * Ties in top-p are ranked by (logit descending, id ascending): of equal logits at the cut,
//    the lower ids are kept (torch.sort is not stable on every device, so there is no single
//    transformers answer; this one agrees with greedy's lowest-id rule).
//  * Tokens whose logit is -inf are outside the support before any processor runs.
//  * The draw walks the support in ascending id order, so the chosen token depends only on the
//    distribution and the uniform, not on how the filters arranged their scratch arrays.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "specula/sampling/params.h"
#include "specula/sampling/random.h"

namespace specula::sampling {

namespace detail {
// Scratch reused across steps so that sampling allocates nothing in steady state.
// `seen` and `counts` are vocab-sized and all-zero between calls (only touched entries are
// reset). `ids`/`vals`/`weights` describe the current support in ascending id order:
// processed logit and exp(logit - max logit).
struct SamplerWorkspace {
  std::vector<uint8_t> seen;
  std::vector<int32_t> counts;
  std::vector<int32_t> ids;
  std::vector<float> vals;
  std::vector<float> weights;
  std::vector<float> scratch;
  std::vector<uint64_t> keys;
};
}  // namespace detail

class Sampler {
 public:
  // Validates `params` (throws specula::Error on a bad field).
  explicit Sampler(const SamplingParams& params);

  // Applies penalties, temperature, top-k, top-p, min-p in this order, then draws with
  // uniform01(seed, draw_counter()) and increments the counter (also in greedy mode, so step n
  // always uses counter n). On return `logits` holds the processed scores: penalised, divided
  // by temperature and -inf outside the kept support (greedy: penalised only).
  // Token ids are only read (and range-checked) when a penalty that uses them is active.
  // Throws specula::Error on NaN or +inf logits, all -inf logits, or out-of-range ids.
  int32_t sample(std::span<float> logits, std::span<const int32_t> prompt_ids,
                 std::span<const int32_t> generated_ids);

  // The distribution sample() draws from: vocab-sized, zero outside the kept support, sums to 1.
  // Greedy gives a one-hot at the argmax.
  void probabilities(std::span<const float> logits, std::span<const int32_t> prompt_ids,
                     std::span<const int32_t> generated_ids, std::vector<float>& probs_out) const;

  const SamplingParams& params() const { return params_; }
  // Number of draws made so far, i.e. the counter the next sample() passes to uniform01.
  uint64_t draw_counter() const { return counter_; }

 private:
  SamplingParams params_;
  uint64_t counter_ = 0;
  detail::SamplerWorkspace ws_;
};

}  // namespace specula::sampling
