#include "specula/core/tensor.h"

#include "specula/core/checked_size.h"
#include "specula/core/error.h"

namespace specula {

std::string_view device_name(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

Tensor::Tensor(void* data_, DType dtype_, std::initializer_list<int64_t> shape, Device device_)
    : data(data_), dtype(dtype_), device(device_), rank(static_cast<int>(shape.size())) {
  SPECULA_CHECK(shape.size() <= kMaxRank, "tensor rank ", shape.size(), " exceeds ", kMaxRank);
  size_t i = 0;
  for (int64_t d : shape) dims[i++] = d;
  // Checked once here, so numel() and nbytes() below cannot wrap for any tensor built this way.
  checked_nbytes(checked_numel(shape, "tensor shape"), dtype_, "tensor shape");
}

int64_t Tensor::numel() const {
  return checked_numel(std::span<const int64_t>(dims.data(), static_cast<size_t>(rank)), "tensor shape");
}

size_t Tensor::nbytes() const { return checked_nbytes(numel(), dtype, "tensor " + shape_string()); }

Tensor Tensor::slice_outer(int64_t begin, int64_t count) const {
  SPECULA_CHECK(rank >= 1 && begin >= 0 && count >= 0 && begin + count <= dims[0],
                "slice [", begin, ", ", begin + count, ") out of range for ", shape_string());
  Tensor out = *this;
  const int64_t inner = dims[0] == 0 ? 0 : numel() / dims[0];
  out.data = static_cast<char*>(data) + static_cast<size_t>(begin * inner) * dtype_size(dtype);
  out.dims[0] = count;
  return out;
}

Tensor Tensor::reshaped(std::initializer_list<int64_t> shape) const {
  Tensor out(data, dtype, shape, device);
  SPECULA_CHECK(out.numel() == numel(), "cannot reshape ", shape_string(), " to ", out.shape_string());
  return out;
}

std::string Tensor::shape_string() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[static_cast<size_t>(i)]);
  }
  s += "] ";
  s += dtype_name(dtype);
  return s;
}

}  // namespace specula
