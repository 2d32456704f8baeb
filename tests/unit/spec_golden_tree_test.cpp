// EAGLE-2 drafting against a PyTorch reference (tools/make_eagle_fixtures.py, run on the GPU
// machine; tests/data/eagle/README.md states every convention). For tiny targets (Llama-3,
// Qwen2, MiniCPM4) with EAGLE-1/2 heads in the published layouts (a .bin head without fc.bias,
// a safetensors head with fc.bias and linear rope_scaling, a Qwen2 head with q/k/v biases, the
// MiniCPM4 head layout), full vocabulary and an FR-Spec list, two tree shapes and three prompts:
// the first cycle's tree (tokens, parents, depths, positions, cumulative scores) and the next two
// cycles' tokens and parents, the accepted nodes, the bonus tokens and all emitted tokens must
// equal the reference. A draft-side position, mask, RoPE or pairing error changes the trees even
// when the emitted tokens survive (greedy verification hides it), so this is where it shows.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/cuda_context.h"
#endif

namespace {

using namespace specula::engine;
using json = nlohmann::json;

const std::string kData = SPECULA_TEST_DATA;

std::string data_path(const std::string& repo_relative) {
  const std::string prefix = "tests/data/";
  return kData + "/" + (repo_relative.rfind(prefix, 0) == 0 ? repo_relative.substr(prefix.size()) : repo_relative);
}

const json& goldens() {
  static const json j = json::parse(std::ifstream(kData + "/eagle/golden_trees.json"));
  return j;
}

// The engine options of one golden case: its target, and (with_draft) its head, FR-Spec list and
// tree shape.
EngineOptions case_options(const json& c, bool with_draft) {
  const json& g = goldens();
  EngineOptions o;
  o.model_dir = data_path(g.at("targets").at(c.at("target").get<std::string>()).at("dir"));
  o.threads = 2;
  o.max_context = c.at("prompt_len").get<int64_t>() + 64;
  o.prefill_chunk = 64;
  if (with_draft) {
    o.draft_dir = kData + "/eagle/" + g.at("heads").at(c.at("head").get<std::string>()).at("dir").get<std::string>();
    if (c.at("draft_vocab") == "freq_good") o.frspec_path = kData + "/eagle/freq_good.pt";
    o.tree = {c.at("top_k").get<int>(), c.at("depth").get<int>(), c.at("tree_size").get<int>()};
  }
  return o;
}

struct Recorded {
  specula::spec::DraftTree tree;
  std::vector<int32_t> accepted;
  int32_t bonus;
};

TEST(SpecGoldenTrees, DraftTreesEqualThePyTorchReference) {
  const json& g = goldens();
  ASSERT_GE(g.at("cases").size(), 40u);
  int checked = 0;
  for (const json& c : g.at("cases")) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    auto engine = Engine::load(case_options(c, true));
    GenerationRequest req;
    req.prompt = g.at("prompts").at(c.at("prompt").get<std::string>()).get<std::vector<int32_t>>();
    const std::vector<int32_t> emitted = c.at("emitted_tokens").get<std::vector<int32_t>>();
    req.max_new_tokens = static_cast<int64_t>(emitted.size());
    std::vector<Recorded> cycles;
    GenerationCallbacks cb;
    cb.on_verification = [&](const specula::spec::DraftTree& t, std::span<const int32_t> acc, int32_t bonus) {
      cycles.push_back({t, std::vector<int32_t>(acc.begin(), acc.end()), bonus});
    };
    const GenerationResult r = make_decoder(*engine)->generate(req, cb);
    EXPECT_EQ(r.tokens, emitted);
    const json& want_cycles = c.at("cycles");
    ASSERT_GE(cycles.size(), want_cycles.size());
    for (size_t i = 0; i < want_cycles.size(); ++i) {
      SCOPED_TRACE("cycle " + std::to_string(i));
      const json& w = want_cycles[i];
      const Recorded& got = cycles[i];
      EXPECT_EQ(got.tree.tokens, w.at("tree").at("tokens").get<std::vector<int32_t>>());
      EXPECT_EQ(got.tree.parents, w.at("tree").at("parents").get<std::vector<int32_t>>());
      if (w.at("tree").contains("depths")) {
        EXPECT_EQ(got.tree.depths, w.at("tree").at("depths").get<std::vector<int32_t>>());
        EXPECT_EQ(got.tree.positions(w.at("root_position").get<int32_t>()),
                  w.at("tree").at("positions").get<std::vector<int32_t>>());
        const std::vector<float> scores = w.at("tree").at("scores").get<std::vector<float>>();
        ASSERT_EQ(got.tree.scores.size(), scores.size());
        for (size_t n = 0; n < scores.size(); ++n) EXPECT_NEAR(got.tree.scores[n], scores[n], 1e-4f) << "node " << n;
      }
      std::vector<int32_t> accepted = w.at("accepted_nodes").get<std::vector<int32_t>>();
      accepted.erase(accepted.begin());  // the reference lists the root
      EXPECT_EQ(got.accepted, accepted);
      EXPECT_EQ(got.bonus, w.at("bonus_token").get<int32_t>());
    }
    ++checked;
  }
  std::printf("draft trees checked against the PyTorch reference: %d cases\n", checked);
}

#ifdef SPECULA_WITH_CUDA
// On CUDA in the full-precision mode (fp32 activations and caches, where bf16 near-ties cannot
// flip a token), greedy speculative output equals greedy plain output for every fixture family
// and head, and equals the reference's emitted tokens.
TEST(SpecGoldenTrees, CudaFullPrecisionSpeculativeEqualsPlainGreedy) {
  std::string why;
  if (!specula::cuda::cuda_device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  const json& g = goldens();
  for (const json& c : g.at("cases")) {
    const std::string name = c.at("name");
    SCOPED_TRACE(name);
    EngineOptions plain_options = case_options(c, false), spec_options = case_options(c, true);
    for (EngineOptions* o : {&plain_options, &spec_options}) {
      o->device = specula::Device::CUDA;
      o->full_precision = true;
    }
    auto plain = Engine::load(plain_options);
    auto spec = Engine::load(spec_options);
    GenerationRequest req;
    req.prompt = g.at("prompts").at(c.at("prompt").get<std::string>()).get<std::vector<int32_t>>();
    req.max_new_tokens = static_cast<int64_t>(c.at("emitted_tokens").size());
    const GenerationResult want = Generator(*plain).generate(req);
    const GenerationResult got = make_decoder(*spec)->generate(req);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(got.tokens, c.at("emitted_tokens").get<std::vector<int32_t>>());
  }
}
#endif

}  // namespace
