// Device-side building blocks shared by the CUDA ops: mapping DType to storage types, fp32
// conversion on load and store, 16-byte vector access, warp and block reductions, and a few host
// helpers for launch decisions (alignment tests, ceil_div).
//
// Why this shape: every op accepts BF16, F16 or F32 activations and accumulates in fp32, so the
// kernels are templates over storage types and all conversions go through load_f32/store_f32.
// Those move N consecutive elements with the widest accesses the byte count allows (16-byte
// vectors where possible), which is what memory-bound kernels need; the caller decides at run
// time, from the actual pointers, whether the alignment such a vector path needs holds (tensors
// are views, so 16-byte alignment is never assumed) and otherwise instantiates the N = 1 path.
//
// Compiled only by nvcc (included from .cu files only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <set>

#include "specula/core/dtype.h"
#include "specula/core/error.h"
#include "specula/ops/cuda/cuda_context.h"
#include "specula/ops/cuda/pdl.cuh"

namespace specula::ops::cuda_impl {

constexpr int kWarpSize = 32;
constexpr unsigned kFullWarpMask = 0xffffffffu;
constexpr int kVectorBytes = 16;  // widest single global access per thread (LDG.128 / STG.128)

// ---------------------------------------------------------------------------------------------
// Host helpers

template <typename T>
constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

inline cudaStream_t stream_of(const specula::cuda::CudaContext& ctx) { return static_cast<cudaStream_t>(ctx.stream()); }

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the device storage type of float dtype `dtype` (float,
// __nv_bfloat16 or __half); any other dtype is an error (the dispatcher has checked already, so
// this guards against a new caller, never a user input).
template <typename Fn>
void dispatch_float(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn(TypeTag<float>{}); return;
    case DType::BF16: fn(TypeTag<__nv_bfloat16>{}); return;
    case DType::F16: fn(TypeTag<__half>{}); return;
    default: fail("CUDA op: unsupported float dtype ", dtype_name(dtype));
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// The value a float takes after a round trip through storage type T (what a later read sees).
template <typename T>
__device__ __forceinline__ float round_through(float v) {
  return to_f32(from_f32<T>(v));
}

// Element access for tensors whose dtype is a run-time value (small operands such as biases and
// norm weights, where a template parameter per operand would multiply instantiations for nothing).
__device__ __forceinline__ float load_f32_dyn(const void* p, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case DType::F16: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store_f32_dyn(void* p, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::BF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); return;
    case DType::F16: static_cast<__half*>(p)[i] = __float2half_rn(v); return;
    default: static_cast<float*>(p)[i] = v; return;
  }
}

// The epilogue of a linear-op kernel for one output element: out[i] = alpha * dot + bias[row], or
// out[i] += that (OutputMode::Accumulate, the residual update), with bias null for none. The one
// thread that owns element i reads and writes it.
__device__ __forceinline__ void store_linear_output(void* out, DType out_dtype, int64_t i, float dot, float alpha,
                                                    const void* bias, DType bias_dtype, int64_t row,
                                                    bool accumulate) {
  const float b = bias ? load_f32_dyn(bias, bias_dtype, row) : 0.0f;
  const float prior = accumulate ? load_f32_dyn(out, out_dtype, i) : 0.0f;
  store_f32_dyn(out, out_dtype, i, prior + (alpha * dot + b));
}

// ---------------------------------------------------------------------------------------------
// Vector access: N consecutive elements of T <-> N fp32 registers.
//
// The access width is chosen from the byte count N * sizeof(T): whole 16-byte vectors, or one
// 8- or 4-byte access, or element by element. The pointer must be aligned to
// min(16, N * sizeof(T)) bytes (access_alignment<T, N>()); callers check that on the host.

template <typename T, int N>
constexpr int access_alignment() {
  constexpr int bytes = N * static_cast<int>(sizeof(T));
  return bytes >= kVectorBytes ? kVectorBytes : (bytes == 8 || bytes == 4 ? bytes : static_cast<int>(sizeof(T)));
}

namespace detail {

// Raw word loads. The streaming variant is for data read exactly once (weights in a GEMV): it
// does not allocate in L1, leaving L1 to the operands that are re-read (the activation vector).
__device__ __forceinline__ uint4 load_v4(const void* p) { return __ldg(static_cast<const uint4*>(p)); }

__device__ __forceinline__ uint4 load_v4_stream(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

// Unpacks 32-bit words holding elements of T into floats.
template <typename T>
struct Words;

template <>
struct Words<float> {
  static constexpr int kPerWord = 1;
  __device__ __forceinline__ static void unpack(uint32_t w, float* out) { out[0] = __uint_as_float(w); }
  __device__ __forceinline__ static uint32_t pack(const float* in) { return __float_as_uint(in[0]); }
};

template <>
struct Words<__nv_bfloat16> {
  static constexpr int kPerWord = 2;
  __device__ __forceinline__ static void unpack(uint32_t w, float* out) {
    // bf16 is the upper half of an fp32: widening is a shift or a mask, exact.
    out[0] = __uint_as_float(w << 16);
    out[1] = __uint_as_float(w & 0xffff0000u);
  }
  __device__ __forceinline__ static uint32_t pack(const float* in) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(in[0], in[1]);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

template <>
struct Words<__half> {
  static constexpr int kPerWord = 2;
  __device__ __forceinline__ static void unpack(uint32_t w, float* out) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
    out[0] = f.x;
    out[1] = f.y;
  }
  __device__ __forceinline__ static uint32_t pack(const float* in) {
    const __half2 h = __floats2half2_rn(in[0], in[1]);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
};

template <typename T, int N, bool kStream>
__device__ __forceinline__ void load_impl(const T* p, float (&v)[N]) {
  constexpr int bytes = N * static_cast<int>(sizeof(T));
  using W = Words<T>;
  if constexpr (bytes % kVectorBytes == 0) {
    constexpr int kPerVector = kVectorBytes / static_cast<int>(sizeof(T));
#pragma unroll
    for (int c = 0; c < bytes / kVectorBytes; ++c) {
      const uint4 r = kStream ? load_v4_stream(p + c * kPerVector) : load_v4(p + c * kPerVector);
      const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) W::unpack(w[j], &v[c * kPerVector + j * W::kPerWord]);
    }
  } else if constexpr (bytes == 8) {
    const uint2 r = __ldg(reinterpret_cast<const uint2*>(p));
    W::unpack(r.x, &v[0]);
    W::unpack(r.y, &v[W::kPerWord]);
  } else if constexpr (bytes == 4) {
    W::unpack(__ldg(reinterpret_cast<const unsigned int*>(p)), &v[0]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_f32(p[i]);
  }
}

}  // namespace detail

// v[i] = float(p[i]) for i < N; p aligned to access_alignment<T, N>(). Read-only data only
// (goes through the non-coherent cache path): never use it on memory the same kernel writes.
template <typename T, int N>
__device__ __forceinline__ void load_f32(const T* p, float (&v)[N]) {
  detail::load_impl<T, N, false>(p, v);
}

// As load_f32, for data read once per kernel (streamed weights): skips L1 allocation.
template <typename T, int N>
__device__ __forceinline__ void load_f32_stream(const T* p, float (&v)[N]) {
  detail::load_impl<T, N, true>(p, v);
}

// As load_f32 through the ordinary coherent path, for memory this kernel also writes (the
// residual stream in add_rms_norm, an output aliasing an input).
template <typename T, int N>
__device__ __forceinline__ void load_f32_coherent(const T* p, float (&v)[N]) {
  constexpr int bytes = N * static_cast<int>(sizeof(T));
  using W = detail::Words<T>;
  if constexpr (bytes % kVectorBytes == 0) {
    constexpr int kPerVector = kVectorBytes / static_cast<int>(sizeof(T));
#pragma unroll
    for (int c = 0; c < bytes / kVectorBytes; ++c) {
      const uint4 r = *reinterpret_cast<const uint4*>(p + c * kPerVector);
      const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) W::unpack(w[j], &v[c * kPerVector + j * W::kPerWord]);
    }
  } else if constexpr (bytes == 8) {
    const uint2 r = *reinterpret_cast<const uint2*>(p);
    W::unpack(r.x, &v[0]);
    W::unpack(r.y, &v[W::kPerWord]);
  } else if constexpr (bytes == 4) {
    W::unpack(*reinterpret_cast<const uint32_t*>(p), &v[0]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_f32(p[i]);
  }
}

// p[i] = T(v[i]) (round to nearest even) for i < N; p aligned to access_alignment<T, N>().
template <typename T, int N>
__device__ __forceinline__ void store_f32(T* p, const float (&v)[N]) {
  constexpr int bytes = N * static_cast<int>(sizeof(T));
  using W = detail::Words<T>;
  if constexpr (bytes % kVectorBytes == 0) {
    constexpr int kPerVector = kVectorBytes / static_cast<int>(sizeof(T));
#pragma unroll
    for (int c = 0; c < bytes / kVectorBytes; ++c) {
      uint32_t w[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = W::pack(&v[c * kPerVector + j * W::kPerWord]);
      *reinterpret_cast<uint4*>(p + c * kPerVector) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  } else if constexpr (bytes == 8) {
    *reinterpret_cast<uint2*>(p) = make_uint2(W::pack(&v[0]), W::pack(&v[W::kPerWord]));
  } else if constexpr (bytes == 4) {
    *reinterpret_cast<uint32_t*>(p) = W::pack(&v[0]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = from_f32<T>(v[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Vector access with a run-time dtype.
//
// For the small memory-bound ops (norms, element-wise, embedding) the dtype of each operand is a
// kernel argument rather than a template parameter: one uniform branch per N-element access costs
// nothing next to the memory traffic, and it keeps the number of instantiations (and the build
// time) linear instead of a product over operands. Element `index` of `base`; the address must be
// aligned to vector_alignment(dtype, N) (checked on the host). Coherent loads: safe when the
// kernel also writes the same memory (in-place norms, aliasing outputs).

// Host mirror of access_alignment<T, N>() for a run-time dtype.
inline size_t vector_alignment(DType dtype, int n) {
  const size_t bytes = static_cast<size_t>(n) * dtype_size(dtype);
  if (bytes >= static_cast<size_t>(kVectorBytes)) return static_cast<size_t>(kVectorBytes);
  if (bytes == 8 || bytes == 4) return bytes;
  return dtype_size(dtype);
}

template <int N>
__device__ __forceinline__ void load_f32_dyn(const void* base, DType dtype, int64_t index, float (&v)[N]) {
  switch (dtype) {
    case DType::BF16: load_f32_coherent<__nv_bfloat16, N>(static_cast<const __nv_bfloat16*>(base) + index, v); return;
    case DType::F16: load_f32_coherent<__half, N>(static_cast<const __half*>(base) + index, v); return;
    default: load_f32_coherent<float, N>(static_cast<const float*>(base) + index, v); return;
  }
}

template <int N>
__device__ __forceinline__ void store_f32_dyn(void* base, DType dtype, int64_t index, const float (&v)[N]) {
  switch (dtype) {
    case DType::BF16: store_f32<__nv_bfloat16, N>(static_cast<__nv_bfloat16*>(base) + index, v); return;
    case DType::F16: store_f32<__half, N>(static_cast<__half*>(base) + index, v); return;
    default: store_f32<float, N>(static_cast<float*>(base) + index, v); return;
  }
}

// The value a float takes after a round trip through `dtype` storage.
__device__ __forceinline__ float round_through_dyn(DType dtype, float v) {
  switch (dtype) {
    case DType::BF16: return round_through<__nv_bfloat16>(v);
    case DType::F16: return round_through<__half>(v);
    default: return v;
  }
}

// ---------------------------------------------------------------------------------------------
// Reductions

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarpMask, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, offset));
  return v;
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const unsigned long long other = __shfl_xor_sync(kFullWarpMask, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 (at most
// 1024) and every thread of the block must call it; `scratch` is kWarpSize floats of shared
// memory, reusable as soon as this returns.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.0f;
  total = warp_sum(total);
  __syncthreads();
  return total;
}

// Max over the block of 64-bit keys, returned to every thread (same contract as block_sum).
__device__ __forceinline__ unsigned long long block_max_u64(unsigned long long v, unsigned long long* scratch) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize, warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  v = warp_max_u64(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  unsigned long long total = lane < warps ? scratch[lane] : 0ull;
  total = warp_max_u64(total);
  __syncthreads();
  return total;
}

// Bitonic sort of `n_pow2` (a power of two) 64-bit keys in shared memory, descending, by the whole
// block: every thread calls it; the keys are sorted when it returns.
__device__ inline void block_sort_descending(uint64_t* keys, int n_pow2) {
  for (int size = 2; size <= n_pow2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = static_cast<int>(threadIdx.x); i < n_pow2; i += static_cast<int>(blockDim.x)) {
        const int partner = i ^ stride;
        if (partner > i) {
          const bool descending = (i & size) == 0;
          const uint64_t a = keys[i], b = keys[partner];
          if ((a < b) == descending) {
            keys[i] = b;
            keys[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Reports invalid input found on the device (see CudaContext::error_word).
__device__ __forceinline__ void report_device_error(uint32_t* error_word, uint32_t bit) { atomicOr(error_word, bit); }


// The kernel instantiations whose dynamic shared-memory limit a context has raised (the
// attribute is per device, so per context; kept in one of the context's op-cache slots), so eager
// calls skip the host call after the first.
class RaisedKernels {
 public:
  // Runs raise() the first time `kernel` is seen.
  template <typename Raise>
  void once(const void* kernel, Raise&& raise) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (kernels_.count(kernel) != 0) return;
    raise();
    kernels_.insert(kernel);
  }

 private:
  std::mutex mutex_;
  std::set<const void*> kernels_;
};

}  // namespace specula::ops::cuda_impl
