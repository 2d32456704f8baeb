// Element types of checkpoint tensors and of compute buffers, with the scalar conversions
// the CPU backend needs. bf16 and fp16 are stored as raw uint16_t bit patterns on the host;
// conversion to float is exact, conversion from float rounds to nearest even (as PyTorch does).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace specula {

enum class DType : uint8_t {
  F32, F16, BF16, F64,
  I8, U8, I16, U16, I32, U32, I64, U64,
  Bool, F8_E4M3, F8_E5M2,
};

size_t dtype_size(DType dtype);
// Name as written in safetensors headers ("BF16", "F32", ...).
std::string_view dtype_name(DType dtype);
// Parses a safetensors dtype name; nullopt for names this engine does not know.
std::optional<DType> dtype_from_safetensors_name(std::string_view name);
inline bool is_float_dtype(DType d) { return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::F64; }

inline float bf16_to_f32(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float f);

// Reads element `index` of a float tensor of dtype `d` stored at `data` (any alignment).
inline float load_as_f32(const void* data, DType d, size_t index) {
  const auto* p = static_cast<const unsigned char*>(data);
  switch (d) {
    case DType::F32: { float v; std::memcpy(&v, p + index * 4, 4); return v; }
    case DType::BF16: { uint16_t v; std::memcpy(&v, p + index * 2, 2); return bf16_to_f32(v); }
    case DType::F16: { uint16_t v; std::memcpy(&v, p + index * 2, 2); return f16_to_f32(v); }
    case DType::F64: { double v; std::memcpy(&v, p + index * 8, 8); return static_cast<float>(v); }
    default: return 0.0f;  // callers check is_float_dtype first
  }
}

}  // namespace specula
