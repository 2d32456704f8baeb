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

namespace {

using specula::engine::Engine;
using specula::engine::EngineOptions;

struct Golden {
  std::vector<int32_t> prompt, greedy;
  int64_t rows = 0, vocab = 0;
  std::vector<float> logits;
};

Golden read_golden(const std::string& dir) {
  Golden g;
  std::ifstream meta(dir + "/golden.json");
  EXPECT_TRUE(meta.good()) << dir << "/golden.json missing";
  const auto j = nlohmann::json::parse(meta);
  g.prompt = j.at("prompt").get<std::vector<int32_t>>();
  g.greedy = j.at("greedy_tokens").get<std::vector<int32_t>>();
  g.rows = j.at("logits_shape").at(0).get<int64_t>();
  g.vocab = j.at("logits_shape").at(1).get<int64_t>();
  g.logits.resize(static_cast<size_t>(g.rows * g.vocab));
  std::ifstream bin(dir + "/golden_logits.f32", std::ios::binary);
  bin.read(reinterpret_cast<char*>(g.logits.data()), static_cast<std::streamsize>(g.logits.size() * 4));
  EXPECT_TRUE(bin.good()) << "short golden_logits.f32 in " << dir;
  return g;
}

std::unique_ptr<Engine> load(const std::string& dir, int64_t chunk, int64_t logit_rows) {
  EngineOptions o;
  o.model_dir = dir;
  o.threads = 2;
  o.max_context = 64;
  o.prefill_chunk = chunk;
  o.max_logit_rows = logit_rows;
  return Engine::load(o);
}

std::vector<float> prompt_logits(Engine& e, const std::vector<int32_t>& prompt) {
  std::vector<int32_t> pos(prompt.size());
  std::iota(pos.begin(), pos.end(), 0);
  e.write_inputs(prompt, pos, pos);
  e.forward(static_cast<int64_t>(prompt.size()), static_cast<int64_t>(prompt.size()));
  std::vector<float> out;
  e.read_logits(static_cast<int64_t>(prompt.size()), out);
  return out;
}

double relative_max_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(ref[i])));
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    max_diff = std::isnan(got[i]) ? INFINITY : std::max(max_diff, d);
  }
  return max_diff / max_ref;
}

class ModelParity : public testing::TestWithParam<std::string> {};

TEST_P(ModelParity, PromptLogitsMatchGolden) {
  const std::string dir = std::string(SPECULA_TEST_DATA) + "/models/" + GetParam();
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
  const std::string dir = std::string(SPECULA_TEST_DATA) + "/models/" + GetParam();
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
  const std::string dir = std::string(SPECULA_TEST_DATA) + "/models/" + GetParam();
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

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelParity,
                         testing::Values("llama3_tied_ropescaling", "llama3_untied_sharded", "qwen2_bias_bin",
                                         "qwen3_headdim_qknorm", "minicpm4_longrope"));

}  // namespace
