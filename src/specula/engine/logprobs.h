// Log-probabilities reported with generated tokens (OpenAI's logprobs / top_logprobs).
//
// Which distribution: the target model's raw one, log-softmax of the logits exactly as the model
// produced them, before temperature, repetition/presence/frequency penalties and top-k/top-p/
// min-p. That is what OpenAI and vLLM (its default logprobs mode) report, and it describes the
// model rather than the sampler: a greedy and a sampled request over the same text report the
// same numbers. Engine::capture_logprobs / read_logprobs compute them on the device
// (ops::top_k_log_softmax) and read back only the few numbers below.
#pragma once

#include <cstdint>
#include <vector>

namespace specula::engine {

struct TokenLogprobs {
  struct Alternative {
    int32_t token = 0;
    float logprob = 0.0f;
  };
  int32_t token = 0;      // the token that was chosen (by whatever sampler the request uses)
  float logprob = 0.0f;   // its log-probability (-inf when the model gives it none)
  std::vector<Alternative> top;  // the most likely tokens, most likely first, lower id first on ties
};

}  // namespace specula::engine
