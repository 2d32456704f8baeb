// Sampling parameters of one request, with the meaning and defaults of HF generation_config /
// the OpenAI API. Every "off" value is the neutral one, so a default-constructed struct is
// plain greedy decoding.
#pragma once

#include <cstdint>

namespace specula::sampling {

struct SamplingParams {
  float temperature = 0.0f;         // 0 => greedy (argmax; ties -> lowest id)
  int top_k = 0;                    // 0 => off
  float top_p = 1.0f;               // 1 => off
  float min_p = 0.0f;               // 0 => off; keep tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // HF/CTRL rule over prompt+generated ids: logit>0 ? logit/r : logit*r
  float presence_penalty = 0.0f;    // OpenAI rule over generated ids only: logit -= presence * (count>0)
  float frequency_penalty = 0.0f;   //                                        logit -= frequency * count
  uint64_t seed = 0;

  bool is_greedy() const { return temperature == 0.0f; }
  // Throws specula::Error naming the first bad field and its allowed range.
  void validate() const;
};

}  // namespace specula::sampling
