// Bad requests and options get a clear error (never a crash or a silent truncation): an empty
// prompt, a prompt that fills the context, token ids outside the vocabulary, a context longer
// than a LongRoPE model defines, and bad sampling settings.
#include <gtest/gtest.h>

#include <string>

#include "model_test_util.h"
#include "specula/core/error.h"
#include "specula/engine/generator.h"

namespace {

using namespace specula::testing_util;

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
  const std::string err = error_of([] { load(fixture_dir("minicpm4_longrope"), 8, 1, specula::Device::CPU, 65); });
  EXPECT_NE(err.find("exceeds max_position_embeddings 64 of a LongRoPE model"), std::string::npos) << err;
}

}  // namespace
