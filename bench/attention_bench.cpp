// specula_attention_bench: speed of the CUDA attention kernels against the two ceilings that
// bound them. Decode (one token, 32 query heads over 8 KV heads, head_dim 128, BF16 cache) runs
// ops::qkv_attention as the engine does (RoPE, cache store and attention from the QKV output),
// once with the fused decode kernel and once with the separate kernels, and is reported as
// microseconds per call and GB/s of K/V read, as a share of a device-to-device copy measured in
// the same run; prefill (ops::attention, T = 4096, causal) as TFLOP/s counting
// 2 * 2 * T * T / 2 * head_dim * heads.
//
// Method: CUDA events around the timed region, warm-up first, median of repeats. Decode calls are
// captured in a CUDA graph (as the engine runs them), one call per "layer" over enough distinct
// caches that the data read per replay is several times the L2 cache, so the numbers are DRAM
// numbers, not L2 ones. Decode runs twice per length: with capacity equal to the context, and in
// a 32768-row cache (the engine's case: the grid is sized from the capacity, the work from the
// slot in device memory).
//
// Block-sparse (InfLLM-V2) attention against dense attention in the same run, per layer, bf16,
// head_dim 128, at contexts 16k/32k/64k/128k in a 131072-row cache, for the MiniCPM4-8B shape
// (32 query heads over 2 KV heads) and the Llama-3-8B shape (32 over 8): decode (one token; a
// graph of one call per layer over distinct caches and lists, sized so that the SPARSE reads are
// several times L2) and a 2048-token prefill chunk ending at the context. Every list has 96
// blocks of 64 rows (the MiniCPM4.1 setting: init block 0, the 32 local blocks ending at the
// query's own block, 63 others drawn at random). Prefill is run with two list patterns that
// bracket real selections: "shared" (the tokens of one 64-token block share their drawn blocks,
// so a tile's tokens list the same 96 blocks) and "independent" (each token draws its own, so a
// tile walks a union of up to 64 x 63 + 33 blocks); real lists of adjacent tokens overlap heavily.
//
// Usage: specula_attention_bench [--json PATH] [--repeats N] [--only SECTION,...]
//   sections: dense-decode, dense-prefill, sparse-decode, sparse-prefill
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "specula/core/dtype.h"
#include "bench_common.h"
#include "specula/core/cuda_memory.h"
#include "specula/core/error.h"
#include "specula/core/tensor.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/ops.h"

using namespace specula;
using namespace specula::bench;

namespace {

constexpr int kDefaultRepeats = 30;
constexpr size_t kMaxRotationBytes = size_t{24} << 30;  // cap on memory spent on decode caches
constexpr int kL2Multiple = 4;                          // bytes read per replay vs L2 size

// The K and V views of one cache allocation holding K then V, each [n_kv, capacity, head_dim] bf16
// (the decode benches keep one such allocation per layer).
struct KvViews {
  Tensor k, v;
};

KvViews kv_views(void* base, int64_t n_kv, int64_t capacity, int64_t head_dim) {
  auto* k = static_cast<uint16_t*>(base);
  return {Tensor(k, DType::BF16, {n_kv, capacity, head_dim}, Device::CUDA),
          Tensor(k + n_kv * capacity * head_dim, DType::BF16, {n_kv, capacity, head_dim}, Device::CUDA)};
}

// Random bf16 values in [-1, 1) (never zeros: zeros can run faster than real data).
void fill_random_bf16(void* device, size_t count, uint64_t seed) {
  constexpr size_t kChunk = size_t{1} << 24;
  std::vector<uint16_t> host(std::min(count, kChunk));
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t done = 0; done < count; done += host.size()) {
    const size_t n = std::min(host.size(), count - done);
    for (size_t i = 0; i < n; ++i) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      const float u = static_cast<float>(state >> 40) / static_cast<float>(1ull << 24) * 2.0f - 1.0f;
      host[i] = f32_to_bf16(u);
    }
    check(cudaMemcpy(static_cast<uint16_t*>(device) + done, host.data(), n * 2, cudaMemcpyHostToDevice), "upload");
  }
}

struct DecodeResult {
  int context, capacity, n_heads, n_kv, head_dim, layers;
  bool fused;
  double us, gbps;
  std::string path;  // what qkv_attention ran
};

DecodeResult bench_decode(cuda::CudaContext& ctx, int context, int capacity, int n_heads, int n_kv, int head_dim,
                          bool fused, int repeats) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  const size_t cache_elems = static_cast<size_t>(n_kv) * capacity * head_dim;
  const size_t read_bytes = 2 * static_cast<size_t>(n_kv) * context * head_dim * 2;  // K and V, bf16
  const size_t layer_bytes = 2 * cache_elems * 2;
  const size_t want = static_cast<size_t>(kL2Multiple) * std::max<size_t>(ctx.info().l2_cache_bytes, 1);
  int layers = static_cast<int>(std::max<size_t>(1, (want + read_bytes - 1) / read_bytes));
  layers = static_cast<int>(std::min<size_t>(layers, std::max<size_t>(1, kMaxRotationBytes / layer_bytes)));

  std::vector<std::unique_ptr<DeviceMemory>> caches;
  for (int l = 0; l < layers; ++l) {
    caches.push_back(std::make_unique<DeviceMemory>(layer_bytes));
    // Only the rows a call reads need data; the rest of a large cache stays as allocated.
    for (int h = 0; h < n_kv; ++h)
      for (int kv = 0; kv < 2; ++kv) {
        auto* base = static_cast<uint16_t*>(caches.back()->get()) + kv * cache_elems +
                     static_cast<size_t>(h) * capacity * head_dim;
        fill_random_bf16(base, static_cast<size_t>(context) * head_dim, 17u * l + 3u * h + kv);
      }
  }
  const size_t q_elems = static_cast<size_t>(n_heads) * head_dim;
  const size_t qkv_elems = static_cast<size_t>(n_heads + 2 * n_kv) * head_dim;
  DeviceMemory qkv(qkv_elems * 2), q(q_elems * 2), out(q_elems * 2 * layers), slots(sizeof(int32_t)),
      positions(sizeof(int32_t)), inv_freq(static_cast<size_t>(head_dim / 2) * sizeof(float));
  fill_random_bf16(qkv.get(), qkv_elems, 99);
  const int32_t slot = context - 1;
  check(cudaMemcpy(slots.get(), &slot, sizeof slot, cudaMemcpyHostToDevice), "slots");
  check(cudaMemcpy(positions.get(), &slot, sizeof slot, cudaMemcpyHostToDevice), "positions");
  std::vector<float> freq(static_cast<size_t>(head_dim / 2));
  for (size_t i = 0; i < freq.size(); ++i)
    freq[i] = 1.0f / std::pow(500000.0f, 2.0f * static_cast<float>(i) / static_cast<float>(head_dim));
  check(cudaMemcpy(inv_freq.get(), freq.data(), freq.size() * sizeof(float), cudaMemcpyHostToDevice), "inv_freq");

  ops::OpContext op;
  op.cuda = &ctx;
  ctx.set_fused_decode_attention(fused);
  std::string path;
  Tensor tqkv(qkv.get(), DType::BF16, {1, static_cast<int64_t>(qkv_elems)}, Device::CUDA);
  Tensor tq(q.get(), DType::BF16, {1, n_heads, head_dim}, Device::CUDA);
  Tensor ts(slots.get(), DType::I32, {1}, Device::CUDA);
  Tensor tp(positions.get(), DType::I32, {1}, Device::CUDA);
  const ops::RopeParams rope{Tensor(inv_freq.get(), DType::F32, {head_dim / 2}, Device::CUDA), 1.0f};
  {
    KvViews kv = kv_views(caches[0]->get(), n_kv, capacity, head_dim);
    path = ops::cuda_impl::describe_qkv_attention(ctx, tqkv, tq, kv.k, kv.v);
  }
  const double ms = time_graph_ms(stream, repeats, [&] {
    for (int l = 0; l < layers; ++l) {
      KvViews kv = kv_views(caches[static_cast<size_t>(l)]->get(), n_kv, capacity, head_dim);
      Tensor to(static_cast<uint16_t*>(out.get()) + l * q_elems, DType::BF16, {1, n_heads * head_dim}, Device::CUDA);
      ops::qkv_attention(op, tqkv, Tensor(), Tensor(), 1e-6f, rope, tp, ts,
                         1.0f / std::sqrt(static_cast<float>(head_dim)), tq, kv.k, kv.v, to);
    }
  });
  ctx.set_fused_decode_attention(true);
  ctx.check_device_errors();
  const double us = ms * 1e3 / layers;
  return {context, capacity, n_heads, n_kv, head_dim, layers, fused, us,
          static_cast<double>(read_bytes) / (us * 1e-6) / 1e9, path};
}

struct PrefillResult {
  int tokens, n_heads, n_kv, head_dim;
  double ms, tflops;
};

PrefillResult bench_prefill(cuda::CudaContext& ctx, int tokens, int n_heads, int n_kv, int head_dim, int repeats) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  const size_t q_elems = static_cast<size_t>(tokens) * n_heads * head_dim;
  const size_t cache_elems = static_cast<size_t>(n_kv) * tokens * head_dim;
  DeviceMemory q(q_elems * 2), k(cache_elems * 2), v(cache_elems * 2), out(q_elems * 2), slots(tokens * 4);
  fill_random_bf16(q.get(), q_elems, 1);
  fill_random_bf16(k.get(), cache_elems, 2);
  fill_random_bf16(v.get(), cache_elems, 3);
  std::vector<int32_t> host_slots(static_cast<size_t>(tokens));
  for (int t = 0; t < tokens; ++t) host_slots[static_cast<size_t>(t)] = t;
  check(cudaMemcpy(slots.get(), host_slots.data(), host_slots.size() * 4, cudaMemcpyHostToDevice), "slots");
  ops::OpContext op;
  op.cuda = &ctx;
  Tensor tq(q.get(), DType::BF16, {tokens, n_heads, head_dim}, Device::CUDA);
  Tensor tk(k.get(), DType::BF16, {n_kv, tokens, head_dim}, Device::CUDA);
  Tensor tv(v.get(), DType::BF16, {n_kv, tokens, head_dim}, Device::CUDA);
  Tensor ts(slots.get(), DType::I32, {tokens}, Device::CUDA);
  Tensor to(out.get(), DType::BF16, {tokens, n_heads * head_dim}, Device::CUDA);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const double ms = time_ms(stream, repeats, [&] { ops::attention(op, tq, tk, tv, ts, scale, to); });
  ctx.check_device_errors();
  const double flops = 2.0 * 2.0 * tokens * static_cast<double>(tokens) / 2.0 * head_dim * n_heads;
  return {tokens, n_heads, n_kv, head_dim, ms, flops / (ms * 1e-3) / 1e12};
}

// ---- block-sparse (InfLLM-V2) against dense ------------------------------------------------

constexpr int kSparseBlock = 64;      // rows per block
constexpr int kSparseWidth = 96;      // blocks per list: 1 init + 32 local + 63 drawn
constexpr int kSparseLocal = 32;
constexpr int kSparseCapacity = 131072;
constexpr int kSparseHeadDim = 128;

// Lists [n_kv, tokens, 96] for queries at positions first .. first + tokens - 1 (see the header).
std::vector<int32_t> sparse_lists(int n_kv, int tokens, int first, bool shared, std::mt19937& rng) {
  std::vector<int32_t> all(static_cast<size_t>(n_kv) * tokens * kSparseWidth);
  for (int h = 0; h < n_kv; ++h) {
    std::vector<int32_t> drawn;
    int drawn_for = -1;
    for (int t = 0; t < tokens; ++t) {
      const int own = (first + t) / kSparseBlock;
      const int local0 = own - kSparseLocal + 1;  // first local block; the drawn ones lie in [1, local0)
      SPECULA_CHECK(local0 > kSparseWidth, "sparse bench: context too short for 96 distinct blocks");
      if (!shared || own != drawn_for) {
        drawn.clear();
        std::uniform_int_distribution<int32_t> pick(1, local0 - 1);
        while (static_cast<int>(drawn.size()) < kSparseWidth - 1 - kSparseLocal) {
          const int32_t b = pick(rng);
          if (std::find(drawn.begin(), drawn.end(), b) == drawn.end()) drawn.push_back(b);
        }
        drawn_for = own;
      }
      int32_t* list = all.data() + (static_cast<size_t>(h) * tokens + t) * kSparseWidth;
      list[0] = 0;
      std::copy(drawn.begin(), drawn.end(), list + 1);
      for (int i = 0; i < kSparseLocal; ++i) list[1 + drawn.size() + i] = local0 + i;
      std::sort(list, list + kSparseWidth);
    }
  }
  return all;
}

struct SparseDecodeResult {
  double dense_us, sparse_us;
  int layers;
};

SparseDecodeResult bench_sparse_decode(cuda::CudaContext& ctx, int context, int n_heads, int n_kv, int repeats) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  constexpr int hd = kSparseHeadDim, cap = kSparseCapacity;
  const size_t cache_elems = static_cast<size_t>(n_kv) * cap * hd;
  const size_t layer_bytes = 2 * cache_elems * 2;
  const size_t sparse_read = 2 * static_cast<size_t>(n_kv) * kSparseWidth * kSparseBlock * hd * 2;
  const size_t want = static_cast<size_t>(kL2Multiple) * std::max<size_t>(ctx.info().l2_cache_bytes, 1);
  int layers = static_cast<int>(std::min<size_t>(32, (want + sparse_read - 1) / sparse_read));
  layers = static_cast<int>(std::max<size_t>(1, std::min<size_t>(layers, kMaxRotationBytes / layer_bytes)));

  ops::OpContext op;
  op.cuda = &ctx;
  std::mt19937 rng(static_cast<uint32_t>(context + n_kv));
  std::vector<std::unique_ptr<DeviceMemory>> caches, lists;
  for (int l = 0; l < layers; ++l) {
    caches.push_back(std::make_unique<DeviceMemory>(layer_bytes));
    Tensor all(caches.back()->get(), DType::BF16, {2 * static_cast<int64_t>(cache_elems)}, Device::CUDA);
    ops::fill_random(op, all, 1000u + static_cast<uint64_t>(l), 1.0f);
    const std::vector<int32_t> host = sparse_lists(n_kv, 1, context - 1, true, rng);
    lists.push_back(std::make_unique<DeviceMemory>(host.size() * 4));
    check(cudaMemcpy(lists.back()->get(), host.data(), host.size() * 4, cudaMemcpyHostToDevice), "lists");
  }
  const size_t q_elems = static_cast<size_t>(n_heads) * hd;
  DeviceMemory q(q_elems * 2), out(q_elems * 2 * layers), slots(sizeof(int32_t));
  fill_random_bf16(q.get(), q_elems, 7);
  const int32_t slot = context - 1;
  check(cudaMemcpy(slots.get(), &slot, sizeof slot, cudaMemcpyHostToDevice), "slots");
  Tensor tq(q.get(), DType::BF16, {1, n_heads, hd}, Device::CUDA);
  Tensor ts(slots.get(), DType::I32, {1}, Device::CUDA);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  auto time_graph = [&](bool sparse) {
    const double ms = time_graph_ms(stream, repeats, [&] {
      for (int l = 0; l < layers; ++l) {
        KvViews kv = kv_views(caches[static_cast<size_t>(l)]->get(), n_kv, cap, hd);
        Tensor to(static_cast<uint16_t*>(out.get()) + l * q_elems, DType::BF16, {1, n_heads * hd}, Device::CUDA);
        Tensor tb(lists[static_cast<size_t>(l)]->get(), DType::I32, {n_kv, 1, kSparseWidth}, Device::CUDA);
        const ops::AttentionMask mask =
            sparse ? ops::AttentionMask::causal().with_blocks(tb, kSparseBlock) : ops::AttentionMask::causal();
        ops::attention(op, tq, kv.k, kv.v, ts, scale, to, mask);
      }
    });
    ctx.check_device_errors();
    return ms * 1e3 / layers;
  };
  const double dense = time_graph(false);
  const double sparse = time_graph(true);
  return {dense, sparse, layers};
}

struct SparsePrefillResult {
  double dense_ms, shared_ms, independent_ms;
  double independent_token_tiles_ms;  // the same lists with one token per block (16-row layout)
};

SparsePrefillResult bench_sparse_prefill(cuda::CudaContext& ctx, int context, int tokens, int n_heads, int n_kv,
                                         int repeats) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  constexpr int hd = kSparseHeadDim, cap = kSparseCapacity;
  const size_t cache_elems = static_cast<size_t>(n_kv) * cap * hd;
  const size_t q_elems = static_cast<size_t>(tokens) * n_heads * hd;
  DeviceMemory kv(2 * cache_elems * 2), q(q_elems * 2), out(q_elems * 2), slots(static_cast<size_t>(tokens) * 4),
      lists(static_cast<size_t>(n_kv) * tokens * kSparseWidth * 4);
  ops::OpContext op;
  op.cuda = &ctx;
  Tensor all(kv.get(), DType::BF16, {2 * static_cast<int64_t>(cache_elems)}, Device::CUDA);
  ops::fill_random(op, all, 77, 1.0f);
  fill_random_bf16(q.get(), q_elems, 8);
  std::vector<int32_t> host_slots(static_cast<size_t>(tokens));
  for (int t = 0; t < tokens; ++t) host_slots[static_cast<size_t>(t)] = context - tokens + t;
  check(cudaMemcpy(slots.get(), host_slots.data(), host_slots.size() * 4, cudaMemcpyHostToDevice), "slots");
  KvViews views = kv_views(kv.get(), n_kv, cap, hd);
  const Tensor& tk = views.k;
  const Tensor& tv = views.v;
  Tensor tq(q.get(), DType::BF16, {tokens, n_heads, hd}, Device::CUDA);
  Tensor ts(slots.get(), DType::I32, {tokens}, Device::CUDA);
  Tensor to(out.get(), DType::BF16, {tokens, n_heads * hd}, Device::CUDA);
  Tensor tb(lists.get(), DType::I32, {n_kv, tokens, kSparseWidth}, Device::CUDA);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const double dense = time_ms(stream, repeats, [&] { ops::attention(op, tq, tk, tv, ts, scale, to); });
  std::mt19937 rng(static_cast<uint32_t>(context));
  double sparse[2];
  for (int shared = 1; shared >= 0; --shared) {
    const std::vector<int32_t> host = sparse_lists(n_kv, tokens, context - tokens, shared == 1, rng);
    check(cudaMemcpy(lists.get(), host.data(), host.size() * 4, cudaMemcpyHostToDevice), "lists");
    const ops::AttentionMask mask = ops::AttentionMask::causal().with_blocks(tb, kSparseBlock);
    sparse[shared] = time_ms(stream, repeats, [&] { ops::attention(op, tq, tk, tv, ts, scale, to, mask); });
  }
  // The independent lists once more with one token per block (CudaContext::sparse_token_tiles).
  const bool token_tiles = ctx.sparse_token_tiles();
  ctx.set_sparse_token_tiles(true);
  const ops::AttentionMask mask = ops::AttentionMask::causal().with_blocks(tb, kSparseBlock);
  const double one_token = time_ms(stream, repeats, [&] { ops::attention(op, tq, tk, tv, ts, scale, to, mask); });
  ctx.set_sparse_token_tiles(token_tiles);
  ctx.check_device_errors();
  return {dense, sparse[1], sparse[0], one_token};
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<BenchArgs> args = parse_bench_args(argc, argv, kDefaultRepeats);
  if (!args) return 2;
  const std::string& json_path = args->json_path;
  const int repeats = args->repeats;
  try {
    auto ctx = cuda::CudaContext::create();
    nlohmann::json report;
    report["device"] = ctx->info().name;
    report["repeats"] = repeats;
    const double copy = cuda_measure_copy_bandwidth(bench::kCopyBytes, repeats);
    report["copy_gbps"] = copy;
    std::printf("device: %s, %d SMs; device-to-device copy %.0f GB/s (read + write)\n", ctx->info().name.c_str(),
                ctx->info().multiprocessors, copy);

    std::printf("\ndecode (qkv_attention), bf16 cache, one token\n%8s %9s %6s %5s %7s %8s %10s %9s %8s\n", "context",
                "capacity", "heads", "kv", "layers", "kernel", "us/call", "GB/s", "of copy");
    struct DecodeShape {
      int context, capacity, n_heads, n_kv;
    };
    const DecodeShape decode_shapes[] = {
        {512, 512, 32, 8},     {512, 32768, 32, 8},   {1024, 32768, 32, 8}, {2048, 32768, 32, 8},
        {3072, 32768, 32, 8},  {4096, 32768, 32, 8},  {6144, 32768, 32, 8}, {8192, 8192, 32, 8},
        {8192, 32768, 32, 8},  {32768, 32768, 32, 8}, {32768, 32768, 32, 2},  // last: group 16 (MiniCPM4)
    };
    for (const DecodeShape& s : decode_shapes) {
      if (!args->wants("dense-decode")) break;
      for (bool fused : {true, false}) {
        const DecodeResult r = bench_decode(*ctx, s.context, s.capacity, s.n_heads, s.n_kv, 128, fused, repeats);
        std::printf("%8d %9d %6d %5d %7d %8s %10.2f %9.0f %7.1f%%  (%s)\n", r.context, r.capacity, r.n_heads,
                    r.n_kv, r.layers, fused ? "fused" : "3-kernel", r.us, r.gbps, 100.0 * r.gbps / copy,
                    r.path.c_str());
        report["decode"].push_back({{"context", r.context}, {"capacity", r.capacity}, {"n_heads", r.n_heads},
                                    {"n_kv", r.n_kv}, {"head_dim", r.head_dim}, {"layers", r.layers},
                                    {"kernel", fused ? "fused" : "unfused"}, {"path", r.path}, {"us", r.us},
                                    {"gbps", r.gbps},
                                    {"fraction_of_copy", r.gbps / copy}});
      }
    }

    std::printf("\nprefill, bf16, causal\n%6s %6s %5s %5s %10s %9s\n", "T", "heads", "kv", "hd", "ms", "TFLOP/s");
    for (int hd : {128, 64}) {
      if (!args->wants("dense-prefill")) break;
      const PrefillResult r = bench_prefill(*ctx, 4096, 32, 8, hd, repeats);
      std::printf("%6d %6d %5d %5d %10.3f %9.1f\n", r.tokens, r.n_heads, r.n_kv, r.head_dim, r.ms, r.tflops);
      report["prefill"].push_back({{"tokens", r.tokens}, {"n_heads", r.n_heads}, {"n_kv", r.n_kv},
                                   {"head_dim", r.head_dim}, {"ms", r.ms}, {"tflops", r.tflops}});
    }
    struct SparseShape {
      const char* name;
      int n_heads, n_kv;
    };
    const SparseShape sparse_shapes[] = {{"MiniCPM4-8B", 32, 2}, {"Llama-3-8B", 32, 8}};
    const int sparse_contexts[] = {16384, 32768, 65536, 131072};
    std::printf("\nblock-sparse (InfLLM-V2, 96 blocks of 64 rows per query) vs dense attention, bf16, hd 128, "
                "capacity %d, per layer\n%-12s %4s %8s %8s %7s %12s %12s %9s\n",
                kSparseCapacity, "shape", "kv", "context", "phase", "layers", "dense us", "sparse us", "speed-up");
    for (const SparseShape& sh : sparse_shapes) {
      for (int context : sparse_contexts) {
        if (!args->wants("sparse-decode")) break;
        const SparseDecodeResult r = bench_sparse_decode(*ctx, context, sh.n_heads, sh.n_kv, repeats);
        std::printf("%-12s %4d %8d %8s %7d %12.2f %12.2f %8.2fx\n", sh.name, sh.n_kv, context, "decode", r.layers,
                    r.dense_us, r.sparse_us, r.dense_us / r.sparse_us);
        report["sparse_decode"].push_back({{"shape", sh.name}, {"n_heads", sh.n_heads}, {"n_kv", sh.n_kv},
                                           {"context", context}, {"capacity", kSparseCapacity},
                                           {"layers", r.layers}, {"dense_us", r.dense_us},
                                           {"sparse_us", r.sparse_us}, {"speedup", r.dense_us / r.sparse_us}});
      }
    }
    std::printf("\n%-12s %4s %8s %8s %12s %12s %9s %15s %9s %15s %9s\n", "shape", "kv", "context", "chunk", "dense ms",
                "shared ms", "speed-up", "independent ms", "speed-up", "1-token tiles", "speed-up");
    for (const SparseShape& sh : sparse_shapes) {
      for (int context : sparse_contexts) {
        if (!args->wants("sparse-prefill")) break;
        constexpr int kChunk = 2048;
        const SparsePrefillResult r = bench_sparse_prefill(*ctx, context, kChunk, sh.n_heads, sh.n_kv, repeats);
        std::printf("%-12s %4d %8d %8d %12.3f %12.3f %8.2fx %15.3f %8.2fx %15.3f %8.2fx\n", sh.name, sh.n_kv, context,
                    kChunk, r.dense_ms, r.shared_ms, r.dense_ms / r.shared_ms, r.independent_ms,
                    r.dense_ms / r.independent_ms, r.independent_token_tiles_ms,
                    r.dense_ms / r.independent_token_tiles_ms);
        report["sparse_prefill"].push_back(
            {{"shape", sh.name}, {"n_heads", sh.n_heads}, {"n_kv", sh.n_kv}, {"context", context},
             {"chunk", kChunk}, {"dense_ms", r.dense_ms}, {"sparse_shared_ms", r.shared_ms},
             {"sparse_independent_ms", r.independent_ms}, {"speedup_shared", r.dense_ms / r.shared_ms},
             {"speedup_independent", r.dense_ms / r.independent_ms},
             {"sparse_independent_token_tiles_ms", r.independent_token_tiles_ms},
             {"speedup_independent_token_tiles", r.dense_ms / r.independent_token_tiles_ms}});
      }
    }
    if (!json_path.empty()) {
      std::ofstream f(json_path);
      SPECULA_CHECK(f.good(), "cannot write ", json_path);
      f << report.dump(2) << "\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
