// GpuSampler (sampling/gpu_sampler.h) against the CPU Sampler, the reference: greedy equals the
// CPU's argmax after penalties; sampled token sequences over 200 steps with a fixed seed equal the
// CPU's for every processor and combination, and never leave the CPU's probabilities() support;
// graph replay equals direct calls; multi-row calls equal single-row calls; invalid logits are
// reported, not silently sampled; and the cost per step on a 151936-entry vocabulary is printed.
//
// Every step draws fresh random logits from several shapes: normal with spread 1 (flat: top-p 0.9
// keeps most of the vocabulary) and 3 (peaked), values rounded to bf16 (thousands of exact ties,
// as real bf16 logits have), a 0.01 grid (ties at every cut) and coarse values with -inf entries.
//
// Mismatches: the GPU's sums are exact and the CPU's are double, and exp is rounded to float on
// each side by different libraries (1 ulp apart in ~5e-4 of inputs), so a token can only differ
// when u lands within ~1e-7 of a cumulative boundary. A mismatch counts as such a boundary case
// only if the two tokens are adjacent in the CPU support and u is within kBoundaryMargin of the
// cumulative probability between them; at most one per sequence is tolerated, any other fails.
#ifdef SPECULA_WITH_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/dtype.h"
#include "specula/core/error.h"
#include "specula/core/tensor.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/sampling/gpu_sampler.h"
#include "specula/sampling/random.h"
#include "specula/sampling/sampler.h"

using namespace specula;
using namespace specula::sampling;

namespace {

constexpr int64_t kVocabLlama3 = 128256;
constexpr int64_t kVocabQwen = 151936;
constexpr int64_t kVocabOdd = 1001;  // one block, not a multiple of anything
constexpr int64_t kVocabMid = 32003;  // several blocks, ragged last block
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr double kBoundaryMargin = 1e-5;
constexpr int kSteps = 200;
constexpr int kPromptLength = 64;

enum class Shape { Flat, Peaked, Bf16Ties, Grid, Masked };

const char* shape_name(Shape s) {
  switch (s) {
    case Shape::Flat: return "normal(0,1)";
    case Shape::Peaked: return "normal(0,3)";
    case Shape::Bf16Ties: return "bf16 normal(0,3)";
    case Shape::Grid: return "0.01 grid";
    default: return "coarse + 10% -inf";
  }
}

std::vector<float> make_logits(std::mt19937_64& rng, int64_t vocab, Shape shape) {
  std::vector<float> x(static_cast<size_t>(vocab));
  std::normal_distribution<float> n1(0.0f, 1.0f), n3(0.0f, 3.0f);
  for (float& v : x) {
    switch (shape) {
      case Shape::Flat: v = n1(rng); break;
      case Shape::Peaked: v = n3(rng); break;
      case Shape::Bf16Ties: v = test::round_to(DType::BF16, n3(rng)); break;
      case Shape::Grid: v = 0.01f * std::round(100.0f * n1(rng)); break;
      case Shape::Masked: v = rng() % 10 == 0 ? kNegInf : 0.5f * static_cast<float>(rng() % 9); break;
    }
  }
  x[rng() % x.size()] = 1.5f;  // at least one finite logit in every shape
  return x;
}

std::string describe(const SamplingParams& p) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "T=%g top_k=%d top_p=%g min_p=%g rep=%g presence=%g frequency=%g seed=%llu",
                p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.presence_penalty,
                p.frequency_penalty, static_cast<unsigned long long>(p.seed));
  return buf;
}

// One sampler with its own device logits and token buffers on a fresh context.
struct Harness {
  test::CudaTestContext ctx;
  int64_t vocab;
  test::DeviceTensor logits;
  test::DeviceTensor token;
  test::DeviceBuffer external;  // the sampler's state when it is given memory (as the engine does)
  std::unique_ptr<GpuSampler> sampler;

  // external_memory: the sampler runs in caller-owned memory, first filled with garbage so that
  // anything it fails to initialise shows.
  explicit Harness(int64_t v, int64_t rows = 1, bool external_memory = false)
      : ctx(test::make_cuda_context()), vocab(v) {
    logits = test::device_tensor(DType::F32, {rows, vocab});
    token = test::device_tensor(DType::I32, {rows});
    if (external_memory) {
      external = test::DeviceBuffer(GpuSampler::device_bytes(vocab));
      SPECULA_TEST_CUDA_CHECK(cudaMemset(external.data(), 0xA5, external.bytes()));
    }
    sampler = std::make_unique<GpuSampler>(*ctx.cuda, vocab, rows, external.data());
  }

  // Uploads one row (synchronous), samples it, returns the token.
  int32_t sample(const std::vector<float>& host_logits) {
    logits.buffer.upload(host_logits);
    test::poison(token);
    Tensor row = logits.tensor.slice_outer(0, 1).reshaped({vocab});
    Tensor out = token.tensor.slice_outer(0, 1);
    sampler->sample(row, out);
    return test::download_ints(token)[0];
  }
};

// Whether a GPU/CPU disagreement is a rounding tie at a draw boundary (see the file comment).
bool is_boundary_case(const std::vector<float>& probs, int32_t a, int32_t b, float u, double* margin) {
  if (a < 0 || b < 0 || probs[a] <= 0 || probs[b] <= 0) return false;
  const int32_t lo = std::min(a, b), hi = std::max(a, b);
  double cumulative = 0, between = 0;
  for (int32_t i = 0; i <= lo; ++i) cumulative += probs[i];
  for (int32_t i = lo + 1; i < hi; ++i) between += probs[i];
  *margin = std::fabs(cumulative - static_cast<double>(u));
  return between == 0 && *margin < kBoundaryMargin;
}

struct SequenceStats {
  int steps = 0, mismatches = 0, boundary = 0, support_violations = 0;
};

// kSteps steps of fresh random logits through the GPU and CPU samplers with the same history.
SequenceStats run_sequence(Harness& h, const SamplingParams& p, Shape shape, uint64_t data_seed, int steps = kSteps) {
  std::mt19937_64 rng(data_seed);
  std::vector<int32_t> prompt(kPromptLength);
  for (int32_t& id : prompt) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(h.vocab));
  h.sampler->begin(p, prompt);
  Sampler cpu(p);
  std::vector<int32_t> generated;
  SequenceStats stats;
  std::vector<float> probs;
  for (int s = 0; s < steps; ++s) {
    const std::vector<float> logits = make_logits(rng, h.vocab, shape);
    cpu.probabilities(logits, prompt, generated, probs);
    const float u = uniform01(p.seed, cpu.draw_counter());
    std::vector<float> cpu_logits = logits;
    const int32_t want = cpu.sample(cpu_logits, prompt, generated);
    const int32_t got = h.sample(logits);
    ++stats.steps;
    if (got < 0 || got >= h.vocab || probs[got] <= 0) {
      ++stats.support_violations;
      ADD_FAILURE() << "step " << s << ": GPU token " << got << " is outside the CPU support (" << describe(p)
                    << ", " << shape_name(shape) << ", vocab " << h.vocab << ")";
    }
    if (got != want) {
      ++stats.mismatches;
      double margin = -1;
      const bool boundary = is_boundary_case(probs, want, got, u, &margin);
      stats.boundary += boundary ? 1 : 0;
      std::printf("  [mismatch] step %d: cpu %d (p=%.3g) gpu %d (p=%.3g) u=%.9f margin %.3g -> %s\n", s, want,
                  want >= 0 ? probs[want] : 0.0f, got, got >= 0 && got < h.vocab ? probs[got] : 0.0f, u, margin,
                  boundary ? "boundary" : "NOT a boundary case");
    }
    // Both histories continue with the GPU's token (the device recorded it).
    generated.push_back(got >= 0 && got < h.vocab ? got : want);
  }
  EXPECT_EQ(h.sampler->draw_counter(), static_cast<uint64_t>(steps));
  EXPECT_NO_THROW(h.sampler->check_errors());
  return stats;
}

void expect_sequence_matches(Harness& h, const SamplingParams& p, Shape shape, uint64_t data_seed,
                             int steps = kSteps) {
  const SequenceStats s = run_sequence(h, p, shape, data_seed, steps);
  std::printf("  [sequence] vocab %lld %s %s: %d steps, %d mismatches (%d at boundaries)\n",
              static_cast<long long>(h.vocab), shape_name(shape), describe(p).c_str(), s.steps, s.mismatches,
              s.boundary);
  EXPECT_EQ(s.support_violations, 0);
  EXPECT_EQ(s.mismatches - s.boundary, 0) << describe(p) << " " << shape_name(shape);
  EXPECT_LE(s.boundary, 1) << describe(p) << " " << shape_name(shape);
}

SamplingParams sampled(float temperature, uint64_t seed) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

SamplingParams with_penalties(SamplingParams p) {
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.4f;
  p.frequency_penalty = 0.25f;
  return p;
}

}  // namespace

TEST(CudaSampling, GreedyEqualsCpuArgmaxWithPenalties) {
  SPECULA_SKIP_WITHOUT_CUDA();
  for (const int64_t vocab : {kVocabLlama3, kVocabQwen, kVocabOdd}) {
    Harness h(vocab);
    uint64_t seed = test::test_seed(static_cast<uint64_t>(vocab));
    for (const Shape shape : {Shape::Peaked, Shape::Bf16Ties, Shape::Masked}) {
      for (const bool penalties : {false, true}) {
        SamplingParams p;  // greedy
        if (penalties) p = with_penalties(p);
        expect_sequence_matches(h, p, shape, ++seed, 40);
      }
    }
  }
}

TEST(CudaSampling, CallerOwnedMemoryBehavesTheSame) {
  // The engine gives the sampler memory from its arena: sequences with penalties, top-k and top-p
  // must match the CPU there too, over two requests (begin() resets the state in place).
  SPECULA_SKIP_WITHOUT_CUDA();
  Harness h(kVocabQwen, 1, true);
  uint64_t seed = test::test_seed();
  SamplingParams p = with_penalties(sampled(0.9f, 5));
  p.top_k = 50;
  expect_sequence_matches(h, p, Shape::Peaked, ++seed);
  p.top_k = 0;
  p.top_p = 0.9f;
  expect_sequence_matches(h, p, Shape::Bf16Ties, ++seed);
  expect_sequence_matches(h, with_penalties(SamplingParams{}), Shape::Masked, ++seed, 40);
  test::DeviceBuffer misaligned(GpuSampler::device_bytes(kVocabOdd) + 256);
  EXPECT_THROW(GpuSampler(*h.ctx.cuda, kVocabOdd, 1, static_cast<char*>(misaligned.data()) + 4), Error);
}

TEST(CudaSampling, GreedyTiesPickLowestId) {
  SPECULA_SKIP_WITHOUT_CUDA();
  Harness h(kVocabMid);
  h.sampler->begin(SamplingParams{}, {});
  std::vector<float> logits(static_cast<size_t>(kVocabMid), 0.25f);
  EXPECT_EQ(h.sample(logits), 0);
  logits[0] = -0.0f;
  logits[1] = 0.0f;  // -0 == +0: still a tie, the lower id wins
  for (float& x : logits) x = std::min(x, 0.0f);
  EXPECT_EQ(h.sample(logits), 0);
  logits.assign(logits.size(), kNegInf);
  logits[31000] = 3.0f;
  logits[20000] = 3.0f;
  logits[kVocabMid - 1] = 3.0f;
  EXPECT_EQ(h.sample(logits), 20000);
  // Repetition penalty on the generated tokens: the earlier winners are now penalised.
  SamplingParams rep;
  rep.repetition_penalty = 2.0f;
  h.sampler->begin(rep, std::vector<int32_t>{20000});
  EXPECT_EQ(h.sample(logits), 31000);
  EXPECT_EQ(h.sample(logits), static_cast<int32_t>(kVocabMid - 1));
  EXPECT_EQ(h.sampler->draw_counter(), 2u);
}

TEST(CudaSampling, TemperatureOnlyMatchesCpu) {
  SPECULA_SKIP_WITHOUT_CUDA();
  Harness h(kVocabQwen);
  expect_sequence_matches(h, sampled(1.0f, 11), Shape::Peaked, test::test_seed(1));
  expect_sequence_matches(h, sampled(0.7f, 12), Shape::Flat, test::test_seed(2));
  Harness small(kVocabOdd);
  expect_sequence_matches(small, sampled(1.3f, 13), Shape::Masked, test::test_seed(3));
}

TEST(CudaSampling, TopKMatchesCpu) {
  SPECULA_SKIP_WITHOUT_CUDA();
  Harness h(kVocabQwen);
  uint64_t seed = test::test_seed();
  for (const int k : {1, 50, 1000}) {
    SamplingParams p = sampled(1.0f, 100 + k);
    p.top_k = k;
    expect_sequence_matches(h, p, Shape::Peaked, ++seed);
  }
  SamplingParams p = sampled(0.8f, 7);
  p.top_k = 40;
  expect_sequence_matches(h, p, Shape::Bf16Ties, ++seed);  // ties at the k-th value all stay
  Harness small(kVocabOdd);
  p.top_k = 5;
  expect_sequence_matches(small, p, Shape::Masked, ++seed);
  p.top_k = 2000;  // more than the vocabulary: off
  expect_sequence_matches(small, p, Shape::Flat, ++seed);
}

TEST(CudaSampling, TopPMatchesCpu) {
  SPECULA_SKIP_WITHOUT_CUDA();
  uint64_t seed = test::test_seed();
  Harness h(kVocabQwen);
  for (const Shape shape : {Shape::Peaked, Shape::Flat, Shape::Bf16Ties, Shape::Grid}) {
    SamplingParams p = sampled(1.0f, 21);
    p.top_p = 0.9f;
    expect_sequence_matches(h, p, shape, ++seed);
  }
  Harness mid(kVocabMid);
  for (const float top_p : {0.05f, 0.5f, 0.95f, 0.999f}) {
    SamplingParams p = sampled(0.9f, 31);
    p.top_p = top_p;
    expect_sequence_matches(mid, p, Shape::Grid, ++seed);
  }
  Harness small(kVocabOdd);
  SamplingParams p = sampled(1.0f, 41);
  p.top_p = 0.6f;
  expect_sequence_matches(small, p, Shape::Masked, ++seed);
}

TEST(CudaSampling, TopPTiesAtTheCutKeepLowestIds) {
  SPECULA_SKIP_WITHOUT_CUDA();
  // All logits equal: top-p keeps exactly the lowest ids, as many as the CPU's cumulative rule says.
  Harness h(kVocabMid);
  SamplingParams p = sampled(1.0f, 5);
  p.top_p = 0.5f;
  h.sampler->begin(p, {});
  const std::vector<float> equal(static_cast<size_t>(kVocabMid), 0.0f);
  std::vector<float> probs;
  Sampler cpu(p);
  cpu.probabilities(equal, {}, {}, probs);
  const auto kept = std::count_if(probs.begin(), probs.end(), [](float q) { return q > 0; });
  ASSERT_GT(kept, 1);
  ASSERT_LT(kept, kVocabMid);
  for (int64_t i = 0; i < kVocabMid; ++i) ASSERT_EQ(probs[i] > 0, i < kept) << "CPU support is not a prefix at " << i;
  for (int s = 0; s < 100; ++s) {
    std::vector<float> cpu_logits = equal;
    const int32_t want = cpu.sample(cpu_logits, {}, {});
    const int32_t got = h.sample(equal);
    EXPECT_EQ(got, want) << "step " << s;
    EXPECT_LT(got, kept) << "step " << s;
  }
}

TEST(CudaSampling, MinPMatchesCpu) {
  SPECULA_SKIP_WITHOUT_CUDA();
  uint64_t seed = test::test_seed();
  Harness h(kVocabLlama3);
  for (const float min_p : {0.02f, 0.1f, 0.5f, 1.0f}) {
    SamplingParams p = sampled(1.0f, 51);
    p.min_p = min_p;
    expect_sequence_matches(h, p, min_p == 1.0f ? Shape::Bf16Ties : Shape::Peaked, ++seed);
  }
  Harness small(kVocabOdd);
  SamplingParams p = sampled(0.6f, 52);
  p.min_p = 0.05f;
  expect_sequence_matches(small, p, Shape::Grid, ++seed);
}

TEST(CudaSampling, PenaltiesMatchCpu) {
  SPECULA_SKIP_WITHOUT_CUDA();
  uint64_t seed = test::test_seed();
  // A small vocabulary makes repeats (hence counts > 1) frequent.
  Harness small(kVocabOdd);
  for (const Shape shape : {Shape::Peaked, Shape::Masked}) {
    expect_sequence_matches(small, with_penalties(sampled(1.0f, 61)), shape, ++seed);
    SamplingParams rep = sampled(1.0f, 62);
    rep.repetition_penalty = 0.7f;  // < 1 rewards repeats
    expect_sequence_matches(small, rep, shape, ++seed);
    SamplingParams additive = sampled(1.0f, 63);
    additive.frequency_penalty = -0.3f;
    additive.presence_penalty = 0.9f;
    expect_sequence_matches(small, additive, shape, ++seed);
  }
  Harness h(kVocabQwen);
  expect_sequence_matches(h, with_penalties(sampled(0.9f, 64)), Shape::Bf16Ties, ++seed);
}

TEST(CudaSampling, CombinedProcessorsMatchCpu) {
  SPECULA_SKIP_WITHOUT_CUDA();
  uint64_t seed = test::test_seed();
  struct Combo {
    float temperature;
    int top_k;
    float top_p, min_p;
    bool penalties;
  };
  const std::vector<Combo> combos = {
      {0.7f, 50, 0.9f, 0.05f, true}, {1.0f, 1000, 0.95f, 0.0f, false}, {1.2f, 0, 0.8f, 0.1f, true},
      {0.5f, 20, 1.0f, 0.2f, false}, {1.0f, 200, 0.5f, 0.0f, true},
  };
  for (const int64_t vocab : {kVocabQwen, kVocabMid}) {
    Harness h(vocab);
    int i = 0;
    for (const Combo& c : combos) {
      SamplingParams p = sampled(c.temperature, 70 + i);
      p.top_k = c.top_k;
      p.top_p = c.top_p;
      p.min_p = c.min_p;
      if (c.penalties) p = with_penalties(p);
      const Shape shape = i % 3 == 0 ? Shape::Bf16Ties : (i % 3 == 1 ? Shape::Peaked : Shape::Grid);
      expect_sequence_matches(h, p, shape, ++seed, vocab == kVocabQwen ? 100 : kSteps);
      ++i;
    }
  }
}

TEST(CudaSampling, GraphReplayEqualsDirectCalls) {
  SPECULA_SKIP_WITHOUT_CUDA();
  SamplingParams p = with_penalties(sampled(0.8f, 99));
  p.top_k = 100;
  p.top_p = 0.9f;
  p.min_p = 0.02f;
  Harness graph_h(kVocabQwen), direct_h(kVocabQwen);
  std::mt19937_64 rng(test::test_seed());
  const std::vector<int32_t> prompt = {1, 2, 3, 500, 151935};
  graph_h.sampler->begin(p, prompt);
  direct_h.sampler->begin(p, prompt);

  auto stream = static_cast<cudaStream_t>(graph_h.ctx.cuda->stream());
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  SPECULA_TEST_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  graph_h.sampler->sample(graph_h.logits.tensor, graph_h.token.tensor);
  SPECULA_TEST_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  SPECULA_TEST_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  EXPECT_EQ(graph_h.sampler->draw_counter(), 0u);  // capture ran nothing

  Sampler cpu(p);
  std::vector<int32_t> generated;
  const auto replay_steps = [&](int steps) {
    for (int s = 0; s < steps; ++s) {
      const std::vector<float> logits = make_logits(rng, kVocabQwen, s % 2 ? Shape::Peaked : Shape::Bf16Ties);
      graph_h.logits.buffer.upload(logits);
      SPECULA_TEST_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      const int32_t from_graph = test::download_ints(graph_h.token)[0];
      const int32_t direct = direct_h.sample(logits);
      std::vector<float> cpu_logits = logits;
      const int32_t want = cpu.sample(cpu_logits, prompt, generated);
      generated.push_back(direct);
      EXPECT_EQ(from_graph, direct) << "step " << s;
      EXPECT_EQ(direct, want) << "step " << s;
    }
  };
  replay_steps(30);
  EXPECT_EQ(graph_h.sampler->draw_counter(), 30u);
  // begin() with the same parameters keeps the graph valid: a new request replays identically.
  graph_h.sampler->begin(p, prompt);
  direct_h.sampler->begin(p, prompt);
  cpu = Sampler(p);
  generated.clear();
  replay_steps(20);
  EXPECT_NO_THROW(graph_h.sampler->check_errors());
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST(CudaSampling, RowsAreConsecutiveSteps) {
  SPECULA_SKIP_WITHOUT_CUDA();
  constexpr int64_t kRows = 3;
  SamplingParams p = with_penalties(sampled(1.0f, 3));
  p.top_p = 0.9f;
  Harness multi(kVocabMid, kRows + 1), single(kVocabMid);
  std::mt19937_64 rng(test::test_seed());
  const std::vector<int32_t> prompt = {7, 8, 9};
  multi.sampler->begin(p, prompt);
  single.sampler->begin(p, prompt);
  for (int s = 0; s < 10; ++s) {
    std::vector<float> all;
    std::vector<int32_t> expected;
    for (int r = 0; r < kRows; ++r) {
      const std::vector<float> row = make_logits(rng, kVocabMid, Shape::Peaked);
      all.insert(all.end(), row.begin(), row.end());
      expected.push_back(single.sample(row));
    }
    multi.logits.buffer.upload(all);
    Tensor logits = multi.logits.tensor.slice_outer(0, kRows);
    Tensor tokens = multi.token.tensor.slice_outer(0, kRows);
    multi.sampler->sample(logits, tokens);
    const std::vector<int32_t> got = test::download_ints(multi.token);
    EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + kRows), expected) << "step " << s;
  }
  EXPECT_EQ(multi.sampler->draw_counter(), 10u * kRows);
}

TEST(CudaSampling, InvalidLogitsAreReportedAndWriteTokenZero) {
  SPECULA_SKIP_WITHOUT_CUDA();
  Harness h(kVocabMid);
  std::mt19937_64 rng(test::test_seed());
  const auto expect_error = [&](const SamplingParams& p, std::vector<float> logits, const std::string& word,
                                bool then_recover = true) {
    h.sampler->begin(p, {});
    EXPECT_EQ(h.sample(logits), 0);
    EXPECT_EQ(h.sampler->draw_counter(), 0u);  // a failed step does not advance the counter
    try {
      h.sampler->check_errors();
      ADD_FAILURE() << "expected an error mentioning '" << word << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
    EXPECT_NO_THROW(h.sampler->check_errors());  // cleared by the read
    if (!then_recover) return;
    // The next valid step samples normally.
    const std::vector<float> good = make_logits(rng, kVocabMid, Shape::Peaked);
    Sampler cpu(p);
    std::vector<float> cpu_logits = good;
    EXPECT_EQ(h.sample(good), cpu.sample(cpu_logits, {}, {}));
    EXPECT_EQ(h.sampler->draw_counter(), 1u);
  };
  for (const SamplingParams& p : {SamplingParams{}, sampled(1.0f, 1)}) {
    std::vector<float> logits = make_logits(rng, kVocabMid, Shape::Flat);
    logits[12345] = NAN;
    expect_error(p, logits, "NaN");
    logits = make_logits(rng, kVocabMid, Shape::Flat);
    logits[kVocabMid - 1] = std::numeric_limits<float>::infinity();
    expect_error(p, logits, "+inf");
    expect_error(p, std::vector<float>(static_cast<size_t>(kVocabMid), kNegInf), "-inf");
  }
  // 10 / 1e-38 overflows float: the CPU reports it after the temperature, so must the GPU.
  std::vector<float> hot = make_logits(rng, kVocabMid, Shape::Peaked);
  hot[4321] = 10.0f;
  expect_error(sampled(1e-38f, 2), hot, "overflowed", /*then_recover=*/false);  // any logit > 3.4 overflows
}

TEST(CudaSampling, ArgumentsAreChecked) {
  SPECULA_SKIP_WITHOUT_CUDA();
  Harness h(kVocabOdd);
  EXPECT_THROW(h.sampler->sample(h.logits.tensor, h.token.tensor), Error);  // before begin()
  SamplingParams rep;
  rep.repetition_penalty = 1.2f;
  EXPECT_THROW(h.sampler->begin(rep, std::vector<int32_t>{0, static_cast<int32_t>(kVocabOdd)}), Error);
  SamplingParams bad;
  bad.top_p = 0.0f;
  EXPECT_THROW(h.sampler->begin(bad, {}), Error);
  h.sampler->begin(rep, std::vector<int32_t>{0, 1});
  test::DeviceTensor wrong = test::device_tensor(DType::F32, {kVocabOdd - 1});
  EXPECT_THROW(h.sampler->sample(wrong.tensor, h.token.tensor), Error);
  test::DeviceTensor two_rows = test::device_tensor(DType::F32, {2, kVocabOdd});
  test::DeviceTensor two_tokens = test::device_tensor(DType::I32, {2});
  EXPECT_THROW(h.sampler->sample(two_rows.tensor, two_tokens.tensor), Error);  // built for one row
  std::vector<float> host(static_cast<size_t>(kVocabOdd), 0.0f);
  Tensor cpu_logits(host.data(), DType::F32, {kVocabOdd});
  EXPECT_THROW(h.sampler->sample(cpu_logits, h.token.tensor), Error);
  EXPECT_THROW({ GpuSampler s(*h.ctx.cuda, 0); }, Error);
}

TEST(CudaSampling, TimingVocab151936) {
  SPECULA_SKIP_WITHOUT_CUDA();
  constexpr int kIterations = 100;
  constexpr int kWarmup = 10;
  Harness h(kVocabQwen);
  auto stream = static_cast<cudaStream_t>(h.ctx.cuda->stream());
  std::mt19937_64 rng(test::test_seed());
  test::DeviceBuffer pristine(static_cast<size_t>(kVocabQwen) * sizeof(float));
  cudaEvent_t start = nullptr, stop = nullptr;
  SPECULA_TEST_CUDA_CHECK(cudaEventCreate(&start));
  SPECULA_TEST_CUDA_CHECK(cudaEventCreate(&stop));
  const size_t bytes = static_cast<size_t>(kVocabQwen) * sizeof(float);

  // Median microseconds of one sample() (direct launches, or one replay of a captured graph);
  // the logits are restored from `pristine` before each call, outside the timed region.
  const auto time_us = [&](const SamplingParams& p, Shape shape, bool use_graph) {
    pristine.upload(make_logits(rng, kVocabQwen, shape));
    h.sampler->begin(p, {});
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (use_graph) {
      SPECULA_TEST_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      h.sampler->sample(h.logits.tensor.reshaped({kVocabQwen}), h.token.tensor);
      SPECULA_TEST_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
      SPECULA_TEST_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    }
    std::vector<float> times;
    for (int i = 0; i < kWarmup + kIterations; ++i) {
      SPECULA_TEST_CUDA_CHECK(
          cudaMemcpyAsync(h.logits.tensor.data, pristine.data(), bytes, cudaMemcpyDeviceToDevice, stream));
      SPECULA_TEST_CUDA_CHECK(cudaEventRecord(start, stream));
      if (use_graph) {
        SPECULA_TEST_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      } else {
        h.sampler->sample(h.logits.tensor.reshaped({kVocabQwen}), h.token.tensor);
      }
      SPECULA_TEST_CUDA_CHECK(cudaEventRecord(stop, stream));
      SPECULA_TEST_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      SPECULA_TEST_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (i >= kWarmup) times.push_back(ms * 1000.0f);
    }
    if (use_graph) {
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
    EXPECT_NO_THROW(h.sampler->check_errors());
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  };

  SamplingParams top_p = sampled(1.0f, 1);
  top_p.top_p = 0.9f;
  SamplingParams full = with_penalties(sampled(0.7f, 2));
  full.top_k = 50;
  full.top_p = 0.9f;
  full.min_p = 0.05f;
  struct Row {
    const char* name;
    SamplingParams params;
    Shape shape;
  };
  const std::vector<Row> rows = {
      {"greedy", SamplingParams{}, Shape::Peaked},
      {"temperature 1 only", sampled(1.0f, 3), Shape::Peaked},
      {"top_p=0.9 (logit sd 3)", top_p, Shape::Peaked},
      {"top_p=0.9 (logit sd 1)", top_p, Shape::Flat},
      {"top_p=0.9 (bf16 ties)", top_p, Shape::Bf16Ties},
      {"pen+T+top_k50+top_p+min_p", full, Shape::Peaked},
  };
  std::printf("[ timing ] GpuSampler::sample, vocab %lld, %s, median of %d (us)\n", static_cast<long long>(kVocabQwen),
              h.ctx.cuda->info().name.c_str(), kIterations);
  std::printf("  %-30s %10s %10s\n", "case", "direct", "graph");
  for (const Row& r : rows) {
    const float direct = time_us(r.params, r.shape, false);
    const float graph = time_us(r.params, r.shape, true);
    std::printf("  %-30s %10.1f %10.1f\n", r.name, direct, graph);
    EXPECT_LT(graph, 1000.0f) << r.name;  // generous: catches a pathological path, not a regression
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

#endif  // SPECULA_WITH_CUDA
