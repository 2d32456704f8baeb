// Writes a list of Python ints the way torch.save(list_of_ints, path) does, byte for byte apart
// from the serialization id: a STORED zip whose records are <name>/data.pkl (pickle protocol 2,
// as CPython's C pickler writes a list: EMPTY_LIST BINPUT 0, then MARK <ints> APPENDS per 1000
// items, a single item as <int> APPEND, each int as BININT1/BININT2/BININT or LONG1), then
// <name>/.format_version "1", <name>/.storage_alignment "64", <name>/byteorder "little",
// <name>/version "3\n" and <name>/.data/serialization_id (40 digits). As torch's writer (miniz)
// does, every record's data starts on a 64-byte boundary (an "FB" extra field of 'Z' padding in
// the local header), each local header carries zero sizes and is followed by a data descriptor,
// and the archive ends with a ZIP64 end record, its locator and the classic end record.
// <name> is the file name without its extension, as torch names it. The file is written
// atomically: a temporary file in the same folder, flushed, then renamed over `path`.
// FR-Spec frequency lists (freq_<V>.pt) are such files; torch.load(path, weights_only=True)
// and io::load_torch_int_list read them.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace specula::io {

// The pickle bytes (protocol 2) CPython's pickle.dumps(values, protocol=2) produces for a list of ints.
std::string pickle_int_list(std::span<const int64_t> values);

// The whole archive as torch.save writes it for a list of ints under the record folder `name`.
std::string torch_int_list_archive(std::span<const int64_t> values, std::string_view name);

// Writes torch_int_list_archive(values, <stem of path>) to `path` atomically; throws
// specula::Error naming the path when the folder cannot be written.
void write_torch_int_list(const std::string& path, std::span<const int64_t> values);

// The zip CRC-32 (the zlib polynomial) of `bytes`.
uint32_t zip_crc32(std::string_view bytes);

}  // namespace specula::io
