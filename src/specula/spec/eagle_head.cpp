// EAGLE draft head: config rule, file layout, forward (see eagle_head.h).
#include "specula/spec/eagle_head.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/io/checkpoint.h"
#include "specula/io/strict_json.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/core/cuda_memory.h"
#endif

namespace specula::spec {

namespace {
using json = nlohmann::json;
constexpr double kEagleDefaultTheta = 10000.0;

void copy_to(Tensor& dst, const void* src, size_t bytes) {
  if (dst.device == Device::CPU) {
    std::memcpy(dst.data, src, bytes);
  } else {
#ifdef SPECULA_WITH_CUDA
    cuda_copy_to_device(dst.data, src, bytes);
#endif
  }
}
}  // namespace

EagleHeadConfig EagleHeadConfig::read(const std::string& dir, const model::ModelConfig& target) {
  namespace fs = std::filesystem;
  std::error_code ec;
  SPECULA_CHECK(fs::is_directory(dir, ec), dir, ": not a directory (expected an EAGLE draft head folder with config.json "
                "and pytorch_model.bin or model.safetensors)");
  const std::string path = (fs::path(dir) / "config.json").string();
  SPECULA_CHECK(fs::exists(path, ec), dir, ": no config.json (expected an EAGLE draft head folder)");
  json j = io::parse_strict_json_object(read_text_file(path, kMaxConfigFileBytes), path);

  EagleHeadConfig cfg;
  cfg.dir = dir;
  // The EAGLE RoPE rule: theta from the head's own config, 10000 when absent or when rope_scaling
  // is set. The target's parser wants a theta, so an absent one is supplied before parsing.
  const bool scaled = j.contains("rope_scaling") && !j.at("rope_scaling").is_null();
  const bool has_theta = j.contains("rope_theta") || j.contains("rope_parameters");
  if (!has_theta) j["rope_theta"] = kEagleDefaultTheta;
  cfg.layer = model::ModelConfig::from_json(j.dump(), path);
  cfg.rope_theta_defaulted = !has_theta || scaled;
  if (scaled) {
    SPECULA_CHECK(cfg.layer.rope.type == model::RopeType::Linear, path, ": rope_scaling of type '",
                  model::rope_type_name(cfg.layer.rope.type),
                  "' in a draft head; EAGLE heads are trained with default or linear RoPE only");
    cfg.layer.rope.theta = kEagleDefaultTheta;
  }
  SPECULA_CHECK(cfg.layer.num_layers == 1, path, ": num_hidden_layers is ", cfg.layer.num_layers,
                "; EAGLE-1/2 heads have exactly one decoder layer");
  if (j.contains("qkv_bias")) {
    SPECULA_CHECK(j.at("qkv_bias").is_boolean(), path, ": 'qkv_bias' must be true or false");
    cfg.layer.qkv_bias = cfg.layer.qkv_bias || j.at("qkv_bias").get<bool>();
  }
  if (j.contains("bias")) SPECULA_CHECK(j.at("bias").is_boolean(), path, ": 'bias' must be true or false");
  for (const char* key : {"target_hidden_size", "draft_vocab_size"})
    SPECULA_CHECK(!j.contains(key), path, ": '", key, "' marks an EAGLE-3 head, which this engine does not run (EAGLE-1/2 "
                  "and the MiniCPM4 head only)");

  // Compatibility with the target, naming both files.
  SPECULA_CHECK(cfg.layer.hidden_size == target.hidden_size, path, ": hidden_size ", cfg.layer.hidden_size,
                " does not match the target's ", target.hidden_size, " (", target.source, ")");
  SPECULA_CHECK(cfg.layer.vocab_size == target.vocab_size, path, ": vocab_size ", cfg.layer.vocab_size,
                " does not match the target's ", target.vocab_size, " (", target.source, ")");
  const bool minicpm_head = cfg.layer.family == model::ModelFamily::MiniCPM4;
  const bool minicpm_target = target.family == model::ModelFamily::MiniCPM4;
  SPECULA_CHECK(minicpm_head == minicpm_target, path, ": a ", model::family_name(cfg.layer.family),
                " draft head cannot serve a ", model::family_name(target.family), " target (", target.source,
                "); MiniCPM4 targets take the MiniCPM4 head layout and only they do");
  if (minicpm_head) {
    cfg.layout = HeadLayout::MiniCPM4;
    SPECULA_CHECK(cfg.layer.scale_emb == target.scale_emb && cfg.layer.scale_depth == target.scale_depth &&
                      cfg.layer.dim_model_base == target.dim_model_base,
                  path, ": muP scales (scale_emb, scale_depth, dim_model_base) differ from the target's (", target.source,
                  "); the MiniCPM4 head is trained with the base model's");
    cfg.residual_scale = target.scale_depth / std::sqrt(static_cast<double>(target.num_layers + 1));
  }
  return cfg;
}

std::string EagleHeadConfig::summary() const {
  std::ostringstream out;
  out << (layout == HeadLayout::MiniCPM4 ? "MiniCPM4 EAGLE head" : "EAGLE-1/2 head") << ": hidden " << layer.hidden_size
      << ", " << layer.num_heads << " heads / " << layer.num_kv_heads << " KV heads of " << layer.head_dim
      << ", intermediate " << layer.intermediate_size << (layer.qkv_bias ? ", q/k/v bias" : "") << ", RoPE theta "
      << layer.rope.theta << (rope_theta_defaulted ? " (EAGLE default)" : "")
      << (layer.rope.type == model::RopeType::Linear ? " linear x" + std::to_string(layer.rope.factor) : "");
  if (layout == HeadLayout::MiniCPM4) out << ", residual scale " << residual_scale;
  return out.str();
}

std::string detect_head_prefix(const io::Checkpoint& checkpoint, const EagleHeadConfig& config) {
  SPECULA_CHECK(checkpoint.find("midlayer.self_attn.q_proj.weight") == nullptr, checkpoint.path(),
                ": this is an EAGLE-3 head (midlayer.*), which this engine does not run (EAGLE-1/2 and the MiniCPM4 head "
                "only)");
  if (checkpoint.find("fc.weight") != nullptr) return "";
  if (checkpoint.find("eagle.fc.weight") != nullptr) return "eagle.";
  fail(checkpoint.path(), ": no 'fc.weight' (nor 'eagle.fc.weight'): not an EAGLE draft head (", config.dir,
       "); expected fc.weight [hidden, 2*hidden] and layers.0.*");
}

model::WeightLayout eagle_head_layout(const EagleHeadConfig& c) {
  const model::ModelConfig& l = c.layer;
  const int64_t H = l.hidden_size, I = l.intermediate_size, q = l.q_size(), kv = l.kv_size();
  const std::string p = c.prefix, lp = p + "layers.0.";
  model::WeightLayout layout;
  model::WeightSpec fc_e{"fc_embed", {p + "fc.weight"}, {{H, 2 * H}}};
  fc_e.column_begin = 0;
  fc_e.column_count = H;
  model::WeightSpec fc_f = fc_e;
  fc_f.target = "fc_feature";
  fc_f.column_begin = H;
  layout.specs.push_back(fc_e);
  layout.specs.push_back(fc_f);
  model::WeightSpec bias{"fc_bias", {p + "fc.bias"}, {{H}}};
  bias.optional = true;  // published Llama-3 heads have none: zero
  layout.specs.push_back(bias);
  if (c.layout == HeadLayout::MiniCPM4) {
    layout.specs.push_back({"norm_embed", {p + "input_norm1.weight"}, {{H}}});
    layout.specs.push_back({"norm_feature", {p + "input_norm2.weight"}, {{H}}});
    layout.specs.push_back({"input_norm", {lp + "input_layernorm.weight"}, {{H}}});
  }
  layout.specs.push_back(
      {"qkv", {lp + "self_attn.q_proj.weight", lp + "self_attn.k_proj.weight", lp + "self_attn.v_proj.weight"},
       {{q, H}, {kv, H}, {kv, H}}});
  if (l.qkv_bias)
    layout.specs.push_back(
        {"qkv_bias", {lp + "self_attn.q_proj.bias", lp + "self_attn.k_proj.bias", lp + "self_attn.v_proj.bias"},
         {{q}, {kv}, {kv}}});
  if (l.qk_norm) {
    layout.specs.push_back({"q_norm", {lp + "self_attn.q_norm.weight"}, {{l.head_dim}}});
    layout.specs.push_back({"k_norm", {lp + "self_attn.k_norm.weight"}, {{l.head_dim}}});
  }
  layout.specs.push_back({"o_proj", {lp + "self_attn.o_proj.weight"}, {{H, q}}});
  layout.specs.push_back({"post_attention_norm", {lp + "post_attention_layernorm.weight"}, {{H}}});
  layout.specs.push_back({"gate_up", {lp + "mlp.gate_proj.weight", lp + "mlp.up_proj.weight"}, {{I, H}, {I, H}}});
  layout.specs.push_back({"down", {lp + "mlp.down_proj.weight"}, {{H, I}}});
  layout.ignored = {p + "embed_tokens.weight", lp + "self_attn.rotary_emb.inv_freq"};
  return layout;
}

EagleHeadWeights EagleHeadWeights::from(const model::PlacedWeights& placed) {
  EagleHeadWeights w;
  w.fc_embed = placed.get("fc_embed");
  w.fc_feature = placed.get("fc_feature");
  w.fc_bias = placed.get("fc_bias");
  w.norm_embed = placed.get("norm_embed");
  w.norm_feature = placed.get("norm_feature");
  w.layer = model::LayerWeights{placed.get("input_norm"), placed.get("post_attention_norm"), placed.get("qkv"),
                                placed.get("qkv_bias"),   placed.get("q_norm"),              placed.get("k_norm"),
                                placed.get("o_proj"),     placed.get("gate_up"),             placed.get("down")};
  w.bytes = placed.bytes;
  w.parameter_count = placed.parameter_count;
  return w;
}

template <typename Visit>
void EagleHead::visit_buffers(const EagleHeadConfig& cfg, const EagleHeadShape& s, const model::ActivationDTypes& d,
                              EagleHead* self, Visit&& visit) {
  auto at = [self](Tensor EagleHead::*member) { return self ? &(self->*member) : nullptr; };
  const model::ModelConfig& c = cfg.layer;
  const int64_t T = s.max_rows, H = c.hidden_size;
  visit(self ? &self->rope_.inv_freq : nullptr, DType::F32, {c.head_dim / 2});
  visit(at(&EagleHead::features_), d.activations, {T, H});
  visit(at(&EagleHead::embedded_), d.activations, {T, H});
  visit(at(&EagleHead::normed_), d.activations, {T, H});
  visit(at(&EagleHead::residual_), d.residual, {T, H});
  visit(at(&EagleHead::qkv_), d.activations, {T, c.q_size() + 2 * c.kv_size()});
  visit(at(&EagleHead::q_), d.activations, {T, c.num_heads, c.head_dim});
  visit(at(&EagleHead::attn_out_), d.activations, {T, c.q_size()});
  visit(at(&EagleHead::gate_up_), d.activations, {T, 2 * c.intermediate_size});
  visit(at(&EagleHead::hidden_), d.activations, {T, H});
  visit(at(&EagleHead::logit_input_), d.activations, {1, H});
  visit(at(&EagleHead::logits_), DType::F32, {s.max_logit_rows, s.draft_vocab});
  visit(at(&EagleHead::vocab_map_), DType::I32, {s.draft_vocab});
  visit(at(&EagleHead::verify_mask_), DType::I32, {s.tree_size, ops::AttentionMask::tree_words(s.tree_size)});
  // Step inputs: the rows of a prefill chunk, a draft level or a catch-up (the draft-tree ops
  // write the last two on the device); a draft level's mask over every level so far.
  const int64_t rows = std::max(s.max_rows, s.tree_size);
  visit(at(&EagleHead::token_ids_), DType::I32, {rows});
  visit(at(&EagleHead::positions_), DType::I32, {rows});
  visit(at(&EagleHead::slots_), DType::I32, {rows});
  visit(at(&EagleHead::gather_ids_), DType::I32, {rows});
  visit(at(&EagleHead::kv_src_), DType::I32, {s.max_accepted});
  visit(at(&EagleHead::kv_dst_), DType::I32, {s.max_accepted});
  visit(at(&EagleHead::kv_count_), DType::I32, {1});
  visit(at(&EagleHead::mask_bits_), DType::I32, {s.top_k * ops::AttentionMask::tree_words(s.max_mask_width)});
  visit(at(&EagleHead::top_values_), DType::F32, {s.max_logit_rows, s.top_k});
  visit(at(&EagleHead::top_indices_), DType::I32, {s.max_logit_rows, s.top_k});
  // The speculative cycle's state (ops/draft_tree.h).
  const int64_t C = s.top_k + (s.tree_depth - 1) * s.top_k * s.top_k;
  auto tree = [self](Tensor ops::DraftTreeState::*member) { return self ? &(self->tree_.*member) : nullptr; };
  visit(tree(&ops::DraftTreeState::cycle), DType::I32, {ops::kCycleWords});
  visit(tree(&ops::DraftTreeState::cand_score), DType::F32, {C});
  visit(tree(&ops::DraftTreeState::cand_token), DType::I32, {C});
  visit(tree(&ops::DraftTreeState::cand_parent), DType::I32, {C});
  visit(tree(&ops::DraftTreeState::cand_node), DType::I32, {C});
  visit(tree(&ops::DraftTreeState::frontier), DType::I32, {s.tree_depth, s.top_k});
  visit(tree(&ops::DraftTreeState::frontier_parent), DType::I32, {s.tree_depth, s.top_k});
  visit(tree(&ops::DraftTreeState::node_cand), DType::I32, {s.tree_size});
  visit(tree(&ops::DraftTreeState::node_token), DType::I32, {s.tree_size});
  visit(tree(&ops::DraftTreeState::node_parent), DType::I32, {s.tree_size});
  visit(tree(&ops::DraftTreeState::node_depth), DType::I32, {s.tree_size});
  visit(tree(&ops::DraftTreeState::node_score), DType::F32, {s.tree_size});
  visit(tree(&ops::DraftTreeState::record), DType::I32,
        {ops::DraftTreeState::record_words(static_cast<int>(s.tree_depth))});
  visit(tree(&ops::DraftTreeState::walk), DType::I32, {ops::kWalkWords});
  visit(at(&EagleHead::walk_row_), DType::F32, {1, s.target_vocab});
  visit(at(&EagleHead::walk_drawn_), DType::I32, {1});
}

void EagleHead::plan(const EagleHeadConfig& config, const EagleHeadShape& shape, const model::ActivationDTypes& dtypes,
                     DType weight_dtype, bool frspec, ArenaPlan& plan) {
  const model::ModelConfig& c = config.layer;
  model::KvCache::plan({1, c.num_kv_heads, shape.kv_capacity, c.head_dim, dtypes.kv_cache}, plan);
  visit_buffers(config, shape, dtypes, nullptr,
                [&](Tensor*, DType dtype, std::initializer_list<int64_t> dims) { plan.add(dtype, dims); });
  if (frspec) plan.add(weight_dtype, {shape.draft_vocab, c.hidden_size});
}

EagleHead::EagleHead(const EagleHeadConfig& config, EagleHeadWeights weights, const model::ModelConfig& target,
                     Tensor target_embed, Tensor target_lm_head, const std::vector<int32_t>& frspec_ids,
                     const EagleHeadShape& shape, const model::ActivationDTypes& dtypes, Arena& arena,
                     ops::OpContext& ctx)
    : config_(config), weights_(std::move(weights)), shape_(shape), target_embed_(target_embed) {
  const model::ModelConfig& c = config.layer;
  SPECULA_CHECK(shape.max_rows >= 1 && shape.max_logit_rows >= 1 && shape.max_logit_rows <= shape.max_rows,
                "draft head shape: need 1 <= max_logit_rows <= max_rows");
  SPECULA_CHECK(frspec_ids.empty() ? shape.draft_vocab == target.vocab_size
                                   : shape.draft_vocab == static_cast<int64_t>(frspec_ids.size()),
                "draft head shape: draft_vocab does not match the FR-Spec list");
  kv_ = model::KvCache({1, c.num_kv_heads, shape.kv_capacity, c.head_dim, dtypes.kv_cache}, arena);
  visit_buffers(config, shape, dtypes, this, [&](Tensor* t, DType dtype, std::initializer_list<int64_t> dims) {
    *t = arena.alloc(dtype, dims);
  });
  const std::vector<float> inv_freq = c.rope_inv_freq();
  rope_.attention_scaling = c.rope_attention_scaling();
  copy_to(rope_.inv_freq, inv_freq.data(), inv_freq.size() * sizeof(float));

  embed_scale_ = static_cast<float>(target.scale_emb);
  // The LM head: the target's, or its FR-Spec rows gathered once. MiniCPM4 as CPM.cu runs it:
  // the muP logit division only when the target's own head is used (reference s.7.3).
  logit_scale_ = static_cast<float>(target.logit_scale);
  if (frspec_ids.empty()) {
    lm_head_ = target_lm_head;
    vocab_map_host_.resize(static_cast<size_t>(shape.draft_vocab));
    for (size_t i = 0; i < vocab_map_host_.size(); ++i) vocab_map_host_[i] = static_cast<int32_t>(i);
  } else {
    if (config.layout == HeadLayout::MiniCPM4) logit_scale_ = 1.0f;
    vocab_map_host_ = frspec_ids;
    lm_head_ = arena.alloc(target_lm_head.dtype, {shape.draft_vocab, c.hidden_size});
    const size_t row = static_cast<size_t>(c.hidden_size) * dtype_size(target_lm_head.dtype);
    if (lm_head_.device == Device::CPU) {
      for (size_t i = 0; i < frspec_ids.size(); ++i)
        std::memcpy(static_cast<uint8_t*>(lm_head_.data) + i * row,
                    static_cast<const uint8_t*>(target_lm_head.data) + static_cast<size_t>(frspec_ids[i]) * row, row);
    } else {
      copy_to(vocab_map_, frspec_ids.data(), frspec_ids.size() * sizeof(int32_t));
      ops::embedding(ctx, target_lm_head, vocab_map_, 1.0f, lm_head_);  // a row gather on the device
    }
  }
  copy_to(vocab_map_, vocab_map_host_.data(), vocab_map_host_.size() * sizeof(int32_t));

  tree_.top_k = static_cast<int>(shape.top_k);
  tree_.depth = static_cast<int>(shape.tree_depth);
  tree_.size = static_cast<int>(shape.tree_size);
}

ops::DraftLevelInputs EagleHead::level_inputs(int level) const {
  return {token_ids_, positions_, slots_, gather_ids_, draft_mask(shape_.top_k, level * shape_.top_k)};
}

ops::CatchUpInputs EagleHead::catch_up_inputs() const {
  return {token_ids_, positions_, slots_, gather_ids_, kv_src_, kv_dst_, kv_count_};
}

ops::VerifyInputs EagleHead::verify_inputs(const model::Transformer& target) const {
  return {target.token_ids(), target.positions(), target.slots(), verify_mask(shape_.tree_size)};
}

Tensor EagleHead::walk_node() const {
  return Tensor(static_cast<int32_t*>(tree_.walk.data) + ops::kWalkNode, DType::I32, {1}, tree_.walk.device);
}

Tensor EagleHead::walk_active() const {
  return Tensor(static_cast<int32_t*>(tree_.walk.data) + ops::kWalkActive, DType::I32, {1}, tree_.walk.device);
}

Tensor EagleHead::root_row() const {
  return Tensor(static_cast<int32_t*>(tree_.cycle.data) + ops::kCycleRootRow, DType::I32, {1}, tree_.cycle.device);
}

Tensor EagleHead::draft_mask(int64_t rows, int64_t width) const {
  const int64_t words = ops::AttentionMask::tree_words(width);
  SPECULA_CHECK(rows <= shape_.top_k && width <= shape_.max_mask_width, "draft mask [", rows, ", ", width,
                "] exceeds its buffer");
  return Tensor(mask_bits_.data, DType::I32, {rows, words}, mask_bits_.device);
}

Tensor EagleHead::verify_mask(int64_t nodes) const {
  SPECULA_CHECK(nodes <= shape_.tree_size, "verification mask for ", nodes, " nodes exceeds its buffer");
  const int64_t words = ops::AttentionMask::tree_words(nodes);
  return Tensor(verify_mask_.data, DType::I32, {nodes, words}, verify_mask_.device);
}

void EagleHead::forward(ops::OpContext& ctx, int64_t rows, const Tensor& features, int64_t logit_rows,
                        const ops::AttentionMask& mask, const Tensor& logit_row) {
  SPECULA_CHECK(rows >= 1 && rows <= shape_.max_rows, "draft forward: ", rows, " rows, buffers hold ", shape_.max_rows);
  SPECULA_CHECK(logit_rows >= 0 && logit_rows <= std::min(rows, shape_.max_logit_rows), "draft forward: ", logit_rows,
                " logit rows for ", rows, " rows");
  SPECULA_CHECK(features.rows() == rows, "draft forward: ", features.rows(), " feature rows for ", rows, " rows");
  const model::ModelConfig& c = config_.layer;
  const float eps = static_cast<float>(c.rms_norm_eps), s = static_cast<float>(config_.residual_scale);
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  Tensor ids = token_ids_.slice_outer(0, rows), pos = positions_.slice_outer(0, rows), slots = slots_.slice_outer(0, rows);
  Tensor e = embedded_.slice_outer(0, rows), h = normed_.slice_outer(0, rows), x = residual_.slice_outer(0, rows),
         qkv = qkv_.slice_outer(0, rows), q = q_.slice_outer(0, rows), a = attn_out_.slice_outer(0, rows),
         gu = gate_up_.slice_outer(0, rows), y = hidden_.slice_outer(0, rows);
  const EagleHeadWeights& w = weights_;

  ops::embedding(ctx, target_embed_, ids, embed_scale_, e);
  if (config_.layout == HeadLayout::MiniCPM4) {
    ops::rms_norm(ctx, e, w.norm_embed, eps, e);
    ops::rms_norm(ctx, features, w.norm_feature, eps, h);
    ops::linear(ctx, e, w.fc_embed, w.fc_bias, x);
    ops::linear(ctx, h, w.fc_feature, Tensor(), x, 1.0f, ops::OutputMode::Accumulate);
  } else {
    ops::linear(ctx, e, w.fc_embed, w.fc_bias, x);
    ops::linear(ctx, features, w.fc_feature, Tensor(), x, 1.0f, ops::OutputMode::Accumulate);
  }
  Tensor& k_cache = kv_.k(0);
  Tensor& v_cache = kv_.v(0);
  if (w.layer.input_norm.empty()) {
    // EAGLE-1/2: the attention sees the raw fc output (no input norm on layer 0).
    ops::convert(ctx, x, h);
    ops::linear(ctx, h, w.layer.qkv, w.layer.qkv_bias, qkv);
  } else {
    ops::rms_norm_linear(ctx, x, w.layer.input_norm, eps, w.layer.qkv, w.layer.qkv_bias, h, qkv);
  }
  ops::qkv_attention(ctx, qkv, w.layer.q_norm, w.layer.k_norm, eps, rope_, pos, slots, attn_scale, q, k_cache, v_cache,
                     a, mask);
  ops::linear(ctx, a, w.layer.o_proj, Tensor(), x, s, ops::OutputMode::Accumulate);
  ops::rms_norm_linear(ctx, x, w.layer.post_attention_norm, eps, w.layer.gate_up, Tensor(), h, gu);
  ops::linear_swiglu(ctx, gu, w.layer.down, x, s, ops::OutputMode::Accumulate);
  ops::convert(ctx, x, y);
  SPECULA_CHECK(logit_row.empty() || logit_rows == 1, "draft forward: a device-chosen logit row needs logit_rows = 1");
  if (!logit_row.empty()) {
    ops::embedding(ctx, y, logit_row, 1.0f, logit_input_);  // a row gather; an index outside y is reported
    Tensor out = logits_.slice_outer(0, 1);
    ops::linear(ctx, logit_input_, lm_head_, Tensor(), out, logit_scale_);
  } else if (logit_rows > 0) {
    Tensor last = y.slice_outer(rows - logit_rows, logit_rows);
    Tensor out = logits_.slice_outer(0, logit_rows);
    ops::linear(ctx, last, lm_head_, Tensor(), out, logit_scale_);
  }
}

}  // namespace specula::spec
