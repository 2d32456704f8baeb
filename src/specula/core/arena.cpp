#include "specula/core/arena.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "specula/core/checked_size.h"
#include "specula/core/error.h"
#ifdef SPECULA_WITH_CUDA
#include "specula/core/cuda_memory.h"
#endif

namespace specula {

void ArenaPlan::add(size_t bytes) {
  total_ = add_size(total_, align_size(bytes, kArenaAlignment, "memory plan"), "memory plan");
}

void ArenaPlan::add(DType dtype, std::initializer_list<int64_t> shape) {
  add(checked_nbytes(checked_numel(shape, "memory plan"), dtype, "memory plan"));
}

Arena::Arena(Device device, size_t capacity)
    : device_(device), capacity_(align_size(capacity, kArenaAlignment, "arena capacity")) {
  if (capacity_ == 0) return;
  if (device == Device::CPU) {
    base_ = std::aligned_alloc(kArenaAlignment, capacity_);
    SPECULA_CHECK(base_ != nullptr, "out of host memory: arena of ", capacity_, " bytes");
  } else {
#ifdef SPECULA_WITH_CUDA
    base_ = cuda_device_alloc(capacity_);
#else
    fail("this build has no CUDA backend");
#endif
  }
}

Arena::~Arena() { release(); }

Arena::Arena(Arena&& other) noexcept
    : device_(other.device_), base_(std::exchange(other.base_, nullptr)),
      capacity_(std::exchange(other.capacity_, 0)), used_(std::exchange(other.used_, 0)) {}

Arena& Arena::operator=(Arena&& other) noexcept {
  if (this != &other) {
    release();
    device_ = other.device_;
    base_ = std::exchange(other.base_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
    used_ = std::exchange(other.used_, 0);
  }
  return *this;
}

void Arena::release() {
  if (!base_) return;
  if (device_ == Device::CPU) {
    std::free(base_);
  } else {
#ifdef SPECULA_WITH_CUDA
    cuda_device_free(base_);
#endif
  }
  base_ = nullptr;
}

void* Arena::alloc_bytes(size_t bytes) {
  const size_t rounded = align_size(bytes, kArenaAlignment, "arena allocation");
  SPECULA_CHECK(rounded <= capacity_ - used_, "arena exhausted: asked ", bytes, " bytes with ",
                capacity_ - used_, " of ", capacity_, " left (memory plan is wrong)");
  void* p = static_cast<char*>(base_) + used_;
  used_ += rounded;
  return p;
}

Tensor Arena::alloc(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t(nullptr, dtype, shape, device_);
  t.data = alloc_bytes(t.nbytes());
  return t;
}

}  // namespace specula
