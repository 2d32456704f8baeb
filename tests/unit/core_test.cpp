// Core: dtype conversions, tensor views, arena planning, thread pool.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <random>
#include <string>

#include "specula/core/arena.h"
#include "specula/core/checked_size.h"
#include "specula/core/dtype.h"
#include "specula/core/error.h"
#include "specula/core/thread_pool.h"

using namespace specula;

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << "half bits " << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(f32_to_f16(5.960464477539063e-08f), 0x0001);  // smallest subnormal
}

TEST(DType, SafetensorsNames) {
  EXPECT_EQ(dtype_from_safetensors_name("BF16"), DType::BF16);
  EXPECT_EQ(dtype_from_safetensors_name("BOOL"), DType::Bool);
  EXPECT_FALSE(dtype_from_safetensors_name("F4").has_value());
}

TEST(Arena, PlanMatchesAllocations) {
  ArenaPlan plan;
  plan.add(DType::F32, {3, 5});
  plan.add(DType::BF16, {7});
  Arena arena(Device::CPU, plan.total());
  Tensor a = arena.alloc(DType::F32, {3, 5});
  Tensor b = arena.alloc(DType::BF16, {7});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % kArenaAlignment, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % kArenaAlignment, 0u);
  EXPECT_EQ(a.shape_string(), "[3, 5] F32");
  EXPECT_THROW(arena.alloc(DType::F32, {1}), Error);
}

TEST(Tensor, SliceAndReshape) {
  float data[12];
  Tensor t(data, DType::F32, {3, 4});
  Tensor r = t.slice_outer(1, 2);
  EXPECT_EQ(r.as<float>(), data + 4);
  EXPECT_EQ(r.dim(0), 2);
  EXPECT_THROW(t.slice_outer(2, 2), Error);
  EXPECT_EQ(t.reshaped({2, 6}).dim(-1), 6);
  EXPECT_THROW(t.reshaped({5}), Error);
}

TEST(ThreadPool, CoversRangeExactlyOnce) {
  ThreadPool pool(3);
  for (int64_t n : {0, 1, 2, 7, 1000}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
}

TEST(ThreadPool, PropagatesExceptions) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(10, [](int64_t b, int64_t) { if (b == 0) fail("boom"); }), Error);
  // Still usable afterwards.
  std::atomic<int64_t> sum{0};
  pool.parallel_for(100, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) sum += i; });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ThreadPool, AWorkerExceptionReachesTheCallerWithItsMessage) {
  ThreadPool pool(4);
  for (int round = 0; round < 20; ++round) {
    try {
      // Only chunks that start past 0 run on workers: the calling thread's chunk does not throw.
      pool.parallel_for(400, [](int64_t b, int64_t) { if (b > 0) fail("worker chunk at ", b, " failed"); });
      FAIL() << "no exception";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("worker chunk at "), std::string::npos) << e.what();
    }
  }
  std::atomic<int64_t> sum{0};
  pool.parallel_for(100, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) sum += i; });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ThreadPool, RefusesAbsurdThreadCounts) {
  EXPECT_THROW(ThreadPool(ThreadPool::kMaxThreads + 1), Error);
  EXPECT_THROW(ThreadPool(std::numeric_limits<int>::max()), Error);
}

// The process's address-space size in bytes, from /proc/self/statm (pages).
size_t address_space_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0;
  statm >> pages;
  return pages * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

// In a child process: caps the address space just above what is mapped now, so creating a
// thread (an 8 MiB stack) fails, then builds a pool. Exits 0 after printing the pool's error.
[[noreturn]] void start_pool_without_room_for_threads() {
  constexpr size_t kHeadroom = size_t{2} << 20;  // room for the error message, not for a stack
  rlimit limit{};
  limit.rlim_cur = limit.rlim_max = address_space_bytes() + kHeadroom;
  if (setrlimit(RLIMIT_AS, &limit) != 0) std::_Exit(3);
  try {
    ThreadPool pool(16);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    std::_Exit(0);
  }
  std::_Exit(1);
}

TEST(ThreadPoolDeathTest, AThreadThatCannotStartIsAnErrorNotADeadlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(start_pool_without_room_for_threads(), testing::ExitedWithCode(0),
              "cannot start CPU worker thread 1 of 15");
}

TEST(CheckedSize, ProductsAndSumsThatDoNotFitInt64AreErrors) {
  EXPECT_EQ(checked_numel({3, 5, 7}, "t"), 105);
  EXPECT_EQ(checked_numel({}, "t"), 1);
  EXPECT_EQ(checked_numel({4, 0, int64_t{1} << 62}, "t"), 0);
  EXPECT_THROW(checked_numel({int64_t{1} << 32, int64_t{1} << 31}, "t"), Error);
  EXPECT_THROW(checked_numel({-1, 4}, "t"), Error);
  EXPECT_EQ(checked_nbytes(int64_t{1} << 40, DType::F32, "t"), size_t{1} << 42);
  // 2^62 + 1 elements of 4 bytes wrap to 4 bytes in 64-bit arithmetic: the case a hostile view used.
  EXPECT_THROW(checked_nbytes((int64_t{1} << 62) + 1, DType::F32, "t"), Error);
  EXPECT_THROW(add_size(kMaxCheckedSize, 1, "t"), Error);
  EXPECT_EQ(align_size(1, 256, "t"), 256u);
  EXPECT_THROW(align_size(kMaxCheckedSize, 256, "t"), Error);
  try {
    mul_size(int64_t{1} << 40, int64_t{1} << 40, "KV cache");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV cache"), std::string::npos);
  }
}

TEST(CheckedSize, TensorsAndArenaPlansRefuseOverflowingShapes) {
  EXPECT_THROW(Tensor(nullptr, DType::F32, {int64_t{1} << 62, 2}), Error);
  EXPECT_THROW(Tensor(nullptr, DType::F32, {(int64_t{1} << 62) + 1}), Error);  // the byte count overflows
  EXPECT_THROW(Tensor(nullptr, DType::F32, {-3}), Error);
  ArenaPlan plan;
  EXPECT_THROW(plan.add(DType::BF16, {int64_t{1} << 31, int64_t{1} << 31, 4}), Error);
  plan.add(size_t{1} << 62);
  EXPECT_THROW(plan.add(size_t{1} << 62), Error);  // the total would pass INT64_MAX
  Arena arena(Device::CPU, 1024);
  EXPECT_THROW(arena.alloc_bytes(std::numeric_limits<size_t>::max() - 8), Error);
}
