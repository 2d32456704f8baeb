// Small-M tensor-core GEMM for the CUDA linear op: out = alpha * x W^T + bias (or out += that) for
// 1..kSmallMMaxTokens tokens (linear.cu sends it 9..128: speculative verification of a draft tree,
// the draft head's levels), 16-bit weights with x in the same dtype, fp32 accumulation, out
// BF16/F16/F32. At these token counts a product is still bound by reading the weights once (64
// flop per weight byte at 64 tokens), so the kernel is a weight stream with tensor cores behind it:
//
// - "Swapped" operands: the MMA's M side is weight rows and its N side tokens (out^T = W x^T), so
//   tokens pad to a multiple of 8 (m16n8k16), not 16. Every block tile is kTileRows = 256 weight
//   rows (8 warps x two m16 tiles) by all the tokens (kNT n8 tiles, a template parameter).
// - Weights and x move through a kStages-deep ring of shared-memory stages with cp.async (16
//   bytes a thread, L2 bypassing L1, 256-byte L2 prefetch so DRAM sees 256-byte bursts of a row);
//   one stage is one unit: 64 K elements of the tile's rows (32 KB) plus of x (1 KB per 8 tokens).
//   With 4-6 stages, 96-160 KB of weights are in flight per SM, several times what DRAM latency
//   times the SM's share of bandwidth needs. One __syncthreads per unit frees the stage consumed
//   one iteration earlier for the copies of the unit kStages - 1 ahead.
// - No ldmatrix, no bank conflicts: the dot product does not care about the order of K, so within
//   a unit the k index each fragment register holds is permuted (the same way for weights and x)
//   such that every lane's operands are whole 16-byte pieces of a row. The producer stores each
//   16-byte piece at the place of the lane that consumes it, so a warp reads its fragments with
//   linear 512-byte LDS.128 (see "fragment order" below).
// - Stream-K partition (gemm_small_m_plan.h): one block per SM, each taking an equal contiguous
//   run of (tile, K chunk) units, so there is no tail wave for any N; tiles a block covers whole
//   are written directly, the at most two it shares with neighbours go to the workspace as fp32
//   partial sums, which a small reduce kernel adds in a fixed order (deterministic results) and
//   finishes (alpha, bias, accumulate, output dtype). Without a shared tile no reduce is launched.
// - PDL (pdl.cuh): the ring's first stages of weights are requested before pdl_wait(); x, the
//   workspace and the output only after it. The reduce kernel waits before reading the partials.
// Nothing allocates or synchronises and the launch depends only on the shapes, so calls capture
// into CUDA graphs; the workspace region is the caller's (linear_swiglu keeps its activations in
// front of it).
//
// Fragment order of one stage (all offsets in 16-byte pieces; lane = 4 * g + t, g = lane / 4):
//   weights: m16 tile mt (0..15 of the block), piece p = 2 * h + c, lane: the 16 bytes of row
//            16 * mt + 8 * h + g at K elements 32 * c + 8 * t .. + 7 of the unit -> mt * 128 + p * 32
//            + lane;
//   x:       n8 tile nt, piece c, lane: token 8 * nt + g at K elements 32 * c + 8 * t .. + 7 ->
//            nt * 64 + c * 32 + lane.
// Step j (0..3) of the unit's four k16 MMAs takes 32-bit word j of each piece: A = {row g low-c,
// row g+8 low-c, row g high-c, row g+8 high-c}, B = {low-c, high-c}; MMA k slots 2t, 2t+1 then
// stand for K elements 8t + 2j, +1 and slots 2t+8, 2t+9 for 32 + 8t + 2j, +1, for A and B alike.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <set>

#include "specula/ops/cuda/cuda_check.cuh"
#include "specula/ops/cuda/gemm_small_m_plan.h"
#include "specula/ops/cuda/kernel_utils.cuh"
#include "specula/ops/cuda/linear_impl.h"
#include "specula/ops/cuda/pdl.cuh"
#include "specula/ops/cuda/ptx.cuh"

namespace specula::ops::cuda_impl {

namespace {

using small_m::kChunk;
using small_m::kTileRows;
using small_m::Partition;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kMTilesPerWarp = static_cast<int>(kTileRows) / kWarps / 16;  // 2
constexpr int kPieceBytes = 16;
constexpr int kPiecesPerRow = static_cast<int>(kChunk) * 2 / kPieceBytes;  // 8 per 128-byte row chunk
constexpr int kRowsPerPass = kThreads / kPiecesPerRow;                     // 32 rows per pass of the block
constexpr int kWeightPiecesPerThread = static_cast<int>(kTileRows) / kRowsPerPass;  // 8
constexpr int kWeightStageBytes = static_cast<int>(kTileRows * kChunk) * 2;       // 32 KB
constexpr int kMTileBytes = 4 * kWarpSize * kPieceBytes;                           // 2 KB: 4 pieces a lane
constexpr int kNTileBytes = 2 * kWarpSize * kPieceBytes;                           // 1 KB: 2 pieces a lane
// Shared memory the ring may take: below the 227 KB opt-in limit of sm_90 (and sm_80's 163 KB is
// below every shape, which then declines), leaving the static reserve alone.
constexpr size_t kSharedBudget = 225 * 1024;
constexpr int kMaxStages = 6;
constexpr int kMinComputeMajor = 8;  // cp.async, bf16 mma.sync
constexpr int kReduceTokens = 8;     // tokens per reduce block (grid.y): enough blocks to fill the GPU
static_assert(kThreads % kPiecesPerRow == 0 && kTileRows % kRowsPerPass == 0, "whole rows per pass");
static_assert(kRowsPerPass == 32 && kPiecesPerRow == 8, "the producer's mapping: 4 rows x 8 pieces a warp, two m16 tiles a pass");

template <int kNT>
struct Shape {
  static constexpr int kTokens = 8 * kNT;
  static constexpr int kXStageBytes = kNT * kNTileBytes;
  static constexpr int kStageBytes = kWeightStageBytes + kXStageBytes;
  static constexpr int kStages = std::min<int>(kMaxStages, static_cast<int>(kSharedBudget / kStageBytes));
  static constexpr size_t kSharedBytes = static_cast<size_t>(kStages) * kStageBytes;
  static constexpr int kXPieces = kTokens * kPiecesPerRow;
  static constexpr int kXPiecesPerThread = (kXPieces + kThreads - 1) / kThreads;
  static_assert(kStages >= 3, "the ring needs a stage computing, one landing and one requested");
};

struct SmallMArgs {
  const void* weight;  // [n, k], 16-bit
  const void* x;       // [tokens, k], the weights' dtype
  const void* bias;    // [n] or null
  DType bias_dtype;
  void* out;  // [tokens, n]
  DType out_dtype;
  float* partials;  // blocks x kSlotsPerBlock slots of [tokens][kTileRows] fp32; null without split tiles
  int64_t n, k, tokens;
  int64_t chunks, units, blocks;  // the Partition
  float alpha;
  bool accumulate;
};


// Weights are read once: 16 bytes into shared memory past L1, with the L2 fetching the row's next
// 128 bytes too (the block's next unit reads them).
__device__ __forceinline__ void copy_weight_piece(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

// x: 16 bytes, or zeros without a read when src_bytes is 0 (padding tokens).
__device__ __forceinline__ void copy_x_piece(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}


__device__ __forceinline__ uint32_t word(const uint4& v, int j) {
  return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
}

// One finished output element (the epilogue of a whole tile). Out of line: inlined 2 * 4 * kNT
// times (with its dtype switches) it kept the epilogue loop from unrolling, which put the
// accumulators in local memory.
__device__ __noinline__ void store_output(const SmallMArgs& a, int64_t token, int64_t n, float dot) {
  store_linear_output(a.out, a.out_dtype, token * a.n + n, dot, a.alpha, a.bias, a.bias_dtype, n, a.accumulate);
}

template <typename TW, int kNT>
__global__ void __launch_bounds__(kThreads, 1) small_m_gemm_kernel(SmallMArgs a) {
  using S = Shape<kNT>;
  constexpr int kStages = S::kStages;
  extern __shared__ __align__(128) unsigned char ring[];
  pdl_launch_dependents();

  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const Partition part{a.chunks, a.units, a.blocks};
  const int64_t block = blockIdx.x;
  const int64_t first = part.begin(block);
  const int count = static_cast<int>(part.begin(block + 1) - first);
  const uint32_t ring_address = smem_addr(ring);

  // Producer side. Thread tid copies 16-byte piece `piece` (0..7) of the unit's chunk of rows
  // row0 + 32 i of the tile (i < 8), and of tokens row0 + 32 i for x. A warp covers rows 4 w .. 4 w
  // + 3, all eight pieces: four whole 128-byte row chunks per copy instruction. Within it, a quarter
  // warp takes pieces t = 0..3 of one half c of two neighbouring rows, whose fragment-order places
  // are 128 contiguous bytes: conflict-free shared-memory writes.
  const int producer_lane = tid % kWarpSize;
  const int piece_t = producer_lane % 4, piece_c = (producer_lane / 8) % 2;
  const int row0 = (tid / kWarpSize) * 4 + (producer_lane / 16) * 2 + (producer_lane / 4) % 2;
  const int piece = piece_c * 4 + piece_t;
  // Fragment-order offset of (row0, piece); row0 + 32 i lies two m16 tiles (2 * kMTileBytes) further per i.
  const uint32_t weight_dst0 = static_cast<uint32_t>(
      (row0 / 16) * kMTileBytes + (((row0 % 16) / 8) * 2 + piece_c) * kWarpSize * kPieceBytes +
      ((row0 % 8) * 4 + piece_t) * kPieceBytes);
  const TW* const weight = static_cast<const TW*>(a.weight);
  const TW* const x = static_cast<const TW*>(a.x);

  // Rows past n read row n - 1 instead (valid memory; their results are never stored).
  auto request_weights = [&](int64_t tile, int64_t chunk, uint32_t stage) {
    const int64_t row_base = tile * kTileRows + row0;
    const TW* src = weight + chunk * kChunk + piece * 8;
#pragma unroll
    for (int i = 0; i < kWeightPiecesPerThread; ++i) {
      const int64_t row = min(row_base + i * kRowsPerPass, a.n - 1);
      copy_weight_piece(stage + weight_dst0 + i * 2 * kMTileBytes, src + row * a.k);
    }
  };
  // Tokens past the batch are zero-filled (they only reach output columns that are never stored).
  auto request_x = [&](int64_t chunk, uint32_t stage) {
    const uint32_t xs = stage + kWeightStageBytes;
#pragma unroll
    for (int i = 0; i < S::kXPiecesPerThread; ++i) {
      const int token = row0 + i * kRowsPerPass;
      if (token < S::kTokens) {
        const uint32_t dst = xs + static_cast<uint32_t>((token / 8) * kNTileBytes +
                                                         (piece_c * kWarpSize + (token % 8) * 4 + piece_t) * kPieceBytes);
        const bool live = token < a.tokens;
        copy_x_piece(dst, x + (live ? token : 0) * a.k + chunk * kChunk + piece * 8, live ? kPieceBytes : 0);
      }
    }
  };

  // Consumer side: warp `warp` owns m16 tiles 2 * warp and 2 * warp + 1 of every tile.
  float acc[kMTilesPerWarp][kNT][4];
#pragma unroll
  for (int r = 0; r < kMTilesPerWarp; ++r)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[r][nt][e] = 0.0f;

  auto compute = [&](const unsigned char* stage) {
    uint4 w[kMTilesPerWarp][4];
#pragma unroll
    for (int r = 0; r < kMTilesPerWarp; ++r)
#pragma unroll
      for (int p = 0; p < 4; ++p)
        w[r][p] = *reinterpret_cast<const uint4*>(stage + (warp * kMTilesPerWarp + r) * kMTileBytes +
                                                  (p * kWarpSize + lane) * kPieceBytes);
    const unsigned char* xs = stage + kWeightStageBytes;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const uint4 lo = *reinterpret_cast<const uint4*>(xs + nt * kNTileBytes + lane * kPieceBytes);
      const uint4 hi = *reinterpret_cast<const uint4*>(xs + nt * kNTileBytes + (kWarpSize + lane) * kPieceBytes);
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int r = 0; r < kMTilesPerWarp; ++r) {
          const uint32_t a[4] = {word(w[r][0], j), word(w[r][2], j), word(w[r][1], j), word(w[r][3], j)};
          mma_m16n8k16<TW>(acc[r][nt], a, word(lo, j), word(hi, j));
        }
    }
  };

  // The end of the block's segment of `tile`: the finished output when the segment was the whole
  // tile, else raw partial sums into the block's slot; then the accumulators start again.
  const int g = lane / 4, t4 = lane % 4;
  auto finish_segment = [&](int64_t tile, bool whole) {
    float* const slot =
        whole ? nullptr
              : a.partials + (block * small_m::kSlotsPerBlock + part.slot(block, tile)) * a.tokens * kTileRows;
#pragma unroll
    for (int r = 0; r < kMTilesPerWarp; ++r)
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = (warp * kMTilesPerWarp + r) * 16 + g + (e >= 2 ? 8 : 0);  // within the tile
          const int64_t token = nt * 8 + t4 * 2 + (e & 1);
          if (token < a.tokens) {
            if (whole) {
              const int64_t n = tile * kTileRows + row;
              if (n < a.n) store_output(a, token, n, acc[r][nt][e]);
            } else {
              slot[token * kTileRows + row] = acc[r][nt][e];
            }
          }
          acc[r][nt][e] = 0.0f;
        }
  };

  // Prologue: the weights of the first kStages - 1 units before the previous kernel is done (they
  // never depend on it), x after; one commit group per stage (the first also holds the weights).
  {
    int64_t tile = first / a.chunks, chunk = first % a.chunks;
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < count) request_weights(tile, chunk, ring_address + s * S::kStageBytes);
      if (++chunk == a.chunks) chunk = 0, ++tile;
    }
  }
  pdl_wait();
  int64_t next_tile = first / a.chunks, next_chunk = first % a.chunks;  // the producer's next unit
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < count) request_x(next_chunk, ring_address + s * S::kStageBytes);
    cp_async_commit();
    if (++next_chunk == a.chunks) next_chunk = 0, ++next_tile;
  }

  int64_t tile = first / a.chunks, chunk = first % a.chunks;  // the unit computed
  int64_t segment_first = first;
  for (int i = 0; i < count; ++i) {
    // Unit i has landed (for this thread's copies; the barrier makes everyone's visible), and every
    // warp is done with unit i - 1, whose stage the copies below refill.
    cp_async_wait<kStages - 2>();
    __syncthreads();
    if (i + kStages - 1 < count) {
      const uint32_t stage = ring_address + ((i + kStages - 1) % kStages) * S::kStageBytes;
      request_weights(next_tile, next_chunk, stage);
      request_x(next_chunk, stage);
    }
    cp_async_commit();  // possibly empty: keeps one group per iteration for the wait above
    if (++next_chunk == a.chunks) next_chunk = 0, ++next_tile;

    compute(ring + (i % kStages) * S::kStageBytes);

    if (chunk == a.chunks - 1 || i == count - 1) {
      finish_segment(tile, chunk == a.chunks - 1 && segment_first == tile * a.chunks);
      segment_first = first + i + 1;
    }
    if (++chunk == a.chunks) chunk = 0, ++tile;
  }
}

// Adds the partial sums of the split tiles in block order and finishes them: block (x, y) handles
// the tile of block boundary x + 1 if it is the first boundary inside that tile (see
// Partition::reduced_tile), for kReduceTokens tokens from y * kReduceTokens; one thread a row.
__global__ void __launch_bounds__(static_cast<int>(kTileRows)) small_m_reduce_kernel(SmallMArgs a) {
  pdl_launch_dependents();
  pdl_wait();
  const Partition part{a.chunks, a.units, a.blocks};
  const int64_t tile = part.reduced_tile(static_cast<int64_t>(blockIdx.x) + 1);
  if (tile < 0) return;
  const int64_t n = tile * kTileRows + threadIdx.x;
  if (n >= a.n) return;
  const int64_t first_block = part.block_of(tile * a.chunks), last_block = part.block_of((tile + 1) * a.chunks - 1);
  const int64_t slot_floats = a.tokens * kTileRows;
  // Only the first contributor can hold the tile in its second slot; the others start inside it.
  const float* const head =
      a.partials + (first_block * small_m::kSlotsPerBlock + part.slot(first_block, tile)) * slot_floats + threadIdx.x;
  const int64_t token_end = min(a.tokens, static_cast<int64_t>(blockIdx.y + 1) * kReduceTokens);
  for (int64_t token = static_cast<int64_t>(blockIdx.y) * kReduceTokens; token < token_end; ++token) {
    float sum = head[token * kTileRows];
    for (int64_t b = first_block + 1; b <= last_block; ++b)
      sum += a.partials[b * small_m::kSlotsPerBlock * slot_floats + token * kTileRows + threadIdx.x];
    store_linear_output(a.out, a.out_dtype, token * a.n + n, sum, a.alpha, a.bias, a.bias_dtype, n, a.accumulate);
  }
}


template <typename TW, int kNT>
void launch(CudaContext& ctx, const SmallMArgs& args, bool reduce) {
  auto kernel = small_m_gemm_kernel<TW, kNT>;
  constexpr size_t smem = Shape<kNT>::kSharedBytes;
  std::shared_ptr<void>& slot = ctx.op_cache(CudaContext::OpCache::SmallMGemmKernels);
  if (!slot) slot = std::make_shared<RaisedKernels>();
  static_cast<RaisedKernels*>(slot.get())->once(reinterpret_cast<const void*>(kernel), [&] {
    SPECULA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  });
  launch_kernel(ctx, "linear (small-M gemm)", kernel, dim3(static_cast<unsigned>(args.blocks)), dim3(kThreads), smem,
                args);
  if (reduce) {
    const dim3 grid(static_cast<unsigned>(args.blocks - 1),
                    static_cast<unsigned>(ceil_div<int64_t>(args.tokens, kReduceTokens)));
    launch_kernel(ctx, "linear (small-M gemm reduce)", small_m_reduce_kernel, grid, dim3(kTileRows), 0, args);
  }
}

// n8 tiles for a token count: 8-token steps up to 32, then 16, then 32 (each step one more
// instantiation; the padding costs tensor-core work, which only matters at the top of the range).
int n_tiles_for(int64_t tokens) {
  if (tokens <= 16) return 2;
  if (tokens <= 32) return 4;
  if (tokens <= 48) return 6;
  if (tokens <= 64) return 8;
  if (tokens <= 96) return 12;
  return 16;
}

size_t shared_bytes_for(int n_tiles) {
  switch (n_tiles) {
    case 2: return Shape<2>::kSharedBytes;
    case 4: return Shape<4>::kSharedBytes;
    case 6: return Shape<6>::kSharedBytes;
    case 8: return Shape<8>::kSharedBytes;
    case 12: return Shape<12>::kSharedBytes;
    default: return Shape<16>::kSharedBytes;
  }
}

template <typename TW>
void dispatch(CudaContext& ctx, const SmallMArgs& args, int n_tiles, bool reduce) {
  switch (n_tiles) {
    case 2: launch<TW, 2>(ctx, args, reduce); return;
    case 4: launch<TW, 4>(ctx, args, reduce); return;
    case 6: launch<TW, 6>(ctx, args, reduce); return;
    case 8: launch<TW, 8>(ctx, args, reduce); return;
    case 12: launch<TW, 12>(ctx, args, reduce); return;
    default: launch<TW, 16>(ctx, args, reduce); return;
  }
}

// The dtypes store_linear_output reads and writes (not F64).
bool is_16_or_32_bit_float(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

}  // namespace

bool try_gemm_small_m(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                      float alpha, OutputMode mode) {
  return try_gemm_small_m(ctx, x, weight, bias, out, alpha, mode, ctx.workspace(), ctx.workspace_bytes());
}

bool try_gemm_small_m(CudaContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& out,
                      float alpha, OutputMode mode, void* workspace, size_t workspace_bytes) {
  const int64_t tokens = x.rows(), n = weight.dim(0), k = weight.dim(1);
  if (tokens < 1 || tokens > kSmallMMaxTokens || n < 1 || k < 1 || k % kChunk != 0) return false;
  if ((weight.dtype != DType::BF16 && weight.dtype != DType::F16) || x.dtype != weight.dtype) return false;
  if (!is_16_or_32_bit_float(out.dtype) || (!bias.empty() && !is_16_or_32_bit_float(bias.dtype))) return false;
  if (!is_aligned(weight.data, kPieceBytes) || !is_aligned(x.data, kPieceBytes)) return false;
  if (ctx.info().sm_major < kMinComputeMajor) return false;
  const int n_tiles = n_tiles_for(tokens);
  if (shared_bytes_for(n_tiles) > ctx.info().max_shared_memory_per_block_optin) return false;

  const Partition part = small_m::make_partition(n, k, ctx.info().multiprocessors);
  const bool reduce = small_m::any_split(part);
  if (reduce && (workspace == nullptr || !is_aligned(workspace, sizeof(float)) ||
                 workspace_bytes < small_m::partial_bytes(part, tokens)))
    return false;

  SmallMArgs args{};
  args.weight = weight.data;
  args.x = x.data;
  args.bias = bias.empty() ? nullptr : bias.data;
  args.bias_dtype = bias.empty() ? DType::F32 : bias.dtype;
  args.out = out.data;
  args.out_dtype = out.dtype;
  args.partials = reduce ? static_cast<float*>(workspace) : nullptr;
  args.n = n;
  args.k = k;
  args.tokens = tokens;
  args.chunks = part.chunks;
  args.units = part.units;
  args.blocks = part.blocks;
  args.alpha = alpha;
  args.accumulate = mode == OutputMode::Accumulate;
  if (weight.dtype == DType::BF16)
    dispatch<__nv_bfloat16>(ctx, args, n_tiles, reduce);
  else
    dispatch<__half>(ctx, args, n_tiles, reduce);
  return true;
}

}  // namespace specula::ops::cuda_impl
