// `specula generate`: tokenize a prompt (optionally through the model's chat template), run it,
// stream the text as it is produced, and end with prefill and decode speeds on stderr.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <limits>
#include <random>
#include <sstream>
#include <string>

#include "commands.h"
#include "model_loading.h"
#include "options.h"
#include "terminal.h"
#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include <fstream>
#include <nlohmann/json.hpp>

#include "specula/engine/limits.h"
#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "specula/spec/draft_tree.h"
#include "specula/spec/eagle_head.h"
#include "specula/text/chat_template.h"
#include "specula/text/tokenizer.h"

namespace specula::cli {

namespace {

struct GenerateArgs : EngineArgs {
  std::string model_dir, prompt, prompt_file, system;
  bool prompt_given = false;  // -p was on the command line (even as -p "")
  bool chat = false, ignore_eos = false, no_think = false;
  std::string dump_blocks;  // --dump-blocks FILE
  int64_t max_new_tokens = 256;
  std::optional<uint64_t> seed;
  sampling::SamplingParams sampling;
};

// The prompt text, checked before anything is loaded: exactly one source, not empty.
std::string read_prompt(const GenerateArgs& a) {
  SPECULA_CHECK(a.prompt_given != !a.prompt_file.empty(), "give exactly one of --prompt and --prompt-file");
  std::string text;
  if (a.prompt_given) {
    text = a.prompt;
  } else if (a.prompt_file == "-") {
    std::ostringstream s;
    s << std::cin.rdbuf();
    text = s.str();
  } else {
    text = with_context("--prompt-file", [&] { return read_text_file(a.prompt_file); });
  }
  const char* source = a.prompt_given ? "--prompt" : a.prompt_file == "-" ? "the prompt on stdin" : a.prompt_file.c_str();
  SPECULA_CHECK(!text.empty(), source, ": the prompt is empty");
  return text;
}

void run_generate(GenerateArgs a) {
  check_model_dir(a.model_dir);
  const std::string prompt_text = read_prompt(a);
  SPECULA_CHECK(a.system.empty() || a.chat, "--system needs --chat");
  SPECULA_CHECK(!a.no_think || a.chat, "--no-think needs --chat");
  parse_device(a.device);  // a bad --device is reported before the seed line
  resolve_seed(a.sampling, a.seed);
  const text::Tokenizer tokenizer = load_tokenizer(a.model_dir);
  auto engine = load_engine(a.model_dir, a);
  std::shared_ptr<std::ofstream> block_dump;
  if (!a.dump_blocks.empty()) {
    SPECULA_CHECK(engine->transformer().attention_plan().sparse_enabled(), "--dump-blocks: attention is dense (",
                  engine->transformer().attention_plan().describe(), "), so no blocks are selected");
    SPECULA_CHECK(engine->device() == Device::CPU, "--dump-blocks reads the block lists on the host: use --device cpu");
    block_dump = std::make_shared<std::ofstream>(a.dump_blocks);
    SPECULA_CHECK(block_dump->good(), "--dump-blocks: cannot write ", a.dump_blocks);
    engine->transformer().set_block_observer([block_dump](int64_t layer, const Tensor& positions, const Tensor& blocks) {
      // One JSON line per layer and forward: {"layer", "positions", "blocks": [kv head][query]},
      // each entry the attended block indices ascending, or "dense" below the switch.
      nlohmann::json line{{"layer", layer}, {"positions", nlohmann::json::array()}, {"blocks", nlohmann::json::array()}};
      const int64_t kv = blocks.dim(0), tokens = blocks.dim(1), width = blocks.dim(2);
      for (int64_t t = 0; t < tokens; ++t) line["positions"].push_back(positions.as<const int32_t>()[t]);
      for (int64_t h = 0; h < kv; ++h) {
        nlohmann::json per_query = nlohmann::json::array();
        for (int64_t t = 0; t < tokens; ++t) {
          const int32_t* list = blocks.as<const int32_t>() + (h * tokens + t) * width;
          if (list[0] == ops::AttentionMask::kDenseQuery) {
            per_query.push_back("dense");
            continue;
          }
          nlohmann::json ids = nlohmann::json::array();
          for (int64_t i = 0; i < width && list[i] >= 0; ++i) ids.push_back(list[i]);
          per_query.push_back(ids);
        }
        line["blocks"].push_back(per_query);
      }
      *block_dump << line.dump() << "\n";
    });
  }

  engine::GenerationRequest request;
  request.max_new_tokens = a.max_new_tokens;
  request.sampling = a.sampling;
  if (!a.ignore_eos) request.stop_ids = engine->config().eos_token_ids;
  if (a.chat) {
    const text::ChatStyle style = chat_style_of(a.model_dir, *engine);
    SPECULA_CHECK(!a.no_think || style == text::ChatStyle::Qwen3, "--no-think: the ", text::chat_style_name(style),
                  " chat template of this model has no thinking switch (only Qwen3's has)");
    check_chat_tokens(style, tokenizer, a.model_dir, "--chat");
    std::vector<text::ChatMessage> messages;
    if (!a.system.empty()) messages.push_back({"system", a.system});
    messages.push_back({"user", prompt_text});
    const std::string rendered = text::render_chat(style, messages, true, !a.no_think);
    request.prompt = tokenizer.encode(rendered, /*add_special_tokens=*/false, /*parse_special=*/true);
    if (!a.ignore_eos) add_chat_stop_ids(style, tokenizer, request.stop_ids);
  } else {
    request.prompt = tokenizer.encode(prompt_text, /*add_special_tokens=*/true, /*parse_special=*/true);
  }

  text::StreamDecoder stream(tokenizer, /*skip_special_tokens=*/true);
  engine::GenerationCallbacks callbacks;
  bool wrote_text = false;
  callbacks.on_token = [&](int32_t id) {
    const std::string piece = stream.push(id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    wrote_text = wrote_text || !piece.empty();
    return true;
  };
  if (static_cast<int64_t>(request.prompt.size()) > 2 * engine->prefill_chunk())
    callbacks.on_prefill_progress = [](int64_t done, int64_t total) {
      draw_progress_bar("prefill", done, total);
      if (done == total) end_status_line();
    };
  const std::unique_ptr<engine::Decoder> decoder = engine::make_decoder(*engine);
  engine::GenerationResult result;
  try {
    result = decoder->generate(request, callbacks);
  } catch (...) {
    if (wrote_text) std::fputc('\n', stdout);  // the error goes on a line of its own
    throw;
  }
  const std::string tail = stream.flush();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!result.prefill_ran) {
    std::fprintf(stderr, "nothing generated (-n 0): the prompt has %lld tokens; no forward pass was run\n",
                 static_cast<long long>(result.prompt_tokens));
    return;
  }
  std::fprintf(stderr,
               "prefill: %lld tokens in %.3f s (%.1f tok/s) | decode: %zu tokens in %.3f s (%.1f tok/s) | finish: %s\n",
               static_cast<long long>(result.prompt_tokens), result.prefill_seconds, result.prefill_tokens_per_second(),
               result.tokens.size(), result.decode_seconds, result.decode_tokens_per_second(),
               std::string(engine::finish_reason_name(result.finish_reason)).c_str());
  std::fprintf(stderr, "attention: %s\n",
               engine->transformer()
                   .attention_plan()
                   .request_summary(result.prompt_tokens,
                                    result.prompt_tokens + static_cast<int64_t>(result.tokens.size()))
                   .c_str());
  if (result.verifications > 0)
    std::fprintf(stderr,
                 "speculation: %lld verification passes, %.2f tokens per pass (accepted + 1) | drafted %lld, accepted "
                 "%lld (%.1f%%)\n",
                 static_cast<long long>(result.verifications), result.tokens_per_verification(),
                 static_cast<long long>(result.drafted_tokens), static_cast<long long>(result.accepted_tokens),
                 result.drafted_tokens > 0 ? 100.0 * static_cast<double>(result.accepted_tokens) /
                                                 static_cast<double>(result.drafted_tokens)
                                           : 0.0);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming it to stdout");
  // A flag given twice takes its last value, so wrappers (scripts/quickstart.sh) can put their
  // defaults first and let the user's arguments override them.
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("-m,--model", a->model_dir, "Hugging Face model folder (config.json, weights, tokenizer.json)")
      ->required();
  cmd->add_option_function<std::string>(
      "-p,--prompt",
      [a](const std::string& text) {
        a->prompt = text;
        a->prompt_given = true;
      },
      "Prompt text, taken literally (no escapes are interpreted: for a newline use the shell's $'...' "
      "quoting, e.g. -p $'Line one\\nLine two', or --prompt-file)");
  cmd->add_option("-f,--prompt-file", a->prompt_file, "Read the prompt from a file ('-' for stdin)");
  cmd->add_flag("--chat", a->chat, "Wrap the prompt as a user message in the model's chat template");
  cmd->add_option("--system", a->system, "System message (needs --chat)");
  cmd->add_flag("--no-think", a->no_think, "Qwen3 chat template only: disable thinking (empty <think> block)");
  cmd->add_option("-n,--max-new-tokens", a->max_new_tokens, "Tokens to generate at most (0: tokenize only)")
      ->capture_default_str()->check(int_in_range<int64_t>(0, engine::kMaxNewTokens));
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at end-of-sequence tokens");
  cmd->add_option("--dump-blocks", a->dump_blocks,
                  "Write the InfLLM-V2 block lists every layer selects, one JSON line per layer and forward pass "
                  "(CPU backend, sparse attention)");
  add_sampling_options(cmd, a->sampling, a->seed);
  add_engine_options(cmd, *a);
  cmd->callback([a] {
    a->sampling.validate();
    run_generate(*a);
  });
}

}  // namespace specula::cli
