// Lossless sampling under speculation (CPU, the tiny fixture target and its EAGLE head, vocab
// 512). Two claims, each able to fail:
//  * coupling: the sampler draws token n with counter n, and the acceptance rule draws the
//    target's token at each tree node from the target's processed distribution, so a seeded
//    speculative run must emit exactly the tokens plain sampling emits with the same seed
//    (temperature, top-k, top-p, min-p and the penalties all act on the target only);
//  * distribution: with independent seeds, the third generated token's distribution under
//    speculation matches plain sampling's by a two-sample chi-square test at p = 0.001
//    (critical value from the Wilson-Hilferty approximation; bins with fewer than 10 expected
//    draws are pooled). This part would also catch a rule that is lossless only on average.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/cuda_context.h"
#endif

namespace {

using namespace specula;
const std::string kEagle = std::string(SPECULA_TEST_DATA) + "/eagle";

std::unique_ptr<engine::Engine> load(bool with_draft, const std::string& frspec = "", Device device = Device::CPU) {
  engine::EngineOptions o;
  o.device = device;
  o.full_precision = device == Device::CUDA;  // fp32 logits: no bf16 near-tie can move a draw
  o.model_dir = kEagle + "/target_llama3";
  if (with_draft) o.draft_dir = kEagle + "/head_llama_bin";
  if (!frspec.empty()) o.frspec_path = kEagle + "/" + frspec;
  o.threads = 2;
  o.max_context = 64;
  o.prefill_chunk = 32;
  o.tree = {4, 3, 16};
  return engine::Engine::load(o);
}

const std::vector<int32_t> kPrompt = {1, 17, 250, 33, 402, 7, 99};

struct Setting {
  const char* name;
  sampling::SamplingParams params;
};

std::vector<Setting> settings() {
  sampling::SamplingParams plain;
  plain.temperature = 1.0f;
  sampling::SamplingParams filtered;
  filtered.temperature = 0.8f;
  filtered.top_p = 0.9f;
  filtered.top_k = 40;
  filtered.repetition_penalty = 1.3f;
  sampling::SamplingParams min_p;
  min_p.temperature = 1.2f;
  min_p.min_p = 0.05f;
  min_p.presence_penalty = 0.5f;
  min_p.frequency_penalty = 0.3f;
  return {{"temperature 1", plain}, {"top-p 0.9 top-k 40 repetition 1.3", filtered},
          {"min-p 0.05 presence/frequency penalties", min_p}};
}

engine::GenerationResult run(engine::Decoder& d, sampling::SamplingParams p, uint64_t seed, int64_t n) {
  engine::GenerationRequest req;
  req.prompt = kPrompt;
  req.max_new_tokens = n;
  p.seed = seed;
  req.sampling = p;
  return d.generate(req);
}

// Seeded speculative runs (full vocabulary and FR-Spec heads) emit exactly plain sampling's tokens
// for seeds 1..seeds of every setting; returns nothing, fails the test on the first difference.
void expect_coupled(engine::Engine& spec, engine::Engine& spec_fr, engine::Engine& plain, uint64_t seeds) {
  auto spec_d = engine::make_decoder(spec), spec_fr_d = engine::make_decoder(spec_fr);
  engine::Generator plain_d(plain);
  for (const Setting& s : settings()) {
    int64_t accepted = 0, passes = 0;
    for (uint64_t seed = 1; seed <= seeds; ++seed) {
      const engine::GenerationResult want = run(plain_d, s.params, seed, 16);
      const engine::GenerationResult got = run(*spec_d, s.params, seed, 16);
      const engine::GenerationResult got_fr = run(*spec_fr_d, s.params, seed, 16);
      ASSERT_EQ(got.tokens, want.tokens) << s.name << ", seed " << seed;
      ASSERT_EQ(got_fr.tokens, want.tokens) << s.name << ", seed " << seed << " (FR-Spec)";
      accepted += got.accepted_tokens;
      passes += got.verifications;
    }
    std::printf("%s: %lld drafts accepted in %lld passes\n", s.name, static_cast<long long>(accepted),
                static_cast<long long>(passes));
    EXPECT_GT(accepted, 0) << s.name << ": no draft was ever accepted, so acceptance was not exercised";
  }
}

TEST(SpecSampling, SeededSpeculativeRunsEqualPlainSampling) {
  auto spec = load(true), spec_fr = load(true, "freq_good.pt"), plain = load(false);
  expect_coupled(*spec, *spec_fr, *plain, 60);
}

// The same coupling on CUDA: the speculative cycle's device ops with the host sampler at the
// visited nodes, against plain CUDA sampling (the device sampler), in the full-precision mode.
TEST(SpecSampling, CudaSeededSpeculativeRunsEqualPlainSampling) {
#ifdef SPECULA_WITH_CUDA
  std::string why;
  if (!cuda::cuda_device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  auto spec = load(true, "", Device::CUDA), spec_fr = load(true, "freq_good.pt", Device::CUDA),
       plain = load(false, "", Device::CUDA);
  expect_coupled(*spec, *spec_fr, *plain, 20);
#else
  GTEST_SKIP() << "this build has no CUDA backend";
#endif
}

// Two-sample chi-square statistic over pooled bins, and its degrees of freedom.
std::pair<double, int> chi_square(const std::map<int32_t, int>& a, const std::map<int32_t, int>& b, int n) {
  std::map<int32_t, std::pair<int, int>> joint;
  for (auto [t, c] : a) joint[t].first += c;
  for (auto [t, c] : b) joint[t].second += c;
  std::vector<std::pair<int, int>> bins;
  std::pair<int, int> pooled{0, 0};
  for (auto [t, c] : joint) {
    if (c.first + c.second < 20) {  // expected < 10 per sample: pool
      pooled.first += c.first;
      pooled.second += c.second;
    } else {
      bins.push_back(c);
    }
  }
  if (pooled.first + pooled.second > 0) bins.push_back(pooled);
  double stat = 0;
  for (auto [x, y] : bins) {
    const double e = (x + y) / 2.0;  // equal sample sizes
    stat += (x - e) * (x - e) / e + (y - e) * (y - e) / e;
  }
  (void)n;
  return {stat, static_cast<int>(bins.size()) - 1};
}

TEST(SpecSampling, TokenDistributionMatchesPlainSampling) {
  constexpr int kDraws = 1500;
  auto spec = load(true), plain = load(false);
  auto spec_d = engine::make_decoder(*spec);
  engine::Generator plain_d(*plain);
  for (const Setting& s : settings()) {
    std::map<int32_t, int> with_spec, without;
    for (int i = 0; i < kDraws; ++i) {
      with_spec[run(*spec_d, s.params, 1000000 + i, 3).tokens.at(2)]++;
      without[run(plain_d, s.params, 2000000 + i, 3).tokens.at(2)]++;
    }
    const auto [stat, df] = chi_square(with_spec, without, kDraws);
    ASSERT_GE(df, 1) << s.name;
    const double z = 3.090;  // one-sided p = 0.001
    const double h = 2.0 / (9.0 * df);
    const double critical = df * std::pow(1.0 - h + z * std::sqrt(h), 3.0);
    std::printf("%s: chi-square %.1f with %d degrees of freedom (critical %.1f at p = 0.001)\n", s.name, stat, df,
                critical);
    EXPECT_LT(stat, critical) << s.name;
  }
}

}  // namespace

namespace {
// Log-probabilities are the plain decoder's: asked of the speculative one, the request is refused
// with a message (never answered without them).
TEST(SpecSampling, LogprobsUnderSpeculationAreRefusedWithAMessage) {
  auto spec = specula::engine::Engine::load([] {
    specula::engine::EngineOptions o;
    o.model_dir = kEagle + "/target_llama3";
    o.draft_dir = kEagle + "/head_llama_bin";
    o.threads = 2;
    o.max_context = 64;
    return o;
  }());
  auto decoder = specula::engine::make_decoder(*spec);
  specula::engine::GenerationRequest req;
  req.prompt = kPrompt;
  req.max_new_tokens = 4;
  req.logprobs = true;
  try {
    decoder->generate(req);
    FAIL() << "a logprobs request ran under speculative decoding";
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find("logprobs are computed by the plain decoder"), std::string::npos) << e.what();
  }
}
}  // namespace
