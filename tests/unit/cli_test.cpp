// The `specula` program end to end: the demo model round trip (create, inspect, generate with a
// fixed seed twice) and clear one-line errors with exit status 1 for bad input.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include <unistd.h>

namespace {

struct CliRun {
  int status;
  std::string output;  // stdout and stderr together
};

CliRun run(const std::string& args) {
  const std::string command = std::string(SPECULA_CLI_PATH) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  const int status = pclose(pipe);
  return {WEXITSTATUS(status), out};
}

class Cli : public testing::Test {
 protected:
  // One folder per process: ctest runs each test in its own process, several at a time.
  static std::string dir() {
    return (std::filesystem::temp_directory_path() / ("specula_cli_demo_" + std::to_string(getpid()))).string();
  }
  static void SetUpTestSuite() {
    std::filesystem::remove_all(dir());
    ASSERT_EQ(run("create-demo-model " + dir()).status, 0);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir()); }
};

TEST_F(Cli, InspectDescribesTheDemoModel) {
  const CliRun r = run("inspect " + dir());
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("LlamaForCausalLM"), std::string::npos);
  EXPECT_NE(r.output.find("layout         OK"), std::string::npos);
}

TEST_F(Cli, SameSeedSameText) {
  const std::string args = "generate -m " + dir() + " -p 'The quick brown fox' -n 24 --temperature 0.9 --seed 7 "
                           "--device cpu --ignore-eos";
  const CliRun a = run(args), b = run(args);
  EXPECT_EQ(a.status, 0) << a.output;
  EXPECT_NE(a.output.find("decode: 24 tokens"), std::string::npos) << a.output;
  const auto text = [](const std::string& s) { return s.substr(s.find(" tokens\n") + 8, s.find("prefill:") - s.find(" tokens\n") - 8); };
  EXPECT_GT(text(a.output).size(), 5u) << a.output;
  EXPECT_EQ(text(a.output), text(b.output));
  std::string other = args;
  other.replace(other.find("--seed 7"), 8, "--seed 8");
  EXPECT_NE(text(run(other).output), text(a.output));
}

TEST_F(Cli, BadInputGetsAOneLineError) {
  CliRun r = run("generate -m /nonexistent/model -p hi --device cpu");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("specula: error: /nonexistent/model: no tokenizer.json"), std::string::npos) << r.output;
  r = run("generate -m " + dir() + " -p hi --chat --device cpu");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("this tokenizer has no '<|eot_id|>' token"), std::string::npos) << r.output;
  r = run("generate -m " + dir() + " -p hi --top-p 2 --device cpu");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("top_p must be in (0, 1]"), std::string::npos) << r.output;
  r = run("generate -m " + dir() + " --device cpu");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("give exactly one of --prompt and --prompt-file"), std::string::npos) << r.output;
  r = run("inspect " + std::string(SPECULA_TEST_DATA));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("no config.json"), std::string::npos) << r.output;
}

}  // namespace
