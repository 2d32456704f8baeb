// Bad requests and options get a clear error (never a crash or a silent truncation): an empty
// prompt, a prompt that fills the context, token ids outside the vocabulary, a context longer
// than a LongRoPE model defines, and bad sampling settings.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "model_test_util.h"
#include "specula/core/error.h"
#include "specula/engine/generator.h"

namespace {

using namespace specula::testing_util;
using specula::engine::Engine;
using specula::engine::EngineOptions;

std::string error_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const specula::Error& e) {
    return e.what();
  }
  return "";
}

TEST(EngineErrors, RequestsAreCheckedBeforeRunning) {
  auto engine = load(fixture_dir("llama3_untied_sharded"), 8, 1, specula::Device::CPU, 16);
  specula::engine::Generator gen(*engine);
  specula::engine::GenerationRequest req;
  EXPECT_NE(error_of([&] { gen.generate(req); }).find("the prompt is empty"), std::string::npos);
  req.prompt.assign(16, 5);
  EXPECT_NE(error_of([&] { gen.generate(req); }).find("the prompt has 16 tokens but the context holds 16"),
            std::string::npos);
  req.prompt = {1, 2, 512};
  EXPECT_NE(error_of([&] { gen.generate(req); }).find("prompt token id 512 is outside the model's vocabulary"),
            std::string::npos);
  req.prompt = {1, 2, 3};
  req.sampling.top_p = 0.0f;
  EXPECT_NE(error_of([&] { gen.generate(req); }).find("top_p"), std::string::npos);
  // After the refusals the engine still generates normally.
  req.sampling = {};
  req.max_new_tokens = 4;
  EXPECT_EQ(gen.generate(req).tokens.size(), 4u);
}

TEST(EngineErrors, GenerationStopsAtTheEndOfTheContext) {
  auto engine = load(fixture_dir("llama3_untied_sharded"), 8, 1, specula::Device::CPU, 16);
  specula::engine::Generator gen(*engine);
  specula::engine::GenerationRequest req;
  req.prompt = {1, 2, 3, 4, 5, 6};
  req.max_new_tokens = 100;
  const auto result = gen.generate(req);
  EXPECT_EQ(result.finish_reason, specula::engine::FinishReason::ContextFull);
  EXPECT_EQ(result.tokens.size(), 16u - 6u + 1u);  // the prompt's pass picks one, then one per free row
}

TEST(EngineErrors, LongRopeContextBeyondTheModelIsRefused) {
  std::string err = error_of([] { load(fixture_dir("minicpm4_longrope"), 8, 1, specula::Device::CPU, 65); });
  EXPECT_NE(err.find("--max-context 65 exceeds the model's own limit of 64 tokens"), std::string::npos) << err;
  // Even when the caller allows contexts past the model's limit, LongRoPE has no table there.
  err = error_of([] {
    EngineOptions o;
    o.model_dir = fixture_dir("minicpm4_longrope");
    o.max_context = 65;
    o.allow_context_beyond_model = true;
    Engine::load(o);
  });
  EXPECT_NE(err.find("exceeds max_position_embeddings 64 of a LongRoPE model"), std::string::npos) << err;
}

TEST(EngineErrors, SizeOptionsOutsideTheirBoundsNameTheOptionAndTheLimit) {
  const auto load_with = [](const std::function<void(EngineOptions&)>& edit) {
    return error_of([&] {
      EngineOptions o;
      o.model_dir = fixture_dir("llama3_untied_sharded");
      o.threads = 1;
      o.max_context = 32;
      edit(o);
      Engine::load(o);
    });
  };
  // 2^55 rows once gave a zero-byte KV cache (the byte count wrapped) and a segfault.
  std::string err = load_with([](EngineOptions& o) { o.max_context = int64_t{1} << 55; });
  EXPECT_NE(err.find("--max-context must be from 0 (the default) to 16777216 tokens, got 36028797018963968"),
            std::string::npos) << err;
  err = load_with([](EngineOptions& o) { o.max_context = int64_t{1} << 62; });
  EXPECT_NE(err.find("--max-context must be from 0"), std::string::npos) << err;
  err = load_with([](EngineOptions& o) { o.prefill_chunk = int64_t{1} << 62; });
  EXPECT_NE(err.find("--prefill-chunk must be from 1 to 65536 tokens"), std::string::npos) << err;
  err = load_with([](EngineOptions& o) { o.prefill_chunk = 0; });
  EXPECT_NE(err.find("--prefill-chunk must be from 1 to 65536 tokens, got 0"), std::string::npos) << err;
  err = load_with([](EngineOptions& o) { o.threads = -4; });
  EXPECT_NE(err.find("--threads must be from 0 (all cores) to 1024, got -4"), std::string::npos) << err;
  err = load_with([](EngineOptions& o) { o.max_context = 300; });  // the fixture's limit is 256
  EXPECT_NE(err.find("exceeds the model's own limit of 256 tokens"), std::string::npos) << err;
  EXPECT_NE(err.find("--allow-long-context"), std::string::npos) << err;
  EXPECT_EQ(load_with([](EngineOptions& o) {
              o.max_context = 300;
              o.allow_context_beyond_model = true;
            }),
            "");
}

// A copy of a fixture folder whose config.json has `key` set to `value`.
std::string fixture_with_config(const std::string& fixture, const std::string& key, int64_t value) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("specula_cfg_" + key + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::copy(fixture_dir(fixture), dir, fs::copy_options::recursive);
  std::ifstream in(dir / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  in.close();
  config[key] = value;
  std::ofstream(dir / "config.json") << config.dump();
  return dir.string();
}

TEST(EngineErrors, ConfigDimensionsAreCheckedAgainstTheCheckpointBeforeAnyLayerTable) {
  // Ten million layers once took 18 GB and minutes before the first missing tensor was named.
  const std::string layers = fixture_with_config("llama3_untied_sharded", "num_hidden_layers", 10000000);
  const auto start = std::chrono::steady_clock::now();
  std::string err = error_of([&] { load(layers, 8, 1); });
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
  EXPECT_NE(err.find("num_hidden_layers is 10000000 but"), std::string::npos) << err;
  EXPECT_NE(err.find("holds 2 layers"), std::string::npos) << err;
  std::filesystem::remove_all(layers);

  const std::string vocab = fixture_with_config("llama3_untied_sharded", "vocab_size", 300000000);
  err = error_of([&] { load(vocab, 8, 1); });
  EXPECT_NE(err.find("vocab_size 300000000 and hidden_size"), std::string::npos) << err;
  EXPECT_NE(err.find("do not match 'model.embed_tokens.weight'"), std::string::npos) << err;
  std::filesystem::remove_all(vocab);
}

}  // namespace
