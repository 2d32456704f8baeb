// How the small-M tensor-core GEMM (ops/cuda/gemm_small_m.cu) divides a product among its blocks:
// the work partition shared by the main kernel, its reduce kernel and the host, written once here
// (host and device) so a plain C++ test can check its invariants without a GPU.
//
// The work is a flat sequence of units: unit u = (tile t, chunk q) with t = u / chunks, q = u %
// chunks, where a tile is kTileRows consecutive weight rows (output columns) and a chunk kChunk
// consecutive K elements; tiles follow each other, chunks within a tile in K order. Block b of
// `blocks` takes the contiguous units [begin(b), begin(b + 1)) ("stream-K"): every block streams
// the same number of weight bytes to within one unit, so a grid of one block per SM has no tail
// wave whatever N / kTileRows is. A block's range cuts through at most two tiles (its first and
// its last); its share of such a tile ("segment") goes to workspace slot 0 (first tile) or 1 (last
// tile) as fp32 partial sums, and tiles it covers whole are written straight to the output. A
// tile cut by a block boundary is "split"; the reduce kernel adds its segments in block order
// (deterministic); each split tile belongs to the reduce blocks (one per 8 tokens) of the first
// block boundary inside it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "specula/core/host_device.h"

namespace specula::ops::cuda_impl::small_m {

constexpr int64_t kTileRows = 256;  // weight rows per tile: 8 warps x two m16 tiles
constexpr int64_t kChunk = 64;      // K elements per unit: 128 bytes of each weight row
constexpr int64_t kSlotsPerBlock = 2;

struct Partition {
  int64_t chunks = 0;  // units per tile: K / kChunk
  int64_t units = 0;   // tiles * chunks
  int64_t blocks = 0;  // 1..units

  // First unit of block b (b = blocks gives units).
  SPECULA_HOST_DEVICE int64_t begin(int64_t b) const { return b * units / blocks; }
  // The block whose range holds unit u: the largest b with begin(b) <= u.
  SPECULA_HOST_DEVICE int64_t block_of(int64_t u) const { return ((u + 1) * blocks - 1) / units; }
  // The workspace slot of block b's partial sums for tile t (one of its tiles): 0 for its first
  // tile, 1 for any later one (only its last can be partial).
  SPECULA_HOST_DEVICE int64_t slot(int64_t b, int64_t t) const { return begin(b) / chunks == t ? 0 : 1; }
  // Whether more than one block computes tile t (its output then comes from the reduce kernel).
  SPECULA_HOST_DEVICE bool split(int64_t t) const {
    return block_of(t * chunks) != block_of((t + 1) * chunks - 1);
  }
  // The split tile reduce block `boundary` (1..blocks-1, the boundary between blocks boundary-1
  // and boundary) is responsible for, or -1: the tile the boundary cuts, if no earlier boundary
  // cuts the same tile.
  SPECULA_HOST_DEVICE int64_t reduced_tile(int64_t boundary) const {
    const int64_t u = begin(boundary);
    if (u % chunks == 0) return -1;  // between two tiles: cuts none
    const int64_t t = u / chunks;
    return begin(boundary - 1) > t * chunks ? -1 : t;
  }
};

// The partition of a weight matrix [n, k] (k a multiple of kChunk, n and k > 0) over at most
// max_blocks blocks (one per SM): as many blocks as there are units, up to that.
inline Partition make_partition(int64_t n, int64_t k, int64_t max_blocks) {
  Partition p;
  p.chunks = k / kChunk;
  p.units = (n + kTileRows - 1) / kTileRows * p.chunks;
  p.blocks = max_blocks < p.units ? (max_blocks > 0 ? max_blocks : 1) : p.units;
  return p;
}

// Whether any tile is split, i.e. whether the reduce kernel (and the workspace) is needed.
inline bool any_split(const Partition& p) {
  for (int64_t b = 1; b < p.blocks; ++b)
    if (p.begin(b) % p.chunks != 0) return true;
  return false;
}

// Workspace the partial sums of `tokens` rows take: kSlotsPerBlock slots of tokens x kTileRows
// floats per block.
inline size_t partial_bytes(const Partition& p, int64_t tokens) {
  return static_cast<size_t>(p.blocks * kSlotsPerBlock * tokens * kTileRows) * sizeof(float);
}

}  // namespace specula::ops::cuda_impl::small_m
