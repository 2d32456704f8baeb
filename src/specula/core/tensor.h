// Tensor: a non-owning, typed, shaped view of contiguous memory on one device.
// Memory is owned by an Arena (planned once at load) or by a mapped file; views are cheap to
// copy and never allocate, which keeps the per-token path free of allocations and lets the
// CUDA backend capture steps as graphs over fixed addresses. The backend of an op follows the
// `device` of its tensors.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "specula/core/dtype.h"

namespace specula {

enum class Device : uint8_t { CPU, CUDA };
std::string_view device_name(Device device);

struct Tensor {
  static constexpr int kMaxRank = 4;

  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int rank = 0;
  std::array<int64_t, kMaxRank> dims{};

  Tensor() = default;
  Tensor(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = Device::CPU);

  bool empty() const { return data == nullptr; }
  // Element and byte counts, overflow-checked (core/checked_size.h): a shape whose size does not
  // fit int64 is an error, never a wrapped small number.
  int64_t numel() const;
  size_t nbytes() const;
  // Size of dimension `i`; negative `i` counts from the end.
  int64_t dim(int i) const { return dims[static_cast<size_t>(i < 0 ? rank + i : i)]; }
  // Elements in one row of the last dimension.
  int64_t row_size() const { return rank == 0 ? 1 : dims[static_cast<size_t>(rank - 1)]; }
  int64_t rows() const { return row_size() == 0 ? 0 : numel() / row_size(); }

  template <typename T>
  T* as() const { return static_cast<T*>(data); }

  // Rows [begin, begin + count) of the outermost dimension, as a view.
  Tensor slice_outer(int64_t begin, int64_t count) const;
  // Same memory seen with another shape of equal element count.
  Tensor reshaped(std::initializer_list<int64_t> shape) const;

  std::string shape_string() const;  // e.g. "[4, 64] BF16"
};

}  // namespace specula
