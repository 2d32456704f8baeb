// MappedFile: a read-only memory map of a whole file (checkpoints are read zero-copy).
// Readers must treat the bytes as untrusted: every offset is checked against size().
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace specula {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  std::string_view bytes(size_t offset, size_t length) const;  // checked

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) text file such as config.json; throws naming the path.
std::string read_text_file(const std::string& path);

}  // namespace specula
