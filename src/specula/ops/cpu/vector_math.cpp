// See vector_math.h. target_clones lets one binary use AVX2+FMA where the CPU has it (CI and
// developer machines do) and stay runnable elsewhere.
#include "specula/ops/cpu/vector_math.h"

#include <array>
#include <cstring>
#include <vector>

namespace specula::ops::cpu {

namespace {
constexpr size_t kLanes = 16;  // two AVX2 registers of independent partial sums
}

#define SPECULA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))

SPECULA_CLONES
static void bf16_row_to_f32(const uint16_t* src, size_t n, float* dst) {
  for (size_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(&dst[i], &u, 4);
  }
}

void row_to_f32(const void* src, DType dtype, size_t n, float* dst) {
  switch (dtype) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::BF16: bf16_row_to_f32(static_cast<const uint16_t*>(src), n, dst); return;
    default:
      for (size_t i = 0; i < n; ++i) dst[i] = load_as_f32(src, dtype, i);
  }
}

SPECULA_CLONES
float dot_f32(const float* a, const float* b, size_t n) {
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (size_t l = 0; l < kLanes; ++l) acc[l] += a[i + l] * b[i + l];
  float s = 0.0f;
  for (size_t l = 0; l < kLanes; ++l) s += acc[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

SPECULA_CLONES
void axpy_f32(float w, const float* x, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] += w * x[i];
}

float* scratch_f32(Scratch slot, size_t n) {
  thread_local std::array<std::vector<float>, static_cast<size_t>(Scratch::Count)> buffers;
  std::vector<float>& buffer = buffers[static_cast<size_t>(slot)];
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

const float* tensor_f32(const Tensor& t, Scratch slot) {
  if (t.empty()) return nullptr;  // an empty Tensor would still count one element as a scalar
  const size_t n = static_cast<size_t>(t.numel());
  float* out = scratch_f32(slot, n);
  row_to_f32(t.data, t.dtype, n, out);
  return out;
}

}  // namespace specula::ops::cpu
