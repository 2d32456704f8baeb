// The permutation oracle (issue 11): a one-layer target whose embedding rows are Hadamard rows
// (entries +-1, RMS exactly 1, mutually orthogonal) with o_proj and down_proj zero, so the
// residual stream is the embedding itself, and an LM head whose row sigma(t) is the embedding of
// t: token t is always followed by sigma(t), by a logit margin of 64. The EAGLE head copies that
// layer with fc = [I | 0], so it predicts the target exactly in any precision. Then:
//  * every cycle accepts the maximum, depth drafts + the target's token;
//  * with an FR-Spec list missing some of sigma's chain, acceptance stops exactly before each
//    missing token (which the target then supplies), so draft ids are mapped back correctly;
//  * an end token inside an accepted run stops generation right there;
//  * the target's and the head's KV caches hold, row for row, the K/V a direct computation gives
//    for the committed sequence (RoPE'd W_k x at each position), so compaction moved the right
//    rows and the catch-up wrote the right ones.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "cuda_test_util.h"
#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "specula/io/safetensors_writer.h"
#include "specula/spec/eagle_head.h"
#include "specula/spec/frspec.h"

namespace {

using namespace specula;

constexpr int kH = 64, kV = 64, kHeads = 4, kHeadDim = 16, kInter = 32;

int32_t sigma(int32_t t) { return (5 * t + 3) % kV; }

float hadamard(int i, int j) { return (__builtin_popcount(static_cast<unsigned>(i & j)) & 1) ? -1.0f : 1.0f; }

io::TensorToWrite f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
  io::TensorToWrite t{name, DType::F32, std::move(shape), {}};
  t.bytes.resize(v.size() * 4);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
  return t;
}

std::vector<float> filled(size_t n, float value) { return std::vector<float>(n, value); }
std::vector<float> random_matrix(size_t n, uint64_t seed) { return test::random_floats(n, seed, -0.3f, 0.3f); }

struct Oracle {
  // One folder per process: ctest runs each test in its own process, several at a time.
  std::string dir = testing::TempDir() + "/permutation_oracle_" + std::to_string(getpid());
  std::vector<float> wk_target, wk_head;  // [kv_size, H]

  Oracle() {
    namespace fs = std::filesystem;
    fs::create_directories(dir + "/target");
    fs::create_directories(dir + "/head");
    const std::string common = R"("architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":32,
      "num_attention_heads":4,"num_key_value_heads":4,"head_dim":16,"vocab_size":64,"max_position_embeddings":512,
      "rms_norm_eps":1e-9,"rope_theta":10000.0,"tie_word_embeddings":false,"torch_dtype":"float32")";
    std::ofstream(dir + "/target/config.json") << "{" << common << R"(,"num_hidden_layers":1,"eos_token_id":[]})";
    std::ofstream(dir + "/head/config.json") << "{" << common << R"(,"num_hidden_layers":1,"bias":false})";
    std::vector<float> embed(kV * kH), lm_head(kV * kH), fc(kH * 2 * kH, 0.0f);
    for (int t = 0; t < kV; ++t)
      for (int j = 0; j < kH; ++j) {
        embed[t * kH + j] = hadamard(t, j);
        lm_head[sigma(t) * kH + j] = hadamard(t, j);  // logit of sigma(t) after t: 64; others 0
      }
    for (int i = 0; i < kH; ++i) fc[i * 2 * kH + i] = 1.0f;  // [I | 0]: the embedding half only
    wk_target = random_matrix(kHeads * kHeadDim * kH, 11);
    wk_head = random_matrix(kHeads * kHeadDim * kH, 21);
    auto layer = [&](const std::string& p, const std::vector<float>& wk, uint64_t seed, bool input_norm) {
      std::vector<io::TensorToWrite> t = {
          f32(p + "self_attn.q_proj.weight", {kH, kH}, random_matrix(kH * kH, seed)),
          f32(p + "self_attn.k_proj.weight", {kH, kH}, wk),
          f32(p + "self_attn.v_proj.weight", {kH, kH}, random_matrix(kH * kH, seed + 1)),
          f32(p + "self_attn.o_proj.weight", {kH, kH}, filled(kH * kH, 0.0f)),
          f32(p + "post_attention_layernorm.weight", {kH}, filled(kH, 1.0f)),
          f32(p + "mlp.gate_proj.weight", {kInter, kH}, random_matrix(kInter * kH, seed + 2)),
          f32(p + "mlp.up_proj.weight", {kInter, kH}, random_matrix(kInter * kH, seed + 3)),
          f32(p + "mlp.down_proj.weight", {kH, kInter}, filled(kH * kInter, 0.0f))};
      if (input_norm) t.push_back(f32(p + "input_layernorm.weight", {kH}, filled(kH, 1.0f)));
      return t;
    };
    std::vector<io::TensorToWrite> target = layer("model.layers.0.", wk_target, 31, true);
    target.push_back(f32("model.embed_tokens.weight", {kV, kH}, embed));
    target.push_back(f32("model.norm.weight", {kH}, filled(kH, 1.0f)));
    target.push_back(f32("lm_head.weight", {kV, kH}, lm_head));
    io::write_safetensors(dir + "/target/model.safetensors", target);
    std::vector<io::TensorToWrite> head = layer("layers.0.", wk_head, 41, false);
    head.push_back(f32("fc.weight", {kH, 2 * kH}, fc));
    io::write_safetensors(dir + "/head/model.safetensors", head);
  }

  std::unique_ptr<engine::Engine> load(Device device, const std::vector<int32_t>& frspec, int depth) const {
    engine::EngineOptions o;
    o.model_dir = dir + "/target";
    o.draft_dir = dir + "/head";
    o.frspec_ids = frspec;
    o.device = device;
    o.threads = 2;
    o.max_context = 200;
    o.prefill_chunk = 8;
    o.tree = {3, depth, 1 + 3 * depth};
    return engine::Engine::load(o);
  }
};

const Oracle& oracle() {
  static const Oracle o;
  return o;
}

std::vector<int32_t> chain(int32_t from, int64_t n) {
  std::vector<int32_t> out;
  for (int32_t t = from; static_cast<int64_t>(out.size()) < n;) out.push_back(t = sigma(t));
  return out;
}

const std::vector<int32_t> kPrompt = {7, 12, 40, 9, 33, 21, 2, 50, 17, 44, 5};  // 11 tokens: chunk edge at 8

struct OracleRun {
  engine::GenerationResult result;
  std::vector<int64_t> accepted_per_cycle;
};

OracleRun generate(engine::Engine& e, int64_t n, std::vector<int32_t> stops = {}) {
  engine::GenerationRequest req;
  req.prompt = kPrompt;
  req.max_new_tokens = n;
  req.stop_ids = std::move(stops);
  OracleRun run;
  engine::GenerationCallbacks cb;
  cb.on_verification = [&](const spec::DraftTree&, std::span<const int32_t> acc, int32_t) {
    run.accepted_per_cycle.push_back(static_cast<int64_t>(acc.size()));
  };
  run.result = engine::make_decoder(e)->generate(req, cb);
  return run;
}

void check_acceptance_and_stops(Device device) {
  for (int depth : {1, 4, 7}) {
    auto e = oracle().load(device, {}, depth);
    const int64_t n = 1 + 10 * (depth + 1);
    const OracleRun run = generate(*e, n);
    EXPECT_EQ(run.result.tokens, chain(kPrompt.back(), n)) << "depth " << depth;
    ASSERT_EQ(run.accepted_per_cycle.size(), 10u) << "depth " << depth;
    for (int64_t a : run.accepted_per_cycle) EXPECT_EQ(a, depth) << "every cycle accepts the whole depth";
    // An end token in the middle of an accepted run: generation stops before it.
    const std::vector<int32_t> expected = chain(kPrompt.back(), n);
    const int32_t stop = expected[static_cast<size_t>(depth + 2)];
    const OracleRun stopped = generate(*e, n, {stop});
    EXPECT_EQ(stopped.result.finish_reason, engine::FinishReason::Stop);
    EXPECT_EQ(stopped.result.tokens, std::vector<int32_t>(expected.begin(), expected.begin() + depth + 2));
  }
}

TEST(SpecPermutationOracle, EveryCycleAcceptsTheWholeDepthAndStopsInsideARun) {
  check_acceptance_and_stops(Device::CPU);
}

TEST(SpecPermutationOracle, FrSpecAcceptanceStopsExactlyWhereTheChainLeavesTheList) {
  const int depth = 6;
  // Every token but a few on the chain, in a scrambled order (draft id != token id).
  const std::vector<int32_t> full_chain = chain(kPrompt.back(), 60);
  const std::vector<int32_t> missing = {full_chain[3], full_chain[4], full_chain[15], full_chain[30]};
  std::vector<int32_t> list;
  for (int32_t t = kV - 1; t >= 0; --t)
    if (std::find(missing.begin(), missing.end(), t) == missing.end()) list.push_back(t);
  auto e = oracle().load(Device::CPU, list, depth);
  const int64_t n = 40;
  const OracleRun run = generate(*e, n);
  EXPECT_EQ(run.result.tokens, chain(kPrompt.back(), n));
  // Expected accepted drafts per cycle: from the root, the chain tokens until one is missing.
  std::vector<int64_t> expected;
  int64_t emitted = 1;  // the prompt pass's token
  int32_t root = full_chain[0];
  while (emitted < n) {
    int64_t a = 0;
    int32_t t = root;
    while (a < depth && std::find(missing.begin(), missing.end(), sigma(t)) == missing.end()) t = sigma(t), ++a;
    expected.push_back(a);
    emitted += a + 1;
    for (int64_t i = 0; i <= a; ++i) root = sigma(root);
  }
  EXPECT_EQ(run.accepted_per_cycle, expected);
}

// RoPE (rotate-half) of one head vector at `position`, in double.
void rope(std::vector<double>& x, int position) {
  for (int i = 0; i < kHeadDim / 2; ++i) {
    const double angle = position * std::pow(10000.0, -2.0 * i / kHeadDim);
    const double a = x[i], b = x[i + kHeadDim / 2];
    x[i] = a * std::cos(angle) - b * std::sin(angle);
    x[i + kHeadDim / 2] = b * std::cos(angle) + a * std::sin(angle);
  }
}

// Checks rows [0, rows) of a [heads, capacity, hd] F32 K cache against W_k e(token(p)) RoPE'd at p.
void expect_k_cache(const Tensor& cache, const std::vector<float>& wk, int64_t rows,
                    const std::function<int32_t(int64_t)>& token_at, const char* which) {
  const int64_t capacity = cache.dim(1);
  for (int64_t p = 0; p < rows; ++p)
    for (int h = 0; h < kHeads; ++h) {
      std::vector<double> k(kHeadDim);
      for (int d = 0; d < kHeadDim; ++d) {
        double s = 0;
        for (int j = 0; j < kH; ++j) s += wk[(h * kHeadDim + d) * kH + j] * hadamard(token_at(p), j);
        k[d] = s;
      }
      rope(k, static_cast<int>(p));
      for (int d = 0; d < kHeadDim; ++d)
        ASSERT_NEAR(cache.as<const float>()[(h * capacity + p) * kHeadDim + d], k[d], 2e-3)
            << which << " row " << p << " head " << h;
    }
}

TEST(SpecPermutationOracle, BothKvCachesHoldTheCommittedSequence) {
  const int depth = 5;
  std::vector<int32_t> list;  // some misses too, so rejected nodes' rows exist between accepted ones
  const std::vector<int32_t> c = chain(kPrompt.back(), 60);
  for (int32_t t = 0; t < kV; ++t)
    if (t != c[8] && t != c[20]) list.push_back(t);
  auto e = oracle().load(Device::CPU, list, depth);
  const OracleRun run = generate(*e, 37);
  std::vector<int32_t> sequence = kPrompt;
  sequence.insert(sequence.end(), run.result.tokens.begin(), run.result.tokens.end());
  // Rows committed: everything but the last emitted token (the next root) and whatever the last
  // pass drafted beyond max_new_tokens. Check the rows both caches must hold.
  const int64_t rows = static_cast<int64_t>(sequence.size()) - 1;
  // Target row p: its input token at p (RMS-1 embedding, unit norms).
  expect_k_cache(e->transformer().kv_cache().k(0), oracle().wk_target, rows,
                 [&](int64_t p) { return sequence[static_cast<size_t>(p)]; }, "target");
  // Draft row p: the embedding of token p + 1 (fc = [I | 0], no input norm).
  expect_k_cache(e->draft()->kv_cache().k(0), oracle().wk_head, rows,
                 [&](int64_t p) { return sequence[static_cast<size_t>(p + 1)]; }, "draft");
}

#ifdef SPECULA_WITH_CUDA
TEST(SpecPermutationOracle, CudaEveryCycleAcceptsTheWholeDepth) {
  SPECULA_SKIP_WITHOUT_CUDA();
  check_acceptance_and_stops(Device::CUDA);
}
#endif

}  // namespace

namespace {

// At the end of the context a speculative run stops where plain decoding stops (the accepted
// run can reach past it; nothing beyond position `context` is emitted).
TEST(SpecPermutationOracle, ContextEndMatchesPlainDecoding) {
  for (int64_t context : {14, 17, 20}) {
    auto load = [&](bool draft) {
      engine::EngineOptions o;
      o.model_dir = oracle().dir + "/target";
      if (draft) o.draft_dir = oracle().dir + "/head";
      o.threads = 1;
      o.max_context = context;
      o.prefill_chunk = 8;
      o.tree = {3, 6, 19};
      return engine::Engine::load(o);
    };
    auto spec = load(true), plain = load(false);
    engine::GenerationRequest req;
    req.prompt = kPrompt;
    req.max_new_tokens = 100;
    const engine::GenerationResult got = engine::make_decoder(*spec)->generate(req);
    const engine::GenerationResult want = engine::Generator(*plain).generate(req);
    EXPECT_EQ(got.tokens, want.tokens) << "context " << context;
    EXPECT_EQ(got.finish_reason, engine::FinishReason::ContextFull) << "context " << context;
    EXPECT_EQ(want.finish_reason, engine::FinishReason::ContextFull) << "context " << context;
  }
}

}  // namespace
