// What every checkpoint reader hands back: named, typed, shaped byte ranges in host memory.
// Readers are zero-copy where the format allows (the bytes live in a memory map owned by the
// reader), so a CheckpointTensor is a plain record that borrows its bytes from a TensorFile;
// the Checkpoint that owns the files keeps them alive and at fixed addresses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "specula/core/checked_size.h"
#include "specula/core/dtype.h"

namespace specula::io {

// The path of the file a tensor came from, for error messages. Every tensor of a file shares one
// copy: a header may list a million tensors, and a path is often longer than a tensor's record.
class TensorFilePath {
 public:
  TensorFilePath() = default;
  TensorFilePath(std::string path) : path_(std::make_shared<const std::string>(std::move(path))) {}
  TensorFilePath(const char* path) : TensorFilePath(std::string(path)) {}
  const std::string& str() const { return path_ ? *path_ : empty(); }
  operator const std::string&() const { return str(); }
  friend bool operator==(const TensorFilePath& a, const std::string& b) { return a.str() == b; }
  friend std::ostream& operator<<(std::ostream& out, const TensorFilePath& path) { return out << path.str(); }

 private:
  static const std::string& empty() {
    static const std::string none;
    return none;
  }
  std::shared_ptr<const std::string> path_;
};

struct CheckpointTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // contiguous little-endian bytes in host memory, valid while the owner lives; may be unaligned
  size_t nbytes = 0;
  TensorFilePath file;  // the file it came from
  int64_t numel() const { return checked_numel(shape, file.str() + ": tensor '" + name + "'"); }
};

// One opened checkpoint file of any format; it owns the memory its tensors point into.
class TensorFile {
 public:
  virtual ~TensorFile() = default;
  virtual const std::string& path() const = 0;
  virtual const std::vector<CheckpointTensor>& tensors() const = 0;
};

}  // namespace specula::io
