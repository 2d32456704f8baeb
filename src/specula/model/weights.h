// ModelWeights: the decoder's parameters on one device, laid out for the forward pass rather
// than as the checkpoint stores them. q/k/v projections are fused into one [q + 2kv, H] matrix
// (and their biases into one vector), gate and up into one [2I, H] matrix, so a layer runs three
// large matrix products instead of six small ones. A tied head is the embedding tensor itself.
//
// Loading checks every tensor against the config (name, shape, float dtype), fails on a missing
// tensor and on a tensor it does not know (a layout it would otherwise misread), and copies the
// bytes straight from the memory-mapped files into the arena (through pinned staging on CUDA),
// converting the dtype on the way when asked.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "specula/core/arena.h"
#include "specula/core/tensor.h"
#include "specula/model/config.h"

namespace specula::io {
class Checkpoint;
}
namespace specula::ops {
struct OpContext;
}

namespace specula::model {

struct LayerWeights {
  Tensor input_norm, post_attention_norm;  // [H]
  Tensor qkv;                              // [q + 2 kv, H]
  Tensor qkv_bias;                         // [q + 2 kv] or empty
  Tensor q_norm, k_norm;                   // [head_dim] or empty (Qwen3)
  Tensor o_proj;                           // [H, q]
  Tensor gate_up;                          // [2I, H]
  Tensor down;                             // [H, I]
};

struct ModelWeights {
  Tensor embed;  // [V, H]
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // [H]
  Tensor lm_head;     // [V, H]; the same memory as embed when tied
  size_t bytes = 0;   // device bytes of all parameters
  int64_t parameter_count = 0;
};

// How weights are stored on the device.
struct WeightFormat {
  Device device = Device::CPU;
  // Dtype of every parameter on the device; nullopt keeps each tensor's checkpoint dtype.
  std::optional<DType> dtype;
};

// A checkpoint-to-device layout, the exact tensors a model part needs in load order. Each device
// tensor `target` is one or more checkpoint tensors stacked along dim 0, or a column range of one
// 2-D tensor (EAGLE's fc splits into its embedding and feature halves this way). Loading fails on
// a missing tensor unless the spec is optional, and on a checkpoint tensor that no spec uses and
// `ignored` does not name.
struct WeightSpec {
  std::string target;                // e.g. "layers.3.qkv", for messages and lookup
  std::vector<std::string> sources;  // checkpoint names, concatenated in this order
  std::vector<std::vector<int64_t>> source_shapes;
  bool optional = false;             // absent (its first source missing) is allowed: no tensor placed
  int64_t column_begin = 0, column_count = 0;  // column_count > 0: only these columns of a 2-D source
};
struct WeightLayout {
  std::vector<WeightSpec> specs;
  std::set<std::string> ignored;  // names present in real checkpoints that carry nothing we need
};
// The placed tensors of a layout, by target name.
struct PlacedWeights {
  std::map<std::string, Tensor> tensors;
  size_t bytes = 0;
  int64_t parameter_count = 0;
  Tensor get(const std::string& target) const {
    auto it = tensors.find(target);
    return it == tensors.end() ? Tensor() : it->second;
  }
};
size_t plan_layout(const WeightLayout& layout, const io::Checkpoint& checkpoint, const WeightFormat& format,
                   ArenaPlan& plan);
PlacedWeights load_layout(const WeightLayout& layout, const io::Checkpoint& checkpoint, const WeightFormat& format,
                          Arena& arena, const std::function<void(size_t, size_t)>& progress = {});
size_t plan_random_layout(const WeightLayout& layout, DType dtype, ArenaPlan& plan);
PlacedWeights random_layout(const WeightLayout& layout, DType dtype, Arena& arena, ops::OpContext& ctx, uint64_t seed);

// Bytes the weights of `config` take in `dtype` (planning for random_weights).
size_t plan_random_weights(const ModelConfig& config, DType dtype, ArenaPlan& plan);
// Weights of the right shapes filled with deterministic random values on the arena's device (no
// checkpoint): benchmarks of large shapes without large files.
ModelWeights random_weights(const ModelConfig& config, DType dtype, Arena& arena, ops::OpContext& ctx, uint64_t seed);

// Bytes the weights will take in the arena (for planning).
size_t plan_weights(const ModelConfig& config, const io::Checkpoint& checkpoint, const WeightFormat& format,
                    ArenaPlan& plan);
// Validates the checkpoint against the config and copies the weights into `arena`.
// `progress(done_bytes, total_bytes)` is called as tensors are copied (may be empty).
ModelWeights load_weights(const ModelConfig& config, const io::Checkpoint& checkpoint, const WeightFormat& format,
                          Arena& arena, const std::function<void(size_t, size_t)>& progress = {});

}  // namespace specula::model
