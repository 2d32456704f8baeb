// Strict parsing of Hugging Face model configs (see config.h). The files are untrusted: they are
// parsed by io::parse_strict_json (depth limit, duplicate keys refused), every value is
// type-checked before nlohmann converts it (its own type_error would name neither the file nor
// the key), and errors quote values only through short excerpts.
#include "specula/model/config.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <numbers>
#include <sstream>

#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/io/strict_json.h"

namespace specula::model {

using nlohmann::json;
using io::json_excerpt;
using io::text_excerpt;

std::string_view family_name(ModelFamily family) {
  switch (family) {
    case ModelFamily::Llama: return "llama";
    case ModelFamily::Qwen2: return "qwen2";
    case ModelFamily::Qwen3: return "qwen3";
    case ModelFamily::MiniCPM4: return "minicpm4";
  }
  return "?";
}

std::string_view rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::Default: return "default";
    case RopeType::Linear: return "linear";
    case RopeType::Llama3: return "llama3";
    case RopeType::LongRope: return "longrope";
  }
  return "?";
}

std::string supported_architectures() {
  return "LlamaForCausalLM (Llama-3/3.1/3.2), Qwen2ForCausalLM (Qwen2/2.5), Qwen3ForCausalLM, "
         "MiniCPMForCausalLM (MiniCPM4/4.1)";
}

namespace {

// The largest integer a config value may have. Sizes and counts in real configs are far below it
// (the largest, max_position_embeddings, is about 10 million), and with both factors bounded by it
// products such as num_heads * head_dim cannot overflow int64.
constexpr int64_t kMaxConfigInteger = std::numeric_limits<int32_t>::max();

// The most ids a token-id list (eos_token_id) may hold. Real configs list one to a handful; the
// engine compares every generated token with the list.
constexpr size_t kMaxListedTokenIds = 1024;

// Typed accessors that name the key and the file in every error.
class Reader {
 public:
  Reader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  // An integer in [min, kMaxConfigInteger], `min` 0 or 1. An unsigned value beyond int64 wraps
  // negative in get<int64_t>, so it fails the same check.
  int64_t integer(const json& v, const std::string& what, int64_t min) const {
    SPECULA_CHECK(v.is_number_integer() && v.get<int64_t>() >= min && v.get<int64_t>() <= kMaxConfigInteger, source_,
                  ": '", what, "' must be a ", min > 0 ? "positive" : "non-negative", " integer of at most ",
                  kMaxConfigInteger, ", got ", json_excerpt(v));
    return v.get<int64_t>();
  }
  int64_t positive_int(const char* key) const {
    SPECULA_CHECK(has(key), source_, ": required key '", key, "' is missing");
    return integer(j_.at(key), key, 1);
  }
  int64_t positive_int_or(const char* key, int64_t fallback) const { return has(key) ? positive_int(key) : fallback; }
  int64_t non_negative_int_or(const char* key, int64_t fallback) const {
    return has(key) ? integer(j_.at(key), key, 0) : fallback;
  }

  double number(const json& v, const std::string& what) const {
    SPECULA_CHECK(v.is_number(), source_, ": '", what, "' must be a number, got ", json_excerpt(v));
    const double d = v.get<double>();
    SPECULA_CHECK(std::isfinite(d), source_, ": '", what, "' must be finite");
    return d;
  }
  double number_or(const char* key, double fallback) const { return has(key) ? number(j_.at(key), key) : fallback; }
  double positive_number(const char* key) const {
    SPECULA_CHECK(has(key), source_, ": required key '", key, "' is missing");
    const double d = number(j_.at(key), key);
    SPECULA_CHECK(d > 0, source_, ": '", key, "' must be positive, got ", d);
    return d;
  }

  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    SPECULA_CHECK(j_.at(key).is_boolean(), source_, ": '", key, "' must be true or false, got ",
                  json_excerpt(j_.at(key)));
    return j_.at(key).get<bool>();
  }

  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    return string(j_.at(key), key);
  }
  std::string string(const json& v, const std::string& what) const {
    SPECULA_CHECK(v.is_string(), source_, ": '", what, "' must be a string, got ", json_excerpt(v));
    return v.get<std::string>();
  }

  // An int or a list of ints (eos_token_id), at most kMaxListedTokenIds of them.
  std::vector<int32_t> token_ids(const char* key) const {
    std::vector<int32_t> ids;
    if (!has(key)) return ids;
    const json& v = j_.at(key);
    SPECULA_CHECK(!v.is_array() || v.size() <= kMaxListedTokenIds, source_, ": '", key, "' lists ", v.size(),
                  " token ids, more than the ", kMaxListedTokenIds, " allowed");
    auto one = [&](const json& e) {
      SPECULA_CHECK(e.is_number_integer() && e.get<int64_t>() >= 0 && e.get<int64_t>() < (int64_t{1} << 31), source_,
                    ": '", key, "' must hold non-negative token ids, got ", json_excerpt(e));
      ids.push_back(static_cast<int32_t>(e.get<int64_t>()));
    };
    if (v.is_array())
      for (const json& e : v) one(e);
    else
      one(v);
    return ids;
  }

  const json& raw() const { return j_; }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

std::vector<double> factor_list(const Reader& r, const json& scaling, const char* key, int64_t expected) {
  SPECULA_CHECK(scaling.contains(key) && scaling.at(key).is_array(), r.source(), ": rope_scaling.", key,
                " must be a list of numbers");
  std::vector<double> out;
  for (const json& v : scaling.at(key)) out.push_back(r.number(v, std::string("rope_scaling.") + key));
  SPECULA_CHECK(static_cast<int64_t>(out.size()) == expected, r.source(), ": rope_scaling.", key, " has ", out.size(),
                " entries; head_dim / 2 = ", expected);
  for (double f : out) SPECULA_CHECK(f > 0, r.source(), ": rope_scaling.", key, " entries must be positive");
  return out;
}

// Reads the rope settings from either layout: classic (rope_theta + rope_scaling) or
// transformers 5 (rope_parameters holding theta, type and scaling fields together).
RopeConfig parse_rope(const Reader& r, const ModelConfig& cfg) {
  RopeConfig rope;
  const json* scaling = nullptr;
  const bool transformers5 = r.has("rope_parameters");
  const std::string section = transformers5 ? "rope_parameters" : "rope_scaling";  // for messages
  if (transformers5) {
    const json& params = r.raw().at("rope_parameters");
    SPECULA_CHECK(params.is_object(), r.source(), ": 'rope_parameters' must be an object");
    SPECULA_CHECK(params.contains("rope_theta"), r.source(), ": 'rope_parameters' has no 'rope_theta'");
    rope.theta = r.number(params.at("rope_theta"), "rope_parameters.rope_theta");
    scaling = &params;
    SPECULA_CHECK(!r.has("rope_scaling") || r.raw().at("rope_scaling") == params || !r.raw().at("rope_scaling").is_object(),
                  r.source(), ": both 'rope_parameters' and a different 'rope_scaling' are present");
  } else {
    SPECULA_CHECK(r.has("rope_theta"), r.source(),
                  ": no 'rope_theta' (classic layout) and no 'rope_parameters' (transformers 5 layout); refusing to "
                  "guess the RoPE base");
    rope.theta = r.number(r.raw().at("rope_theta"), "rope_theta");
    if (r.has("rope_scaling")) {
      scaling = &r.raw().at("rope_scaling");
      SPECULA_CHECK(scaling->is_object(), r.source(), ": 'rope_scaling' must be an object or null");
    }
  }
  SPECULA_CHECK(rope.theta > 0, r.source(), ": rope theta must be positive");
  if (!scaling) return rope;

  std::string type;
  if (scaling->contains("rope_type")) type = r.string(scaling->at("rope_type"), section + ".rope_type");
  else if (scaling->contains("type")) type = r.string(scaling->at("type"), section + ".type");
  else if (transformers5) type = "default";
  else fail(r.source(), ": 'rope_scaling' has neither 'rope_type' nor 'type'");

  auto field = [&](const char* key) -> double {
    SPECULA_CHECK(scaling->contains(key), r.source(), ": rope scaling '", type, "' needs '", key, "'");
    return r.number(scaling->at(key), section + "." + key);
  };
  auto int_field = [&](const char* key) -> int64_t {
    SPECULA_CHECK(scaling->contains(key), r.source(), ": rope scaling '", type, "' needs '", key, "'");
    return r.integer(scaling->at(key), section + "." + key, 1);
  };
  if (type == "default") {
    rope.type = RopeType::Default;
  } else if (type == "linear") {
    rope.type = RopeType::Linear;
    rope.factor = field("factor");
    SPECULA_CHECK(rope.factor > 0, r.source(), ": linear rope factor must be positive");
  } else if (type == "llama3") {
    rope.type = RopeType::Llama3;
    rope.factor = field("factor");
    rope.low_freq_factor = field("low_freq_factor");
    rope.high_freq_factor = field("high_freq_factor");
    rope.original_max_position = int_field("original_max_position_embeddings");
    // low_freq_factor divides original_max_position_embeddings: zero would make wavelengths infinite.
    SPECULA_CHECK(rope.factor > 0 && rope.low_freq_factor > 0 && rope.high_freq_factor > rope.low_freq_factor,
                  r.source(), ": llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0");
  } else if (type == "longrope") {
    SPECULA_CHECK(cfg.family == ModelFamily::MiniCPM4, r.source(),
                  ": longrope scaling is implemented for MiniCPM only (its attention factor differs from other "
                  "families')");
    rope.type = RopeType::LongRope;
    rope.original_max_position = int_field("original_max_position_embeddings");
    SPECULA_CHECK(rope.original_max_position > 1, r.source(), ": original_max_position_embeddings must be > 1");
    rope.short_factor = factor_list(r, *scaling, "short_factor", cfg.head_dim / 2);
    rope.long_factor = factor_list(r, *scaling, "long_factor", cfg.head_dim / 2);
  } else {
    fail(r.source(), ": rope scaling type '", text_excerpt(type),
         "' is not supported (supported: default, linear, llama3, longrope for MiniCPM)");
  }
  return rope;
}

std::optional<DType> parse_dtype(const Reader& r) {
  const std::string name = r.string_or("torch_dtype", r.string_or("dtype", ""));
  if (name.empty()) return std::nullopt;
  if (name == "bfloat16") return DType::BF16;
  if (name == "float16") return DType::F16;
  if (name == "float32") return DType::F32;
  fail(r.source(), ": dtype '", text_excerpt(name), "' is not supported (bfloat16, float16, float32)");
}

}  // namespace

ModelConfig ModelConfig::from_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path config_path = fs::path(dir) / "config.json";
  std::error_code not_examinable;  // is_directory's throwing overload would escape as filesystem_error
  SPECULA_CHECK(fs::is_directory(dir, not_examinable), dir, ": not a directory (expected a Hugging Face model folder)");
  SPECULA_CHECK(input_present(config_path.string()), dir, ": no config.json (expected a Hugging Face model folder)");
  const fs::path gen_path = fs::path(dir) / "generation_config.json";
  return from_json(read_text_file(config_path.string(), kMaxConfigFileBytes), config_path.string(),
                   input_present(gen_path.string()) ? read_text_file(gen_path.string(), kMaxConfigFileBytes)
                                                    : std::string());
}

ModelConfig ModelConfig::from_json(const std::string& config_json, const std::string& source,
                                   const std::string& generation_config_json) {
  const json j = io::parse_strict_json_object(config_json, source);
  const Reader r(j, source);
  ModelConfig cfg;
  cfg.source = source;

  std::string arch;
  if (r.has("architectures")) {
    const json& a = j.at("architectures");
    SPECULA_CHECK(a.is_array() && !a.empty() && a.at(0).is_string(), source,
                  ": 'architectures' must be a non-empty list of names");
    arch = a.at(0).get<std::string>();
  }
  const std::string model_type = r.string_or("model_type", "");
  if (arch == "LlamaForCausalLM" || (arch.empty() && model_type == "llama")) {
    cfg.family = ModelFamily::Llama;
  } else if (arch == "Qwen2ForCausalLM" || (arch.empty() && model_type == "qwen2")) {
    cfg.family = ModelFamily::Qwen2;
  } else if (arch == "Qwen3ForCausalLM" || (arch.empty() && model_type == "qwen3")) {
    cfg.family = ModelFamily::Qwen3;
  } else if (arch == "MiniCPMForCausalLM" || (arch.empty() && model_type == "minicpm")) {
    SPECULA_CHECK(r.has("scale_emb"), source, ": MiniCPM config without 'scale_emb' (MiniCPM4 has muP scales; other "
                  "MiniCPM generations are not supported)");
    cfg.family = ModelFamily::MiniCPM4;
  } else {
    fail(source, ": unsupported architecture '", text_excerpt(arch.empty() ? model_type : arch), "'; supported: ",
         supported_architectures());
  }
  cfg.architecture = arch.empty() ? model_type : arch;

  cfg.hidden_size = r.positive_int("hidden_size");
  cfg.intermediate_size = r.positive_int("intermediate_size");
  cfg.num_layers = r.positive_int("num_hidden_layers");
  cfg.num_heads = r.positive_int("num_attention_heads");
  cfg.num_kv_heads = r.positive_int_or("num_key_value_heads", cfg.num_heads);
  SPECULA_CHECK(cfg.num_heads % cfg.num_kv_heads == 0, source, ": num_attention_heads ", cfg.num_heads,
                " is not a multiple of num_key_value_heads ", cfg.num_kv_heads);
  if (r.has("head_dim")) {
    cfg.head_dim = r.positive_int("head_dim");
  } else {
    SPECULA_CHECK(cfg.hidden_size % cfg.num_heads == 0, source, ": hidden_size ", cfg.hidden_size,
                  " is not divisible by num_attention_heads ", cfg.num_heads, " and no head_dim is given");
    cfg.head_dim = cfg.hidden_size / cfg.num_heads;
  }
  SPECULA_CHECK(cfg.head_dim % 2 == 0, source, ": head_dim ", cfg.head_dim, " must be even for RoPE");
  cfg.vocab_size = r.positive_int("vocab_size");
  cfg.max_position_embeddings = r.positive_int("max_position_embeddings");
  cfg.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  SPECULA_CHECK(cfg.rms_norm_eps > 0, source, ": rms_norm_eps must be positive");
  cfg.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);

  const std::string act = r.string_or("hidden_act", "silu");
  SPECULA_CHECK(act == "silu", source, ": hidden_act '", text_excerpt(act), "' is not supported (only silu)");
  SPECULA_CHECK(!r.boolean_or("mlp_bias", false), source, ": mlp_bias true is not supported");
  const bool attention_bias = r.boolean_or("attention_bias", false);
  switch (cfg.family) {
    case ModelFamily::Qwen2:
      cfg.qkv_bias = true;  // hard-coded in transformers' Qwen2 attention, no config flag
      SPECULA_CHECK(!r.boolean_or("use_sliding_window", false), source,
                    ": use_sliding_window true is not supported");
      break;
    case ModelFamily::Qwen3:
      cfg.qk_norm = true;
      SPECULA_CHECK(!attention_bias, source, ": attention_bias true is not supported for Qwen3");
      SPECULA_CHECK(!r.boolean_or("use_sliding_window", false), source,
                    ": use_sliding_window true is not supported");
      break;
    case ModelFamily::Llama:
    case ModelFamily::MiniCPM4:
      SPECULA_CHECK(!attention_bias, source, ": attention_bias true (biases on q/k/v/o) is not supported for ",
                    family_name(cfg.family));
      break;
  }
  if (cfg.family == ModelFamily::MiniCPM4) {
    cfg.scale_emb = r.positive_number("scale_emb");
    cfg.scale_depth = r.positive_number("scale_depth");
    cfg.dim_model_base = r.positive_number("dim_model_base");
    cfg.residual_scale = cfg.scale_depth / std::sqrt(static_cast<double>(cfg.num_layers));
    cfg.logit_scale = cfg.dim_model_base / static_cast<double>(cfg.hidden_size);
    if (r.has("sparse_config")) {
      const json& s = j.at("sparse_config");
      SPECULA_CHECK(s.is_object(), source, ": 'sparse_config' must be an object");
      const Reader sr(s, source + " sparse_config");
      SparseConfig sc;
      sc.kernel_size = sr.positive_int_or("kernel_size", sc.kernel_size);
      sc.kernel_stride = sr.positive_int_or("kernel_stride", sc.kernel_stride);
      sc.block_size = sr.positive_int_or("block_size", sc.block_size);
      sc.init_blocks = sr.non_negative_int_or("init_blocks", sc.init_blocks);
      sc.window_size = sr.positive_int_or("window_size", sc.window_size);
      sc.topk = sr.positive_int_or("topk", sc.topk);
      sc.use_nope = sr.boolean_or("use_nope", false);
      // dense_len: dense attention below it, sparse from it on; -1 = always sparse (the model card).
      if (s.contains("dense_len") && s.at("dense_len").is_number_integer() && s.at("dense_len").get<int64_t>() == -1)
        sc.dense_len = -1;
      else
        sc.dense_len = sr.non_negative_int_or("dense_len", sc.dense_len);
      cfg.sparse = sc;
    } else {
      cfg.sparse = SparseConfig{};
      cfg.sparse_defaulted = true;
    }
  }
  cfg.rope = parse_rope(r, cfg);
  cfg.dtype = parse_dtype(r);

  const std::vector<int32_t> bos = r.token_ids("bos_token_id");
  if (!bos.empty()) cfg.bos_token_id = bos.front();
  cfg.eos_token_ids = r.token_ids("eos_token_id");
  if (!generation_config_json.empty()) {
    const std::string gen_source = source.substr(0, source.rfind('/') + 1) + "generation_config.json";
    const json g = io::parse_strict_json_object(generation_config_json, gen_source);
    for (int32_t id : Reader(g, gen_source).token_ids("eos_token_id"))
      if (std::find(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end(), id) == cfg.eos_token_ids.end())
        cfg.eos_token_ids.push_back(id);  // quadratic, but both lists are at most kMaxListedTokenIds
  }
  return cfg;
}

std::vector<float> ModelConfig::rope_inv_freq() const {
  const int64_t half = head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  const float base = static_cast<float>(rope.theta);
  for (int64_t i = 0; i < half; ++i)
    inv[static_cast<size_t>(i)] =
        1.0f / std::pow(base, static_cast<float>(2 * i) / static_cast<float>(head_dim));
  switch (rope.type) {
    case RopeType::Default: break;
    case RopeType::Linear:
      for (float& f : inv) f /= static_cast<float>(rope.factor);
      break;
    case RopeType::Llama3: {
      // transformers _compute_llama3_parameters, in fp32.
      const float factor = static_cast<float>(rope.factor), low = static_cast<float>(rope.low_freq_factor),
                  high = static_cast<float>(rope.high_freq_factor), orig = static_cast<float>(rope.original_max_position);
      const float low_wavelen = orig / low, high_wavelen = orig / high;
      for (float& f : inv) {
        const float wavelen = 2.0f * std::numbers::pi_v<float> / f;
        const float scaled = wavelen > low_wavelen ? f / factor : f;
        const float smooth = (orig / wavelen - low) / (high - low);
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        f = medium ? (1.0f - smooth) * scaled / factor + smooth * scaled : scaled;
      }
      break;
    }
    case RopeType::LongRope: {
      // MiniCPM's MiniCPMLongRoPE: the table is built for max_position_embeddings positions.
      const auto& ext = max_position_embeddings > rope.original_max_position ? rope.long_factor : rope.short_factor;
      for (int64_t i = 0; i < half; ++i)
        inv[static_cast<size_t>(i)] = inv[static_cast<size_t>(i)] / static_cast<float>(ext[static_cast<size_t>(i)]);
      break;
    }
  }
  return inv;
}

float ModelConfig::rope_attention_scaling() const {
  if (rope.type != RopeType::LongRope) return 1.0f;
  const double orig = static_cast<double>(rope.original_max_position);
  return static_cast<float>(
      std::sqrt(1.0 + std::log(static_cast<double>(max_position_embeddings) / orig) / std::log(orig)));
}

std::string ModelConfig::summary() const {
  std::ostringstream out;
  out << "architecture   " << architecture << " (family " << family_name(family) << ")\n"
      << "layers         " << num_layers << ", hidden " << hidden_size << ", intermediate " << intermediate_size << "\n"
      << "attention      " << num_heads << " query heads, " << num_kv_heads << " KV heads (group "
      << num_heads / num_kv_heads << "), head_dim " << head_dim << (qkv_bias ? ", q/k/v bias" : "")
      << (qk_norm ? ", q/k norm" : "") << "\n"
      << "vocab          " << vocab_size << (tie_word_embeddings ? " (tied embeddings)" : "") << "\n"
      << "context        " << max_position_embeddings << " positions; rope " << rope_type_name(rope.type)
      << ", theta " << rope.theta;
  if (rope.type == RopeType::Llama3 || rope.type == RopeType::Linear) out << ", factor " << rope.factor;
  if (rope.original_max_position) out << ", original " << rope.original_max_position;
  out << "\nnorm eps       " << rms_norm_eps << "\n";
  if (family == ModelFamily::MiniCPM4)
    out << "muP            scale_emb " << scale_emb << ", residual x" << residual_scale << ", logits x" << logit_scale
        << "\n";
  if (sparse)
    out << "sparse         InfLLM-V2 topk " << sparse->topk << ", block " << sparse->block_size << ", "
        << (sparse->dense_len < 0 ? std::string("sparse at every length")
                                  : "dense_len " + std::to_string(sparse->dense_len))
        << (sparse_defaulted ? " (published defaults: config.json has no sparse_config)" : "") << "\n";
  out << "eos ids        ";
  for (size_t i = 0; i < eos_token_ids.size(); ++i) out << (i ? ", " : "") << eos_token_ids[i];
  out << "\n";
  return out.str();
}

}  // namespace specula::model
