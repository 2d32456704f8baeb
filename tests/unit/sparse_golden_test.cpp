// InfLLM-V2 against a small PyTorch reference of each variant's Hugging Face path
// (tools/make_infllmv2_fixtures.py, run on the GPU machine; fixtures in tests/data/sparse/): two
// tiny MiniCPM checkpoints, GQA groups 4 and 16, whose folder names pick the variant through the
// engine's own rule. Per case: a prompt past dense_len (sparse from its first token) and one that
// crosses dense_len while decoding. Compared: the greedy tokens, the last prompt row's logits,
// and the attended blocks of every layer, position and KV head, in one-shot and chunked prefill.
// The cases run one after the other on one engine, as a server's requests do: that caught compressed
// keys left stale by a dense request whose rows replaced a sparse one's.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "specula/model/attention_plan.h"

using namespace specula;

namespace {

const std::string kSparse = std::string(SPECULA_TEST_DATA) + "/sparse";
using Key = std::tuple<int64_t, int64_t, int64_t>;  // layer, position, KV head

nlohmann::json read_golden(const std::string& dir) {
  std::ifstream in(dir + "/golden.json");
  EXPECT_TRUE(in.good()) << dir << "/golden.json missing (tools/make_infllmv2_fixtures.py writes it)";
  return nlohmann::json::parse(in);
}

std::unique_ptr<engine::Engine> load(const std::string& dir, int64_t chunk) {
  engine::EngineOptions o;
  o.model_dir = dir;
  o.threads = 2;
  o.max_context = 512;
  o.prefill_chunk = chunk;
  return engine::Engine::load(o);
}

void check_fixture(const std::string& name, ops::SparseVariant variant) {
  const std::string dir = kSparse + "/" + name;
  const nlohmann::json golden = read_golden(dir);
  for (int64_t chunk : {512, 97}) {
    auto e = load(dir, chunk);
    const model::AttentionPlan& plan = e->transformer().attention_plan();
    ASSERT_TRUE(plan.sparse_enabled()) << plan.describe();
    ASSERT_EQ(plan.variant, variant) << "the folder name picks the variant: " << plan.describe();
    std::map<Key, std::vector<int32_t>> seen;
    e->transformer().set_block_observer([&](int64_t layer, const Tensor& pos, const Tensor& blocks) {
      const int64_t kv = blocks.dim(0), tokens = blocks.dim(1), w = blocks.dim(2);
      for (int64_t h = 0; h < kv; ++h)
        for (int64_t t = 0; t < tokens; ++t) {
          const int32_t* list = blocks.as<const int32_t>() + (h * tokens + t) * w;
          if (list[0] == ops::AttentionMask::kDenseQuery) continue;
          std::vector<int32_t>& out = seen[{layer, pos.as<const int32_t>()[t], h}];
          out.clear();
          for (int64_t i = 0; i < w && list[i] >= 0; ++i) out.push_back(list[i]);
        }
    });
    for (const auto& c : golden.at("cases")) {
      const std::string where = name + " " + c.at("name").get<std::string>() + ", prefill chunk " + std::to_string(chunk);
      seen.clear();
      engine::GenerationRequest req;
      req.prompt = c.at("prompt").get<std::vector<int32_t>>();
      const std::vector<int32_t> want = c.at("greedy_tokens").get<std::vector<int32_t>>();
      req.max_new_tokens = static_cast<int64_t>(want.size());
      const engine::GenerationResult got = engine::Generator(*e).generate(req);
      EXPECT_EQ(got.tokens, want) << where;
      int64_t compared = 0, dense_calls = 0;
      // The reference also ran the forward after its last token; the generator stops before it.
      const int64_t last_run = static_cast<int64_t>(req.prompt.size() + want.size()) - 2;
      for (const auto& call : c.at("calls")) {
        const std::vector<int64_t> positions = call.at("positions").get<std::vector<int64_t>>();
        if (positions.front() > last_run) continue;
        const auto& layers = call.at("layers");
        for (size_t layer = 0; layer < layers.size(); ++layer) {
          if (layers[layer].is_string()) {  // "dense": no query of the call may have been sparse
            ++dense_calls;
            for (int64_t p : positions)
              EXPECT_EQ(seen.count({static_cast<int64_t>(layer), p, 0}), 0u) << where << ": position " << p
                                                                             << " ran sparse, the reference dense";
            continue;
          }
          for (size_t h = 0; h < layers[layer].size(); ++h)
            for (size_t t = 0; t < positions.size(); ++t) {
              const Key key{static_cast<int64_t>(layer), positions[t], static_cast<int64_t>(h)};
              const auto it = seen.find(key);
              ASSERT_NE(it, seen.end()) << where << ": no blocks for layer " << layer << ", position " << positions[t];
              ASSERT_EQ(it->second, layers[layer][h][t].get<std::vector<int32_t>>())
                  << where << ": layer " << layer << ", position " << positions[t] << ", KV head " << h;
              ++compared;
            }
        }
      }
      EXPECT_GT(compared, 50) << where;
      // The last prompt row's logits, from a separate one-pass prefill.
      const int64_t n = static_cast<int64_t>(req.prompt.size());
      std::vector<int32_t> pos(req.prompt.size());
      std::iota(pos.begin(), pos.end(), 0);
      e->transformer().kv_cache().truncate(0);
      if (chunk >= n) {
        e->write_inputs(req.prompt, pos, pos);
        e->forward(n, 1, n);
        std::vector<float> logits;
        e->read_logits(1, logits);
        const std::vector<float> ref = c.at("prompt_last_logits").get<std::vector<float>>();
        ASSERT_EQ(logits.size(), ref.size());
        double worst = 0;
        for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(logits[i]) - ref[i]));
        EXPECT_LT(worst, 2e-4) << where << ": last prompt row logits";
      }
      (void)dense_calls;
    }
  }
}

TEST(SparseGolden, MiniCPM4PathMatchesThePyTorchReference) {
  check_fixture("minicpm4_sparse", ops::SparseVariant::MiniCPM4);
}

TEST(SparseGolden, MiniCPM41PathMatchesThePyTorchReference) {
  check_fixture("minicpm4.1_sparse", ops::SparseVariant::MiniCPM41);
}

}  // namespace
