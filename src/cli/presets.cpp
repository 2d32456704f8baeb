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
  if (name == "minicpm4-8b")  // MiniCPM4-8B (GQA group 16) with its published InfLLM-V2 settings, 128k positions
    return R"({"architectures":["MiniCPMForCausalLM"],"hidden_size":4096,"intermediate_size":16384,
      "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":2,"vocab_size":73448,
      "max_position_embeddings":131072,"rms_norm_eps":1e-6,"rope_theta":10000.0,"tie_word_embeddings":false,
      "scale_emb":12,"scale_depth":1.4,"dim_model_base":256,
      "sparse_config":{"kernel_size":32,"kernel_stride":16,"init_blocks":1,"block_size":64,"window_size":2048,
      "topk":64,"use_nope":false,"dense_len":8192}})";
  fail("unknown --preset '", name, "' (llama3-8b, minicpm4-8b, cpu-100m)");
}

}  // namespace specula::cli
