// The embedded default model: `specula create-demo-model DIR` writes a complete Hugging Face
// style Llama checkpoint (config.json, generation_config.json, model.safetensors with seeded
// random bf16 weights, tokenizer.json with a byte-level BPE learned from a built-in paragraph),
// so a fresh clone can run the whole pipeline -- loader, tokenizer, forward, sampling, streaming
// -- without downloading anything. Its weights are random: the text it produces is noise.
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
};

// Writes the model into `dir` (created if missing; existing files are overwritten).
void write_demo_model(const std::string& dir, const DemoModelOptions& options = {});

}  // namespace specula::model
