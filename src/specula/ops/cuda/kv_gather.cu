// CUDA ops::kv_gather: moves KV-cache rows (row dst_rows[i] of every cache becomes what row
// src_rows[i] held), the compaction after speculative verification.
//
// One block per (cache, KV head, slice of the row): it reads the n source rows of its slice into
// shared memory, waits for the whole block, then writes them to their destinations. Blocks touch
// disjoint bytes, so "every source is read before any destination is written" holds per block,
// which is all the overlap semantics need (the usual move is a few rows down by a few places).
// The row is cut into slices only when n rows of it do not fit the staging buffer, so in practice
// (n <= tree depth + 2, rows of 128-512 bytes) a block holds whole rows.
//
// Bytes are copied as they are (any dtype), 16 bytes per access when the row length and every
// cache's address allow it, else the widest unit that does. The count is read on the device, so
// one captured graph serves any accepted length; the cache pointers travel by value in the kernel
// parameters (up to kMaxCachesPerLaunch per launch; more caches take several launches), so
// nothing is allocated or copied from the host during a capture. A count outside [0, n] or a row
// outside the cache is reported through the context's error word (kErrorSlotOutOfRange): a bad
// count skips the whole call, a bad move only itself.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_ops.h"
#include "specula/ops/cuda/kernel_utils.cuh"

namespace specula::ops::cuda_impl {

namespace {

constexpr int kThreads = 256;
// Cache base pointers per launch: 2 KB of the 4 KB of kernel parameters; 36 layers of K and V
// (72 caches) fit in one launch.
constexpr int kMaxCachesPerLaunch = 256;
// Shared-memory staging per block (static, below the 48 KB that needs no opt-in).
constexpr int kStageBytes = 32 * 1024;
// Longest move list a call may name (the staging holds n 16-byte pieces of every row at least).
constexpr int64_t kMaxMoves = kStageBytes / 16;

struct GatherParams {
  void* caches[kMaxCachesPerLaunch];
  const int32_t* src;
  const int32_t* dst;
  const int32_t* count;
  uint32_t* error_word;
  int64_t head_vecs;  // capacity * row_vecs: stride of one KV head, in vectors
  int capacity;
  int max_moves;   // length of src_rows / dst_rows
  int row_vecs;    // vectors per cache row
  int slice_vecs;  // vectors of a row one block moves
};

__device__ __forceinline__ bool row_in_cache(int row, int capacity) { return row >= 0 && row < capacity; }

// grid (row slices, KV heads, caches of this launch).
template <typename Vec>
__global__ void __launch_bounds__(kThreads) kv_gather_kernel(const __grid_constant__ GatherParams a) {
  __shared__ Vec stage[kStageBytes / sizeof(Vec)];
  pdl_launch_dependents();
  pdl_wait();  // the count, the rows and the caches are written by earlier work in the stream
  const bool first_block = blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0;
  const int n = *a.count;
  if (n < 0 || n > a.max_moves) {
    if (first_block && threadIdx.x == 0) report_device_error(a.error_word, specula::cuda::kErrorSlotOutOfRange);
    return;  // uniform across the grid: nothing moves
  }
  const int v0 = static_cast<int>(blockIdx.x) * a.slice_vecs;
  const int vecs = min(a.slice_vecs, a.row_vecs - v0);
  Vec* head = static_cast<Vec*>(a.caches[blockIdx.z]) + static_cast<int64_t>(blockIdx.y) * a.head_vecs + v0;
  const int items = n * vecs;
  for (int i = static_cast<int>(threadIdx.x); i < items; i += kThreads) {
    const int move = i / vecs, c = i - move * vecs;
    const int src = a.src[move], dst = a.dst[move];
    if (row_in_cache(src, a.capacity) && row_in_cache(dst, a.capacity))
      stage[i] = head[static_cast<int64_t>(src) * a.row_vecs + c];
    else if (first_block && c == 0)
      report_device_error(a.error_word, specula::cuda::kErrorSlotOutOfRange);
  }
  __syncthreads();  // every source of this slice is read before any destination is written
  for (int i = static_cast<int>(threadIdx.x); i < items; i += kThreads) {
    const int move = i / vecs, c = i - move * vecs;
    const int src = a.src[move], dst = a.dst[move];
    if (row_in_cache(src, a.capacity) && row_in_cache(dst, a.capacity))
      head[static_cast<int64_t>(dst) * a.row_vecs + c] = stage[i];
  }
}

template <typename Vec>
void launch_gather(CudaContext& ctx, const Tensor* caches, size_t n_caches, GatherParams a, int row_bytes, int n_kv) {
  constexpr int kVec = static_cast<int>(sizeof(Vec));
  const int stage_vecs = kStageBytes / kVec;
  a.row_vecs = row_bytes / kVec;
  a.head_vecs = static_cast<int64_t>(a.capacity) * a.row_vecs;
  a.slice_vecs = std::min(a.row_vecs, stage_vecs / a.max_moves);  // >= 1: max_moves <= kMaxMoves
  const int slices = ceil_div(a.row_vecs, a.slice_vecs);
  SPECULA_CHECK(n_kv <= 65535, "kv_gather: ", n_kv, " KV heads exceed the kernel's grid");
  for (size_t first = 0; first < n_caches; first += kMaxCachesPerLaunch) {
    const size_t here = std::min(n_caches - first, static_cast<size_t>(kMaxCachesPerLaunch));
    for (size_t i = 0; i < here; ++i) a.caches[i] = caches[first + i].data;
    launch_kernel(ctx, "kv_gather", kv_gather_kernel<Vec>,
                  dim3(static_cast<unsigned>(slices), static_cast<unsigned>(n_kv), static_cast<unsigned>(here)),
                  dim3(kThreads), 0, a);
  }
}

}  // namespace

void kv_gather(CudaContext& ctx, Tensor* caches, size_t n_caches, const Tensor& src_rows, const Tensor& dst_rows,
               const Tensor& count) {
  if (n_caches == 0) return;
  const int64_t max_moves = src_rows.numel();
  SPECULA_CHECK(max_moves <= kMaxMoves, "kv_gather: ", max_moves, " moves exceed the CUDA kernel's limit of ",
                kMaxMoves, " (the rows are staged in shared memory)");
  const Tensor& first = caches[0];
  const int64_t n_kv = first.dim(0), capacity = first.dim(1);
  const int64_t row_bytes = first.dim(2) * static_cast<int64_t>(dtype_size(first.dtype));
  if (max_moves == 0 || n_kv == 0 || capacity == 0 || row_bytes == 0) return;
  SPECULA_CHECK(capacity <= INT_MAX && row_bytes <= INT_MAX, "kv_gather: cache ", first.shape_string(), " is too large for the CUDA kernel");
  GatherParams a{};
  a.src = static_cast<const int32_t*>(src_rows.data);
  a.dst = static_cast<const int32_t*>(dst_rows.data);
  a.count = static_cast<const int32_t*>(count.data);
  a.error_word = ctx.error_word();
  a.capacity = static_cast<int>(capacity);
  a.max_moves = static_cast<int>(max_moves);
  // The widest access every cache's address and the row length allow.
  int vec = 16;
  while (vec > 1) {
    bool fits = row_bytes % vec == 0;
    for (size_t i = 0; i < n_caches; ++i) fits = fits && is_aligned(caches[i].data, static_cast<size_t>(vec));
    if (fits) break;
    vec /= 2;
  }
  const int rb = static_cast<int>(row_bytes), kv = static_cast<int>(n_kv);
  switch (vec) {
    case 16: launch_gather<uint4>(ctx, caches, n_caches, a, rb, kv); break;
    case 8: launch_gather<uint2>(ctx, caches, n_caches, a, rb, kv); break;
    case 4: launch_gather<uint32_t>(ctx, caches, n_caches, a, rb, kv); break;
    case 2: launch_gather<uint16_t>(ctx, caches, n_caches, a, rb, kv); break;
    default: launch_gather<uint8_t>(ctx, caches, n_caches, a, rb, kv); break;
  }
}

}  // namespace specula::ops::cuda_impl
