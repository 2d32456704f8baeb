// `specula create-demo-model DIR`: writes the embedded default model (random weights, real file
// layout) so a fresh checkout can run the whole pipeline without downloads.
#include <cstdio>
#include <limits>
#include <memory>
#include <string>

#include "commands.h"
#include "options.h"
#include "specula/model/demo_model.h"

namespace specula::cli {

void add_demo_model_command(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto options = std::make_shared<model::DemoModelOptions>();
  CLI::App* cmd = app.add_subcommand(
      "create-demo-model",
      "Write a small Llama-layout checkpoint with random weights and a byte-level BPE tokenizer (a model to try "
      "the engine with; its output is noise)");
  cmd->add_option("dir", *dir, "Folder to write config.json, model.safetensors and tokenizer.json into")->required();
  // The demo model is a small test checkpoint: its sizes are capped where it would stop being small.
  constexpr int64_t kMaxLayers = 64, kMaxWidth = 8192, kMaxHeads = 128;
  cmd->add_option("--layers", options->layers, "Decoder layers")->capture_default_str()
      ->check(int_in_range<int64_t>(1, kMaxLayers));
  cmd->add_option("--hidden", options->hidden, "Hidden size")->capture_default_str()
      ->check(int_in_range<int64_t>(1, kMaxWidth));
  cmd->add_option("--heads", options->heads, "Attention heads")->capture_default_str()
      ->check(int_in_range<int64_t>(1, kMaxHeads));
  cmd->add_option("--kv-heads", options->kv_heads, "KV heads")->capture_default_str()
      ->check(int_in_range<int64_t>(1, kMaxHeads));
  cmd->add_option("--intermediate", options->intermediate, "MLP size")->capture_default_str()
      ->check(int_in_range<int64_t>(1, 4 * kMaxWidth));
  cmd->add_option("--seed", options->seed, "Weight seed")->capture_default_str()
      ->check(int_in_range<uint64_t>(0, std::numeric_limits<uint64_t>::max()));
  cmd->add_flag("--chat-tokens", options->chat_tokens,
                "Give the tokenizer the Llama-3 chat template's special tokens, so `specula chat` and "
                "`generate --chat` can use it (without them it is a base model)");
  cmd->callback([dir, options] {
    model::write_demo_model(*dir, *options);
    std::printf("wrote demo model to %s\n", dir->c_str());
  });
}

}  // namespace specula::cli
