// Shared model loading for `generate` and `serve` (see model_loading.h).
#include "model_loading.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "options.h"
#include "terminal.h"
#include "specula/core/error.h"
#include "specula/engine/limits.h"
#include "specula/spec/eagle_head.h"

namespace specula::cli {

void add_engine_options(CLI::App* cmd, EngineArgs& a) {
  cmd->add_option("--device", a.device, "auto (CUDA when a GPU is present), cuda or cpu")->capture_default_str();
  cmd->add_option("--threads", a.threads, "CPU threads; 0 = all cores")->capture_default_str()
      ->check(int_in_range<int>(0, engine::kMaxThreads));
  cmd->add_option("--max-context", a.max_context,
                  "KV-cache length in tokens; 0 = the model's limit, capped at 4096 on the CPU and by free "
                  "memory on the GPU")
      ->capture_default_str()->check(int_in_range<int64_t>(0, engine::kMaxContextTokens));
  cmd->add_flag("--allow-long-context", a.allow_long_context,
                "Allow --max-context above the model's max_position_embeddings (output past the trained length "
                "is not to be trusted)");
  cmd->add_option("--prefill-chunk", a.prefill_chunk, "Prompt tokens per forward pass")->capture_default_str()
      ->check(int_in_range<int64_t>(1, engine::kMaxPrefillChunk));
  cmd->add_option("--draft", a.draft_dir,
                  "EAGLE-1/2 draft head folder (config.json + pytorch_model.bin or model.safetensors, or the MiniCPM4 "
                  "head layout): turns on speculative decoding. Output is the same as without it (greedy: the same "
                  "tokens; sampling: the same distribution, and with --seed the same tokens)");
  cmd->add_option("--frspec", a.frspec_path,
                  "FR-Spec list (freq_N.pt: token ids by frequency) restricting the draft's LM head to those N tokens; "
                  "verification still uses the full vocabulary. Needs --draft");
  cmd->add_option("--tree-topk", a.tree.top_k, "Draft tree: candidates per expanded node and nodes kept per level")
      ->capture_default_str()
      ->check(int_in_range<int>(1, 64));
  cmd->add_option("--tree-depth", a.tree.depth,
                  "Draft tree: levels below the root (at most depth + 1 tokens per verification pass)")
      ->capture_default_str()
      ->check(int_in_range<int>(1, 32));
  cmd->add_option("--tree-size", a.tree.size, "Draft tree: nodes verified per pass, the root included")
      ->capture_default_str()
      ->check(int_in_range<int>(2, spec::kMaxTreeSize));
  cmd->add_option("--attention", a.attention,
                  "dense, sparse (InfLLM-V2 at every length) or auto (InfLLM-V2 from the checkpoint's dense_len on: "
                  "MiniCPM4/4.1, or any model given --dense-len)")
      ->capture_default_str()
      ->check(CLI::IsMember({"dense", "sparse", "auto"}));
  cmd->add_option("--sparse-variant", a.sparse_variant,
                  "minicpm4 or minicpm4.1: which upstream sparse path to follow (blocks attended, local window, LSE). "
                  "Default: from the folder's name, else minicpm4.1 when config.json has a sparse_config, else minicpm4")
      ->check(CLI::IsMember({"minicpm4", "minicpm4.1"}));
  cmd->add_option("--dense-len", a.dense_len,
                  "Override sparse_config dense_len: sequences from this length on attend sparsely (-1: always)")
      ->check(int_in_range<int64_t>(-1, engine::kMaxContextTokens));
  cmd->add_option("--sparse-topk", a.sparse_topk, "Override sparse_config topk (blocks chosen per query and KV head)")
      ->check(int_in_range<int64_t>(1, 4096));
  cmd->add_option("--sparse-window", a.sparse_window,
                  "Override sparse_config window_size (tokens of local blocks, a multiple of block_size)")
      ->check(int_in_range<int64_t>(1, engine::kMaxContextTokens));
  cmd->add_option("--sparse-init-blocks", a.sparse_init_blocks, "Override sparse_config init_blocks (sink blocks)")
      ->check(int_in_range<int64_t>(0, 4096));
}

model::AttentionOptions attention_options(const EngineArgs& a) {
  model::AttentionOptions o;
  o.mode = model::parse_attention_mode(a.attention);
  if (!a.sparse_variant.empty()) o.variant = model::parse_sparse_variant(a.sparse_variant);
  if (a.dense_len >= -1) o.dense_len = a.dense_len;
  if (a.sparse_topk >= 1) o.topk = a.sparse_topk;
  if (a.sparse_window >= 1) o.window_size = a.sparse_window;
  if (a.sparse_init_blocks >= 0) o.init_blocks = a.sparse_init_blocks;
  return o;
}

void check_model_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  SPECULA_CHECK(fs::exists(status), dir, ": no such directory (-m takes a Hugging Face model folder)");
  SPECULA_CHECK(fs::is_directory(status), dir, ": not a directory (-m takes a Hugging Face model folder)");
  SPECULA_CHECK(fs::exists(fs::path(dir) / "tokenizer.json"), dir, ": no tokenizer.json (specula needs the Hugging "
                "Face tokenizer file beside the weights)");
}

text::Tokenizer load_tokenizer(const std::string& model_dir) {
  return text::Tokenizer::from_file((std::filesystem::path(model_dir) / "tokenizer.json").string());
}

std::unique_ptr<engine::Engine> load_engine(const std::string& model_dir, const EngineArgs& a) {
  engine::EngineOptions options;
  options.model_dir = model_dir;
  options.device = parse_device(a.device);
  options.threads = a.threads;
  options.max_context = a.max_context;
  options.allow_context_beyond_model = a.allow_long_context;
  options.prefill_chunk = a.prefill_chunk;
  options.draft_dir = a.draft_dir;
  options.frspec_path = a.frspec_path;
  options.tree = a.tree;
  options.attention = attention_options(a);
  if (!a.draft_dir.empty()) a.tree.validate();  // flag errors before the model loads
  options.progress = [](std::string_view stage, size_t done, size_t total) {
    draw_status_line("loading " + std::string(stage) + " " +
                     std::to_string(static_cast<int>(100.0 * static_cast<double>(done) /
                                                     static_cast<double>(std::max<size_t>(total, 1)))) + "%");
  };
  auto engine = engine::Engine::load(options);
  end_status_line();
  std::fprintf(stderr, "loaded %s (%s) on %s in %.2f s, context %lld tokens\n", model_dir.c_str(),
               engine->config().architecture.c_str(), engine->device_description().c_str(), engine->load_seconds(),
               static_cast<long long>(engine->max_context()));
  if (spec::EagleHead* draft = engine->draft())
    std::fprintf(stderr, "draft: %s (%s); draft vocabulary %lld%s; tree top-k %d, depth %d, %d nodes\n",
                 a.draft_dir.c_str(), draft->config().summary().c_str(), static_cast<long long>(draft->draft_vocab()),
                 a.frspec_path.empty() ? " (full)" : (" (FR-Spec " + a.frspec_path + ")").c_str(), a.tree.top_k,
                 a.tree.depth, a.tree.size);
  std::fprintf(stderr, "attention: %s\n", engine->transformer().attention_plan().describe().c_str());
  return engine;
}

text::ChatStyle chat_style_of(const std::string& model_dir, const engine::Engine& engine) {
  return text::detect_chat_style(model_dir, std::string(model::family_name(engine.config().family)));
}

void check_chat_tokens(text::ChatStyle style, const text::Tokenizer& tokenizer, const std::string& model_dir,
                       const std::string& user) {
  for (const std::string& stop : text::chat_stop_tokens(style))
    SPECULA_CHECK(tokenizer.token_to_id(stop).has_value(), model_dir, ": ", user, " uses the ",
                  text::chat_style_name(style), " template, but this tokenizer has no '", stop,
                  "' token (is this a base model without a chat template?)");
}

void add_chat_stop_ids(text::ChatStyle style, const text::Tokenizer& tokenizer, std::vector<int32_t>& stop_ids) {
  for (const std::string& stop : text::chat_stop_tokens(style))
    if (auto id = tokenizer.token_to_id(stop))
      if (std::find(stop_ids.begin(), stop_ids.end(), *id) == stop_ids.end()) stop_ids.push_back(*id);
}

}  // namespace specula::cli
