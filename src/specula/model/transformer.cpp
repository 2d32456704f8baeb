// The decoder forward pass (see transformer.h). Per layer:
//   qkv = norm_in(x) Wqkv^T + b          (norm fused into the projection: ops::rms_norm_linear)
//   q/k norm, RoPE, K/V -> cache; a = attention(q, cache)
//   x += s * (a Wo^T)                    (residual update fused into the product: Accumulate)
//   gu = norm_post(x) [Wg; Wu]^T
//   x += s * ((silu(g) * u) Wd^T)        (SwiGLU and the residual update fused into the product)
// then final = norm_final(x) (kept: EAGLE drafts from it) and logits = alpha * final W_head^T,
// where s and alpha are MiniCPM's muP scales (1 for the other families). The residual stream x
// stays F32 on both backends; the fused forms never round a product to 16 bits before adding it.
#include "specula/model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "specula/core/error.h"
#include "specula/ops/sparse_attention.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/core/cuda_memory.h"
#endif

namespace specula::model {

ActivationDTypes ActivationDTypes::for_device(Device device, DType weight_dtype, bool full_precision) {
  if (device == Device::CPU || full_precision) return {};
  const DType half = weight_dtype == DType::F16 ? DType::F16 : DType::BF16;
  return {half, DType::F32, half};
}


// Every buffer, in allocation order, with its dtype and shape: the one list both plan() and the
// constructor walk, so the arena plan cannot drift from what is allocated. `self` is null when
// planning (there is nothing to assign yet).
template <typename Visit>
void Transformer::visit_buffers(const ModelConfig& c, const ForwardShape& s, const ActivationDTypes& d,
                                Transformer* self, Visit&& visit) {
  auto at = [self](Tensor Transformer::*member) { return self ? &(self->*member) : nullptr; };
  const int64_t T = s.max_tokens;
  visit(self ? &self->rope_.inv_freq : nullptr, DType::F32, {c.head_dim / 2});
  visit(at(&Transformer::token_ids_), DType::I32, {T});
  visit(at(&Transformer::positions_), DType::I32, {T});
  visit(at(&Transformer::slots_), DType::I32, {T});
  visit(at(&Transformer::residual_), d.residual, {T, c.hidden_size});
  visit(at(&Transformer::normed_), d.activations, {T, c.hidden_size});
  visit(at(&Transformer::qkv_), d.activations, {T, c.q_size() + 2 * c.kv_size()});
  visit(at(&Transformer::q_), d.activations, {T, c.num_heads, c.head_dim});
  visit(at(&Transformer::attn_out_), d.activations, {T, c.q_size()});
  visit(at(&Transformer::gate_up_), d.activations, {T, 2 * c.intermediate_size});
  visit(at(&Transformer::final_hidden_), d.activations, {T, c.hidden_size});
  visit(at(&Transformer::logits_), DType::F32, {s.max_logit_rows, c.vocab_size});
  visit(at(&Transformer::next_tokens_), DType::I32, {s.max_logit_rows});
}

KvCacheShape Transformer::kv_shape(const ModelConfig& c, const ForwardShape& s, const ActivationDTypes& d,
                                   const AttentionPlan& a) {
  KvCacheShape shape{c.num_layers, c.num_kv_heads, s.kv_capacity, c.head_dim, d.kv_cache};
  if (a.sparse_enabled()) {
    const ops::SparseSelectParams p = a.select_params(c.head_dim, 0);
    shape.c1_capacity = std::max<int64_t>(1, ops::complete_kernels(s.kv_capacity, p.kernel_size, p.kernel_stride));
    if (p.uses_c2())
      shape.c2_capacity =
          std::max<int64_t>(1, ops::complete_kernels(s.kv_capacity, p.c2_kernel_size(), p.c2_kernel_stride()));
  }
  return shape;
}

namespace {
int64_t block_list_width(const ModelConfig& c, const AttentionPlan& a) {
  return a.sparse_enabled() ? a.select_params(c.head_dim, 0).max_blocks() : 0;
}
}  // namespace

void Transformer::plan(const ModelConfig& c, const ForwardShape& s, const ActivationDTypes& d, ArenaPlan& plan,
                       const AttentionPlan& a) {
  if (s.kv_capacity > 0) KvCache::plan(kv_shape(c, s, d, a), plan);
  visit_buffers(c, s, d, nullptr,
                [&](Tensor*, DType dtype, std::initializer_list<int64_t> shape) { plan.add(dtype, shape); });
  if (a.sparse_enabled()) plan.add(DType::I32, {c.num_kv_heads, s.max_tokens, block_list_width(c, a)});
}

Transformer::Transformer(const ModelConfig& c, ModelWeights weights, const ForwardShape& s, const ActivationDTypes& d,
                         Arena& arena, const AttentionPlan& a)
    : config_(c), attention_(a), weights_(std::move(weights)), shape_(s) {
  SPECULA_CHECK(s.max_tokens >= 1 && s.max_logit_rows >= 1 && s.max_logit_rows <= s.max_tokens,
                "forward shape: need 1 <= max_logit_rows <= max_tokens");
  SPECULA_CHECK(s.kv_capacity >= 1, "forward shape: KV capacity must be at least 1");
  SPECULA_CHECK(arena.device() == device(), "transformer buffers and weights must share a device");
  kv_ = KvCache(kv_shape(c, s, d, a), arena);
  visit_buffers(c, s, d, this, [&](Tensor* target, DType dtype, std::initializer_list<int64_t> shape) {
    *target = arena.alloc(dtype, shape);
  });
  if (a.sparse_enabled()) blocks_ = arena.alloc(DType::I32, {c.num_kv_heads, s.max_tokens, block_list_width(c, a)});

  const std::vector<float> inv_freq = c.rope_inv_freq();
  rope_.attention_scaling = c.rope_attention_scaling();
  if (device() == Device::CPU) {
    std::memcpy(rope_.inv_freq.data, inv_freq.data(), inv_freq.size() * sizeof(float));
  } else {
#ifdef SPECULA_WITH_CUDA
    cuda_copy_to_device(rope_.inv_freq.data, inv_freq.data(), inv_freq.size() * sizeof(float));
#endif
  }
}

Tensor Transformer::block_lists(int64_t tokens) const {
  if (blocks_.empty()) return {};
  return Tensor(blocks_.data, DType::I32, {blocks_.dim(0), tokens, blocks_.dim(2)}, blocks_.device);
}

bool Transformer::sparse_path(int64_t max_position, int64_t prefill_end) const {
  if (!attention_.sparse_enabled()) return false;
  // A prompt's tokens sit below its prefill_end; a prompt that does not reach the switch keeps
  // sparse_from at the per-token switch, which all of them are below.
  const int64_t reach = max_position >= 0 ? max_position : prefill_end > 0 ? prefill_end - 1 : -1;
  return reach < 0 || reach >= attention_.select_params(config_.head_dim, prefill_end).sparse_from;
}

void Transformer::forward(ops::OpContext& ctx, int64_t tokens, int64_t logit_rows, const ops::AttentionMask& mask,
                          int64_t prefill_end, int64_t max_position) {
  SPECULA_CHECK(tokens >= 1 && tokens <= shape_.max_tokens, "forward: ", tokens, " tokens, but buffers hold ",
                shape_.max_tokens);
  SPECULA_CHECK(logit_rows >= 0 && logit_rows <= std::min(tokens, shape_.max_logit_rows), "forward: ", logit_rows,
                " logit rows asked for ", tokens, " tokens (buffer holds ", shape_.max_logit_rows, ")");
  const ModelConfig& c = config_;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float residual_scale = static_cast<float>(c.residual_scale);
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  Tensor ids = token_ids_.slice_outer(0, tokens), pos = positions_.slice_outer(0, tokens),
         slots = slots_.slice_outer(0, tokens);
  Tensor x = residual_.slice_outer(0, tokens), h = normed_.slice_outer(0, tokens), qkv = qkv_.slice_outer(0, tokens),
         q = q_.slice_outer(0, tokens), a = attn_out_.slice_outer(0, tokens),
         gu = gate_up_.slice_outer(0, tokens), fin = final_hidden_.slice_outer(0, tokens);

  // InfLLM-V2: the block lists are computed per layer into blocks ([n_kv, tokens, W], packed for
  // this call's token count). A CPU call whose every token sits below the switch runs dense
  // attention but still compresses its keys.
  const ops::SparseSelectParams sparse_params = attention_.select_params(c.head_dim, prefill_end);
  const bool sparse = attention_.sparse_enabled() && [&] {
    if (device() != Device::CPU) return sparse_path(max_position, prefill_end);
    const int32_t* p_host = pos.as<const int32_t>();
    return *std::max_element(p_host, p_host + tokens) >= sparse_params.sparse_from;
  }();
  Tensor blocks = block_lists(tokens);
  const ops::AttentionMask sparse_mask = sparse ? mask.with_blocks(blocks, sparse_params.block_size) : mask;

  ops::embedding(ctx, weights_.embed, ids, static_cast<float>(c.scale_emb), x);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    Tensor& k_cache = kv_.k(l);
    Tensor& v_cache = kv_.v(l);
    ops::rms_norm_linear(ctx, x, w.input_norm, eps, w.qkv, w.qkv_bias, h, qkv);
    if (sparse) {
      ops::qkv_rope_store(ctx, qkv, w.q_norm, w.k_norm, eps, rope_, pos, slots, q, k_cache, v_cache);
      ops::CompressedKeys compressed = kv_.compressed(l);
      ops::compress_keys(ctx, k_cache, slots, mask, sparse_params, compressed);
      ops::sparse_select(ctx, q, k_cache, compressed, pos, slots, mask, sparse_params, blocks);
      if (block_observer_) block_observer_(l, pos, blocks);
      ops::attention(ctx, q, k_cache, v_cache, slots, attn_scale, a, sparse_mask);
    } else {
      ops::qkv_attention(ctx, qkv, w.q_norm, w.k_norm, eps, rope_, pos, slots, attn_scale, q, k_cache, v_cache, a,
                         mask);
      // A dense call of a sparse-capable model still keeps the compressed keys current: the rows
      // it wrote may replace ones an earlier sequence compressed (a new request from row 0).
      if (attention_.sparse_enabled()) {
        ops::CompressedKeys compressed = kv_.compressed(l);
        ops::compress_keys(ctx, k_cache, slots, mask, sparse_params, compressed);
      }
    }
    ops::linear(ctx, a, w.o_proj, Tensor(), x, residual_scale, ops::OutputMode::Accumulate);
    ops::rms_norm_linear(ctx, x, w.post_attention_norm, eps, w.gate_up, Tensor(), h, gu);
    ops::linear_swiglu(ctx, gu, w.down, x, residual_scale, ops::OutputMode::Accumulate);
  }
  ops::rms_norm(ctx, x, weights_.final_norm, eps, fin);
  if (logit_rows > 0) {
    Tensor last = fin.slice_outer(tokens - logit_rows, logit_rows);
    Tensor out = logits_.slice_outer(0, logit_rows);
    ops::linear(ctx, last, weights_.lm_head, Tensor(), out, static_cast<float>(c.logit_scale));
  }
}

}  // namespace specula::model
