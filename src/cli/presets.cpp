// Benchmark model presets (see presets.h).
#include "presets.h"

#include "specula/core/error.h"

namespace specula::cli {

std::string preset_config(const std::string& name) {
  if (name == "llama3-8b")  // Llama-3-8B: 8.03B parameters
    return R"({"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":14336,
      "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,
      "max_position_embeddings":131072,"rms_norm_eps":1e-5,"rope_theta":500000.0,"tie_word_embeddings":false})";
  if (name == "cpu-100m")  // ~100M parameters: a reference point for the CPU backend
    return R"({"architectures":["LlamaForCausalLM"],"hidden_size":768,"intermediate_size":2048,
      "num_hidden_layers":12,"num_attention_heads":12,"num_key_value_heads":4,"vocab_size":32000,
      "max_position_embeddings":8192,"rms_norm_eps":1e-5,"rope_theta":500000.0,"tie_word_embeddings":true})";
  fail("unknown --preset '", name, "' (llama3-8b, cpu-100m)");
}

}  // namespace specula::cli
