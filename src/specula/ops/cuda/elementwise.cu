// CUDA element-wise ops and reductions over rows: SwiGLU over the fused gate/up output
// (ops::silu_mul), greedy token choice (ops::argmax) and dtype conversion (ops::convert).
//
// silu_mul and convert are memory-bound streams: 8 elements per access (16-byte vectors for
// 16-bit dtypes) where the pointers and row lengths allow it, a scalar path otherwise, and
// expf/division at full precision so results match the CPU reference to rounding.
//
// argmax runs once per decode step over a 128K-150K vocabulary row, where one block per row
// would leave all but one SM idle. For few rows it splits each row over many blocks: pass 1
// writes one 64-bit key per (row, chunk) into the CUDA context's workspace, pass 2 reduces
// them. That scratch is the cuBLASLt workspace, which is free between launches because every
// op runs in order on the context's one stream (and it is never read across ops). A key orders
// (value, index) so that a plain unsigned max picks the largest value and, among equal values,
// the lowest index: the CPU reference's tie rule, with -0 == +0 and NaN never chosen (except
// that the CPU returns 0 when element 0 is NaN, reproduced in the last step).
//
// silu_mul is on the decode path (when the down projection is not fused with it, see
// linear_swiglu) and is launched with programmatic dependent launch where available (pdl.cuh);
// argmax and convert are launched plainly.
#include <cuda_runtime.h>

#include <algorithm>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/kernel_utils.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr int kPackElems = 8;
constexpr int kMaxGridY = 65535;          // CUDA limit on gridDim.y
constexpr int kConvertBlocksPerSm = 8;    // grid-stride blocks per SM for flat streams
constexpr int64_t kArgmaxMinChunk = 2048;  // elements per block: below this, splitting costs more than it saves
constexpr int kArgmaxBlocksPerSm = 2;

bool pack_aligned(const void* p, DType dtype) { return is_aligned(p, vector_alignment(dtype, kPackElems)); }

// ---------------------------------------------------------------------------------------------
// silu_mul

template <int kPack>
__global__ void __launch_bounds__(kThreads)
    silu_mul_kernel(const void* gate_up, DType gu_dtype, void* out, DType out_dtype, int64_t rows, int64_t inter) {
  pdl_launch_dependents();
  pdl_wait();  // gate_up and out belong to earlier kernels
  const int64_t packs = inter / kPack;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < packs;
         p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t col = p * kPack;
      float g[kPack], u[kPack], o[kPack];
      load_f32_dyn<kPack>(gate_up, gu_dtype, row * 2 * inter + col, g);
      load_f32_dyn<kPack>(gate_up, gu_dtype, row * 2 * inter + inter + col, u);
#pragma unroll
      for (int j = 0; j < kPack; ++j) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
      store_f32_dyn<kPack>(out, out_dtype, row * inter + col, o);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// argmax

using Key = unsigned long long;

// Larger key = larger value, then lower index. NaN ranks as -inf; -0 as +0.
__device__ __forceinline__ Key argmax_key(float v, int64_t index) {
  if (isnan(v)) v = -INFINITY;
  if (v == 0.0f) v = 0.0f;
  uint32_t u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<Key>(u) << 32) | static_cast<Key>(~static_cast<uint32_t>(index));
}

__device__ __forceinline__ int32_t key_index(Key k) { return static_cast<int32_t>(~static_cast<uint32_t>(k)); }

// The index a finished row reduction stands for, with the CPU's NaN-at-0 rule.
__device__ __forceinline__ int32_t finish_argmax(Key best, const void* logits, DType dtype, int64_t row, int64_t vocab) {
  return isnan(load_f32_dyn(logits, dtype, row * vocab)) ? 0 : key_index(best);
}

// Block (chunk, row) reduces logits[row, chunk*chunk_len .. ) to one key. With one chunk per row
// it writes the answer; otherwise the key goes to partial[row * chunks + chunk].
template <int kPack>
__global__ void __launch_bounds__(kThreads)
    argmax_partial_kernel(const void* logits, DType dtype, int64_t vocab, int64_t chunk_len, Key* partial,
                          int32_t* out) {
  __shared__ Key scratch[kWarpSize];
  const int64_t row = blockIdx.y, begin = static_cast<int64_t>(blockIdx.x) * chunk_len;
  const int64_t end = min(vocab, begin + chunk_len);
  Key best = 0;  // below every real key
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kPack; i < end; i += static_cast<int64_t>(blockDim.x) * kPack) {
    float v[kPack];
    load_f32_dyn<kPack>(logits, dtype, row * vocab + i, v);
#pragma unroll
    for (int j = 0; j < kPack; ++j) {
      const Key k = argmax_key(v[j], i + j);
      best = k > best ? k : best;
    }
  }
  best = block_max_u64(best, scratch);
  if (threadIdx.x != 0) return;
  if (partial)
    partial[row * gridDim.x + blockIdx.x] = best;
  else
    out[row] = finish_argmax(best, logits, dtype, row, vocab);
}

__global__ void __launch_bounds__(kThreads)
    argmax_combine_kernel(const Key* partial, int64_t chunks, const void* logits, DType dtype, int64_t vocab,
                          int32_t* out) {
  __shared__ Key scratch[kWarpSize];
  const int64_t row = blockIdx.x;
  Key best = 0;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    const Key k = partial[row * chunks + c];
    best = k > best ? k : best;
  }
  best = block_max_u64(best, scratch);
  if (threadIdx.x == 0) out[row] = finish_argmax(best, logits, dtype, row, vocab);
}

// ---------------------------------------------------------------------------------------------
// convert

template <int kPack>
__global__ void __launch_bounds__(kThreads)
    convert_kernel(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n) {
  const int64_t packs = n / kPack;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[kPack];
    load_f32_dyn<kPack>(src, src_dtype, p * kPack, v);
    store_f32_dyn<kPack>(dst, dst_dtype, p * kPack, v);
  }
  // The n % kPack tail, element by element.
  const int64_t tail = packs * kPack + threadIdx.x;
  if (blockIdx.x == 0 && tail < n) store_f32_dyn(dst, dst_dtype, tail, load_f32_dyn(src, src_dtype, tail));
}

}  // namespace

void silu_mul(CudaContext& ctx, const Tensor& gate_up, Tensor& out) {
  const int64_t rows = out.rows(), inter = out.row_size();
  if (rows == 0 || inter == 0) return;
  const bool vector_path = inter % kPackElems == 0 && pack_aligned(gate_up.data, gate_up.dtype) &&
                           pack_aligned(out.data, out.dtype);
  const int64_t packs = inter / (vector_path ? kPackElems : 1);
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(packs, kThreads)),
                  static_cast<unsigned>(std::min<int64_t>(rows, kMaxGridY)));
  launch_kernel(ctx, "silu_mul", vector_path ? silu_mul_kernel<kPackElems> : silu_mul_kernel<1>, grid, dim3(kThreads),
                0, gate_up.data, gate_up.dtype, out.data, out.dtype, rows, inter);
}

void argmax(CudaContext& ctx, const Tensor& logits, Tensor& out) {
  const int64_t rows = logits.rows(), vocab = logits.row_size();
  if (rows == 0) return;
  SPECULA_CHECK(vocab > 0 && vocab <= INT32_MAX, "argmax: vocabulary of ", vocab, " entries is not supported");
  SPECULA_CHECK(rows <= kMaxGridY, "argmax: ", rows, " rows exceed the CUDA grid limit of ", kMaxGridY);
  const bool vector_path = vocab % kPackElems == 0 && pack_aligned(logits.data, logits.dtype);
  const int pack = vector_path ? kPackElems : 1;

  // Split rows over chunks while that still leaves >= kArgmaxMinChunk elements per block and the
  // grid is below a couple of blocks per SM; chunks stay multiples of the pack.
  const int64_t target_blocks = static_cast<int64_t>(ctx.info().multiprocessors) * kArgmaxBlocksPerSm;
  int64_t chunks = std::clamp<int64_t>(target_blocks / rows, 1, std::max<int64_t>(1, vocab / kArgmaxMinChunk));
  if (static_cast<size_t>(rows * chunks) * sizeof(Key) > ctx.workspace_bytes() || ctx.workspace() == nullptr) chunks = 1;
  const int64_t chunk_len = ceil_div<int64_t>(ceil_div<int64_t>(vocab, chunks), pack) * pack;
  chunks = ceil_div<int64_t>(vocab, chunk_len);
  Key* partial = chunks > 1 ? static_cast<Key*>(ctx.workspace()) : nullptr;

  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(rows));
  int32_t* result = out.as<int32_t>();
  if (vector_path)
    argmax_partial_kernel<kPackElems><<<grid, kThreads, 0, stream_of(ctx)>>>(logits.data, logits.dtype, vocab,
                                                                              chunk_len, partial, result);
  else
    argmax_partial_kernel<1><<<grid, kThreads, 0, stream_of(ctx)>>>(logits.data, logits.dtype, vocab, chunk_len,
                                                                     partial, result);
  SPECULA_CUDA_CHECK_LAUNCH("argmax");
  if (partial) {
    argmax_combine_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream_of(ctx)>>>(partial, chunks, logits.data,
                                                                                        logits.dtype, vocab, result);
    SPECULA_CUDA_CHECK_LAUNCH("argmax (combine)");
  }
}

void convert(CudaContext& ctx, const Tensor& src, Tensor& dst) {
  const int64_t n = src.numel();
  if (n == 0) return;
  if (src.dtype == dst.dtype) {
    if (src.data != dst.data)
      SPECULA_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream_of(ctx)));
    return;
  }
  const bool vector_path = pack_aligned(src.data, src.dtype) && pack_aligned(dst.data, dst.dtype);
  const int pack = vector_path ? kPackElems : 1;
  const int64_t max_blocks = static_cast<int64_t>(ctx.info().multiprocessors) * kConvertBlocksPerSm;
  const auto blocks = static_cast<unsigned>(std::clamp<int64_t>(ceil_div<int64_t>(n / pack, kThreads), 1, max_blocks));
  if (vector_path)
    convert_kernel<kPackElems><<<blocks, kThreads, 0, stream_of(ctx)>>>(src.data, src.dtype, dst.data, dst.dtype, n);
  else
    convert_kernel<1><<<blocks, kThreads, 0, stream_of(ctx)>>>(src.data, src.dtype, dst.data, dst.dtype, n);
  SPECULA_CUDA_CHECK_LAUNCH("convert");
}

}  // namespace specula::ops::cuda_impl
