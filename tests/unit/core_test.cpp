// Core: dtype conversions, tensor views, arena planning, thread pool.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <random>

#include "specula/core/arena.h"
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
