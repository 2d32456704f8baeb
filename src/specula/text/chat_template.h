// Chat prompt rendering for the model families specula serves, hard-coded instead of running the
// Jinja templates shipped in tokenizer_config.json: the families are few, their templates are
// fixed text with simple rules, and a renderer we control cannot execute arbitrary template code.
// Each renderer reproduces its HF template's output for system/user/assistant messages (tools and
// tool calls are not supported):
//   Llama3       Meta-Llama-3-8B-Instruct: BOS, header blocks, contents .strip()-ed.
//   Llama31      Llama-3.1/3.2-Instruct: always a system block with "Cutting Knowledge Date:
//                December 2023" and "Today Date: 26 Jul 2024" (3.2's template uses the current
//                date when the renderer offers strftime_now; we keep the fixed default so prompts
//                are reproducible).
//   ChatMLQwen2  Qwen2-Instruct: default system "You are a helpful assistant."
//   ChatMLQwen25 Qwen2.5-Instruct: default system "You are Qwen, created by Alibaba Cloud. You are a
//                helpful assistant."
//   Qwen3        no default system; enable_thinking = false appends "<think>\n\n</think>\n\n" to the
//                generation prompt; earlier assistant turns lose their <think> reasoning.
//   MiniCPM4     ChatML without default system, preceded by "<s>" (MiniCPM feeds BOS first; the
//                template itself does not write it). enable_thinking is ignored (MiniCPM4.1's
//                handling is unverified).
//
// Encode the rendered text with add_special_tokens = false (the template already wrote BOS where
// the model wants one) and parse_special = true, as HF apply_chat_template does.
// HAZARD: because the whole prompt is parsed for special tokens, a message whose content contains
// special-token text such as "<|im_end|>" or "<|eot_id|>" injects real control tokens (a user can
// forge turns). Callers serving untrusted users should reject or escape such content, or encode
// message contents separately with parse_special = false and splice the ids.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace specula::text {

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

enum class ChatStyle { Llama3, Llama31, ChatMLQwen2, ChatMLQwen25, Qwen3, MiniCPM4 };

// Picks the style from the chat template in `model_dir` (tokenizer_config.json "chat_template",
// else chat_template.jinja or chat_template.json) by distinguishing substrings; without a template,
// from the model family name (config.json model_type: "llama", "qwen2", "qwen3", "minicpm"; for
// "llama" a llama3-type rope_scaling in config.json means 3.1+). A template that matches no known
// family, or no template and an unknown family, throws.
ChatStyle detect_chat_style(const std::string& model_dir, const std::string& model_type);

// Detection from the template text alone (exposed for tests); throws if it matches no style.
ChatStyle chat_style_from_template(std::string_view chat_template, std::string_view model_type);

// Throws on an empty message list or a role other than system/user/assistant.
std::string render_chat(ChatStyle style, std::span<const ChatMessage> messages, bool add_generation_prompt,
                        bool enable_thinking = true);

// Token strings that end generation for the style; the engine maps them to ids and unions them
// with the config's eos ids.
std::vector<std::string> chat_stop_tokens(ChatStyle style);

std::string_view chat_style_name(ChatStyle style);

}  // namespace specula::text
