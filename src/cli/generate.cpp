// `specula generate`: tokenize a prompt (optionally through the model's chat template), run it,
// stream the text as it is produced, and end with prefill and decode speeds on stderr.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "commands.h"
#include "device_option.h"
#include "specula/core/error.h"
#include "specula/engine/engine.h"
#include "specula/engine/generator.h"
#include "specula/text/chat_template.h"
#include "specula/text/tokenizer.h"

namespace specula::cli {

namespace {

struct GenerateArgs {
  std::string model_dir, prompt, prompt_file, system, device = "auto";
  bool chat = false, ignore_eos = false, no_think = false;
  int64_t max_new_tokens = 256, max_context = 0, prefill_chunk = 512;
  int threads = 0;
  sampling::SamplingParams sampling;
};

void print_progress(int64_t done, int64_t total) {
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(kWidth * done / std::max<int64_t>(total, 1));
  std::fprintf(stderr, "\rprefill [%.*s%*s] %lld/%lld tokens", filled, "==============================",
               kWidth - filled, "", static_cast<long long>(done), static_cast<long long>(total));
  if (done == total) std::fputc('\n', stderr);
}

std::string read_prompt(const GenerateArgs& a) {
  SPECULA_CHECK(a.prompt.empty() != a.prompt_file.empty(), "give exactly one of --prompt and --prompt-file");
  if (!a.prompt.empty()) return a.prompt;
  if (a.prompt_file == "-") {
    std::ostringstream s;
    s << std::cin.rdbuf();
    return s.str();
  }
  std::ifstream in(a.prompt_file);
  SPECULA_CHECK(in.good(), a.prompt_file, ": cannot read the prompt file");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void run_generate(const GenerateArgs& a) {
  const std::filesystem::path tok_path = std::filesystem::path(a.model_dir) / "tokenizer.json";
  SPECULA_CHECK(std::filesystem::exists(tok_path), a.model_dir, ": no tokenizer.json (specula needs the Hugging Face "
                "tokenizer file beside the weights)");
  const text::Tokenizer tokenizer = text::Tokenizer::from_file(tok_path.string());
  const std::string prompt_text = read_prompt(a);

  engine::EngineOptions options;
  options.model_dir = a.model_dir;
  options.device = parse_device(a.device);
  options.threads = a.threads;
  options.max_context = a.max_context;
  options.prefill_chunk = a.prefill_chunk;
  const bool tty = isatty(fileno(stderr));
  options.progress = [tty](std::string_view stage, size_t done, size_t total) {
    if (tty) std::fprintf(stderr, "\rloading %.*s %3d%%", static_cast<int>(stage.size()), stage.data(),
                          static_cast<int>(100.0 * done / std::max<size_t>(total, 1)));
  };
  auto engine = engine::Engine::load(options);
  if (tty) std::fprintf(stderr, "\r");
  std::fprintf(stderr, "loaded %s (%s) on %s in %.2f s, context %lld tokens\n", a.model_dir.c_str(),
               engine->config().architecture.c_str(), engine->device_description().c_str(), engine->load_seconds(),
               static_cast<long long>(engine->max_context()));

  engine::GenerationRequest request;
  request.max_new_tokens = a.max_new_tokens;
  request.sampling = a.sampling;
  if (!a.ignore_eos) request.stop_ids = engine->config().eos_token_ids;
  if (a.chat) {
    const text::ChatStyle style = text::detect_chat_style(a.model_dir, std::string(model::family_name(engine->config().family)));
    std::vector<text::ChatMessage> messages;
    if (!a.system.empty()) messages.push_back({"system", a.system});
    messages.push_back({"user", prompt_text});
    for (const std::string& stop : text::chat_stop_tokens(style))
      SPECULA_CHECK(tokenizer.token_to_id(stop).has_value(), a.model_dir, ": --chat uses the ",
                    text::chat_style_name(style), " template, but this tokenizer has no '", stop,
                    "' token (is this a base model without a chat template?)");
    const std::string rendered = text::render_chat(style, messages, true, !a.no_think);
    request.prompt = tokenizer.encode(rendered, /*add_special_tokens=*/false, /*parse_special=*/true);
    if (!a.ignore_eos)
      for (const std::string& stop : text::chat_stop_tokens(style))
        if (auto id = tokenizer.token_to_id(stop))
          if (std::find(request.stop_ids.begin(), request.stop_ids.end(), *id) == request.stop_ids.end())
            request.stop_ids.push_back(*id);
  } else {
    SPECULA_CHECK(a.system.empty(), "--system needs --chat");
    request.prompt = tokenizer.encode(prompt_text, /*add_special_tokens=*/true, /*parse_special=*/true);
  }

  text::StreamDecoder stream(tokenizer, /*skip_special_tokens=*/true);
  engine::GenerationCallbacks callbacks;
  callbacks.on_token = [&](int32_t id) {
    const std::string piece = stream.push(id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  };
  if (static_cast<int64_t>(request.prompt.size()) > 2 * engine->prefill_chunk())
    callbacks.on_prefill_progress = print_progress;
  engine::Generator generator(*engine);
  const engine::GenerationResult result = generator.generate(request, callbacks);
  const std::string tail = stream.flush();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  std::fprintf(stderr,
               "prefill: %lld tokens in %.3f s (%.1f tok/s) | decode: %zu tokens in %.3f s (%.1f tok/s) | finish: %s\n",
               static_cast<long long>(result.prompt_tokens), result.prefill_seconds, result.prefill_tokens_per_second(),
               result.tokens.size(), result.decode_seconds, result.decode_tokens_per_second(),
               std::string(engine::finish_reason_name(result.finish_reason)).c_str());
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming it to stdout");
  cmd->add_option("-m,--model", a->model_dir, "Hugging Face model folder (config.json, weights, tokenizer.json)")
      ->required();
  cmd->add_option("-p,--prompt", a->prompt, "Prompt text");
  cmd->add_option("-f,--prompt-file", a->prompt_file, "Read the prompt from a file ('-' for stdin)");
  cmd->add_flag("--chat", a->chat, "Wrap the prompt as a user message in the model's chat template");
  cmd->add_option("--system", a->system, "System message (with --chat)");
  cmd->add_flag("--no-think", a->no_think, "Qwen3 chat: disable thinking (empty <think> block)");
  cmd->add_option("-n,--max-new-tokens", a->max_new_tokens, "Tokens to generate at most")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at end-of-sequence tokens");
  cmd->add_option("--temperature", a->sampling.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", a->sampling.top_k, "Keep the k most likely tokens; 0 = off")->capture_default_str();
  cmd->add_option("--top-p", a->sampling.top_p, "Nucleus sampling mass; 1 = off")->capture_default_str();
  cmd->add_option("--min-p", a->sampling.min_p, "Drop tokens below min-p x the top probability; 0 = off")
      ->capture_default_str();
  cmd->add_option("--repetition-penalty", a->sampling.repetition_penalty,
                  "Divide logits of tokens already seen (prompt and output); 1 = off")->capture_default_str();
  cmd->add_option("--presence-penalty", a->sampling.presence_penalty, "OpenAI presence penalty; 0 = off")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", a->sampling.frequency_penalty, "OpenAI frequency penalty; 0 = off")
      ->capture_default_str();
  cmd->add_option("--seed", a->sampling.seed, "Random seed (same seed, same output)")->capture_default_str();
  cmd->add_option("--device", a->device, "auto (CUDA when a GPU is present), cuda or cpu")->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads; 0 = all cores")->capture_default_str();
  cmd->add_option("--max-context", a->max_context,
                  "KV-cache length in tokens; 0 = the model's limit, capped at 4096 on the CPU and by free "
                  "memory on the GPU")
      ->capture_default_str();
  cmd->add_option("--prefill-chunk", a->prefill_chunk, "Prompt tokens per forward pass")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->callback([a] {
    a->sampling.validate();
    run_generate(*a);
  });
}

}  // namespace specula::cli
