// The counter-based hash behind ops::fill_random, shared by the CPU and CUDA implementations so
// both produce bit-identical tensors (splitmix64 finaliser over seed and index).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define SPECULA_HD __host__ __device__
#else
#define SPECULA_HD
#endif

namespace specula::ops {

SPECULA_HD inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [-scale, scale) for element `index` of a tensor filled with `seed`.
SPECULA_HD inline float random_uniform_symmetric(uint64_t seed, uint64_t index, float scale) {
  const uint64_t bits = mix64(seed * 0x9e3779b97f4a7c15ull + index + 1);
  const float unit = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // 24 random bits in [0, 1)
  return (2.0f * unit - 1.0f) * scale;
}

}  // namespace specula::ops
