// Draft head and FR-Spec loading: the malformed fixtures of tests/data/eagle (made by
// tools/make_eagle_fixtures.py) are refused with errors naming the problem, the target/head
// compatibility checks name both files, and the EAGLE RoPE rule is applied as stated in
// spec/eagle_head.h.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/spec/eagle_head.h"
#include "specula/spec/frspec.h"

namespace {

using namespace specula;
const std::string kEagle = std::string(SPECULA_TEST_DATA) + "/eagle";

engine::EngineOptions options(const std::string& head, const std::string& frspec = "") {
  engine::EngineOptions o;
  o.model_dir = kEagle + "/target_llama3";
  o.draft_dir = head.empty() ? "" : kEagle + "/" + head;
  o.frspec_path = frspec.empty() ? "" : kEagle + "/" + frspec;
  o.threads = 1;
  o.max_context = 64;
  o.prefill_chunk = 16;
  o.tree = {4, 3, 16};
  return o;
}

std::string load_error(const engine::EngineOptions& o) {
  try {
    engine::Engine::load(o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_error(const engine::EngineOptions& o, std::initializer_list<const char*> parts) {
  const std::string what = load_error(o);
  ASSERT_FALSE(what.empty()) << "loaded without an error";
  for (const char* p : parts) EXPECT_NE(what.find(p), std::string::npos) << "'" << p << "' not in: " << what;
}

TEST(SpecLoader, PublishedLayoutsLoad) {
  for (const char* head : {"head_llama_bin", "head_llama_bias_safetensors"}) {
    auto e = engine::Engine::load(options(head));
    ASSERT_NE(e->draft(), nullptr);
    EXPECT_EQ(e->draft()->draft_vocab(), 512);
  }
  auto bin = engine::Engine::load(options("head_llama_bin"));
  EXPECT_TRUE(bin->draft()->weights().fc_bias.empty()) << "a missing fc.bias is zero (no tensor)";
  auto st = engine::Engine::load(options("head_llama_bias_safetensors"));
  EXPECT_FALSE(st->draft()->weights().fc_bias.empty()) << "a present fc.bias is used";
}

TEST(SpecLoader, HeadRopeFollowsTheEagleRule) {
  const model::ModelConfig target = model::ModelConfig::from_dir(kEagle + "/target_llama3");
  // rope_theta present, no scaling: the head's own theta.
  EXPECT_EQ(spec::EagleHeadConfig::read(kEagle + "/head_llama_bin", target).layer.rope.theta, 500000.0);
  // rope_scaling (linear x2) set: EAGLE's _init_rope ignores rope_theta, so 10000, positions / 2.
  const spec::EagleHeadConfig scaled = spec::EagleHeadConfig::read(kEagle + "/head_llama_bias_safetensors", target);
  EXPECT_EQ(scaled.layer.rope.theta, 10000.0);
  EXPECT_EQ(scaled.layer.rope.type, model::RopeType::Linear);
  EXPECT_EQ(scaled.layer.rope.factor, 2.0);
  EXPECT_TRUE(scaled.rope_theta_defaulted);
  // No rope_theta at all: 10000.
  const std::string dir = testing::TempDir() + "/head_no_theta";
  std::filesystem::create_directories(dir);
  std::ifstream in(kEagle + "/head_llama_bin/config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t at = text.find("\"rope_theta\"");
  ASSERT_NE(at, std::string::npos);
  text.erase(at, text.find(',', at) + 1 - at);
  std::ofstream(dir + "/config.json") << text;
  const spec::EagleHeadConfig defaulted = spec::EagleHeadConfig::read(dir, target);
  EXPECT_EQ(defaulted.layer.rope.theta, 10000.0);
  EXPECT_TRUE(defaulted.rope_theta_defaulted);
}

TEST(SpecLoader, MalformedHeadsAreRefusedNamingTheTensor) {
  expect_error(options("bad_fc_shape"), {"fc.weight", "shape"});
  expect_error(options("bad_missing_down_proj"), {"layers.0.mlp.down_proj.weight", "missing"});
  expect_error(options("bad_extra_key"), {"layers.0.mlp.extra_proj.weight", "unexpected"});
}

TEST(SpecLoader, IncompatiblePairsNameBothFiles) {
  // A MiniCPM4 head on a Llama target (family), a Llama head on a MiniCPM4 target of another
  // width (hidden size).
  engine::EngineOptions o = options("head_minicpm4");
  expect_error(o, {"head_minicpm4/config.json", "target_llama3/config.json", "hidden_size"});
  o = options("head_llama_bin");
  o.model_dir = kEagle + "/target_minicpm4";
  expect_error(o, {"head_llama_bin/config.json", "target_minicpm4/config.json", "hidden_size"});
  // Same widths, wrong family: the MiniCPM4 head layout only with MiniCPM4 targets.
  const model::ModelConfig minicpm = model::ModelConfig::from_dir(kEagle + "/target_minicpm4");
  model::ModelConfig llama_like = minicpm;
  llama_like.family = model::ModelFamily::Llama;
  llama_like.source = "a Llama target";
  try {
    spec::EagleHeadConfig::read(kEagle + "/head_minicpm4", llama_like);
    ADD_FAILURE() << "a MiniCPM4 head was accepted for a Llama target";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("MiniCPM4"), std::string::npos) << what;
    EXPECT_NE(what.find("a Llama target"), std::string::npos) << what;
  }
}

TEST(SpecLoader, FrSpecListsAreCheckedAndNeedAHead) {
  auto good = engine::Engine::load(options("head_llama_bin", "freq_good.pt"));
  EXPECT_EQ(good->draft()->draft_vocab(), 128);
  EXPECT_EQ(good->draft()->vocab_map_host().size(), 128u);
  expect_error(options("head_llama_bin", "freq_dup.pt"), {"freq_dup.pt"});
  expect_error(options("head_llama_bin", "freq_range.pt"), {"freq_range.pt", "512"});
  expect_error(options("head_llama_bin", "freq_tensor.pt"), {"freq_tensor.pt"});
  expect_error(options("head_llama_bin", "hostile.pt"), {"hostile.pt"});
  EXPECT_FALSE(std::filesystem::exists("/tmp/specula_hostile_pickle_executed"));
  engine::EngineOptions no_head = options("", "freq_good.pt");
  expect_error(no_head, {"--frspec", "--draft"});
}

TEST(SpecLoader, TreeOptionsAreChecked) {
  engine::EngineOptions o = options("head_llama_bin");
  o.tree = {4, 3, 100};  // at most 1 + 4 + 2 * 16 = 37 nodes
  expect_error(o, {"--tree-size", "37"});
  o.tree = {0, 3, 16};
  expect_error(o, {"--tree-topk"});
}

}  // namespace
