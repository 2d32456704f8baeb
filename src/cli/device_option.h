// Shared option parsing for the subcommands that run a model: --device and --threads.
#pragma once

#include <string>

#include "specula/core/error.h"
#include "specula/core/tensor.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/cuda_context.h"
#endif

namespace specula::cli {

// "auto" means CUDA when this build has it and a GPU is present, else the CPU.
inline Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") return Device::CUDA;
  SPECULA_CHECK(name == "auto", "--device must be auto, cuda or cpu, got '", name, "'");
#ifdef SPECULA_WITH_CUDA
  if (cuda::cuda_device_available()) return Device::CUDA;
#endif
  return Device::CPU;
}

}  // namespace specula::cli
