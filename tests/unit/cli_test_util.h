// Runs the `specula` program built beside the tests (SPECULA_CLI_PATH) and captures its exit status
// and output, for the tests that check the command line end to end.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

namespace specula::test {

struct CliRun {
  int status;
  std::string output;  // stdout and stderr together
};

inline CliRun run_cli(const std::string& args) {
  const std::string command = std::string(SPECULA_CLI_PATH) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = pclose(pipe);
  return {WEXITSTATUS(status), out};
}

}  // namespace specula::test
