// Option parsing shared by the subcommands: --device, integer flags with readable bounds, and
// the seed. CLI11's own range checks print doubles ("Value 0 not in range 0.000000 to 1797...")
// and its conversion errors do not say what was expected, so integer flags go through
// `int_in_range`, which parses the text itself (before CLI11 converts it) and answers
// "--prefill-chunk: must be an integer from 1 to 65536, got '0'". The sampling flags are
// registered here once, so `generate` and `chat` accept the same ones.
#pragma once

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <random>
#include <string>

#include <CLI/CLI.hpp>

#include "specula/core/error.h"
#include "specula/core/tensor.h"
#include "specula/sampling/params.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/cuda_context.h"
#endif

namespace specula::cli {

// "auto" means CUDA when this build has it and a GPU is present, else the CPU. "cuda" without a
// usable GPU is an error saying so (not a driver message from the first CUDA call).
inline Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  SPECULA_CHECK(name == "auto" || name == "cuda", "--device must be auto, cuda or cpu, got '", name, "'");
#ifdef SPECULA_WITH_CUDA
  std::string why;
  if (cuda::cuda_device_available(&why)) return Device::CUDA;
  SPECULA_CHECK(name == "auto", "--device cuda: no usable CUDA GPU was found (", why, "); use --device cpu");
#else
  SPECULA_CHECK(name == "auto", "--device cuda: this build of specula has no CUDA backend (nvcc was not found when "
                "it was built); use --device cpu");
#endif
  return Device::CPU;
}

// A validator for an integer flag in [lo, hi]; the error names the bounds in plain integers.
template <typename Int>
CLI::Validator int_in_range(Int lo, Int hi) {
  const std::string range = std::to_string(lo) + " to " + std::to_string(hi);
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        Int value{};
        const char* end = text.data() + text.size();
        const auto [stop, ec] = std::from_chars(text.data(), end, value);
        if (ec == std::errc() && stop == end && value >= lo && value <= hi) return {};
        return "must be an integer from " + range + ", got '" + text + "'";
      },
      "INT in " + range);
}

// Registers --temperature, --top-k, --top-p, --min-p, the three penalties and --seed.
inline void add_sampling_options(CLI::App* cmd, sampling::SamplingParams& s, std::optional<uint64_t>& seed) {
  cmd->add_option("--temperature", s.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", s.top_k, "Keep the k most likely tokens; 0 = off")->capture_default_str()
      ->check(int_in_range<int>(0, std::numeric_limits<int>::max()));
  cmd->add_option("--top-p", s.top_p, "Nucleus sampling mass; 1 = off")->capture_default_str();
  cmd->add_option("--min-p", s.min_p, "Drop tokens below min-p x the top probability; 0 = off")
      ->capture_default_str();
  cmd->add_option("--repetition-penalty", s.repetition_penalty,
                  "Divide logits of tokens already seen (prompt and output); 1 = off")->capture_default_str();
  cmd->add_option("--presence-penalty", s.presence_penalty, "OpenAI presence penalty; 0 = off")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", s.frequency_penalty, "OpenAI frequency penalty; 0 = off")
      ->capture_default_str();
  cmd->add_option("--seed", seed,
                  "Random seed for sampling, 0 to 2^64-1 (same seed, same output); without it a fresh seed is "
                  "drawn and printed")
      ->check(int_in_range<uint64_t>(0, std::numeric_limits<uint64_t>::max()));
}

// Sampling without --seed draws a fresh seed and says which on stderr, so the run can be
// repeated; greedy decoding needs none.
inline void resolve_seed(sampling::SamplingParams& s, const std::optional<uint64_t>& seed) {
  if (s.is_greedy()) return;
  s.seed = seed ? *seed : (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
  if (!seed)
    std::fprintf(stderr, "seed %llu (pass --seed %llu to repeat this run)\n", static_cast<unsigned long long>(s.seed),
                 static_cast<unsigned long long>(s.seed));
}

}  // namespace specula::cli
