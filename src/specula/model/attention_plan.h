// AttentionPlan: which attention a model runs (dense, or InfLLM-V2 dense-sparse switchable) and
// with which settings, resolved once at load from the checkpoint's sparse_config and the user's
// options, then consulted per forward call.
//
// Modes: dense (never sparse), sparse (sparse at every length) and auto (follow dense_len: a
// checkpoint without sparse settings stays dense). The switch, as the HF reference makes it: a
// forward is sparse when the sequence it reaches is at least dense_len long. For a prompt that is
// every token of the prompt, even the early ones (HF decides per call, and the prompt is one
// call); chunked prefill inherits the prompt's decision, so chunking changes nothing. Decode and
// speculative verification decide per token (position + 1 >= dense_len), which is what one-token
// HF decode does, so speculation does not change the output either.
//
// The variant (ops::SparseVariant; the two upstream sparse paths differ, reference infllmv2.md
// section 0) is chosen by this rule, first match wins:
//   1. --sparse-variant;
//   2. the model folder's name: "4.1" / "4_1" / "4p1" after "minicpm" -> minicpm4.1, "minicpm4"
//      otherwise -> minicpm4 (checkpoints are published under those names);
//   3. a config.json with a sparse_config -> minicpm4.1 (the 4.1 release ships one; MiniCPM4-8B
//      ships none), without one -> minicpm4 (with the published defaults);
//   4. other families -> minicpm4.1 (no in-kernel window; the paper's 96-block setting).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "specula/model/config.h"
#include "specula/ops/sparse_attention.h"

namespace specula::model {

enum class AttentionMode { Dense, Sparse, Auto };
std::string_view attention_mode_name(AttentionMode mode);
std::string_view sparse_variant_name(ops::SparseVariant variant);
// Parsers for the CLI's words ("dense|sparse|auto", "minicpm4|minicpm4.1"); errors name the word.
AttentionMode parse_attention_mode(std::string_view word);
ops::SparseVariant parse_sparse_variant(std::string_view word);

// What the user asked for; unset fields come from the checkpoint (or the published defaults).
struct AttentionOptions {
  AttentionMode mode = AttentionMode::Auto;
  std::optional<ops::SparseVariant> variant;
  std::optional<int64_t> dense_len, topk, window_size, init_blocks, block_size, kernel_size, kernel_stride;
};

struct AttentionPlan {
  AttentionMode mode = AttentionMode::Dense;  // Dense: the sparse path is off
  SparseConfig config;                        // the effective settings (when not Dense)
  ops::SparseVariant variant = ops::SparseVariant::MiniCPM41;
  std::string variant_reason;  // why this variant (rule step), for the summary
  std::string config_source;   // "config.json sparse_config", "published defaults", ...

  static AttentionPlan resolve(const ModelConfig& model, const AttentionOptions& options,
                               const std::string& model_dir);

  bool sparse_enabled() const { return mode != AttentionMode::Dense; }
  // Selection parameters for one forward; `prefill_end` is the sequence length a prompt call
  // reaches (0 for decode and verification, which switch per token).
  ops::SparseSelectParams select_params(int64_t head_dim, int64_t prefill_end) const;
  // Whether attention at a sequence of `length` tokens is sparse (reporting).
  bool sparse_at(int64_t length) const;
  // The deepest draft tree whose ancestors the selection always keeps (its local blocks).
  int64_t max_tree_depth() const;
  // One line: mode, variant and settings, e.g. for `specula generate` and the server's log.
  std::string describe() const;
  // What one request ran: "dense", "sparse (InfLLM-V2 minicpm4.1)" or "dense, sparse (InfLLM-V2
  // minicpm4) from position N" for a prompt of `prompt_tokens` grown to `total_tokens`.
  std::string request_summary(int64_t prompt_tokens, int64_t total_tokens) const;
};

}  // namespace specula::model
