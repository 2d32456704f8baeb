// AttentionPlan resolution and per-call parameters (see attention_plan.h for the rules).
#include "specula/model/attention_plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <sstream>

#include "specula/core/error.h"

namespace specula::model {

std::string_view attention_mode_name(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::Dense: return "dense";
    case AttentionMode::Sparse: return "sparse";
    case AttentionMode::Auto: return "auto";
  }
  return "?";
}

std::string_view sparse_variant_name(ops::SparseVariant variant) {
  return variant == ops::SparseVariant::MiniCPM4 ? "minicpm4" : "minicpm4.1";
}

AttentionMode parse_attention_mode(std::string_view word) {
  if (word == "dense") return AttentionMode::Dense;
  if (word == "sparse") return AttentionMode::Sparse;
  if (word == "auto") return AttentionMode::Auto;
  fail("--attention: '", word, "' is not a mode (dense, sparse or auto)");
}

ops::SparseVariant parse_sparse_variant(std::string_view word) {
  if (word == "minicpm4") return ops::SparseVariant::MiniCPM4;
  if (word == "minicpm4.1") return ops::SparseVariant::MiniCPM41;
  fail("--sparse-variant: '", word, "' is not a variant (minicpm4 or minicpm4.1)");
}

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Rule step 2: the folder's name, when it names a MiniCPM4 generation.
std::optional<ops::SparseVariant> variant_from_name(const std::string& model_dir) {
  std::filesystem::path path(model_dir);
  std::string name = path.filename().string();
  if (name.empty()) name = path.parent_path().filename().string();
  name = lower(name);
  const size_t at = name.find("minicpm4");
  if (at == std::string::npos) return std::nullopt;
  const std::string rest = name.substr(at + 8);
  for (const char* tag : {".1", "_1", "p1", "-1"})
    if (rest.rfind(tag, 0) == 0 && (rest.size() == 2 || !std::isdigit(static_cast<unsigned char>(rest[2]))))
      return ops::SparseVariant::MiniCPM41;
  return ops::SparseVariant::MiniCPM4;
}

}  // namespace

AttentionPlan AttentionPlan::resolve(const ModelConfig& model, const AttentionOptions& o, const std::string& model_dir) {
  AttentionPlan plan;
  const bool has_overrides = o.dense_len || o.topk || o.window_size || o.init_blocks || o.block_size ||
                             o.kernel_size || o.kernel_stride;
  if (o.mode == AttentionMode::Dense) {
    plan.mode = AttentionMode::Dense;
    return plan;
  }
  // Auto without any sparse settings (a family other than MiniCPM4, no overrides): dense.
  if (o.mode == AttentionMode::Auto && !model.sparse && !has_overrides) {
    plan.mode = AttentionMode::Dense;
    return plan;
  }
  plan.mode = o.mode;
  plan.config = model.sparse.value_or(SparseConfig{});
  plan.config_source = !model.sparse ? "published defaults (the model has no sparse_config)"
                       : model.sparse_defaulted ? "published defaults (config.json has no sparse_config)"
                                                : "config.json sparse_config";
  SparseConfig& c = plan.config;
  if (o.dense_len) c.dense_len = *o.dense_len;
  if (o.topk) c.topk = *o.topk;
  if (o.window_size) c.window_size = *o.window_size;
  if (o.init_blocks) c.init_blocks = *o.init_blocks;
  if (o.block_size) c.block_size = *o.block_size;
  if (o.kernel_size) c.kernel_size = *o.kernel_size;
  if (o.kernel_stride) c.kernel_stride = *o.kernel_stride;
  if (has_overrides) plan.config_source += ", with command-line overrides";
  if (o.mode == AttentionMode::Sparse) c.dense_len = -1;

  SPECULA_CHECK(!c.use_nope, model.source, ": sparse_config use_nope true is not supported (it scores with pre-RoPE ",
                "keys, which needs a second key cache); run with --attention dense");
  SPECULA_CHECK(c.kernel_stride >= 1 && c.kernel_size == 2 * c.kernel_stride, "sparse attention: kernel_size ",
                c.kernel_size, " must be twice kernel_stride ", c.kernel_stride,
                " (the kernel-to-block pooling assumes half-overlapping kernels, as published: 32 and 16)");
  SPECULA_CHECK(c.block_size >= c.kernel_stride && c.block_size % c.kernel_stride == 0, "sparse attention: block_size ",
                c.block_size, " must be a multiple of kernel_stride ", c.kernel_stride);
  SPECULA_CHECK(c.window_size >= c.block_size && c.window_size % c.block_size == 0, "sparse attention: window_size ",
                c.window_size, " must be a positive multiple of block_size ", c.block_size);
  SPECULA_CHECK(c.topk >= 1 && c.init_blocks >= 0, "sparse attention: topk must be at least 1 and init_blocks not negative");
  SPECULA_CHECK(c.dense_len >= -1, "sparse attention: dense_len ", c.dense_len, " must be -1 (always sparse) or more");

  if (o.variant) {
    plan.variant = *o.variant;
    plan.variant_reason = "--sparse-variant";
  } else if (const auto named = variant_from_name(model_dir)) {
    plan.variant = *named;
    plan.variant_reason = "the model folder's name";
  } else if (model.family == ModelFamily::MiniCPM4) {
    plan.variant = model.sparse_defaulted ? ops::SparseVariant::MiniCPM4 : ops::SparseVariant::MiniCPM41;
    plan.variant_reason = model.sparse_defaulted ? "config.json has no sparse_config, as MiniCPM4 ships"
                                                 : "config.json has a sparse_config, as MiniCPM4.1 ships";
  } else {
    plan.variant = ops::SparseVariant::MiniCPM41;
    plan.variant_reason = "default for models not trained with InfLLM-V2";
  }
  return plan;
}

ops::SparseSelectParams AttentionPlan::select_params(int64_t head_dim, int64_t prefill_end) const {
  ops::SparseSelectParams p;
  p.variant = variant;
  p.kernel_size = config.kernel_size;
  p.kernel_stride = config.kernel_stride;
  p.block_size = config.block_size;
  p.init_blocks = config.init_blocks;
  p.local_blocks = config.window_size / config.block_size;
  p.topk = config.topk;
  p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (config.dense_len < 0)
    p.sparse_from = 0;
  else if (prefill_end >= config.dense_len && prefill_end > 0)
    p.sparse_from = 0;  // a prompt reaching dense_len is sparse from its first token (HF)
  else
    p.sparse_from = std::max<int64_t>(0, config.dense_len - 1);  // per token: position + 1 >= dense_len
  return p;
}

bool AttentionPlan::sparse_at(int64_t length) const {
  return sparse_enabled() && (config.dense_len < 0 || length >= config.dense_len);
}

int64_t AttentionPlan::max_tree_depth() const {
  if (!sparse_enabled()) return std::numeric_limits<int64_t>::max();
  const int64_t local = config.window_size / config.block_size;
  // 4.1 forces blocks [q_blk - local, q_blk]; MiniCPM4's window is [q_blk - local + 1, q_blk].
  return config.block_size * (variant == ops::SparseVariant::MiniCPM41 ? local : local - 1);
}

std::string AttentionPlan::request_summary(int64_t prompt_tokens, int64_t total_tokens) const {
  const std::string sparse = "sparse (InfLLM-V2 " + std::string(sparse_variant_name(variant)) + ")";
  if (!sparse_at(total_tokens)) return "dense";
  if (sparse_at(prompt_tokens)) return sparse;
  return "dense, " + sparse + " from position " + std::to_string(std::max<int64_t>(0, config.dense_len - 1));
}

std::string AttentionPlan::describe() const {
  if (!sparse_enabled()) return config_source.empty() ? "dense" : "dense (" + config_source + ")";
  std::ostringstream out;
  out << (mode == AttentionMode::Sparse ? "sparse" : "auto") << " (InfLLM-V2 " << sparse_variant_name(variant)
      << ", variant from " << variant_reason << "; "
      << (config.dense_len < 0 ? std::string("sparse at every length")
                               : "dense below " + std::to_string(config.dense_len) + " tokens")
      << "; topk " << config.topk << ", block " << config.block_size << ", window " << config.window_size
      << ", init " << config.init_blocks << ", kernels " << config.kernel_size << "/" << config.kernel_stride
      << "; " << config_source << ")";
  return out.str();
}

}  // namespace specula::model
