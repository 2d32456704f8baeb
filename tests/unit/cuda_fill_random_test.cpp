// ops::fill_random on CUDA must produce the CPU's values bit for bit (both draw from the same
// counter-based generator), for every float dtype and at odd sizes.
#ifdef SPECULA_WITH_CUDA
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "specula/core/cuda_memory.h"
#include "specula/core/thread_pool.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/ops.h"

namespace {

TEST(CudaFillRandom, MatchesCpuBitForBit) {
  std::string why;
  if (!specula::cuda::cuda_device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why;
  auto cuda = specula::cuda::CudaContext::create(0);
  specula::ThreadPool pool(2);
  specula::ops::OpContext cpu_ctx{&pool, nullptr}, gpu_ctx{nullptr, cuda.get()};
  for (const specula::DType dtype : {specula::DType::F32, specula::DType::BF16, specula::DType::F16}) {
    for (const int64_t n : {int64_t{1}, int64_t{4097}, int64_t{1000003}}) {
      const size_t bytes = static_cast<size_t>(n) * specula::dtype_size(dtype);
      std::vector<uint8_t> host(bytes, 0xAB), from_gpu(bytes, 0xCD);
      specula::Tensor cpu_t(host.data(), dtype, {n});
      specula::ops::fill_random(cpu_ctx, cpu_t, 42 + static_cast<uint64_t>(n), 0.5f);
      void* device = specula::cuda_device_alloc(bytes);
      specula::Tensor gpu_t(device, dtype, {n}, specula::Device::CUDA);
      specula::ops::fill_random(gpu_ctx, gpu_t, 42 + static_cast<uint64_t>(n), 0.5f);
      cuda->synchronize();
      specula::cuda_copy_to_host(from_gpu.data(), device, bytes);
      specula::cuda_device_free(device);
      EXPECT_EQ(std::memcmp(host.data(), from_gpu.data(), bytes), 0)
          << specula::dtype_name(dtype) << " n=" << n;
    }
  }
}

}  // namespace
#endif  // SPECULA_WITH_CUDA
