// CUDA ops::attention: host dispatch, split planning, the generic CUDA-core kernel and the
// split combine kernel. The tensor-core kernel (the fast path for BF16/F16 caches with head_dim
// 64 or 128, prefill and decode alike) lives in attention_mma.cuh/.cu; everything else (F32
// caches, q in another dtype than the cache, other head dims up to 256, misaligned pointers)
// runs the generic kernel here, which is written for clarity and exactness rather than speed.
//
// Visibility: prefix-causal, or a tree mask (attention_common.cuh), either optionally with
// InfLLM-V2 block lists (attention_sparse.cuh): both kernels are instantiated per mask kind, so
// the causal instantiations carry no mask code at all. With block lists the generic kernel walks
// its query's listed blocks (one query head per thread block: it is the exact path, not the fast
// one); the tensor-core kernel walks the union of its tokens' lists, shared by the GQA group.
//
// Graph safety: launch shapes depend only on host-known shapes (T, heads, head_dim, capacity)
// and the device properties, never on slot values, which the kernels read from device memory;
// partials go to the context's preallocated workspace. Workspace use (only when the KV range is
// split, i.e. num_splits > 1):
//   T * n_heads * num_splits * head_dim * 4 bytes (partial outputs, rounded up to 256)
//   + T * n_heads * num_splits * 4 bytes (partial log-sum-exps).
// Decode of 32 heads x 128 dims with 33 splits needs 0.55 MB per token; when the workspace is too
// small the split count is lowered to what fits (down to 1, which needs none), so a call never
// fails for lack of workspace, it only loses parallelism.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "specula/core/error.h"
#include "specula/ops/cuda/attention_common.cuh"
#include "specula/ops/cuda/attention_sparse.cuh"
#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/cuda_ops.h"

namespace specula::ops::cuda_impl {

namespace attn {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

// Generic kernel: one block per (split, query head, token); each warp walks every kFallbackWarps-th
// cache row of the split with its own online softmax, lanes own head dimensions lane + 32 i.
// With a tree mask (kTree) a warp skips the window rows whose bit the query lacks (the test is
// warp-uniform: a whole warp works on one row). With block lists (kSparse) the split's range is
// over the query's walk items (attention_sparse.cuh) and the warps stride through each item's rows.
constexpr int kFallbackWarps = 4;
constexpr int kFallbackThreads = 32 * kFallbackWarps;
constexpr int kFallbackMaxHeadDim = 256;
constexpr int kFallbackDimsPerLane = kFallbackMaxHeadDim / 32;
constexpr int kFallbackTileRows = 64;  // split-partition granularity, in cache rows

constexpr int kCombineThreads = 256;
constexpr int kCombineWarps = kCombineThreads / 32;
constexpr int kCombineDims = 32;  // output dimensions per combine block: one per lane

template <bool kSparse>
using GenericParams = std::conditional_t<kSparse, SparseAttnParams, AttnParams>;

template <typename CacheT, bool kTree, bool kSparse>
__global__ void __launch_bounds__(kFallbackThreads) attention_generic_kernel(const GenericParams<kSparse> p) {
  __shared__ float s_acc[kFallbackWarps][kFallbackMaxHeadDim];
  __shared__ float s_m[kFallbackWarps], s_l[kFallbackWarps];
  extern __shared__ __align__(16) unsigned char generic_sparse_smem[];  // kSparse: the walk's union
  pdl_launch_dependents();
  pdl_wait();  // q, the caches, the slots and the partials' workspace belong to earlier kernels
  const int split = blockIdx.x, head = blockIdx.y, t = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int hd = p.head_dim, kvh = head / p.group;
  const int64_t orow = static_cast<int64_t>(t) * p.n_heads + head;
  const bool direct = p.num_splits == 1;

  const int len = attn_query_length<kTree>(p, t, split == 0 && head == 0);
  int row_begin = 0, row_end = 0;  // dense: this split's rows; sparse: its items are `items`
  bool empty;
  [[maybe_unused]] TileRange items{0, 0};
  [[maybe_unused]] SparseWalk walk;
  if constexpr (kSparse) {
    const SparseSmem s = sparse_smem_carve(generic_sparse_smem, 1, p.sparse_words, p.sparse_union_cap);
    const int first_entry = sparse_prefetch_entry(p, kvh, t, 1);
    if (tid == 0) sparse_store_token(p, s, kvh, t, 0, len);
    __syncthreads();
    const int base = kTree && len > 0 ? attn_tree_base(p) : 0;
    const int n_items = sparse_setup<kFallbackThreads, kTree>(p, s, kvh, t, 1, len, base, first_entry, walk);
    items = attn_split_range(n_items, p.num_splits, p.min_split_tiles, split);
    empty = items.begin >= items.end;
  } else {
    const TileRange range =
        attn_split_range(ceil_div_int(len, kFallbackTileRows), p.num_splits, p.min_split_tiles, split);
    row_begin = range.begin * kFallbackTileRows;
    row_end = min(range.end * kFallbackTileRows, len);
    empty = row_begin >= row_end;
  }
  if (empty) {  // nothing visible here (a split past the length, or an invalid slot)
    if (direct) {
      for (int d = tid; d < hd; d += kFallbackThreads) store_elem(p.out, p.out_kind, orow * hd + d, 0.0f);
    } else if (tid == 0) {
      p.partial_lse[orow * p.num_splits + split] = -INFINITY;
    }
    return;
  }

  float qv[kFallbackDimsPerLane], acc[kFallbackDimsPerLane];
#pragma unroll
  for (int i = 0; i < kFallbackDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    qv[i] = d < hd ? load_elem(p.q, p.q_kind, orow * hd + d) * p.scale_log2 : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const CacheT* k_base = static_cast<const CacheT*>(p.k) + static_cast<int64_t>(kvh) * p.capacity * hd;
  const CacheT* v_base = static_cast<const CacheT*>(p.v) + static_cast<int64_t>(kvh) * p.capacity * hd;
  [[maybe_unused]] int tree_base = 0;
  [[maybe_unused]] const uint32_t* tree_row = nullptr;
  if constexpr (kTree) {
    tree_base = attn_tree_base(p);
    tree_row = p.tree_bits + static_cast<int64_t>(t) * p.tree_words;
  }
  // One row, unless the tree hides it, into this warp's online softmax.
  auto consume = [&](int j) {
    if constexpr (kTree) {
      if (j >= tree_base) {  // j <= slots[T-1], so the bit index is below the width
        const int b = j - tree_base;
        if (((__ldg(tree_row + (b >> 5)) >> (b & 31)) & 1u) == 0u) return;
      }
    }
    const CacheT* k_row = k_base + static_cast<int64_t>(j) * hd;
    const CacheT* v_row = v_base + static_cast<int64_t>(j) * hd;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kFallbackDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) dot += qv[i] * to_float(k_row[d]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    const float m_new = fmaxf(m, dot);
    const float corr = exp2f(m - m_new);  // 0 on the first row (m = -inf)
    const float weight = exp2f(dot - m_new);
    l = l * corr + weight;
#pragma unroll
    for (int i = 0; i < kFallbackDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) acc[i] = acc[i] * corr + weight * to_float(v_row[d]);
    }
    m = m_new;
  };
  if constexpr (kSparse) {
    // Listed items end below the linear limit (all their rows visible to this query); walk tiles
    // end at its length and window items at slots[T-1], whose rows the tree bits decide.
    for (int u = items.begin; u < items.end; ++u) {
      const SparseItem item = walk.item(u);
      for (int j = item.col0 + warp; j < item.end; j += kFallbackWarps) consume(j);
    }
  } else {
    for (int j = row_begin + warp; j < row_end; j += kFallbackWarps) consume(j);
  }

#pragma unroll
  for (int i = 0; i < kFallbackDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) s_acc[warp][d] = acc[i];
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
  __syncthreads();
  // Causal: warp 0 saw row_begin, so the merged max is finite; warps that saw no row weigh
  // exp2(-inf) = 0. A tree mask may hide every row of the split from this query, and a sparse
  // walk's items may hold no row: then the split is empty (the same value in every thread, so the
  // early return is uniform).
  float mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < kFallbackWarps; ++w) mx = fmaxf(mx, s_m[w]);
  if constexpr (kTree || kSparse) {
    if (mx == -INFINITY) {
      if (direct) {
        for (int d = tid; d < hd; d += kFallbackThreads) store_elem(p.out, p.out_kind, orow * hd + d, 0.0f);
      } else if (tid == 0) {
        p.partial_lse[orow * p.num_splits + split] = -INFINITY;
      }
      return;
    }
  }
  float factor[kFallbackWarps], total = 0.0f;
#pragma unroll
  for (int w = 0; w < kFallbackWarps; ++w) {
    factor[w] = exp2f(s_m[w] - mx);
    total += factor[w] * s_l[w];
  }
  const float inv = 1.0f / total;
  for (int d = tid; d < hd; d += kFallbackThreads) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kFallbackWarps; ++w) o += factor[w] * s_acc[w][d];
    o *= inv;
    if (direct)
      store_elem(p.out, p.out_kind, orow * hd + d, o);
    else
      p.partial_o[(orow * p.num_splits + split) * hd + d] = o;
  }
  if (!direct && tid == 0) p.partial_lse[orow * p.num_splits + split] = mx + log2f(total);
}

// One block per (token, head) and 32 of its dimensions: weights exp2(lse_s - max) of the splits,
// then the weighted mean of their outputs. At decode there are few rows and the kernel is bound
// by load latency, not bandwidth, so everything is loaded in as few dependent rounds as
// possible: every split's LSE at once (one per thread: kMaxSplits <= kCombineThreads), then each
// warp's splits (lanes over the 32 dimensions, 128-byte rows) with the loads of a warp's splits
// independent of each other. Splits that saw nothing (lse = -inf) never wrote their output:
// their weight is 0 and their (stale) values are never loaded.
__global__ void __launch_bounds__(kCombineThreads) attention_combine_kernel(const AttnParams p) {
  static_assert(kMaxSplits <= kCombineThreads, "one split's LSE per thread");
  __shared__ float s_weight[kMaxSplits];
  __shared__ float s_max[kCombineWarps], s_total[kCombineWarps];
  __shared__ float s_acc[kCombineWarps][kCombineDims];
  pdl_launch_dependents();
  pdl_wait();  // the partials are the attention kernel's
  const int64_t row = blockIdx.x;  // token * n_heads + head
  const int splits = p.num_splits, hd = p.head_dim, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float v = tid < splits ? p.partial_lse[row * splits + tid] : -INFINITY;
  float mx = v;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, offset));
  if (lane == 0) s_max[warp] = mx;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kCombineWarps; ++w) mx = fmaxf(mx, s_max[w]);
  const float weight = v == -INFINITY ? 0.0f : exp2f(v - mx);
  if (tid < splits) s_weight[tid] = weight;
  float total = weight;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_xor_sync(0xffffffffu, total, offset);
  if (lane == 0) s_total[warp] = total;
  __syncthreads();
  total = 0.0f;
#pragma unroll
  for (int w = 0; w < kCombineWarps; ++w) total += s_total[w];
  const float inv_total = total > 0.0f ? 1.0f / total : 0.0f;  // 0: invalid slot, zeros out

  const int d = static_cast<int>(blockIdx.y) * kCombineDims + lane;
  const float* po = p.partial_o + row * splits * hd + d;
  float acc = 0.0f;
  if (d < hd) {
#pragma unroll 8
    for (int s = warp; s < splits; s += kCombineWarps) {
      const float w = s_weight[s];
      if (w > 0.0f) acc += w * po[static_cast<int64_t>(s) * hd];
    }
  }
  s_acc[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && d < hd) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kCombineWarps; ++w) sum += s_acc[w][lane];
    store_elem(p.out, p.out_kind, row * hd + d, sum * inv_total);
  }
}

template <typename CacheT, bool kTree, bool kSparse>
void launch_generic_kernel(GenericParams<kSparse> p, int multiprocessors, size_t smem_optin, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
  const auto kernel = attention_generic_kernel<CacheT, kTree, kSparse>;
  size_t smem = 0;
  if constexpr (kSparse) {  // one token per block: its list bounds the union
    p.sparse_union_cap =
        static_cast<int>(std::min<int64_t>(p.block_width, static_cast<int64_t>(p.sparse_words) * 32));
    smem = sparse_smem_bytes(1, p.sparse_words, p.sparse_union_cap);
    cudaFuncAttributes attributes{};
    SPECULA_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    SPECULA_CHECK(smem + attributes.sharedSizeBytes <= smem_optin, "attention: the block lists of a ", p.capacity,
                  "-row cache need ", smem, " bytes of shared memory, more than the device allows");
    SPECULA_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  int blocks_per_sm = 0;
  SPECULA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, kFallbackThreads, smem));
  SPECULA_CHECK(p.tokens <= 65535 && p.n_heads <= 65535, "attention: ", p.tokens, " tokens x ", p.n_heads,
                " heads exceed the generic kernel's grid");
  KernelShape shape{1, kFallbackTileRows, blocks_per_sm, 1};
  if constexpr (kSparse) shape.max_tiles = sparse_max_items(p, p.sparse_union_cap, kFallbackTileRows);
  plan_splits(p, shape, p.tokens * p.n_heads, multiprocessors, workspace, workspace_bytes);
  const dim3 grid(static_cast<unsigned>(p.num_splits), static_cast<unsigned>(p.n_heads),
                  static_cast<unsigned>(p.tokens));
  launch_kernel(stream, programmatic, kSparse ? "attention (generic kernel, block-sparse)" : "attention (generic kernel)",
                kernel, grid, dim3(kFallbackThreads), smem, p);
  if (p.num_splits > 1) launch_combine(p, stream, programmatic);
}

template <typename CacheT>
void launch_generic(const SparseAttnParams& p, int multiprocessors, size_t smem_optin, void* workspace,
                    size_t workspace_bytes, cudaStream_t stream, bool programmatic) {
  const bool tree = p.tree_bits != nullptr;
  if (p.blocks != nullptr) {
    if (tree)
      launch_generic_kernel<CacheT, true, true>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                                programmatic);
    else
      launch_generic_kernel<CacheT, false, true>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                                 programmatic);
  } else if (tree) {
    launch_generic_kernel<CacheT, true, false>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                               programmatic);
  } else {
    launch_generic_kernel<CacheT, false, false>(p, multiprocessors, smem_optin, workspace, workspace_bytes, stream,
                                                programmatic);
  }
}

ElemKind elem_kind(DType dtype) {
  switch (dtype) {
    case DType::BF16: return ElemKind::BF16;
    case DType::F16: return ElemKind::F16;
    case DType::F32: return ElemKind::F32;
    default: fail("attention: unsupported dtype ", dtype_name(dtype));
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

void plan_splits(AttnParams& p, const KernelShape& shape, int base_blocks, int multiprocessors, void* workspace,
                 size_t workspace_bytes) {
  // Enough blocks for one full wave; more splits than that only add partial traffic.
  const int target = std::max(1, multiprocessors) * std::max(1, shape.blocks_per_sm);
  int splits = base_blocks >= target ? 1 : ceil_div_int(target, base_blocks);
  int capacity_tiles = ceil_div_int(p.capacity, shape.tile_cols);
  if (shape.max_tiles > 0) capacity_tiles = std::min(capacity_tiles, shape.max_tiles);
  const int min_tiles = std::max(1, ceil_div_int(kPartialOverhead * shape.real_rows, shape.tile_cols));
  splits = std::min({splits, ceil_div_int(capacity_tiles, min_tiles), kMaxSplits});
  const size_t rows = static_cast<size_t>(p.tokens) * static_cast<size_t>(p.n_heads);
  const size_t per_split = rows * (static_cast<size_t>(p.head_dim) + 1) * sizeof(float);
  if (splits > 1) {
    const size_t fit = workspace_bytes > kPartialAlignment ? (workspace_bytes - kPartialAlignment) / per_split : 0;
    if (static_cast<size_t>(splits) > fit) splits = static_cast<int>(fit);
    if (splits < 2) splits = 1;
  }
  p.num_splits = splits;
  p.min_split_tiles = min_tiles;
  p.partial_o = nullptr;
  p.partial_lse = nullptr;
  if (splits > 1) {
    const size_t o_bytes = rows * static_cast<size_t>(splits) * static_cast<size_t>(p.head_dim) * sizeof(float);
    const size_t lse_offset = (o_bytes + kPartialAlignment - 1) / kPartialAlignment * kPartialAlignment;
    p.partial_o = static_cast<float*>(workspace);
    p.partial_lse = reinterpret_cast<float*>(static_cast<unsigned char*>(workspace) + lse_offset);
  }
}

void launch_combine(const AttnParams& p, cudaStream_t stream, bool programmatic) {
  const size_t rows = static_cast<size_t>(p.tokens) * static_cast<size_t>(p.n_heads);
  launch_kernel(stream, programmatic, "attention (split combine)", attention_combine_kernel,
                dim3(static_cast<unsigned>(rows), static_cast<unsigned>(ceil_div_int(p.head_dim, kCombineDims))),
                dim3(kCombineThreads), 0, p);
}

}  // namespace attn

void attention(CudaContext& ctx, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& slots,
               float scale, Tensor& out, const AttentionMask& mask) {
  using namespace attn;
  const int64_t tokens = q.dim(0), n_heads = q.dim(1), hd = q.dim(2), n_kv = k_cache.dim(0),
                capacity = k_cache.dim(1);
  if (tokens == 0) return;
  SPECULA_CHECK(tokens * n_heads <= INT_MAX && capacity <= INT_MAX && hd <= INT_MAX, "attention: shapes ",
                q.shape_string(), " / ", k_cache.shape_string(), " are too large for the CUDA kernels");
  SparseAttnParams p;
  p.q = q.data;
  p.k = k_cache.data;
  p.v = v_cache.data;
  p.slots = slots.as<const int32_t>();
  p.out = out.data;
  p.error_word = ctx.error_word();
  p.tokens = static_cast<int>(tokens);
  p.n_heads = static_cast<int>(n_heads);
  p.n_kv = static_cast<int>(n_kv);
  p.group = static_cast<int>(n_heads / n_kv);
  p.head_dim = static_cast<int>(hd);
  p.capacity = static_cast<int>(capacity);
  p.scale_log2 = scale * kLog2e;
  p.q_kind = elem_kind(q.dtype);
  p.out_kind = elem_kind(out.dtype);
  if (mask.is_tree()) {  // shapes checked by the dispatcher: [tokens, tree_words(width)], 1 <= width <= capacity
    p.tree_bits = static_cast<const uint32_t*>(mask.tree_bits.data);
    p.tree_words = static_cast<int>(AttentionMask::tree_words(mask.width));
    p.tree_width = static_cast<int>(mask.width);
  }
  if (mask.is_sparse()) {  // shapes checked by the dispatcher: [n_kv, tokens, width >= 1], block_size >= 1
    static_assert(AttentionMask::kDenseQuery == kSparseDenseMarker, "the kernels' dense-query marker");
    const int64_t width = mask.blocks.dim(2), block = mask.block_size;
    // Row arithmetic (block * block_size + block_size) and the union's entry count
    // (tokens per block x width, at most 64 x width) stay in int.
    SPECULA_CHECK(block <= INT_MAX - capacity && width <= (INT_MAX / 64), "attention: block lists of width ", width,
                  " over blocks of ", block, " rows are too large for the CUDA kernels");
    p.blocks = mask.blocks.as<const int32_t>();
    p.block_width = static_cast<int>(width);
    p.block_size = static_cast<int>(block);
    p.sparse_words = static_cast<int>(((capacity + block - 1) / block + 31) / 32);
    p.token_tiles = ctx.sparse_token_tiles();
  }

  const cuda::DeviceInfo& info = ctx.info();
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  const DType cache = k_cache.dtype;
  // The tensor cores take q in the cache's 16-bit format as is; q in another dtype would need a
  // rounding the reference does not do, so it takes the exact generic path instead.
  const bool tensor_cores = (cache == DType::BF16 || cache == DType::F16) && q.dtype == cache &&
                            (hd == 64 || hd == 128) && aligned16(q.data) && aligned16(k_cache.data) &&
                            aligned16(v_cache.data);
  // A sparse call whose union does not fit the tensor-core kernel's shared memory (lists far
  // wider than InfLLM-V2's) runs the generic kernel, whose union covers one query.
  if (tensor_cores && run_attention_mma(p, cache, info.multiprocessors, info.max_shared_memory_per_block_optin,
                                        ctx.workspace(), ctx.workspace_bytes(), stream, ctx.programmatic_launch()))
    return;
  SPECULA_CHECK(hd <= kFallbackMaxHeadDim, "attention: head_dim ", hd, " is larger than the CUDA kernels support (",
                kFallbackMaxHeadDim, ")");
  const bool programmatic = ctx.programmatic_launch();
  const size_t optin = info.max_shared_memory_per_block_optin;
  switch (cache) {
    case DType::BF16:
      launch_generic<__nv_bfloat16>(p, info.multiprocessors, optin, ctx.workspace(), ctx.workspace_bytes(), stream,
                                    programmatic);
      break;
    case DType::F16:
      launch_generic<__half>(p, info.multiprocessors, optin, ctx.workspace(), ctx.workspace_bytes(), stream,
                             programmatic);
      break;
    case DType::F32:
      launch_generic<float>(p, info.multiprocessors, optin, ctx.workspace(), ctx.workspace_bytes(), stream,
                            programmatic);
      break;
    default:
      fail("attention: unsupported KV-cache dtype ", dtype_name(cache));
  }
}

}  // namespace specula::ops::cuda_impl
