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
// Usage: specula_attention_bench [--json PATH] [--repeats N]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
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
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/ops.h"

using namespace specula;
using namespace specula::bench;

namespace {

constexpr int kDefaultRepeats = 30;
constexpr size_t kMaxRotationBytes = size_t{24} << 30;  // cap on memory spent on decode caches
constexpr int kL2Multiple = 4;                          // bytes read per replay vs L2 size

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
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  {
    auto* k = static_cast<uint16_t*>(caches[0]->get());
    Tensor tk(k, DType::BF16, {n_kv, capacity, head_dim}, Device::CUDA);
    Tensor tv(k + cache_elems, DType::BF16, {n_kv, capacity, head_dim}, Device::CUDA);
    path = ops::cuda_impl::describe_qkv_attention(ctx, tqkv, tq, tk, tv);
  }
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "begin capture");
  for (int l = 0; l < layers; ++l) {
    auto* k = static_cast<uint16_t*>(caches[static_cast<size_t>(l)]->get());
    Tensor tk(k, DType::BF16, {n_kv, capacity, head_dim}, Device::CUDA);
    Tensor tv(k + cache_elems, DType::BF16, {n_kv, capacity, head_dim}, Device::CUDA);
    Tensor to(static_cast<uint16_t*>(out.get()) + l * q_elems, DType::BF16, {1, n_heads * head_dim}, Device::CUDA);
    ops::qkv_attention(op, tqkv, Tensor(), Tensor(), 1e-6f, rope, tp, ts, 1.0f / std::sqrt(static_cast<float>(head_dim)),
                       tq, tk, tv, to);
  }
  check(cudaStreamEndCapture(stream, &graph), "end capture");
  ctx.set_fused_decode_attention(true);
  check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  const double ms = time_ms(stream, repeats, [&] { check(cudaGraphLaunch(exec, stream), "graph launch"); });
  ctx.check_device_errors();
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
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

}  // namespace

int main(int argc, char** argv) {
  const std::optional<BenchArgs> args = parse_bench_args(argc, argv, kDefaultRepeats);
  if (!args) return 2;
  const std::string& json_path = args->json_path;
  const int repeats = args->repeats;
  try {
    auto ctx = cuda::CudaContext::create();
    const auto stream = static_cast<cudaStream_t>(ctx->stream());
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
      const PrefillResult r = bench_prefill(*ctx, 4096, 32, 8, hd, repeats);
      std::printf("%6d %6d %5d %5d %10.3f %9.1f\n", r.tokens, r.n_heads, r.n_kv, r.head_dim, r.ms, r.tflops);
      report["prefill"].push_back({{"tokens", r.tokens}, {"n_heads", r.n_heads}, {"n_kv", r.n_kv},
                                   {"head_dim", r.head_dim}, {"ms", r.ms}, {"tflops", r.tflops}});
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
