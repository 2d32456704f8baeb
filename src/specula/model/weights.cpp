// Checkpoint -> device weights (see weights.h).
#include "specula/model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "specula/core/checked_size.h"
#include "specula/core/error.h"
#include "specula/io/checkpoint.h"
#include "specula/ops/ops.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/core/cuda_memory.h"
#endif

namespace specula::model {

namespace {

bool present(const WeightSpec& spec, const io::Checkpoint& checkpoint) {
  return checkpoint.find(spec.sources.front()) != nullptr;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// The number of decoder layers a checkpoint holds: one past the largest N of "model.layers.N.*".
// Returns -1 when a layer index is not a plain decimal number (the layout check names it later).
int64_t layers_in_checkpoint(const io::Checkpoint& checkpoint) {
  constexpr std::string_view kPrefix = "model.layers.";
  constexpr size_t kMaxIndexDigits = 9;  // keeps the parsed index far from int64 overflow
  int64_t count = 0;
  for (const std::string& name : checkpoint.names()) {
    if (name.compare(0, kPrefix.size(), kPrefix) != 0) continue;
    const size_t end = name.find('.', kPrefix.size());
    const std::string_view digits = std::string_view(name).substr(kPrefix.size(), end - kPrefix.size());
    if (end == std::string::npos || digits.empty() || digits.size() > kMaxIndexDigits ||
        digits.find_first_not_of("0123456789") != std::string_view::npos)
      return -1;
    count = std::max<int64_t>(count, std::stoll(std::string(digits)) + 1);
  }
  return count;
}

// Cheap checks of config.json against the checkpoint before the per-layer layout is built: the
// layout holds a dozen names per layer, so an absurd num_hidden_layers would otherwise take
// gigabytes and minutes before the first missing tensor is reported.
void check_plausible(const ModelConfig& c, const io::Checkpoint& checkpoint) {
  const int64_t layers = layers_in_checkpoint(checkpoint);
  SPECULA_CHECK(layers < 0 || layers == c.num_layers, c.source, ": num_hidden_layers is ", c.num_layers, " but ",
                checkpoint.path(), " holds ", layers, " layers (model.layers.0 to model.layers.", layers - 1, ")");
  const io::CheckpointTensor* embed = checkpoint.find("model.embed_tokens.weight");
  SPECULA_CHECK(embed != nullptr, checkpoint.path(), ": tensor 'model.embed_tokens.weight' is missing");
  const std::vector<int64_t> expected{c.vocab_size, c.hidden_size};
  SPECULA_CHECK(embed->shape == expected, c.source, ": vocab_size ", c.vocab_size, " and hidden_size ", c.hidden_size,
                " do not match 'model.embed_tokens.weight' of shape ", shape_str(embed->shape), " in ", embed->file);
}

WeightLayout layout_for(const ModelConfig& c) {
  WeightLayout layout;
  const int64_t H = c.hidden_size, I = c.intermediate_size, q = c.q_size(), kv = c.kv_size(), hd = c.head_dim;
  layout.specs.push_back({"embed", {"model.embed_tokens.weight"}, {{c.vocab_size, H}}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string t = "layers." + std::to_string(l) + ".";
    layout.specs.push_back({t + "input_norm", {p + "input_layernorm.weight"}, {{H}}});
    layout.specs.push_back({t + "qkv",
                            {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight"},
                            {{q, H}, {kv, H}, {kv, H}}});
    if (c.qkv_bias)
      layout.specs.push_back({t + "qkv_bias",
                              {p + "self_attn.q_proj.bias", p + "self_attn.k_proj.bias", p + "self_attn.v_proj.bias"},
                              {{q}, {kv}, {kv}}});
    if (c.qk_norm) {
      layout.specs.push_back({t + "q_norm", {p + "self_attn.q_norm.weight"}, {{hd}}});
      layout.specs.push_back({t + "k_norm", {p + "self_attn.k_norm.weight"}, {{hd}}});
    }
    layout.specs.push_back({t + "o_proj", {p + "self_attn.o_proj.weight"}, {{H, q}}});
    layout.specs.push_back({t + "post_attention_norm", {p + "post_attention_layernorm.weight"}, {{H}}});
    layout.specs.push_back({t + "gate_up", {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}, {{I, H}, {I, H}}});
    layout.specs.push_back({t + "down", {p + "mlp.down_proj.weight"}, {{H, I}}});
    layout.ignored.insert(p + "self_attn.rotary_emb.inv_freq");
  }
  layout.specs.push_back({"final_norm", {"model.norm.weight"}, {{H}}});
  if (c.tie_word_embeddings) {
    // Some tied checkpoints still ship the head; the tie flag decides, as in transformers.
    layout.ignored.insert("lm_head.weight");
  } else {
    layout.specs.push_back({"lm_head", {"lm_head.weight"}, {{c.vocab_size, H}}});
  }
  return layout;
}

// Checks names, shapes and dtypes; returns the device dtype of each spec.
// (An optional spec whose first source is absent gets the dtype F32 and is skipped everywhere.)
std::vector<DType> validate(const WeightLayout& layout, const io::Checkpoint& checkpoint, const WeightFormat& format) {
  std::vector<DType> dtypes;
  std::set<std::string> used;
  for (const WeightSpec& spec : layout.specs) {
    if (spec.optional && !present(spec, checkpoint)) {
      dtypes.push_back(DType::F32);
      continue;
    }
    std::optional<DType> first;
    for (size_t i = 0; i < spec.sources.size(); ++i) {
      const std::string& name = spec.sources[i];
      const io::CheckpointTensor* t = checkpoint.find(name);
      SPECULA_CHECK(t != nullptr, checkpoint.path(), ": tensor '", name, "' is missing (expected shape ",
                    shape_str(spec.source_shapes[i]), ")");
      SPECULA_CHECK(t->shape == spec.source_shapes[i], t->file, ": tensor '", name, "' has shape ", shape_str(t->shape),
                    ", config.json implies ", shape_str(spec.source_shapes[i]));
      SPECULA_CHECK(t->dtype == DType::F32 || t->dtype == DType::BF16 || t->dtype == DType::F16, t->file, ": tensor '",
                    name, "' has dtype ", dtype_name(t->dtype), "; expected BF16, F16 or F32");
      if (!first) first = t->dtype;
      used.insert(name);
    }
    dtypes.push_back(format.dtype.value_or(*first));
  }
  for (const std::string& name : checkpoint.names())
    SPECULA_CHECK(used.count(name) || layout.ignored.count(name), checkpoint.path(), ": unexpected tensor '", name,
                  "' (not part of this architecture's layout; refusing to guess what it means)");
  return dtypes;
}

std::vector<int64_t> device_shape(const WeightSpec& spec) {
  std::vector<int64_t> shape = spec.source_shapes[0];
  for (size_t i = 1; i < spec.sources.size(); ++i) shape[0] += spec.source_shapes[i][0];
  if (spec.column_count > 0) shape[1] = spec.column_count;
  return shape;
}

// Device bytes of one assembled weight, overflow-checked.
size_t spec_bytes(const WeightSpec& spec, DType dtype) {
  return checked_nbytes(checked_numel(device_shape(spec), spec.target), dtype, spec.target);
}

Tensor make_tensor(void* data, DType dtype, const std::vector<int64_t>& shape, Device device) {
  Tensor t = shape.size() == 1 ? Tensor(data, dtype, {shape[0]}, device) : Tensor(data, dtype, {shape[0], shape[1]}, device);
  return t;
}

// Writes `count` elements of `src` (dtype `from`) as dtype `to` at `dst` (host memory).
void convert_into(uint8_t* dst, DType to, const uint8_t* src, DType from, size_t first, size_t count) {
  if (to == from) {
    std::memcpy(dst, src + first * dtype_size(from), count * dtype_size(from));
    return;
  }
  for (size_t i = 0; i < count; ++i) {
    const float v = load_as_f32(src, from, first + i);
    switch (to) {
      case DType::F32: std::memcpy(dst + i * 4, &v, 4); break;
      case DType::BF16: { const uint16_t b = f32_to_bf16(v); std::memcpy(dst + i * 2, &b, 2); break; }
      case DType::F16: { const uint16_t b = f32_to_f16(v); std::memcpy(dst + i * 2, &b, 2); break; }
      default: fail("weight dtype ", dtype_name(to), " is not supported");
    }
  }
}

// Copies checkpoint tensors into device memory, converting dtypes.
class WeightWriter {
 public:
  explicit WeightWriter(Device device) : device_(device) {
#ifdef SPECULA_WITH_CUDA
    if (device == Device::CUDA) stager_ = std::make_unique<HostToDeviceStager>();
#else
    SPECULA_CHECK(device == Device::CPU, "this build has no CUDA backend");
#endif
  }
  // Columns [column_begin, column_begin + column_count) of a 2-D source (row by row), or all of it
  // when column_count is 0.
  void write(uint8_t* dst, DType to, const io::CheckpointTensor& src, int64_t column_begin, int64_t column_count) {
    if (column_count > 0) {
      const size_t rows = static_cast<size_t>(src.shape[0]), cols = static_cast<size_t>(src.shape[1]);
      const size_t n = static_cast<size_t>(column_count), first = static_cast<size_t>(column_begin);
      const size_t out_size = dtype_size(to);
      auto fill = [&](uint8_t* out, size_t offset, size_t length) {
        for (size_t e = offset / out_size, end = (offset + length) / out_size; e < end;) {
          const size_t row = e / n, col = e % n, run = std::min(n - col, end - e);
          convert_into(out + (e * out_size - offset), to, src.data, src.dtype, row * cols + first + col, run);
          e += run;
        }
      };
      if (device_ == Device::CPU) {
        fill(dst, 0, rows * n * out_size);
        return;
      }
#ifdef SPECULA_WITH_CUDA
      stager_->copy_generated(dst, rows * n * out_size, fill);
#endif
      return;
    }
    const size_t count = static_cast<size_t>(src.numel());
    if (device_ == Device::CPU) {
      convert_into(dst, to, src.data, src.dtype, 0, count);
      return;
    }
#ifdef SPECULA_WITH_CUDA
    if (to == src.dtype) {
      stager_->copy(dst, src.data, src.nbytes);
    } else {
      const size_t out_size = dtype_size(to);
      stager_->copy_generated(dst, count * out_size, [&](uint8_t* out, size_t offset, size_t length) {
        convert_into(out, to, src.data, src.dtype, offset / out_size, length / out_size);
      });
    }
#endif
  }
  void finish() {
#ifdef SPECULA_WITH_CUDA
    if (stager_) stager_->finish();
#endif
  }

 private:
  Device device_;
#ifdef SPECULA_WITH_CUDA
  std::unique_ptr<HostToDeviceStager> stager_;
#endif
};

void assemble(const ModelConfig& config, const PlacedWeights& weights_in, ModelWeights& weights);

}  // namespace

size_t plan_layout(const WeightLayout& layout, const io::Checkpoint& checkpoint, const WeightFormat& format,
                   ArenaPlan& plan) {
  const std::vector<DType> dtypes = validate(layout, checkpoint, format);
  const size_t before = plan.total();
  for (size_t i = 0; i < layout.specs.size(); ++i)
    if (!layout.specs[i].optional || present(layout.specs[i], checkpoint))
      plan.add(spec_bytes(layout.specs[i], dtypes[i]));
  return plan.total() - before;
}

PlacedWeights load_layout(const WeightLayout& layout, const io::Checkpoint& checkpoint, const WeightFormat& format,
                          Arena& arena, const std::function<void(size_t, size_t)>& progress) {
  SPECULA_CHECK(arena.device() == format.device, "load_weights: arena is on ", device_name(arena.device()),
                " but weights were asked for on ", device_name(format.device));
  const std::vector<DType> dtypes = validate(layout, checkpoint, format);
  size_t total_bytes = 0;
  for (const WeightSpec& spec : layout.specs)
    if (!spec.optional || present(spec, checkpoint))
      for (const std::string& s : spec.sources) total_bytes += checkpoint.get(s).nbytes;

  PlacedWeights placed;
  WeightWriter writer(format.device);
  size_t done = 0;
  for (size_t i = 0; i < layout.specs.size(); ++i) {
    const WeightSpec& spec = layout.specs[i];
    if (spec.optional && !present(spec, checkpoint)) continue;
    const std::vector<int64_t> shape = device_shape(spec);
    const size_t bytes = spec_bytes(spec, dtypes[i]);
    auto* base = static_cast<uint8_t*>(arena.alloc_bytes(bytes));
    size_t offset = 0;
    for (const std::string& name : spec.sources) {
      const io::CheckpointTensor& src = checkpoint.get(name);
      writer.write(base + offset, dtypes[i], src, spec.column_begin, spec.column_count);
      const int64_t elements = spec.column_count > 0 ? src.shape[0] * spec.column_count : src.numel();
      offset += static_cast<size_t>(elements) * dtype_size(dtypes[i]);
      done += src.nbytes;
      placed.parameter_count += elements;
      if (progress) progress(done, total_bytes);
    }
    placed.bytes += bytes;
    placed.tensors[spec.target] = make_tensor(base, dtypes[i], shape, format.device);
  }
  writer.finish();
  return placed;
}

size_t plan_random_layout(const WeightLayout& layout, DType dtype, ArenaPlan& plan) {
  const size_t before = plan.total();
  for (const WeightSpec& spec : layout.specs) plan.add(spec_bytes(spec, dtype));
  return plan.total() - before;
}

PlacedWeights random_layout(const WeightLayout& layout, DType dtype, Arena& arena, ops::OpContext& ctx, uint64_t seed) {
  PlacedWeights placed;
  for (size_t i = 0; i < layout.specs.size(); ++i) {
    const WeightSpec& spec = layout.specs[i];
    const std::vector<int64_t> shape = device_shape(spec);
    const size_t bytes = spec_bytes(spec, dtype);
    Tensor t = make_tensor(arena.alloc_bytes(bytes), dtype, shape, arena.device());
    // Norm weights near 1 would need an offset; any bounded values serve a benchmark. Matrices get
    // the usual 1/sqrt(fan_in) range so activations stay finite through many layers.
    const float scale = shape.size() == 2 ? 1.0f / std::sqrt(static_cast<float>(shape[1])) : 1.0f;
    ops::fill_random(ctx, t, seed + i, scale);
    placed.bytes += bytes;
    placed.parameter_count += t.numel();
    placed.tensors[spec.target] = t;
  }
  return placed;
}

size_t plan_weights(const ModelConfig& config, const io::Checkpoint& checkpoint, const WeightFormat& format,
                    ArenaPlan& plan) {
  check_plausible(config, checkpoint);
  SPECULA_CHECK(config.tie_word_embeddings || checkpoint.find("lm_head.weight") != nullptr, checkpoint.path(),
                ": no 'lm_head.weight' although config.json says tie_word_embeddings is false");
  return plan_layout(layout_for(config), checkpoint, format, plan);
}

size_t plan_random_weights(const ModelConfig& config, DType dtype, ArenaPlan& plan) {
  return plan_random_layout(layout_for(config), dtype, plan);
}

ModelWeights load_weights(const ModelConfig& config, const io::Checkpoint& checkpoint, const WeightFormat& format,
                          Arena& arena, const std::function<void(size_t, size_t)>& progress) {
  check_plausible(config, checkpoint);
  SPECULA_CHECK(config.tie_word_embeddings || checkpoint.find("lm_head.weight") != nullptr, checkpoint.path(),
                ": no 'lm_head.weight' although config.json says tie_word_embeddings is false");
  ModelWeights weights;
  assemble(config, load_layout(layout_for(config), checkpoint, format, arena, progress), weights);
  return weights;
}

ModelWeights random_weights(const ModelConfig& config, DType dtype, Arena& arena, ops::OpContext& ctx, uint64_t seed) {
  ModelWeights weights;
  assemble(config, random_layout(layout_for(config), dtype, arena, ctx, seed), weights);
  return weights;
}

namespace {
void assemble(const ModelConfig& config, const PlacedWeights& weights_in, ModelWeights& weights) {
  const std::map<std::string, Tensor>& placed = weights_in.tensors;
  weights.bytes = weights_in.bytes;
  weights.parameter_count = weights_in.parameter_count;
  weights.embed = placed.at("embed");
  weights.final_norm = placed.at("final_norm");
  weights.lm_head = config.tie_word_embeddings ? weights.embed : placed.at("lm_head");
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const std::string t = "layers." + std::to_string(l) + ".";
    auto get = [&](const char* key) {
      auto it = placed.find(t + key);
      return it == placed.end() ? Tensor() : it->second;
    };
    weights.layers.push_back(LayerWeights{get("input_norm"), get("post_attention_norm"), get("qkv"), get("qkv_bias"),
                                          get("q_norm"), get("k_norm"), get("o_proj"), get("gate_up"), get("down")});
  }
}
}  // namespace

}  // namespace specula::model
