// Status lines on stderr (loading percentage, prefill progress bar). They are drawn only when
// stderr is a terminal, so logs and pipes get clean lines; a drawn line stays "open" (no newline)
// until the next message, and `end_status_line` closes it, so an error printed by main never
// shares a line with a bar and never starts with a stray blank line.
#pragma once

#include <cstdint>
#include <string>

namespace specula::cli {

bool stderr_is_terminal();
// Redraws the open status line with `text` (no-op when stderr is not a terminal).
void draw_status_line(const std::string& text);
// Erases the open status line, if any, leaving the cursor at the start of an empty line.
void end_status_line();
// "prefill [=====     ] 1536/4096 tokens" as a status line.
void draw_progress_bar(const std::string& label, int64_t done, int64_t total);

}  // namespace specula::cli
