// The work partition of the small-M GEMM (ops/cuda/gemm_small_m_plan.h), checked on the host
// (no GPU needed): the kernel's walk over its units and the reduce kernel's choice of tiles are
// replayed here for the real shapes (Llama-3-8B projections, the LM heads) and odd ones, on grids
// of 1 block, a few, 132 and more blocks than units, and every unit must be computed exactly once,
// every tile either written whole by one block or assembled by exactly one reduce block from
// exactly the partial segments the blocks wrote, and no two segments may share a workspace slot.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "specula/ops/cuda/gemm_small_m_plan.h"

namespace {

using specula::ops::cuda_impl::small_m::any_split;
using specula::ops::cuda_impl::small_m::kChunk;
using specula::ops::cuda_impl::small_m::kSlotsPerBlock;
using specula::ops::cuda_impl::small_m::kTileRows;
using specula::ops::cuda_impl::small_m::make_partition;
using specula::ops::cuda_impl::small_m::Partition;
using specula::ops::cuda_impl::small_m::partial_bytes;

struct Replay {
  std::vector<int> unit_hits;                                   // per unit
  std::vector<int> whole_writes;                                // per tile: direct output writes
  std::map<std::pair<int64_t, int64_t>, int64_t> slot_tile;     // (block, slot) -> tile written there
  std::map<std::pair<int64_t, int64_t>, int64_t> slot_units;    // (block, slot) -> units summed there
  std::vector<int> reduce_blocks;                               // per tile: reduce blocks taking it
  std::vector<int64_t> reduced_units;                           // per tile: units the reduce adds up
};

// The main kernel's loop (gemm_small_m.cu) over block b's units, recording what it writes.
void replay_block(const Partition& p, int64_t b, Replay& r) {
  const int64_t first = p.begin(b);
  const int64_t count = p.begin(b + 1) - first;
  ASSERT_GE(count, 1) << "block " << b << " has no work";
  int64_t tile = first / p.chunks, chunk = first % p.chunks, segment_first = first;
  for (int64_t i = 0; i < count; ++i) {
    ++r.unit_hits[static_cast<size_t>(first + i)];
    ASSERT_EQ(p.block_of(first + i), b) << "unit " << first + i;
    if (chunk == p.chunks - 1 || i == count - 1) {
      const bool whole = chunk == p.chunks - 1 && segment_first == tile * p.chunks;
      if (whole) {
        ++r.whole_writes[static_cast<size_t>(tile)];
      } else {
        const int64_t slot = p.slot(b, tile);
        ASSERT_TRUE(slot >= 0 && slot < kSlotsPerBlock);
        const auto key = std::make_pair(b, slot);
        ASSERT_EQ(r.slot_tile.count(key), 0u) << "block " << b << " writes slot " << slot << " twice";
        r.slot_tile[key] = tile;
        r.slot_units[key] = first + i + 1 - segment_first;
      }
      segment_first = first + i + 1;
    }
    if (++chunk == p.chunks) chunk = 0, ++tile;
  }
}

// The reduce kernel's choice of tile for boundary `boundary` and the slots it adds up.
void replay_reduce(const Partition& p, int64_t boundary, Replay& r) {
  const int64_t tile = p.reduced_tile(boundary);
  if (tile < 0) return;
  ++r.reduce_blocks[static_cast<size_t>(tile)];
  const int64_t first_block = p.block_of(tile * p.chunks), last_block = p.block_of((tile + 1) * p.chunks - 1);
  for (int64_t b = first_block; b <= last_block; ++b) {
    // The kernel reads the first contributor's slot from Partition::slot, the others' slot 0.
    const int64_t slot = b == first_block ? p.slot(b, tile) : 0;
    EXPECT_EQ(slot, p.slot(b, tile)) << "block " << b << " tile " << tile;
    const auto key = std::make_pair(b, slot);
    ASSERT_EQ(r.slot_tile.count(key), 1u) << "reduce of tile " << tile << " reads unwritten slot " << slot
                                          << " of block " << b;
    EXPECT_EQ(r.slot_tile[key], tile) << "reduce of tile " << tile << " reads block " << b << "'s slot " << slot;
    r.reduced_units[static_cast<size_t>(tile)] += r.slot_units[key];
  }
}

void check_partition(int64_t n, int64_t k, int64_t max_blocks) {
  const std::string label = "N=" + std::to_string(n) + " K=" + std::to_string(k) + " blocks<=" +
                            std::to_string(max_blocks);
  SCOPED_TRACE(label);
  const Partition p = make_partition(n, k, max_blocks);
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  ASSERT_EQ(p.chunks, k / kChunk);
  ASSERT_EQ(p.units, tiles * p.chunks);
  ASSERT_EQ(p.blocks, std::min(max_blocks, p.units));
  ASSERT_EQ(p.begin(0), 0);
  ASSERT_EQ(p.begin(p.blocks), p.units);

  Replay r;
  r.unit_hits.assign(static_cast<size_t>(p.units), 0);
  r.whole_writes.assign(static_cast<size_t>(tiles), 0);
  r.reduce_blocks.assign(static_cast<size_t>(tiles), 0);
  r.reduced_units.assign(static_cast<size_t>(tiles), 0);
  for (int64_t b = 0; b < p.blocks; ++b) {
    replay_block(p, b, r);
    if (::testing::Test::HasFatalFailure()) return;
  }
  for (int64_t b = 1; b < p.blocks; ++b) {
    replay_reduce(p, b, r);
    if (::testing::Test::HasFatalFailure()) return;
  }

  for (int64_t u = 0; u < p.units; ++u) ASSERT_EQ(r.unit_hits[static_cast<size_t>(u)], 1) << "unit " << u;
  bool split_seen = false;
  for (int64_t t = 0; t < tiles; ++t) {
    const size_t i = static_cast<size_t>(t);
    if (p.split(t)) {
      split_seen = true;
      EXPECT_EQ(r.whole_writes[i], 0) << "split tile " << t << " also written whole";
      EXPECT_EQ(r.reduce_blocks[i], 1) << "split tile " << t;
      EXPECT_EQ(r.reduced_units[i], p.chunks) << "split tile " << t << ": the reduce adds up the wrong segments";
    } else {
      EXPECT_EQ(r.whole_writes[i], 1) << "tile " << t;
      EXPECT_EQ(r.reduce_blocks[i], 0) << "unsplit tile " << t << " also reduced";
    }
  }
  EXPECT_EQ(any_split(p), split_seen);
  // Every slot written lies in the workspace partial_bytes() asks for.
  for (const auto& [key, tile] : r.slot_tile)
    EXPECT_LE(static_cast<size_t>((key.first * kSlotsPerBlock + key.second + 1) * kTileRows) * sizeof(float),
              partial_bytes(p, 1));
}

TEST(GemmSmallMPlan, EveryUnitOnceEveryTileAssembledOnce) {
  const int64_t shapes[][2] = {
      {6144, 4096},   {4096, 4096}, {28672, 4096}, {4096, 14336}, {128256, 4096},  // Llama-3-8B
      {32768, 4096},  {8192, 4096}, {4096, 8192},                                  // draft head
      {72, 64},       {1000, 64},   {4104, 4160},  {72, 8192},    {1, 64},   {257, 128}, {256, 4160},
  };
  for (const auto& s : shapes)
    for (int64_t blocks : {int64_t{1}, int64_t{2}, int64_t{17}, int64_t{132}, int64_t{1000}}) check_partition(s[0], s[1], blocks);
}

TEST(GemmSmallMPlan, SplitOnlyWhereABoundaryCutsATile) {
  // K = 64: one unit per tile, so tiles are never shared.
  EXPECT_FALSE(any_split(make_partition(4104, 64, 132)));
  EXPECT_FALSE(any_split(make_partition(72, 64, 132)));
  // One tile, fewer blocks than its 65 units: every block shares it.
  EXPECT_TRUE(any_split(make_partition(72, 4160, 132)));
  // 17 tiles of 65 units on 17 blocks: the boundaries fall between tiles.
  EXPECT_FALSE(any_split(make_partition(4104, 4160, 17)));
  EXPECT_TRUE(any_split(make_partition(4104, 4160, 132)));
  // A single block never needs the reduce.
  EXPECT_FALSE(any_split(make_partition(128256, 4096, 1)));
  EXPECT_EQ(partial_bytes(make_partition(4096, 4096, 132), 60), size_t{132} * 2 * 60 * 256 * 4);
}

}  // namespace
