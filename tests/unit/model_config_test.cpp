// Config parsing and weight-layout validation: both config layouts, every rope type, the
// family switches, and a clear error for each thing the engine refuses to guess about; hostile
// files (deep nesting, huge values, wrong types, duplicate keys, FIFOs and devices) fail with a
// short message naming the file and the key, never a crash or a bare library exception.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "specula/core/arena.h"
#include "specula/core/error.h"
#include "io_test_util.h"
#include "specula/io/checkpoint.h"
#include "specula/io/safetensors_writer.h"
#include "specula/model/config.h"
#include "specula/model/weights.h"

namespace {

using nlohmann::json;
using specula::model::ModelConfig;

json base_llama() {
  return json{{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 64},       {"intermediate_size", 96},
              {"num_hidden_layers", 2},                 {"num_attention_heads", 4}, {"num_key_value_heads", 2},
              {"vocab_size", 512},                      {"max_position_embeddings", 256},
              {"rms_norm_eps", 1e-5},                   {"rope_theta", 500000.0}};
}

ModelConfig parse(const json& j, const std::string& gen = "") { return ModelConfig::from_json(j.dump(), "config.json", gen); }

void expect_error(const json& j, const std::string& fragment) {
  try {
    parse(j);
    FAIL() << "expected an error mentioning '" << fragment << "'";
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, ClassicLlamaLayout) {
  json j = base_llama();
  j["eos_token_id"] = {128001, 128009};
  const ModelConfig c = parse(j, R"({"eos_token_id": [128001, 128008]})");
  EXPECT_EQ(c.family, specula::model::ModelFamily::Llama);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{128001, 128009, 128008}));  // union, config first
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(ModelConfig, TransformersFiveLayoutReadsRopeParameters) {
  json j = base_llama();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_theta", 1234.0}, {"rope_type", "default"}};
  j["dtype"] = "bfloat16";
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.rope.theta, 1234.0);
  EXPECT_EQ(c.dtype, specula::DType::BF16);
}

TEST(ModelConfig, MissingRopeThetaIsAnErrorNotADefault) { json j = base_llama(); j.erase("rope_theta"); expect_error(j, "rope_theta"); }

TEST(ModelConfig, Llama3ScalingMatchesTransformers) {
  json j = base_llama();
  j["head_dim"] = 128;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  const std::vector<float> inv = parse(j).rope_inv_freq();
  ASSERT_EQ(inv.size(), 64u);
  // High-frequency entries are unchanged, low-frequency ones divided by the factor, values from
  // transformers' _compute_llama3_parameters for Llama-3.1-8B.
  EXPECT_FLOAT_EQ(inv[0], 1.0f);
  EXPECT_NEAR(inv[63], 1.0f / std::pow(500000.0f, 126.0f / 128.0f) / 8.0f, 1e-12);
  const float f0 = 1.0f / std::pow(500000.0f, 2.0f * 32 / 128.0f);
  const float wavelen = 2.0f * 3.14159265f / f0;
  ASSERT_GT(wavelen, 2048.0f);
  ASSERT_LT(wavelen, 8192.0f);  // entry 32 is in the smooth band
  const float smooth = (8192.0f / wavelen - 1.0f) / 3.0f;
  EXPECT_NEAR(inv[32], (1 - smooth) * f0 / 8.0f + smooth * f0, 1e-6 * f0);
}

TEST(ModelConfig, TypeKeyIsAcceptedForRopeScaling) {
  json j = base_llama();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.rope.type, specula::model::RopeType::Linear);
  EXPECT_FLOAT_EQ(c.rope_inv_freq()[1], 1.0f / std::pow(500000.0f, 2.0f / 16.0f) / 2.0f);
}

TEST(ModelConfig, UnknownRopeTypeIsRefused) {
  json j = base_llama();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_error(j, "'yarn' is not supported");
}

TEST(ModelConfig, UnsupportedArchitectureListsTheSupportedOnes) {
  json j = base_llama();
  j["architectures"] = {"MistralForCausalLM"};
  expect_error(j, "Qwen3ForCausalLM");
  j["architectures"] = {"MiniCPM3ForCausalLM"};
  expect_error(j, "unsupported architecture 'MiniCPM3ForCausalLM'");
}

TEST(ModelConfig, FamilySwitches) {
  json q2 = base_llama();
  q2["architectures"] = {"Qwen2ForCausalLM"};
  EXPECT_TRUE(parse(q2).qkv_bias);
  json q3 = base_llama();
  q3["architectures"] = {"Qwen3ForCausalLM"};
  q3["head_dim"] = 32;
  const ModelConfig c3 = parse(q3);
  EXPECT_TRUE(c3.qk_norm);
  EXPECT_EQ(c3.head_dim, 32);
  EXPECT_EQ(c3.q_size(), 128);
  q3["use_sliding_window"] = true;
  expect_error(q3, "use_sliding_window");
  json llama = base_llama();
  llama["attention_bias"] = true;
  expect_error(llama, "attention_bias");
  llama = base_llama();
  llama["hidden_act"] = "gelu";
  expect_error(llama, "hidden_act 'gelu'");
}

TEST(ModelConfig, MiniCPMMupAndLongRope) {
  json j = base_llama();
  j["architectures"] = {"MiniCPMForCausalLM"};
  j["scale_emb"] = 12;
  j["scale_depth"] = 1.4;
  j["dim_model_base"] = 16;
  j["max_position_embeddings"] = 64;
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", std::vector<double>(8, 1.0)},
                       {"long_factor", std::vector<double>(8, 2.0)}, {"original_max_position_embeddings", 32}};
  const ModelConfig c = parse(j);
  EXPECT_NEAR(c.residual_scale, 1.4 / std::sqrt(2.0), 1e-12);
  EXPECT_NEAR(c.logit_scale, 16.0 / 64.0, 1e-12);
  EXPECT_NEAR(c.rope_attention_scaling(), std::sqrt(1 + std::log(2.0) / std::log(32.0)), 1e-6);
  EXPECT_FLOAT_EQ(c.rope_inv_freq()[0], 0.5f);  // long factors: 64 > 32
  j["rope_scaling"]["long_factor"] = std::vector<double>(7, 2.0);
  expect_error(j, "long_factor has 7 entries");
  j.erase("scale_emb");
  expect_error(j, "scale_emb");
}

TEST(ModelConfig, BadValuesNameTheKey) {
  json j = base_llama();
  j["hidden_size"] = -4;
  expect_error(j, "'hidden_size' must be a positive integer");
  j = base_llama();
  j["num_key_value_heads"] = 3;
  expect_error(j, "not a multiple of num_key_value_heads 3");
  j = base_llama();
  j.erase("vocab_size");
  expect_error(j, "'vocab_size' is missing");
  EXPECT_THROW(ModelConfig::from_json("{not json", "config.json"), specula::Error);
  EXPECT_THROW(ModelConfig::from_json("[1, 2]", "config.json"), specula::Error);
}

// --- hostile files ------------------------------------------------------------------------------

// Far deeper than any stack survives recursing through.
constexpr size_t kHostileDepth = 100000;
// Error messages quote excerpts; this is generous for the fixed text plus a short excerpt.
constexpr size_t kMaxMessageChars = 300;

// The config `j` as text, with `key` set to `value_text` spliced in verbatim (for values a json
// object cannot hold or that would be slow to build as one).
std::string with_raw_value(json j, const std::string& key, const std::string& value_text) {
  j.erase(key);
  std::string text = j.dump();
  text.pop_back();  // the closing brace
  return text + ",\"" + key + "\":" + value_text + "}";
}

// The message of the specula::Error that `body` throws; any other outcome fails the test.
std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const specula::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-specula exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

std::string config_error(const std::string& text, const std::string& generation = "") {
  return error_of([&] { ModelConfig::from_json(text, "model/config.json", generation); });
}

bool contains(const std::string& message, const std::string& part) { return message.find(part) != std::string::npos; }

TEST(ModelConfigHostile, DeepNestingIsRefusedWithTheLimit) {
  const std::string deep_array = std::string(kHostileDepth, '[') + std::string(kHostileDepth, ']');
  std::string deep_object;
  for (size_t i = 0; i < kHostileDepth; ++i) deep_object += "{\"x\":";
  deep_object += "0" + std::string(kHostileDepth, '}');
  for (const std::string& value : {deep_array, deep_object}) {
    for (const char* key : {"rope_scaling", "hidden_size", "unused_extra"}) {
      const std::string message = config_error(with_raw_value(base_llama(), key, value));
      EXPECT_TRUE(contains(message, "model/config.json")) << message;
      EXPECT_TRUE(contains(message, "nesting depth limit of 128")) << message;
      EXPECT_LT(message.size(), kMaxMessageChars) << message;
    }
  }
  const std::string message = config_error(base_llama().dump(), "{\"eos_token_id\": " + deep_array + "}");
  EXPECT_TRUE(contains(message, "model/generation_config.json")) << message;
  EXPECT_TRUE(contains(message, "nesting depth limit")) << message;
}

TEST(ModelConfigHostile, HugeBadValuesGiveShortMessages) {
  std::string huge_array = "[0";
  for (int i = 0; i < 1000000; ++i) huge_array += ",0";
  huge_array += "]";
  const std::string huge_string = "\"" + std::string(1 << 20, 'x') + "\"";
  const std::string huge_rope = "{\"rope_type\": " + huge_string + ", \"factor\": 2.0}";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"hidden_size", huge_array},   {"hidden_size", huge_string},  {"rms_norm_eps", huge_array},
      {"hidden_act", huge_string},   {"tie_word_embeddings", huge_array}, {"eos_token_id", "[1, " + huge_string + "]"},
      {"architectures", "[" + huge_string + "]"}, {"rope_scaling", huge_rope}, {"torch_dtype", huge_string}};
  for (const auto& [key, value] : cases) {
    const std::string message = config_error(with_raw_value(base_llama(), key, value));
    EXPECT_TRUE(contains(message, "model/config.json")) << message.substr(0, kMaxMessageChars);
    EXPECT_LT(message.size(), kMaxMessageChars) << key << ": " << message.substr(0, 2 * kMaxMessageChars);
  }
  // A malformed document quoting a huge token (nlohmann's "last read: ..."), too.
  const std::string message = config_error("{\"hidden_size\": \"" + std::string(1 << 20, 'y'));
  EXPECT_LT(message.size(), kMaxMessageChars) << message.substr(0, 2 * kMaxMessageChars);
}

TEST(ModelConfigHostile, TypeErrorsNameTheFileAndTheKey) {
  json j = base_llama();
  j["rope_scaling"] = {{"rope_type", 5}, {"factor", 2.0}};
  std::string message = config_error(j.dump());
  EXPECT_TRUE(contains(message, "model/config.json: 'rope_scaling.rope_type' must be a string, got 5")) << message;

  j = base_llama();
  j["rope_scaling"] = {{"type", json::array({"linear"})}, {"factor", 2.0}};
  message = config_error(j.dump());
  EXPECT_TRUE(contains(message, "'rope_scaling.type' must be a string")) << message;

  j = base_llama();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_theta", 1e4}, {"rope_type", nullptr}};
  message = config_error(j.dump());
  EXPECT_TRUE(contains(message, "'rope_parameters.rope_type' must be a string")) << message;

  // Previously cast from a double: 1e300 was undefined behaviour, 8192.5 silently truncated.
  for (const json& bad : {json(1e300), json(8192.5), json("8192")}) {
    j = base_llama();
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", bad}};
    message = config_error(j.dump());
    EXPECT_TRUE(contains(message, "'rope_scaling.original_max_position_embeddings' must be a positive integer"))
        << message;
  }

  // A zero low_freq_factor would divide by zero in the llama3 wavelengths.
  j = base_llama();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 0.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  message = config_error(j.dump());
  EXPECT_TRUE(contains(message, "high_freq_factor > low_freq_factor > 0")) << message;

  // Bounded so that products such as num_heads * head_dim cannot overflow.
  j = base_llama();
  j["num_attention_heads"] = int64_t{1} << 40;
  j["head_dim"] = int64_t{1} << 40;
  message = config_error(j.dump());
  EXPECT_TRUE(contains(message, "'num_attention_heads' must be a positive integer of at most 2147483647")) << message;

  j = base_llama();
  j["architectures"] = {"MiniCPMForCausalLM"};
  j["scale_emb"] = 12;
  j["scale_depth"] = 1.4;
  j["dim_model_base"] = 16;
  for (const char* key : {"init_blocks", "dense_len"}) {
    j["sparse_config"] = {{key, "one"}};
    message = config_error(j.dump());
    EXPECT_TRUE(contains(message, "model/config.json sparse_config: '" + std::string(key) + "' must be a non-negative integer"))
        << message;
    // dense_len -1 means "always sparse" (the MiniCPM4.1 model card); below that, and -1 elsewhere, is an error.
    j["sparse_config"] = {{key, std::string(key) == "dense_len" ? -2 : -1}};
    EXPECT_TRUE(contains(config_error(j.dump()), "non-negative integer"));
  }
  j["sparse_config"] = {{"dense_len", -1}};
  EXPECT_EQ(ModelConfig::from_json(j.dump(), "model/config.json").sparse->dense_len, -1);
  EXPECT_FALSE(ModelConfig::from_json(j.dump(), "model/config.json").sparse_defaulted);

  // A MiniCPM4 config.json without sparse_config (MiniCPM4-8B ships so) gets the published
  // defaults, flagged, and the summary says so; other families get none.
  j.erase("sparse_config");
  const ModelConfig defaulted = ModelConfig::from_json(j.dump(), "model/config.json");
  ASSERT_TRUE(defaulted.sparse.has_value());
  EXPECT_TRUE(defaulted.sparse_defaulted);
  EXPECT_EQ(defaulted.sparse->kernel_size, 32);
  EXPECT_EQ(defaulted.sparse->kernel_stride, 16);
  EXPECT_EQ(defaulted.sparse->block_size, 64);
  EXPECT_EQ(defaulted.sparse->init_blocks, 1);
  EXPECT_EQ(defaulted.sparse->window_size, 2048);
  EXPECT_EQ(defaulted.sparse->topk, 64);
  EXPECT_FALSE(defaulted.sparse->use_nope);
  EXPECT_EQ(defaulted.sparse->dense_len, 8192);
  EXPECT_TRUE(contains(defaulted.summary(), "published defaults: config.json has no sparse_config")) << defaulted.summary();
  EXPECT_FALSE(ModelConfig::from_json(base_llama().dump(), "model/config.json").sparse.has_value());
}

// Every value of several valid configs, replaced by each kind of wrong value, gives either a valid
// config or a specula::Error: nlohmann's type_error / out_of_range must never escape.
TEST(ModelConfigHostile, NoWrongValueEscapesAsALibraryException) {
  json llama31 = base_llama();
  llama31["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  llama31["eos_token_id"] = {1, 2};
  llama31["torch_dtype"] = "bfloat16";
  json minicpm = base_llama();
  minicpm["architectures"] = {"MiniCPMForCausalLM"};
  minicpm["scale_emb"] = 12;
  minicpm["scale_depth"] = 1.4;
  minicpm["dim_model_base"] = 16;
  minicpm["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", std::vector<double>(8, 1.0)},
                             {"long_factor", std::vector<double>(8, 2.0)}, {"original_max_position_embeddings", 32}};
  minicpm["sparse_config"] = {{"kernel_size", 32}, {"init_blocks", 1}, {"dense_len", 8192}, {"use_nope", false}};
  json transformers5 = base_llama();
  transformers5.erase("rope_theta");
  transformers5["rope_parameters"] = {{"rope_theta", 1e4}, {"rope_type", "linear"}, {"factor", 2.0}};
  transformers5["rope_scaling"] = transformers5["rope_parameters"];
  transformers5["dtype"] = "float16";

  const std::vector<json> wrong = {nullptr, true, "text", -1, 0, 1.5, 1e300, json(UINT64_MAX), json::array(),
                                   json::array({1}), json::object(), json{{"a", 1}}};
  size_t tried = 0;
  auto try_config = [&](const json& config) {
    ++tried;
    try {
      ModelConfig::from_json(config.dump(), "config.json", config.dump());
    } catch (const specula::Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "library exception escaped: " << e.what() << "\nfor " << config.dump();
    }
  };
  for (const json& good : {llama31, minicpm, transformers5}) {
    for (const auto& [key, value] : good.items()) {
      for (const json& bad : wrong) {
        json config = good;
        config[key] = bad;
        try_config(config);
        // One level down: fields of rope_scaling, sparse_config, ... and list entries.
        if (value.is_structured()) {
          for (const auto& [inner, unused] : value.items()) {
            json nested = good;
            if (value.is_object()) nested[key][inner] = bad;
            else nested[key][std::stoul(inner)] = bad;
            try_config(nested);
          }
        }
      }
    }
  }
  EXPECT_GT(tried, 500u);
}

TEST(ModelConfigHostile, ListsAndFilesAreBounded) {
  json j = base_llama();
  j["eos_token_id"] = std::vector<int>(2000, 7);
  std::string message = config_error(j.dump());
  EXPECT_TRUE(contains(message, "'eos_token_id' lists 2000 token ids, more than the 1024 allowed")) << message;
  message = config_error(base_llama().dump(), json{{"eos_token_id", std::vector<int>(2000, 7)}}.dump());
  EXPECT_TRUE(contains(message, "model/generation_config.json: 'eos_token_id' lists 2000")) << message;

  // A config.json padded past the size bound for config files is not read at all.
  const specula::io::testing::TempDir dir;
  dir.write("config.json", base_llama().dump() + std::string(size_t{17} << 20, ' '));
  message = error_of([&] { ModelConfig::from_dir(dir.path().string()); });
  EXPECT_TRUE(contains(message, dir.file("config.json")) && contains(message, "more than the 16777216 bytes")) << message;
}

TEST(ModelConfigHostile, DuplicateKeysAreRefused) {
  std::string text = base_llama().dump();
  text.insert(1, "\"hidden_size\": 128, ");
  std::string message = config_error(text);
  EXPECT_TRUE(contains(message, "model/config.json: key 'hidden_size' appears twice")) << message;

  json j = base_llama();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  text = j.dump();
  text.replace(text.find("\"factor\""), 0, "\"factor\": 4.0, ");
  message = config_error(text);
  EXPECT_TRUE(contains(message, "key 'factor' appears twice")) << message;

  message = config_error(base_llama().dump(), R"({"eos_token_id": 1, "eos_token_id": 2})");
  EXPECT_TRUE(contains(message, "model/generation_config.json: key 'eos_token_id' appears twice")) << message;
}

TEST(ModelConfigHostile, SpecialFilesAreRefusedWithoutBlocking) {
  namespace fs = std::filesystem;
  const specula::io::testing::TempDir dir;
  const std::string config = dir.file("config.json");
  // A FIFO with no writer: a blocking open would hang here forever.
  ASSERT_EQ(::mkfifo(config.c_str(), 0600), 0);
  std::string message = error_of([&] { ModelConfig::from_dir(dir.path().string()); });
  EXPECT_TRUE(contains(message, config) && contains(message, "FIFO")) << message;

  fs::remove(config);
  fs::create_directory(config);
  message = error_of([&] { ModelConfig::from_dir(dir.path().string()); });
  EXPECT_TRUE(contains(message, config) && contains(message, "directory")) << message;

  fs::remove(config);
  fs::create_symlink("/dev/zero", config);
  message = error_of([&] { ModelConfig::from_dir(dir.path().string()); });
  EXPECT_TRUE(contains(message, config) && contains(message, "character device")) << message;

  // A symlink loop: std::filesystem::exists throws its own exception for one.
  fs::remove(config);
  fs::create_symlink("config.json", config);
  message = error_of([&] { ModelConfig::from_dir(dir.path().string()); });
  EXPECT_TRUE(contains(message, config) && contains(message, "cannot open")) << message;

  // A valid config.json next to a hostile generation_config.json.
  fs::remove(config);
  dir.write("config.json", base_llama().dump());
  const std::string generation = dir.file("generation_config.json");
  ASSERT_EQ(::mkfifo(generation.c_str(), 0600), 0);
  message = error_of([&] { ModelConfig::from_dir(dir.path().string()); });
  EXPECT_TRUE(contains(message, generation) && contains(message, "FIFO")) << message;
}

// --- weight layout validation, on copies of a real fixture with one thing changed ----------------

class WeightLayout : public testing::Test {
 protected:
  std::filesystem::path dir;
  void SetUp() override {
    dir = std::filesystem::temp_directory_path() /
          ("specula_layout_" + std::string(testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(std::string(SPECULA_TEST_DATA) + "/models/llama3_untied_sharded/config.json",
                               dir / "config.json");
  }
  void TearDown() override { std::filesystem::remove_all(dir); }

  // Rewrites the fixture's tensors through `edit` into one safetensors file.
  template <typename Edit>
  void write_edited(Edit edit) {
    const auto src = specula::io::Checkpoint::open(std::string(SPECULA_TEST_DATA) + "/models/llama3_untied_sharded");
    std::vector<specula::io::TensorToWrite> tensors;
    for (const auto& name : src.names()) {
      const auto& t = src.get(name);
      tensors.push_back({name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
    }
    edit(tensors);
    specula::io::write_safetensors((dir / "model.safetensors").string(), tensors);
  }
  std::string validate_error() {
    const ModelConfig config = ModelConfig::from_dir(dir.string());
    const auto checkpoint = specula::io::Checkpoint::open(dir.string());
    specula::ArenaPlan plan;
    try {
      specula::model::plan_weights(config, checkpoint, {}, plan);
    } catch (const specula::Error& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(WeightLayout, UnchangedCopyValidates) {
  write_edited([](auto&) {});
  EXPECT_EQ(validate_error(), "");
}

TEST_F(WeightLayout, MissingTensorIsNamed) {
  write_edited([](auto& ts) { std::erase_if(ts, [](auto& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; }); });
  EXPECT_NE(validate_error().find("'model.layers.1.mlp.up_proj.weight' is missing"), std::string::npos);
}

TEST_F(WeightLayout, WrongShapeIsNamed) {
  write_edited([](auto& ts) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.self_attn.k_proj.weight") t.shape = {64, 32};
  });
  EXPECT_NE(validate_error().find("has shape [64, 32], config.json implies [32, 64]"), std::string::npos);
}

TEST_F(WeightLayout, UnexpectedTensorIsRefused) {
  write_edited([](auto& ts) {
    ts.push_back({"model.layers.0.self_attn.o_proj.bias", specula::DType::BF16, {64}, std::vector<uint8_t>(128)});
  });
  EXPECT_NE(validate_error().find("unexpected tensor 'model.layers.0.self_attn.o_proj.bias'"), std::string::npos);
}

TEST_F(WeightLayout, IntegerWeightIsRefused) {
  write_edited([](auto& ts) {
    for (auto& t : ts)
      if (t.name == "model.norm.weight") {
        t.dtype = specula::DType::I16;
      }
  });
  EXPECT_NE(validate_error().find("dtype I16"), std::string::npos);
}

TEST_F(WeightLayout, UntiedWithoutHeadIsRefused) {
  write_edited([](auto& ts) { std::erase_if(ts, [](auto& t) { return t.name == "lm_head.weight"; }); });
  EXPECT_NE(validate_error().find("no 'lm_head.weight'"), std::string::npos);
}

}  // namespace
