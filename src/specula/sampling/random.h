// Counter-based random numbers for token sampling.
// The uniform used for draw `counter` of a stream is a pure function of (seed, counter), not the
// state of a sequential generator, so the CPU sampler and the CUDA sampler (and any request
// replayed or resumed mid-stream) produce the identical uniform for the same step without
// sharing or advancing state. This header is included by .cu files.
#pragma once

#include <cstdint>

#include "specula/core/host_device.h"

namespace specula::sampling {

// The SplitMix64 finaliser: a bijection on 64-bit words with full avalanche.
SPECULA_HOST_DEVICE constexpr uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// 64 random bits for draw `counter` of the stream seeded by `seed`. The seed is mixed first so
// that nearby seeds (0, 1, 2, ...) start at unrelated points of the SplitMix64 sequence; the
// counter then indexes that sequence directly (state = key + (counter + 1) * golden gamma).
SPECULA_HOST_DEVICE constexpr uint64_t random_bits(uint64_t seed, uint64_t counter) {
  const uint64_t key = splitmix64_mix(seed + 0x9E3779B97F4A7C15ull);
  return splitmix64_mix(key + (counter + 1) * 0x9E3779B97F4A7C15ull);
}

// Uniform in [0, 1): the top 24 bits, so every value is exactly representable as a float and
// 1.0 can never come out of rounding.
SPECULA_HOST_DEVICE constexpr float uniform01(uint64_t seed, uint64_t counter) {
  return static_cast<float>(random_bits(seed, counter) >> 40) * 0x1.0p-24f;
}

}  // namespace specula::sampling
