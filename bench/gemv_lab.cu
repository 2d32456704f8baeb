// gemv_lab: a standalone experiment bench for the batch-1 decode GEMV (y = W x, bf16, fp32 sums).
// It answers, in one run on the GPU machine, where the last points of decode bandwidth are:
//  - the ceilings: a device-to-device copy (read + write) and a read-only streaming kernel;
//  - register-streaming GEMV variants like ops::linear's (rows per warp, vectors in flight per
//    lane, the L2 prefetch-size hint) on the Llama-3-8B decode shapes;
//  - a bulk-copy GEMV (Hopper cp.async.bulk into a shared-memory ring on mbarriers, persistent
//    grid): few instructions per byte, deep in-flight data per SM, and with PDL the next kernel's
//    blocks fill their rings while this one drains;
//  - each variant over a whole 32-layer decode step's GEMVs (qkv, o, gate/up, down, then the LM
//    head; distinct weights per layer, PDL between kernels, in one CUDA graph) against the copy
//    bandwidth: the share of the decode bandwidth limit the GEMVs alone could reach.
// Every variant is checked against a naive fp32 GEMV on the same random inputs first.
// Not part of the library (it uses only the header-only ops/cuda/bulk_copy.cuh and pdl.cuh): built by
// scripts/device-check.sh (stage `lab`) with nvcc -arch=sm_90a -I src.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "specula/ops/cuda/bulk_copy.cuh"
#include "specula/ops/cuda/pdl.cuh"

#define CK(x)                                                                               \
  do {                                                                                      \
    cudaError_t e_ = (x);                                                                   \
    if (e_ != cudaSuccess) {                                                                \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;
int g_sms = 132;

using specula::ops::cuda_impl::pdl_launch_dependents;
using specula::ops::cuda_impl::pdl_wait;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int kHint>
__device__ __forceinline__ uint4 ld16(const void* p) {
  uint4 r;
  if constexpr (kHint == 0)
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
  else if constexpr (kHint == 1)
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
  else
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
  return r;
}

__device__ __forceinline__ void fma8(const uint4 w, const uint4 x, float& acc) {
  const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 a = __bfloat1622float2(wp[j]), b = __bfloat1622float2(xp[j]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
}

// ---------------------------------------------------------------- ceilings
__global__ void read_kernel(const uint4* p, size_t n, float* sink) {
  float acc = 0.0f;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = ld16<0>(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < 4; ++u) acc += __uint_as_float(v[u].x ^ v[u].y ^ v[u].z ^ v[u].w);
  }
  for (; i < n; i += stride) acc += __uint_as_float(ld16<0>(p + i).x);
  if (acc == 1.2345f) *sink = acc;
}

// ---------------------------------------------------------------- naive reference
__global__ void ref_gemv(const __nv_bfloat16* w, const __nv_bfloat16* x, float* y, int n, int k) {
  const int row = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= n) return;
  float acc = 0.0f;
  for (int i = lane; i < k; i += 32) acc += __bfloat162float(w[static_cast<size_t>(row) * k + i]) * __bfloat162float(x[i]);
  acc = warp_sum(acc);
  if (lane == 0) y[row] = acc;
}

// ---------------------------------------------------------------- register-streaming GEMV
// Like ops::linear's 1-token path: a warp owns kRows rows (its K range split over `splits`
// warps), each lane keeps kRows * kUnroll 16-byte weight vectors in flight; PDL: the first step's
// weights are loaded before the wait.
template <int kRows, int kUnroll, int kHint>
__global__ void __launch_bounds__(kThreads) reg_gemv(const __nv_bfloat16* __restrict__ W,
                                                      const __nv_bfloat16* __restrict__ x, __nv_bfloat16* y, int n,
                                                      int k, int splits) {
  __shared__ float partial[kWarps][kRows];
  pdl_launch_dependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int groups = kWarps / splits, group = warp / splits, split = warp % splits;
  const int row0 = (blockIdx.x * groups + group) * kRows;
  const int vectors = k / 8;
  const uint4* wrow[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
    wrow[r] = reinterpret_cast<const uint4*>(W + static_cast<size_t>(min(row0 + r, n - 1)) * k);
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  float acc[kRows] = {};
  const int stride = splits * 32;
  int v = split * 32 + lane;
  uint4 w[kUnroll][kRows];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u)
#pragma unroll
    for (int r = 0; r < kRows; ++r) w[u][r] = v + u * stride < vectors ? ld16<kHint>(wrow[r] + v + u * stride) : uint4{};
  pdl_wait();
  while (true) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v + u * stride < vectors) {
        const uint4 xx = __ldg(xv + v + u * stride);
#pragma unroll
        for (int r = 0; r < kRows; ++r) fma8(w[u][r], xx, acc[r]);
      }
    }
    v += kUnroll * stride;
    if (v >= vectors) break;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        w[u][r] = v + u * stride < vectors ? ld16<kHint>(wrow[r] + v + u * stride) : uint4{};
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = warp_sum(acc[r]);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < kRows; ++r) partial[warp][r] = acc[r];
  __syncthreads();
  if (threadIdx.x < groups * kRows) {
    const int g = threadIdx.x / kRows, r = threadIdx.x % kRows;
    float s = 0.0f;
    for (int i = 0; i < splits; ++i) s += partial[g * splits + i][r];
    const int row = (blockIdx.x * groups + g) * kRows + r;
    if (row < n) y[row] = __float2bfloat16(s);
  }
}

int reg_splits(int n, int k, int rows, int unroll, int target_warps_per_sm) {
  const int row_groups = (n + rows - 1) / rows;
  int s = 1;
  while (s < kWarps && row_groups * s < g_sms * target_warps_per_sm && (k / 8) / (2 * s * 32) >= unroll) s *= 2;
  return s;
}

// ---------------------------------------------------------------- bulk-copy GEMV
using namespace specula::ops::cuda_impl::bulk;  // the library's mbarrier / bulk-copy wrappers

// Persistent grid; tile t = kTileRows consecutive rows (contiguous bytes, one bulk copy), tiles
// dealt round-robin to blocks; kStages tiles in flight per block. x (bf16) sits in shared memory.
// Every warp takes a 1/wpr slice of a row of the current tile (wpr = warps per row).
template <int kStages>
__global__ void __launch_bounds__(kThreads) bulk_gemv(const __nv_bfloat16* __restrict__ W,
                                                       const __nv_bfloat16* __restrict__ x, __nv_bfloat16* y, int n,
                                                       int k, int tile_rows) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ uint64_t full[kStages];
  __shared__ float partial[kStages][kWarps];
  pdl_launch_dependents();
  const int tile_bytes = tile_rows * k * 2;
  const int tiles = (n + tile_rows - 1) / tile_rows;
  unsigned char* ring = smem;
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem + static_cast<size_t>(kStages) * tile_bytes);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) mbarrier_init(&full[s]);
    mbarrier_init_fence();
  }
  __syncthreads();
  auto issue = [&](int i) {  // i: the block's i-th tile
    const int t = blockIdx.x + i * gridDim.x;
    if (t >= tiles) return;
    const int s = i % kStages;
    const int rows = min(tile_rows, n - t * tile_rows);
    const uint32_t bytes = static_cast<uint32_t>(rows) * k * 2;
    mbarrier_expect_bytes(&full[s], bytes);
    bulk_copy_to_shared(ring + static_cast<size_t>(s) * tile_bytes, W + static_cast<size_t>(t) * tile_rows * k, bytes, &full[s]);
  };
  if (threadIdx.x == 0)
    for (int i = 0; i < kStages; ++i) issue(i);
  pdl_wait();
  {
    const uint4* xg = reinterpret_cast<const uint4*>(x);
    uint4* xsv = reinterpret_cast<uint4*>(xs);
    for (int i = threadIdx.x; i < k / 8; i += kThreads) xsv[i] = xg[i];
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wpr = tile_rows >= kWarps ? 1 : kWarps / tile_rows;  // warps per row
  const int vectors = k / 8, per_warp = vectors / wpr;            // host: divisible
  const uint4* xsv = reinterpret_cast<const uint4*>(xs);
  for (int i = 0;; ++i) {
    const int t = blockIdx.x + i * gridDim.x;
    if (t >= tiles) break;
    const int s = i % kStages;
    mbarrier_wait(&full[s], (i / kStages) & 1);
    const uint4* tile = reinterpret_cast<const uint4*>(ring + static_cast<size_t>(s) * tile_bytes);
    const int rows = min(tile_rows, n - t * tile_rows);
    // rows per warp when tile_rows > kWarps
    for (int r = warp / wpr; r < tile_rows; r += kWarps / wpr) {
      float acc = 0.0f;
      if (r < rows) {
        const int seg = warp % wpr;
        const uint4* wr = tile + static_cast<size_t>(r) * vectors + seg * per_warp;
        const uint4* xr = xsv + seg * per_warp;
#pragma unroll 4
        for (int v = lane; v < per_warp; v += 32) fma8(wr[v], xr[v], acc);
      }
      acc = warp_sum(acc);
      if (lane == 0) {
        if (wpr > 1)
          partial[s][warp] = acc;
        else if (r < rows)
          y[t * tile_rows + r] = __float2bfloat16(acc);
      }
    }
    __syncthreads();
    if (wpr > 1 && threadIdx.x < rows) {
      float sum = 0.0f;
      for (int j = 0; j < wpr; ++j) sum += partial[s][threadIdx.x * wpr + j];
      y[t * tile_rows + threadIdx.x] = __float2bfloat16(sum);
    }
    if (threadIdx.x == 0) issue(i + kStages);
  }
}

// ---------------------------------------------------------------- harness
struct Shape {
  const char* name;
  int n, k;
};
const Shape kQkv{"qkv", 6144, 4096}, kO{"o_proj", 4096, 4096}, kGateUp{"gate_up", 28672, 4096},
    kDown{"down", 4096, 14336}, kHead{"lm_head", 128256, 4096};

struct Variant {
  std::string name;
  // launches y = W x on `stream` with PDL
  std::function<void(const Shape&, const __nv_bfloat16*, const __nv_bfloat16*, __nv_bfloat16*, cudaStream_t)> launch;
};

// The engine's launch with programmatic stream serialization (pdl.cuh).
template <typename Kernel, typename... Args>
void launch_pdl(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
  specula::ops::cuda_impl::launch_kernel(stream, true, "gemv_lab variant", kernel, grid, block, smem, args...);
}

template <int kRows, int kUnroll, int kHint>
Variant reg_variant(int target) {
  Variant v;
  v.name = "reg r" + std::to_string(kRows) + " u" + std::to_string(kUnroll) + " h" + std::to_string(kHint) + " w" +
           std::to_string(target);
  v.launch = [target](const Shape& s, const __nv_bfloat16* w, const __nv_bfloat16* x, __nv_bfloat16* y,
                      cudaStream_t st) {
    const int splits = reg_splits(s.n, s.k, kRows, kUnroll, target);
    const int groups = kWarps / splits;
    const int blocks = ((s.n + kRows - 1) / kRows + groups - 1) / groups;
    launch_pdl(reg_gemv<kRows, kUnroll, kHint>, dim3(blocks), dim3(kThreads), 0, st, w, x, y, s.n, s.k, splits);
  };
  return v;
}

template <int kStages>
Variant bulk_variant(int tile_kb, int blocks_per_sm) {
  Variant v;
  v.name = "bulk s" + std::to_string(kStages) + " t" + std::to_string(tile_kb) + "K b" + std::to_string(blocks_per_sm);
  v.launch = [tile_kb, blocks_per_sm](const Shape& s, const __nv_bfloat16* w, const __nv_bfloat16* x,
                                      __nv_bfloat16* y, cudaStream_t st) {
    const int row_bytes = s.k * 2;
    int tile_rows = 1;
    while (tile_rows * 2 * row_bytes <= tile_kb * 1024) tile_rows *= 2;
    const int wpr = tile_rows >= kWarps ? 1 : kWarps / tile_rows;
    if ((s.k / 8) % wpr != 0) std::abort();
    const size_t smem = static_cast<size_t>(kStages) * tile_rows * row_bytes + static_cast<size_t>(s.k) * 2;
    static bool configured = false;
    if (!configured) {
      CK(cudaFuncSetAttribute(bulk_gemv<kStages>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
      configured = true;
    }
    const int tiles = (s.n + tile_rows - 1) / tile_rows;
    const int grid = std::min(tiles, g_sms * blocks_per_sm);
    launch_pdl(bulk_gemv<kStages>, dim3(grid), dim3(kThreads), smem, st, w, x, y, s.n, s.k, tile_rows);
  };
  return v;
}

__global__ void fill_bf16(__nv_bfloat16* p, size_t n, uint64_t seed, float scale) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 29;
    const float u = static_cast<float>(z & 0xFFFFFF) / 16777216.0f - 0.5f;
    p[i] = __float2bfloat16(u * 2.0f * scale);
  }
}

__nv_bfloat16* alloc_random(size_t n, uint64_t seed, float scale) {
  __nv_bfloat16* p;
  CK(cudaMalloc(&p, n * 2));
  fill_bf16<<<1024, 256>>>(p, n, seed, scale);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());  // the lab's stream does not wait for the legacy stream
  return p;
}

float time_graph(cudaGraphExec_t exec, cudaStream_t st, int reps) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(exec, st));
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    CK(cudaEventRecord(a, st));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaEventRecord(b, st));
    CK(cudaEventSynchronize(b));
    float t;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2];
}

float time_captured(cudaStream_t st, int reps, const std::function<void()>& body) {
  cudaGraph_t g;
  cudaGraphExec_t e;
  CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  body();
  CK(cudaStreamEndCapture(st, &g));
  CK(cudaGraphInstantiate(&e, g, 0));
  const float ms = time_graph(e, st, reps);
  cudaGraphExecDestroy(e);
  cudaGraphDestroy(g);
  return ms;
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  std::printf("device %s, %d SMs, L2 %d MiB\n", prop.name, g_sms, prop.l2CacheSize >> 20);
  cudaStream_t st;
  CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  // Ceilings.
  const size_t big = size_t{1} << 30;
  void *a, *b;
  CK(cudaMalloc(&a, big));
  CK(cudaMalloc(&b, big));
  CK(cudaMemset(a, 1, big));
  float* sink;
  CK(cudaMalloc(&sink, 4));
  // As cuda_measure_copy_bandwidth (the engine's bench baseline): plain stream copies, alternating
  // direction, median.
  std::vector<float> copies;
  {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 22; ++i) {
      CK(cudaEventRecord(e0, st));
      CK(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, big, cudaMemcpyDeviceToDevice, st));
      CK(cudaEventRecord(e1, st));
      CK(cudaEventSynchronize(e1));
      float t;
      CK(cudaEventElapsedTime(&t, e0, e1));
      if (i >= 2) copies.push_back(t);
    }
    std::sort(copies.begin(), copies.end());
  }
  const double copy_gbps = 2.0 * big / (copies[copies.size() / 2] * 1e-3) / 1e9;
  double read_best = 0;
  int read_best_bpsm = 0;
  for (int bpsm : {4, 8, 16}) {
    const float ms = time_captured(st, 20, [&] {
      read_kernel<<<g_sms * bpsm, 256, 0, st>>>(static_cast<const uint4*>(a), big / 16, sink);
    });
    const double gbps = big / (ms * 1e-3) / 1e9;
    std::printf("read-only stream, %2d blocks/SM: %.0f GB/s\n", bpsm, gbps);
    if (gbps > read_best) read_best = gbps, read_best_bpsm = bpsm;
  }
  std::printf("copy (read+write): %.0f GB/s; best read-only %.0f GB/s (%d blocks/SM) = %.1f%% of copy\n", copy_gbps,
              read_best, read_best_bpsm, 100.0 * read_best / copy_gbps);
  CK(cudaFree(a));
  CK(cudaFree(b));

  std::vector<Variant> variants = {
      reg_variant<2, 4, 0>(16), reg_variant<2, 4, 1>(16), reg_variant<2, 4, 2>(16), reg_variant<2, 8, 0>(16),
      reg_variant<2, 8, 1>(16), reg_variant<4, 4, 1>(16), reg_variant<1, 8, 1>(16), reg_variant<2, 4, 1>(32),
      bulk_variant<4>(16, 1),   bulk_variant<6>(16, 1),   bulk_variant<4>(32, 1), bulk_variant<3>(16, 2),
      bulk_variant<2>(32, 2),   bulk_variant<4>(8, 2),
  };

  // Correctness on each shape (odd row counts too).
  {
    const Shape checks[] = {kQkv, kDown, {"odd", 1000 + 7, 4096}, {"odd2", 333, 14336}};
    for (const Shape& s : checks) {
      __nv_bfloat16* w = alloc_random(static_cast<size_t>(s.n) * s.k, 11, 0.05f);
      __nv_bfloat16* x = alloc_random(s.k, 12, 1.0f);
      __nv_bfloat16* y;
      float* ref;
      CK(cudaMalloc(&y, s.n * 2));
      CK(cudaMalloc(&ref, s.n * 4));
      ref_gemv<<<(s.n + kWarps - 1) / kWarps, kThreads, 0, st>>>(w, x, ref, s.n, s.k);
      std::vector<float> r(s.n);
      CK(cudaMemcpyAsync(r.data(), ref, s.n * 4, cudaMemcpyDeviceToHost, st));
      CK(cudaStreamSynchronize(st));
      for (const Variant& v : variants) {
        CK(cudaMemsetAsync(y, 0xff, s.n * 2, st));  // NaN poison
        v.launch(s, w, x, y, st);
        CK(cudaGetLastError());
        std::vector<__nv_bfloat16> out(s.n);
        CK(cudaMemcpyAsync(out.data(), y, s.n * 2, cudaMemcpyDeviceToHost, st));
        CK(cudaStreamSynchronize(st));
        double num = 0, den = 0;
        for (int i = 0; i < s.n; ++i) {
          const double d = static_cast<double>(__bfloat162float(out[i])) - r[i];
          num += d * d;
          den += static_cast<double>(r[i]) * r[i];
        }
        const double rel = std::sqrt(num / den);
        if (!(rel < 1e-2)) {
          std::printf("MISMATCH %s on %s (%d x %d): rel err %.3g\n", v.name.c_str(), s.name, s.n, s.k, rel);
          return 1;
        }
      }
      CK(cudaFree(w));
      CK(cudaFree(x));
      CK(cudaFree(y));
      CK(cudaFree(ref));
    }
    std::printf("all variants match the reference\n");
  }

  // Weights of a 32-layer decode step.
  constexpr int kLayers = 32;
  const Shape layer_shapes[] = {kQkv, kO, kGateUp, kDown};
  std::vector<__nv_bfloat16*> weights[4];
  size_t step_bytes = 0;
  for (int j = 0; j < 4; ++j)
    for (int l = 0; l < kLayers; ++l) {
      weights[j].push_back(alloc_random(static_cast<size_t>(layer_shapes[j].n) * layer_shapes[j].k, 100 + 7 * l + j, 0.02f));
      step_bytes += static_cast<size_t>(layer_shapes[j].n) * layer_shapes[j].k * 2;
    }
  __nv_bfloat16* head = alloc_random(static_cast<size_t>(kHead.n) * kHead.k, 99, 0.02f);
  step_bytes += static_cast<size_t>(kHead.n) * kHead.k * 2;
  __nv_bfloat16* x = alloc_random(14336, 5, 1.0f);
  __nv_bfloat16* y;
  CK(cudaMalloc(&y, 128256 * 2));
  CK(cudaDeviceSynchronize());

  std::printf("\n%-22s %8s %8s %8s %8s %9s %8s\n", "variant (%copy)", "qkv", "o_proj", "gate_up", "down", "lm_head",
              "step");
  for (const Variant& v : variants) {
    std::printf("%-22s", v.name.c_str());
    for (int j = 0; j < 4; ++j) {
      const Shape& s = layer_shapes[j];
      const float ms = time_captured(st, 10, [&] {
        for (int l = 0; l < kLayers; ++l) v.launch(s, weights[j][l], x, y, st);
      });
      const double gbps = static_cast<double>(s.n) * s.k * 2 * kLayers / (ms * 1e-3) / 1e9;
      std::printf(" %7.1f%%", 100.0 * gbps / copy_gbps);
    }
    {
      const float ms = time_captured(st, 10, [&] {
        for (int l = 0; l < 4; ++l) v.launch(kHead, head, x, y, st);
      });
      const double gbps = static_cast<double>(kHead.n) * kHead.k * 2 * 4 / (ms * 1e-3) / 1e9;
      std::printf(" %8.1f%%", 100.0 * gbps / copy_gbps);
    }
    const float ms = time_captured(st, 10, [&] {
      for (int l = 0; l < kLayers; ++l)
        for (int j = 0; j < 4; ++j) v.launch(layer_shapes[j], weights[j][l], x, y, st);
      v.launch(kHead, head, x, y, st);
    });
    const double gbps = static_cast<double>(step_bytes) / (ms * 1e-3) / 1e9;
    std::printf(" %7.1f%% (%.3f ms)\n", 100.0 * gbps / copy_gbps, ms);
  }
  std::printf("\nstep = 32 layers x (qkv, o, gate_up, down) + lm_head, %.2f GB, one graph with PDL; ideal at copy "
              "bandwidth %.3f ms\n",
              step_bytes / 1e9, step_bytes / copy_gbps / 1e6);
  return 0;
}
