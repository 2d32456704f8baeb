// Arena: one allocation per device, planned before it is made, carved into tensors.
// Model loading first walks everything it will need (weights, activations, KV cache) through
// an ArenaPlan to get the total, then allocates once. After that nothing is allocated while
// generating, and all addresses stay fixed (what CUDA graph replay needs).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <memory>

#include "specula/core/tensor.h"

namespace specula {

constexpr size_t kArenaAlignment = 256;  // cache-line and CUDA-vectorised-load friendly

inline size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Counts bytes for the same sequence of allocations an Arena will later serve.
class ArenaPlan {
 public:
  // Overflow-checked (core/checked_size.h): a plan whose total does not fit int64 throws.
  void add(size_t bytes);
  void add(DType dtype, std::initializer_list<int64_t> shape);
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

class Arena {
 public:
  Arena() = default;
  Arena(Device device, size_t capacity);
  ~Arena();
  Arena(Arena&& other) noexcept;
  Arena& operator=(Arena&& other) noexcept;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Carves a tensor; throws if the plan was too small (a bug in planning, reported clearly).
  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape);
  void* alloc_bytes(size_t bytes);

  Device device() const { return device_; }
  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }

 private:
  void release();
  Device device_ = Device::CPU;
  void* base_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
};

}  // namespace specula
