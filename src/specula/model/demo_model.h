// The embedded default model: `specula create-demo-model DIR` writes a complete Hugging Face
// style Llama checkpoint (config.json, generation_config.json, model.safetensors with seeded
// random bf16 weights, tokenizer.json with a byte-level BPE learned from a built-in paragraph),
// so a fresh clone can run the whole pipeline -- loader, tokenizer, forward, sampling, streaming
// -- without downloading anything. Its weights are random: the text it produces is noise.
// With `chat_tokens` its tokenizer also has the Llama-3 chat template's special tokens
// (<|start_header_id|>, <|end_header_id|>, <|eot_id|>, appended after the end token, so every
// other token and weight row is unchanged), which makes it a model that `specula chat` and
// `generate --chat` can talk to; without them it is a base model with no chat template.
#pragma once

#include <cstdint>
#include <string>

namespace specula::model {

struct DemoModelOptions {
  int64_t layers = 4;
  int64_t hidden = 256;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t intermediate = 704;
  int64_t merges = 400;          // BPE merges learned for the tokenizer
  int64_t max_position = 2048;
  uint64_t seed = 20261125;
  bool chat_tokens = false;
};

// Writes the model into `dir` (created if missing; existing files are overwritten).
void write_demo_model(const std::string& dir, const DemoModelOptions& options = {});

}  // namespace specula::model
