#include "specula/core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>

#include "specula/core/error.h"

namespace specula {

namespace {

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// An open descriptor of a regular file, closed on scope exit.
class RegularFile {
 public:
  explicit RegularFile(const std::string& path) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. It has no
    // effect on regular files, the only kind accepted below.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd_ < 0) fail(path, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      ::close(fd_);
      fail(path, ": cannot stat: ", std::strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd_);
      fail(path, ": is ", file_kind(st.st_mode), ", expected a regular file");
    }
    size_ = static_cast<size_t>(st.st_size);
  }
  ~RegularFile() { ::close(fd_); }
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  int fd() const { return fd_; }
  size_t size() const { return size_; }

 private:
  int fd_ = -1;
  size_t size_ = 0;
};

// Reads up to `length` bytes from the start of an open file.
std::string read_prefix(const RegularFile& file, size_t length, const std::string& path) {
  std::string out(length, '\0');
  size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(file.fd(), out.data() + done, length - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path, ": cannot read: ", std::strerror(errno));
    if (n == 0) break;  // the file shrank while being read
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const RegularFile file(path);
  const int fd = file.fd();
  size_ = file.size();
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) fail(path, ": cannot map: ", std::strerror(errno));
    data_ = static_cast<const uint8_t*>(p);
  }
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

std::string_view MappedFile::bytes(size_t offset, size_t length) const {
  SPECULA_CHECK(offset <= size_ && length <= size_ - offset, path_, ": read of ", length, " bytes at offset ",
                offset, " runs past the end of the file (", size_, " bytes)");
  return {reinterpret_cast<const char*>(data_) + offset, length};
}

std::string read_text_file(const std::string& path, size_t max_bytes) {
  const RegularFile file(path);
  SPECULA_CHECK(file.size() <= max_bytes, path, ": ", file.size(), " bytes, more than the ", max_bytes,
                " bytes allowed for a text input");
  return read_prefix(file, file.size(), path);
}

bool input_present(const std::string& path) {
  struct stat st {};
  // lstat, not stat: a dangling symlink is present (and refused when read), not silently absent.
  return ::lstat(path.c_str(), &st) == 0 || errno != ENOENT;
}

std::string read_file_prefix(const std::string& path, size_t length) {
  const RegularFile file(path);
  return read_prefix(file, std::min(length, file.size()), path);
}

}  // namespace specula
