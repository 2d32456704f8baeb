// `specula chat`: an interactive terminal chat with one model. The conversation is kept as a list
// of messages and the whole history is rendered through the model's chat template for every
// answer (as the server's /v1/chat/completions does), because the engine holds one sequence and
// starts each request from slot 0; nothing is reused between turns, so /reset only has to clear
// the list. Answers go through an engine::Scheduler like the server's, never to the engine
// directly: the scheduler's device thread produces the tokens, its callbacks only append text to
// a queue, and this (main) thread prints it, reads the keyboard and watches for Ctrl-C, which
// cancels the running answer through the scheduler (within one decode step) and keeps the
// program. Input is read line by line from stdin with read(2)/poll(2) rather than iostreams, so
// a Ctrl-C at the prompt is seen at once and piped input (one message per line, as the tests
// use) works the same as a terminal; prompts and the banner are drawn only on a terminal.
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "commands.h"
#include "model_loading.h"
#include "options.h"
#include "terminal.h"
#include "specula/core/error.h"
#include "specula/engine/limits.h"
#include "specula/engine/scheduler.h"
#include "specula/model/config.h"
#include "specula/text/chat_template.h"
#include "specula/text/tokenizer.h"

namespace specula::cli {

namespace {

struct ChatArgs : EngineArgs {
  std::string model_dir, system;
  int64_t max_new_tokens = 512;
  bool ignore_eos = false, no_think = false, verbose = false;
  std::optional<uint64_t> seed;
  sampling::SamplingParams sampling;
};

// Set by the SIGINT handler, read and cleared by the main thread.
volatile sig_atomic_t g_interrupted = 0;
extern "C" void on_sigint(int) { g_interrupted = 1; }

constexpr const char* kHelp =
    "commands:\n"
    "  /reset   forget the conversation (the system message stays)\n"
    "  /exit    leave (also /quit, Ctrl-D, or the end of piped input)\n"
    "  /help    this text\n"
    "Ctrl-C while an answer is written stops that answer. Anything else you type is sent as a message\n"
    "(one line each; start it with '//' to send a message that begins with '/').\n";

// Lines from stdin, one message each. read() waits in poll() with a short timeout so a Ctrl-C
// at the prompt is noticed without relying on EINTR.
class LineReader {
 public:
  enum class Status { Line, Eof, Interrupted };
  Status next(std::string& line) {
    for (;;) {
      if (const size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return Status::Line;
      }
      if (eof_) {
        if (buffer_.empty()) return Status::Eof;
        line.swap(buffer_);  // a last line without a newline
        buffer_.clear();
        return Status::Line;
      }
      if (g_interrupted) {
        buffer_.clear();  // what was typed before Ctrl-C is dropped, as a shell does
        return Status::Interrupted;
      }
      pollfd pfd{STDIN_FILENO, POLLIN, 0};
      const int ready = poll(&pfd, 1, 100);
      if (ready < 0 && errno != EINTR) SPECULA_CHECK(false, "reading stdin: poll failed (errno ", errno, ")");
      if (ready <= 0) continue;
      char chunk[4096];
      const ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        eof_ = true;  // end of input, or an unreadable stdin: leave as on EOF
        continue;
      }
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  std::string buffer_;
  bool eof_ = false;
};

// What the device thread hands to the main thread while an answer is written.
struct AnswerChannel {
  std::mutex mutex;
  std::condition_variable cv;
  std::string pending;  // decoded text not yet printed
  bool done = false;
  std::optional<engine::GenerationResult> result;
  std::string error;
};

class ChatSession {
 public:
  ChatSession(const ChatArgs& args, const text::Tokenizer& tokenizer, engine::Engine& engine,
              text::ChatStyle style, engine::Scheduler& scheduler)
      : args_(args), tokenizer_(tokenizer), engine_(engine), style_(style), scheduler_(scheduler) {
    if (!args.ignore_eos) {
      stop_ids_ = engine.config().eos_token_ids;
      add_chat_stop_ids(style, tokenizer, stop_ids_);
    }
    interactive_ = isatty(STDIN_FILENO) == 1;
  }

  void run() {
    if (interactive_)
      std::fprintf(stderr,
                   "chatting with %s (%s chat template, context %lld tokens, answers up to %lld tokens).\n"
                   "/help for commands; Ctrl-C stops an answer; /exit or Ctrl-D leaves.\n",
                   args_.model_dir.c_str(), std::string(text::chat_style_name(style_)).c_str(),
                   static_cast<long long>(engine_.max_context()), static_cast<long long>(args_.max_new_tokens));
    LineReader reader;
    std::string line;
    for (;;) {
      if (interactive_) {
        std::fputs("> ", stdout);
        std::fflush(stdout);
      }
      g_interrupted = 0;
      const LineReader::Status status = reader.next(line);
      if (status == LineReader::Status::Eof) {
        if (interactive_) std::fputc('\n', stdout);
        return;
      }
      if (status == LineReader::Status::Interrupted) {
        g_interrupted = 0;
        std::fputs("\n(Ctrl-C stops an answer; to leave, type /exit or press Ctrl-D)\n", stderr);
        continue;
      }
      const std::string text = trim(line);
      if (text.empty()) continue;
      if (text == "/exit" || text == "/quit") return;
      if (text == "/help") {
        std::fputs(kHelp, stderr);
        continue;
      }
      if (text == "/reset") {
        history_.clear();
        std::fputs("(conversation cleared)\n", stderr);
        continue;
      }
      if (text.rfind("//", 0) != 0 && text[0] == '/') {
        std::fprintf(stderr, "unknown command %s (/help lists them; to send a message that starts with '/', "
                     "type '//' instead)\n", text.c_str());
        continue;
      }
      try {
        answer(text[0] == '/' ? text.substr(1) : text);
      } catch (const Error& e) {
        // A message the template or the engine refuses is reported; the conversation goes on.
        std::fflush(stdout);
        std::fprintf(stderr, "error: %s\n", e.what());
      }
    }
  }

 private:
  static std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
  }

  std::vector<text::ChatMessage> messages_with(const std::string& user_text) const {
    std::vector<text::ChatMessage> messages;
    if (!args_.system.empty()) messages.push_back({"system", args_.system});
    messages.insert(messages.end(), history_.begin(), history_.end());
    messages.push_back({"user", user_text});
    return messages;
  }

  // The prompt the message would make in a new conversation (the system message and it).
  int64_t prompt_tokens_alone(const std::string& user_text) const {
    std::vector<text::ChatMessage> messages;
    if (!args_.system.empty()) messages.push_back({"system", args_.system});
    messages.push_back({"user", user_text});
    const std::string rendered = text::render_chat(style_, messages, true, !args_.no_think);
    return static_cast<int64_t>(tokenizer_.encode(rendered, false, true).size());
  }

  void answer(const std::string& user_text) {
    // The rendered template is tokenized with special tokens parsed, so text spelling one would be
    // read as a template marker and break the conversation's structure.
    for (int32_t id : tokenizer_.encode(user_text, false, true))
      SPECULA_CHECK(!tokenizer_.is_special(id), "the message contains the special token '",
                    tokenizer_.id_to_token(id), "', which the chat template would read as a marker; not sent");
    const std::string rendered = text::render_chat(style_, messages_with(user_text), true, !args_.no_think);
    engine::GenerationRequest request;
    request.prompt = tokenizer_.encode(rendered, /*add_special_tokens=*/false, /*parse_special=*/true);
    request.max_new_tokens = args_.max_new_tokens;
    request.sampling = args_.sampling;
    request.stop_ids = stop_ids_;
    const int64_t prompt_tokens = static_cast<int64_t>(request.prompt.size());
    const int64_t context = engine_.max_context();
    if (prompt_tokens + args_.max_new_tokens > context) {
      // Would /reset help? Only if the message fits in a conversation of its own.
      const int64_t alone = history_.empty() ? prompt_tokens : prompt_tokens_alone(user_text);
      if (alone + args_.max_new_tokens > context)
        std::fprintf(stderr,
                     "this message does not fit: on its own it makes a prompt of %lld tokens, and with room for an "
                     "answer of up to %lld tokens (-n) that exceeds the context of %lld tokens. Shorten it (or lower "
                     "-n, or raise --max-context); it was not sent.\n",
                     static_cast<long long>(alone), static_cast<long long>(args_.max_new_tokens),
                     static_cast<long long>(context));
      else
        std::fprintf(stderr,
                     "the conversation is full: its %zu messages plus this one are %lld tokens, and with room for an "
                     "answer of up to %lld tokens (-n) that exceeds the context of %lld tokens. Type /reset to clear "
                     "the history and start over (the message was not sent).\n",
                     history_.size(), static_cast<long long>(prompt_tokens),
                     static_cast<long long>(args_.max_new_tokens), static_cast<long long>(context));
      return;
    }
    if (args_.verbose)
      std::fprintf(stderr, "--- prompt (%lld tokens) ---\n%s\n--- end of prompt ---\n",
                   static_cast<long long>(prompt_tokens), rendered.c_str());

    auto channel = std::make_shared<AnswerChannel>();
    auto decoder = std::make_shared<text::StreamDecoder>(tokenizer_, /*skip_special_tokens=*/true);
    engine::RequestCallbacks callbacks;
    callbacks.on_token = [channel, decoder](int32_t id) {
      std::string piece = decoder->push(id);
      if (piece.empty()) return true;
      std::lock_guard lock(channel->mutex);
      channel->pending += piece;
      channel->cv.notify_all();
      return true;
    };
    callbacks.on_finish = [channel, decoder](const engine::GenerationResult& result) {
      std::string tail = decoder->flush();
      std::lock_guard lock(channel->mutex);
      channel->pending += tail;
      channel->result = result;
      channel->done = true;
      channel->cv.notify_all();
    };
    callbacks.on_error = [channel](const std::string& message) {
      std::lock_guard lock(channel->mutex);
      channel->error = message;
      channel->done = true;
      channel->cv.notify_all();
    };

    g_interrupted = 0;  // a Ctrl-C typed before this answer is not meant for it
    const auto handle = scheduler_.submit(std::move(request), std::move(callbacks));
    std::string answer_text;
    bool cancelled_by_user = false;
    for (bool done = false; !done;) {
      std::string piece;
      {
        std::unique_lock lock(channel->mutex);
        channel->cv.wait_for(lock, std::chrono::milliseconds(50),
                             [&] { return !channel->pending.empty() || channel->done; });
        piece.swap(channel->pending);
        done = channel->done;
      }
      if (!piece.empty()) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        answer_text += piece;
      }
      if (g_interrupted && !done && !cancelled_by_user) {
        g_interrupted = 0;
        cancelled_by_user = scheduler_.cancel(handle);
      }
    }
    handle->wait();
    std::fputc('\n', stdout);
    std::fflush(stdout);
    g_interrupted = 0;

    if (!channel->error.empty()) {
      std::fprintf(stderr, "error: the answer failed: %s (the message was not kept)\n", channel->error.c_str());
      return;
    }
    const engine::GenerationResult& r = *channel->result;
    // The exchange joins the history, a stopped answer as far as it was written (it was shown).
    history_.push_back({"user", user_text});
    history_.push_back({"assistant", answer_text});
    print_figures(r, handle->time_to_first_token(), prompt_tokens);
    if (r.finish_reason == engine::FinishReason::Cancelled)
      std::fputs("(answer stopped; what was written is kept in the conversation, /reset clears it)\n", stderr);
    else if (r.finish_reason == engine::FinishReason::ContextFull)
      std::fputs("(the context is full; type /reset to start over)\n", stderr);
  }

  void print_figures(const engine::GenerationResult& r, double first_token_seconds, int64_t prompt_tokens) const {
    const int64_t generated = static_cast<int64_t>(r.tokens.size());
    const double seconds = r.prefill_seconds + r.decode_seconds;
    std::string line = "[" + std::to_string(generated) + " tokens";
    char buf[160];
    std::snprintf(buf, sizeof buf, ", %.1f tok/s", seconds > 0 ? static_cast<double>(generated) / seconds : 0.0);
    line += buf;
    if (first_token_seconds >= 0) {
      std::snprintf(buf, sizeof buf, ", first token %.3f s", first_token_seconds);
      line += buf;
    }
    std::snprintf(buf, sizeof buf, " | prompt %lld tokens, context %lld/%lld", static_cast<long long>(prompt_tokens),
                  static_cast<long long>(prompt_tokens + generated), static_cast<long long>(engine_.max_context()));
    line += buf;
    if (r.verifications > 0) {
      std::snprintf(buf, sizeof buf, " | %.2f accepted per verification (%.2f tokens per pass)",
                    static_cast<double>(r.accepted_tokens) / static_cast<double>(r.verifications),
                    r.tokens_per_verification());
      line += buf;
    }
    line += " | finish " + std::string(engine::finish_reason_name(r.finish_reason)) + "]";
    const bool dim = stderr_is_terminal();
    std::fprintf(stderr, "%s%s%s\n", dim ? "\033[2m" : "", line.c_str(), dim ? "\033[0m" : "");
  }

  const ChatArgs& args_;
  const text::Tokenizer& tokenizer_;
  engine::Engine& engine_;
  const text::ChatStyle style_;
  engine::Scheduler& scheduler_;
  std::vector<int32_t> stop_ids_;
  std::vector<text::ChatMessage> history_;  // user and assistant turns; the system message is added when rendering
  bool interactive_ = false;
};

void run_chat(ChatArgs a) {
  check_model_dir(a.model_dir);
  parse_device(a.device);
  if (!a.draft_dir.empty()) a.tree.validate();
  // The template is found before the weights load, so a base model says so at once.
  const model::ModelConfig config = model::ModelConfig::from_dir(a.model_dir);
  const text::ChatStyle style = text::detect_chat_style(a.model_dir, std::string(model::family_name(config.family)));
  SPECULA_CHECK(!a.no_think || style == text::ChatStyle::Qwen3, "--no-think: the ", text::chat_style_name(style),
                " chat template of this model has no thinking switch (only Qwen3's has)");
  const text::Tokenizer tokenizer = load_tokenizer(a.model_dir);
  check_chat_tokens(style, tokenizer, a.model_dir, "chat");
  resolve_seed(a.sampling, a.seed);

  // SIGINT is blocked while the engine's and the scheduler's threads start (they inherit the
  // mask), so only this thread receives it: there it only sets a flag.
  sigset_t sigint;
  sigemptyset(&sigint);
  sigaddset(&sigint, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigint, nullptr);
  auto engine = load_engine(a.model_dir, a);
  SPECULA_CHECK(a.max_new_tokens < engine->max_context(), "-n ", a.max_new_tokens,
                " leaves no room for a prompt in the context of ", engine->max_context(),
                " tokens (lower -n or raise --max-context)");
  engine::Scheduler scheduler(*engine, /*queue_limit=*/1);
  struct sigaction action {};
  action.sa_handler = on_sigint;
  action.sa_flags = SA_RESTART;  // writes are not cut short; poll() still returns at once
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  pthread_sigmask(SIG_UNBLOCK, &sigint, nullptr);

  ChatSession(a, tokenizer, *engine, style, scheduler).run();
  scheduler.shutdown(false);
}

}  // namespace

void add_chat_command(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* cmd = app.add_subcommand(
      "chat", "Interactive chat in the terminal, with history, streaming and speed figures (piped input: one "
              "message per line)");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("-m,--model", a->model_dir, "Hugging Face model folder (config.json, weights, tokenizer.json)")
      ->required();
  cmd->add_option("--system", a->system, "System message for the whole conversation");
  cmd->add_option("-n,--max-new-tokens", a->max_new_tokens,
                  "Tokens per answer at most (a message is refused when the conversation leaves less room)")
      ->capture_default_str()->check(int_in_range<int64_t>(1, engine::kMaxNewTokens));
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop answers at end tokens (for tests and benchmarks)");
  cmd->add_flag("--no-think", a->no_think, "Qwen3 chat template only: disable thinking (empty <think> block)");
  cmd->add_flag("--verbose", a->verbose, "Print each rendered prompt (the whole conversation) on stderr");
  add_sampling_options(cmd, a->sampling, a->seed);
  add_engine_options(cmd, *a);
  cmd->callback([a] {
    a->sampling.validate();
    run_chat(*a);
  });
}

}  // namespace specula::cli
