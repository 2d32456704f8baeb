// Joins the zip index and the unpickled object graph: finds the <p>/ prefix from the single
// <p>/data.pkl entry, refuses big-endian archives, resolves each tensor's storage record
// <p>/data/<key>, checks that the record holds the bytes the pickle promises, and either points
// into the record (contiguous) or gathers the strided elements into an owned buffer. A view's
// bytes are bounded before anything is allocated or copied: it must lie inside its storage, may
// not expand it (stride 0) by more than a small factor, and the file's copies are bounded too.
#include "specula/io/torch_checkpoint.h"

#include <cstring>
#include <optional>
#include <utility>

#include "specula/core/error.h"
#include "specula/io/byte_reader.h"
#include "specula/io/pickle.h"
#include "specula/io/strict_json.h"
#include "specula/io/zip_archive.h"

namespace specula::io {

namespace {

constexpr std::string_view kZipMagic = "PK\x03\x04";
constexpr std::string_view kPickleSuffix = "/data.pkl";

// The parsed archive and its unpickled top-level object.
struct TorchArchive {
  ZipArchive zip;
  std::string prefix;
  TorchPickle pickle;
};

bool has_prefix(const MappedFile& file, std::string_view magic) {
  return file.size() >= magic.size() && std::memcmp(file.data(), magic.data(), magic.size()) == 0;
}

bool is_legacy_torch_stream(const MappedFile& file) {
  return file.size() >= 2 && file.data()[0] == 0x80 && file.data()[1] == 0x02;
}

std::string find_record_prefix(const ZipArchive& zip) {
  std::string prefix;
  for (const ZipEntry& entry : zip.entries()) {
    const std::string& name = entry.name;
    if (name.size() <= kPickleSuffix.size() || name.compare(name.size() - kPickleSuffix.size(), std::string::npos,
                                                            kPickleSuffix) != 0)
      continue;
    const std::string candidate = name.substr(0, name.size() - kPickleSuffix.size());
    if (candidate.find('/') != std::string::npos) continue;  // data.pkl of a nested folder, not the archive's
    SPECULA_CHECK(prefix.empty(), zip.path(), ": archive has two pickles, '", prefix, "/data.pkl' and '", name, "'");
    prefix = candidate;
  }
  SPECULA_CHECK(!prefix.empty(), zip.path(), ": zip archive has no <folder>/data.pkl entry (not a torch.save file)");
  return prefix;
}

void check_byte_order(const ZipArchive& zip, const std::string& prefix) {
  const ZipEntry* entry = zip.find(prefix + "/byteorder");
  if (entry == nullptr) return;  // older writers: always little-endian
  std::string_view order = zip.data(*entry);
  while (!order.empty() && (order.back() == '\n' || order.back() == '\r' || order.back() == ' ')) order.remove_suffix(1);
  SPECULA_CHECK(order != "big", zip.path(), ": archive was saved on a big-endian machine; not supported");
  SPECULA_CHECK(order == "little", zip.path(), ": unrecognised byteorder record '", std::string(order.substr(0, 32)),
                "'");
}

TorchArchive open_archive(const MappedFile& file) {
  SPECULA_CHECK(!is_legacy_torch_stream(file), file.path(),
                ": legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a recent torch "
                "or convert it to safetensors");
  SPECULA_CHECK(has_prefix(file, kZipMagic), file.path(), ": not a torch.save zip archive (no PK\\x03\\x04 signature)");
  TorchArchive archive{ZipArchive(file), {}, {}};
  archive.prefix = find_record_prefix(archive.zip);
  check_byte_order(archive.zip, archive.prefix);
  const std::string pickle_name = archive.prefix + "/data.pkl";
  archive.pickle = read_torch_pickle(archive.zip.data(*archive.zip.find(pickle_name)), file.path() + ": " + pickle_name);
  return archive;
}

// A view that is not contiguous is copied out of its storage. Overlapping views (stride 0, as
// expand() leaves them) can have far more elements than their storage, so a few hundred bytes of
// pickle could ask for exabytes; published checkpoints have none, so any view with more than
// this many times its storage's elements is refused rather than expanded.
constexpr uint64_t kMaxViewExpansion = 2;
// Many views may share one storage, so the copies made for a whole file are bounded as well, as a
// multiple of the file's size: a transposed copy of every weight in the file is 1x.
constexpr uint64_t kMaxCopiedBytesPerFileByte = 2;

// The record bytes backing `ref`, checked to hold all elements the pickle declared.
std::string_view storage_bytes(const TorchArchive& archive, const TorchTensorRef& ref, const std::string& where) {
  const std::string record = archive.prefix + "/data/" + ref.storage.key;
  const ZipEntry* entry = archive.zip.find(record);
  SPECULA_CHECK(entry != nullptr, where, ": storage record '", record, "' is missing from the archive");
  const uint64_t needed = checked_nbytes(ref.storage.numel, ref.storage.dtype, where + ": storage '" + record + "'");
  SPECULA_CHECK(entry->size >= needed, where, ": storage record '", record, "' holds ", entry->size,
                " bytes but the pickle declares ", ref.storage.numel, " elements of ", dtype_name(ref.storage.dtype),
                " (", needed, " bytes)");
  return archive.zip.data(*entry);
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(dims[i]);
  }
  return text_excerpt(out + "]");
}

// Copies the elements of a strided view into `out` in row-major order. The innermost dimension
// is copied as one run when its stride is 1 (the common transposed-or-sliced case). The caller
// has checked that every element lies inside `storage`; the walk only adds and subtracts byte
// steps that were computed once with checked products.
void gather_strided(std::string_view storage, const TorchTensorRef& ref, size_t itemsize, uint8_t* out) {
  const auto* base = reinterpret_cast<const uint8_t*>(storage.data());
  const size_t rank = ref.size.size();
  const auto bytes = [&](int64_t elements) { return mul_size(static_cast<uint64_t>(elements), itemsize, "view"); };
  uint64_t at = bytes(ref.storage_offset);
  if (rank == 0) {
    std::memcpy(out, base + at, itemsize);
    return;
  }
  std::vector<uint64_t> step(rank), reach(rank);  // per dimension: one index, and all size - 1 of them
  for (size_t d = 0; d < rank; ++d) {
    step[d] = ref.size[d] == 1 ? 0 : bytes(ref.stride[d]);  // a size-1 dimension's stride is never taken (and may be huge)
    reach[d] = mul_size(static_cast<uint64_t>(ref.size[d] - 1), step[d], "view");
  }
  const auto inner = static_cast<uint64_t>(ref.size[rank - 1]);
  const uint64_t row_bytes = bytes(ref.size[rank - 1]);
  const uint64_t rows = static_cast<uint64_t>(ref.numel()) / inner;
  std::vector<int64_t> index(rank, 0);
  for (uint64_t row = 0; row < rows; ++row) {
    if (step[rank - 1] == itemsize) {
      std::memcpy(out, base + at, row_bytes);
      out += row_bytes;
    } else {
      uint64_t from = at;
      for (uint64_t i = 0; i < inner; ++i, from += step[rank - 1], out += itemsize) std::memcpy(out, base + from, itemsize);
    }
    for (size_t d = rank - 1; d-- > 0;) {  // odometer over the outer dimensions
      if (++index[d] < ref.size[d]) {
        at += step[d];
        break;
      }
      index[d] = 0;
      at -= reach[d];
    }
  }
}

// The bytes of one view, row-major: a slice of its storage record when the view is contiguous,
// else a copy appended to `copies`. Every bound is checked before anything is allocated or read:
// the view inside its record, its expansion over the storage, and `copy_budget` (bytes the file
// may still materialise, decreased here).
std::string_view view_bytes(const TorchArchive& archive, const TorchTensorRef& ref, const std::string& where,
                            uint64_t& copy_budget, std::vector<std::unique_ptr<uint8_t[]>>& copies) {
  const std::string_view storage = storage_bytes(archive, ref, where);
  const DType dtype = ref.storage.dtype;
  const std::optional<uint64_t> extent = ref.storage_extent();
  SPECULA_CHECK(extent && *extent <= static_cast<uint64_t>(ref.storage.numel), where, ": view (offset ",
                ref.storage_offset, ", size ", dims_text(ref.size), ", stride ", dims_text(ref.stride),
                ") does not fit its storage of ", ref.storage.numel, " elements");
  const int64_t numel = ref.numel();
  uint64_t allowed = 0;  // a product past int64 allows every count, which fits int64
  const bool expansion_ok = !checked_mul(static_cast<uint64_t>(ref.storage.numel), kMaxViewExpansion, kMaxCheckedSize,
                                         allowed) ||
                            static_cast<uint64_t>(numel) <= allowed;
  SPECULA_CHECK(expansion_ok, where,
                ": view of size ", dims_text(ref.size), " with stride ", dims_text(ref.stride), " has ", numel,
                " elements but its storage only ", ref.storage.numel, ": expanded (stride-0 or overlapping) views "
                "larger than ", kMaxViewExpansion, "x their storage are refused");
  const size_t nbytes = checked_nbytes(numel, dtype, where);
  const size_t itemsize = dtype_size(dtype);
  if (numel == 0) return storage.substr(0, 0);
  if (ref.is_contiguous())
    return storage.substr(mul_size(static_cast<uint64_t>(ref.storage_offset), itemsize, where), nbytes);

  SPECULA_CHECK(nbytes <= copy_budget, where, ": copying this strided view (", nbytes,
                " bytes) would take the file's copies past ", kMaxCopiedBytesPerFileByte,
                "x its size; refusing views that expand the checkpoint");
  copy_budget -= nbytes;
  auto copy = std::make_unique_for_overwrite<uint8_t[]>(nbytes);
  gather_strided(storage, ref, itemsize, copy.get());
  copies.push_back(std::move(copy));
  return {reinterpret_cast<const char*>(copies.back().get()), nbytes};
}

uint64_t copy_budget_for(const MappedFile& file) {
  return mul_size(file.size(), kMaxCopiedBytesPerFileByte, file.path() + ": copy budget");
}

}  // namespace

bool looks_like_torch_file(const MappedFile& file) { return has_prefix(file, kZipMagic) || is_legacy_torch_stream(file); }

TorchCheckpointFile::TorchCheckpointFile(const std::string& path) : file_(path) {
  const TorchArchive archive = open_archive(file_);
  prefix_ = archive.prefix;
  SPECULA_CHECK(archive.pickle.kind == TorchPickle::Kind::StateDict, path,
                ": holds a ", archive.pickle.kind == TorchPickle::Kind::IntList ? "list of ints" : "single tensor",
                ", not a state_dict of named tensors");
  tensors_.reserve(archive.pickle.state_dict.size());
  uint64_t copy_budget = copy_budget_for(file_);
  const TensorFilePath file_path(path);
  for (const auto& [name, ref] : archive.pickle.state_dict) {
    CheckpointTensor tensor;
    tensor.name = name;
    tensor.dtype = ref.storage.dtype;
    tensor.shape = ref.size;
    tensor.file = file_path;
    const std::string_view bytes = view_bytes(archive, ref, path + ": tensor '" + name + "'", copy_budget, owned_buffers_);
    tensor.data = reinterpret_cast<const uint8_t*>(bytes.data());
    tensor.nbytes = bytes.size();
    tensors_.push_back(std::move(tensor));
  }
}

std::vector<int64_t> load_torch_int_list(const std::string& path) {
  const MappedFile file(path);
  const TorchArchive archive = open_archive(file);
  switch (archive.pickle.kind) {
    case TorchPickle::Kind::IntList:
      return archive.pickle.ints;
    case TorchPickle::Kind::Tensor: {
      const TorchTensorRef& ref = *archive.pickle.tensor;
      const DType dtype = ref.storage.dtype;
      SPECULA_CHECK(ref.size.size() == 1, path, ": holds a tensor of rank ", ref.size.size(),
                    ", expected a 1-D list of ids");
      SPECULA_CHECK(dtype == DType::I64 || dtype == DType::I32 || dtype == DType::I16 || dtype == DType::I8 ||
                        dtype == DType::U8,
                    path, ": holds a ", dtype_name(dtype), " tensor, expected integers");
      // The same checked path as a state_dict's views: bounded by the storage, copied if strided.
      uint64_t copy_budget = copy_budget_for(file);
      std::vector<std::unique_ptr<uint8_t[]>> copies;
      const ByteReader reader(view_bytes(archive, ref, path, copy_budget, copies), path);
      const size_t itemsize = dtype_size(dtype);
      std::vector<int64_t> values;
      values.reserve(reader.size() / itemsize);
      for (uint64_t at = 0; at < reader.size(); at += itemsize) {
        const uint64_t raw = itemsize == 8 ? reader.u64(at) : itemsize == 4 ? reader.u32(at) : itemsize == 2 ? reader.u16(at) : reader.u8(at);
        // Sign-extend the narrow signed types; U8 stays unsigned.
        const int shift = static_cast<int>(64 - 8 * itemsize);
        values.push_back(dtype == DType::U8 ? static_cast<int64_t>(raw) : static_cast<int64_t>(raw << shift) >> shift);
      }
      return values;
    }
    case TorchPickle::Kind::StateDict:
      break;
  }
  fail(path, ": holds a state_dict, expected a list of ints or a 1-D integer tensor");
}

std::vector<int64_t> load_torch_plain_int_list(const std::string& path) {
  const MappedFile file(path);
  TorchArchive archive = open_archive(file);
  SPECULA_CHECK(archive.pickle.kind == TorchPickle::Kind::IntList, path, ": holds a ",
                archive.pickle.kind == TorchPickle::Kind::Tensor ? "tensor" : "dict (state_dict)",
                ", expected a plain list of ints (torch.save(list_of_ints))");
  return std::move(archive.pickle.ints);
}

}  // namespace specula::io
