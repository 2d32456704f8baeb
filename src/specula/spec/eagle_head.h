// EagleHead: an EAGLE-1/2 draft head (or the MiniCPM4 variant of it) on one device, with its own
// KV cache and buffers carved from the engine's arena, running the draft forward through the
// same ops as the target (so it runs on both backends and replays inside CUDA graphs).
//
// Forward for draft row p (position p): e = scale_emb * E_target[t_{p+1}], f = the target's
// final-norm output at p (or, inside a tree, the draft's own output at the node's parent);
//   EAGLE-1/2:  x = fc_e e + fc_f f (+ fc.bias)      one decoder layer WITHOUT input norm
//   MiniCPM4:   x = fc_e norm1(e) + fc_f norm2(f)    layer 0 WITH its input norm, residual
//               branches scaled by scale_depth / sqrt(target layers + 1)
//   x += s o_proj(Attn(x or norm_in(x)));  y = x + s down(SwiGLU(gate_up(norm_post(x))))
//   logits = logit_scale * y W^T, W = the target's LM head or its FR-Spec rows.
// y is what the next tree level consumes as f. There is no final norm.
//
// File layouts, exactly (anything else is an error naming the tensor):
//   EAGLE-1/2 (Llama-3, Qwen2/3 bases; SafeAILab/EAGLE cnets1.py): fc.weight [H, 2H] (columns
//   [0, H) multiply the embedding, [H, 2H) the feature), fc.bias [H] optional (a missing one is
//   zero: published Llama-3 heads have none), layers.0.self_attn.{q,k,v,o}_proj.weight (+ q/k/v
//   biases when config says qkv_bias or the family has them), layers.0.mlp.{gate,up,down}_proj.weight,
//   layers.0.post_attention_layernorm.weight; embed_tokens.weight is ignored (the target's is used).
//   MiniCPM4 (CPM.cu's MiniCPM4EagleImpl; reference formats-and-architectures.md s.7.3): the same
//   plus input_norm1.weight (embedding branch), input_norm2.weight (feature branch) and
//   layers.0.input_layernorm.weight; all names may carry one common "eagle." prefix.
// RoPE of the head (the EAGLE rule, reference s.0): the head config's rope_theta, 10000 when the
// key is absent, and 10000 whenever rope_scaling is set (EAGLE's _init_rope does not pass the
// base then); only linear scaling is representable in EAGLE's code, so others are refused.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "specula/core/arena.h"
#include "specula/core/tensor.h"
#include "specula/model/config.h"
#include "specula/model/kv_cache.h"
#include "specula/model/transformer.h"
#include "specula/model/weights.h"
#include "specula/ops/draft_tree.h"
#include "specula/ops/ops.h"

namespace specula::io {
class Checkpoint;
}

namespace specula::spec {

enum class HeadLayout { Eagle, MiniCPM4 };

struct EagleHeadConfig {
  std::string dir;             // the head's folder, for messages
  model::ModelConfig layer;    // dims, eps, q/k/v bias and RoPE of the head's one layer (RoPE after the EAGLE rule)
  HeadLayout layout = HeadLayout::Eagle;
  std::string prefix;          // "" or "eagle." (MiniCPM4 files written by CPM.cu tooling)
  bool rope_theta_defaulted = false;  // rope_theta absent or ignored (rope_scaling set): 10000
  double residual_scale = 1.0;
  // The rule, stated once: reads dir/config.json, checks it against the target (hidden size,
  // vocabulary, family, muP scales) with errors naming both files.
  static EagleHeadConfig read(const std::string& dir, const model::ModelConfig& target);
  std::string summary() const;
};

// The name prefix the head's file uses ("" or "eagle."), from where fc.weight is; an EAGLE-3
// file (midlayer.*) is refused with a message saying so.
std::string detect_head_prefix(const io::Checkpoint& checkpoint, const EagleHeadConfig& config);

// The head's tensors as the checkpoint must hold them (names relative to the checkpoint).
model::WeightLayout eagle_head_layout(const EagleHeadConfig& config);

struct EagleHeadWeights {
  Tensor fc_embed, fc_feature, fc_bias;  // [H, H], [H, H], [H] or empty
  Tensor norm_embed, norm_feature;       // MiniCPM4 only
  model::LayerWeights layer;             // input_norm empty for EAGLE-1/2
  size_t bytes = 0;
  int64_t parameter_count = 0;
  static EagleHeadWeights from(const model::PlacedWeights& placed);
};

struct EagleHeadShape {
  int64_t max_rows = 1;      // rows per draft forward (prefill chunk, tree frontier)
  int64_t max_logit_rows = 1;
  int64_t kv_capacity = 1;   // committed context plus the tree levels' rows
  int64_t draft_vocab = 0;   // LM-head rows: the target vocabulary or an FR-Spec list's length
  int64_t max_mask_width = 1;  // widest draft-level mask (depth * top_k)
  int64_t tree_size = 1;       // target verification rows (tree nodes with the root)
  int64_t max_accepted = 1;    // rows one cycle commits (depth + 1)
  int64_t top_k = 1;           // candidates per expanded node
  int64_t tree_depth = 1;      // draft levels
  int64_t target_vocab = 1;    // the target's vocabulary (a sampled walk draws from its rows)
};

class EagleHead {
 public:
  // Arena bytes of the buffers, KV cache, draft LM head (when FR-Spec rows are gathered) and
  // the FR-Spec id table; the weights are planned separately (plan_layout / plan_random_layout).
  static void plan(const EagleHeadConfig& config, const EagleHeadShape& shape, const model::ActivationDTypes& dtypes,
                   DType weight_dtype, bool frspec, ArenaPlan& plan);
  // `target_embed` and `target_lm_head` are the target's; `frspec_ids` (empty for the full
  // vocabulary) are the draft ids' full-vocabulary ids, whose LM-head rows are gathered here once.
  EagleHead(const EagleHeadConfig& config, EagleHeadWeights weights, const model::ModelConfig& target,
            Tensor target_embed, Tensor target_lm_head, const std::vector<int32_t>& frspec_ids,
            const EagleHeadShape& shape, const model::ActivationDTypes& dtypes, Arena& arena, ops::OpContext& ctx);

  // Step inputs, [max_rows] I32 on the device.
  Tensor token_ids() const { return token_ids_; }
  Tensor positions() const { return positions_; }
  Tensor slots() const { return slots_; }
  // Scratch for features the caller gathers ([max_rows, H], activation dtype).
  Tensor feature_buffer(int64_t rows) const { return features_.slice_outer(0, rows); }
  // Draft rows through the head: features [rows, H] (any float dtype on the device); K/V stored
  // at slots, visibility from `mask`; logits of the last `logit_rows` rows in logits(), or, when
  // `logit_row` ([1] I32 on the device) is given, of that one row (logit_rows must be 1): the
  // catch-up runs a fixed number of rows and the new root's row is known only on the device.
  void forward(ops::OpContext& ctx, int64_t rows, const Tensor& features, int64_t logit_rows,
               const ops::AttentionMask& mask = ops::AttentionMask::causal(), const Tensor& logit_row = Tensor());
  // The head's output y of the last forward ([rows, H], activation dtype): the next level's f.
  Tensor hidden(int64_t rows) const { return hidden_.slice_outer(0, rows); }
  Tensor logits(int64_t rows) const { return logits_.slice_outer(0, rows); }  // [rows, draft_vocab] F32
  // Draft id -> full id ([draft_vocab] I32 on the device; empty for the full vocabulary) and the
  // same list on the host.
  Tensor vocab_map() const { return vocab_map_; }
  const std::vector<int32_t>& vocab_map_host() const { return vocab_map_host_; }
  int64_t draft_vocab() const { return shape_.draft_vocab; }
  Tensor lm_head() const { return lm_head_; }  // [draft_vocab, H]: the target's or its FR-Spec rows
  model::KvCache& kv_cache() { return kv_; }
  const EagleHeadConfig& config() const { return config_; }
  const EagleHeadShape& shape() const { return shape_; }
  const EagleHeadWeights& weights() const { return weights_; }
  // Device scratch of the speculative cycle (planned with the head): a draft level's mask over
  // `rows` queries and `width` columns, the target's verification mask, row indices for gathers,
  // and the KV compaction moves.
  Tensor draft_mask(int64_t rows, int64_t width) const;
  Tensor verify_mask(int64_t nodes) const;
  Tensor gather_ids(int64_t n) const { return gather_ids_.slice_outer(0, n); }
  // Top-k of the last forward's logit rows (ops::top_k_log_softmax): [rows, top_k] each.
  Tensor top_values(int64_t rows) const { return top_values_.slice_outer(0, rows); }
  Tensor top_indices(int64_t rows) const { return top_indices_.slice_outer(0, rows); }
  Tensor kv_src() const { return kv_src_; }
  Tensor kv_dst() const { return kv_dst_; }
  Tensor kv_count() const { return kv_count_; }

  // The speculative cycle's device state (ops/draft_tree.h) and the step inputs its ops write:
  // a draft level's head inputs, the catch-up's head inputs with the target's KV moves, and the
  // target's verification inputs (`target` is the target model, whose input buffers they are).
  ops::DraftTreeState& tree() { return tree_; }
  ops::DraftLevelInputs level_inputs(int level) const;
  ops::CatchUpInputs catch_up_inputs() const;
  ops::VerifyInputs verify_inputs(const model::Transformer& target) const;
  // The cycle word holding the new root's catch-up row ([1] I32 view of tree().cycle).
  Tensor root_row() const;
  // A sampled walk's buffers: the walk node's logits row ([1, target_vocab] F32), the token drawn
  // from it ([1] I32), and views of the walk's node and active words ([1] I32 each).
  Tensor walk_row() const { return walk_row_; }
  Tensor walk_drawn() const { return walk_drawn_; }
  Tensor walk_node() const;
  Tensor walk_active() const;

 private:
  template <typename Visit>
  static void visit_buffers(const EagleHeadConfig& c, const EagleHeadShape& s, const model::ActivationDTypes& d,
                            EagleHead* self, Visit&& visit);
  EagleHeadConfig config_;
  EagleHeadWeights weights_;
  EagleHeadShape shape_;
  Tensor target_embed_, lm_head_;
  float embed_scale_ = 1.0f, logit_scale_ = 1.0f;
  ops::RopeParams rope_;
  model::KvCache kv_;
  Tensor token_ids_, positions_, slots_, features_, embedded_, normed_, residual_, qkv_, q_, attn_out_, gate_up_,
      hidden_, logit_input_, logits_, vocab_map_, mask_bits_, verify_mask_, gather_ids_, kv_src_, kv_dst_, kv_count_,
      top_values_, top_indices_, walk_row_, walk_drawn_;
  ops::DraftTreeState tree_;
  std::vector<int32_t> vocab_map_host_;
};

}  // namespace specula::spec
