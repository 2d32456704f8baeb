// Writes a safetensors file (the layout the reference writer produces: 8-byte little-endian
// header length, JSON header padded with spaces to a multiple of 8, tensors tiled without gaps).
// Used by `specula create-demo-model` to make a model the engine then loads like any other.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "specula/core/dtype.h"

namespace specula::io {

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // numel * dtype_size bytes, little-endian
};

// Throws specula::Error naming the path on I/O failure or a size that does not match the shape.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

}  // namespace specula::io
