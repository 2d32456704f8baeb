// Log-probabilities from the plain Generator on the CPU (engine::TokenLogprobs): every generated
// token's logprob and top alternatives must equal a log-softmax, computed here in double, of the
// logits of an independent forward -- a second engine that runs the prompt and the generated
// tokens as one teacher-forced prefill with a logits row per position. Checked for greedy and for
// sampled requests (the sampler's temperature and penalties must not leak into the figures: they
// are the raw model distribution), with top_logprobs 0 (the chosen token's logprob then comes
// from its own logit, not from the top list) and 5. Asking for logprobs must not change the
// tokens. Through the Scheduler with an EAGLE draft head, a logprobs request runs on the plain
// decoder (speculates() false, no verification passes) and others speculate.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "model_test_util.h"
#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "specula/engine/limits.h"
#include "specula/engine/scheduler.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/cuda_context.h"
#endif

namespace {

using namespace specula;
using engine::GenerationRequest;
using engine::GenerationResult;
using engine::TokenLogprobs;
const std::string kTarget = std::string(SPECULA_TEST_DATA) + "/eagle/target_llama3";
const std::string kHead = std::string(SPECULA_TEST_DATA) + "/eagle/head_llama_bin";
constexpr double kTolerance = 1e-4;

GenerationRequest make_request(bool sampled, int top_logprobs) {
  GenerationRequest r;
  r.prompt = {1, 17, 250, 33, 402, 7};
  r.max_new_tokens = 14;
  r.logprobs = true;
  r.top_logprobs = top_logprobs;
  if (sampled) {
    // A high temperature makes tokens outside the top few likely, and the penalties rewrite the
    // sampler's copy of the logits: neither may show in the reported figures.
    r.sampling.temperature = 1.8f;
    r.sampling.repetition_penalty = 1.3f;
    r.sampling.presence_penalty = 0.5f;
    r.sampling.seed = 1234;
  }
  return r;
}

// Log-softmax rows (double) of a teacher-forced forward over prompt + tokens[:-1]; row i belongs
// to generated token i.
std::vector<std::vector<double>> reference_log_softmax(const GenerationRequest& request,
                                                       const std::vector<int32_t>& tokens) {
  auto ref = testing_util::load(kTarget, 64, 64);
  std::vector<int32_t> sequence = request.prompt;
  sequence.insert(sequence.end(), tokens.begin(), tokens.end() - 1);
  const std::vector<float> logits = testing_util::prompt_logits(*ref, sequence);
  const int64_t vocab = ref->config().vocab_size;
  std::vector<std::vector<double>> rows;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const float* x = logits.data() + (request.prompt.size() - 1 + i) * static_cast<size_t>(vocab);
    double max = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v) max = std::max(max, static_cast<double>(x[v]));
    double sum = 0.0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(x[v] - max);
    const double lse = max + std::log(sum);
    std::vector<double> row(static_cast<size_t>(vocab));
    for (int64_t v = 0; v < vocab; ++v) row[static_cast<size_t>(v)] = x[v] - lse;
    rows.push_back(std::move(row));
  }
  return rows;
}

void expect_matches_reference(const GenerationRequest& request, const GenerationResult& result,
                              const std::string& what, double tolerance = kTolerance) {
  ASSERT_FALSE(result.tokens.empty()) << what;
  ASSERT_EQ(result.logprobs.size(), result.tokens.size()) << what;
  const auto rows = reference_log_softmax(request, result.tokens);
  int outside_top = 0;
  for (size_t i = 0; i < result.tokens.size(); ++i) {
    const TokenLogprobs& lp = result.logprobs[i];
    const std::vector<double>& row = rows[i];
    const std::string at = what + ", token " + std::to_string(i);
    EXPECT_EQ(lp.token, result.tokens[i]) << at;
    EXPECT_NEAR(lp.logprob, row[static_cast<size_t>(lp.token)], tolerance) << at;
    ASSERT_EQ(lp.top.size(), static_cast<size_t>(request.top_logprobs)) << at;
    std::vector<int32_t> order(row.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    if (order[0] != lp.token) ++outside_top;
    for (size_t j = 0; j < lp.top.size(); ++j) {
      EXPECT_NEAR(lp.top[j].logprob, row[static_cast<size_t>(order[j])], tolerance) << at << ", top " << j;
      // The ids must agree unless the reference has a near tie at this rank.
      const bool tie = (j > 0 && row[order[j - 1]] - row[order[j]] < 10 * tolerance) ||
                       (row[order[j]] - row[order[j + 1]] < 10 * tolerance);
      if (!tie) EXPECT_EQ(lp.top[j].token, order[j]) << at << ", top " << j;
      EXPECT_NEAR(lp.top[j].logprob, row[static_cast<size_t>(lp.top[j].token)], tolerance) << at << ", top " << j;
      if (j > 0) EXPECT_LE(lp.top[j].logprob, lp.top[j - 1].logprob) << at;
    }
  }
  if (request.sampling.temperature > 1.0f)  // else the chosen-not-in-top path went untested
    EXPECT_GT(outside_top, 0) << what << ": every sampled token was the most likely one";
}

engine::Engine& shared_engine() {
  static std::unique_ptr<engine::Engine> e = testing_util::load(kTarget, 32, 1);
  return *e;
}

TEST(GeneratorLogprobs, EqualLogSoftmaxOfAnIndependentForward) {
  engine::Generator generator(shared_engine());
  for (bool sampled : {false, true})
    for (int top : {0, 5, engine::kMaxTopLogprobs}) {
      const GenerationRequest request = make_request(sampled, top);
      const std::string what = std::string(sampled ? "sampled" : "greedy") + ", top_logprobs " + std::to_string(top);
      const GenerationResult result = generator.generate(request);
      expect_matches_reference(request, result, what);
      // The same request without logprobs produces the same tokens.
      GenerationRequest plain = request;
      plain.logprobs = false;
      plain.top_logprobs = 0;
      const GenerationResult without = generator.generate(plain);
      EXPECT_EQ(without.tokens, result.tokens) << what;
      EXPECT_TRUE(without.logprobs.empty()) << what;
    }
}

TEST(GeneratorLogprobs, StreamedBeforeEachTokenAndRefusedOutOfRange) {
  engine::Generator generator(shared_engine());
  GenerationRequest request = make_request(true, 3);
  std::vector<TokenLogprobs> streamed;
  std::vector<int32_t> tokens;
  engine::GenerationCallbacks callbacks;
  callbacks.on_logprobs = [&](const TokenLogprobs& lp) { streamed.push_back(lp); };
  callbacks.on_token = [&](int32_t id) {
    EXPECT_EQ(streamed.size(), tokens.size() + 1);
    if (!streamed.empty()) EXPECT_EQ(streamed.back().token, id);
    tokens.push_back(id);
    return true;
  };
  const GenerationResult result = generator.generate(request, callbacks);
  EXPECT_EQ(tokens, result.tokens);
  ASSERT_EQ(streamed.size(), result.logprobs.size());
  for (size_t i = 0; i < streamed.size(); ++i) EXPECT_EQ(streamed[i].logprob, result.logprobs[i].logprob);

  request.top_logprobs = engine::kMaxTopLogprobs + 1;
  EXPECT_THROW(generator.generate(request), Error);
  request.top_logprobs = -1;
  EXPECT_THROW(generator.generate(request), Error);
  request.logprobs = false;
  request.top_logprobs = 2;
  EXPECT_THROW(generator.generate(request), Error);
}

TEST(SchedulerLogprobs, RequestsWithLogprobsRunOnThePlainDecoder) {
  engine::EngineOptions o;
  o.model_dir = kTarget;
  o.draft_dir = kHead;
  o.threads = 2;
  o.max_context = 64;
  o.prefill_chunk = 32;
  o.tree = {4, 3, 16};
  auto e = engine::Engine::load(o);
  engine::Scheduler scheduler(*e, 4);
  GenerationRequest with = make_request(false, 2);
  GenerationRequest without = with;
  without.logprobs = false;
  without.top_logprobs = 0;
  EXPECT_FALSE(scheduler.speculates(with));
  EXPECT_TRUE(scheduler.speculates(without));
  const GenerationResult plain = scheduler.generate_blocking(with);
  const GenerationResult spec = scheduler.generate_blocking(without);
  EXPECT_EQ(plain.verifications, 0);
  EXPECT_GT(spec.verifications, 0);
  EXPECT_TRUE(spec.logprobs.empty());
  // Speculation is lossless: greedy tokens agree, and the plain run's figures are the model's.
  EXPECT_EQ(plain.tokens, spec.tokens);
  expect_matches_reference(with, plain, "through the scheduler");
}

#ifdef SPECULA_WITH_CUDA
// The same claims on the CUDA backend (full precision: F32 activations, so the teacher-forced CPU
// reference applies at a tight tolerance), greedy (the argmax in the decode graph) and sampled
// (the draw moves out of the graph, after the capture): the figures equal the CPU's log-softmax of
// an independent forward over the GPU's tokens, and asking for them does not change the tokens.
// In bf16 the tokens must not change either.
TEST(GeneratorLogprobs, CudaEqualTheCpuReferenceAndKeepTheTokens) {
  std::string why;
  if (!cuda::cuda_device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  for (bool full_precision : {true, false}) {
    auto gpu = testing_util::load(kTarget, 32, 1, Device::CUDA, 64, full_precision);
    engine::Generator generator(*gpu);
    for (bool sampled : {false, true})
      for (int top : {0, 5}) {
        const GenerationRequest request = make_request(sampled, top);
        const std::string what = std::string(full_precision ? "f32" : "bf16") + (sampled ? ", sampled" : ", greedy") +
                                 ", top_logprobs " + std::to_string(top);
        const GenerationResult result = generator.generate(request);
        GenerationRequest plain = request;
        plain.logprobs = false;
        plain.top_logprobs = 0;
        EXPECT_EQ(generator.generate(plain).tokens, result.tokens) << what;
        ASSERT_EQ(result.logprobs.size(), result.tokens.size()) << what;
        // F32 on both sides, different kernels and summation orders: logits agree to ~1e-4
        // relative (the CUDA parity tests' bound), so 2e-3 absolute on log-probabilities.
        if (full_precision) expect_matches_reference(request, result, what, 2e-3);
      }
  }
}
#endif

}  // namespace
