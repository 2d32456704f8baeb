// Checkpoint: one name -> tensor view over a model directory, whatever its on-disk format.
// The model loader asks for tensors by name and should not care whether they come from one
// safetensors file, a sharded index, or torch.save archives; this class resolves the directory
// the way HF/CPM.cu loaders do, opens each file once, and keeps every file alive (through
// unique_ptr, so tensor pointers survive moves of the Checkpoint) for as long as it lives.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "specula/io/checkpoint_tensor.h"

namespace specula::io {

class Checkpoint {
 public:
  // `path` is a directory (resolution order: model.safetensors.index.json, pytorch_model.bin.index.json,
  // then a single *.safetensors, *.bin, *.pt; fail listing what was looked for) or a single file
  // (a safetensors file, a torch.save archive, or a *.index.json shard index).
  static Checkpoint open(const std::string& path);

  Checkpoint(Checkpoint&&) noexcept = default;
  Checkpoint& operator=(Checkpoint&&) noexcept = default;
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;
  ~Checkpoint();

  const CheckpointTensor* find(const std::string& name) const;  // nullptr if absent
  const CheckpointTensor& get(const std::string& name) const;    // throws "<dir>: tensor 'x' not found"
  std::vector<std::string> names() const;                        // sorted
  const std::string& path() const { return path_; }
  std::string format_description() const { return description_; }  // e.g. "safetensors, 3 shards", "pytorch zip"
  size_t total_bytes() const { return total_bytes_; }

 private:
  Checkpoint() = default;
  void add_file(std::unique_ptr<TensorFile> file);

  std::string path_;
  std::string description_;
  std::vector<std::unique_ptr<TensorFile>> files_;
  std::map<std::string, CheckpointTensor> tensors_;  // map nodes keep their addresses when the map moves
  size_t total_bytes_ = 0;
};

}  // namespace specula::io
