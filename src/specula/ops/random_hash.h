// The values behind ops::fill_random, shared by the CPU and CUDA implementations so both produce
// bit-identical tensors. They come from the same counter-based generator as sampling
// (sampling/random.h): element `index` of a tensor filled with `seed` is draw `index` of stream
// `seed`, scaled to [-scale, scale).
#pragma once

#include <cstdint>

#include "specula/sampling/random.h"

namespace specula::ops {

SPECULA_HOST_DEVICE inline float random_uniform_symmetric(uint64_t seed, uint64_t index, float scale) {
  return (2.0f * sampling::uniform01(seed, index) - 1.0f) * scale;
}

}  // namespace specula::ops
