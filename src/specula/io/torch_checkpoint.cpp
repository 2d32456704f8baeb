// Joins the zip index and the unpickled object graph: finds the <p>/ prefix from the single
// <p>/data.pkl entry, refuses big-endian archives, resolves each tensor's storage record
// <p>/data/<key>, checks that the record holds the bytes the pickle promises, and either points
// into the record (contiguous) or gathers the strided elements into an owned buffer.
#include "specula/io/torch_checkpoint.h"

#include <cstring>

#include "specula/core/error.h"
#include "specula/io/byte_reader.h"
#include "specula/io/pickle.h"
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

// The record bytes backing `ref`, checked to hold all elements the pickle declared.
std::string_view storage_bytes(const TorchArchive& archive, const TorchTensorRef& ref, const std::string& where) {
  const std::string record = archive.prefix + "/data/" + ref.storage.key;
  const ZipEntry* entry = archive.zip.find(record);
  SPECULA_CHECK(entry != nullptr, where, ": storage record '", record, "' is missing from the archive");
  const uint64_t needed = static_cast<uint64_t>(ref.storage.numel) * dtype_size(ref.storage.dtype);  // checked by the unpickler
  SPECULA_CHECK(entry->size >= needed, where, ": storage record '", record, "' holds ", entry->size,
                " bytes but the pickle declares ", ref.storage.numel, " elements of ", dtype_name(ref.storage.dtype),
                " (", needed, " bytes)");
  return archive.zip.data(*entry);
}

// Copies the elements of a strided view into `out` in row-major order. The innermost dimension
// is copied as one run when its stride is 1 (the common transposed-or-sliced case).
void gather_strided(const uint8_t* base, const TorchTensorRef& ref, size_t itemsize, uint8_t* out) {
  const size_t rank = ref.size.size();
  if (rank == 0) {
    std::memcpy(out, base + static_cast<size_t>(ref.storage_offset) * itemsize, itemsize);
    return;
  }
  const size_t inner = static_cast<size_t>(ref.size[rank - 1]);
  const bool inner_is_run = ref.stride[rank - 1] == 1;
  std::vector<int64_t> index(rank, 0);
  const int64_t total = ref.numel();
  for (int64_t done = 0; done < total; done += static_cast<int64_t>(inner)) {
    int64_t element = ref.storage_offset;
    for (size_t d = 0; d + 1 < rank; ++d) element += index[d] * ref.stride[d];
    const uint8_t* row = base + static_cast<size_t>(element) * itemsize;
    if (inner_is_run) {
      std::memcpy(out, row, inner * itemsize);
    } else {
      const size_t step = static_cast<size_t>(ref.stride[rank - 1]) * itemsize;
      for (size_t i = 0; i < inner; ++i) std::memcpy(out + i * itemsize, row + i * step, itemsize);
    }
    out += inner * itemsize;
    for (size_t d = rank - 1; d-- > 0;) {  // odometer over the outer dimensions
      if (++index[d] < ref.size[d]) break;
      index[d] = 0;
    }
  }
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
  for (const auto& [name, ref] : archive.pickle.state_dict) {
    const std::string where = path + ": tensor '" + name + "'";
    const std::string_view storage = storage_bytes(archive, ref, where);
    const auto* base = reinterpret_cast<const uint8_t*>(storage.data());
    const size_t itemsize = dtype_size(ref.storage.dtype);
    CheckpointTensor tensor;
    tensor.name = name;
    tensor.dtype = ref.storage.dtype;
    tensor.shape = ref.size;
    tensor.file = path;
    tensor.nbytes = static_cast<size_t>(ref.numel()) * itemsize;
    if (ref.is_contiguous()) {
      tensor.data = base + (tensor.nbytes == 0 ? 0 : static_cast<size_t>(ref.storage_offset) * itemsize);
    } else {
      auto buffer = std::make_unique<uint8_t[]>(tensor.nbytes);
      gather_strided(base, ref, itemsize, buffer.get());
      tensor.data = buffer.get();
      owned_buffers_.push_back(std::move(buffer));
    }
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
      const std::string_view storage = storage_bytes(archive, ref, path);
      const ByteReader reader(storage, path);
      const size_t itemsize = dtype_size(dtype);
      std::vector<int64_t> values(static_cast<size_t>(ref.size[0]));
      for (size_t i = 0; i < values.size(); ++i) {
        const uint64_t at = (static_cast<uint64_t>(ref.storage_offset) + i * static_cast<uint64_t>(ref.stride[0])) * itemsize;
        const uint64_t raw = itemsize == 8 ? reader.u64(at) : itemsize == 4 ? reader.u32(at) : itemsize == 2 ? reader.u16(at) : reader.u8(at);
        // Sign-extend the narrow signed types; U8 stays unsigned.
        const int shift = static_cast<int>(64 - 8 * itemsize);
        values[i] = dtype == DType::U8 ? static_cast<int64_t>(raw)
                                       : static_cast<int64_t>(raw << shift) >> shift;
      }
      return values;
    }
    case TorchPickle::Kind::StateDict:
      break;
  }
  fail(path, ": holds a state_dict, expected a list of ints or a 1-D integer tensor");
}

}  // namespace specula::io
