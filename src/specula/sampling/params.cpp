// Validation of SamplingParams: requests come from users, so every field is range-checked once
// when a Sampler is built rather than producing NaNs or empty supports mid-generation.
#include "specula/sampling/params.h"

#include <cmath>

#include "specula/core/error.h"

namespace specula::sampling {

void SamplingParams::validate() const {
  SPECULA_CHECK(std::isfinite(temperature) && temperature >= 0.0f,
                "sampling: temperature must be finite and >= 0 (0 = greedy), got ", temperature);
  SPECULA_CHECK(top_k >= 0, "sampling: top_k must be >= 0 (0 = off), got ", top_k);
  SPECULA_CHECK(top_p > 0.0f && top_p <= 1.0f, "sampling: top_p must be in (0, 1] (1 = off), got ", top_p);
  SPECULA_CHECK(min_p >= 0.0f && min_p <= 1.0f, "sampling: min_p must be in [0, 1] (0 = off), got ", min_p);
  SPECULA_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f,
                "sampling: repetition_penalty must be finite and > 0 (1 = off), got ", repetition_penalty);
  SPECULA_CHECK(std::isfinite(presence_penalty),
                "sampling: presence_penalty must be finite (0 = off), got ", presence_penalty);
  SPECULA_CHECK(std::isfinite(frequency_penalty),
                "sampling: frequency_penalty must be finite (0 = off), got ", frequency_penalty);
}

}  // namespace specula::sampling
