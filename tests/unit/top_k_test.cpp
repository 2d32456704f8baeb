// ops::top_k_log_softmax: the CPU reference against a brute-force sort, and the CUDA kernel
// against the CPU reference on fresh random rows at odd widths (7 .. 152K), every k bucket
// (1, 10, 16, 17, 33, 64), with ties (values quantised to a few levels), -inf entries and NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
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
TEST(CudaTopKLogSoftmax, MatchesCpu) {
  std::string why;
  if (!cuda::cuda_device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  test::CudaTestContext gpu = test::make_cuda_context();
  test::CpuTestContext cpu = test::make_cpu_context(2);
  for (int64_t vocab : {7, 1000, 8192, 32768, 128256, 151936}) {
    for (int64_t k : {1, 10, 16, 17, 33, 64}) {
      if (k > vocab) continue;
      for (bool ties : {false, true}) {
        const int64_t rows = 10;
        std::vector<float> x = random_row_set(rows, vocab, ties, static_cast<uint64_t>(vocab + 31 * k + ties));
        std::vector<float> values(static_cast<size_t>(rows * k));
        std::vector<int32_t> indices(static_cast<size_t>(rows * k));
        Tensor vt = test::cpu_tensor(values, {rows, k}), it = test::cpu_tensor(indices, {rows, k});
        ops::top_k_log_softmax(cpu.ops, test::cpu_tensor(x, {rows, vocab}), vt, it);
        test::DeviceTensor dx = test::upload_tensor(x, DType::F32, {rows, vocab});
        test::DeviceTensor dv = test::device_tensor(DType::F32, {rows, k}), di = test::device_tensor(DType::I32, {rows, k});
        test::poison(dv);
        test::poison(di);
        ops::top_k_log_softmax(gpu.ops, dx.tensor, dv.tensor, di.tensor);
        const std::vector<float> got_v = test::download_f32(dv);
        const std::vector<int32_t> got_i = test::download_ints(di);
        EXPECT_EQ(got_i, indices) << "vocab " << vocab << " k " << k << " ties " << ties;
        for (size_t i = 0; i < values.size(); ++i)
          ASSERT_TRUE(close(got_v[i], values[i], 2e-5f + 1e-6f * std::fabs(values[i])))
              << got_v[i] << " vs " << values[i] << ", vocab " << vocab << " k " << k;
      }
    }
  }
}
#endif

}  // namespace
