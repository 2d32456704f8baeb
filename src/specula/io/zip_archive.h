// Minimal ZIP reader for torch.save archives: STORED entries only, ZIP64 aware, zero-copy.
// torch.save writes an uncompressed zip whose entries are raw tensor bytes, so an entry is just
// a byte range of the memory-mapped file; nothing is inflated or copied. Compressed or encrypted
// entries, multi-disk archives and every offset that points outside the file are errors.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "specula/core/mapped_file.h"

namespace specula::io {

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // where the entry's bytes start in the file (from its local header)
  uint64_t size = 0;
};

// Index of a zip file's entries; borrows `file`, which must outlive it.
class ZipArchive {
 public:
  explicit ZipArchive(const MappedFile& file);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(std::string_view name) const;
  std::string_view data(const ZipEntry& entry) const;  // the entry's bytes, inside the map
  const std::string& path() const { return file_->path(); }

 private:
  const MappedFile* file_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> index_by_name_;
};

}  // namespace specula::io
