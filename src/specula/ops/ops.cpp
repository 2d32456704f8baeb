// Dispatch of ops/ops.h: validates shapes, dtypes and devices once for both backends, then calls
// the CPU reference or the CUDA kernel. The checks read only tensor metadata (host side), so they
// are safe during CUDA graph capture.
#include "specula/ops/ops.h"

#include <vector>

#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/cpu_ops.h"
#include "specula/ops/op_checks.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/top_k.h"
// Wraps a call of the CUDA implementation; `c` names the CudaContext inside `call`.
#define SPECULA_ON_CUDA(call) [&](cuda::CudaContext& c) { cuda_impl::call; }
#else
#define SPECULA_ON_CUDA(call) [&](auto&) {}
#endif

namespace specula::ops {

namespace {
template <typename CpuFn, typename CudaFn>
void dispatch(std::string_view op, OpContext& ctx, Device device, CpuFn&& on_cpu, CudaFn&& on_cuda) {
  if (ctx.profiler) {
    OpProfiler* profiler = ctx.profiler;
    ctx.profiler = nullptr;  // one level: an op built from other ops is timed as itself
    profiler->begin(op);
    dispatch(op, ctx, device, on_cpu, on_cuda);
    profiler->end(op);
    ctx.profiler = profiler;
    return;
  }
  if (device == Device::CPU) {
    SPECULA_CHECK(ctx.pool != nullptr, op, ": CPU tensors but no thread pool in the op context");
    on_cpu(*ctx.pool);
    return;
  }
#ifdef SPECULA_WITH_CUDA
  SPECULA_CHECK(ctx.cuda != nullptr, op, ": CUDA tensors but no CUDA context in the op context");
  on_cuda(*ctx.cuda);
#else
  (void)on_cuda;
  fail(op, ": CUDA tensors but this build has no CUDA backend");
#endif
}

// The CPU reference computes with F32 activations and caches only.
void check_cpu_f32(std::string_view op, Device device, std::initializer_list<const Tensor*> tensors) {
  if (device != Device::CPU) return;
  for (const Tensor* t : tensors)
    if (!t->empty())
      SPECULA_CHECK(t->dtype == DType::F32, op, ": the CPU backend needs F32 activations, got ", t->shape_string());
}

void check_same_shape(std::string_view op, const char* a_name, const Tensor& a, const char* b_name, const Tensor& b) {
  bool same = a.rank == b.rank;
  for (int i = 0; same && i < a.rank; ++i) same = a.dim(i) == b.dim(i);
  SPECULA_CHECK(same, op, ": ", a_name, " ", a.shape_string(), " and ", b_name, " ", b.shape_string(),
                " must have the same shape");
}

// K and V caches: float, [n_kv, capacity, head_dim], the same shape and dtype.
void check_kv_caches(std::string_view op, const Tensor& k_cache, const Tensor& v_cache) {
  check_float(op, "k_cache", k_cache);
  check_rank(op, "k_cache", k_cache, 3);
  check_same_shape(op, "k_cache", k_cache, "v_cache", v_cache);
  SPECULA_CHECK(k_cache.dtype == v_cache.dtype, op, ": k_cache and v_cache dtypes differ");
}

// Argument checks of qkv_rope_store (also qkv_attention's); returns the operands' device.
Device check_qkv_rope_store(std::string_view op, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm,
                            const RopeParams& rope, const Tensor& positions, const Tensor& slots, const Tensor& q_out,
                            const Tensor& k_cache, const Tensor& v_cache) {
  check_float(op, "qkv", qkv);
  check_rank(op, "qkv", qkv, 2);
  check_float(op, "q_out", q_out);
  check_rank(op, "q_out", q_out, 3);
  check_kv_caches(op, k_cache, v_cache);
  const int64_t tokens = qkv.dim(0), n_heads = q_out.dim(1), hd = q_out.dim(2), n_kv = k_cache.dim(0);
  check_dim(op, "q_out", q_out, 0, tokens);
  check_dim(op, "k_cache", k_cache, 2, hd);
  SPECULA_CHECK(hd % 2 == 0, op, ": head_dim ", hd, " must be even for RoPE");
  check_dim(op, "qkv", qkv, 1, (n_heads + 2 * n_kv) * hd);
  check_dtype(op, "positions", positions, DType::I32);
  check_dtype(op, "slots", slots, DType::I32);
  SPECULA_CHECK(positions.numel() == tokens && slots.numel() == tokens, op, ": positions ", positions.shape_string(),
                " and slots ", slots.shape_string(), " must have ", tokens, " entries");
  check_dtype(op, "rope.inv_freq", rope.inv_freq, DType::F32);
  SPECULA_CHECK(rope.inv_freq.numel() == hd / 2, op, ": rope.inv_freq ", rope.inv_freq.shape_string(), " must have ",
                hd / 2, " entries");
  SPECULA_CHECK(q_norm.empty() == k_norm.empty(), op, ": q_norm and k_norm must be given together");
  if (!q_norm.empty()) {
    check_float(op, "q_norm", q_norm);
    check_float(op, "k_norm", k_norm);
    SPECULA_CHECK(q_norm.numel() == hd && k_norm.numel() == hd, op, ": q_norm/k_norm must have head_dim ", hd,
                  " entries");
  }
  const Device device =
      common_device(op, {&qkv, &q_norm, &k_norm, &rope.inv_freq, &positions, &slots, &q_out, &k_cache, &v_cache});
  check_cpu_f32(op, device, {&qkv, &q_out, &k_cache, &v_cache});
  return device;
}

// Argument checks of attention (also qkv_attention's, with q_out as q); returns the device.
Device check_attention(std::string_view op, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                       const Tensor& slots, const Tensor& out, const AttentionMask& mask) {
  check_float(op, "q", q);
  check_rank(op, "q", q, 3);
  check_kv_caches(op, k_cache, v_cache);
  const int64_t tokens = q.dim(0), n_heads = q.dim(1), hd = q.dim(2), n_kv = k_cache.dim(0);
  check_dim(op, "k_cache", k_cache, 2, hd);
  SPECULA_CHECK(n_kv > 0 && n_heads % n_kv == 0, op, ": ", n_heads, " query heads are not a multiple of ", n_kv,
                " KV heads");
  check_dtype(op, "slots", slots, DType::I32);
  SPECULA_CHECK(slots.numel() == tokens, op, ": slots ", slots.shape_string(), " must have ", tokens, " entries");
  check_float(op, "out", out);
  SPECULA_CHECK(out.numel() == q.numel() && out.rows() == tokens, op, ": out ", out.shape_string(), " must be [",
                tokens, ", ", n_heads * hd, "]");
  if (mask.is_tree()) {
    check_dtype(op, "mask.tree_bits", mask.tree_bits, DType::I32);
    check_rank(op, "mask.tree_bits", mask.tree_bits, 2);
    SPECULA_CHECK(mask.width >= 1 && mask.width <= k_cache.dim(1), op, ": tree mask width ", mask.width,
                  " must be from 1 to the cache capacity ", k_cache.dim(1));
    check_dim(op, "mask.tree_bits", mask.tree_bits, 0, tokens);
    check_dim(op, "mask.tree_bits", mask.tree_bits, 1, AttentionMask::tree_words(mask.width));
  } else {
    SPECULA_CHECK(mask.width == 0, op, ": a causal mask has no width");
  }
  if (mask.is_sparse()) {
    check_dtype(op, "mask.blocks", mask.blocks, DType::I32);
    check_rank(op, "mask.blocks", mask.blocks, 3);
    check_dim(op, "mask.blocks", mask.blocks, 0, n_kv);
    check_dim(op, "mask.blocks", mask.blocks, 1, tokens);
    SPECULA_CHECK(mask.blocks.dim(2) >= 1 && mask.block_size >= 1, op, ": block lists need a block size and width");
  }
  const Device device = common_device(op, {&q, &k_cache, &v_cache, &slots, &out, &mask.tree_bits, &mask.blocks});
  check_cpu_f32(op, device, {&q, &k_cache, &v_cache, &out});
  return device;
}
}  // namespace

void embedding(OpContext& ctx, const Tensor& table, const Tensor& ids, float scale, Tensor& out) {
  constexpr std::string_view op = "embedding";
  check_float(op, "table", table);
  check_rank(op, "table", table, 2);
  check_dtype(op, "ids", ids, DType::I32);
  check_float(op, "out", out);
  SPECULA_CHECK(out.rows() == ids.numel() && out.row_size() == table.dim(1), op, ": out ", out.shape_string(),
                " must be [", ids.numel(), ", ", table.dim(1), "]");
  const Device device = common_device(op, {&table, &ids, &out});
  check_cpu_f32(op, device, {&out});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::embedding(p, table, ids, scale, out); },
           SPECULA_ON_CUDA(embedding(c, table, ids, scale, out)));
}

void rms_norm(OpContext& ctx, const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  constexpr std::string_view op = "rms_norm";
  check_float(op, "x", x);
  check_float(op, "weight", weight);
  check_float(op, "out", out);
  check_same_shape(op, "x", x, "out", out);
  SPECULA_CHECK(weight.numel() == x.row_size(), op, ": weight ", weight.shape_string(), " does not match x ",
                x.shape_string());
  const Device device = common_device(op, {&x, &weight, &out});
  check_cpu_f32(op, device, {&x, &out});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::rms_norm(p, x, weight, eps, out); },
           SPECULA_ON_CUDA(rms_norm(c, x, weight, eps, out)));
}

void add_rms_norm(OpContext& ctx, Tensor& residual, const Tensor& delta, float delta_scale, const Tensor& weight,
                  float eps, Tensor& out) {
  constexpr std::string_view op = "add_rms_norm";
  check_float(op, "residual", residual);
  check_float(op, "delta", delta);
  check_float(op, "weight", weight);
  check_float(op, "out", out);
  check_same_shape(op, "residual", residual, "delta", delta);
  check_same_shape(op, "residual", residual, "out", out);
  SPECULA_CHECK(weight.numel() == residual.row_size(), op, ": weight ", weight.shape_string(),
                " does not match residual ", residual.shape_string());
  const Device device = common_device(op, {&residual, &delta, &weight, &out});
  check_cpu_f32(op, device, {&residual, &delta, &out});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::add_rms_norm(p, residual, delta, delta_scale, weight, eps, out); },
           SPECULA_ON_CUDA(add_rms_norm(c, residual, delta, delta_scale, weight, eps, out)));
}

namespace {
void check_linear_operands(std::string_view op, const Tensor& x, const Tensor& weight, const Tensor& bias,
                           const Tensor& out) {
  check_float(op, "x", x);
  check_float(op, "weight", weight);
  check_rank(op, "weight", weight, 2);
  check_float(op, "out", out);
  SPECULA_CHECK(x.row_size() == weight.dim(1), op, ": x ", x.shape_string(), " does not match weight ",
                weight.shape_string());
  SPECULA_CHECK(out.rows() == x.rows() && out.row_size() == weight.dim(0), op, ": out ", out.shape_string(),
                " must be [", x.rows(), ", ", weight.dim(0), "]");
  if (!bias.empty()) {
    check_float(op, "bias", bias);
    SPECULA_CHECK(bias.numel() == weight.dim(0), op, ": bias ", bias.shape_string(), " does not match weight ",
                  weight.shape_string());
  }
}
}  // namespace

void linear(OpContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out, float alpha,
            OutputMode mode) {
  constexpr std::string_view op = "linear";
  check_linear_operands(op, x, weight, bias, out);
  const Device device = common_device(op, {&x, &weight, &bias, &out});
  check_cpu_f32(op, device, {&x, &out});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::linear(p, x, weight, bias, out, alpha, mode); },
           SPECULA_ON_CUDA(linear(c, x, weight, bias, out, alpha, mode)));
}

void rms_norm_linear(OpContext& ctx, const Tensor& x, const Tensor& norm_weight, float eps, const Tensor& weight,
                     const Tensor& bias, Tensor& normed, Tensor& out) {
  constexpr std::string_view op = "rms_norm_linear";
  check_linear_operands(op, x, weight, bias, out);
  check_float(op, "norm_weight", norm_weight);
  check_float(op, "normed", normed);
  check_same_shape(op, "x", x, "normed", normed);
  SPECULA_CHECK(norm_weight.numel() == x.row_size(), op, ": norm_weight ", norm_weight.shape_string(),
                " does not match x ", x.shape_string());
  const Device device = common_device(op, {&x, &norm_weight, &weight, &bias, &normed, &out});
  check_cpu_f32(op, device, {&x, &normed, &out});
  dispatch(op, ctx, device,
           [&](ThreadPool& p) {
             cpu::rms_norm(p, x, norm_weight, eps, normed);
             cpu::linear(p, normed, weight, bias, out, 1.0f, OutputMode::Overwrite);
           },
           SPECULA_ON_CUDA(rms_norm_linear(c, x, norm_weight, eps, weight, bias, normed, out)));
}

void qkv_rope_store(OpContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                    const RopeParams& rope, const Tensor& positions, const Tensor& slots, Tensor& q_out,
                    Tensor& k_cache, Tensor& v_cache) {
  constexpr std::string_view op = "qkv_rope_store";
  const Device device = check_qkv_rope_store(op, qkv, q_norm, k_norm, rope, positions, slots, q_out, k_cache, v_cache);
  dispatch(op, ctx, device,
           [&](ThreadPool& p) {
             cpu::qkv_rope_store(p, qkv, q_norm, k_norm, norm_eps, rope, positions, slots, q_out, k_cache, v_cache);
           },
           SPECULA_ON_CUDA(qkv_rope_store(c, qkv, q_norm, k_norm, norm_eps, rope, positions, slots, q_out, k_cache,
                                          v_cache)));
}

void attention(OpContext& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& slots,
               float scale, Tensor& out, const AttentionMask& mask) {
  constexpr std::string_view op = "attention";
  const Device device = check_attention(op, q, k_cache, v_cache, slots, out, mask);
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::attention(p, q, k_cache, v_cache, slots, scale, out, mask); },
           SPECULA_ON_CUDA(attention(c, q, k_cache, v_cache, slots, scale, out, mask)));
}

void qkv_attention(OpContext& ctx, const Tensor& qkv, const Tensor& q_norm, const Tensor& k_norm, float norm_eps,
                   const RopeParams& rope, const Tensor& positions, const Tensor& slots, float scale, Tensor& q_out,
                   Tensor& k_cache, Tensor& v_cache, Tensor& out, const AttentionMask& mask) {
  constexpr std::string_view op = "qkv_attention";
  const Device device = check_qkv_rope_store(op, qkv, q_norm, k_norm, rope, positions, slots, q_out, k_cache, v_cache);
  check_attention(op, q_out, k_cache, v_cache, slots, out, mask);  // its device check includes out and the mask
  dispatch(op, ctx, device,
           [&](ThreadPool& p) {
             cpu::qkv_rope_store(p, qkv, q_norm, k_norm, norm_eps, rope, positions, slots, q_out, k_cache, v_cache);
             cpu::attention(p, q_out, k_cache, v_cache, slots, scale, out, mask);
           },
           SPECULA_ON_CUDA(qkv_attention(c, qkv, q_norm, k_norm, norm_eps, rope, positions, slots, scale, q_out,
                                         k_cache, v_cache, out, mask)));
}

void kv_gather(OpContext& ctx, std::span<Tensor> caches, const Tensor& src_rows, const Tensor& dst_rows,
               const Tensor& count) {
  constexpr std::string_view op = "kv_gather";
  check_dtype(op, "src_rows", src_rows, DType::I32);
  check_dtype(op, "dst_rows", dst_rows, DType::I32);
  check_dtype(op, "count", count, DType::I32);
  SPECULA_CHECK(src_rows.numel() == dst_rows.numel(), op, ": src_rows ", src_rows.shape_string(), " and dst_rows ",
                dst_rows.shape_string(), " differ in length");
  SPECULA_CHECK(count.numel() == 1, op, ": count must hold one entry, got ", count.shape_string());
  std::vector<const Tensor*> operands = {&src_rows, &dst_rows, &count};
  for (const Tensor& cache : caches) {
    check_float(op, "cache", cache);
    check_rank(op, "cache", cache, 3);
    check_same_shape(op, "cache", cache, "the first cache", caches[0]);
    SPECULA_CHECK(cache.dtype == caches[0].dtype, op, ": the caches differ in dtype");
    operands.push_back(&cache);
  }
  const Device device = common_device(op, std::span<const Tensor* const>(operands));
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::kv_gather(p, caches, src_rows, dst_rows, count); },
           SPECULA_ON_CUDA(kv_gather(c, caches, src_rows, dst_rows, count)));
}

void silu_mul(OpContext& ctx, const Tensor& gate_up, Tensor& out) {
  constexpr std::string_view op = "silu_mul";
  check_float(op, "gate_up", gate_up);
  check_float(op, "out", out);
  SPECULA_CHECK(gate_up.rows() == out.rows() && gate_up.row_size() == 2 * out.row_size(), op, ": gate_up ",
                gate_up.shape_string(), " must be twice as wide as out ", out.shape_string());
  const Device device = common_device(op, {&gate_up, &out});
  check_cpu_f32(op, device, {&gate_up, &out});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::silu_mul(p, gate_up, out); },
           SPECULA_ON_CUDA(silu_mul(c, gate_up, out)));
}

void linear_swiglu(OpContext& ctx, const Tensor& gate_up, const Tensor& weight, Tensor& out, float alpha,
                   OutputMode mode) {
  constexpr std::string_view op = "linear_swiglu";
  check_float(op, "gate_up", gate_up);
  check_float(op, "weight", weight);
  check_rank(op, "weight", weight, 2);
  check_float(op, "out", out);
  SPECULA_CHECK(gate_up.row_size() == 2 * weight.dim(1), op, ": gate_up ", gate_up.shape_string(),
                " must have twice as many columns as weight ", weight.shape_string());
  SPECULA_CHECK(out.rows() == gate_up.rows() && out.row_size() == weight.dim(0), op, ": out ", out.shape_string(),
                " must be [", gate_up.rows(), ", ", weight.dim(0), "]");
  const Device device = common_device(op, {&gate_up, &weight, &out});
  check_cpu_f32(op, device, {&gate_up, &out});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::linear_swiglu(p, gate_up, weight, out, alpha, mode); },
           SPECULA_ON_CUDA(linear_swiglu(c, gate_up, weight, out, alpha, mode)));
}

void argmax(OpContext& ctx, const Tensor& logits, Tensor& out) {
  constexpr std::string_view op = "argmax";
  check_float(op, "logits", logits);
  check_dtype(op, "out", out, DType::I32);
  SPECULA_CHECK(out.numel() == logits.rows(), op, ": out ", out.shape_string(), " must have ", logits.rows(),
                " entries");
  const Device device = common_device(op, {&logits, &out});
  check_cpu_f32(op, device, {&logits});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::argmax(p, logits, out); },
           SPECULA_ON_CUDA(argmax(c, logits, out)));
}

void top_k_log_softmax(OpContext& ctx, const Tensor& logits, Tensor& values, Tensor& indices) {
  constexpr std::string_view op = "top_k_log_softmax";
  check_dtype(op, "logits", logits, DType::F32);
  check_rank(op, "logits", logits, 2);
  check_dtype(op, "values", values, DType::F32);
  check_dtype(op, "indices", indices, DType::I32);
  check_rank(op, "values", values, 2);
  check_same_shape(op, "values", values, "indices", indices);
  const int64_t k = values.dim(1);
  check_dim(op, "values", values, 0, logits.dim(0));
  SPECULA_CHECK(k >= 1 && k <= std::min(logits.dim(1), kMaxTopK), op, ": k = ", k, " must be from 1 to min(V = ",
                logits.dim(1), ", ", kMaxTopK, ")");
  const Device device = common_device(op, {&logits, &values, &indices});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::top_k_log_softmax(p, logits, values, indices); },
           SPECULA_ON_CUDA(top_k_log_softmax(c, logits, values, indices)));
}

void convert(OpContext& ctx, const Tensor& src, Tensor& dst) {
  constexpr std::string_view op = "convert";
  check_float(op, "src", src);
  check_float(op, "dst", dst);
  SPECULA_CHECK(src.numel() == dst.numel(), op, ": src ", src.shape_string(), " and dst ", dst.shape_string(),
                " differ in size");
  const Device device = common_device(op, {&src, &dst});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::convert(p, src, dst); },
           SPECULA_ON_CUDA(convert(c, src, dst)));
}

void fill_random(OpContext& ctx, Tensor& t, uint64_t seed, float scale) {
  constexpr std::string_view op = "fill_random";
  check_float(op, "t", t);
  const Device device = common_device(op, {&t});
  dispatch(op, ctx, device, [&](ThreadPool& p) { cpu::fill_random(p, t, seed, scale); },
           SPECULA_ON_CUDA(fill_random(c, t, seed, scale)));
}

}  // namespace specula::ops
