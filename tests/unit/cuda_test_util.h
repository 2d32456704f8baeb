// Host helpers for tests of the CUDA backend: device buffers that own their memory, tensors
// uploaded from host floats in any float dtype (and read back as floats), NaN poisoning to catch
// unwritten outputs, reproducible random data seeded from the test name, error metrics, and
// contexts for running the same op on the CPU reference and on the GPU.
//
// Without a CUDA build only the CPU parts remain, so a test file can include this
// unconditionally; GPU tests call SPECULA_SKIP_WITHOUT_CUDA() first, which skips (saying why)
// when the machine has no usable device.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "specula/core/dtype.h"
#include "specula/core/error.h"
#include "specula/core/tensor.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/ops.h"

#ifdef SPECULA_WITH_CUDA
#include <cuda_runtime.h>

#include "specula/ops/cuda/cuda_context.h"
#endif

namespace specula::test {

// ---------------------------------------------------------------------------------------------
// Random data

// A seed unique to the running test and `counter` (FNV-1a over "suite.name" then the counter), so
// each check draws fresh data that is still reproducible from the test name alone.
inline uint64_t test_seed(uint64_t counter = 0) {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "no-test";
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return (h ^ counter) * 1099511628211ull;
}

// n uniform values in [lo, hi); never all zero for n > 0 in practice.
inline std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

inline std::vector<int32_t> random_ints(size_t n, uint64_t seed, int32_t lo, int32_t hi_inclusive) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi_inclusive);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = dist(rng);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Tolerances of the op tests (relative, see Comparison below)

constexpr double kTolF32 = 1e-5;        // fp32 outputs of fp32 arithmetic
constexpr double kTolSwigluF32 = 5e-5;  // fp32 outputs through the fused SwiGLU's fast exp
constexpr double kTol16 = 1e-2;         // 16-bit outputs, against the reference rounded to them
constexpr double kExact = 0.0;          // copies, conversions, indices

inline double tolerance_for(DType out) { return out == DType::F32 ? kTolF32 : kTol16; }

inline std::string name_of(DType d) { return std::string(dtype_name(d)); }

// Expects parse(value) to throw specula::Error naming `variable` for every one of `values` (the
// parsers of the CUDA backend's tuning variables).
template <typename Parse>
void expect_rejected_by_name(Parse parse, std::initializer_list<const char*> values, const char* variable) {
  for (const char* value : values) {
    try {
      parse(value);
      ADD_FAILURE() << variable << "='" << value << "' was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(variable), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host dtype conversion

// The value each float takes once stored as `dtype` (what a kernel reading that tensor sees), so
// the CPU reference can be fed exactly the GPU's inputs.
inline float round_to(DType dtype, float v) {
  switch (dtype) {
    case DType::BF16: return bf16_to_f32(f32_to_bf16(v));
    case DType::F16: return f16_to_f32(f32_to_f16(v));
    default: return v;
  }
}

inline std::vector<float> round_to(DType dtype, std::vector<float> v) {
  for (float& x : v) x = round_to(dtype, x);
  return v;
}

// Bytes of `values` stored as float dtype `dtype`.
inline std::vector<uint8_t> encode(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::F32: std::memcpy(&bytes[i * 4], &values[i], 4); break;
      case DType::BF16: { const uint16_t b = f32_to_bf16(values[i]); std::memcpy(&bytes[i * 2], &b, 2); break; }
      case DType::F16: { const uint16_t b = f32_to_f16(values[i]); std::memcpy(&bytes[i * 2], &b, 2); break; }
      default: fail("test encode: unsupported dtype ", dtype_name(dtype));
    }
  }
  return bytes;
}

inline std::vector<float> decode(const void* bytes, DType dtype, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = load_as_f32(bytes, dtype, i);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Error metric

struct Comparison {
  double max_rel_error = 0.0;  // max_i |got_i - ref_i| / max(|ref_i|, rms(ref))
  size_t worst_index = 0;
  size_t non_finite = 0;       // elements of `got` that are NaN/inf where ref is finite (unwritten)
};

// Elements much smaller than the typical magnitude are measured against rms(ref) instead of
// themselves, so cancellation in a dot product does not turn rounding noise into a huge ratio.
inline Comparison compare(const std::vector<float>& got, const std::vector<float>& ref) {
  Comparison c;
  double sum_sq = 0.0;
  for (float r : ref) sum_sq += static_cast<double>(r) * r;
  const double rms = ref.empty() ? 0.0 : std::sqrt(sum_sq / static_cast<double>(ref.size()));
  const double floor = rms > 0.0 ? rms : 1e-30;
  for (size_t i = 0; i < ref.size() && i < got.size(); ++i) {
    if (!std::isfinite(ref[i])) continue;
    if (!std::isfinite(got[i])) {
      ++c.non_finite;
      continue;
    }
    const double err = std::fabs(static_cast<double>(got[i]) - ref[i]) / std::max<double>(std::fabs(ref[i]), floor);
    if (err > c.max_rel_error) {
      c.max_rel_error = err;
      c.worst_index = i;
    }
  }
  return c;
}

// Checks got against ref within `tolerance` (relative, see Comparison), every element written,
// and prints the error so the log shows how much margin each check has.
inline void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref,
                         double tolerance) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  const Comparison c = compare(got, ref);
  std::printf("  [%s] max rel error %.3g (tolerance %.3g, %zu elements)\n", what.c_str(), c.max_rel_error, tolerance,
              ref.size());
  EXPECT_EQ(c.non_finite, 0u) << what << ": " << c.non_finite << " outputs unwritten or non-finite";
  EXPECT_LE(c.max_rel_error, tolerance) << what << ": worst element " << c.worst_index << " got "
                                        << got[c.worst_index] << " want " << ref[c.worst_index];
}

// ---------------------------------------------------------------------------------------------
// Contexts

struct CpuTestContext {
  std::unique_ptr<ThreadPool> pool;
  ops::OpContext ops;
};

inline CpuTestContext make_cpu_context(int threads = 4) {
  CpuTestContext c;
  c.pool = std::make_unique<ThreadPool>(threads);
  c.ops.pool = c.pool.get();
  return c;
}

// A CPU tensor viewing `storage` (F32).
inline Tensor cpu_tensor(std::vector<float>& storage, std::initializer_list<int64_t> shape) {
  Tensor t(storage.data(), DType::F32, shape);
  SPECULA_CHECK(static_cast<size_t>(t.numel()) == storage.size(), "cpu_tensor: ", storage.size(),
                " values for shape ", t.shape_string());
  return t;
}

inline Tensor cpu_tensor(std::vector<int32_t>& storage, std::initializer_list<int64_t> shape) {
  Tensor t(storage.data(), DType::I32, shape);
  SPECULA_CHECK(static_cast<size_t>(t.numel()) == storage.size(), "cpu_tensor: ", storage.size(),
                " values for shape ", t.shape_string());
  return t;
}

#ifdef SPECULA_WITH_CUDA

#define SPECULA_TEST_CUDA_CHECK(call)                                                             \
  do {                                                                                            \
    const cudaError_t specula_test_status_ = (call);                                              \
    if (specula_test_status_ != cudaSuccess)                                                      \
      ::specula::fail(#call, " failed: ", cudaGetErrorString(specula_test_status_));              \
  } while (0)

// Skips the current test (with the reason) when there is no usable CUDA device.
#define SPECULA_SKIP_WITHOUT_CUDA()                                                               \
  do {                                                                                            \
    std::string specula_why_not_;                                                                 \
    if (!::specula::cuda::cuda_device_available(&specula_why_not_))                               \
      GTEST_SKIP() << "no CUDA device: " << specula_why_not_;                                     \
  } while (0)

struct CudaTestContext {
  std::unique_ptr<cuda::CudaContext> cuda;
  ops::OpContext ops;
  // Waits for the context's stream; throws on a CUDA error (device error bits are read separately,
  // by cuda->check_device_errors()).
  void sync() const { cuda->synchronize(); }
};

inline CudaTestContext make_cuda_context() {
  CudaTestContext c;
  c.cuda = cuda::CudaContext::create();
  c.ops.cuda = c.cuda.get();
  return c;
}

// Fixture of the op tests: a CUDA context and a CPU reference context, skipped (saying why)
// without a device, and a fresh seed per draw.
class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SPECULA_SKIP_WITHOUT_CUDA();
    gpu_ = make_cuda_context();
    cpu_ = make_cpu_context();
  }
  uint64_t seed() { return test_seed(counter_++); }
  // Fails the test if a kernel reported invalid input.
  void expect_no_device_errors() { EXPECT_NO_THROW(gpu_.cuda->check_device_errors()); }

  CudaTestContext gpu_;
  CpuTestContext cpu_;
  uint64_t counter_ = 0;
};

// cudaMalloc'd memory owned by the object. Copies are synchronous and device-wide synchronized,
// so they are ordered with kernels on any stream (the op stream is non-blocking).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_ > 0) SPECULA_TEST_CUDA_CHECK(cudaMalloc(&ptr_, bytes_));
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = o.ptr_, bytes_ = o.bytes_;
      o.ptr_ = nullptr, o.bytes_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

  void upload(const void* src, size_t n, size_t offset = 0) {
    SPECULA_CHECK(offset + n <= bytes_, "DeviceBuffer::upload out of range");
    SPECULA_TEST_CUDA_CHECK(cudaDeviceSynchronize());
    SPECULA_TEST_CUDA_CHECK(cudaMemcpy(static_cast<char*>(ptr_) + offset, src, n, cudaMemcpyHostToDevice));
    SPECULA_TEST_CUDA_CHECK(cudaDeviceSynchronize());
  }
  void download(void* dst, size_t n, size_t offset = 0) const {
    SPECULA_CHECK(offset + n <= bytes_, "DeviceBuffer::download out of range");
    SPECULA_TEST_CUDA_CHECK(cudaDeviceSynchronize());
    SPECULA_TEST_CUDA_CHECK(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, n, cudaMemcpyDeviceToHost));
  }
  template <typename T>
  void upload(const std::vector<T>& v, size_t offset = 0) {
    upload(v.data(), v.size() * sizeof(T), offset);
  }
  template <typename T>
  std::vector<T> download(size_t count, size_t offset = 0) const {
    std::vector<T> v(count);
    download(v.data(), count * sizeof(T), offset);
    return v;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A device tensor with its own memory. `offset_bytes` shifts the data pointer inside the
// allocation, so tests can hand kernels tensors that are not 16-byte aligned.
struct DeviceTensor {
  DeviceBuffer buffer;
  Tensor tensor;
  size_t offset = 0;
};

inline DeviceTensor device_tensor(DType dtype, std::initializer_list<int64_t> shape, size_t offset_bytes = 0) {
  DeviceTensor d;
  Tensor probe(nullptr, dtype, shape, Device::CUDA);
  d.offset = offset_bytes;
  d.buffer = DeviceBuffer(probe.nbytes() + offset_bytes + 16);  // + 16: room to misalign safely
  d.tensor = Tensor(static_cast<char*>(d.buffer.data()) + offset_bytes, dtype, shape, Device::CUDA);
  return d;
}

// Uploads float `values` stored as `dtype`.
inline DeviceTensor upload_tensor(const std::vector<float>& values, DType dtype, std::initializer_list<int64_t> shape,
                                  size_t offset_bytes = 0) {
  DeviceTensor d = device_tensor(dtype, shape, offset_bytes);
  SPECULA_CHECK(static_cast<int64_t>(values.size()) == d.tensor.numel(), "upload_tensor: ", values.size(),
                " values for shape ", d.tensor.shape_string());
  d.buffer.upload(encode(values, dtype), offset_bytes);
  return d;
}

inline DeviceTensor upload_ints(const std::vector<int32_t>& values, std::initializer_list<int64_t> shape,
                                size_t offset_bytes = 0) {
  DeviceTensor d = device_tensor(DType::I32, shape, offset_bytes);
  SPECULA_CHECK(static_cast<int64_t>(values.size()) == d.tensor.numel(), "upload_ints: ", values.size(),
                " values for shape ", d.tensor.shape_string());
  d.buffer.upload(values, offset_bytes);
  return d;
}

inline std::vector<float> download_f32(const DeviceTensor& d) {
  const std::vector<uint8_t> bytes = d.buffer.download<uint8_t>(d.tensor.nbytes(), d.offset);
  return decode(bytes.data(), d.tensor.dtype, static_cast<size_t>(d.tensor.numel()));
}

inline std::vector<int32_t> download_ints(const DeviceTensor& d) {
  return d.buffer.download<int32_t>(static_cast<size_t>(d.tensor.numel()), d.offset);
}

// Fills a float tensor with NaN (or an int tensor with a sentinel) so unwritten outputs show.
inline void poison(DeviceTensor& d, int32_t int_sentinel = -777) {
  const size_t n = static_cast<size_t>(d.tensor.numel());
  if (d.tensor.dtype == DType::I32) {
    d.buffer.upload(std::vector<int32_t>(n, int_sentinel), d.offset);
    return;
  }
  d.buffer.upload(encode(std::vector<float>(n, NAN), d.tensor.dtype), d.offset);
}

#endif  // SPECULA_WITH_CUDA

}  // namespace specula::test
