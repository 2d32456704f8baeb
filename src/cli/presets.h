// Model shapes the benchmarks build with random weights (only the shapes matter), by name.
#pragma once

#include <string>

namespace specula::cli {

// config.json text of a preset ("llama3-8b", "cpu-100m"); an unknown name is an error listing them.
std::string preset_config(const std::string& name);

}  // namespace specula::cli
