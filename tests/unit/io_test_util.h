// Test helpers for the io readers: tiny writers for safetensors, STORED zip archives and
// protocol-2 pickles, so every hostile case is built byte by byte inside the test (no binary
// fixtures to regenerate, and each test shows exactly which bytes are wrong). The writers follow
// the reference writers' layouts (safetensors header padding, torch's 64-byte-aligned zip
// records, CPython's opcode choices) so the good cases look like real files.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "specula/core/error.h"

namespace specula::io::testing {

// ---------------------------------------------------------------------------------------------
// Files

// A fresh directory for one test, removed with everything in it when the test ends.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = "specula_io_";
    if (info != nullptr) name += std::string(info->test_suite_name()) + "_" + info->name() + "_";
    name += std::to_string(::getpid()) + "_" + std::to_string(std::random_device{}());
    path_ = std::filesystem::temp_directory_path() / name;
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  // Writes `bytes` to `name` inside the directory and returns its full path.
  std::string write(const std::string& name, std::string_view bytes) const {
    const std::string p = file(name);
    // A new inode each time: truncating a file in place makes ext4 flush it (auto_da_alloc),
    // which turns the corruption loops from milliseconds into seconds.
    std::error_code ignored;
    std::filesystem::remove(p, ignored);
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << "cannot write " << p;
    return p;
  }

 private:
  std::filesystem::path path_;
};

inline std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `body` and checks that it throws specula::Error whose message contains every one of
// `parts`; any other outcome (no throw, another exception type, missing text) fails the test.
inline void expect_error(const std::function<void()>& body, const std::vector<std::string>& parts) {
  try {
    body();
  } catch (const specula::Error& e) {
    const std::string message = e.what();
    for (const auto& part : parts)
      EXPECT_NE(message.find(part), std::string::npos) << "error message lacks '" << part << "': " << message;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-specula exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "did not throw (expected an error mentioning '" << (parts.empty() ? "" : parts.front()) << "')";
}

// ---------------------------------------------------------------------------------------------
// Little-endian byte building

inline void put_le(std::string& out, uint64_t value, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}
inline void patch_le(std::string& out, size_t offset, uint64_t value, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out[offset + i] = static_cast<char>((value >> (8 * i)) & 0xff);
}
template <typename T>
std::string bytes_of(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// ---------------------------------------------------------------------------------------------
// safetensors

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as written in the header, so unknown names can be tested
  std::vector<int64_t> shape;
  std::string data;
};

inline std::string json_shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ',';
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// Assembles a file from a literal header and data buffer: the hostile cases write headers by hand.
inline std::string safetensors_raw(const std::string& header, const std::string& buffer) {
  std::string out;
  put_le(out, header.size(), 8);
  return out + header + buffer;
}

// A well-formed file, laid out as the reference writer does: tensors back to back in the given
// order, header padded with spaces so the data starts on an 8-byte boundary.
inline std::string safetensors_file(const std::vector<SafetensorsEntry>& tensors,
                                    const std::map<std::string, std::string>& metadata = {}) {
  std::string header = "{";
  std::string buffer;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ',';
      header += "\"" + k + "\":\"" + v + "\"";
      first = false;
    }
    header += "}";
  }
  for (const auto& t : tensors) {
    if (header.size() > 1) header += ",";
    const size_t begin = buffer.size();
    buffer += t.data;
    header += "\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":" + json_shape(t.shape) +
              ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(buffer.size()) + "]}";
  }
  header += "}";
  while ((8 + header.size()) % 8 != 0) header += ' ';
  return safetensors_raw(header, buffer);
}

// ---------------------------------------------------------------------------------------------
// ZIP (STORED only, like torch.save)

struct ZipInput {
  std::string name;
  std::string data;
  uint16_t method = 0;  // 0 STORED; tests set 8 (deflate) to check that it is refused
  uint16_t flags = 0;
};

// The archive plus where its structures landed, so tests can corrupt one field precisely.
struct ZipLayout {
  std::string bytes;
  std::vector<uint64_t> local_offsets;
  std::vector<uint64_t> central_offsets;
  std::vector<uint64_t> data_offsets;
  uint64_t central_directory_offset = 0;
  uint64_t end_record_offset = 0;  // the classic end-of-central-directory record
};

enum class Zip64 {
  None,
  All,          // every size and offset is a 0xFFFFFFFF placeholder, real values in the 0x0001 field
  OffsetsOnly,  // only local-header offsets are placeholders (small entries past 4 GiB)
};

// Writes entries with local-header padding so data starts on `alignment` bytes (torch uses 64).
// With ZIP64 the placeholders above are written, plus the ZIP64 end record and locator, as for a
// file over 4 GiB.
inline ZipLayout zip_archive(const std::vector<ZipInput>& entries, Zip64 mode = Zip64::None, size_t alignment = 64) {
  const bool zip64 = mode != Zip64::None;
  const bool sizes64 = mode == Zip64::All;
  ZipLayout z;
  std::string& out = z.bytes;
  for (const auto& e : entries) {
    z.local_offsets.push_back(out.size());
    put_le(out, 0x04034b50, 4);
    put_le(out, zip64 ? 45 : 20, 2);
    put_le(out, e.flags, 2);
    put_le(out, e.method, 2);
    put_le(out, 0, 4);  // time, date
    put_le(out, 0, 4);  // crc (not checked by the reader)
    put_le(out, sizes64 ? 0xffffffff : e.data.size(), 4);
    put_le(out, sizes64 ? 0xffffffff : e.data.size(), 4);
    put_le(out, e.name.size(), 2);
    std::string extra;
    if (sizes64) {
      put_le(extra, 0x0001, 2);
      put_le(extra, 16, 2);
      put_le(extra, e.data.size(), 8);
      put_le(extra, e.data.size(), 8);
    }
    const size_t unpadded = out.size() + 2 + e.name.size() + extra.size();
    size_t padding = (alignment - unpadded % alignment) % alignment;
    if (padding > 0 && padding < 4) padding += alignment;  // a padding block needs its 4-byte header
    if (padding > 0) {
      put_le(extra, 0x4246, 2);  // torch's "FB" padding block
      put_le(extra, padding - 4, 2);
      extra += std::string(padding - 4, 'Z');
    }
    put_le(out, extra.size(), 2);
    out += e.name + extra;
    z.data_offsets.push_back(out.size());
    out += e.data;
  }
  z.central_directory_offset = out.size();
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    z.central_offsets.push_back(out.size());
    put_le(out, 0x02014b50, 4);
    put_le(out, zip64 ? 45 : 20, 2);
    put_le(out, zip64 ? 45 : 20, 2);
    put_le(out, e.flags, 2);
    put_le(out, e.method, 2);
    put_le(out, 0, 4);
    put_le(out, 0, 4);
    put_le(out, sizes64 ? 0xffffffff : e.data.size(), 4);
    put_le(out, sizes64 ? 0xffffffff : e.data.size(), 4);
    put_le(out, e.name.size(), 2);
    put_le(out, zip64 ? (sizes64 ? 28 : 12) : 0, 2);
    put_le(out, 0, 2);  // comment
    put_le(out, 0, 2);  // disk
    put_le(out, 0, 2);
    put_le(out, 0, 4);
    put_le(out, zip64 ? 0xffffffff : z.local_offsets[i], 4);
    out += e.name;
    if (zip64) {
      put_le(out, 0x0001, 2);
      put_le(out, sizes64 ? 24 : 8, 2);
      if (sizes64) {
        put_le(out, e.data.size(), 8);
        put_le(out, e.data.size(), 8);
      }
      put_le(out, z.local_offsets[i], 8);
    }
  }
  const uint64_t central_size = out.size() - z.central_directory_offset;
  if (zip64) {
    const uint64_t record = out.size();
    put_le(out, 0x06064b50, 4);
    put_le(out, 44, 8);
    put_le(out, 45, 2);
    put_le(out, 45, 2);
    put_le(out, 0, 4);
    put_le(out, 0, 4);
    put_le(out, entries.size(), 8);
    put_le(out, entries.size(), 8);
    put_le(out, central_size, 8);
    put_le(out, z.central_directory_offset, 8);
    put_le(out, 0x07064b50, 4);
    put_le(out, 0, 4);
    put_le(out, record, 8);
    put_le(out, 1, 4);
  }
  z.end_record_offset = out.size();
  put_le(out, 0x06054b50, 4);
  put_le(out, 0, 4);
  put_le(out, zip64 ? 0xffff : entries.size(), 2);
  put_le(out, zip64 ? 0xffff : entries.size(), 2);
  put_le(out, zip64 ? 0xffffffff : central_size, 4);
  put_le(out, zip64 ? 0xffffffff : z.central_directory_offset, 4);
  put_le(out, 0, 2);
  return z;
}

// ---------------------------------------------------------------------------------------------
// Pickle (protocol 2), opcode by opcode

class PickleBuilder {
 public:
  PickleBuilder& proto(uint8_t version = 2) { return op(0x80).byte(version); }
  PickleBuilder& stop() { return op('.'); }
  PickleBuilder& mark() { return op('('); }
  PickleBuilder& empty_dict() { return op('}'); }
  PickleBuilder& empty_list() { return op(']'); }
  PickleBuilder& empty_tuple() { return op(')'); }
  PickleBuilder& tuple() { return op('t'); }
  PickleBuilder& tuple_n(int n) { return op(static_cast<uint8_t>(0x84 + n)); }  // TUPLE1..TUPLE3
  PickleBuilder& setitem() { return op('s'); }
  PickleBuilder& setitems() { return op('u'); }
  PickleBuilder& append() { return op('a'); }
  PickleBuilder& appends() { return op('e'); }
  PickleBuilder& reduce() { return op('R'); }
  PickleBuilder& build() { return op('b'); }
  PickleBuilder& persid() { return op('Q'); }
  PickleBuilder& none() { return op('N'); }
  PickleBuilder& boolean(bool v) { return op(v ? 0x88 : 0x89); }
  PickleBuilder& put(uint32_t index) { return index < 256 ? op('q').byte(index) : op('r').le(index, 4); }
  PickleBuilder& get(uint32_t index) { return index < 256 ? op('h').byte(index) : op('j').le(index, 4); }
  // CPython's choice for protocol 2: the shortest of BININT1, BININT2, BININT, else LONG1.
  PickleBuilder& integer(int64_t v) {
    if (v >= 0 && v <= 0xff) return op('K').byte(static_cast<uint8_t>(v));
    if (v >= 0 && v <= 0xffff) return op('M').le(static_cast<uint64_t>(v), 2);
    if (v >= INT32_MIN && v <= INT32_MAX) return op('J').le(static_cast<uint32_t>(static_cast<int32_t>(v)), 4);
    std::string digits;  // minimal two's complement, little-endian
    int64_t rest = v;
    do {
      digits.push_back(static_cast<char>(rest & 0xff));
      rest >>= 8;
    } while (!((rest == 0 && (digits.back() & 0x80) == 0) || (rest == -1 && (digits.back() & 0x80) != 0)));
    return op(0x8a).byte(static_cast<uint8_t>(digits.size())).raw(digits);
  }
  PickleBuilder& long1(std::string_view little_endian_bytes) {
    return op(0x8a).byte(static_cast<uint8_t>(little_endian_bytes.size())).raw(little_endian_bytes);
  }
  PickleBuilder& unicode(std::string_view s) { return op('X').le(s.size(), 4).raw(s); }
  PickleBuilder& binfloat(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    op('G');
    for (int i = 7; i >= 0; --i) byte(static_cast<uint8_t>(bits >> (8 * i)));
    return *this;
  }
  PickleBuilder& global(std::string_view module, std::string_view name) {
    return op('c').raw(module).raw("\n").raw(name).raw("\n");
  }
  PickleBuilder& op(uint8_t code) { return byte(code); }
  PickleBuilder& byte(uint8_t b) {
    bytes_.push_back(static_cast<char>(b));
    return *this;
  }
  PickleBuilder& le(uint64_t value, size_t n) {
    put_le(bytes_, value, n);
    return *this;
  }
  PickleBuilder& raw(std::string_view b) {
    bytes_.append(b);
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

// FR-Spec's freq_<V>.pt pickle, exactly as CPython writes a list of ints (format reference 2.4):
// EMPTY_LIST, BINPUT 0, then batches of up to 1000 as MARK ... APPENDS, a final batch of one
// item as a bare APPEND, STOP.
inline std::string int_list_pickle(const std::vector<int64_t>& ids) {
  PickleBuilder p;
  p.proto().empty_list().put(0);
  for (size_t begin = 0; begin < ids.size(); begin += 1000) {
    const size_t end = std::min(ids.size(), begin + 1000);
    if (end - begin == 1) {
      p.integer(ids[begin]).append();
      continue;
    }
    p.mark();
    for (size_t i = begin; i < end; ++i) p.integer(ids[i]);
    p.appends();
  }
  return p.stop().bytes();
}

// One tensor of a state_dict as torch.save pickles it.
struct PickledTensor {
  std::string name;
  std::string storage_class;  // e.g. "FloatStorage"
  std::string key;            // storage record name under <p>/data/
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
};

struct StateDictStyle {
  bool ordered_dict = false;      // collections.OrderedDict with `_metadata` (model.state_dict()) vs plain dict
  bool as_parameter = false;      // wrap each tensor in torch._utils._rebuild_parameter
  bool metadata_argument = false;  // the optional 7th _rebuild_tensor_v2 argument
};

// Emits the _rebuild_tensor_v2(...) REDUCE for one tensor, memoizing globals as torch does.
class TorchPickleWriter {
 public:
  PickleBuilder& builder() { return p_; }

  void tensor(const PickledTensor& t, const StateDictStyle& style = {}) {
    if (style.as_parameter) global("torch._utils", "_rebuild_parameter");
    global("torch._utils", "_rebuild_tensor_v2");
    p_.mark();
    p_.mark().unicode("storage");
    global("torch", t.storage_class);
    p_.unicode(t.key).unicode("cpu").integer(t.storage_numel).tuple().persid();
    p_.integer(t.offset);
    int_tuple(t.size);
    int_tuple(t.stride);
    p_.boolean(false);
    global("collections", "OrderedDict");
    p_.empty_tuple().reduce();
    if (style.metadata_argument) p_.empty_dict();
    p_.tuple().reduce();
    if (style.as_parameter) {
      p_.boolean(false);
      global("collections", "OrderedDict");
      p_.empty_tuple().reduce().tuple_n(3).reduce();
    }
    p_.put(next_memo_++);
  }

  void int_tuple(const std::vector<int64_t>& values) {
    if (values.empty()) {
      p_.empty_tuple();
    } else if (values.size() <= 3) {
      for (const int64_t v : values) p_.integer(v);
      p_.tuple_n(static_cast<int>(values.size()));
    } else {
      p_.mark();
      for (const int64_t v : values) p_.integer(v);
      p_.tuple();
    }
  }

  void global(const std::string& module, const std::string& name) {
    const std::string key = module + "." + name;
    const auto it = memo_of_global_.find(key);
    if (it != memo_of_global_.end()) {
      p_.get(it->second);
      return;
    }
    p_.global(module, name).put(next_memo_);
    memo_of_global_[key] = next_memo_++;
  }

  uint32_t next_memo() { return next_memo_++; }

 private:
  PickleBuilder p_;
  std::map<std::string, uint32_t> memo_of_global_;
  uint32_t next_memo_ = 0;
};

inline std::string state_dict_pickle(const std::vector<PickledTensor>& tensors, const StateDictStyle& style = {}) {
  TorchPickleWriter w;
  PickleBuilder& p = w.builder();
  p.proto();
  if (style.ordered_dict) {
    w.global("collections", "OrderedDict");
    p.empty_tuple().reduce();
  } else {
    p.empty_dict();
  }
  p.put(w.next_memo());
  if (!tensors.empty()) {
    p.mark();
    for (const auto& t : tensors) {
      p.unicode(t.name);
      w.tensor(t, style);
    }
    p.setitems();
  }
  if (style.ordered_dict) {  // state = {'_metadata': OrderedDict({'': {'version': 1}})}, then BUILD
    p.empty_dict().unicode("_metadata");
    w.global("collections", "OrderedDict");
    p.empty_tuple().reduce().unicode("").empty_dict().unicode("version").integer(1).setitem().setitem();
    p.setitem().build();
  }
  return p.stop().bytes();
}

// A torch.save zip: <prefix>/data.pkl, byteorder, the storage records, version.
inline std::string torch_zip(const std::string& prefix, const std::string& pickle,
                             const std::map<std::string, std::string>& records, const std::string& byteorder = "little",
                             Zip64 zip64 = Zip64::None) {
  std::vector<ZipInput> entries{{prefix + "/data.pkl", pickle}};
  if (!byteorder.empty()) entries.push_back({prefix + "/byteorder", byteorder});
  for (const auto& [key, data] : records) entries.push_back({prefix + "/data/" + key, data});
  entries.push_back({prefix + "/version", "3\n"});
  return zip_archive(entries, zip64).bytes;
}

}  // namespace specula::io::testing
