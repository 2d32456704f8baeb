// InfLLM-V2 through the whole model (CPU backend), on the tiny MiniCPM4 target of tests/data/eagle
// with sparse settings scaled to its 512-token context (block 64, window 128: two local blocks,
// topk 1 or 2, dense_len 256): the properties the issue names, each able to fail.
//   - sparse equals dense when topk covers every block;
//   - the switch at dense_len (a prompt below it is dense, one at it sparse from its first token;
//     decode switches at the token that reaches it);
//   - chunked prefill equals one-shot prefill;
//   - decode after prefill equals recomputing everything in one pass;
//   - speculative greedy output equals plain greedy output under sparse attention.
// Both variants each time; the plan's variant rule and option checks at the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "specula/model/attention_plan.h"

using namespace specula;
using ops::SparseVariant;

namespace {

const std::string kEagle = std::string(SPECULA_TEST_DATA) + "/eagle";
constexpr int64_t kDenseLen = 256;

#ifdef SPECULA_WITH_CUDA
#define SKIP_WITHOUT_CUDA() SPECULA_SKIP_WITHOUT_CUDA()
#else
#define SKIP_WITHOUT_CUDA() GTEST_SKIP() << "no CUDA device: this build has no CUDA backend"
#endif

// The backend under test: the CPU reference, or CUDA in its full-precision mode (F32 activations
// and caches, so ties and near-ties resolve as on the CPU).
Device g_device = Device::CPU;

engine::EngineOptions options(SparseVariant variant, model::AttentionMode mode, int64_t topk, int64_t chunk = 512,
                              int64_t logit_rows = 1) {
  engine::EngineOptions o;
  o.device = g_device;
  o.full_precision = g_device == Device::CUDA;
  o.model_dir = kEagle + "/target_minicpm4";
  o.threads = 2;
  o.max_context = 500;
  o.prefill_chunk = chunk;
  o.max_logit_rows = logit_rows;
  o.attention.mode = mode;
  o.attention.variant = variant;
  o.attention.window_size = 128;
  o.attention.topk = topk;
  o.attention.dense_len = kDenseLen;
  return o;
}

std::vector<int32_t> prompt_of(int64_t n, int32_t salt = 0) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(3 + (i * 97 + salt * 31 + i * i % 13) % 500);
  return ids;
}

// Logits of every row of a one-pass prompt (prefill_end = the prompt's length, as the generator does).
std::vector<float> prompt_logits(engine::Engine& e, const std::vector<int32_t>& prompt, int64_t rows) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  std::vector<int32_t> pos(prompt.size());
  std::iota(pos.begin(), pos.end(), 0);
  e.transformer().kv_cache().truncate(0);
  e.write_inputs(prompt, pos, pos);
  e.forward(n, rows, n);
  std::vector<float> out;
  e.read_logits(rows, out);
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
  return d;
}

const SparseVariant kVariants[] = {SparseVariant::MiniCPM4, SparseVariant::MiniCPM41};

// Block observers read host memory, so block-set checks run on the CPU backend; CUDA compares
// logits and tokens (its decode steps replay captured graphs, where no observer may run).
class SparseEngine : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override {
    g_device = GetParam();
    if (g_device == Device::CUDA) {
      SKIP_WITHOUT_CUDA();
    }
  }
  void TearDown() override { g_device = Device::CPU; }
  bool on_cpu() const { return GetParam() == Device::CPU; }
  // Logit agreement between two runs that take different kernels (CUDA: the sparse and dense
  // attention kernels sum in other orders).
  double tolerance() const { return on_cpu() ? 1e-5 : 2e-4; }
};

TEST_P(SparseEngine, TopkCoveringEveryBlockEqualsDense) {
  const std::vector<int32_t> prompt = prompt_of(450);
  auto dense = engine::Engine::load(options(SparseVariant::MiniCPM41, model::AttentionMode::Dense, 64, 512, 450));
  const std::vector<float> want = prompt_logits(*dense, prompt, 450);
  for (SparseVariant v : kVariants) {
    auto sparse = engine::Engine::load(options(v, model::AttentionMode::Sparse, 64, 512, 450));
    ASSERT_TRUE(sparse->transformer().attention_plan().sparse_enabled());
    EXPECT_LT(max_abs_diff(prompt_logits(*sparse, prompt, 450), want), tolerance()) << static_cast<int>(v);
    // And with few blocks the answer changes (the selection is not a no-op).
    auto narrow = engine::Engine::load(options(v, model::AttentionMode::Sparse, 1, 512, 450));
    EXPECT_GT(max_abs_diff(prompt_logits(*narrow, prompt, 450), want), 1e-3) << static_cast<int>(v);
  }
}

TEST_P(SparseEngine, SwitchesAtDenseLen) {
  for (SparseVariant v : kVariants) {
    auto dense = engine::Engine::load(options(v, model::AttentionMode::Dense, 1));
    auto sparse = engine::Engine::load(options(v, model::AttentionMode::Auto, 1));
    ASSERT_TRUE(sparse->transformer().attention_plan().sparse_enabled());
    // The device backends' choice of path from what the host knows (model/transformer.h).
    model::Transformer& st = sparse->transformer();
    EXPECT_FALSE(st.sparse_path(kDenseLen - 2));      // a decode step below the switch
    EXPECT_TRUE(st.sparse_path(kDenseLen - 1));       // the step that reaches dense_len
    EXPECT_TRUE(st.sparse_path(-1));                  // positions unknown on the host
    EXPECT_FALSE(st.sparse_path(-1, kDenseLen - 1));  // a prompt shorter than dense_len
    EXPECT_TRUE(st.sparse_path(-1, kDenseLen));       // a prompt reaching it: sparse from token 0
    EXPECT_FALSE(dense->transformer().sparse_path(-1));
    int64_t sparse_calls = 0;
    if (on_cpu())
      sparse->transformer().set_block_observer([&](int64_t, const Tensor&, const Tensor& blocks) {
        if (blocks.as<const int32_t>()[0] != ops::AttentionMask::kDenseQuery) ++sparse_calls;
      });
    // A prompt one token short of dense_len: dense, and equal to the dense engine.
    const std::vector<int32_t> below = prompt_of(kDenseLen - 1, 1);
    EXPECT_LT(max_abs_diff(prompt_logits(*sparse, below, 1), prompt_logits(*dense, below, 1)), tolerance());
    EXPECT_EQ(sparse_calls, 0);
    // At dense_len: sparse from the first token (every call's first query is listed).
    const std::vector<int32_t> at = prompt_of(kDenseLen, 1);
    EXPECT_GT(max_abs_diff(prompt_logits(*sparse, at, 1), prompt_logits(*dense, at, 1)), 1e-3);
    if (on_cpu()) EXPECT_GT(sparse_calls, 0);
    // Decode across the switch after a short prompt: the step reaching dense_len is the first
    // sparse one; before it the logits equal the dense engine's.
    const std::vector<int32_t> start = prompt_of(kDenseLen - 4, 2);
    prompt_logits(*sparse, start, 1);
    prompt_logits(*dense, start, 1);
    sparse->transformer().kv_cache().append(kDenseLen - 4);
    dense->transformer().kv_cache().append(kDenseLen - 4);
    for (int32_t p = kDenseLen - 4; p < kDenseLen + 6; ++p) {
      sparse_calls = 0;
      const int32_t token = 5 + p % 200;
      sparse->decode_step(token, p, engine::Engine::StepOutput::Logits);
      dense->decode_step(token, p, engine::Engine::StepOutput::Logits);
      std::vector<float> a, b;
      sparse->read_logits(1, a);
      dense->read_logits(1, b);
      if (p + 1 < kDenseLen) {
        EXPECT_LT(max_abs_diff(a, b), tolerance()) << "position " << p;
        EXPECT_EQ(sparse_calls, 0) << "position " << p;
      } else if (on_cpu()) {
        EXPECT_GT(sparse_calls, 0) << "position " << p;
      }
      sparse->transformer().kv_cache().append(1);
      dense->transformer().kv_cache().append(1);
    }
  }
}

TEST_P(SparseEngine, ChunkedPrefillEqualsOneShot) {
  const std::vector<int32_t> prompt = prompt_of(433, 3);
  for (SparseVariant v : kVariants) {
    auto one = engine::Engine::load(options(v, model::AttentionMode::Auto, 2, 512));
    auto chunked = engine::Engine::load(options(v, model::AttentionMode::Auto, 2, 61));
    std::vector<std::vector<int32_t>> one_sets, chunk_sets;
    auto recorder = [](std::vector<std::vector<int32_t>>& sets) {
      return [&sets](int64_t layer, const Tensor& pos, const Tensor& blocks) {
        const int64_t kv = blocks.dim(0), tokens = blocks.dim(1), w = blocks.dim(2);
        for (int64_t t = 0; t < tokens; ++t)
          for (int64_t h = 0; h < kv; ++h) {
            std::vector<int32_t> row{static_cast<int32_t>(layer), pos.as<const int32_t>()[t], static_cast<int32_t>(h)};
            const int32_t* list = blocks.as<const int32_t>() + (h * tokens + t) * w;
            row.insert(row.end(), list, list + w);
            sets.push_back(row);
          }
      };
    };
    if (on_cpu()) {
      one->transformer().set_block_observer(recorder(one_sets));
      chunked->transformer().set_block_observer(recorder(chunk_sets));
    }
    // Through the generator, as a user's prompt goes: 8 greedy tokens each.
    engine::GenerationRequest req;
    req.prompt = prompt;
    req.max_new_tokens = 8;
    const auto a = engine::Generator(*one).generate(req), b = engine::Generator(*chunked).generate(req);
    EXPECT_EQ(a.tokens, b.tokens) << static_cast<int>(v);
    std::sort(one_sets.begin(), one_sets.end());
    std::sort(chunk_sets.begin(), chunk_sets.end());
    EXPECT_EQ(one_sets, chunk_sets) << "the selected blocks of every layer, position and KV head";
    if (on_cpu()) EXPECT_GT(one_sets.size(), 433u);
  }
}

TEST_P(SparseEngine, DecodeAfterPrefillEqualsRecomputation) {
  const std::vector<int32_t> all = prompt_of(330, 4);
  const int64_t prefix = 300, steps = 30;
  for (SparseVariant v : kVariants) {
    auto full = engine::Engine::load(options(v, model::AttentionMode::Auto, 2, 512, 330));
    const std::vector<float> want = prompt_logits(*full, all, 330);
    auto inc = engine::Engine::load(options(v, model::AttentionMode::Auto, 2, 512, 1));
    prompt_logits(*inc, std::vector<int32_t>(all.begin(), all.begin() + prefix), 1);
    inc->transformer().kv_cache().append(prefix);
    const int64_t V = inc->config().vocab_size;
    for (int32_t p = static_cast<int32_t>(prefix); p < prefix + steps; ++p) {
      inc->decode_step(all[static_cast<size_t>(p)], p, engine::Engine::StepOutput::Logits);
      inc->transformer().kv_cache().append(1);
      std::vector<float> got;
      inc->read_logits(1, got);
      const std::vector<float> row(want.begin() + p * V, want.begin() + (p + 1) * V);
      EXPECT_LT(max_abs_diff(got, row), on_cpu() ? 1e-4 : 1e-3) << "variant " << static_cast<int>(v) << ", position " << p;
    }
  }
}

TEST_P(SparseEngine, SpeculativeGreedyEqualsPlainGreedy) {
  for (SparseVariant v : kVariants) {
    engine::EngineOptions with_draft = options(v, model::AttentionMode::Auto, 2);
    with_draft.draft_dir = kEagle + "/head_minicpm4";
    with_draft.tree.top_k = 4;
    with_draft.tree.depth = 5;
    with_draft.tree.size = 16;
    auto spec = engine::Engine::load(with_draft);
    // The MiniCPM4 head with an FR-Spec list of half the vocabulary (the draft head's LM head is
    // those rows; verification stays full).
    for (int32_t id = 0; id < 256; ++id) with_draft.frspec_ids.push_back(id * 2 + 1);
    auto spec_fr = engine::Engine::load(with_draft);
    auto plain = engine::Engine::load(options(v, model::AttentionMode::Auto, 2));
    for (int32_t salt : {5, 6}) {
      engine::GenerationRequest req;
      req.prompt = prompt_of(280, salt);
      req.max_new_tokens = 60;
      const auto want = engine::Generator(*plain).generate(req);
      for (engine::Engine* e : {spec.get(), spec_fr.get()}) {
        const auto got = engine::make_decoder(*e)->generate(req);
        EXPECT_EQ(got.tokens, want.tokens) << "variant " << static_cast<int>(v) << ", prompt " << salt
                                           << (e == spec_fr.get() ? ", FR-Spec" : "");
        EXPECT_GT(got.verifications, 0);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, SparseEngine, ::testing::Values(Device::CPU, Device::CUDA),
                         [](const auto& info) { return info.param == Device::CPU ? "Cpu" : "Cuda"; });

// CUDA (full precision) against the CPU reference through the whole model: greedy tokens of a
// sparse run, both variants, prompt past dense_len and decode.
TEST(SparseEngineCuda, GreedyTokensEqualTheCpuReference) {
  SKIP_WITHOUT_CUDA();
  for (SparseVariant v : kVariants) {
    engine::GenerationRequest req;
    req.prompt = prompt_of(300, 9);
    req.max_new_tokens = 80;
    g_device = Device::CPU;
    auto cpu = engine::Engine::load(options(v, model::AttentionMode::Auto, 2));
    g_device = Device::CUDA;
    auto cuda = engine::Engine::load(options(v, model::AttentionMode::Auto, 2));
    g_device = Device::CPU;
    EXPECT_EQ(engine::Generator(*cuda).generate(req).tokens, engine::Generator(*cpu).generate(req).tokens)
        << "variant " << static_cast<int>(v);
  }
}

TEST(SparsePlan, RulesAndChecks) {
  const model::ModelConfig minicpm = model::ModelConfig::from_dir(kEagle + "/target_minicpm4");  // no sparse_config
  const model::ModelConfig llama = model::ModelConfig::from_dir(kEagle + "/target_llama3");
  model::AttentionOptions o;
  // Variant rule: flag, then folder name, then sparse_config presence.
  EXPECT_EQ(model::AttentionPlan::resolve(minicpm, o, "x/target_minicpm4").variant, SparseVariant::MiniCPM4);
  EXPECT_EQ(model::AttentionPlan::resolve(minicpm, o, "models/MiniCPM4.1-8B").variant, SparseVariant::MiniCPM41);
  EXPECT_EQ(model::AttentionPlan::resolve(minicpm, o, "models/MiniCPM4-8B").variant, SparseVariant::MiniCPM4);
  EXPECT_EQ(model::AttentionPlan::resolve(minicpm, o, "models/tiny").variant, SparseVariant::MiniCPM4);
  model::ModelConfig shipped_41 = minicpm;
  shipped_41.sparse_defaulted = false;
  EXPECT_EQ(model::AttentionPlan::resolve(shipped_41, o, "models/tiny").variant, SparseVariant::MiniCPM41);
  o.variant = SparseVariant::MiniCPM41;
  EXPECT_EQ(model::AttentionPlan::resolve(minicpm, o, "models/MiniCPM4-8B").variant, SparseVariant::MiniCPM41);
  // Modes: a Llama is dense under auto, sparse when asked; dense is dense.
  EXPECT_FALSE(model::AttentionPlan::resolve(llama, {}, "l").sparse_enabled());
  model::AttentionOptions sparse;
  sparse.mode = model::AttentionMode::Sparse;
  const model::AttentionPlan llama_sparse = model::AttentionPlan::resolve(llama, sparse, "l");
  EXPECT_TRUE(llama_sparse.sparse_enabled());
  EXPECT_TRUE(llama_sparse.sparse_at(1));
  model::AttentionOptions dense;
  dense.mode = model::AttentionMode::Dense;
  EXPECT_FALSE(model::AttentionPlan::resolve(minicpm, dense, "m").sparse_enabled());
  // The switch per call: a prompt reaching dense_len is sparse from token 0; decode per token.
  const model::AttentionPlan automatic = model::AttentionPlan::resolve(minicpm, {}, "m");
  EXPECT_EQ(automatic.select_params(16, 8192).sparse_from, 0);
  EXPECT_EQ(automatic.select_params(16, 8191).sparse_from, 8191);
  EXPECT_EQ(automatic.select_params(16, 0).sparse_from, 8191);
  EXPECT_EQ(automatic.request_summary(100, 9000), "dense, sparse (InfLLM-V2 minicpm4) from position 8191");
  // Settings the algorithm cannot take are refused, naming the setting.
  model::AttentionOptions bad;
  bad.window_size = 100;
  try {
    model::AttentionPlan::resolve(minicpm, bad, "m");
    FAIL() << "window_size 100 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("window_size 100 must be a positive multiple of block_size 64"), std::string::npos)
        << e.what();
  }
  model::ModelConfig nope = minicpm;
  nope.sparse->use_nope = true;
  EXPECT_THROW(model::AttentionPlan::resolve(nope, {}, "m"), Error);
  // A context that never reaches dense_len runs dense under auto (no sparse state planned).
  engine::EngineOptions short_ctx = options(SparseVariant::MiniCPM4, model::AttentionMode::Auto, 2);
  short_ctx.max_context = 200;
  EXPECT_FALSE(engine::Engine::load(short_ctx)->transformer().attention_plan().sparse_enabled());
  // A draft tree deeper than the local blocks keep visible is refused.
  engine::EngineOptions deep = options(SparseVariant::MiniCPM4, model::AttentionMode::Auto, 2);
  deep.draft_dir = kEagle + "/head_minicpm4";
  deep.tree.depth = 65;  // MiniCPM4 with two local blocks keeps 64 positions
  deep.tree.size = 80;
  EXPECT_THROW(engine::Engine::load(deep), Error);
}

}  // namespace
