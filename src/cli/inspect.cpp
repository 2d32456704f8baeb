// `specula inspect DIR`: what a checkpoint is, without running it -- family and dimensions from
// config.json, the files and dtypes on disk, the parameter count, whether every tensor matches
// the layout the config implies, and the tokenizer. A draft head folder (EAGLE-1/2 or the
// MiniCPM4 head: one layer and an fc.weight) is recognised and checked against the head layout,
// with its RoPE rule, the FR-Spec lists beside it, and (with --target) the target's compatibility.
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "commands.h"
#include "specula/core/arena.h"
#include "specula/core/error.h"
#include "specula/model/attention_plan.h"
#include "specula/io/checkpoint.h"
#include "specula/model/config.h"
#include "specula/model/weights.h"
#include "specula/spec/eagle_head.h"
#include "specula/spec/frspec.h"
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

// A folder whose checkpoint has EAGLE's fc (possibly under CPM.cu's "eagle." prefix).
bool is_draft_head(const io::Checkpoint& checkpoint) {
  return checkpoint.find("fc.weight") != nullptr || checkpoint.find("eagle.fc.weight") != nullptr ||
         checkpoint.find("midlayer.self_attn.q_proj.weight") != nullptr;
}

// The draft head's own check: its config read by the EAGLE rule (against --target when given,
// else against itself, which checks the file but not a pairing), its layout and FR-Spec lists.
std::string inspect_draft_head(const std::string& dir, const io::Checkpoint& checkpoint, const std::string& target_dir) {
  const model::ModelConfig target = model::ModelConfig::from_dir(target_dir.empty() ? dir : target_dir);
  spec::EagleHeadConfig head = spec::EagleHeadConfig::read(dir, target);
  head.prefix = spec::detect_head_prefix(checkpoint, head);
  std::printf("draft head     %s%s\n", head.summary().c_str(), head.prefix.empty() ? "" : " (names prefixed eagle.)");
  std::printf("target         %s\n", target_dir.empty() ? "not given (--target DIR checks a pairing)"
                                                        : ("compatible: " + target.source).c_str());
  std::string mismatch;
  try {
    ArenaPlan plan;
    model::plan_layout(spec::eagle_head_layout(head), checkpoint, model::WeightFormat{}, plan);
    std::printf("layout         OK: every tensor matches the %s head layout%s\n",
                head.layout == spec::HeadLayout::MiniCPM4 ? "MiniCPM4" : "EAGLE-1/2",
                checkpoint.find(head.prefix + "fc.bias") ? " (with fc.bias)" : " (no fc.bias: zero)");
  } catch (const std::exception& e) {
    mismatch = e.what();
    std::printf("layout         MISMATCH: %s\n", e.what());
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("freq_", 0) != 0 || entry.path().extension() != ".pt") continue;
    try {
      const auto ids = spec::load_frspec_list(entry.path().string(), head.layer.vocab_size);
      std::printf("FR-Spec list   %s: %zu ids\n", name.c_str(), ids.size());
    } catch (const std::exception& e) {
      std::printf("FR-Spec list   %s: INVALID: %s\n", name.c_str(), e.what());
    }
  }
  return mismatch;
}

void run_inspect(const std::string& dir, bool all_tensors, const std::string& target_dir) {
  const model::ModelConfig config = model::ModelConfig::from_dir(dir);
  std::printf("model          %s\n%s", dir.c_str(), config.summary().c_str());
  try {  // what --attention auto (the default) would run, with the variant rule's choice
    std::printf("attention plan %s\n", model::AttentionPlan::resolve(config, {}, dir).describe().c_str());
  } catch (const Error& e) {
    std::printf("attention plan cannot run sparse: %s\n", e.what());
  }
  const io::Checkpoint checkpoint = io::Checkpoint::open(dir);
  const bool draft_head = is_draft_head(checkpoint);
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
  if (draft_head) {
    mismatch = inspect_draft_head(dir, checkpoint, target_dir);
  } else {
    SPECULA_CHECK(target_dir.empty(), "--target is for draft head folders; ", dir, " is a model");
    try {
      ArenaPlan plan;
      model::plan_weights(config, checkpoint, model::WeightFormat{}, plan);
      std::printf("layout         OK: every tensor matches config.json\n");
    } catch (const std::exception& e) {
      mismatch = e.what();
      std::printf("layout         MISMATCH: %s\n", e.what());
    }
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
  auto target = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("inspect", "Describe a checkpoint or an EAGLE draft head folder: family, dimensions, parameters, dtypes, tensors");
  cmd->add_option("dir", *dir, "Hugging Face model folder (config.json + safetensors or pytorch_model.bin)")->required();
  cmd->add_flag("--all-tensors", *all, "List every tensor");
  cmd->add_option("--target", *target,
                  "For a draft head folder: the target model folder to check the pairing against (hidden size, "
                  "vocabulary, family, muP scales)");
  cmd->callback([dir, all, target] { run_inspect(*dir, *all, *target); });
}

}  // namespace specula::cli
