// ZIP parsing (PKWARE APPNOTE 6.3): end-of-central-directory record (found by scanning back
// from EOF), optional ZIP64 locator and record, central directory entries with their 0x0001
// extra field, then each entry's local header, because torch pads the *local* extra field so that
// data starts on a 64-byte boundary and the central extra length does not tell where data begins.
// All numbers come from the file, so every offset is range-checked before it is followed.
#include "specula/io/zip_archive.h"

#include <algorithm>

#include "specula/core/error.h"
#include "specula/io/byte_reader.h"

namespace specula::io {

namespace {

constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kEndOfCentralDirSignature = 0x06054b50;
constexpr uint32_t kZip64EndOfCentralDirSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint64_t kEndOfCentralDirSize = 22;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kZip64EndOfCentralDirMinSize = 56;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kMaxCommentSize = 0xffff;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kFlagEncrypted = 0x0001;
constexpr uint16_t kMethodStored = 0;

struct CentralDirectory {
  uint64_t offset = 0;
  uint64_t size = 0;
  uint64_t entry_count = 0;
  uint64_t end = 0;  // where the records after the directory start: it must not run into them
};

// The EOCD record is the last thing in the file but may be followed by a comment of up to 64 KiB;
// requiring its comment length to reach exactly EOF rules out signature bytes inside data.
uint64_t find_end_of_central_dir(const ByteReader& r) {
  SPECULA_CHECK(r.size() >= kEndOfCentralDirSize, r.what(), ": too small for a zip archive (", r.size(), " bytes)");
  const uint64_t last = r.size() - kEndOfCentralDirSize;
  const uint64_t first = last > kMaxCommentSize ? last - kMaxCommentSize : 0;
  for (uint64_t pos = last + 1; pos-- > first;) {
    if (r.u32(pos) == kEndOfCentralDirSignature && pos + kEndOfCentralDirSize + r.u16(pos + 20) == r.size())
      return pos;
  }
  fail(r.what(), ": no zip end-of-central-directory record (truncated file or not a zip archive)");
}

CentralDirectory read_central_directory_location(const ByteReader& r) {
  const uint64_t eocd = find_end_of_central_dir(r);
  SPECULA_CHECK(r.u16(eocd + 4) == 0 && r.u16(eocd + 6) == 0, r.what(), ": multi-disk zip archives are not supported");
  CentralDirectory cd;
  cd.entry_count = r.u16(eocd + 10);
  cd.size = r.u32(eocd + 12);
  cd.offset = r.u32(eocd + 16);
  cd.end = eocd;
  const bool needs_zip64 = cd.entry_count == 0xffff || cd.size == 0xffffffff || cd.offset == 0xffffffff;

  const bool has_locator = eocd >= kZip64LocatorSize && r.u32(eocd - kZip64LocatorSize) == kZip64LocatorSignature;
  if (!has_locator) {
    SPECULA_CHECK(!needs_zip64, r.what(), ": zip end record has ZIP64 placeholders but no ZIP64 locator precedes it");
    return cd;
  }
  const uint64_t locator = eocd - kZip64LocatorSize;
  SPECULA_CHECK(r.u32(locator + 4) == 0 && r.u32(locator + 16) <= 1, r.what(),
                ": multi-disk zip archives are not supported (ZIP64 locator)");
  const uint64_t record = r.u64(locator + 8);
  SPECULA_CHECK(record <= locator && locator - record >= kZip64EndOfCentralDirMinSize, r.what(),
                ": ZIP64 end-of-central-directory offset ", record, " is out of range");
  SPECULA_CHECK(r.u32(record) == kZip64EndOfCentralDirSignature, r.what(),
                ": bad ZIP64 end-of-central-directory signature at offset ", record);
  SPECULA_CHECK(r.u32(record + 16) == 0 && r.u32(record + 20) == 0, r.what(),
                ": multi-disk zip archives are not supported (ZIP64 record)");
  cd.entry_count = r.u64(record + 32);
  cd.size = r.u64(record + 40);
  cd.offset = r.u64(record + 48);
  cd.end = record;
  return cd;
}

struct CentralEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
};

// Replaces saturated 32-bit fields with their 64-bit values from the 0x0001 extra field, which
// lists only the saturated fields, in this fixed order.
void apply_zip64_extra(const ByteReader& r, uint64_t extra_offset, uint64_t extra_size, CentralEntry& entry,
                       bool disk_saturated) {
  uint64_t* const fields[] = {&entry.uncompressed_size, &entry.compressed_size, &entry.local_header_offset};
  const bool saturated[] = {entry.uncompressed_size == 0xffffffff, entry.compressed_size == 0xffffffff,
                            entry.local_header_offset == 0xffffffff};
  bool found = false;
  uint64_t pos = extra_offset;
  const uint64_t end = add_size(extra_offset, extra_size, r.what());
  while (end - pos >= 4) {
    const uint16_t id = r.u16(pos);
    const uint16_t size = r.u16(pos + 2);
    SPECULA_CHECK(size <= end - pos - 4, r.what(), ": entry '", entry.name, "': extra field overruns its length");
    if (id == kZip64ExtraId) {
      found = true;
      uint64_t field = pos + 4;
      for (size_t i = 0; i < 3; ++i) {
        if (!saturated[i]) continue;
        SPECULA_CHECK(field + 8 <= pos + 4 + size, r.what(), ": entry '", entry.name, "': ZIP64 extra field too short");
        *fields[i] = r.u64(field);
        field += 8;
      }
    }
    pos += 4 + size;
  }
  const bool any_saturated = saturated[0] || saturated[1] || saturated[2] || disk_saturated;
  SPECULA_CHECK(found || !any_saturated, r.what(), ": entry '", entry.name,
                "' has ZIP64 placeholder sizes but no ZIP64 extra field");
}

}  // namespace

ZipArchive::ZipArchive(const MappedFile& file) : file_(&file) {
  const ByteReader r(file.bytes(0, file.size()), file.path());
  const CentralDirectory cd = read_central_directory_location(r);
  SPECULA_CHECK(cd.offset <= cd.end && cd.size <= cd.end - cd.offset, r.what(), ": central directory (offset ",
                cd.offset, ", ", cd.size, " bytes) lies outside the file");
  // Each entry takes at least 46 bytes: this bounds the count before anything is allocated.
  SPECULA_CHECK(cd.entry_count <= cd.size / kCentralHeaderSize, r.what(), ": zip claims ", cd.entry_count,
                " entries in a ", cd.size, "-byte central directory (truncated?)");

  const ByteReader dir(r.slice(cd.offset, cd.size), r.what() + ": zip central directory");
  entries_.reserve(static_cast<size_t>(cd.entry_count));
  uint64_t pos = 0;
  for (uint64_t i = 0; i < cd.entry_count; ++i) {
    SPECULA_CHECK(range_fits(pos, kCentralHeaderSize, dir.size()), dir.what(), ": entry ", i,
                  " runs past the end of the directory (truncated?)");
    SPECULA_CHECK(dir.u32(pos) == kCentralHeaderSignature, dir.what(), ": bad signature for entry ", i, " at offset ",
                  cd.offset + pos);
    CentralEntry entry;
    entry.flags = dir.u16(pos + 8);
    entry.method = dir.u16(pos + 10);
    entry.compressed_size = dir.u32(pos + 20);
    entry.uncompressed_size = dir.u32(pos + 24);
    const uint16_t name_size = dir.u16(pos + 28);
    const uint16_t extra_size = dir.u16(pos + 30);
    const uint16_t comment_size = dir.u16(pos + 32);
    const uint16_t disk_start = dir.u16(pos + 34);
    entry.local_header_offset = dir.u32(pos + 42);
    entry.name = std::string(dir.slice(pos + kCentralHeaderSize, name_size));
    dir.slice(pos + kCentralHeaderSize + name_size, uint64_t{extra_size} + comment_size);  // bounds check
    apply_zip64_extra(dir, pos + kCentralHeaderSize + name_size, extra_size, entry, disk_start == 0xffff);
    pos = add_size(pos, kCentralHeaderSize + name_size + extra_size + comment_size, dir.what());  // 16-bit fields

    const std::string where = r.what() + ": zip entry '" + entry.name + "'";
    SPECULA_CHECK(disk_start == 0 || disk_start == 0xffff, where, ": multi-disk zip archives are not supported");
    SPECULA_CHECK((entry.flags & kFlagEncrypted) == 0, where, ": is encrypted");
    SPECULA_CHECK(entry.method == kMethodStored, where, ": compression method ", entry.method,
                  " is not supported (torch.save writes STORED entries; re-save the checkpoint)");
    SPECULA_CHECK(entry.compressed_size == entry.uncompressed_size, where, ": STORED entry with compressed size ",
                  entry.compressed_size, " != uncompressed size ", entry.uncompressed_size);

    const uint64_t local = entry.local_header_offset;
    SPECULA_CHECK(range_fits(local, kLocalHeaderSize, cd.offset), where, ": local header offset ", local,
                  " is out of range");
    SPECULA_CHECK(r.u32(local) == kLocalHeaderSignature, where, ": bad local header signature at offset ", local);
    SPECULA_CHECK(r.u16(local + 8) == kMethodStored, where, ": local header says the entry is compressed");
    const uint16_t local_name_size = r.u16(local + 26);
    const uint16_t local_extra_size = r.u16(local + 28);
    SPECULA_CHECK(range_fits(local + kLocalHeaderSize, local_name_size, cd.offset) &&
                      r.slice(local + kLocalHeaderSize, local_name_size) == entry.name,
                  where, ": local header names a different entry");
    const uint64_t data_offset = add_size(local, kLocalHeaderSize + local_name_size + local_extra_size, where);
    SPECULA_CHECK(range_fits(data_offset, entry.uncompressed_size, cd.offset), where, ": data (offset ", data_offset,
                  ", ", entry.uncompressed_size, " bytes) runs past the start of the central directory");

    SPECULA_CHECK(index_by_name_.emplace(entry.name, entries_.size()).second, where, ": appears twice");
    entries_.push_back({entry.name, data_offset, entry.uncompressed_size});
  }
}

const ZipEntry* ZipArchive::find(std::string_view name) const {
  const auto it = index_by_name_.find(std::string(name));
  return it == index_by_name_.end() ? nullptr : &entries_[it->second];
}

std::string_view ZipArchive::data(const ZipEntry& entry) const { return file_->bytes(entry.data_offset, entry.size); }

}  // namespace specula::io
