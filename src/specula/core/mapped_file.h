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

// Only regular files are opened: a directory, FIFO, device or socket is refused with an error
// naming the path, before any read (and without blocking on a FIFO that has no writer).

// The largest text input read whole (config.json, tokenizer.json, index files, prompts): real
// ones are at most tens of MiB, so anything larger is a mistake or hostile.
constexpr size_t kMaxTextFileBytes = size_t{256} << 20;

// The largest config-like file (config.json, generation_config.json, tokenizer_config.json, a
// chat template): real ones are kilobytes, a few MB with large label maps. Parsed into a JSON
// document such a file takes about ten times its size in memory, so the tighter bound matters.
constexpr size_t kMaxConfigFileBytes = size_t{16} << 20;

// Reads a whole text file such as config.json; throws naming the path when it is not a regular
// file or is larger than `max_bytes`.
std::string read_text_file(const std::string& path, size_t max_bytes = kMaxTextFileBytes);
// Whether an optional input such as generation_config.json is there to be read. Also true when
// `path` cannot be examined (a symlink loop, a directory without search permission): reading it
// then reports the problem as an Error naming the path, where std::filesystem::exists would throw
// its own exception or a silent false would skip a file the user provided.
bool input_present(const std::string& path);

// The first `length` bytes of a regular file (fewer if it is shorter), for sniffing a format.
std::string read_file_prefix(const std::string& path, size_t length);

}  // namespace specula
