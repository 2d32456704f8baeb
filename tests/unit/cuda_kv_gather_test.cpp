// CUDA ops::kv_gather (KV-cache compaction after speculative verification) against the CPU
// reference (ops::kv_gather on host copies of the same bytes).
//
// Moves are drawn the way an accepted draft path produces them: n source rows ascending from
// somewhere at or after the committed length L, destinations L .. L + n - 1, so sources and
// destinations overlap and a kernel that writes a destination before reading every source
// corrupts a later move. The count comes from device memory (shorter than the move lists in some
// cases), a captured graph is replayed with different counts, caches are bf16, f16 and f32 (16-byte
// copies) and misaligned views (narrower copies), up to 2 * 36 caches in one call and 300 (more
// than one launch holds), and out-of-range rows or counts must be reported and skipped.
// Copies are exact: every byte of every cache is compared. Skipped, saying why, without a GPU.
#ifdef SPECULA_WITH_CUDA

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/core/error.h"
#include "specula/ops/ops.h"

using namespace specula;
using namespace specula::test;

namespace {

struct GatherShape {
  int caches = 2, n_kv = 2, capacity = 300, head_dim = 128;
  DType dtype = DType::BF16;
  size_t offset_bytes = 0;  // misaligns every cache view
  std::string label() const {
    return std::to_string(caches) + " caches [" + std::to_string(n_kv) + ", " + std::to_string(capacity) + ", " +
           std::to_string(head_dim) + "] " + name_of(dtype) + (offset_bytes ? " +" + std::to_string(offset_bytes) : "");
  }
  size_t cache_bytes() const {
    return static_cast<size_t>(n_kv) * capacity * head_dim * dtype_size(dtype);
  }
};

// n ascending source rows from [committed, capacity), distinct, all >= their destinations
// committed .. committed + n - 1.
struct Moves {
  std::vector<int32_t> src, dst;
};

Moves accepted_path(int n, int committed, int capacity, std::mt19937& rng) {
  std::vector<int32_t> pool;
  for (int r = committed; r < capacity; ++r) pool.push_back(r);
  std::shuffle(pool.begin(), pool.end(), rng);
  Moves m;
  m.src.assign(pool.begin(), pool.begin() + n);
  std::sort(m.src.begin(), m.src.end());
  for (int i = 0; i < n; ++i) m.dst.push_back(committed + i);
  return m;
}

class CudaKvGather : public CudaOpsTest {
 protected:
  // Random bytes per cache (every bit pattern is a valid copy), uploaded.
  void make_caches(const GatherShape& s) {
    shape_ = s;
    host_.clear();
    device_.clear();
    for (int c = 0; c < s.caches; ++c) {
      std::vector<uint8_t> bytes(s.cache_bytes());
      std::mt19937_64 rng(seed());
      for (auto& b : bytes) b = static_cast<uint8_t>(rng());
      host_.push_back(bytes);
    }
    for (int c = 0; c < s.caches; ++c) {
      device_.push_back(device_tensor(s.dtype, {s.n_kv, s.capacity, s.head_dim}, s.offset_bytes));
      device_.back().buffer.upload(host_[static_cast<size_t>(c)].data(), s.cache_bytes(), s.offset_bytes);
    }
  }
  void reupload() {
    for (size_t c = 0; c < device_.size(); ++c)
      device_[c].buffer.upload(host_[c].data(), shape_.cache_bytes(), shape_.offset_bytes);
  }
  std::vector<Tensor> device_tensors() {
    std::vector<Tensor> t;
    for (auto& d : device_) t.push_back(d.tensor);
    return t;
  }
  // The CPU reference applied to copies of the host bytes; moves with a row outside the cache
  // are left out (the CUDA kernel skips them, the CPU op refuses them).
  std::vector<std::vector<uint8_t>> expected(const Moves& m, int count) {
    Moves valid;
    for (int i = 0; i < count; ++i) {
      const bool ok = m.src[static_cast<size_t>(i)] >= 0 && m.src[static_cast<size_t>(i)] < shape_.capacity &&
                      m.dst[static_cast<size_t>(i)] >= 0 && m.dst[static_cast<size_t>(i)] < shape_.capacity;
      if (!ok) continue;
      valid.src.push_back(m.src[static_cast<size_t>(i)]);
      valid.dst.push_back(m.dst[static_cast<size_t>(i)]);
    }
    std::vector<std::vector<uint8_t>> out = host_;
    std::vector<Tensor> caches;
    for (auto& bytes : out) caches.emplace_back(bytes.data(), shape_.dtype,
                                               std::initializer_list<int64_t>{shape_.n_kv, shape_.capacity, shape_.head_dim});
    std::vector<int32_t> n = {static_cast<int32_t>(valid.src.size())};
    valid.src.push_back(0);  // never empty
    valid.dst.push_back(0);
    const int64_t len = static_cast<int64_t>(valid.src.size());
    ops::kv_gather(cpu_.ops, caches, cpu_tensor(valid.src, {len}), cpu_tensor(valid.dst, {len}), cpu_tensor(n, {1}));
    return out;
  }
  void expect_caches(const std::vector<std::vector<uint8_t>>& want, const std::string& label) {
    for (size_t c = 0; c < device_.size(); ++c) {
      const std::vector<uint8_t> got = device_[c].buffer.download<uint8_t>(shape_.cache_bytes(), shape_.offset_bytes);
      ASSERT_EQ(got.size(), want[c].size());
      if (std::memcmp(got.data(), want[c].data(), got.size()) == 0) continue;
      size_t i = 0;
      while (got[i] == want[c][i]) ++i;
      const size_t row_bytes = static_cast<size_t>(shape_.head_dim) * dtype_size(shape_.dtype);
      FAIL() << label << " " << shape_.label() << ": cache " << c << " differs first at KV head "
             << i / (row_bytes * shape_.capacity) << " row " << (i / row_bytes) % shape_.capacity << " byte "
             << i % row_bytes;
    }
  }

  GatherShape shape_;
  std::vector<std::vector<uint8_t>> host_;
  std::vector<DeviceTensor> device_;
};

TEST_F(CudaKvGather, OverlappingMovesMatchTheReference) {
  std::mt19937 rng(1);
  const GatherShape shapes[] = {
      {72, 2, 300, 128, DType::BF16},      // 36 layers of K and V (Qwen3-4B-like), one launch
      {4, 8, 200, 128, DType::F32},        // f32 rows of 512 bytes
      {3, 3, 150, 64, DType::F16},
      {2, 2, 100, 80, DType::BF16},        // 160-byte rows
      {2, 2, 100, 4, DType::F32, 4},       // misaligned by 4 bytes: 4-byte copies
      {2, 1, 90, 3, DType::BF16, 2},       // 6-byte rows: 2-byte copies
      {300, 1, 40, 64, DType::BF16},       // more caches than one launch takes
  };
  for (const GatherShape& s : shapes) {
    make_caches(s);
    for (int n : {1, 2, 5, 17, 64}) {
      if (n > s.capacity / 3) continue;
      const int committed = std::uniform_int_distribution<int>(0, s.capacity - 2 * n)(rng);
      const Moves m = accepted_path(n, committed, s.capacity, rng);
      // The count is read on the device; the lists may be longer than it.
      for (int count : {n, n / 2}) {
        reupload();
        std::vector<Tensor> caches = device_tensors();
        DeviceTensor src = upload_ints(m.src, {n}), dst = upload_ints(m.dst, {n}), cnt = upload_ints({count}, {1});
        ops::kv_gather(gpu_.ops, caches, src.tensor, dst.tensor, cnt.tensor);
        gpu_.sync();
        expect_no_device_errors();
        expect_caches(expected(m, count), "n=" + std::to_string(n) + " count=" + std::to_string(count));
      }
    }
  }
}

TEST_F(CudaKvGather, GraphReplaysWithOtherCounts) {
  // One capture over 2 * 36 caches; the accepted length (count) and the rows change in device
  // memory between replays.
  std::mt19937 rng(2);
  for (DType dt : {DType::BF16, DType::F32}) {
    make_caches({72, 2, 256, 128, dt});
    const int max_moves = 10;
    Moves m = accepted_path(max_moves, 100, 256, rng);
    DeviceTensor src = upload_ints(m.src, {max_moves}), dst = upload_ints(m.dst, {max_moves}),
                 cnt = upload_ints({max_moves}, {1});
    std::vector<Tensor> caches = device_tensors();
    const auto stream = static_cast<cudaStream_t>(gpu_.cuda->stream());
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    SPECULA_TEST_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    ops::kv_gather(gpu_.ops, caches, src.tensor, dst.tensor, cnt.tensor);
    SPECULA_TEST_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    SPECULA_TEST_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int count : {3, 0, 10, 1, 7}) {
      m = accepted_path(max_moves, std::uniform_int_distribution<int>(0, 200)(rng), 256, rng);
      src.buffer.upload(m.src, src.offset);
      dst.buffer.upload(m.dst, dst.offset);
      cnt.buffer.upload(std::vector<int32_t>{count}, cnt.offset);
      reupload();
      SPECULA_TEST_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      gpu_.sync();
      expect_no_device_errors();
      expect_caches(expected(m, count), "graph replay count=" + std::to_string(count));
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
}

TEST_F(CudaKvGather, OutOfRangeRowsAreReportedAndSkipped) {
  std::mt19937 rng(3);
  make_caches({6, 2, 120, 64, DType::BF16});
  Moves m = accepted_path(6, 50, 120, rng);
  for (auto [which, bad] : {std::pair{1, 120}, std::pair{4, -1}, std::pair{0, 1000000}}) {
    Moves broken = m;
    if (which % 2 == 0)
      broken.src[static_cast<size_t>(which)] = bad;
    else
      broken.dst[static_cast<size_t>(which)] = bad;
    reupload();
    std::vector<Tensor> caches = device_tensors();
    DeviceTensor src = upload_ints(broken.src, {6}), dst = upload_ints(broken.dst, {6}), cnt = upload_ints({6}, {1});
    ops::kv_gather(gpu_.ops, caches, src.tensor, dst.tensor, cnt.tensor);
    gpu_.sync();
    EXPECT_THROW(gpu_.cuda->check_device_errors(), Error) << "row " << bad;
    expect_caches(expected(broken, 6), "with row " + std::to_string(bad) + " (the other moves still happen)");
  }
  // A count outside [0, n]: reported, nothing moves.
  for (int count : {7, -1}) {
    reupload();
    std::vector<Tensor> caches = device_tensors();
    DeviceTensor src = upload_ints(m.src, {6}), dst = upload_ints(m.dst, {6}), cnt = upload_ints({count}, {1});
    ops::kv_gather(gpu_.ops, caches, src.tensor, dst.tensor, cnt.tensor);
    gpu_.sync();
    EXPECT_THROW(gpu_.cuda->check_device_errors(), Error) << "count " << count;
    expect_caches(host_, "count " + std::to_string(count));
  }
}

TEST_F(CudaKvGather, TooManyMovesAreRefusedOnTheHost) {
  make_caches({1, 1, 4000, 64, DType::BF16});
  std::vector<Tensor> caches = device_tensors();
  std::vector<int32_t> rows(3000, 0);
  DeviceTensor src = upload_ints(rows, {3000}), dst = upload_ints(rows, {3000}), cnt = upload_ints({0}, {1});
  EXPECT_THROW(ops::kv_gather(gpu_.ops, caches, src.tensor, dst.tensor, cnt.tensor), Error);
}

}  // namespace

#endif  // SPECULA_WITH_CUDA
