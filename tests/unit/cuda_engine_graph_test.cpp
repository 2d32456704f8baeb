// Engine::decode_step on CUDA keeps two decode graphs per output kind: caches up to
// CudaContext::fused_attention_max_rows() rows replay the graph with the fused decode attention,
// longer ones the graph with the separate attention kernels. Three engines over the same random
// weights decode the same teacher-forced tokens: one always fused, one never, one switching at a
// small limit; the switching engine's logits must equal the fused engine's bit for bit up to the
// limit and the unfused engine's after it. The two paths sum the softmax in different orders, so
// they differ in low bits somewhere; the test checks that too, or it could not tell them apart.
// Also: SPECULA_FUSED_ATTENTION_MAX_ROWS parsing (no GPU needed).
#ifdef SPECULA_WITH_CUDA

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/model/config.h"
#include "specula/ops/cuda/cuda_context.h"

using namespace specula;

namespace {

// Fusable on an H100: 8 KV heads of groups of 4, head_dim 64.
constexpr const char* kConfig = R"({"architectures":["LlamaForCausalLM"],"hidden_size":2048,
  "intermediate_size":1024,"num_hidden_layers":2,"num_attention_heads":32,"num_key_value_heads":8,
  "vocab_size":1000,"max_position_embeddings":4096,"rms_norm_eps":1e-5,"rope_theta":500000.0,
  "tie_word_embeddings":false})";
constexpr int64_t kSwitchRows = 24;  // the switching engine's limit
constexpr int32_t kSteps = 48;
constexpr uint64_t kWeightSeed = 7;

enum class Attention { AlwaysFused, NeverFused, Switching };

// Logits of each teacher-forced decode step (StepOutput::Logits through the graphs).
std::vector<std::vector<float>> decode_logits(Attention mode) {
  engine::EngineOptions options;
  options.device = Device::CUDA;
  options.max_context = 64;
  const model::ModelConfig config = model::ModelConfig::from_json(kConfig, "test config");
  auto engine = engine::Engine::create_random(config, options, kWeightSeed);
  cuda::CudaContext& ctx = *engine->op_context().cuda;
  ctx.set_fused_decode_attention(mode != Attention::NeverFused);
  ctx.set_fused_attention_max_rows(mode == Attention::Switching ? kSwitchRows : int64_t{1} << 40);
  std::vector<std::vector<float>> logits;
  for (int32_t pos = 0; pos < kSteps; ++pos) {
    engine->decode_step((pos * 37 + 11) % 1000, pos, engine::Engine::StepOutput::Logits);
    logits.emplace_back();
    engine->read_logits(1, logits.back());
  }
  engine->synchronize();
  return logits;
}

TEST(CudaEngineGraphs, LongCachesReplayTheGraphWithSeparateAttentionKernels) {
  SPECULA_SKIP_WITHOUT_CUDA();
  {
    auto probe = cuda::CudaContext::create();
    if (probe->info().sm_major < 9) GTEST_SKIP() << "the fused decode attention needs sm_90";
  }
  const auto fused = decode_logits(Attention::AlwaysFused);
  const auto unfused = decode_logits(Attention::NeverFused);
  const auto switching = decode_logits(Attention::Switching);
  int paths_differ = 0;
  for (int32_t pos = 0; pos < kSteps; ++pos) {
    const bool short_cache = pos + 1 <= kSwitchRows;
    const auto& want = short_cache ? fused[static_cast<size_t>(pos)] : unfused[static_cast<size_t>(pos)];
    EXPECT_EQ(switching[static_cast<size_t>(pos)], want)
        << "position " << pos << ": expected the " << (short_cache ? "fused" : "separate-kernel") << " graph";
    if (fused[static_cast<size_t>(pos)] != unfused[static_cast<size_t>(pos)]) ++paths_differ;
  }
  EXPECT_GT(paths_differ, 0) << "the fused and separate attention gave identical logits at every step, so this test "
                                "cannot tell which graph ran";
}

TEST(CudaEngineGraphsSwitch, MaxRowsTakesNonNegativeIntegers) {
  EXPECT_EQ(cuda::parse_fused_attention_max_rows(nullptr), cuda::kDefaultFusedAttentionMaxRows);
  EXPECT_EQ(cuda::parse_fused_attention_max_rows(""), cuda::kDefaultFusedAttentionMaxRows);
  EXPECT_EQ(cuda::parse_fused_attention_max_rows("0"), 0);
  EXPECT_EQ(cuda::parse_fused_attention_max_rows("3072"), 3072);
  for (const char* bad : {"-1", "4k", " 10", "1e3", "99999999999999999999999"}) {
    try {
      cuda::parse_fused_attention_max_rows(bad);
      ADD_FAILURE() << "'" << bad << "' was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("SPECULA_FUSED_ATTENTION_MAX_ROWS"), std::string::npos) << e.what();
    }
  }
}

}  // namespace

#endif  // SPECULA_WITH_CUDA
