// Restricted unpickler for the data.pkl of torch.save archives (pickle protocol 2).
// Python's pickle runs whatever callables a file names, so a checkpoint from the internet is
// code. This reader executes nothing: it knows the opcodes torch.save emits for a state_dict or
// a list of ints, and the handful of globals a state_dict names (OrderedDict, the tensor rebuild
// functions, typed storage classes), each of which it interprets itself. Anything else, and
// every malformed stream (underflow, bad memo index, excessive nesting or size), is a
// specula::Error that names the byte offset; the reader never recurses over pickled values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specula/core/dtype.h"

namespace specula::io {

// A storage reference: the persistent id ('storage', <class>, key, location, numel).
struct TorchStorageRef {
  std::string key;   // names the archive record <prefix>/data/<key>
  DType dtype = DType::U8;
  int64_t numel = 0;  // elements as the pickle declares them; the record's size is checked separately
};

// _rebuild_tensor_v2(storage, storage_offset, size, stride, ...), already checked to stay
// within the declared storage numel, with every size and offset product fitting int64.
struct TorchTensorRef {
  TorchStorageRef storage;
  int64_t storage_offset = 0;  // in elements
  std::vector<int64_t> size;
  std::vector<int64_t> stride;  // in elements
  int64_t numel() const;  // checked: throws specula::Error when the size overflows int64
  // One past the furthest storage element the view reads (0 when it has no elements), or
  // nullopt when the element count or that reach overflows int64.
  std::optional<uint64_t> storage_extent() const;
  bool is_contiguous() const;  // row-major, ignoring strides of size-1 dimensions (as torch does)
};

// The top-level object of a torch.save pickle, in one of the shapes this engine reads.
struct TorchPickle {
  enum class Kind { StateDict, IntList, Tensor };
  Kind kind = Kind::StateDict;
  std::vector<std::pair<std::string, TorchTensorRef>> state_dict;  // Kind::StateDict, in pickle order, unique names
  std::vector<int64_t> ints;                                        // Kind::IntList
  std::optional<TorchTensorRef> tensor;                             // Kind::Tensor
};

// Limits that bound memory and work on hostile input; real checkpoints stay far below them
// (torch batches containers by 1000 items and nests state_dicts a few levels deep).
struct PickleLimits {
  size_t max_objects = size_t{1} << 22;  // about 100 bytes each
  size_t max_stack = size_t{1} << 20;
  size_t max_marks = 64;
  size_t max_nesting = 64;
};

// Interprets `bytes`; `what` (e.g. "model.bin: pytorch_model/data.pkl") prefixes every error.
TorchPickle read_torch_pickle(std::string_view bytes, const std::string& what, const PickleLimits& limits = {});

}  // namespace specula::io
