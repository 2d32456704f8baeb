// torch.save-compatible writer for lists of ints (see torch_writer.h). The layout copies what
// PyTorchStreamWriter (miniz with MZ_ZIP_FLAG_WRITE_ZIP64) emits for small records, checked
// against a torch-written FR-Spec list: the test suite rewrites that list and compares bytes.
#include "specula/io/torch_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "specula/core/error.h"

namespace specula::io {

namespace {

// ---- pickle ----

constexpr char kProto = '\x80', kEmptyList = ']', kBinput = 'q', kMark = '(', kAppends = 'e', kAppend = 'a',
               kBinint1 = 'K', kBinint2 = 'M', kBinint = 'J', kLong1 = '\x8a', kStop = '.';
constexpr size_t kPickleBatch = 1000;  // CPython's BATCHSIZE for list appends

void put_le(std::string& out, uint64_t value, size_t bytes) {
  for (size_t i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

// CPython's save_long for protocol 2: the short forms for what fits them, else LONG1 with the
// fewest little-endian two's-complement bytes that keep the sign.
void pickle_int(std::string& out, int64_t value) {
  if (value >= 0 && value <= 0xff) {
    out.push_back(kBinint1);
    put_le(out, static_cast<uint64_t>(value), 1);
  } else if (value >= 0 && value <= 0xffff) {
    out.push_back(kBinint2);
    put_le(out, static_cast<uint64_t>(value), 2);
  } else if (value >= INT32_MIN && value <= INT32_MAX) {
    out.push_back(kBinint);
    put_le(out, static_cast<uint32_t>(static_cast<int32_t>(value)), 4);
  } else {
    // Python: nbytes = (abs-ish bit length >> 3) + 1, then drop one redundant 0xff byte of a
    // negative value. Equivalently: the fewest bytes whose sign-extension gives back `value`.
    size_t bytes = 1;
    while (bytes < 8) {
      const int shift = static_cast<int>(8 * bytes);
      const int64_t low = static_cast<int64_t>(static_cast<uint64_t>(value) << (64 - shift)) >> (64 - shift);
      if (low == value) break;
      ++bytes;
    }
    out.push_back(kLong1);
    out.push_back(static_cast<char>(bytes));
    put_le(out, static_cast<uint64_t>(value), bytes);
  }
}

// ---- zip ----

constexpr uint64_t kAlignment = 64;  // torch's kFieldAlignment
constexpr uint16_t kFlags = 0x0808;  // bit 3: sizes in a data descriptor; bit 11: UTF-8 names
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kMaxZip32 = 0xffffffffu;

struct Record {
  std::string name;  // full name inside the archive
  std::string data;
  uint32_t crc = 0;
  uint64_t local_offset = 0;
};

uint64_t fnv1a(uint64_t hash, std::string_view bytes) {
  for (const char c : bytes) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

void append_record(std::string& out, Record& record) {
  SPECULA_CHECK(record.name.size() <= 0xffff && record.data.size() < kMaxZip32 && out.size() < kMaxZip32,
                "torch archive record '", record.name, "' is too large for this writer (", record.data.size(),
                " bytes)");
  record.crc = zip_crc32(record.data);
  record.local_offset = out.size();
  // Padding so the data starts on a 64-byte boundary; the extra field's own 4-byte header counts.
  const uint64_t start = out.size() + kLocalHeaderSize + record.name.size() + 4;
  const uint64_t padding = (kAlignment - start % kAlignment) % kAlignment;
  put_le(out, 0x04034b50, 4);
  put_le(out, 0, 2);  // version needed (miniz writes 0 for stored entries)
  put_le(out, kFlags, 2);
  put_le(out, 0, 2);   // method: stored
  put_le(out, 0, 4);   // time, date
  put_le(out, 0, 12);  // crc and sizes: in the data descriptor
  put_le(out, record.name.size(), 2);
  put_le(out, padding + 4, 2);
  out += record.name;
  out += "FB";
  put_le(out, padding, 2);
  out.append(padding, 'Z');
  out += record.data;
  put_le(out, 0x08074b50, 4);  // data descriptor
  put_le(out, record.crc, 4);
  put_le(out, record.data.size(), 4);
  put_le(out, record.data.size(), 4);
}

void append_central_directory(std::string& out, const std::vector<Record>& records) {
  const uint64_t cd_offset = out.size();
  for (const Record& r : records) {
    put_le(out, 0x02014b50, 4);
    put_le(out, 0, 2);  // version made by
    put_le(out, 0, 2);  // version needed
    put_le(out, kFlags, 2);
    put_le(out, 0, 2);  // method
    put_le(out, 0, 4);  // time, date
    put_le(out, r.crc, 4);
    put_le(out, r.data.size(), 4);
    put_le(out, r.data.size(), 4);
    put_le(out, r.name.size(), 2);
    put_le(out, 0, 2);  // extra
    put_le(out, 0, 2);  // comment
    put_le(out, 0, 2);  // disk
    put_le(out, 0, 2);  // internal attributes
    put_le(out, 0, 4);  // external attributes
    put_le(out, r.local_offset, 4);
    out += r.name;
  }
  const uint64_t cd_size = out.size() - cd_offset;
  const uint64_t zip64_record = out.size();
  SPECULA_CHECK(zip64_record < kMaxZip32, "torch archive is too large for this writer");
  put_le(out, 0x06064b50, 4);  // ZIP64 end of central directory record
  put_le(out, 44, 8);
  put_le(out, 0x031e, 2);  // made by
  put_le(out, 0x002d, 2);  // needed: 4.5
  put_le(out, 0, 4);
  put_le(out, 0, 4);
  put_le(out, records.size(), 8);
  put_le(out, records.size(), 8);
  put_le(out, cd_size, 8);
  put_le(out, cd_offset, 8);
  put_le(out, 0x07064b50, 4);  // ZIP64 locator
  put_le(out, 0, 4);
  put_le(out, zip64_record, 8);
  put_le(out, 1, 4);
  put_le(out, 0x06054b50, 4);  // end of central directory
  put_le(out, 0, 2);
  put_le(out, 0, 2);
  put_le(out, records.size(), 2);
  put_le(out, records.size(), 2);
  put_le(out, cd_size, 4);
  put_le(out, cd_offset, 4);
  put_le(out, 0, 2);
}

// Writes `bytes` to a temporary file beside `path`, flushes it to disk and renames it over `path`,
// so a reader never sees a half-written list and a failed run leaves the old file in place.
void write_file_atomically(const std::string& path, std::string_view bytes) {
  const std::filesystem::path target(path);
  std::string name = ".";
  name += target.filename().string();
  name += ".tmp.XXXXXX";
  std::string temp = (target.parent_path() / name).string();
  const int fd = ::mkstemp(temp.data());
  SPECULA_CHECK(fd >= 0, path, ": cannot create a temporary file in its folder: ", std::strerror(errno));
  const auto give_up = [&](const char* what) {
    const int err = errno;
    ::close(fd);
    ::unlink(temp.c_str());
    fail(path, ": ", what, ": ", std::strerror(err));
  };
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) give_up("write failed");
    written += static_cast<size_t>(n);
  }
  if (::fchmod(fd, 0644) != 0) give_up("cannot set permissions");
  if (::fsync(fd) != 0) give_up("fsync failed");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    fail(path, ": close failed: ", std::strerror(err));
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    fail(path, ": cannot rename the temporary file into place: ", std::strerror(err));
  }
}

}  // namespace

uint32_t zip_crc32(std::string_view bytes) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  for (const char ch : bytes) crc = table[(crc ^ static_cast<uint8_t>(ch)) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

std::string pickle_int_list(std::span<const int64_t> values) {
  std::string out;
  out.reserve(8 + values.size() * 3 + values.size() / kPickleBatch * 2);
  out.push_back(kProto);
  out.push_back('\x02');
  out.push_back(kEmptyList);
  out.push_back(kBinput);
  out.push_back('\x00');
  if (values.size() == 1) {  // CPython's C pickler: one item is appended alone
    pickle_int(out, values[0]);
    out.push_back(kAppend);
  } else {
    for (size_t begin = 0; begin < values.size(); begin += kPickleBatch) {
      out.push_back(kMark);
      const size_t end = std::min(values.size(), begin + kPickleBatch);
      for (size_t i = begin; i < end; ++i) pickle_int(out, values[i]);
      out.push_back(kAppends);
    }
  }
  out.push_back(kStop);
  return out;
}

std::string torch_int_list_archive(std::span<const int64_t> values, std::string_view name) {
  SPECULA_CHECK(!name.empty() && name.find('/') == std::string_view::npos && name.find('\\') == std::string_view::npos,
                "torch archive name '", std::string(name), "' must be a non-empty name without slashes");
  const std::string prefix = std::string(name) + "/";
  std::vector<Record> records;
  records.push_back({prefix + "data.pkl", pickle_int_list(values)});
  records.push_back({prefix + ".format_version", "1"});
  records.push_back({prefix + ".storage_alignment", "64"});
  records.push_back({prefix + "byteorder", "little"});
  records.push_back({prefix + "version", "3\n"});
  // torch derives its id from the record names and CRCs; this one is as deterministic, from the same inputs.
  uint64_t name_hash = 0xcbf29ce484222325ull, crc_hash = 0xcbf29ce484222325ull;
  for (const Record& r : records) {
    name_hash = fnv1a(name_hash, r.name);
    const uint32_t crc = zip_crc32(r.data);
    crc_hash = fnv1a(crc_hash, std::string_view(reinterpret_cast<const char*>(&crc), sizeof crc));
  }
  char id[48];
  std::snprintf(id, sizeof id, "%020llu%020llu", static_cast<unsigned long long>(name_hash),
                static_cast<unsigned long long>(crc_hash));
  records.push_back({prefix + ".data/serialization_id", std::string(id, 40)});

  std::string out;
  for (Record& r : records) append_record(out, r);
  append_central_directory(out, records);
  return out;
}

void write_torch_int_list(const std::string& path, std::span<const int64_t> values) {
  // torch's rule: the file name up to its last dot ("freq_8192.pt" -> "freq_8192"); torch.save
  // refuses a name that leaves nothing (".pt"), where this writer uses torch's stream default.
  std::string name = std::filesystem::path(path).filename().string();
  if (const size_t dot = name.rfind('.'); dot != std::string::npos) name.resize(dot);
  if (name.empty()) name = "archive";
  std::string bytes = with_context(path, [&] { return torch_int_list_archive(values, name); });
  write_file_atomically(path, bytes);
}

}  // namespace specula::io
