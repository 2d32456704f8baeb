// nvcc compiles the CUDA sources as C++17 (CMakeLists.txt: CMake 3.25 cannot pass nvcc's C++20
// dialect flag), but ops/ops.h names std::span (C++20) in the declaration of ops::kv_gather. In a
// C++17 translation unit, where <span> defines nothing, this declares the template so that the
// declaration parses; no CUDA source uses a span (cuda_impl::kv_gather is defined over a pointer
// and a count, and cuda_ops.h gives C++20 callers the span overload). Every header under ops/cuda
// that includes ops/ops.h includes this first.
#pragma once

#include <cstddef>

#if __cplusplus >= 202002L
#include <span>
#else
namespace std {
template <class T, size_t Extent = static_cast<size_t>(-1)>
class span;
}  // namespace std
#endif
