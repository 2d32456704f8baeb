// Model parity on the CPU backend: each tiny checkpoint in tests/data/models (real tensor names
// and file layouts, random bf16 weights) must reproduce the golden logits that transformers (or,
// for MiniCPM4, the formula reference in tools/make_model_fixtures.py) computed in fp32 over the
// same weights, and the same 32 greedy tokens.
//
// Tolerance: both sides compute in fp32 over identical bf16 weights, so differences come only
// from summation order and transcendental implementations: we accept max |ours - ref| <= 1e-4 *
// max |ref| (observed ~1e-6). A wrong rope, scale, bias or norm moves logits by >1e-2.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "model_test_util.h"

namespace {

using namespace specula::testing_util;

class ModelParity : public testing::TestWithParam<std::string> {};

TEST_P(ModelParity, PromptLogitsMatchGolden) {
  const std::string dir = fixture_dir(GetParam());
  const Golden g = read_golden(dir);
  auto engine = load(dir, 16, g.rows);
  ASSERT_EQ(engine->config().vocab_size, g.vocab);
  const std::vector<float> logits = prompt_logits(*engine, g.prompt);
  ASSERT_EQ(logits.size(), g.logits.size());
  const double err = relative_max_error(logits, g.logits);
  std::printf("%s: max |diff| / max |ref| = %.3g\n", GetParam().c_str(), err);
  EXPECT_LE(err, 1e-4);
}

TEST_P(ModelParity, GreedyTokensMatchGolden) {
  const std::string dir = fixture_dir(GetParam());
  const Golden g = read_golden(dir);
  // A chunk of 5 splits the 12-token prompt into 5 + 5 + 2: chunked prefill must not change anything.
  auto engine = load(dir, 5, 1);
  specula::engine::Generator gen(*engine);
  specula::engine::GenerationRequest req;
  req.prompt = g.prompt;
  req.max_new_tokens = static_cast<int64_t>(g.greedy.size());
  const auto result = gen.generate(req);
  EXPECT_EQ(result.tokens, g.greedy);
  EXPECT_EQ(result.finish_reason, specula::engine::FinishReason::Length);
}

// Decoding token by token must give the logits a single prefill gives for the last position.
TEST_P(ModelParity, DecodeStepsMatchPrefill) {
  const std::string dir = fixture_dir(GetParam());
  const Golden g = read_golden(dir);
  auto engine = load(dir, 1, 1);
  std::vector<float> logits;
  for (size_t t = 0; t < g.prompt.size(); ++t) {
    const int32_t pos = static_cast<int32_t>(t);
    engine->write_inputs(std::span(&g.prompt[t], 1), std::span(&pos, 1), std::span(&pos, 1));
    engine->forward(1, 1);
  }
  engine->read_logits(1, logits);
  const std::vector<float> last(g.logits.end() - g.vocab, g.logits.end());
  EXPECT_LE(relative_max_error(logits, last), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelParity, testing::ValuesIn(kModelFixtures));

}  // namespace
