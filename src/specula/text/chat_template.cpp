// Hard-coded chat renderers and chat-style detection (see chat_template.h). Each renderer follows
// its family's Jinja template line by line, including the Python string operations it uses
// (str.strip() for Llama's `| trim`, split/lstrip/rstrip for Qwen3's reasoning removal).
// tokenizer_config.json, chat_template.json and config.json are read like every other JSON input
// (read_text_file, then io::parse_strict_json: size and depth limits, duplicate keys refused).
#include "specula/text/chat_template.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/io/strict_json.h"
#include "specula/text/unicode.h"

namespace specula::text {
namespace {

constexpr std::string_view kQwen25DefaultSystem = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
constexpr std::string_view kQwen2DefaultSystem = "You are a helpful assistant.";
constexpr std::string_view kLlama31DateBlock = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

// Python's str.isspace(): White_Space plus the information separators U+001C..U+001F.
bool is_python_space(char32_t c) { return is_white_space(c) || (c >= 0x1C && c <= 0x1F); }

// Python str.strip() with no argument (Jinja's `trim`).
std::string python_strip(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    size_t length = 0;
    if (!is_python_space(decode_utf8(text, begin, &length))) break;
    begin += length;
  }
  size_t end = text.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    size_t length = 0;
    if (!is_python_space(decode_utf8(text, start, &length))) break;
    end = start;
  }
  return std::string(text.substr(begin, end - begin));
}

std::string_view lstrip_newlines(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
std::string_view rstrip_newlines(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

bool contains(std::string_view haystack, std::string_view needle) { return haystack.find(needle) != std::string_view::npos; }

std::string lowercase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

void check_messages(std::span<const ChatMessage> messages) {
  SPECULA_CHECK(!messages.empty(), "render_chat: no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    SPECULA_CHECK(role == "system" || role == "user" || role == "assistant", "render_chat: message ", i, " has role '", role,
                  "' (expected system, user or assistant)");
    SPECULA_CHECK(find_invalid_utf8(messages[i].content) == std::string::npos, "render_chat: message ", i,
                  " content is not valid UTF-8");
  }
}

void append_llama_block(std::string& out, std::string_view role, std::string_view content) {
  out += "<|start_header_id|>";
  out += role;
  out += "<|end_header_id|>\n\n";
  out += python_strip(content);
  out += "<|eot_id|>";
}

void append_chatml_block(std::string& out, std::string_view role, std::string_view content) {
  out += "<|im_start|>";
  out += role;
  out += '\n';
  out += content;
  out += "<|im_end|>\n";
}

std::string render_llama3(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  std::string out = "<|begin_of_text|>";
  for (const ChatMessage& m : messages) append_llama_block(out, m.role, m.content);
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_llama31(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  std::string out = "<|begin_of_text|>";
  std::string system_message;
  if (messages.front().role == "system") {
    system_message = python_strip(messages.front().content);
    messages = messages.subspan(1);
  }
  out += "<|start_header_id|>system<|end_header_id|>\n\n";
  out += kLlama31DateBlock;
  out += system_message;
  out += "<|eot_id|>";
  for (const ChatMessage& m : messages) append_llama_block(out, m.role, m.content);
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_qwen2(std::span<const ChatMessage> messages, bool add_generation_prompt, std::string_view default_system) {
  std::string out;
  if (messages.front().role == "system") append_chatml_block(out, "system", messages.front().content);
  else append_chatml_block(out, "system", default_system);
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && messages[i].role == "system") continue;
    append_chatml_block(out, messages[i].role, messages[i].content);
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_qwen3(std::span<const ChatMessage> messages, bool add_generation_prompt, bool enable_thinking) {
  std::string out;
  if (messages.front().role == "system") append_chatml_block(out, "system", messages.front().content);
  // The last user turn that is not a tool response; assistant turns after it keep their reasoning.
  size_t last_query_index = messages.size() - 1;
  for (size_t i = messages.size(); i-- > 0;) {
    const std::string& content = messages[i].content;
    const bool tool_response = content.starts_with("<tool_response>") && content.ends_with("</tool_response>");
    if (messages[i].role == "user" && !tool_response) {
      last_query_index = i;
      break;
    }
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" || (m.role == "system" && i > 0)) {
      append_chatml_block(out, m.role, m.content);
      continue;
    }
    if (m.role != "assistant") continue;
    std::string_view content = m.content;
    std::string_view reasoning;
    if (const size_t last_close = content.rfind("</think>"); last_close != std::string_view::npos) {
      const std::string_view before_first_close = content.substr(0, content.find("</think>"));
      const std::string_view trimmed = rstrip_newlines(before_first_close);
      const size_t open = trimmed.rfind("<think>");
      reasoning = lstrip_newlines(open == std::string_view::npos ? trimmed : trimmed.substr(open + 7));
      content = lstrip_newlines(content.substr(last_close + 8));
    }
    out += "<|im_start|>assistant\n";
    const bool keep_reasoning = i > last_query_index && (i + 1 == messages.size() || !reasoning.empty());
    if (keep_reasoning) {
      out += "<think>\n";
      out += lstrip_newlines(rstrip_newlines(reasoning));
      out += "\n</think>\n\n";
      out += lstrip_newlines(content);
    } else {
      out += content;
    }
    out += "<|im_end|>\n";
  }
  if (add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

std::string render_minicpm4(std::span<const ChatMessage> messages, bool add_generation_prompt) {
  std::string out = "<s>";
  for (const ChatMessage& m : messages) append_chatml_block(out, m.role, m.content);
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

ChatStyle style_from_family(std::string_view model_type, const std::string& model_dir) {
  const std::string family = lowercase(model_type);
  if (family.starts_with("qwen3")) return ChatStyle::Qwen3;
  // Qwen2 and Qwen2.5 share model_type "qwen2"; without a template, assume the newer 2.5.
  if (family.starts_with("qwen2")) return ChatStyle::ChatMLQwen25;
  if (family.starts_with("minicpm")) return ChatStyle::MiniCPM4;
  if (family.starts_with("llama")) {
    // Llama-3.1+ configs carry rope_scaling {"rope_type": "llama3"}; Llama-3 has none.
    const std::filesystem::path config = std::filesystem::path(model_dir) / "config.json";
    if (!model_dir.empty() && input_present(config.string())) {
      const auto json =
          io::parse_strict_json_object(read_text_file(config.string(), kMaxConfigFileBytes), config.string());
      if (json.contains("rope_scaling") && json["rope_scaling"].is_object()) {
        const auto& scaling = json["rope_scaling"];
        for (const char* key : {"rope_type", "type"}) {
          if (scaling.contains(key) && scaling[key] == "llama3") return ChatStyle::Llama31;
        }
      }
    }
    return ChatStyle::Llama3;
  }
  fail("cannot pick a chat template: no chat template found and model family '", io::text_excerpt(model_type),
       "' is not one of llama, qwen2, qwen3, minicpm");
}

// tokenizer_config.json "chat_template" may be a string or a list of {name, template}.
std::string template_from_tokenizer_config(const std::filesystem::path& path) {
  const auto json = io::parse_strict_json_object(read_text_file(path.string(), kMaxConfigFileBytes), path.string());
  if (!json.contains("chat_template") || json["chat_template"].is_null()) return {};
  const auto& field = json["chat_template"];
  if (field.is_string()) return field.get<std::string>();
  SPECULA_CHECK(field.is_array(), path.string(), ": chat_template must be a string or a list of named templates");
  for (const auto& entry : field) {
    // Checked by hand, not with entry.value("name", ""), which throws a bare type_error when
    // "name" is not a string.
    const auto name = entry.find("name");  // end() for a non-object
    const bool is_default = name != entry.end() && name->is_string() && *name == "default";
    if (is_default && entry.contains("template") && entry["template"].is_string()) {
      return entry["template"].get<std::string>();
    }
  }
  fail(path.string(), ": chat_template list has no 'default' template");
}

}  // namespace

ChatStyle chat_style_from_template(std::string_view chat_template, std::string_view model_type) {
  if (contains(chat_template, "<|start_header_id|>")) {
    return contains(chat_template, "Cutting Knowledge Date") ? ChatStyle::Llama31 : ChatStyle::Llama3;
  }
  if (contains(chat_template, "<|im_start|>")) {
    // MiniCPM ships plain ChatML (4.1 adds Qwen3-like thinking switches), so the family decides.
    if (lowercase(model_type).starts_with("minicpm")) return ChatStyle::MiniCPM4;
    if (contains(chat_template, "enable_thinking") || contains(chat_template, "</think>")) return ChatStyle::Qwen3;
    if (contains(chat_template, kQwen25DefaultSystem)) return ChatStyle::ChatMLQwen25;
    if (contains(chat_template, kQwen2DefaultSystem)) return ChatStyle::ChatMLQwen2;
    if (lowercase(model_type).starts_with("qwen3")) return ChatStyle::Qwen3;
    fail("chat template is ChatML but matches none of Qwen2, Qwen2.5, Qwen3 and the model family '",
         io::text_excerpt(model_type),
         "' is not minicpm or qwen3");
  }
  fail("chat template matches none of the supported styles (Llama-3, Llama-3.1, Qwen2, Qwen2.5, Qwen3, MiniCPM4)");
}

ChatStyle detect_chat_style(const std::string& model_dir, const std::string& model_type) {
  namespace fs = std::filesystem;
  const fs::path dir(model_dir);
  std::string chat_template;
  if (const fs::path config = dir / "tokenizer_config.json"; input_present(config.string())) {
    chat_template = template_from_tokenizer_config(config);
  }
  if (chat_template.empty()) {
    if (const fs::path jinja = dir / "chat_template.jinja"; input_present(jinja.string()))
      chat_template = read_text_file(jinja.string(), kMaxConfigFileBytes);
  }
  if (chat_template.empty()) {
    if (const fs::path json_file = dir / "chat_template.json"; input_present(json_file.string()))
      chat_template = template_from_tokenizer_config(json_file);
  }
  if (chat_template.empty()) return style_from_family(model_type, model_dir);
  return with_context(model_dir + ": chat template", [&] { return chat_style_from_template(chat_template, model_type); });
}

std::string render_chat(ChatStyle style, std::span<const ChatMessage> messages, bool add_generation_prompt,
                        bool enable_thinking) {
  check_messages(messages);
  switch (style) {
    case ChatStyle::Llama3: return render_llama3(messages, add_generation_prompt);
    case ChatStyle::Llama31: return render_llama31(messages, add_generation_prompt);
    case ChatStyle::ChatMLQwen2: return render_qwen2(messages, add_generation_prompt, kQwen2DefaultSystem);
    case ChatStyle::ChatMLQwen25: return render_qwen2(messages, add_generation_prompt, kQwen25DefaultSystem);
    case ChatStyle::Qwen3: return render_qwen3(messages, add_generation_prompt, enable_thinking);
    case ChatStyle::MiniCPM4: return render_minicpm4(messages, add_generation_prompt);
  }
  fail("render_chat: unknown chat style");
}

std::vector<std::string> chat_stop_tokens(ChatStyle style) {
  switch (style) {
    case ChatStyle::Llama3: return {"<|eot_id|>", "<|end_of_text|>"};
    case ChatStyle::Llama31: return {"<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"};
    case ChatStyle::ChatMLQwen2:
    case ChatStyle::ChatMLQwen25:
    case ChatStyle::Qwen3: return {"<|im_end|>", "<|endoftext|>"};
    case ChatStyle::MiniCPM4: return {"<|im_end|>", "</s>"};
  }
  fail("chat_stop_tokens: unknown chat style");
}

std::string_view chat_style_name(ChatStyle style) {
  switch (style) {
    case ChatStyle::Llama3: return "llama3";
    case ChatStyle::Llama31: return "llama3.1";
    case ChatStyle::ChatMLQwen2: return "chatml-qwen2";
    case ChatStyle::ChatMLQwen25: return "chatml-qwen2.5";
    case ChatStyle::Qwen3: return "qwen3";
    case ChatStyle::MiniCPM4: return "minicpm4";
  }
  return "unknown";
}

}  // namespace specula::text
