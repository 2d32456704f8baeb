// Sampling: penalties, temperature, top-k/top-p/min-p supports, draw statistics, seeding,
// parameter validation and speed on a 151936-entry vocabulary.
// Expected supports come from hand computation and from a literal, slow re-implementation of
// transformers' processors (full sort, double precision) that the fast sampler must agree with.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "specula/core/error.h"
#include "specula/sampling/random.h"
#include "specula/sampling/sampler.h"

using namespace specula;
using namespace specula::sampling;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
const std::vector<int32_t> kNoIds;

SamplingParams with_temperature(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  return p;
}

std::vector<float> probs_of(const SamplingParams& p, const std::vector<float>& logits,
                            const std::vector<int32_t>& prompt = {}, const std::vector<int32_t>& generated = {}) {
  std::vector<float> out;
  Sampler(p).probabilities(logits, prompt, generated, out);
  return out;
}

int32_t greedy(const SamplingParams& p, std::vector<float> logits, const std::vector<int32_t>& prompt = {},
               const std::vector<int32_t>& generated = {}) {
  Sampler s(p);
  return s.sample(logits, prompt, generated);
}

std::vector<double> softmax(const std::vector<double>& x) {
  double max = -std::numeric_limits<double>::infinity();
  for (double v : x) max = std::max(max, v);
  std::vector<double> p(x.size());
  double total = 0;
  for (size_t i = 0; i < x.size(); ++i) total += (p[i] = std::exp(x[i] - max));
  for (double& v : p) v /= total;
  return p;
}

// transformers' processors written out literally: full sorts, softmax recomputed at each stage.
std::vector<double> reference_probs(std::vector<float> logits, const SamplingParams& p,
                                    const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated) {
  const size_t n = logits.size();
  if (p.repetition_penalty != 1.0f) {
    std::set<int32_t> ids(prompt.begin(), prompt.end());
    ids.insert(generated.begin(), generated.end());
    for (int32_t id : ids) {
      float& x = logits[id];
      x = x < 0 ? x * p.repetition_penalty : x / p.repetition_penalty;
    }
  }
  std::map<int32_t, int> counts;
  for (int32_t id : generated) ++counts[id];
  for (auto [id, c] : counts) {
    logits[id] -= p.frequency_penalty * static_cast<float>(c);
    logits[id] -= p.presence_penalty;
  }
  std::vector<double> out(n, 0.0);
  if (p.is_greedy()) {
    out[std::max_element(logits.begin(), logits.end()) - logits.begin()] = 1.0;
    return out;
  }
  std::vector<double> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = logits[i] / p.temperature;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (p.top_k > 0) {
    std::vector<double> sorted = x;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    const double kth = sorted[std::min<size_t>(p.top_k, n) - 1];
    for (double& v : x) if (v < kth) v = neg_inf;
  }
  if (p.top_p < 1.0f) {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    // Ascending; among equal logits the higher id first, so lower ids are cut last.
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] < x[b] || (x[a] == x[b] && a > b); });
    std::vector<double> sorted(n);
    for (size_t i = 0; i < n; ++i) sorted[i] = x[order[i]];
    const std::vector<double> sp = softmax(sorted);
    double cumulative = 0;
    for (size_t i = 0; i + 1 < n; ++i) {
      cumulative += sp[i];
      if (cumulative <= 1.0 - static_cast<double>(p.top_p)) x[order[i]] = neg_inf;
    }
  }
  if (p.min_p > 0.0f) {
    const std::vector<double> probs = softmax(x);
    const double top = *std::max_element(probs.begin(), probs.end());
    for (size_t i = 0; i < n; ++i) if (probs[i] < p.min_p * top) x[i] = neg_inf;
  }
  return softmax(x);
}

void expect_support(const std::vector<float>& probs, const std::vector<int32_t>& support) {
  std::vector<int32_t> actual;
  double total = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] > 0) actual.push_back(static_cast<int32_t>(i));
    total += probs[i];
  }
  EXPECT_EQ(actual, support);
  EXPECT_NEAR(total, 1.0, 1e-6);
}

// Softmax of `logits` restricted to `support`, the expected renormalised distribution.
std::vector<float> restricted_softmax(const std::vector<float>& logits, const std::vector<int32_t>& support) {
  std::vector<double> x(logits.size(), -std::numeric_limits<double>::infinity());
  for (int32_t id : support) x[id] = logits[id];
  const std::vector<double> p = softmax(x);
  return std::vector<float>(p.begin(), p.end());
}

void expect_probs_near(const std::vector<float>& actual, const std::vector<float>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) EXPECT_NEAR(actual[i], expected[i], 1e-6) << "token " << i;
}

template <typename Body>
void expect_error_mentioning(const std::string& word, Body body) {
  try {
    body();
    ADD_FAILURE() << "expected specula::Error mentioning '" << word << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
  }
}

std::vector<float> logs(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

}  // namespace

TEST(SamplingRandom, UniformIsCounterBasedAndInRange) {
  static_assert(uniform01(3, 4) == uniform01(3, 4), "usable in constant expressions");
  EXPECT_EQ(random_bits(42, 7), random_bits(42, 7));
  EXPECT_NE(random_bits(42, 7), random_bits(42, 8));
  EXPECT_NE(random_bits(42, 7), random_bits(43, 7));
  double sum = 0, sum_sq = 0;
  constexpr int kN = 200000;
  for (int i = 0; i < kN; ++i) {
    const float u = uniform01(0, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sum_sq += double(u) * u;
  }
  EXPECT_NEAR(sum / kN, 0.5, 0.005);
  EXPECT_NEAR(sum_sq / kN - (sum / kN) * (sum / kN), 1.0 / 12, 0.002);
  // Neighbouring seeds must not give shifted copies of one stream, and consecutive counters
  // must not repeat or correlate (lag-1 correlation of independent uniforms is ~N(0, 1/n)).
  int equal = 0, repeats = 0;
  double lag = 0;
  for (int i = 0; i < kN; ++i) {
    equal += uniform01(1, i) == uniform01(2, i + 1);
    repeats += uniform01(9, i) == uniform01(9, i + 1);
    lag += (uniform01(9, i) - 0.5) * (uniform01(9, i + 1) - 0.5);
  }
  EXPECT_LT(equal, 10);
  EXPECT_LT(repeats, 10);
  EXPECT_NEAR(lag / kN * 12, 0.0, 5.0 / std::sqrt(kN));
}

TEST(SamplingParams, ValidateRejectsEachBadField) {
  EXPECT_NO_THROW(SamplingParams{}.validate());
  const auto bad = [](const std::string& field, auto mutate) {
    SamplingParams p;
    mutate(p);
    expect_error_mentioning(field, [&] { p.validate(); });
    expect_error_mentioning(field, [&] { Sampler s(p); });
  };
  bad("temperature", [](SamplingParams& p) { p.temperature = -0.1f; });
  bad("temperature", [](SamplingParams& p) { p.temperature = NAN; });
  bad("top_k", [](SamplingParams& p) { p.top_k = -1; });
  bad("top_p", [](SamplingParams& p) { p.top_p = 0.0f; });
  bad("top_p", [](SamplingParams& p) { p.top_p = 1.01f; });
  bad("top_p", [](SamplingParams& p) { p.top_p = -0.5f; });
  bad("min_p", [](SamplingParams& p) { p.min_p = -0.01f; });
  bad("min_p", [](SamplingParams& p) { p.min_p = 1.5f; });
  bad("repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 0.0f; });
  bad("repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = -1.0f; });
  bad("presence_penalty", [](SamplingParams& p) { p.presence_penalty = INFINITY; });
  bad("frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = NAN; });
  // Range edges that are allowed.
  SamplingParams edge;
  edge.top_p = 1.0f;
  edge.min_p = 1.0f;
  edge.top_k = 0;
  edge.temperature = 0.0f;
  EXPECT_NO_THROW(edge.validate());
  EXPECT_TRUE(edge.is_greedy());
  EXPECT_FALSE(with_temperature(0.5f).is_greedy());
}

TEST(SamplingGreedy, ArgmaxWithTiesToLowestId) {
  EXPECT_EQ(greedy({}, {1.0f, 3.0f, 3.0f, 2.0f}), 1);
  EXPECT_EQ(greedy({}, {kNegInf, -5.0f, kNegInf}), 1);
  EXPECT_EQ(greedy({}, {7.0f}), 0);
  // Filters do not move the argmax.
  SamplingParams p;
  p.top_k = 1;
  p.top_p = 0.1f;
  p.min_p = 0.9f;
  EXPECT_EQ(greedy(p, {0.5f, 0.2f, 0.9f, 0.9f}), 2);
  expect_probs_near(probs_of(p, {0.5f, 0.2f, 0.9f, 0.9f}), {0, 0, 1, 0});
}

TEST(SamplingGreedy, RepetitionPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  // Positive: 2.0 / 2 = 1.0 < 1.5.
  EXPECT_EQ(greedy(p, {2.0f, 1.5f, -1.0f}, {0}), 1);
  EXPECT_EQ(greedy({}, {2.0f, 1.5f, -1.0f}, {0}), 0);
  // Negative: -1.0 * 2 = -2.0 < -1.5.
  EXPECT_EQ(greedy(p, {-1.0f, -1.5f, -3.0f}, {}, {0}), 1);
  // Applies to prompt and generated ids, each id once: 4 / 2 = 2 > 1.5 (three times would be 0.5).
  EXPECT_EQ(greedy(p, {4.0f, 1.5f}, {0, 0}, {0}), 0);
  // The penalised logits are left in place.
  std::vector<float> logits = {4.0f, -1.0f, 3.0f};
  std::vector<int32_t> prompt = {0, 1, 0};
  Sampler(p).sample(logits, prompt, kNoIds);
  EXPECT_EQ(logits, (std::vector<float>{2.0f, -2.0f, 3.0f}));
}

TEST(SamplingGreedy, PresenceAndFrequencyPenaltiesUseGeneratedCounts) {
  SamplingParams presence;
  presence.presence_penalty = 0.3f;
  // Once or three times, presence subtracts 0.3 once: 1.0 - 0.3 = 0.7 < 0.8.
  EXPECT_EQ(greedy(presence, {1.0f, 0.8f, 0.1f}, {}, {0}), 1);
  EXPECT_EQ(greedy(presence, {1.0f, 0.8f, 0.1f}, {}, {0, 0, 0}), 1);
  // Both generated tokens are penalised, the unseen one wins: 0.7, 0.6 < 0.75.
  EXPECT_EQ(greedy(presence, {1.0f, 0.9f, 0.75f}, {}, {0, 1}), 2);
  // Prompt ids are not penalised by presence/frequency.
  EXPECT_EQ(greedy(presence, {1.0f, 0.8f}, {0, 0}, {}), 0);

  SamplingParams frequency;
  frequency.frequency_penalty = 0.1f;
  EXPECT_EQ(greedy(frequency, {1.0f, 0.8f}, {}, {0}), 0);        // 0.9 > 0.8
  EXPECT_EQ(greedy(frequency, {1.0f, 0.8f}, {}, {0, 0, 0}), 1);  // 0.7 < 0.8
  EXPECT_EQ(greedy(frequency, {1.0f, 0.8f}, {}, {0, 1, 0, 1, 1, 0, 0}), 0);  // 0.6 > 0.5

  // Both, and after the repetition penalty: (2.0 / 2) - 0.1*2 - 0.5 = 0.3 < 0.4.
  SamplingParams all;
  all.repetition_penalty = 2.0f;
  all.frequency_penalty = 0.1f;
  all.presence_penalty = 0.5f;
  std::vector<float> logits = {2.0f, 0.4f};
  std::vector<int32_t> generated = {0, 0};
  EXPECT_EQ(Sampler(all).sample(logits, kNoIds, generated), 1);
  EXPECT_NEAR(logits[0], 0.3f, 1e-6);
  EXPECT_EQ(logits[1], 0.4f);
}

TEST(SamplingSupport, TemperatureScalesLogits) {
  const std::vector<float> logits = {1.0f, 2.0f, -0.5f, 0.0f};
  std::vector<float> halved = logits;
  for (float& x : halved) x /= 2.0f;
  expect_probs_near(probs_of(with_temperature(2.0f), logits), restricted_softmax(halved, {0, 1, 2, 3}));
  expect_probs_near(probs_of(with_temperature(1.0f), logits), restricted_softmax(logits, {0, 1, 2, 3}));
  // -inf tokens are never in the support.
  expect_support(probs_of(with_temperature(1.0f), {0.0f, kNegInf, 1.0f}), {0, 2});
}

TEST(SamplingSupport, TopKKeepsTiesAtTheKthValue) {
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, 2.0f, 0.0f};
  SamplingParams p = with_temperature(1.0f);
  p.top_k = 2;
  expect_probs_near(probs_of(p, logits), {0, 0.5f, 0.5f, 0, 0});
  p.top_k = 1;  // the k-th value is 3, both 3s stay
  expect_support(probs_of(p, logits), {1, 2});
  p.top_k = 3;
  expect_probs_near(probs_of(p, logits), restricted_softmax(logits, {1, 2, 3}));
  p.top_k = 5;
  expect_support(probs_of(p, logits), {0, 1, 2, 3, 4});
  p.top_k = 1000;  // larger than the vocabulary: off
  expect_support(probs_of(p, logits), {0, 1, 2, 3, 4});
  // k-th value tied by several below the top.
  p.top_k = 2;
  expect_support(probs_of(p, {3.0f, 2.0f, 2.0f, 2.0f, 1.0f}), {0, 1, 2, 3});
  // Fewer finite logits than k: only the finite ones.
  p.top_k = 3;
  expect_support(probs_of(p, {kNegInf, 1.0f, kNegInf, 0.0f}), {1, 3});
}

TEST(SamplingSupport, TopPCutsAtCumulativeProbabilityIncludingEdges) {
  SamplingParams p = with_temperature(1.0f);
  // Four equal logits: probabilities are exactly 1/4, ascending cumulative 1/4, 1/2, 3/4, 1.
  const std::vector<float> equal(4, 0.0f);
  p.top_p = 0.5f;  // removes cumulative <= 0.5: two tokens, equal-logit ties cut at the high ids
  expect_probs_near(probs_of(p, equal), {0.5f, 0.5f, 0, 0});
  p.top_p = 0.51f;  // 1/2 > 0.49: three stay
  expect_probs_near(probs_of(p, equal), {1 / 3.0f, 1 / 3.0f, 1 / 3.0f, 0});
  p.top_p = 0.25f;  // 3/4 <= 3/4: one stays
  expect_probs_near(probs_of(p, equal), {1, 0, 0, 0});
  p.top_p = 1.0f;
  expect_support(probs_of(p, equal), {0, 1, 2, 3});

  // Probabilities 0.1, 0.2, 0.3, 0.4 (ids 0..3): ascending cumulative 0.1, 0.3, 0.6, 1.0.
  const std::vector<float> graded = logs({0.1, 0.2, 0.3, 0.4});
  p.top_p = 0.6f;  // limit 0.4: 0.1 and 0.3 go
  expect_probs_near(probs_of(p, graded), {0, 0, 3 / 7.0f, 4 / 7.0f});
  p.top_p = 0.75f;  // limit 0.25: only 0.1 goes
  expect_probs_near(probs_of(p, graded), {0, 2 / 9.0f, 3 / 9.0f, 4 / 9.0f});
  p.top_p = 0.95f;  // limit 0.05: nothing goes
  expect_support(probs_of(p, graded), {0, 1, 2, 3});
  p.top_p = 0.3f;  // limit 0.7: 0.6 goes, the top always stays
  expect_probs_near(probs_of(p, graded), {0, 0, 0, 1});
  p.top_p = 1e-6f;
  expect_support(probs_of(p, graded), {3});
  // Order does not matter: the same probabilities permuted.
  p.top_p = 0.6f;
  expect_probs_near(probs_of(p, logs({0.3, 0.1, 0.4, 0.2})), {3 / 7.0f, 0, 4 / 7.0f, 0});
}

TEST(SamplingSupport, TopPAfterTopKRenormalisesFirst) {
  const std::vector<float> graded = logs({0.1, 0.2, 0.3, 0.4});
  SamplingParams p = with_temperature(1.0f);
  p.top_p = 0.5f;  // alone: limit 0.5 removes 0.1 and 0.2 (cumulative 0.1, 0.3)
  expect_support(probs_of(p, graded), {2, 3});
  p.top_k = 2;  // after top-k the two are 3/7 and 4/7: 3/7 <= 0.5 goes too
  expect_support(probs_of(p, graded), {3});
}

TEST(SamplingSupport, MinPKeepsRatioToTheTop) {
  const std::vector<float> logits = {0.0f, 0.0f, -1.0f, -3.0f};  // ratios 1, 1, e^-1 = 0.368, e^-3 = 0.05
  SamplingParams p = with_temperature(1.0f);
  p.min_p = 0.3f;
  expect_probs_near(probs_of(p, logits), restricted_softmax(logits, {0, 1, 2}));
  p.min_p = 0.36f;
  expect_support(probs_of(p, logits), {0, 1, 2});
  p.min_p = 0.37f;
  expect_support(probs_of(p, logits), {0, 1});
  p.min_p = 1.0f;  // only ties with the top
  expect_probs_near(probs_of(p, logits), {0.5f, 0.5f, 0, 0});
  p.min_p = 0.04f;
  expect_support(probs_of(p, logits), {0, 1, 2, 3});
  // Temperature first: at T = 0.5 the ratio of token 2 is e^-2 = 0.135.
  p = with_temperature(0.5f);
  p.min_p = 0.2f;
  expect_support(probs_of(p, logits), {0, 1});
  // After top-p: top-p keeps {0, 1, 2} here, min-p then drops nothing new at 0.3.
  p = with_temperature(1.0f);
  p.top_p = 0.9f;
  p.min_p = 0.3f;
  expect_support(probs_of(p, logits), {0, 1, 2});
}

TEST(SamplingSupport, MatchesLiteralTransformersReferenceOnRandomCases) {
  std::mt19937 rng(1234);
  const std::vector<int> top_ks = {0, 0, 1, 2, 3, 5, 8, 100};
  const std::vector<float> top_ps = {1.0f, 1.0f, 0.1f, 0.3f, 0.5f, 0.75f, 0.9f, 0.95f, 0.99f};
  const std::vector<float> min_ps = {0.0f, 0.0f, 0.02f, 0.1f, 0.5f, 1.0f};
  const std::vector<float> temperatures = {1.0f, 0.5f, 1.7f};
  int checked = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    // Every 50th case is large with logits on a 0.01 grid: many tokens, and many ties, share
    // the histogram bucket where the top-p cut falls.
    const bool large = trial % 50 == 0;
    const int vocab = large ? 3000 : 1 + static_cast<int>(rng() % 40);
    std::vector<float> logits(vocab);
    const bool wide = trial % 2 == 1;  // wide spreads spread tokens over many buckets
    for (float& x : logits) {
      if (large) {
        x = 0.01f * std::round(100.0f * std::normal_distribution<float>(0.0f, 1.0f)(rng));
      } else {
        x = wide ? std::normal_distribution<float>(0.0f, 6.0f)(rng) : 0.5f * static_cast<float>(int(rng() % 9) - 4);
      }
      if (rng() % 10 == 0) x = kNegInf;
    }
    if (std::all_of(logits.begin(), logits.end(), [](float x) { return x == kNegInf; })) logits[0] = 0.0f;
    SamplingParams p;
    p.temperature = temperatures[rng() % temperatures.size()];
    p.top_k = top_ks[rng() % top_ks.size()];
    p.top_p = rng() % 4 == 0 ? std::uniform_real_distribution<float>(0.01f, 1.0f)(rng) : top_ps[rng() % top_ps.size()];
    p.min_p = min_ps[rng() % min_ps.size()];
    std::vector<int32_t> prompt, generated;
    if (rng() % 3 == 0) {
      p.repetition_penalty = 1.3f;
      p.presence_penalty = 0.2f;
      p.frequency_penalty = 0.15f;
      for (int i = 0; i < 5; ++i) prompt.push_back(static_cast<int32_t>(rng() % vocab));
      for (int i = 0; i < 6; ++i) generated.push_back(static_cast<int32_t>(rng() % vocab));
    }
    const std::vector<double> expected = reference_probs(logits, p, prompt, generated);
    const std::vector<float> actual = probs_of(p, logits, prompt, generated);
    ASSERT_EQ(actual.size(), expected.size());
    for (int i = 0; i < vocab; ++i) {
      ASSERT_EQ(actual[i] > 0, expected[i] > 0) << "trial " << trial << " token " << i << " T=" << p.temperature
                                                << " k=" << p.top_k << " p=" << p.top_p << " min_p=" << p.min_p;
      ASSERT_NEAR(actual[i], expected[i], 2e-6) << "trial " << trial << " token " << i;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 3000);
}

TEST(SamplingDraw, FrequenciesMatchProbabilitiesAndStayInSupport) {
  struct Case {
    SamplingParams params;
    std::vector<float> logits;
  };
  std::vector<Case> cases;
  {
    SamplingParams p = with_temperature(0.8f);
    p.top_k = 6;
    p.top_p = 0.9f;
    p.min_p = 0.05f;
    p.seed = 11;
    cases.push_back({p, {1.0f, 2.5f, -0.5f, 2.0f, 0.3f, kNegInf, 1.8f, -2.0f, 2.4f, 0.9f}});
  }
  {
    SamplingParams p = with_temperature(1.0f);
    p.seed = 5;
    cases.push_back({p, {0.0f, 0.5f, 1.0f, -1.0f, 0.2f, -3.0f, 0.7f, 0.0f}});
  }
  {
    SamplingParams p = with_temperature(1.3f);
    p.top_p = 0.7f;
    p.repetition_penalty = 1.5f;
    p.seed = 99;
    cases.push_back({p, {2.0f, 2.0f, 1.0f, 0.5f, 0.0f, -0.5f}});
  }
  for (const Case& c : cases) {
    const std::vector<int32_t> prompt = {0, 3};
    std::vector<float> probs;
    Sampler sampler(c.params);
    sampler.probabilities(c.logits, prompt, kNoIds, probs);
    constexpr int kDraws = 20000;
    std::vector<int> counts(c.logits.size(), 0);
    for (int i = 0; i < kDraws; ++i) {
      std::vector<float> logits = c.logits;
      ++counts[sampler.sample(logits, prompt, kNoIds)];
    }
    EXPECT_EQ(sampler.draw_counter(), static_cast<uint64_t>(kDraws));
    double chi2 = 0;
    int support = 0;
    for (size_t t = 0; t < probs.size(); ++t) {
      if (probs[t] == 0) {
        EXPECT_EQ(counts[t], 0) << "token " << t << " is outside the support";
        continue;
      }
      ++support;
      const double expected = probs[t] * kDraws;
      chi2 += (counts[t] - expected) * (counts[t] - expected) / expected;
    }
    ASSERT_GE(support, 2);
    // Wilson-Hilferty approximation of the 99.9% chi-square quantile.
    const double df = support - 1;
    const double z = 3.09;
    const double term = 1 - 2 / (9 * df) + z * std::sqrt(2 / (9 * df));
    const double bound = df * term * term * term;
    EXPECT_LT(chi2, bound) << "support " << support;
    std::printf("[ chi-square ] support %d: %.2f (bound %.2f)\n", support, chi2, bound);
  }
}

TEST(SamplingDraw, LogitsAreLeftProcessedInPlace) {
  SamplingParams p = with_temperature(2.0f);
  p.top_k = 2;
  std::vector<float> logits = {1.0f, 4.0f, 3.0f, -2.0f};
  const int32_t token = Sampler(p).sample(logits, kNoIds, kNoIds);
  EXPECT_TRUE(token == 1 || token == 2);
  EXPECT_EQ(logits, (std::vector<float>{kNegInf, 2.0f, 1.5f, kNegInf}));
}

TEST(SamplingDraw, SeedReproducesAndDifferentSeedDiffers) {
  std::vector<float> logits(1000);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  const auto run = [&](uint64_t seed) {
    SamplingParams p = with_temperature(1.0f);
    p.top_p = 0.95f;
    p.seed = seed;
    Sampler s(p);
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) {
      std::vector<float> step = logits;
      out.push_back(s.sample(step, kNoIds, out));
    }
    return out;
  };
  const std::vector<int32_t> a = run(7);
  EXPECT_EQ(a, run(7));
  const std::vector<int32_t> b = run(8);
  EXPECT_NE(a, b);
  int same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_LT(same, 20);  // independent streams agree only by chance
}

TEST(SamplingErrors, NonFiniteLogitsAndBadIds) {
  for (const SamplingParams& p : {SamplingParams{}, with_temperature(1.0f)}) {
    Sampler s(p);
    std::vector<float> nan_logits = {0.0f, NAN, 1.0f};
    expect_error_mentioning("NaN", [&] { s.sample(nan_logits, kNoIds, kNoIds); });
    std::vector<float> probs;
    expect_error_mentioning("logit 1", [&] { s.probabilities(nan_logits, kNoIds, kNoIds, probs); });
    std::vector<float> inf_logits = {0.0f, INFINITY};
    expect_error_mentioning("+inf", [&] { s.sample(inf_logits, kNoIds, kNoIds); });
    std::vector<float> all_masked = {kNegInf, kNegInf};
    expect_error_mentioning("-inf", [&] { s.sample(all_masked, kNoIds, kNoIds); });
    std::vector<float> empty;
    expect_error_mentioning("empty", [&] { s.sample(empty, kNoIds, kNoIds); });
  }
  SamplingParams p = with_temperature(1.0f);
  p.repetition_penalty = 1.2f;
  Sampler s(p);
  std::vector<float> logits = {0.0f, 1.0f};
  const std::vector<int32_t> bad = {1, 2};
  expect_error_mentioning("prompt_ids[1] = 2", [&] { s.sample(logits, bad, kNoIds); });
  expect_error_mentioning("generated_ids", [&] { s.sample(logits, kNoIds, std::vector<int32_t>{-1}); });
  // The failed calls left no scratch behind: the penalty still applies exactly once.
  SamplingParams greedy_rep;
  greedy_rep.repetition_penalty = 4.0f;
  Sampler g(greedy_rep);
  std::vector<float> l1 = {2.0f, 1.0f};
  expect_error_mentioning("prompt_ids", [&] { g.sample(l1, std::vector<int32_t>{0, 5}, kNoIds); });
  std::vector<float> l2 = {2.0f, 1.0f};
  EXPECT_EQ(g.sample(l2, std::vector<int32_t>{0}, kNoIds), 1);
  EXPECT_EQ(l2[0], 0.5f);
}

TEST(SamplingSpeed, FullVocabTopP) {
  constexpr size_t kVocab = 151936;
  std::mt19937 rng(42);
  const auto make_logits = [&](float spread) {
    std::vector<float> logits(kVocab);
    std::normal_distribution<float> normal(0.0f, spread);
    for (float& x : logits) x = normal(rng);
    return logits;
  };
  const auto time_ms = [&](const SamplingParams& p, const std::vector<float>& base, const std::vector<int32_t>& prompt) {
    Sampler s(p);
    std::vector<double> times;
    std::vector<float> logits;
    for (int i = 0; i < 15; ++i) {
      logits = base;
      const auto start = std::chrono::steady_clock::now();
      const int32_t token = s.sample(logits, prompt, kNoIds);
      times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      EXPECT_GE(token, 0);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  };
  const std::vector<float> peaked = make_logits(3.0f);
  const std::vector<float> flat = make_logits(1.0f);
  std::vector<int32_t> prompt(4096);
  for (int32_t& id : prompt) id = static_cast<int32_t>(rng() % kVocab);

  SamplingParams top_p = with_temperature(1.0f);
  top_p.top_p = 0.9f;
  const double main_ms = time_ms(top_p, peaked, {});
  const double flat_ms = time_ms(top_p, flat, {});
  SamplingParams full = with_temperature(0.7f);
  full.top_k = 50;
  full.top_p = 0.9f;
  full.min_p = 0.05f;
  full.repetition_penalty = 1.1f;
  full.frequency_penalty = 0.2f;
  const double full_ms = time_ms(full, peaked, prompt);
  const double greedy_ms = time_ms(SamplingParams{}, peaked, {});
  std::printf("[ timing ] vocab %zu median of 15: top_p=0.9 %.3f ms (logit sd 3), %.3f ms (logit sd 1); "
              "penalties+T+top_k=50+top_p+min_p %.3f ms; greedy %.3f ms\n",
              kVocab, main_ms, flat_ms, full_ms, greedy_ms);
  EXPECT_LT(main_ms, 20.0);
  EXPECT_LT(flat_ms, 20.0);
  EXPECT_LT(full_ms, 20.0);
}
