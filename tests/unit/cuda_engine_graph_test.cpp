// Engine::decode_step on CUDA keeps two decode graphs per output kind: caches up to
// CudaContext::fused_attention_max_rows() rows replay the graph with the fused decode attention,
// longer ones the graph with the separate attention kernels. An engine whose limit is small
// decodes teacher-forced tokens through the graphs; its logits must equal bit for bit those of an
// engine over the same weights that runs each step eagerly with the attention path switched by
// hand at the same length (eager and captured steps agree exactly: CudaGraph tests). Two more
// engines, always and never fused, must differ somewhere past the limit, or the comparison could
// not tell the paths apart (they sum the softmax in different orders).
// Also: SPECULA_FUSED_ATTENTION_MAX_ROWS parsing (no GPU needed).
#ifdef SPECULA_WITH_CUDA

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <span>
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

enum class Attention { AlwaysFused, NeverFused, Switching, EagerSwitchedByHand };

// Logits of each teacher-forced decode step: StepOutput::Logits through the graphs, or eager
// forwards for EagerSwitchedByHand.
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
    const int32_t token = (pos * 37 + 11) % 1000;
    if (mode == Attention::EagerSwitchedByHand) {
      ctx.set_fused_decode_attention(pos + 1 <= kSwitchRows);
      engine->write_inputs(std::span(&token, 1), std::span(&pos, 1), std::span(&pos, 1));
      engine->forward(1, 1);
    } else {
      engine->decode_step(token, pos, engine::Engine::StepOutput::Logits);
    }
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
  const auto switching = decode_logits(Attention::Switching);
  const auto by_hand = decode_logits(Attention::EagerSwitchedByHand);
  for (int32_t pos = 0; pos < kSteps; ++pos)
    EXPECT_EQ(switching[static_cast<size_t>(pos)], by_hand[static_cast<size_t>(pos)])
        << "position " << pos << ": expected the " << (pos + 1 <= kSwitchRows ? "fused" : "separate-kernel")
        << " attention";
  const auto fused = decode_logits(Attention::AlwaysFused);
  const auto unfused = decode_logits(Attention::NeverFused);
  int paths_differ = 0;
  for (int32_t pos = kSwitchRows; pos < kSteps; ++pos)
    if (fused[static_cast<size_t>(pos)] != unfused[static_cast<size_t>(pos)]) ++paths_differ;
  EXPECT_GT(paths_differ, 0) << "the fused and separate attention gave identical logits past the limit, so this test "
                                "cannot tell which graph ran";
}

TEST(CudaEngineGraphsSwitch, MaxRowsTakesNonNegativeIntegers) {
  EXPECT_EQ(cuda::parse_fused_attention_max_rows(nullptr), cuda::kDefaultFusedAttentionMaxRows);
  EXPECT_EQ(cuda::parse_fused_attention_max_rows(""), cuda::kDefaultFusedAttentionMaxRows);
  EXPECT_EQ(cuda::parse_fused_attention_max_rows("0"), 0);
  EXPECT_EQ(cuda::parse_fused_attention_max_rows("3072"), 3072);
  test::expect_rejected_by_name(cuda::parse_fused_attention_max_rows,
                                {"-1", "4k", " 10", "1e3", "99999999999999999999999"},
                                "SPECULA_FUSED_ATTENTION_MAX_ROWS");
}

}  // namespace

#endif  // SPECULA_WITH_CUDA
