// `specula inspect DIR`: what a checkpoint is, without running it -- family and dimensions from
// config.json, the files and dtypes on disk, the parameter count, whether every tensor matches
// the layout the config implies, and the tokenizer.
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "commands.h"
#include "specula/core/arena.h"
#include "specula/core/error.h"
#include "specula/io/checkpoint.h"
#include "specula/model/config.h"
#include "specula/model/weights.h"
#include "specula/text/tokenizer.h"

namespace specula::cli {

namespace {
std::string human(double n) {
  const char* units[] = {"", "K", "M", "B"};
  int u = 0;
  while (n >= 1000 && u < 3) {
    n /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%s", n, units[u]);
  return buf;
}

void run_inspect(const std::string& dir, bool all_tensors) {
  const model::ModelConfig config = model::ModelConfig::from_dir(dir);
  std::printf("model          %s\n%s", dir.c_str(), config.summary().c_str());
  const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
  std::map<std::string, std::pair<int64_t, int64_t>> by_dtype;  // dtype -> tensors, elements
  int64_t params = 0;
  for (const std::string& name : checkpoint.names()) {
    const io::CheckpointTensor& t = checkpoint.get(name);
    auto& [count, elements] = by_dtype[std::string(dtype_name(t.dtype))];
    ++count;
    elements += t.numel();
    params += t.numel();
  }
  std::printf("checkpoint     %s, %zu tensors, %.1f MiB\n", checkpoint.format_description().c_str(),
              checkpoint.names().size(), static_cast<double>(checkpoint.total_bytes()) / (1 << 20));
  std::printf("parameters     %s (%lld)\n", human(static_cast<double>(params)).c_str(), static_cast<long long>(params));
  for (const auto& [dtype, ce] : by_dtype)
    std::printf("dtype          %-5s %lld tensors, %s elements\n", dtype.c_str(), static_cast<long long>(ce.first),
                human(static_cast<double>(ce.second)).c_str());
  std::string mismatch;
  try {
    ArenaPlan plan;
    model::plan_weights(config, checkpoint, model::WeightFormat{}, plan);
    std::printf("layout         OK: every tensor matches config.json\n");
  } catch (const std::exception& e) {
    mismatch = e.what();
    std::printf("layout         MISMATCH: %s\n", e.what());
  }
  const auto names = checkpoint.names();
  const size_t shown = all_tensors ? names.size() : std::min<size_t>(names.size(), 12);
  std::printf("tensors%s\n", all_tensors ? "" : " (first 12; --all-tensors lists every one)");
  for (size_t i = 0; i < shown; ++i) {
    const io::CheckpointTensor& t = checkpoint.get(names[i]);
    std::string shape = "[";
    for (size_t d = 0; d < t.shape.size(); ++d) shape += (d ? ", " : "") + std::to_string(t.shape[d]);
    shape += "]";
    std::printf("  %-56s %-5s %s\n", names[i].c_str(), std::string(dtype_name(t.dtype)).c_str(), shape.c_str());
  }
  const std::filesystem::path tok = std::filesystem::path(dir) / "tokenizer.json";
  if (std::filesystem::exists(tok)) {
    const text::Tokenizer tokenizer = text::Tokenizer::from_file(tok.string());
    std::printf("tokenizer      tokenizer.json, %d ids\n", tokenizer.vocab_size());
  } else {
    std::printf("tokenizer      none (no tokenizer.json)\n");
  }
  // The report above is printed in full either way; a mismatch still fails the command, so
  // scripts that check a download with `specula inspect` see it.
  std::fflush(stdout);
  SPECULA_CHECK(mismatch.empty(), dir, ": the checkpoint does not match config.json: ", mismatch);
}
}  // namespace

void add_inspect_command(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto all = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("inspect", "Describe a checkpoint: family, dimensions, parameters, dtypes, tensors");
  cmd->add_option("dir", *dir, "Hugging Face model folder (config.json + safetensors or pytorch_model.bin)")->required();
  cmd->add_flag("--all-tensors", *all, "List every tensor");
  cmd->callback([dir, all] { run_inspect(*dir, *all); });
}

}  // namespace specula::cli
