// torch.save checkpoints (pytorch_model.bin, *.pt): zip container + restricted unpickler.
// Contiguous tensors point straight into the memory-mapped archive; tensors saved as strided
// views are copied once into owned contiguous buffers, so every CheckpointTensor looks the same
// to callers. Views that expand their storage (stride 0) beyond a small factor are refused, and
// the copies of one file are bounded by a multiple of its size. Only the zip format (torch >= 1.6) is read: the legacy pickle-stream format and
// big-endian archives are refused with a message saying how to convert.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "specula/core/mapped_file.h"
#include "specula/io/checkpoint_tensor.h"

namespace specula::io {

// A torch.save'd state_dict; owns its map and any materialized copies.
class TorchCheckpointFile final : public TensorFile {
 public:
  explicit TorchCheckpointFile(const std::string& path);

  const std::string& path() const override { return file_.path(); }
  const std::vector<CheckpointTensor>& tensors() const override { return tensors_; }
  // The archive's top-level folder: "archive" or the saved file's base name.
  const std::string& record_prefix() const { return prefix_; }
  size_t materialized_count() const { return owned_buffers_.size(); }  // tensors that were strided views

 private:
  MappedFile file_;
  std::string prefix_;
  std::vector<CheckpointTensor> tensors_;
  std::vector<std::unique_ptr<uint8_t[]>> owned_buffers_;
};

// Reads a torch.save'd list of Python ints (FR-Spec freq_<V>.pt) or a 1-D integer tensor
// (torch.save(torch.tensor(ids))), returning the values in order.
std::vector<int64_t> load_torch_int_list(const std::string& path);

// Strict form for FR-Spec lists: only a torch.save'd plain list of Python ints is accepted; a
// tensor, a state_dict or any other object is refused with an error saying what the file holds.
std::vector<int64_t> load_torch_plain_int_list(const std::string& path);

// True when the file starts like a torch.save archive (zip) or a legacy torch pickle stream;
// Checkpoint uses it to pick a reader without trusting file extensions.
bool looks_like_torch_file(const MappedFile& file);

}  // namespace specula::io
