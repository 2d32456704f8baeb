// CPU token sampler: see sampler.h for the processor order and tie conventions.
// The cost that matters is the 150k-entry vocabulary of current models: every step is a few
// linear passes (top-k is an nth_element), and the only sort is over the tokens that can be at
// the top-p cut: those in the one probability-histogram bucket where the cut falls.
#include "specula/sampling/sampler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>

#include "specula/core/error.h"

namespace specula::sampling {
namespace {

using detail::SamplerWorkspace;

constexpr float kInf = std::numeric_limits<float>::infinity();

void check_logits(std::span<const float> logits) {
  SPECULA_CHECK(!logits.empty(), "sampling: logits are empty");
  // One branch-free pass on the common path; locate the culprit only when there is one.
  bool bad = false;
  for (const float x : logits) bad |= !(x < kInf);  // NaN fails every comparison
  if (!bad) return;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) fail("sampling: logit ", i, " of ", logits.size(), " is NaN");
    if (logits[i] == kInf) fail("sampling: logit ", i, " of ", logits.size(), " is +inf");
  }
}

void check_ids(std::span<const int32_t> ids, size_t vocab, const char* what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || static_cast<size_t>(id) >= vocab) {
      fail("sampling: ", what, "[", i, "] = ", id, " is outside the vocabulary [0, ", vocab, ")");
    }
  }
}

// Repetition penalty first (it is a multiplicative rule on the raw logit, as in transformers),
// then presence/frequency (additive, as in the OpenAI API / vLLM).
void apply_penalties(std::span<float> logits, std::span<const int32_t> prompt_ids,
                     std::span<const int32_t> generated_ids, const SamplingParams& p,
                     SamplerWorkspace& ws) {
  const size_t vocab = logits.size();
  const bool repetition = p.repetition_penalty != 1.0f;
  const bool additive = p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
  if (!repetition && !additive) return;
  // Ids are checked before any scratch entry is set, so a throw leaves the scratch all-zero.
  if (repetition) check_ids(prompt_ids, vocab, "prompt_ids");
  check_ids(generated_ids, vocab, "generated_ids");

  if (repetition) {
    // transformers gathers and scatters over input_ids, so a repeated id is penalised once.
    if (ws.seen.size() < vocab) ws.seen.resize(vocab, 0);
    const float r = p.repetition_penalty;
    const auto penalise = [&](int32_t id) {
      if (ws.seen[id]) return;
      ws.seen[id] = 1;
      float& x = logits[id];
      x = x < 0.0f ? x * r : x / r;
    };
    for (const int32_t id : prompt_ids) penalise(id);
    for (const int32_t id : generated_ids) penalise(id);
    for (const int32_t id : prompt_ids) ws.seen[id] = 0;
    for (const int32_t id : generated_ids) ws.seen[id] = 0;
  }
  if (additive) {
    if (ws.counts.size() < vocab) ws.counts.resize(vocab, 0);
    for (const int32_t id : generated_ids) ++ws.counts[id];
    for (const int32_t id : generated_ids) {
      const int32_t count = ws.counts[id];
      if (count == 0) continue;  // already applied for an earlier occurrence
      ws.counts[id] = 0;
      float& x = logits[id];
      x -= p.frequency_penalty * static_cast<float>(count);
      x -= p.presence_penalty;
    }
  }
}

int32_t argmax(std::span<const float> logits) {
  size_t best = 0;
  float best_value = logits[0];
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > best_value) {  // strict: ties keep the lowest id
      best_value = logits[i];
      best = i;
    }
  }
  SPECULA_CHECK(best_value > -kInf, "sampling: every logit is -inf, nothing can be sampled");
  return static_cast<int32_t>(best);
}

// Removes support entries whose old position fails `keep`, preserving ascending id order.
template <typename Keep>
void compact(SamplerWorkspace& ws, Keep keep) {
  const size_t n = ws.ids.size();
  const bool has_weights = ws.weights.size() == n;
  size_t out = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!keep(i)) continue;
    ws.ids[out] = ws.ids[i];
    ws.vals[out] = ws.vals[i];
    if (has_weights) ws.weights[out] = ws.weights[i];
    ++out;
  }
  ws.ids.resize(out);
  ws.vals.resize(out);
  if (has_weights) ws.weights.resize(out);
}

// Maps a float to an unsigned key with the same order; -0 is folded onto +0 first so that the
// key order agrees with float equality in the tie rule.
uint32_t order_key(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x + 0.0f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Histogram of weights (exp(logit - max) in [0, 1]) in quarter-octave buckets below 1: bucket b
// holds weights in roughly [2^-(b+1)/4, 2^-b/4); the last bucket also takes everything smaller.
constexpr int kBuckets = 256;
int bucket_of(float w) {
  constexpr uint32_t kOneKey = 0x3F800000u >> 21;  // exponent and top 2 mantissa bits of 1.0f
  const uint32_t b = kOneKey - (std::bit_cast<uint32_t>(w) >> 21);
  return b < kBuckets - 1 ? static_cast<int>(b) : kBuckets - 1;
}

// transformers' TopP: sort ascending, cumulative probability, remove tokens whose cumulative
// probability is <= 1 - top_p, always keep the top one. With the mass per histogram bucket, the
// cut is located to one bucket `cut_bucket` (the first whose lower-weight buckets together are
// <= 1 - top_p): every token below it is removed (its cumulative probability is at most that
// mass), every token above it is kept (its cumulative probability exceeds the mass below the
// previous bucket, which is > 1 - top_p). Only the cut bucket is sorted, and its walk starts from
// the mass below it, so the result is the one a full sort would give.
void top_p_filter(float top_p, SamplerWorkspace& ws) {
  const size_t n = ws.ids.size();
  std::array<double, kBuckets> mass{};
  for (size_t i = 0; i < n; ++i) mass[bucket_of(ws.weights[i])] += ws.weights[i];
  std::array<double, kBuckets> below{};  // below[b]: mass of buckets after b (smaller weights)
  for (int b = kBuckets - 2; b >= 0; --b) below[b] = below[b + 1] + mass[b + 1];
  const double total = below[0] + mass[0];
  const double limit = 1.0 - static_cast<double>(top_p);
  int cut_bucket = 0;
  while (cut_bucket < kBuckets - 1 && below[cut_bucket] / total > limit) ++cut_bucket;

  ws.keys.clear();
  for (size_t i = 0; i < n; ++i) {
    if (bucket_of(ws.weights[i]) != cut_bucket) continue;
    // Ascending (logit, then id descending): the reverse of the (logit desc, id asc) ranking.
    ws.keys.push_back((static_cast<uint64_t>(order_key(ws.vals[i])) << 32) | ~static_cast<uint32_t>(i));
  }
  // Not empty: bucket 0 holds the top token, and a later cut bucket has positive mass.
  SPECULA_CHECK(!ws.keys.empty(), "sampling: internal error, empty top-p cut bucket");
  std::sort(ws.keys.begin(), ws.keys.end());
  size_t cut = ws.keys.size() - 1;  // keep at least the bucket's top token, whatever rounding says
  double cumulative = below[cut_bucket];
  for (size_t j = 0; j < ws.keys.size(); ++j) {
    cumulative += ws.weights[~static_cast<uint32_t>(ws.keys[j])];
    if (cumulative / total > limit) {
      cut = j;
      break;
    }
  }
  // Buckets order weights strictly, hence logits strictly: one comparison covers all buckets.
  const size_t cut_pos = ~static_cast<uint32_t>(ws.keys[cut]);
  const float cut_value = ws.vals[cut_pos];
  compact(ws, [&](size_t i) {
    return ws.vals[i] > cut_value || (ws.vals[i] == cut_value && i <= cut_pos);
  });
}

// transformers' MinP: keep p >= min_p * p_max over the current support (softmax renormalised).
void min_p_filter(float min_p, SamplerWorkspace& ws) {
  double total = 0.0;
  float max_weight = 0.0f;
  for (const float w : ws.weights) {
    total += w;
    max_weight = std::max(max_weight, w);
  }
  // min_p <= 1, so the top token always passes: keeps at least one.
  const double threshold = static_cast<double>(min_p) * (max_weight / total);
  compact(ws, [&](size_t i) { return ws.weights[i] / total >= threshold; });
}

// Temperature, top-k, top-p, min-p over already penalised logits (modified in place by the
// temperature). Leaves the support in ws.ids/vals/weights, ascending by id.
void build_support(std::span<float> logits, const SamplingParams& p, SamplerWorkspace& ws) {
  const size_t vocab = logits.size();
  if (p.temperature != 1.0f) {
    for (float& x : logits) x /= p.temperature;  // division, as transformers does
  }
  ws.ids.resize(vocab);
  ws.vals.resize(vocab);
  ws.weights.clear();
  size_t n = 0;
  float max_value = -kInf;
  for (size_t i = 0; i < vocab; ++i) {
    const float x = logits[i];
    if (!(x > -kInf)) continue;
    ws.ids[n] = static_cast<int32_t>(i);
    ws.vals[n] = x;
    max_value = std::max(max_value, x);
    ++n;
  }
  ws.ids.resize(n);
  ws.vals.resize(n);
  SPECULA_CHECK(n > 0, "sampling: every logit is -inf, nothing can be sampled");
  SPECULA_CHECK(max_value < kInf, "sampling: a logit overflowed to +inf after the penalties and temperature ",
                p.temperature);

  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < n) {
    // The k-th largest value; everything tied with it stays (transformers masks `< kth`).
    ws.scratch.assign(ws.vals.begin(), ws.vals.end());
    const auto kth = ws.scratch.begin() + (p.top_k - 1);
    std::nth_element(ws.scratch.begin(), kth, ws.scratch.end(), std::greater<float>());
    const float threshold = *kth;
    compact(ws, [&](size_t i) { return ws.vals[i] >= threshold; });
  }

  // The maximum survives every filter, so exp(x - max) is the softmax numerator at every stage
  // and the top weight is exactly 1.
  ws.weights.resize(ws.ids.size());
  for (size_t i = 0; i < ws.ids.size(); ++i) ws.weights[i] = std::exp(ws.vals[i] - max_value);

  if (p.top_p < 1.0f) top_p_filter(p.top_p, ws);
  if (p.min_p > 0.0f) min_p_filter(p.min_p, ws);
}

double total_weight(const SamplerWorkspace& ws) {
  double total = 0.0;
  for (const float w : ws.weights) total += w;
  return total;
}

// Inverse CDF over the support in ascending id order.
int32_t draw(const SamplerWorkspace& ws, float u) {
  const double target = static_cast<double>(u) * total_weight(ws);
  double cumulative = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < ws.ids.size(); ++i) {
    if (ws.weights[i] <= 0.0f) continue;  // underflowed: probability 0, never drawn
    cumulative += ws.weights[i];
    last = ws.ids[i];
    if (cumulative > target) return last;
  }
  return last;  // only reachable through rounding at u close to 1
}

}  // namespace

Sampler::Sampler(const SamplingParams& params) : params_(params) { params_.validate(); }

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> prompt_ids,
                        std::span<const int32_t> generated_ids) {
  check_logits(logits);
  apply_penalties(logits, prompt_ids, generated_ids, params_, ws_);
  if (params_.is_greedy()) {
    const int32_t token = argmax(logits);
    ++counter_;
    return token;
  }
  build_support(logits, params_, ws_);
  size_t next = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (next < ws_.ids.size() && static_cast<size_t>(ws_.ids[next]) == i) {
      ++next;
    } else {
      logits[i] = -kInf;
    }
  }
  const int32_t token = draw(ws_, uniform01(params_.seed, counter_));
  ++counter_;
  return token;
}

void Sampler::probabilities(std::span<const float> logits, std::span<const int32_t> prompt_ids,
                            std::span<const int32_t> generated_ids, std::vector<float>& probs_out) const {
  // A private copy and workspace: this is const and may run beside sample() on another thread.
  std::vector<float> processed(logits.begin(), logits.end());
  SamplerWorkspace ws;
  check_logits(processed);
  apply_penalties(processed, prompt_ids, generated_ids, params_, ws);
  probs_out.assign(processed.size(), 0.0f);
  if (params_.is_greedy()) {
    probs_out[argmax(processed)] = 1.0f;
    return;
  }
  build_support(processed, params_, ws);
  const double total = total_weight(ws);
  for (size_t i = 0; i < ws.ids.size(); ++i) {
    probs_out[ws.ids[i]] = static_cast<float>(ws.weights[i] / total);
  }
}

}  // namespace specula::sampling
