// Demo checkpoint writer (see demo_model.h).
#include "specula/model/demo_model.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "specula/core/dtype.h"
#include "specula/core/error.h"
#include "specula/io/safetensors_writer.h"
#include "specula/ops/random_hash.h"
#include "specula/text/unicode.h"

namespace specula::model {

namespace {

constexpr const char* kCorpus =
    "specula is an inference engine for large language models. It loads Hugging Face checkpoints, "
    "tokenizes text, runs the transformer on the CPU or on a CUDA GPU, and streams the generated tokens. "
    "Speculative decoding drafts several tokens with a small head and the target model verifies them in "
    "one forward pass, so the output stays exactly the target's while decoding gets faster. Sparse "
    "attention lets long contexts run at the speed of short ones. The quick brown fox jumps over the lazy "
    "dog. Hello, world! This demo model has random weights, so what it writes is noise; point specula at "
    "a real checkpoint to get real text. 0123456789 + - * / = ( ) [ ] { } < > ; : , . ! ? ' \"\n";

const char* kSplitPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// Words of the corpus with their leading space, as byte-level symbol sequences.
std::vector<std::vector<std::string>> corpus_words() {
  const auto& alphabet = text::byte_level_alphabet();
  std::vector<std::vector<std::string>> words;
  std::vector<std::string> current;
  auto flush = [&] {
    if (!current.empty()) words.push_back(current);
    current.clear();
  };
  for (const char* p = kCorpus; *p; ++p) {
    const auto byte = static_cast<unsigned char>(*p);
    const bool letter = std::isalnum(byte) != 0;
    if (!letter || (byte == ' ')) flush();
    current.emplace_back(alphabet.byte_to_utf8[byte].data(), alphabet.byte_to_utf8_length[byte]);
    if (!letter && byte != ' ') flush();
  }
  flush();
  return words;
}

// Classic BPE training: repeatedly merge the most frequent adjacent pair (ties: first seen).
std::vector<std::pair<std::string, std::string>> learn_merges(int64_t count) {
  auto words = corpus_words();
  std::vector<std::pair<std::string, std::string>> merges;
  for (int64_t m = 0; m < count; ++m) {
    std::map<std::pair<std::string, std::string>, int> freq;
    std::pair<std::string, std::string> best;
    int best_count = 1;  // a pair must occur at least twice to be worth a token
    for (const auto& w : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        const int c = ++freq[{w[i], w[i + 1]}];
        if (c > best_count) {
          best_count = c;
          best = {w[i], w[i + 1]};
        }
      }
    if (best.first.empty()) break;
    merges.push_back(best);
    for (auto& w : words) {
      std::vector<std::string> merged;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == best.first && w[i + 1] == best.second) {
          merged.push_back(w[i] + w[i + 1]);
          ++i;
        } else {
          merged.push_back(w[i]);
        }
      }
      w = std::move(merged);
    }
  }
  return merges;
}

nlohmann::ordered_json tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges,
                                      bool chat_tokens, int32_t* vocab_size, int32_t* bos, int32_t* eos) {
  const auto& alphabet = text::byte_level_alphabet();
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  int32_t next = 0;
  for (int b = 0; b < 256; ++b)
    vocab[std::string(alphabet.byte_to_utf8[static_cast<size_t>(b)].data(), alphabet.byte_to_utf8_length[static_cast<size_t>(b)])] = next++;
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    merge_list.push_back(a + " " + b);
  }
  *bos = next++;
  *eos = next++;
  const int32_t first_chat_token = next;
  if (chat_tokens) next += 3;
  *vocab_size = next;
  auto special = [](int32_t id, const char* content) {
    return nlohmann::ordered_json{{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
                                  {"rstrip", false},   {"normalized", false}, {"special", true}};
  };
  nlohmann::ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = {special(*bos, "<|begin_of_text|>"), special(*eos, "<|end_of_text|>")};
  if (chat_tokens) {
    j["added_tokens"].push_back(special(first_chat_token, "<|start_header_id|>"));
    j["added_tokens"].push_back(special(first_chat_token + 1, "<|end_header_id|>"));
    j["added_tokens"].push_back(special(first_chat_token + 2, "<|eot_id|>"));
  }
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", kSplitPattern}}}, {"behavior", "Isolated"},
                           {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                           {"use_regex", false}}}}};
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"pair",
       {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
        {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
      {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {*bos}}, {"tokens", {"<|begin_of_text|>"}}}}}}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"},          {"dropout", nullptr},       {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                {"byte_fallback", false}, {"ignore_merges", true},    {"vocab", vocab},
                {"merges", merge_list}};
  return j;
}

io::TensorToWrite random_bf16(const std::string& name, std::vector<int64_t> shape, uint64_t seed, float scale,
                              float offset = 0.0f) {
  io::TensorToWrite t{name, DType::BF16, shape, {}};
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  t.bytes.resize(static_cast<size_t>(n) * 2);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t v = f32_to_bf16(offset + ops::random_uniform_symmetric(seed, static_cast<uint64_t>(i), scale));
    std::memcpy(&t.bytes[static_cast<size_t>(i) * 2], &v, 2);
  }
  return t;
}

void write_json(const std::filesystem::path& path, const nlohmann::ordered_json& j) {
  std::ofstream out(path);
  SPECULA_CHECK(out.good(), path.string(), ": cannot open for writing");
  out << j.dump(2) << "\n";
  SPECULA_CHECK(out.good(), path.string(), ": write failed");
}

}  // namespace

void write_demo_model(const std::string& dir, const DemoModelOptions& o) {
  namespace fs = std::filesystem;
  SPECULA_CHECK(o.hidden % o.heads == 0 && o.heads % o.kv_heads == 0 && (o.hidden / o.heads) % 2 == 0,
                "demo model: hidden must split into an even head_dim and heads into KV groups");
  std::error_code ec;
  fs::create_directories(dir, ec);
  SPECULA_CHECK(!ec, dir, ": cannot create directory: ", ec.message());

  int32_t vocab = 0, bos = 0, eos = 0;
  const nlohmann::ordered_json tok = tokenizer_json(learn_merges(o.merges), o.chat_tokens, &vocab, &bos, &eos);
  write_json(fs::path(dir) / "tokenizer.json", tok);
  write_json(fs::path(dir) / "tokenizer_config.json",
             {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|end_of_text|>"}, {"model_max_length", o.max_position}});

  const int64_t hd = o.hidden / o.heads;
  nlohmann::ordered_json config = {
      {"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", o.hidden},
      {"intermediate_size", o.intermediate}, {"num_hidden_layers", o.layers}, {"num_attention_heads", o.heads},
      {"num_key_value_heads", o.kv_heads}, {"head_dim", hd}, {"hidden_act", "silu"},
      {"max_position_embeddings", o.max_position}, {"rms_norm_eps", 1e-5}, {"rope_theta", 500000.0},
      {"rope_scaling", nullptr}, {"tie_word_embeddings", true}, {"vocab_size", vocab}, {"bos_token_id", bos},
      {"eos_token_id", eos}, {"attention_bias", false}, {"mlp_bias", false}, {"torch_dtype", "bfloat16"}};
  write_json(fs::path(dir) / "config.json", config);
  write_json(fs::path(dir) / "generation_config.json", {{"bos_token_id", bos}, {"eos_token_id", eos}});

  std::vector<io::TensorToWrite> tensors;
  uint64_t seed = o.seed;
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(o.hidden));
  const float inter_scale = 1.0f / std::sqrt(static_cast<float>(o.intermediate));
  // The tied head turns a unit-RMS hidden state into logits of spread ~ sqrt(hidden/3) x scale:
  // 0.1 keeps them near unit spread, so sampling visits many tokens instead of repeating one.
  tensors.push_back(random_bf16("model.embed_tokens.weight", {vocab, o.hidden}, seed++, 0.1f));
  for (int64_t l = 0; l < o.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    tensors.push_back(random_bf16(p + "input_layernorm.weight", {o.hidden}, seed++, 0.1f, 1.0f));
    tensors.push_back(random_bf16(p + "self_attn.q_proj.weight", {o.heads * hd, o.hidden}, seed++, in_scale));
    tensors.push_back(random_bf16(p + "self_attn.k_proj.weight", {o.kv_heads * hd, o.hidden}, seed++, in_scale));
    tensors.push_back(random_bf16(p + "self_attn.v_proj.weight", {o.kv_heads * hd, o.hidden}, seed++, in_scale));
    tensors.push_back(random_bf16(p + "self_attn.o_proj.weight", {o.hidden, o.heads * hd}, seed++, in_scale));
    tensors.push_back(random_bf16(p + "post_attention_layernorm.weight", {o.hidden}, seed++, 0.1f, 1.0f));
    tensors.push_back(random_bf16(p + "mlp.gate_proj.weight", {o.intermediate, o.hidden}, seed++, in_scale));
    tensors.push_back(random_bf16(p + "mlp.up_proj.weight", {o.intermediate, o.hidden}, seed++, in_scale));
    tensors.push_back(random_bf16(p + "mlp.down_proj.weight", {o.hidden, o.intermediate}, seed++, inter_scale));
  }
  tensors.push_back(random_bf16("model.norm.weight", {o.hidden}, seed++, 0.1f, 1.0f));
  io::write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors);
}

}  // namespace specula::model
