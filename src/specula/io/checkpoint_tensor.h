// What every checkpoint reader hands back: named, typed, shaped byte ranges in host memory.
// Readers are zero-copy where the format allows (the bytes live in a memory map owned by the
// reader), so a CheckpointTensor is a plain record that borrows its bytes from a TensorFile;
// the Checkpoint that owns the files keeps them alive and at fixed addresses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "specula/core/dtype.h"

namespace specula::io {

struct CheckpointTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // contiguous little-endian bytes in host memory, valid while the owner lives; may be unaligned
  size_t nbytes = 0;
  std::string file;  // the file it came from, for error messages
  int64_t numel() const {
    int64_t n = 1;
    for (const int64_t d : shape) n *= d;
    return n;
  }
};

// One opened checkpoint file of any format; it owns the memory its tensors point into.
class TensorFile {
 public:
  virtual ~TensorFile() = default;
  virtual const std::string& path() const = 0;
  virtual const std::vector<CheckpointTensor>& tensors() const = 0;
};

}  // namespace specula::io
