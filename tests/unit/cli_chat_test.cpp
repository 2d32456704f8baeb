// `specula chat` end to end with piped stdin (one message per line): the conversation history
// reaches the next prompt (checked on the rendered prompts --verbose prints and on the prompt
// token counts of the figures), /reset forgets it, /exit stops reading, a conversation that
// outgrows the context is refused with a message offering /reset (and the program goes on), a
// model without a chat template is a clear error before any weights load, Ctrl-C (SIGINT) stops
// the running answer and not the program, and with an EAGLE draft head the figures report the
// acceptance and the answers equal plain decoding's.
//
// Models: the demo model with its chat tokens (create-demo-model --chat-tokens) and without them
// (a base model), and the EAGLE fixture target (tests/data/eagle/target_llama3, which has no
// tokenizer) given a byte-level tokenizer written here, so its draft head can be used.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_test_util.h"
#include "specula/text/unicode.h"

namespace {

namespace fs = std::filesystem;
using specula::test::CliRun;
CliRun run(const std::string& args) { return specula::test::run_cli(args); }

class CliChat : public testing::Test {
 protected:
  // One folder per process: ctest runs each test in its own process, several at a time.
  static fs::path root() { return fs::temp_directory_path() / ("specula_chat_" + std::to_string(getpid())); }
  static std::string chat_model() { return (root() / "chat").string(); }
  static std::string base_model() { return (root() / "base").string(); }
  static void SetUpTestSuite() {
    fs::remove_all(root());
    ASSERT_EQ(run("create-demo-model " + chat_model() + " --chat-tokens").status, 0);
    ASSERT_EQ(run("create-demo-model " + base_model()).status, 0);
  }
  static void TearDownTestSuite() { fs::remove_all(root()); }

  // Runs `specula chat ARGS` with `input` on stdin; stdout and stderr together.
  static CliRun chat(const std::string& args, const std::string& input) {
    const fs::path file = root() / "input.txt";
    std::ofstream(file, std::ios::binary) << input;
    return run("chat " + args + " --device cpu --threads 1 < " + file.string());
  }
};

struct Prompt {
  int64_t tokens;
  std::string text;
};

// The prompts --verbose printed, in order.
std::vector<Prompt> prompts(const std::string& output) {
  std::vector<Prompt> out;
  const std::regex re("--- prompt \\(([0-9]+) tokens\\) ---\n([\\s\\S]*?)\n--- end of prompt ---\n");
  for (auto it = std::sregex_iterator(output.begin(), output.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back({std::stoll((*it)[1].str()), (*it)[2].str()});
  return out;
}

// The figure lines after the answers: "[N tokens, ... | prompt P tokens, ... | finish F]".
struct Figures {
  int64_t tokens, prompt_tokens;
  std::string finish;
  std::string line;
};
std::vector<Figures> figures(const std::string& output) {
  std::vector<Figures> out;
  const std::regex re("\\[([0-9]+) tokens, [0-9.]+ tok/s[^\n]*\\| prompt ([0-9]+) tokens[^\n]*\\| finish ([a-z_]+)\\]");
  for (auto it = std::sregex_iterator(output.begin(), output.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back({std::stoll((*it)[1].str()), std::stoll((*it)[2].str()), (*it)[3].str(), (*it)[0].str()});
  return out;
}

// The answers: the text after each "--- end of prompt ---" line up to its figure line.
std::vector<std::string> answers(const std::string& output) {
  std::vector<std::string> out;
  const std::string marker = "--- end of prompt ---\n";
  for (size_t at = output.find(marker); at != std::string::npos; at = output.find(marker, at + 1)) {
    const size_t begin = at + marker.size();
    const size_t end = output.find("\n[", begin);
    out.push_back(end == std::string::npos ? "" : output.substr(begin, end - begin));
  }
  return out;
}

std::string strip(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

TEST_F(CliChat, KeepsTheHistoryResetsAndExits) {
  const CliRun r = chat("-m " + chat_model() + " -n 8 --verbose --system 'Be brief.'",
                        "hello there\n\nhow are you\n/reset\nhello there\n/exit\nnever sent\n");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto p = prompts(r.output);
  const auto f = figures(r.output);
  const auto a = answers(r.output);
  ASSERT_EQ(p.size(), 3u) << "the empty line is skipped and nothing after /exit is sent\n" << r.output;
  ASSERT_EQ(f.size(), 3u) << r.output;
  ASSERT_EQ(a.size(), 3u) << r.output;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(f[i].prompt_tokens, p[i].tokens) << f[i].line;
    EXPECT_NE(p[i].text.find("system<|end_header_id|>\n\nBe brief.<|eot_id|>"), std::string::npos) << p[i].text;
  }
  // The second prompt is the first exchange plus the new message, in template order.
  const std::string first_exchange = "user<|end_header_id|>\n\nhello there<|eot_id|><|start_header_id|>assistant"
                                     "<|end_header_id|>\n\n" + strip(a[0]) + "<|eot_id|>";
  const std::string generation_prompt = "<|start_header_id|>assistant<|end_header_id|>\n\n";
  ASSERT_GE(p[0].text.size(), generation_prompt.size());
  EXPECT_EQ(p[0].text.substr(p[0].text.size() - generation_prompt.size()), generation_prompt) << p[0].text;
  EXPECT_NE(p[1].text.find(first_exchange + "<|start_header_id|>user<|end_header_id|>\n\nhow are you<|eot_id|>"),
            std::string::npos) << p[1].text;
  EXPECT_GT(p[1].tokens, p[0].tokens + 3);
  // After /reset the conversation starts again: the same prompt as the first, and (greedy) the same answer.
  EXPECT_EQ(p[2].text, p[0].text);
  EXPECT_EQ(p[2].tokens, p[0].tokens);
  EXPECT_EQ(a[2], a[0]);
  EXPECT_NE(r.output.find("(conversation cleared)"), std::string::npos) << r.output;
}

TEST_F(CliChat, AConversationThatOutgrowsTheContextIsRefusedAndResetHelps) {
  std::string long_message;
  for (int i = 0; i < 40; ++i) long_message += "the quick brown fox ";
  // Context 96 with answers of up to 24 tokens: the first exchange fits, the second message does
  // not; after /reset it does again. A message too long on its own is refused too.
  const CliRun r = chat("-m " + chat_model() + " -n 24 --max-context 96 --ignore-eos",
                        "hello there\nhow are you today\n/reset\nhello there\n" + long_message + "\n/help\n");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto f = figures(r.output);
  ASSERT_EQ(f.size(), 2u) << r.output;
  EXPECT_EQ(f[0].tokens, 24);
  EXPECT_EQ(f[1].tokens, 24);
  const size_t full = r.output.find("the conversation is full");
  ASSERT_NE(full, std::string::npos) << r.output;
  EXPECT_NE(r.output.find("exceeds the context of 96 tokens. Type /reset", full), std::string::npos) << r.output;
  EXPECT_LT(full, r.output.find(f[1].line)) << "the refusal comes between the two answers";
  // After /reset the same message makes the same prompt: the refused message did not enter the
  // history, and /reset cleared the first exchange.
  EXPECT_EQ(f[1].prompt_tokens, f[0].prompt_tokens) << f[0].line << "\n" << f[1].line;
  // A message that would not fit even on its own is told so (not to /reset).
  EXPECT_NE(r.output.find("this message does not fit: on its own it makes a prompt of"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("the conversation is full", full + 1), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("commands:\n  /reset"), std::string::npos) << "still reading after the refusals";
}

TEST_F(CliChat, AModelWithoutAChatTemplateIsAClearErrorBeforeLoading) {
  const CliRun r = chat("-m " + base_model(), "hello\n");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("specula: error: " + base_model() + ": chat uses the llama3 template, but this tokenizer "
                          "has no '<|eot_id|>' token (is this a base model without a chat template?)"),
            std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("loaded "), std::string::npos) << "the weights were loaded before the check";
  // A family with no template to fall back on: the template detection names it.
  const fs::path odd = root() / "odd";
  fs::remove_all(odd);
  fs::copy(chat_model(), odd, fs::copy_options::recursive);
  std::ofstream(odd / "tokenizer_config.json") << R"({"chat_template": "{{ messages }}"})";
  const CliRun t = chat("-m " + odd.string(), "hello\n");
  EXPECT_EQ(t.status, 1) << t.output;
  EXPECT_NE(t.output.find("specula: error: "), std::string::npos) << t.output;
  EXPECT_NE(t.output.find("template"), std::string::npos) << t.output;
}

TEST_F(CliChat, SpecialTokenTextInAMessageIsRefusedAndTheChatGoesOn) {
  const CliRun r = chat("-m " + chat_model() + " -n 4", "a<|eot_id|>b\nhello\n");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("error: the message contains the special token '<|eot_id|>'"), std::string::npos)
      << r.output;
  EXPECT_EQ(figures(r.output).size(), 1u) << r.output;
}

TEST_F(CliChat, SamplingWithASeedRepeats) {
  const std::string args = "-m " + chat_model() + " -n 12 --temperature 0.9 --seed 11 --verbose";
  const CliRun a = chat(args, "hello there\n"), b = chat(args, "hello there\n");
  ASSERT_EQ(a.status, 0) << a.output;
  ASSERT_EQ(answers(a.output).size(), 1u) << a.output;
  EXPECT_EQ(answers(a.output), answers(b.output));
  const CliRun bad = run("chat -m " + chat_model() + " --top-p 2 --device cpu < /dev/null");
  EXPECT_EQ(bad.status, 1) << bad.output;
  EXPECT_NE(bad.output.find("top_p must be in (0, 1]"), std::string::npos) << bad.output;
}

// A child `specula chat` with its stdin and its output (stdout and stderr together) on pipes.
class ChatProcess {
 public:
  explicit ChatProcess(std::vector<std::string> args) {
    int in[2], out[2];
    EXPECT_EQ(pipe(in), 0);
    EXPECT_EQ(pipe(out), 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      dup2(out[1], 2);
      close(in[1]);
      close(out[0]);
      args.insert(args.begin(), SPECULA_CLI_PATH);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    in_ = in[1];
    out_ = out[0];
  }
  ~ChatProcess() {
    if (in_ >= 0) close(in_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
  }
  void send(const std::string& text) { ASSERT_EQ(write(in_, text.data(), text.size()), ssize_t(text.size())); }
  void close_input() {
    close(in_);
    in_ = -1;
  }
  // Reads until `pred(output)` holds or `seconds` pass; returns whether it held.
  template <typename Pred>
  bool read_until(Pred pred, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (!pred(output_)) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = read(out_, buf, sizeof buf);
      if (n <= 0) return pred(output_);
      output_.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  void signal(int sig) { kill(pid_, sig); }
  // Exit status after the output ends (-1 if it did not exit within `seconds`).
  int wait_exit(double seconds) {
    read_until([](const std::string&) { return false; }, 0.0);
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      read_until([](const std::string&) { return false; }, 0.05);
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        read_until([](const std::string&) { return false; }, 0.2);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
    }
    return -1;
  }
  const std::string& output() const { return output_; }

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::string output_;
};

TEST_F(CliChat, CtrlCStopsTheAnswerNotTheProgram) {
  ChatProcess p({"chat", "-m", chat_model(), "--device", "cpu", "--threads", "1", "-n", "2000", "--ignore-eos"});
  p.send("tell me a long story\n");
  // The answer has begun once output follows the load summary's last line ("attention: ...").
  ASSERT_TRUE(p.read_until(
      [](const std::string& o) {
        const size_t summary_end = o.find("attention: ");
        return summary_end != std::string::npos && o.find('\n', summary_end) != std::string::npos &&
               o.size() > o.find('\n', summary_end) + 8;
      },
      60.0))
      << p.output();
  p.signal(SIGINT);
  ASSERT_TRUE(p.read_until([](const std::string& o) { return o.find("(answer stopped") != std::string::npos; }, 30.0))
      << p.output();
  p.send("/reset\nhello\n");
  p.close_input();
  EXPECT_EQ(p.wait_exit(60.0), 0) << p.output();
  const auto f = figures(p.output());
  ASSERT_EQ(f.size(), 2u) << p.output();
  EXPECT_EQ(f[0].finish, "cancelled");
  EXPECT_LT(f[0].tokens, 2000);
  EXPECT_EQ(f[1].finish, "length");
  EXPECT_EQ(f[1].tokens, 2000);
}

TEST_F(CliChat, CtrlCAtThePromptDoesNotLeave) {
  ChatProcess p({"chat", "-m", chat_model(), "--device", "cpu", "--threads", "1", "-n", "4"});
  ASSERT_TRUE(p.read_until([](const std::string& o) { return o.find("loaded ") != std::string::npos; }, 60.0))
      << p.output();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  p.signal(SIGINT);
  ASSERT_TRUE(p.read_until([](const std::string& o) { return o.find("to leave, type /exit") != std::string::npos; },
                           30.0))
      << p.output();
  p.send("hello\n/exit\n");
  EXPECT_EQ(p.wait_exit(60.0), 0) << p.output();
  EXPECT_EQ(figures(p.output()).size(), 1u) << p.output();
}

// The EAGLE fixture target with a byte-level tokenizer written here: ids 0-5 are special tokens
// (BOS 1 and the end tokens 2 and 3 as in its config.json, the Llama-3 chat markers), 6-261 the
// 256 byte symbols, and the rest of its 512 ids two-letter tokens (decodable, never produced by
// encoding: there are no merges).
std::string target_with_tokenizer(const fs::path& dir) {
  const std::string fixture = std::string(SPECULA_TEST_DATA) + "/eagle/target_llama3";
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors"}) fs::copy(fs::path(fixture) / f, dir / f);
  const auto& alphabet = specula::text::byte_level_alphabet();
  auto symbol = [&](int b) {
    return std::string(alphabet.byte_to_utf8[static_cast<size_t>(b)].data(),
                       alphabet.byte_to_utf8_length[static_cast<size_t>(b)]);
  };
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  int id = 6;
  for (int b = 0; b < 256; ++b) vocab[symbol(b)] = id++;
  for (int i = 0; id < 512; ++i) vocab[std::string{char('a' + i / 26), char('a' + i % 26)}] = id++;
  const char* specials[] = {"<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                            "<|end_header_id|>"};
  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (int i = 0; i < 6; ++i)
    added.push_back({{"id", i}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  nlohmann::ordered_json tok = {
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                 {"ignore_merges", false}, {"vocab", vocab}, {"merges", nlohmann::ordered_json::array()}}}};
  std::ofstream(dir / "tokenizer.json") << tok.dump();
  return dir.string();
}

TEST_F(CliChat, WithADraftHeadTheFiguresShowAcceptanceAndTheAnswersAreUnchanged) {
  const std::string target = target_with_tokenizer(root() / "target_llama3");
  const std::string head = std::string(SPECULA_TEST_DATA) + "/eagle/head_llama_bin";
  const std::string input = "hello there\nhow are you\n";
  const CliRun plain = chat("-m " + target + " -n 24 --verbose", input);
  const CliRun spec = chat("-m " + target + " -n 24 --verbose --draft " + head, input);
  ASSERT_EQ(plain.status, 0) << plain.output;
  ASSERT_EQ(spec.status, 0) << spec.output;
  const auto fp = figures(plain.output), fs_ = figures(spec.output);
  ASSERT_EQ(fp.size(), 2u) << plain.output;
  ASSERT_EQ(fs_.size(), 2u) << spec.output;
  const std::regex accepted(" \\| ([0-9.]+) accepted per verification \\(([0-9.]+) tokens per pass\\)");
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(fp[i].line.find("accepted per verification"), std::string::npos) << fp[i].line;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(fs_[i].line, m, accepted)) << fs_[i].line;
    EXPECT_GT(std::stod(m[1].str()), 0.0) << "the fixture head is fitted to its target: it gets tokens accepted";
    EXPECT_NEAR(std::stod(m[2].str()), std::stod(m[1].str()) + 1.0, 0.011);
    EXPECT_EQ(fs_[i].prompt_tokens, fp[i].prompt_tokens);
  }
  EXPECT_EQ(answers(spec.output), answers(plain.output)) << "greedy speculative decoding changed an answer";
  EXPECT_EQ(prompts(spec.output)[1].text, prompts(plain.output)[1].text);
}

}  // namespace
