// Option parsing shared by the subcommands: --device, integer flags with readable bounds, and
// the seed. CLI11's own range checks print doubles ("Value 0 not in range 0.000000 to 1797...")
// and its conversion errors do not say what was expected, so integer flags go through
// `int_in_range`, which parses the text itself (before CLI11 converts it) and answers
// "--prefill-chunk: must be an integer from 1 to 65536, got '0'".
#pragma once

#include <charconv>
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "specula/core/error.h"
#include "specula/core/tensor.h"
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

}  // namespace specula::cli
