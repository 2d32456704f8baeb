// safetensors parsing. Checks run in the reference reader's order: length prefix, header bounds,
// UTF-8, JSON object, then per-tensor fields, then the tiling of the byte buffer (sorted by
// offsets, each tensor must start where the previous one ended and the last must end at EOF).
// Sizes are computed in uint64 with explicit overflow checks because every number is untrusted.
#include "specula/io/safetensors.h"

#include <algorithm>

#include "specula/core/error.h"
#include "specula/io/byte_reader.h"
#include "specula/io/strict_json.h"

namespace specula::io {

namespace {

using Json = nlohmann::json;

// A JSON number that is an integer >= 0 and fits in int64 (shapes and offsets); nlohmann keeps
// non-negative literals as unsigned and negative ones as signed, floats (even 3.0) as float.
bool as_non_negative_int(const Json& value, uint64_t& out) {
  if (!value.is_number_unsigned()) return false;
  out = value.get<uint64_t>();
  return out <= static_cast<uint64_t>(INT64_MAX);
}

CheckpointTensor parse_tensor_entry(const std::string& file_name, const std::string& name, const Json& entry,
                                    uint64_t buffer_size, uint64_t& begin, uint64_t& end) {
  const std::string where = file_name + ": tensor '" + name + "'";
  SPECULA_CHECK(entry.is_object(), where, ": entry is not a JSON object");
  const auto dtype_it = entry.find("dtype");
  const auto shape_it = entry.find("shape");
  const auto offsets_it = entry.find("data_offsets");
  SPECULA_CHECK(dtype_it != entry.end() && dtype_it->is_string(), where, ": missing or non-string \"dtype\"");
  SPECULA_CHECK(shape_it != entry.end() && shape_it->is_array(), where, ": missing or non-array \"shape\"");
  SPECULA_CHECK(offsets_it != entry.end() && offsets_it->is_array(), where, ": missing or non-array \"data_offsets\"");

  CheckpointTensor tensor;
  tensor.name = name;
  tensor.file = file_name;
  const auto& dtype_name_text = dtype_it->get_ref<const std::string&>();
  const auto dtype = dtype_from_safetensors_name(dtype_name_text);
  SPECULA_CHECK(dtype.has_value(), where, ": unknown dtype '", dtype_name_text, "'");
  tensor.dtype = *dtype;

  uint64_t numel = 1;
  for (const Json& dim : *shape_it) {
    uint64_t d = 0;
    SPECULA_CHECK(as_non_negative_int(dim, d), where, ": shape entry ", dim.dump(), " is not a non-negative integer");
    SPECULA_CHECK(checked_mul(numel, d, static_cast<uint64_t>(INT64_MAX), numel), where, ": shape ", shape_it->dump(),
                  " overflows");
    tensor.shape.push_back(static_cast<int64_t>(d));
  }
  uint64_t nbytes = 0;
  SPECULA_CHECK(checked_mul(numel, dtype_size(tensor.dtype), static_cast<uint64_t>(INT64_MAX), nbytes), where,
                ": shape ", shape_it->dump(), " overflows");

  SPECULA_CHECK(offsets_it->size() == 2 && as_non_negative_int((*offsets_it)[0], begin) &&
                    as_non_negative_int((*offsets_it)[1], end),
                where, ": data_offsets ", offsets_it->dump(), " is not a pair of non-negative integers");
  SPECULA_CHECK(begin <= end, where, ": data_offsets ", offsets_it->dump(), " end before they begin");
  SPECULA_CHECK(end <= buffer_size, where, ": data_offsets ", offsets_it->dump(), " run past the data buffer (",
                buffer_size, " bytes)");
  SPECULA_CHECK(end - begin == nbytes, where, ": data_offsets ", offsets_it->dump(), " span ", end - begin,
                " bytes but shape ", shape_it->dump(), " of ", dtype_name(tensor.dtype), " needs ", nbytes);
  tensor.nbytes = static_cast<size_t>(nbytes);
  return tensor;
}

void parse_metadata(const std::string& file_name, const Json& value, std::map<std::string, std::string>& out) {
  SPECULA_CHECK(value.is_object(), file_name, ": \"__metadata__\" is not a JSON object");
  for (const auto& [key, item] : value.items()) {
    SPECULA_CHECK(item.is_string(), file_name, ": \"__metadata__\" value for '", key, "' is not a string");
    out.emplace(key, item.get<std::string>());
  }
}

}  // namespace

SafetensorsContents parse_safetensors(const MappedFile& file) {
  const std::string& file_name = file.path();
  const uint64_t file_size = file.size();
  SPECULA_CHECK(file_size >= 8, file_name, ": too small for a safetensors file (", file_size,
                " bytes, the length prefix alone is 8)");
  const ByteReader reader(file.bytes(0, file.size()), file_name);
  const uint64_t header_size = reader.u64(0);
  SPECULA_CHECK(header_size <= kMaxSafetensorsHeaderBytes, file_name, ": header length ", header_size,
                " exceeds the limit of ", kMaxSafetensorsHeaderBytes, " bytes (not a safetensors file?)");
  SPECULA_CHECK(header_size <= file_size - 8, file_name, ": header length ", header_size,
                " runs past the end of the file (", file_size, " bytes)");
  const std::string_view header = reader.slice(8, header_size);
  SPECULA_CHECK(is_valid_utf8(header), file_name, ": header is not valid UTF-8");
  SPECULA_CHECK(!header.empty() && header.front() == '{', file_name, ": header does not start with '{'");
  const Json root = parse_strict_json(header, file_name + ": header");
  SPECULA_CHECK(root.is_object(), file_name, ": header is not a JSON object");

  const uint64_t data_start = 8 + header_size;
  const uint64_t buffer_size = file_size - data_start;
  const uint8_t* buffer = file.data() + data_start;

  struct Placed {
    uint64_t begin, end;
    size_t index;
  };
  SafetensorsContents contents;
  std::vector<Placed> placement;
  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      parse_metadata(file_name, entry, contents.metadata);
      continue;
    }
    uint64_t begin = 0, end = 0;
    contents.tensors.push_back(parse_tensor_entry(file_name, name, entry, buffer_size, begin, end));
    placement.push_back({begin, end, contents.tensors.size() - 1});
  }

  // Offsets must tile [0, buffer_size) exactly: no overlap (two tensors aliasing bytes) and no
  // hole (bytes no tensor owns, which the reference writer never produces).
  std::sort(placement.begin(), placement.end(), [&](const Placed& a, const Placed& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return contents.tensors[a.index].name < contents.tensors[b.index].name;
  });
  uint64_t cursor = 0;
  const CheckpointTensor* previous = nullptr;
  for (const Placed& p : placement) {
    const CheckpointTensor& t = contents.tensors[p.index];
    if (p.begin < cursor)
      fail(file_name, ": tensor '", t.name, "' (bytes ", p.begin, "..", p.end, ") overlaps tensor '", previous->name,
           "' (which ends at ", cursor, ")");
    if (p.begin > cursor)
      fail(file_name, ": tensor '", t.name, "' starts at byte ", p.begin, " but the previous tensor",
           previous ? " '" + previous->name + "'" : std::string(), " ends at ", cursor,
           ": hole in the data buffer");
    cursor = p.end;
    previous = &t;
  }
  SPECULA_CHECK(cursor == buffer_size, file_name, ": tensors cover ", cursor, " bytes of the ", buffer_size,
                "-byte data buffer", previous ? " (last is '" + previous->name + "')" : std::string(),
                ": trailing bytes belong to no tensor");

  std::vector<CheckpointTensor> ordered;
  ordered.reserve(placement.size());
  for (const Placed& p : placement) {
    CheckpointTensor& t = contents.tensors[p.index];
    t.data = buffer + p.begin;
    ordered.push_back(std::move(t));
  }
  contents.tensors = std::move(ordered);
  return contents;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path), contents_(parse_safetensors(file_)) {}

}  // namespace specula::io
