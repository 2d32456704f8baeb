// Dispatch of the InfLLM-V2 selection ops (ops/sparse_attention.h): checks parameters, shapes and
// devices from tensor metadata (host side, safe during graph capture), then runs the CPU
// reference or the CUDA kernels (ops/cuda/sparse_attention.cu).
#include "specula/ops/sparse_attention.h"

#include <string_view>

#include "specula/core/thread_pool.h"
#include "specula/ops/cpu/sparse_attention.h"
#include "specula/ops/op_checks.h"
#include "specula/ops/op_dispatch.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/sparse_attention.h"
#endif

namespace specula::ops {

namespace {

void check_params(std::string_view op, const SparseSelectParams& p) {
  SPECULA_CHECK(p.kernel_stride >= 1 && p.kernel_size == 2 * p.kernel_stride, op, ": kernel_size ", p.kernel_size,
                " must be twice kernel_stride ", p.kernel_stride, " (the pooling window assumes half-overlapping kernels)");
  SPECULA_CHECK(p.block_size >= p.kernel_stride && p.block_size % p.kernel_stride == 0, op, ": block_size ",
                p.block_size, " must be a multiple of kernel_stride ", p.kernel_stride);
  SPECULA_CHECK(p.init_blocks >= 0 && p.local_blocks >= 1 && p.topk >= 1, op,
                ": need init_blocks >= 0, at least one local block and topk >= 1");
}

Device check_compressed(std::string_view op, const Tensor& k_cache, const CompressedKeys& keys,
                        const SparseSelectParams& p) {
  check_float(op, "k_cache", k_cache);
  check_rank(op, "k_cache", k_cache, 3);
  const int64_t n_kv = k_cache.dim(0), capacity = k_cache.dim(1), hd = k_cache.dim(2);
  auto check_tier = [&](const char* what, const Tensor& t, int64_t size, int64_t stride) {
    check_dtype(op, what, t, k_cache.dtype);
    check_rank(op, what, t, 3);
    check_dim(op, what, t, 0, n_kv);
    check_dim(op, what, t, 2, hd);
    SPECULA_CHECK(t.dim(1) >= complete_kernels(capacity, size, stride), op, ": ", what, " ", t.shape_string(),
                  " cannot hold the kernels of ", capacity, " cache rows");
  };
  check_tier("c1", keys.c1, p.kernel_size, p.kernel_stride);
  if (p.uses_c2()) check_tier("c2", keys.c2, p.c2_kernel_size(), p.c2_kernel_stride());
  check_dtype(op, "rows", keys.rows, DType::I32);
  return common_device(op, {&k_cache, &keys.c1, &keys.c2, &keys.rows});
}

void check_slots(std::string_view op, const Tensor& slots, const AttentionMask& mask, int64_t tokens) {
  check_dtype(op, "slots", slots, DType::I32);
  SPECULA_CHECK(slots.numel() == tokens && tokens >= 1, op, ": slots ", slots.shape_string(), " must have ", tokens,
                " entries");
  if (mask.is_tree())
    SPECULA_CHECK(mask.width == tokens, op, ": a tree call must verify exactly its mask's ", mask.width,
                  " rows (got ", tokens, " queries)");
}


}  // namespace

void compress_keys(OpContext& ctx, const Tensor& k_cache, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, CompressedKeys& keys) {
  constexpr std::string_view op = "compress_keys";
  check_params(op, params);
  check_slots(op, slots, mask, slots.numel());
  const Device device = check_compressed(op, k_cache, keys, params);
  SPECULA_CHECK(common_device(op, {&k_cache, &slots}) == device, op, ": operands on different devices");
  run_on_device(op, ctx, device, [&](ThreadPool& p) { cpu::compress_keys(p, k_cache, slots, mask, params, keys); },
      [&]([[maybe_unused]] auto& c) {
#ifdef SPECULA_WITH_CUDA
        cuda_impl::compress_keys(c, k_cache, slots, mask, params, keys);
#endif
      });
}

void sparse_select(OpContext& ctx, const Tensor& q, const Tensor& k_cache, const CompressedKeys& keys,
                   const Tensor& positions, const Tensor& slots, const AttentionMask& mask,
                   const SparseSelectParams& params, Tensor& blocks) {
  constexpr std::string_view op = "sparse_select";
  check_params(op, params);
  check_float(op, "q", q);
  check_rank(op, "q", q, 3);
  const int64_t tokens = q.dim(0), n_heads = q.dim(1), n_kv = k_cache.dim(0);
  check_slots(op, slots, mask, tokens);
  check_dtype(op, "positions", positions, DType::I32);
  SPECULA_CHECK(positions.numel() == tokens, op, ": positions ", positions.shape_string(), " must have ", tokens,
                " entries");
  const Device device = check_compressed(op, k_cache, keys, params);
  check_dim(op, "q", q, 2, k_cache.dim(2));
  SPECULA_CHECK(n_heads % n_kv == 0, op, ": ", n_heads, " query heads are not a multiple of ", n_kv, " KV heads");
  check_dtype(op, "blocks", blocks, DType::I32);
  check_rank(op, "blocks", blocks, 3);
  check_dim(op, "blocks", blocks, 0, n_kv);
  check_dim(op, "blocks", blocks, 1, tokens);
  check_dim(op, "blocks", blocks, 2, params.max_blocks());
  SPECULA_CHECK(common_device(op, {&q, &k_cache, &positions, &slots, &blocks, &mask.tree_bits}) == device, op,
                ": operands on different devices");
  if (device == Device::CPU) SPECULA_CHECK(q.dtype == DType::F32, op, ": the CPU backend needs F32 queries");
  run_on_device(op, ctx, device,
      [&](ThreadPool& p) { cpu::sparse_select(p, q, k_cache, keys, positions, slots, mask, params, blocks); },
      [&]([[maybe_unused]] auto& c) {
#ifdef SPECULA_WITH_CUDA
        cuda_impl::sparse_select(c, q, k_cache, keys, positions, slots, mask, params, blocks);
#endif
      });
}

}  // namespace specula::ops
