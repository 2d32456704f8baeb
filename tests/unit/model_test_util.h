// Helpers shared by the model parity tests (CPU and CUDA): reading the golden files that
// tools/make_model_fixtures.py wrote, loading a fixture engine, and comparing logits.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "specula/engine/engine.h"

namespace specula::testing_util {

using specula::engine::Engine;
using specula::engine::EngineOptions;

inline const std::vector<std::string> kModelFixtures = {"llama3_tied_ropescaling", "llama3_untied_sharded",
                                                       "qwen2_bias_bin", "qwen3_headdim_qknorm", "minicpm4_longrope"};

inline std::string fixture_dir(const std::string& name) { return std::string(SPECULA_TEST_DATA) + "/models/" + name; }

struct Golden {
  std::vector<int32_t> prompt, greedy;
  int64_t rows = 0, vocab = 0;
  std::vector<float> logits;
};

inline Golden read_golden(const std::string& dir) {
  Golden g;
  std::ifstream meta(dir + "/golden.json");
  EXPECT_TRUE(meta.good()) << dir << "/golden.json missing";
  const auto j = nlohmann::json::parse(meta);
  g.prompt = j.at("prompt").get<std::vector<int32_t>>();
  g.greedy = j.at("greedy_tokens").get<std::vector<int32_t>>();
  g.rows = j.at("logits_shape").at(0).get<int64_t>();
  g.vocab = j.at("logits_shape").at(1).get<int64_t>();
  g.logits.resize(static_cast<size_t>(g.rows * g.vocab));
  std::ifstream bin(dir + "/golden_logits.f32", std::ios::binary);
  bin.read(reinterpret_cast<char*>(g.logits.data()), static_cast<std::streamsize>(g.logits.size() * 4));
  EXPECT_TRUE(bin.good()) << "short golden_logits.f32 in " << dir;
  return g;
}

inline std::unique_ptr<Engine> load(const std::string& dir, int64_t chunk, int64_t logit_rows,
                                    Device device = Device::CPU, int64_t context = 64,
                                    bool full_precision = false) {
  EngineOptions o;
  o.model_dir = dir;
  o.threads = 2;
  o.max_context = context;
  o.device = device;
  o.full_precision = full_precision;
  o.prefill_chunk = chunk;
  o.max_logit_rows = logit_rows;
  return Engine::load(o);
}

inline std::vector<float> prompt_logits(Engine& e, const std::vector<int32_t>& prompt) {
  std::vector<int32_t> pos(prompt.size());
  std::iota(pos.begin(), pos.end(), 0);
  e.write_inputs(prompt, pos, pos);
  e.forward(static_cast<int64_t>(prompt.size()), static_cast<int64_t>(prompt.size()));
  std::vector<float> out;
  e.read_logits(static_cast<int64_t>(prompt.size()), out);
  return out;
}

inline double relative_max_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(ref[i])));
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    max_diff = std::isnan(got[i]) ? INFINITY : std::max(max_diff, d);
  }
  return max_diff / max_ref;
}

}  // namespace specula::testing_util
