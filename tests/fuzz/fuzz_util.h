// Shared pieces of the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp).
//
// The contract every harness checks: a reader given arbitrary bytes either returns a value or
// throws specula::Error. So only specula::Error is caught; any other exception (std::bad_alloc
// from an unbounded allocation, std::out_of_range from an unchecked .at(), a nlohmann exception
// that escaped) reaches libFuzzer as an uncaught exception, which aborts and counts as a crash,
// as do the sanitizers' reports, timeouts and the RSS limit.
//
// Readers that take a path are given a memfd (an anonymous in-memory file) through
// /proc/self/fd/N: the library opens and maps it exactly as it would a file on disk (it is a
// regular file to fstat), and nothing touches the disk, so a fuzzer can run millions of inputs.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>
#include <string_view>

#include "specula/core/error.h"

namespace specula::fuzz {

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `body`; bad input reported as specula::Error is the expected outcome, not a finding.
template <typename Body>
void expect_value_or_error(Body&& body) {
  try {
    body();
  } catch (const specula::Error&) {
  }
}

// An anonymous in-memory file holding `bytes`, readable by path while the object lives.
class MemFile {
 public:
  explicit MemFile(std::string_view bytes) {
    fd_ = ::memfd_create("specula-fuzz", MFD_CLOEXEC);
    if (fd_ < 0) die("memfd_create failed");
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
      if (n <= 0) die("write to memfd failed");
      done += static_cast<size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  // A harness failure, not a finding in the library: stop loudly.
  [[noreturn]] static void die(const char* what) {
    std::perror(what);
    std::abort();
  }
  int fd_ = -1;
  std::string path_;
};

}  // namespace specula::fuzz
