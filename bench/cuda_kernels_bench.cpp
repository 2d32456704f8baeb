// specula_kernel_bench: speed of the CUDA linear op against the ceilings that bound it.
//  - copy:  a 1 GiB device-to-device copy, counting bytes read plus bytes written: the practical
//           memory-bandwidth ceiling every memory-bound number below is compared with;
//  - gemv:  ops::linear at decode token counts (T = 1, and a 4-token verification batch) on the
//           Llama-3-8B decode shapes, as GB/s of weights + activations moved and as a share of
//           the copy bandwidth;
//  - small-M: ops::linear at verification / draft-head token counts (T = 10, 16, 32, 60, 64, 128:
//           the small-M GEMM, gemm_small_m.cu) on the same shapes, the down projection also through
//           ops::linear_swiglu (silu_mul into the workspace, then the GEMM: the engine's path), and
//           the draft head's shapes at T = 10 (FR-Spec LM heads of 32k/16k/8k rows, the EAGLE fc),
//           as the weight-read rate (weight bytes / time; GB/s and share of the copy bandwidth:
//           the question is how close a 60-row product comes to one read of the weights) next to
//           cuBLASLt on the same call (the path these counts took before), and the speedup;
//  - gemm:  ops::linear at T = 4096 (cuBLASLt, bf16 in, fp32 accumulate, bf16 out) as TFLOP/s
//           for 4096^3 and the prefill shapes;
//  - top_k: ops::top_k_log_softmax at the EAGLE drafting shapes (about 10 frontier rows of a 32K
//           or 128K vocabulary, k = 10) and a few wider ones, per call, with the fp32 logits in L2
//           as they are in drafting (the draft LM head has just written them);
//  - sparse_select: InfLLM-V2 block selection (ops::sparse_select, bf16, head_dim 128, the
//           released init 1 / 32 local / top-64 config) at the MiniCPM4-8B shape (32 query heads
//           over 2 KV heads, both variants) and the Llama-3-8B shape (32 over 8), caches of 16K to
//           128K rows, for one decode token and a 2048-token prefill chunk: the whole op, stage 1
//           alone (its share), and compress_keys for the same call. Decode calls are captured in a
//           graph, one call per layer over distinct compressed caches, like the GEMVs.
//
// Method: CUDA events around the timed region, warm-up first, median of repeats. The GEMV calls
// are captured in a CUDA graph (as the engine runs them), one call per weight copy over enough
// copies that the bytes read per replay are several times the L2 cache, so weights come from
// DRAM and not L2. Inputs are random (ops::fill_random), never zeros.
//
// Usage: specula_kernel_bench [--json PATH] [--repeats N] [--only SECTION,...]
//   sections: topk, sparse-decode, sparse-prefill, gemv, small-m, gemm
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "specula/core/dtype.h"
#include "bench_common.h"
#include "specula/core/cuda_memory.h"
#include "specula/core/error.h"
#include "specula/core/tensor.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/linear_impl.h"
#include "specula/ops/cuda/sparse_attention.h"
#include "specula/ops/ops.h"
#include "specula/ops/sparse_attention.h"

using namespace specula;
using namespace specula::bench;

namespace {

constexpr int kDefaultRepeats = 50;
constexpr size_t kMaxRotationBytes = size_t{16} << 30;  // cap on memory spent on weight copies
constexpr int kL2Multiple = 4;                          // bytes read per replay vs L2 size
constexpr int64_t kPrefillTokens = 4096;
constexpr float kWeightScale = 0.02f;                   // typical magnitude of trained weights

// A device tensor with its own memory, filled with random values.
struct OwnedTensor {
  std::unique_ptr<DeviceMemory> memory;
  Tensor tensor;
};

OwnedTensor random_tensor(ops::OpContext& op, DType dtype, std::initializer_list<int64_t> shape, uint64_t seed,
                          float scale) {
  OwnedTensor t;
  Tensor probe(nullptr, dtype, shape, Device::CUDA);
  t.memory = std::make_unique<DeviceMemory>(probe.nbytes());
  t.tensor = Tensor(t.memory->get(), dtype, shape, Device::CUDA);
  ops::fill_random(op, t.tensor, seed, scale);
  return t;
}

OwnedTensor empty_tensor(DType dtype, std::initializer_list<int64_t> shape) {
  OwnedTensor t;
  Tensor probe(nullptr, dtype, shape, Device::CUDA);
  t.memory = std::make_unique<DeviceMemory>(probe.nbytes());
  t.tensor = Tensor(t.memory->get(), dtype, shape, Device::CUDA);
  return t;
}

struct Shape {
  const char* name;
  int64_t n, k;
};

// Llama-3-8B: fused QKV, o_proj, fused gate/up, down_proj, LM head.
const Shape kShapes[] = {{"qkv", 6144, 4096},
                         {"o_proj", 4096, 4096},
                         {"gate_up", 28672, 4096},
                         {"down", 4096, 14336},
                         {"lm_head", 128256, 4096}};

struct GemvResult {
  std::string name;
  int64_t tokens, n, k;
  int copies;
  double us, gbps, share_of_copy;
};

GemvResult bench_gemv(cuda::CudaContext& ctx, const Shape& s, int64_t tokens, double copy, int repeats) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  ops::OpContext op;
  op.cuda = &ctx;
  const DType out_dtype = std::strcmp(s.name, "lm_head") == 0 ? DType::F32 : DType::BF16;
  const size_t weight_bytes = static_cast<size_t>(s.n * s.k) * 2;
  const size_t moved = weight_bytes + static_cast<size_t>(tokens * s.k) * 2 +
                       static_cast<size_t>(tokens * s.n) * dtype_size(out_dtype);
  const int copies = rotation_copies(weight_bytes, ctx.info().l2_cache_bytes, kL2Multiple, kMaxRotationBytes, 2);

  std::vector<OwnedTensor> weights;
  for (int c = 0; c < copies; ++c)
    weights.push_back(random_tensor(op, DType::BF16, {s.n, s.k}, 1000u + static_cast<uint64_t>(c), kWeightScale));
  OwnedTensor x = random_tensor(op, DType::BF16, {tokens, s.k}, 7, 1.0f);
  OwnedTensor out = empty_tensor(out_dtype, {tokens, s.n});
  ctx.synchronize();

  const double ms = time_graph_ms(stream, repeats, [&] {
    for (int c = 0; c < copies; ++c)
      ops::linear(op, x.tensor, weights[static_cast<size_t>(c)].tensor, Tensor{}, out.tensor);
  });
  ctx.check_device_errors();
  const double us = ms * 1e3 / copies;
  const double gbps = static_cast<double>(moved) / (us * 1e-6) / 1e9;
  return {s.name, tokens, s.n, s.k, copies, us, gbps, gbps / copy};
}

// Median microseconds of one call, from a graph holding `copies` calls (call(c) enqueues the one
// on weight copy c) replayed `repeats` times; NaN when a call declines (returns false).
double graph_us_per_call(cuda::CudaContext& ctx, int copies, int repeats, const std::function<bool(int)>& call) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  bool all = true;
  const double ms = time_graph_ms(stream, repeats, [&] {
    for (int c = 0; c < copies; ++c) all = call(c) && all;
  });
  ctx.check_device_errors();
  return all ? ms * 1e3 / copies : std::nan("");
}

// How a small-M row runs: ops::linear on x, or ops::linear_swiglu on a [T, 2K] gate/up buffer.
enum class SmallMOp { Linear, Swiglu };

struct SmallMShape {
  const char* name;
  int64_t n, k;
  SmallMOp op;
  bool logits;  // an LM head: F32 out, as the engine has it
};

struct SmallMResult {
  std::string name;
  int64_t tokens, n, k;
  int copies;
  double us, weight_gbps, share_of_copy, cublaslt_us;
};

SmallMResult bench_small_m(cuda::CudaContext& ctx, const SmallMShape& s, int64_t tokens, double copy, int repeats) {
  ops::OpContext op;
  op.cuda = &ctx;
  const DType out_dtype = s.logits ? DType::F32 : DType::BF16;
  const size_t weight_bytes = static_cast<size_t>(s.n * s.k) * 2;
  const int copies = rotation_copies(weight_bytes, ctx.info().l2_cache_bytes, kL2Multiple, kMaxRotationBytes, 2);

  std::vector<OwnedTensor> weights;
  for (int c = 0; c < copies; ++c)
    weights.push_back(random_tensor(op, DType::BF16, {s.n, s.k}, 2000u + static_cast<uint64_t>(c), kWeightScale));
  const bool swiglu = s.op == SmallMOp::Swiglu;
  OwnedTensor x = random_tensor(op, DType::BF16, {tokens, swiglu ? 2 * s.k : s.k}, 17, 1.0f);
  OwnedTensor act = empty_tensor(DType::BF16, {tokens, s.k});  // cuBLASLt's SwiGLU input
  OwnedTensor out = empty_tensor(out_dtype, {tokens, s.n});
  ctx.synchronize();

  auto weight_of = [&](int c) -> const Tensor& { return weights[static_cast<size_t>(c)].tensor; };
  const double us = graph_us_per_call(ctx, copies, repeats, [&](int c) {
    if (swiglu)
      ops::linear_swiglu(op, x.tensor, weight_of(c), out.tensor);
    else
      ops::linear(op, x.tensor, weight_of(c), Tensor{}, out.tensor);
    return true;
  });
  const double lt_us = graph_us_per_call(ctx, copies, repeats, [&](int c) {
    if (swiglu) ops::silu_mul(op, x.tensor, act.tensor);
    return ops::cuda_impl::try_gemm_cublaslt(ctx, swiglu ? act.tensor : x.tensor, weight_of(c), Tensor{},
                                             out.tensor, 1.0f);
  });
  const double gbps = static_cast<double>(weight_bytes) / (us * 1e-6) / 1e9;
  return {s.name, tokens, s.n, s.k, copies, us, gbps, gbps / copy, lt_us};
}

struct GemmResult {
  std::string name;
  int64_t tokens, n, k;
  double ms, tflops;
};

GemmResult bench_gemm(cuda::CudaContext& ctx, const char* name, int64_t tokens, int64_t n, int64_t k, int repeats) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  ops::OpContext op;
  op.cuda = &ctx;
  OwnedTensor w = random_tensor(op, DType::BF16, {n, k}, 11, kWeightScale);
  OwnedTensor x = random_tensor(op, DType::BF16, {tokens, k}, 12, 1.0f);
  OwnedTensor out = empty_tensor(DType::BF16, {tokens, n});
  ctx.synchronize();
  const double ms = time_ms(stream, repeats, [&] { ops::linear(op, x.tensor, w.tensor, Tensor{}, out.tensor); });
  ctx.check_device_errors();
  const double flops = 2.0 * static_cast<double>(tokens) * static_cast<double>(n) * static_cast<double>(k);
  return {name, tokens, n, k, ms, flops / (ms * 1e-3) / 1e12};
}

struct TopKShape {
  int64_t rows, vocab, k;
};
const TopKShape kTopKShapes[] = {{10, 32768, 10}, {10, 128256, 10}, {10, 152064, 10}, {10, 128256, 64},
                                 {64, 32768, 10}, {200, 128256, 10}};

struct TopKResult {
  int64_t rows, vocab, k;
  double us, gbps;
};

// Per-call time of top_k_log_softmax from a graph of kTopKCalls calls on the same logits.
TopKResult bench_top_k(cuda::CudaContext& ctx, const TopKShape& s, int repeats) {
  constexpr int kTopKCalls = 20;
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  ops::OpContext op;
  op.cuda = &ctx;
  OwnedTensor logits = random_tensor(op, DType::F32, {s.rows, s.vocab}, 21, 8.0f);
  OwnedTensor values = empty_tensor(DType::F32, {s.rows, s.k});
  OwnedTensor indices = empty_tensor(DType::I32, {s.rows, s.k});
  ctx.synchronize();
  const double ms = time_graph_ms(stream, repeats, [&] {
    for (int c = 0; c < kTopKCalls; ++c) ops::top_k_log_softmax(op, logits.tensor, values.tensor, indices.tensor);
  });
  ctx.check_device_errors();
  const double us = ms * 1e3 / kTopKCalls;
  return {s.rows, s.vocab, s.k, us, static_cast<double>(logits.tensor.nbytes()) / (us * 1e-6) / 1e9};
}

struct SparseShape {
  const char* name;
  int64_t n_heads, n_kv;
  ops::SparseVariant variant;
};
const SparseShape kSparseShapes[] = {{"MiniCPM4-8B", 32, 2, ops::SparseVariant::MiniCPM4},
                                     {"MiniCPM4.1-8B", 32, 2, ops::SparseVariant::MiniCPM41},
                                     {"Llama-3-8B", 32, 8, ops::SparseVariant::MiniCPM41}};
const int64_t kSparseContexts[] = {16384, 32768, 65536, 131072};

struct SparseResult {
  std::string shape;
  int64_t context, tokens;
  int layers;
  double us, stage1_us, compress_us;
  std::string plan;
};

// ops::sparse_select for `tokens` queries ending at the last row of a `context`-row cache (and,
// timed apart, stage 1 alone and compress_keys for the same call). Decode (tokens 1): a graph of
// one call per layer over distinct compressed caches, enough that they exceed L2 several times;
// prefill: one call per repeat.
SparseResult bench_sparse_select(cuda::CudaContext& ctx, const SparseShape& shape, int64_t context, int64_t tokens,
                                 int repeats) {
  constexpr int64_t kHeadDim = 128;
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  ops::OpContext op;
  op.cuda = &ctx;
  ops::SparseSelectParams params;
  params.variant = shape.variant;
  params.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  const int64_t n1 = ops::complete_kernels(context, params.kernel_size, params.kernel_stride);
  const int64_t n2 = ops::complete_kernels(context, params.c2_kernel_size(), params.c2_kernel_stride());
  const size_t read_bytes = static_cast<size_t>(shape.n_kv * (n1 + (params.uses_c2() ? n2 : 0)) * kHeadDim) * 2;
  const size_t want = static_cast<size_t>(kL2Multiple) * std::max<size_t>(ctx.info().l2_cache_bytes, 1);
  const int layers =
      tokens == 1 ? static_cast<int>(std::clamp<size_t>((want + read_bytes - 1) / read_bytes, 2, 128)) : 1;

  OwnedTensor k = random_tensor(op, DType::BF16, {shape.n_kv, context, kHeadDim}, 31, 1.0f);
  OwnedTensor q = random_tensor(op, DType::BF16, {tokens, shape.n_heads, kHeadDim}, 32, 3.0f);
  std::vector<OwnedTensor> c1, c2, rows;
  for (int l = 0; l < layers; ++l) {
    c1.push_back(random_tensor(op, DType::BF16, {shape.n_kv, n1, kHeadDim}, 100u + static_cast<uint64_t>(l), 1.0f));
    if (params.uses_c2())
      c2.push_back(random_tensor(op, DType::BF16, {shape.n_kv, std::max<int64_t>(n2, 1), kHeadDim},
                                 500u + static_cast<uint64_t>(l), 1.0f));
    rows.push_back(empty_tensor(DType::I32, {1}));
  }
  std::vector<int32_t> host_pos(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) host_pos[static_cast<size_t>(t)] = static_cast<int32_t>(context - tokens + t);
  OwnedTensor pos = empty_tensor(DType::I32, {tokens});
  check(cudaMemcpy(pos.tensor.data, host_pos.data(), host_pos.size() * 4, cudaMemcpyHostToDevice), "positions");
  for (int l = 0; l < layers; ++l)
    check(cudaMemcpy(rows[static_cast<size_t>(l)].tensor.data, &host_pos[0], 4, cudaMemcpyHostToDevice), "rows");
  OwnedTensor blocks = empty_tensor(DType::I32, {shape.n_kv, tokens, params.max_blocks()});
  ctx.synchronize();
  auto keys_of = [&](int l) {
    ops::CompressedKeys keys;
    keys.c1 = c1[static_cast<size_t>(l)].tensor;
    if (params.uses_c2()) keys.c2 = c2[static_cast<size_t>(l)].tensor;
    keys.rows = rows[static_cast<size_t>(l)].tensor;
    return keys;
  };
  const ops::AttentionMask causal = ops::AttentionMask::causal();
  auto time_layers = [&](auto&& one_layer) {
    if (layers == 1) return time_ms(stream, repeats, [&] { one_layer(0); }) * 1e3;
    return time_graph_ms(stream, repeats, [&] {
             for (int l = 0; l < layers; ++l) one_layer(l);
           }) * 1e3 / layers;
  };
  const double us = time_layers([&](int l) {
    ops::CompressedKeys keys = keys_of(l);
    ops::sparse_select(op, q.tensor, k.tensor, keys, pos.tensor, pos.tensor, causal, params, blocks.tensor);
  });
  const double stage1_us = time_layers([&](int l) {
    ops::CompressedKeys keys = keys_of(l);
    ops::cuda_impl::sparse_select(ctx, q.tensor, k.tensor, keys, pos.tensor, pos.tensor, causal, params,
                                  blocks.tensor, true);
  });
  const double compress_us = time_layers([&](int l) {
    ops::CompressedKeys keys = keys_of(l);
    ops::compress_keys(op, k.tensor, pos.tensor, causal, params, keys);
  });
  ctx.check_device_errors();
  const ops::CompressedKeys keys = keys_of(0);
  return {shape.name, context, tokens, layers, us, stage1_us, compress_us,
          ops::cuda_impl::describe_sparse_select(ctx, q.tensor, k.tensor, keys, causal, params)};
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<BenchArgs> args = parse_bench_args(argc, argv, kDefaultRepeats);
  if (!args) return 2;
  const std::string& json_path = args->json_path;
  const int repeats = args->repeats;
  try {
    auto ctx = cuda::CudaContext::create();
    std::printf("device: %s, %d SMs, L2 %.0f MiB\n", ctx->info().name.c_str(), ctx->info().multiprocessors,
                static_cast<double>(ctx->info().l2_cache_bytes) / (1 << 20));

    const double copy = cuda_measure_copy_bandwidth(bench::kCopyBytes, repeats);
    std::printf("\ndevice-to-device copy (read + write): %.0f GB/s\n", copy);

    std::vector<TopKResult> top_k;
    if (args->wants("topk"))
      for (const TopKShape& s : kTopKShapes) top_k.push_back(bench_top_k(*ctx, s, repeats));
    std::printf("\ntop_k_log_softmax (fp32 logits in L2, graph of 20 calls)\n");
    std::printf("%5s %7s %3s %9s %8s\n", "rows", "vocab", "k", "us/call", "GB/s");
    for (const TopKResult& r : top_k)
      std::printf("%5lld %7lld %3lld %9.2f %8.0f\n", static_cast<long long>(r.rows), static_cast<long long>(r.vocab),
                  static_cast<long long>(r.k), r.us, r.gbps);

    std::vector<SparseResult> sparse;
    for (const SparseShape& shape : kSparseShapes)
      for (int64_t tokens : {int64_t{1}, int64_t{2048}})
        for (int64_t context : kSparseContexts)
          if (args->wants(tokens == 1 ? "sparse-decode" : "sparse-prefill"))
            sparse.push_back(bench_sparse_select(*ctx, shape, context, tokens, repeats));
    std::printf("\nsparse_select (InfLLM-V2 selection, bf16, hd 128, init 1 / local 32 / top 64; decode: graph over "
                "distinct caches)\n");
    std::printf("%-14s %7s %5s %6s %10s %10s %7s %11s  %s\n", "shape", "context", "T", "layers", "us/call", "stage 1",
                "share", "compress", "plan");
    for (const SparseResult& r : sparse)
      std::printf("%-14s %7lld %5lld %6d %10.2f %10.2f %6.0f%% %11.2f  %s\n", r.shape.c_str(),
                  static_cast<long long>(r.context), static_cast<long long>(r.tokens), r.layers, r.us, r.stage1_us,
                  100.0 * r.stage1_us / r.us, r.compress_us, r.plan.c_str());

    std::vector<GemvResult> gemv;
    for (int64_t tokens : {int64_t{1}, int64_t{4}})
      for (const Shape& s : kShapes)
        if (args->wants("gemv")) gemv.push_back(bench_gemv(*ctx, s, tokens, copy, repeats));
    std::printf("\nGEMV (ops::linear, bf16 W and x, fp32 accumulate)\n");
    std::printf("%-8s %3s %7s %6s %6s %9s %8s %7s\n", "shape", "T", "N", "K", "copies", "us/call", "GB/s", "%copy");
    for (const GemvResult& r : gemv)
      std::printf("%-8s %3lld %7lld %6lld %6d %9.2f %8.0f %6.1f%%\n", r.name.c_str(), static_cast<long long>(r.tokens),
                  static_cast<long long>(r.n), static_cast<long long>(r.k), r.copies, r.us, r.gbps,
                  100.0 * r.share_of_copy);

    std::vector<SmallMResult> small_m;
    const SmallMShape kSmallMShapes[] = {{"qkv", 6144, 4096, SmallMOp::Linear, false},
                                         {"o_proj", 4096, 4096, SmallMOp::Linear, false},
                                         {"gate_up", 28672, 4096, SmallMOp::Linear, false},
                                         {"down", 4096, 14336, SmallMOp::Linear, false},
                                         {"down_swiglu", 4096, 14336, SmallMOp::Swiglu, false},
                                         {"lm_head", 128256, 4096, SmallMOp::Linear, true}};
    const SmallMShape kDraftShapes[] = {{"frspec_32k", 32768, 4096, SmallMOp::Linear, true},
                                        {"frspec_16k", 16384, 4096, SmallMOp::Linear, true},
                                        {"frspec_8k", 8192, 4096, SmallMOp::Linear, true},
                                        {"eagle_fc", 4096, 8192, SmallMOp::Linear, false}};
    for (int64_t tokens : {int64_t{10}, int64_t{16}, int64_t{32}, int64_t{60}, int64_t{64}, int64_t{128}})
      for (const SmallMShape& s : kSmallMShapes)
        if (args->wants("small-m")) small_m.push_back(bench_small_m(*ctx, s, tokens, copy, repeats));
    for (const SmallMShape& s : kDraftShapes)
      if (args->wants("small-m")) small_m.push_back(bench_small_m(*ctx, s, 10, copy, repeats));
    std::printf("\nsmall-M (ops::linear at verification / draft token counts, bf16 W and x, fp32 accumulate;\n"
                "weight GB/s = weight bytes / time, %%copy = that / copy rate; cuBLASLt = the same call there)\n");
    std::printf("%-12s %3s %7s %6s %6s %9s %8s %7s %11s %7s\n", "shape", "T", "N", "K", "copies", "us/call",
                "W GB/s", "%copy", "cuBLASLt us", "speedup");
    for (const SmallMResult& r : small_m)
      std::printf("%-12s %3lld %7lld %6lld %6d %9.2f %8.0f %6.1f%% %11.2f %6.2fx\n", r.name.c_str(),
                  static_cast<long long>(r.tokens), static_cast<long long>(r.n), static_cast<long long>(r.k),
                  r.copies, r.us, r.weight_gbps, 100.0 * r.share_of_copy, r.cublaslt_us, r.cublaslt_us / r.us);

    std::vector<GemmResult> gemm;
    gemm.push_back(bench_gemm(*ctx, "square", 4096, 4096, 4096, repeats));
    for (const Shape& s : kShapes)
      if (args->wants("gemm")) gemm.push_back(bench_gemm(*ctx, s.name, kPrefillTokens, s.n, s.k, repeats));
    std::printf("\nGEMM (ops::linear via cuBLASLt, bf16 in/out, fp32 accumulate)\n");
    std::printf("%-8s %5s %7s %6s %9s %8s\n", "shape", "T", "N", "K", "ms", "TFLOP/s");
    for (const GemmResult& r : gemm)
      std::printf("%-8s %5lld %7lld %6lld %9.3f %8.1f\n", r.name.c_str(), static_cast<long long>(r.tokens),
                  static_cast<long long>(r.n), static_cast<long long>(r.k), r.ms, r.tflops);

    if (!json_path.empty()) {
      nlohmann::json j;
      j["device"] = ctx->info().name;
      j["multiprocessors"] = ctx->info().multiprocessors;
      j["repeats"] = repeats;
      j["copy_gbps"] = copy;
      for (const GemvResult& r : gemv)
        j["gemv"].push_back({{"shape", r.name}, {"tokens", r.tokens}, {"n", r.n}, {"k", r.k}, {"copies", r.copies},
                             {"us", r.us}, {"gbps", r.gbps}, {"share_of_copy", r.share_of_copy}});
      for (const SmallMResult& r : small_m)
        j["small_m"].push_back({{"shape", r.name}, {"tokens", r.tokens}, {"n", r.n}, {"k", r.k},
                                {"copies", r.copies}, {"us", r.us}, {"weight_gbps", r.weight_gbps},
                                {"share_of_copy", r.share_of_copy},
                                {"cublaslt_us", std::isnan(r.cublaslt_us) ? nlohmann::json() : nlohmann::json(r.cublaslt_us)}});
      for (const GemmResult& r : gemm)
        j["gemm"].push_back({{"shape", r.name}, {"tokens", r.tokens}, {"n", r.n}, {"k", r.k}, {"ms", r.ms},
                             {"tflops", r.tflops}});
      for (const TopKResult& r : top_k)
        j["top_k"].push_back(
            {{"rows", r.rows}, {"vocab", r.vocab}, {"k", r.k}, {"us", r.us}, {"gbps", r.gbps}});
      for (const SparseResult& r : sparse)
        j["sparse_select"].push_back({{"shape", r.shape}, {"context", r.context}, {"tokens", r.tokens},
                                      {"layers", r.layers}, {"us", r.us}, {"stage1_us", r.stage1_us},
                                      {"compress_us", r.compress_us}, {"plan", r.plan}});
      std::ofstream(json_path) << j.dump(2) << "\n";
      std::printf("\nwrote %s\n", json_path.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "specula_kernel_bench: %s\n", e.what());
    return 1;
  }
}
