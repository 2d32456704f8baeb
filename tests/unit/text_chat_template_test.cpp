// Chat rendering (exact strings of each family's template), stop tokens, style detection from
// template text / files / family names, and tokenization of rendered prompts with the real files.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/text/chat_template.h"
#include "specula/text/tokenizer.h"

using namespace specula::text;
namespace fs = std::filesystem;

namespace {

std::vector<ChatMessage> system_and_user(const std::string& system, const std::string& user) {
  return {{"system", system}, {"user", user}};
}

// A scratch model directory removed at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("specula_chat_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  void write(const std::string& name, const std::string& content) const { std::ofstream(path_ / name) << content; }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

std::string deps_dir(const std::string& name) { return std::string(SPECULA_DEPS_DIR) + "/tokenizers/" + name; }

void require_deps(const std::string& name) {
  ASSERT_TRUE(fs::exists(deps_dir(name) + "/tokenizer.json"))
      << deps_dir(name) << " is missing: run scripts/fetch-deps.sh to download the tokenizer files";
}

}  // namespace

// --- rendering -------------------------------------------------------------------------------

TEST(ChatTemplate, Llama3StripsContentAndWritesBos) {
  EXPECT_EQ(render_chat(ChatStyle::Llama3, system_and_user("  Be brief.\n", "\tHi there \n"), true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const std::vector<ChatMessage> turns = {{"user", "Hi"}, {"assistant", " Hello! "}, {"user", "Again"}};
  EXPECT_EQ(render_chat(ChatStyle::Llama3, turns, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nAgain<|eot_id|>");
}

TEST(ChatTemplate, Llama31AlwaysWritesTheDateSystemBlock) {
  EXPECT_EQ(render_chat(ChatStyle::Llama31, system_and_user("S", "U"), true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const std::vector<ChatMessage> user_only = {{"user", "U"}};
  EXPECT_EQ(render_chat(ChatStyle::Llama31, user_only, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, QwenChatMLDefaultSystemMessages) {
  const std::vector<ChatMessage> user_only = {{"user", " U "}};
  EXPECT_EQ(render_chat(ChatStyle::ChatMLQwen25, system_and_user("S", "U"), true),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(ChatStyle::ChatMLQwen25, user_only, true),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n U <|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(ChatStyle::ChatMLQwen2, user_only, true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n U <|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(ChatStyle::ChatMLQwen2, system_and_user("S", "U"), false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
}

TEST(ChatTemplate, Qwen3ThinkingSwitchAndReasoningRemoval) {
  const std::vector<ChatMessage> user_only = {{"user", "U"}};
  EXPECT_EQ(render_chat(ChatStyle::Qwen3, user_only, true), "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(render_chat(ChatStyle::Qwen3, system_and_user("S", "U"), true, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  // Earlier assistant turns lose their reasoning; one after the last user turn keeps it.
  const std::vector<ChatMessage> history = {
      {"user", "Q1"}, {"assistant", "<think>\nwhy\n</think>\n\nA1"}, {"user", "Q2"}, {"assistant", "<think>r2</think>A2"}};
  EXPECT_EQ(render_chat(ChatStyle::Qwen3, history, false),
            "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nr2\n</think>\n\nA2<|im_end|>\n");
}

TEST(ChatTemplate, MiniCPM4IsChatMLAfterBos) {
  EXPECT_EQ(render_chat(ChatStyle::MiniCPM4, system_and_user("S", "U"), true),
            "<s><|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<ChatMessage> user_only = {{"user", "U"}};
  EXPECT_EQ(render_chat(ChatStyle::MiniCPM4, user_only, true, false), "<s><|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, RejectsEmptyAndUnknownRoles) {
  EXPECT_THROW(render_chat(ChatStyle::Qwen3, std::vector<ChatMessage>{}, true), specula::Error);
  const std::vector<ChatMessage> tool = {{"tool", "x"}};
  EXPECT_THROW(render_chat(ChatStyle::Llama3, tool, true), specula::Error);
}

TEST(ChatTemplate, StopTokensAndNames) {
  EXPECT_EQ(chat_stop_tokens(ChatStyle::Llama3), (std::vector<std::string>{"<|eot_id|>", "<|end_of_text|>"}));
  EXPECT_EQ(chat_stop_tokens(ChatStyle::Llama31), (std::vector<std::string>{"<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"}));
  for (ChatStyle s : {ChatStyle::ChatMLQwen2, ChatStyle::ChatMLQwen25, ChatStyle::Qwen3}) {
    EXPECT_EQ(chat_stop_tokens(s), (std::vector<std::string>{"<|im_end|>", "<|endoftext|>"}));
  }
  EXPECT_EQ(chat_stop_tokens(ChatStyle::MiniCPM4), (std::vector<std::string>{"<|im_end|>", "</s>"}));
  EXPECT_EQ(chat_style_name(ChatStyle::Llama31), "llama3.1");
  EXPECT_EQ(chat_style_name(ChatStyle::MiniCPM4), "minicpm4");
}

// --- detection -------------------------------------------------------------------------------

TEST(ChatDetect, FromTemplateText) {
  EXPECT_EQ(chat_style_from_template("{{ '<|start_header_id|>' }}", "llama"), ChatStyle::Llama3);
  EXPECT_EQ(chat_style_from_template("<|start_header_id|> Cutting Knowledge Date: ", "llama"), ChatStyle::Llama31);
  EXPECT_EQ(chat_style_from_template("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "qwen2"),
            ChatStyle::ChatMLQwen25);
  EXPECT_EQ(chat_style_from_template("<|im_start|>system\nYou are a helpful assistant.<|im_end|>", "qwen2"), ChatStyle::ChatMLQwen2);
  EXPECT_EQ(chat_style_from_template("<|im_start|> enable_thinking </think>", "qwen3"), ChatStyle::Qwen3);
  EXPECT_EQ(chat_style_from_template("{{'<|im_start|>' + message['role']}}", "minicpm4"), ChatStyle::MiniCPM4);
  EXPECT_EQ(chat_style_from_template("<|im_start|> enable_thinking", "minicpm"), ChatStyle::MiniCPM4);
  EXPECT_THROW(chat_style_from_template("[INST] {{ message }} [/INST]", "llama"), specula::Error);
  EXPECT_THROW(chat_style_from_template("{{'<|im_start|>'}}", "mistral"), specula::Error);
}

TEST(ChatDetect, FromModelDirectory) {
  require_deps("llama3");
  require_deps("qwen3");
  EXPECT_EQ(detect_chat_style(deps_dir("llama3"), "llama"), ChatStyle::Llama3);
  EXPECT_EQ(detect_chat_style(deps_dir("qwen3"), "qwen3"), ChatStyle::Qwen3);

  const ScratchDir listed;
  listed.write("tokenizer_config.json",
               R"({"chat_template": [{"name": "tool_use", "template": "x"},
                                     {"name": "default", "template": "<|start_header_id|>Cutting Knowledge Date"}]})");
  EXPECT_EQ(detect_chat_style(listed.str(), "llama"), ChatStyle::Llama31);

  const ScratchDir jinja;
  jinja.write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  jinja.write("chat_template.jinja", "{{'<|im_start|>' + message.role}}");
  EXPECT_EQ(detect_chat_style(jinja.str(), "minicpm4"), ChatStyle::MiniCPM4);

  const ScratchDir bare;
  EXPECT_EQ(detect_chat_style(bare.str(), "qwen3"), ChatStyle::Qwen3);
  EXPECT_EQ(detect_chat_style(bare.str(), "qwen2"), ChatStyle::ChatMLQwen25);
  EXPECT_EQ(detect_chat_style(bare.str(), "minicpm4"), ChatStyle::MiniCPM4);
  EXPECT_EQ(detect_chat_style(bare.str(), "llama"), ChatStyle::Llama3);
  EXPECT_THROW(detect_chat_style(bare.str(), "gpt2"), specula::Error);
  bare.write("config.json", R"({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})");
  EXPECT_EQ(detect_chat_style(bare.str(), "llama"), ChatStyle::Llama31);

  const ScratchDir unknown;
  unknown.write("tokenizer_config.json", R"({"chat_template": "[INST] {{ m }} [/INST]"})");
  EXPECT_THROW(detect_chat_style(unknown.str(), "llama"), specula::Error);
}

TEST(ChatDetect, HostileConfigFilesAreRefusedWithTheirName) {
  // Duplicate keys: which template would be meant?
  const ScratchDir duplicate;
  duplicate.write("tokenizer_config.json", R"({"chat_template": "<|im_start|>", "chat_template": "<|start_header_id|>"})");
  try {
    detect_chat_style(duplicate.str(), "qwen2");
    ADD_FAILURE() << "duplicate chat_template accepted";
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: key 'chat_template' appears twice"), std::string::npos)
        << e.what();
  }
  // A template list whose "name" is not a string is skipped, not a bare nlohmann type_error.
  const ScratchDir odd_name;
  odd_name.write("tokenizer_config.json",
                 R"({"chat_template": [{"name": 7, "template": "x"}, {"name": "default", "template": "<|im_start|>"}]})");
  EXPECT_EQ(detect_chat_style(odd_name.str(), "minicpm4"), ChatStyle::MiniCPM4);
  // Deep nesting in config.json, read to tell Llama-3.1 from Llama-3.
  const ScratchDir deep;
  deep.write("config.json", "{\"x\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  try {
    detect_chat_style(deep.str(), "llama");
    ADD_FAILURE() << "deep config.json accepted";
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json: invalid JSON"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("nesting depth limit"), std::string::npos) << e.what();
  }
  // A FIFO named tokenizer_config.json is refused at once instead of blocking.
  const ScratchDir fifo;
  const std::string path = fifo.str() + "/tokenizer_config.json";
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  try {
    detect_chat_style(fifo.str(), "llama");
    ADD_FAILURE() << "FIFO accepted";
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find("FIFO"), std::string::npos) << e.what();
  }
}

// --- rendered prompts through the real tokenizers ----------------------------------------------

TEST(ChatTemplate, RenderedPromptsTokenizeWithOneBos) {
  require_deps("llama3");
  require_deps("qwen3");
  const Tokenizer llama3 = Tokenizer::from_file(deps_dir("llama3") + "/tokenizer.json");
  const auto ids = llama3.encode(render_chat(ChatStyle::Llama3, system_and_user("S", "Hi"), true), false, true);
  ASSERT_GE(ids.size(), 10u);
  EXPECT_EQ(ids[0], 128000);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 128000), 1);
  EXPECT_EQ(ids[1], 128006);
  EXPECT_EQ(ids.back(), 271);  // "\n\n" after the assistant header
  for (const std::string& stop : chat_stop_tokens(ChatStyle::Llama3)) EXPECT_TRUE(llama3.token_to_id(stop)) << stop;

  const Tokenizer qwen3 = Tokenizer::from_file(deps_dir("qwen3") + "/tokenizer.json");
  const std::vector<ChatMessage> user_only = {{"user", "Hi"}};
  const auto q = qwen3.encode(render_chat(ChatStyle::Qwen3, user_only, true, false), false, true);
  EXPECT_EQ(q.front(), 151644);
  EXPECT_EQ(std::count(q.begin(), q.end(), 151667), 1);  // <think>
  EXPECT_EQ(std::count(q.begin(), q.end(), 151668), 1);  // </think>
  for (const std::string& stop : chat_stop_tokens(ChatStyle::Qwen3)) EXPECT_TRUE(qwen3.token_to_id(stop)) << stop;
}
