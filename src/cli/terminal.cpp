// The open-line flag is per process because stderr is: it is the state of the terminal, not of
// any one command.
#include "terminal.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace specula::cli {

namespace {
bool status_line_open = false;
}  // namespace

bool stderr_is_terminal() { return isatty(fileno(stderr)) == 1; }

void draw_status_line(const std::string& text) {
  if (!stderr_is_terminal()) return;
  std::fprintf(stderr, "\r\033[K%s", text.c_str());  // \033[K: erase what a longer line left behind
  std::fflush(stderr);
  status_line_open = true;
}

void end_status_line() {
  if (!status_line_open) return;
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
  status_line_open = false;
}

void draw_progress_bar(const std::string& label, int64_t done, int64_t total) {
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(kWidth * std::clamp<int64_t>(done, 0, total) / std::max<int64_t>(total, 1));
  draw_status_line(label + " [" + std::string(static_cast<size_t>(filled), '=') +
                   std::string(static_cast<size_t>(kWidth - filled), ' ') + "] " + std::to_string(done) + "/" +
                   std::to_string(total) + " tokens");
}

}  // namespace specula::cli
