// Shape, dtype and device checks shared by both backends' ops, so a caller that wires a tensor
// wrongly gets "linear: weight [64, 96] BF16 does not match x [3, 64] F32" rather than a crash.
// The checks run on the host from tensor metadata only, so they cost nothing on the GPU and stay
// valid inside CUDA graph capture.
#pragma once

#include <initializer_list>
#include <span>
#include <string_view>

#include "specula/core/error.h"
#include "specula/core/tensor.h"

namespace specula::ops {

inline void check_float(std::string_view op, std::string_view what, const Tensor& t) {
  SPECULA_CHECK(!t.empty() && is_float_dtype(t.dtype) && t.dtype != DType::F64, op, ": ", what, " ",
                t.shape_string(), " must be a non-empty F32, BF16 or F16 tensor");
}

inline void check_dtype(std::string_view op, std::string_view what, const Tensor& t, DType dtype) {
  SPECULA_CHECK(!t.empty() && t.dtype == dtype, op, ": ", what, " ", t.shape_string(), " must be ",
                dtype_name(dtype));
}

inline void check_rank(std::string_view op, std::string_view what, const Tensor& t, int rank) {
  SPECULA_CHECK(t.rank == rank, op, ": ", what, " ", t.shape_string(), " must have rank ", rank);
}

inline void check_dim(std::string_view op, std::string_view what, const Tensor& t, int dim, int64_t expected) {
  SPECULA_CHECK(t.rank > dim && t.dim(dim) == expected, op, ": ", what, " ", t.shape_string(), " dimension ", dim,
                " must be ", expected);
}

// All non-empty tensors share one device; returns it.
inline Device common_device(std::string_view op, std::span<const Tensor* const> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (t->empty()) continue;
    if (!first) first = t;
    SPECULA_CHECK(t->device == first->device, op, ": tensors on different devices (", device_name(first->device),
                  " and ", device_name(t->device), ")");
  }
  SPECULA_CHECK(first != nullptr, op, ": no tensors");
  return first->device;
}
inline Device common_device(std::string_view op, std::initializer_list<const Tensor*> tensors) {
  return common_device(op, std::span<const Tensor* const>(tensors.begin(), tensors.size()));
}

}  // namespace specula::ops
