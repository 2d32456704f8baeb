// Transformer: the one decoder definition (Llama-3, Qwen2/2.5, Qwen3, MiniCPM4) that runs on
// either backend. It owns no memory of its own: its activations, rotary table and KV cache are
// carved from the caller's arena at construction, sized for at most `max_tokens` tokens per call
// and `kv_capacity` cache rows, so forward() never allocates and, on CUDA, a decode call can be
// captured as a graph once and replayed (its inputs are the device tensors token_ids(),
// positions() and slots(), which the caller or a device kernel updates between replays).
//
// Families differ only in data (biases present, q/k norms present, muP scales), never in control
// flow beyond "is this tensor empty", so there is no per-family forward to keep in sync.
#pragma once

#include <functional>
#include <vector>

#include "specula/core/arena.h"
#include "specula/core/tensor.h"
#include "specula/model/attention_plan.h"
#include "specula/model/config.h"
#include "specula/model/kv_cache.h"
#include "specula/model/weights.h"
#include "specula/ops/ops.h"

namespace specula::model {

struct ForwardShape {
  int64_t max_tokens = 1;      // tokens per forward call (prefill chunk / verification tree)
  int64_t max_logit_rows = 1;  // rows of logits one call can produce
  int64_t kv_capacity = 0;     // KV-cache rows (context length)
};

// Element types of the buffers: activations that feed matrix products, the residual stream and
// the KV cache. The CPU backend needs F32 throughout.
struct ActivationDTypes {
  DType activations = DType::F32;
  DType residual = DType::F32;
  DType kv_cache = DType::F32;
  // CPU: F32 throughout. CUDA: bf16/f16 (following the weights) activations and cache with an F32
  // residual, or F32 throughout when `full_precision` (a reference mode: slower, but its greedy
  // tokens equal the CPU backend's, which bf16 rounding cannot promise at near-ties).
  static ActivationDTypes for_device(Device device, DType weight_dtype, bool full_precision = false);
};

class Transformer {
 public:
  // Bytes the buffers take (add to the arena plan before allocating).
  // `attention` picks dense or InfLLM-V2 switchable attention (the sparse path adds compressed
  // keys to the KV cache and a block-list buffer).
  static void plan(const ModelConfig& config, const ForwardShape& shape, const ActivationDTypes& dtypes,
                   ArenaPlan& plan, const AttentionPlan& attention = {});
  Transformer(const ModelConfig& config, ModelWeights weights, const ForwardShape& shape,
              const ActivationDTypes& dtypes, Arena& arena, const AttentionPlan& attention = {});

  // Step inputs, [max_tokens] I32 on the model's device: fill the first `tokens` entries.
  Tensor token_ids() const { return token_ids_; }
  Tensor positions() const { return positions_; }
  Tensor slots() const { return slots_; }

  // Runs `tokens` inputs through the model. Input t's K/V are stored at cache row slots[t]; which
  // rows it attends is `mask`'s rule (prefix-causal: rows [0, slots[t]]; a tree mask for
  // verifying draft trees). Logits of the last `logit_rows` inputs land in logits(logit_rows).
  // `prefill_end`: for a prompt chunk, the sequence length the whole prompt reaches (the sparse
  // switch decides per prompt, see attention_plan.h); 0 for decode and verification.
  // `max_position`: the call's highest position when the caller knows it on the host, else -1.
  // On CUDA positions live in device memory, so a sparse-capable model runs the sparse path
  // (whose lists mark queries below the switch dense) unless this, or a prompt's prefill_end,
  // shows every query below the switch: then it runs plain dense attention (the fused decode
  // kernel included) and only keeps the compressed keys current. A captured step must be keyed
  // by that choice (engine::StepPlan::sparse_attention).
  void forward(ops::OpContext& ctx, int64_t tokens, int64_t logit_rows,
               const ops::AttentionMask& mask = ops::AttentionMask::causal(), int64_t prefill_end = 0,
               int64_t max_position = -1);
  // Whether a call whose highest position is `max_position` (-1: not known on the host) with
  // this prefill_end runs the sparse path on a device backend.
  bool sparse_path(int64_t max_position, int64_t prefill_end = 0) const;

  Tensor logits(int64_t rows) const { return logits_.slice_outer(0, rows); }  // [rows, V] F32
  // [max_logit_rows] I32 on the device: where greedy/sampled next tokens are written.
  Tensor next_tokens(int64_t rows) const { return next_tokens_.slice_outer(0, rows); }
  // Final-norm output of the last forward, before the muP logit scale: [tokens, H].
  Tensor final_hidden(int64_t tokens) const { return final_hidden_.slice_outer(0, tokens); }

  KvCache& kv_cache() { return kv_; }
  const AttentionPlan& attention_plan() const { return attention_; }
  // The block lists of the last forward's last layer ([n_kv, tokens, max_blocks] I32; empty when
  // dense): what tests and `--dump-blocks` compare.
  Tensor block_lists(int64_t tokens) const;
  // Called after each layer's block selection with the layer, the call's positions [T] and its
  // block lists [n_kv, T, W] (host tensors on the CPU backend): `specula generate --dump-blocks`
  // and tests read the selected sets through it.
  using BlockObserver = std::function<void(int64_t layer, const Tensor& positions, const Tensor& blocks)>;
  void set_block_observer(BlockObserver observer) { block_observer_ = std::move(observer); }
  const ops::RopeParams& rope() const { return rope_; }
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const ForwardShape& shape() const { return shape_; }
  Device device() const { return weights_.embed.device; }

 private:
  static KvCacheShape kv_shape(const ModelConfig& c, const ForwardShape& s, const ActivationDTypes& d,
                               const AttentionPlan& a);
  template <typename Visit>
  static void visit_buffers(const ModelConfig& c, const ForwardShape& s, const ActivationDTypes& d,
                            Transformer* self, Visit&& visit);

  ModelConfig config_;
  AttentionPlan attention_;
  ModelWeights weights_;
  ForwardShape shape_;
  ops::RopeParams rope_;
  KvCache kv_;
  Tensor token_ids_, positions_, slots_;
  Tensor residual_, normed_, qkv_, q_, attn_out_, gate_up_, final_hidden_, logits_, next_tokens_;
  Tensor blocks_;  // [n_kv, max_tokens, max_blocks] I32, sparse only
  BlockObserver block_observer_;
};

}  // namespace specula::model
