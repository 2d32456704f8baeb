// ModelConfig: what the engine needs from a Hugging Face config.json (and generation_config.json),
// parsed strictly. Supported: LlamaForCausalLM (Llama-3/3.1/3.2), Qwen2ForCausalLM (Qwen2/2.5),
// Qwen3ForCausalLM and MiniCPMForCausalLM (MiniCPM4/4.1). Both config layouts that exist in the
// wild load: the classic one (top-level rope_theta/rope_scaling, torch_dtype) and the
// transformers-5 one (rope_parameters, dtype). A key whose value would change the forward pass in
// a way this engine does not implement (an unknown rope type, attention biases on Llama, a
// sliding window, another activation) is an error, never silently ignored.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "specula/core/dtype.h"

namespace specula::model {

enum class ModelFamily { Llama, Qwen2, Qwen3, MiniCPM4 };
std::string_view family_name(ModelFamily family);

enum class RopeType { Default, Linear, Llama3, LongRope };
std::string_view rope_type_name(RopeType type);

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double factor = 1.0;                  // linear, llama3
  double low_freq_factor = 1.0;         // llama3
  double high_freq_factor = 4.0;        // llama3
  int64_t original_max_position = 0;    // llama3, longrope
  std::vector<double> short_factor;     // longrope
  std::vector<double> long_factor;      // longrope
};

// InfLLM-V2 sparse attention settings (MiniCPM4 `sparse_config`); parsed now, used by the sparse
// attention path.
struct SparseConfig {
  int64_t kernel_size = 32, kernel_stride = 16, block_size = 64, init_blocks = 1, window_size = 2048, topk = 64;
  bool use_nope = false;
  int64_t dense_len = 8192;  // -1: sparse at every length
};

struct ModelConfig {
  std::string source;        // path of config.json, for messages
  std::string architecture;  // e.g. "LlamaForCausalLM"
  ModelFamily family = ModelFamily::Llama;
  int64_t hidden_size = 0, intermediate_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t vocab_size = 0, max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2/2.5 always
  bool qk_norm = false;   // Qwen3
  // muP (MiniCPM): x0 = scale_emb * E[t]; residual branches scaled by residual_scale;
  // logits = lm_head(norm(x) * logit_scale). All 1 for the other families.
  double scale_emb = 1.0, residual_scale = 1.0, logit_scale = 1.0;
  double scale_depth = 0.0, dim_model_base = 0.0;  // raw MiniCPM values (EAGLE heads need them)
  // InfLLM-V2 (MiniCPM4/4.1): the checkpoint's sparse_config, or the published defaults when a
  // MiniCPM4 config.json has none (MiniCPM4-8B ships without it), flagged so front ends say so.
  std::optional<SparseConfig> sparse;
  bool sparse_defaulted = false;
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;  // union of config.json and generation_config.json
  std::optional<DType> dtype;          // torch_dtype / dtype, if given

  // Parses `dir`/config.json and, if present, `dir`/generation_config.json.
  static ModelConfig from_dir(const std::string& dir);
  // Parses config text; `source` names it in errors. generation_config may be empty.
  static ModelConfig from_json(const std::string& config_json, const std::string& source,
                               const std::string& generation_config_json = "");

  int64_t q_size() const { return num_heads * head_dim; }
  int64_t kv_size() const { return num_kv_heads * head_dim; }
  // Rotary inverse frequencies [head_dim / 2] after the configured scaling, in fp32 as
  // transformers computes them, and the factor cos/sin are multiplied by.
  std::vector<float> rope_inv_freq() const;
  float rope_attention_scaling() const;
  std::string summary() const;  // one line per field group, for `specula inspect`
};

// The architectures this engine implements, for error messages.
std::string supported_architectures();

}  // namespace specula::model
