// Config parsing and weight-layout validation: both config layouts, every rope type, the
// family switches, and a clear error for each thing the engine refuses to guess about.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "specula/core/arena.h"
#include "specula/core/error.h"
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
