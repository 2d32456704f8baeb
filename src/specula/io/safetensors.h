// safetensors reader: one file, memory-mapped, tensors handed out as pointers into the map.
// The header is untrusted input, so it gets every check of the reference reader
// (huggingface/safetensors `tensor.rs`): bounded header length, UTF-8 JSON object, known dtypes,
// integer shapes, offsets that tile the byte buffer exactly; plus duplicate-name rejection.
// Every error names the file and, where one is involved, the tensor. The header is streamed,
// one entry at a time, so parsing is linear in the number of tensors; shard indexes
// (model.safetensors.index.json, and pytorch_model.bin.index.json in the same layout) are read here
// the same way.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "specula/core/mapped_file.h"
#include "specula/io/checkpoint_tensor.h"

namespace specula::io {

// The reference reader's bound: larger headers are rejected before parsing.
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// The most entries (tensors plus metadata items) in one header, or tensor names in one shard
// index. The largest published checkpoints, MoE models with hundreds of experts per layer, list a
// few hundred thousand tensors over all their shards; each entry costs a few hundred bytes here,
// so the bound keeps what a hostile header or index can make the reader hold to a few hundred MB.
constexpr size_t kMaxCheckpointEntries = size_t{1} << 20;

struct SafetensorsContents {
  std::vector<CheckpointTensor> tensors;          // in data-offset order; data points into the mapped file
  std::map<std::string, std::string> metadata;    // the optional "__metadata__" object
};

// Validates and indexes `file` without copying tensor bytes; the result borrows from `file`.
SafetensorsContents parse_safetensors(const MappedFile& file);

// The "weight_map" of a shard index (tensor name -> shard file name), streamed from `text`; every
// other member is skipped. `what` (the index path) prefixes errors. Shard names are not checked here.
std::map<std::string, std::string> parse_shard_index(std::string_view text, const std::string& what);

// A safetensors file that owns its map; tensors stay valid (and at fixed addresses) while it lives.
class SafetensorsFile final : public TensorFile {
 public:
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const override { return file_.path(); }
  const std::vector<CheckpointTensor>& tensors() const override { return contents_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return contents_.metadata; }

 private:
  MappedFile file_;
  SafetensorsContents contents_;
};

}  // namespace specula::io
