// CUDA embedding lookup: out[t, :] = scale * table[ids[t], :] (ops::embedding).
//
// One block per token copies and converts one row; it is a pure copy, so the only thing that
// matters is wide accesses: 8 elements per thread access (16 bytes of a bf16 table) whenever the
// row length and both pointers allow it, element by element otherwise. An id outside the table
// must not stop a captured graph, so it writes a zero row and sets kErrorTokenOutOfRange in the
// context's error word, which the host reads once per step.
#include <cuda_runtime.h>

#include <algorithm>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/kernel_utils.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kThreads = 256;
constexpr int kPackElems = 8;  // elements per access on the vector path

template <int kPack>
__global__ void __launch_bounds__(kThreads)
    embedding_kernel(const void* table, DType table_dtype, const int32_t* ids, int64_t vocab, int64_t hidden,
                     float scale, void* out, DType out_dtype, uint32_t* error_word) {
  const int64_t token = blockIdx.x;
  const int32_t id = ids[token];
  const bool valid = id >= 0 && id < vocab;
  if (!valid && threadIdx.x == 0) report_device_error(error_word, specula::cuda::kErrorTokenOutOfRange);
  const int64_t src_row = (valid ? static_cast<int64_t>(id) : 0) * hidden;
  const int64_t dst_row = token * hidden;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * kPack; i < hidden; i += static_cast<int64_t>(blockDim.x) * kPack) {
    float v[kPack];
    if (valid) {
      load_f32_dyn<kPack>(table, table_dtype, src_row + i, v);
#pragma unroll
      for (int j = 0; j < kPack; ++j) v[j] *= scale;
    } else {
#pragma unroll
      for (int j = 0; j < kPack; ++j) v[j] = 0.0f;
    }
    store_f32_dyn<kPack>(out, out_dtype, dst_row + i, v);
  }
}

}  // namespace

void embedding(CudaContext& ctx, const Tensor& table, const Tensor& ids, float scale, Tensor& out) {
  const int64_t vocab = table.dim(0), hidden = table.dim(1), tokens = ids.numel();
  if (tokens == 0 || hidden == 0) return;
  const bool vector_path = hidden % kPackElems == 0 &&
                           is_aligned(table.data, vector_alignment(table.dtype, kPackElems)) &&
                           is_aligned(out.data, vector_alignment(out.dtype, kPackElems));
  const int threads = static_cast<int>(
      std::min<int64_t>(kThreads, ceil_div<int64_t>(ceil_div<int64_t>(hidden, vector_path ? kPackElems : 1), kWarpSize) * kWarpSize));
  const dim3 grid(static_cast<unsigned>(tokens));
  auto* err = ctx.error_word();
  if (vector_path)
    embedding_kernel<kPackElems><<<grid, threads, 0, stream_of(ctx)>>>(table.data, table.dtype, ids.as<const int32_t>(),
                                                                       vocab, hidden, scale, out.data, out.dtype, err);
  else
    embedding_kernel<1><<<grid, threads, 0, stream_of(ctx)>>>(table.data, table.dtype, ids.as<const int32_t>(), vocab,
                                                              hidden, scale, out.data, out.dtype, err);
  SPECULA_CUDA_CHECK_LAUNCH("embedding");
}

}  // namespace specula::ops::cuda_impl
