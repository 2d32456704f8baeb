// ops::top_k_log_softmax: the CPU reference against a brute-force sort, and the CUDA kernel (rows
// split into chunks, ops/cuda/top_k.cu) against the CPU reference on fresh random rows: 1 to 200
// rows of 1 to 152K entries, k 1, 10, 64 and k == vocabulary, every list width, ties within and
// across chunks, -inf and NaN entries, a maximum in a row's last chunk, unaligned logits, a
// workspace too small for all rows at once, and replays of a captured graph.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "specula/ops/ops.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/cuda_context.h"
#endif

using namespace specula;

namespace {

std::vector<float> random_row_set(int64_t rows, int64_t vocab, bool ties, uint64_t seed) {
  std::vector<float> v = test::random_floats(static_cast<size_t>(rows * vocab), test::test_seed(seed), -8.0f, 8.0f);
  for (size_t i = 0; i < v.size(); ++i) {
    if (ties) v[i] = std::round(v[i]);  // 17 levels: many equal values at every cut
    if (i % 97 == 5) v[i] = -INFINITY;
    if (i % 211 == 7) v[i] = NAN;
  }
  return v;
}

// Equal within `tol`, or both NaN, or the same infinity.
bool close(float a, float b, float tol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= tol;
}

struct Expected {
  std::vector<float> values;
  std::vector<int32_t> indices;
};

// Sort everything: (value desc, index asc), NaN last.
Expected brute_force(const std::vector<float>& x, int64_t rows, int64_t vocab, int64_t k) {
  Expected e;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * vocab;
    double m = -INFINITY, s = 0;
    for (int64_t i = 0; i < vocab; ++i)
      if (!std::isnan(row[i])) m = std::max<double>(m, row[i]);
    for (int64_t i = 0; i < vocab; ++i)
      if (!std::isnan(row[i])) s += std::exp(row[i] - m);
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      if (std::isnan(row[a]) || std::isnan(row[b])) return !std::isnan(row[a]) && std::isnan(row[b]);
      return row[a] > row[b];
    });
    for (int64_t j = 0; j < k; ++j) {
      e.indices.push_back(order[static_cast<size_t>(j)]);
      e.values.push_back(static_cast<float>(row[order[static_cast<size_t>(j)]] - (m + std::log(s))));
    }
  }
  return e;
}

TEST(TopKLogSoftmax, CpuEqualsBruteForce) {
  test::CpuTestContext cpu = test::make_cpu_context(2);
  for (int64_t vocab : {7, 100, 3001}) {
    for (int64_t k : {1, 5, 7}) {
      for (bool ties : {false, true}) {
        const int64_t rows = 3;
        std::vector<float> x = random_row_set(rows, vocab, ties, static_cast<uint64_t>(vocab * 10 + k));
        std::vector<float> values(static_cast<size_t>(rows * k));
        std::vector<int32_t> indices(static_cast<size_t>(rows * k));
        Tensor vt = test::cpu_tensor(values, {rows, k}), it = test::cpu_tensor(indices, {rows, k});
        ops::top_k_log_softmax(cpu.ops, test::cpu_tensor(x, {rows, vocab}), vt, it);
        const Expected e = brute_force(x, rows, vocab, k);
        EXPECT_EQ(indices, e.indices) << "vocab " << vocab << " k " << k << " ties " << ties;
        for (size_t i = 0; i < values.size(); ++i) EXPECT_TRUE(close(values[i], e.values[i], 1e-5f)) << values[i] << " vs " << e.values[i];
      }
    }
  }
}

TEST(TopKLogSoftmax, RefusesKBeyondTheRow) {
  test::CpuTestContext cpu = test::make_cpu_context(1);
  std::vector<float> x(4), values(5);
  std::vector<int32_t> indices(5);
  Tensor vt = test::cpu_tensor(values, {1, 5}), it = test::cpu_tensor(indices, {1, 5});
  EXPECT_THROW(ops::top_k_log_softmax(cpu.ops, test::cpu_tensor(x, {1, 4}), vt, it), Error);
}

#ifdef SPECULA_WITH_CUDA
// Rows for the CUDA kernel, which splits each row into chunks of 4096 (ops/cuda/top_k.cu):
// mode 0 random values, 1 the same rounded to 17 levels, 2 mostly two values (the top one shared
// by a quarter of the row, so the lowest-index rule decides across every chunk boundary); all
// with random_row_set's -inf and NaN entries. Then, where the row count allows: the last row's
// maximum at its last index; row 1 nearly all NaN (fewer numbers than k at small widths, so
// NaN entries are chosen, the lowest index first); row 2 all -inf; row 3 a block of equal
// maxima in its last 70 entries.
std::vector<float> cuda_rows(int64_t rows, int64_t vocab, int mode, uint64_t seed) {
  std::vector<float> x = random_row_set(rows, vocab, mode == 1, seed);
  if (mode == 2) {
    const std::vector<int32_t> pick = test::random_ints(x.size(), seed ^ 0x5eedu, 0, 3);
    for (size_t i = 0; i < x.size(); ++i)
      if (!std::isnan(x[i]) && x[i] != -INFINITY) x[i] = pick[i] == 0 ? 0.75f : -1.5f;
  }
  auto row = [&](int64_t r) { return x.data() + r * vocab; };
  if (rows >= 2) row(rows - 1)[vocab - 1] = 40.0f;
  if (rows >= 3)
    for (int64_t i = 0; i < vocab; ++i)
      row(1)[i] = i % (vocab / 3 + 1) == 0 ? 2.0f - 0.001f * static_cast<float>(i) : NAN;
  if (rows >= 4) std::fill(row(2), row(2) + vocab, -INFINITY);
  if (rows >= 5)
    for (int64_t i = std::max<int64_t>(0, vocab - 70); i < vocab; ++i) row(3)[i] = 30.0f;
  return x;
}

// The CUDA op on `x` [rows, vocab] against the CPU reference: indices exactly, values within
// 2e-5 + 1e-6 |v| (fp32 log-sum-exp against the reference's double sum).
void expect_cuda_matches_cpu(test::CudaTestContext& gpu, test::CpuTestContext& cpu, const std::vector<float>& x,
                             int64_t rows, int64_t vocab, int64_t k, const std::string& what, size_t offset_bytes = 0) {
  std::vector<float> input = x;
  std::vector<float> values(static_cast<size_t>(rows * k));
  std::vector<int32_t> indices(static_cast<size_t>(rows * k));
  Tensor vt = test::cpu_tensor(values, {rows, k}), it = test::cpu_tensor(indices, {rows, k});
  ops::top_k_log_softmax(cpu.ops, test::cpu_tensor(input, {rows, vocab}), vt, it);
  test::DeviceTensor dx = test::upload_tensor(x, DType::F32, {rows, vocab}, offset_bytes);
  test::DeviceTensor dv = test::device_tensor(DType::F32, {rows, k}), di = test::device_tensor(DType::I32, {rows, k});
  test::poison(dv);
  test::poison(di);
  ops::top_k_log_softmax(gpu.ops, dx.tensor, dv.tensor, di.tensor);
  const std::vector<float> got_v = test::download_f32(dv);
  const std::vector<int32_t> got_i = test::download_ints(di);
  for (size_t i = 0; i < indices.size(); ++i)
    ASSERT_EQ(got_i[i], indices[i]) << what << ": row " << static_cast<int64_t>(i) / k << " rank "
                                    << static_cast<int64_t>(i) % k;
  for (size_t i = 0; i < values.size(); ++i)
    ASSERT_TRUE(close(got_v[i], values[i], 2e-5f + 1e-6f * std::fabs(values[i])))
        << got_v[i] << " vs " << values[i] << ", " << what << ": row " << static_cast<int64_t>(i) / k << " rank "
        << static_cast<int64_t>(i) % k;
}

// Logits are F32 only (the op's contract), so there is no 16-bit variant.
TEST(CudaTopKLogSoftmax, MatchesCpu) {
  SPECULA_SKIP_WITHOUT_CUDA();
  test::CudaTestContext gpu = test::make_cuda_context();
  test::CpuTestContext cpu = test::make_cpu_context(8);
  uint64_t draw = 0;
  for (int64_t vocab : {1, 7, 1000, 8191, 32768, 128256, 152064}) {
    for (int64_t rows : {1, 3, 10, 64, 200}) {
      for (int mode : {0, 1, 2}) {
        const std::vector<float> x = cuda_rows(rows, vocab, mode, test::test_seed(draw++));
        std::vector<int64_t> ks = {1, 10, 64};
        if (vocab > 1 && vocab < 10) ks.push_back(vocab);  // k == vocabulary
        for (int64_t k : ks) {
          if (k > vocab) continue;
          expect_cuda_matches_cpu(gpu, cpu, x, rows, vocab, k,
                                  "rows " + std::to_string(rows) + " vocab " + std::to_string(vocab) + " k " +
                                      std::to_string(k) + " mode " + std::to_string(mode));
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
}

// The list widths between the drafting k and the maximum (16, 17, 32, 33, 63), and logits that
// are not 16-byte aligned (the scalar-load path for a row length that allows vectors).
TEST(CudaTopKLogSoftmax, EveryListWidthAndUnalignedRows) {
  SPECULA_SKIP_WITHOUT_CUDA();
  test::CudaTestContext gpu = test::make_cuda_context();
  test::CpuTestContext cpu = test::make_cpu_context(8);
  uint64_t draw = 0;
  for (int64_t vocab : {4096, 4100, 12289, 131072}) {
    for (int64_t k : {16, 17, 32, 33, 63}) {
      for (size_t offset : {size_t{0}, size_t{4}}) {
        const int64_t rows = 5;
        const std::vector<float> x = cuda_rows(rows, vocab, static_cast<int>(draw % 3), test::test_seed(draw));
        ++draw;
        expect_cuda_matches_cpu(gpu, cpu, x, rows, vocab, k,
                                "vocab " + std::to_string(vocab) + " k " + std::to_string(k) + " offset " +
                                    std::to_string(offset),
                                offset);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

// A workspace that holds the partial results of two rows at a time: the op splits the rows over
// several launches. None at all: rows of one chunk still work, longer rows are refused.
TEST(CudaTopKLogSoftmax, SmallWorkspace) {
  SPECULA_SKIP_WITHOUT_CUDA();
  test::CpuTestContext cpu = test::make_cpu_context(4);
  {
    // 32768 entries: 8 chunks, each a 16-key list and a (max, sum) pair: 1088 bytes a row.
    test::CudaTestContext gpu;
    gpu.cuda = cuda::CudaContext::create(0, 2 * 1088 + 100);
    gpu.ops.cuda = gpu.cuda.get();
    const std::vector<float> x = cuda_rows(5, 32768, 1, test::test_seed(1));
    expect_cuda_matches_cpu(gpu, cpu, x, 5, 32768, 10, "2 rows per launch");
  }
  {
    test::CudaTestContext gpu;
    gpu.cuda = cuda::CudaContext::create(0, 0);
    gpu.ops.cuda = gpu.cuda.get();
    const std::vector<float> x = cuda_rows(3, 4096, 0, test::test_seed(2));
    expect_cuda_matches_cpu(gpu, cpu, x, 3, 4096, 10, "one chunk, no workspace");
    test::DeviceTensor dx = test::upload_tensor(cuda_rows(1, 4097, 0, test::test_seed(3)), DType::F32, {1, 4097});
    test::DeviceTensor dv = test::device_tensor(DType::F32, {1, 10}), di = test::device_tensor(DType::I32, {1, 10});
    EXPECT_THROW(ops::top_k_log_softmax(gpu.ops, dx.tensor, dv.tensor, di.tensor), Error);
  }
}

// Drafting runs the op inside captured CUDA graphs: capture once, replay over new logits.
TEST(CudaTopKLogSoftmax, GraphReplaysOverNewLogits) {
  SPECULA_SKIP_WITHOUT_CUDA();
  test::CudaTestContext gpu = test::make_cuda_context();
  test::CpuTestContext cpu = test::make_cpu_context(8);
  const int64_t rows = 10, vocab = 128256, k = 10;
  test::DeviceTensor dx = test::device_tensor(DType::F32, {rows, vocab});
  test::DeviceTensor dv = test::device_tensor(DType::F32, {rows, k}), di = test::device_tensor(DType::I32, {rows, k});
  const auto stream = static_cast<cudaStream_t>(gpu.cuda->stream());
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  SPECULA_TEST_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  ops::top_k_log_softmax(gpu.ops, dx.tensor, dv.tensor, di.tensor);
  SPECULA_TEST_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  SPECULA_TEST_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 3; ++replay) {
    std::vector<float> x = cuda_rows(rows, vocab, replay, test::test_seed(static_cast<uint64_t>(replay)));
    dx.buffer.upload(x, dx.offset);
    test::poison(dv);
    test::poison(di);
    SPECULA_TEST_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    gpu.sync();
    std::vector<float> values(static_cast<size_t>(rows * k));
    std::vector<int32_t> indices(static_cast<size_t>(rows * k));
    Tensor vt = test::cpu_tensor(values, {rows, k}), it = test::cpu_tensor(indices, {rows, k});
    ops::top_k_log_softmax(cpu.ops, test::cpu_tensor(x, {rows, vocab}), vt, it);
    EXPECT_EQ(test::download_ints(di), indices) << "replay " << replay;
    const std::vector<float> got_v = test::download_f32(dv);
    for (size_t i = 0; i < values.size(); ++i)
      EXPECT_TRUE(close(got_v[i], values[i], 2e-5f + 1e-6f * std::fabs(values[i])))
          << got_v[i] << " vs " << values[i] << ", replay " << replay;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}
#endif

}  // namespace
