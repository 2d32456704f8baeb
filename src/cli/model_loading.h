// Loading a model folder for the subcommands that run one (`generate`, `serve`): the engine flags
// they share (device, threads, context, prefill chunk, EAGLE draft, FR-Spec, draft tree), the
// folder check, the engine load with its progress line and summary on stderr, the tokenizer, and
// the chat template's style and stop tokens. Kept in one place so the two front ends accept the
// same flags and load a model the same way.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "specula/engine/engine.h"
#include "specula/spec/draft_tree.h"
#include "specula/text/chat_template.h"
#include "specula/text/tokenizer.h"

namespace specula::cli {

// Flags that configure the engine (everything but -m).
struct EngineArgs {
  std::string device = "auto";
  int threads = 0;
  int64_t max_context = 0, prefill_chunk = 512;
  bool allow_long_context = false;
  std::string draft_dir, frspec_path;
  spec::DraftTreeParams tree;
  // InfLLM-V2: --attention, --sparse-variant and the sparse_config overrides (-1 = not given).
  std::string attention = "auto", sparse_variant;
  int64_t dense_len = -2, sparse_topk = -1, sparse_window = -1, sparse_init_blocks = -1;
};

// Registers --device, --threads, --max-context, --allow-long-context, --prefill-chunk, --draft,
// --frspec, --tree-topk/--tree-depth/--tree-size, --attention, --sparse-variant and the sparse
// overrides on `cmd`, writing into `args`.
void add_engine_options(CLI::App* cmd, EngineArgs& args);

// The model folder must exist (with tokenizer.json) before its files are looked for, so a typo
// in -m says so.
void check_model_dir(const std::string& dir);
text::Tokenizer load_tokenizer(const std::string& model_dir);

// The engine's attention options from the flags (errors name the flag).
model::AttentionOptions attention_options(const EngineArgs& args);

// Loads the engine, drawing a progress line, then prints what was loaded (the draft head, the
// attention mode and sparse variant) on stderr.
std::unique_ptr<engine::Engine> load_engine(const std::string& model_dir, const EngineArgs& args);

// The model's chat template style (from its folder, else its family).
text::ChatStyle chat_style_of(const std::string& model_dir, const engine::Engine& engine);
// Throws unless the tokenizer has the style's stop tokens; `user` names who wants the template
// in the message ("--chat").
void check_chat_tokens(text::ChatStyle style, const text::Tokenizer& tokenizer, const std::string& model_dir,
                       const std::string& user);
// Adds the ids of the style's stop tokens to `stop_ids` (no duplicates).
void add_chat_stop_ids(text::ChatStyle style, const text::Tokenizer& tokenizer, std::vector<int32_t>& stop_ids);

}  // namespace specula::cli
