// The `specula` program end to end: the demo model round trip (create, inspect, generate with a
// fixed seed twice), clear one-line errors with exit status 1 for bad input, flag bounds that name
// the flag and the limit, and the small promises of the command line (fresh printed seeds, last
// value of a repeated flag wins, progress bars only on a terminal).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include <nlohmann/json.hpp>
#ifdef SPECULA_WITH_CUDA
#include "specula/ops/cuda/cuda_context.h"
#endif

#include <unistd.h>

#include "cli_test_util.h"

namespace {

using specula::test::CliRun;
CliRun run(const std::string& args) { return specula::test::run_cli(args); }

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
  EXPECT_NE(r.output.find("specula: error: /nonexistent/model: no such directory"), std::string::npos) << r.output;
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

// Runs `args` and expects exit status 1 with `message` in the output, printed as the first line.
void expect_error(const std::string& args, const std::string& message) {
  const CliRun r = run(args);
  EXPECT_EQ(r.status, 1) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(message), std::string::npos) << args << "\n" << r.output;
}

// Runs `args` and expects CLI11's usage error (exit status 105 is CLI11's ValidationError) naming
// the flag and its bounds.
void expect_flag_error(const std::string& args, const std::string& message) {
  const CliRun r = run(args);
  EXPECT_NE(r.status, 0) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(message), std::string::npos) << args << "\n" << r.output;
}

TEST_F(Cli, SizeFlagsHaveReadableBounds) {
  const std::string g = "generate -m " + dir() + " -p hi --device cpu ";
  expect_flag_error(g + "--prefill-chunk 0", "--prefill-chunk: must be an integer from 1 to 65536, got '0'");
  expect_flag_error(g + "--prefill-chunk 4611686018427387904", "--prefill-chunk: must be an integer from 1 to 65536");
  expect_flag_error(g + "--max-context 36028797018963968", "--max-context: must be an integer from 0 to 16777216");
  expect_flag_error(g + "--max-context 2^62", "--max-context: must be an integer from 0 to 16777216, got '2^62'");
  expect_flag_error(g + "-n 99999999999", "--max-new-tokens: must be an integer from 0 to 16777216");
  expect_flag_error(g + "--threads -1", "--threads: must be an integer from 0 to 1024, got '-1'");
  expect_flag_error(g + "--threads 5000", "--threads: must be an integer from 0 to 1024");
  expect_flag_error(g + "--seed -1", "--seed: must be an integer from 0 to 18446744073709551615, got '-1'");
  expect_flag_error(g + "--top-k -3", "--top-k: must be an integer from 0 to");
  expect_flag_error("create-demo-model " + dir() + "_x --layers 10000000", "--layers: must be an integer from 1 to 64");
  expect_flag_error("bench --contexts 512,0", "--contexts: must be an integer from 1 to 16777216, got '0'");
  expect_flag_error("bench --repeats 0", "--repeats: must be an integer from 1 to 1000");
  expect_flag_error("bench --prefill 99999999", "--prefill: must be an integer from 0 to 16777216");
  // Past one forward's 65536 tokens, a prompt needs chunks.
  expect_error("bench --prefill 70000 --device cpu",
               "--prefill 70000 is longer than one prefill forward can be (65536 tokens); give --prefill-chunk");
  // The demo model's own limit is 2048 positions: more is refused unless asked for.
  expect_error(g + "-n 1 --max-context 4096", "exceeds the model's own limit of 2048 tokens");
  EXPECT_EQ(run(g + "-n 1 --max-context 4096 --allow-long-context").status, 0);
}

TEST_F(Cli, ErrorsStartTheirOwnLine) {
  const CliRun r = run("generate -m /nonexistent/model -p hi --device cpu");
  EXPECT_EQ(r.output.rfind("specula: error: ", 0), 0u) << "output does not start with the error: " << r.output;
  EXPECT_EQ(r.output.find("\n\n"), std::string::npos) << r.output;
}

TEST_F(Cli, PromptsAreCheckedBeforeTheModelLoads) {
  const std::string g = "generate -m " + dir() + " --device cpu ";
  expect_error(g + "-p ''", "--prompt: the prompt is empty");
  const std::string empty_file = dir() + "/empty_prompt.txt";
  std::ofstream(empty_file).close();
  expect_error(g + "-f " + empty_file, empty_file + ": the prompt is empty");
  expect_error(g + "-f " + dir(), "is a directory, expected a regular file");
  expect_error(g + "-f " + dir() + "/missing.txt", "--prompt-file: " + dir() + "/missing.txt: cannot open");
  for (const std::string& args : {g + "-p ''", g + "-f " + dir()})
    EXPECT_EQ(run(args).output.find("loaded "), std::string::npos) << "the model was loaded before the prompt check";
  expect_error("generate -m " + dir() + "/config.json -p hi", "config.json: not a directory");
}

TEST_F(Cli, ChatOnlyFlagsNeedTheChatTemplateThatUsesThem) {
  const std::string g = "generate -m " + dir() + " -p hi --device cpu ";
  expect_error(g + "--system 'be brief'", "--system needs --chat");
  expect_error(g + "--no-think", "--no-think needs --chat");
  expect_error(g + "--no-think --chat", "chat template of this model has no thinking switch (only Qwen3's has)");
}

TEST_F(Cli, ZeroNewTokensReportsNoPrefill) {
  const CliRun r = run("generate -m " + dir() + " -p 'The quick brown fox' -n 0 --device cpu");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("nothing generated (-n 0)"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("prefill:"), std::string::npos) << r.output;
}

// The seed a run printed ("seed N (pass --seed N ...)"), or "" when none was printed.
std::string printed_seed(const std::string& output) {
  std::smatch m;
  return std::regex_search(output, m, std::regex("seed ([0-9]+) \\(pass --seed")) ? m[1].str() : "";
}

// The generated text: what follows the "loaded ..." line up to the stats line.
std::string generated_text(const std::string& output) {
  const size_t begin = output.find(" tokens\n") + 8, end = output.find("prefill:");
  return end == std::string::npos || begin > end ? "" : output.substr(begin, end - begin);
}

TEST_F(Cli, SamplingWithoutASeedDrawsAFreshOneAndPrintsIt) {
  const std::string args = "generate -m " + dir() + " -p 'The quick brown fox' -n 16 --temperature 1.0 "
                           "--device cpu --ignore-eos";
  const CliRun a = run(args), b = run(args);
  ASSERT_EQ(a.status, 0) << a.output;
  const std::string seed_a = printed_seed(a.output), seed_b = printed_seed(b.output);
  ASSERT_FALSE(seed_a.empty()) << a.output;
  EXPECT_NE(seed_a, seed_b) << "two runs without --seed drew the same seed";
  const CliRun again = run(args + " --seed " + seed_a);
  EXPECT_EQ(printed_seed(again.output), "") << "a given seed is not announced again";
  EXPECT_EQ(generated_text(again.output), generated_text(a.output)) << "the printed seed does not repeat the run";
  EXPECT_EQ(printed_seed(run("generate -m " + dir() + " -p hi -n 2 --device cpu").output), "")
      << "greedy runs have no seed to print";
}

TEST_F(Cli, ARepeatedFlagTakesItsLastValue) {
  // scripts/quickstart.sh puts its defaults first; the user's arguments come after and win.
  const CliRun r = run("generate -m " + dir() + " -p hi -n 48 --device cpu --ignore-eos -n 3");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("decode: 3 tokens"), std::string::npos) << r.output;
}

TEST_F(Cli, ProgressBarsAreDrawnOnlyOnATerminal) {
  // A prompt of many chunks would show the prefill bar on a terminal; here stderr is a pipe.
  std::string prompt;
  for (int i = 0; i < 40; ++i) prompt += "the quick brown fox ";
  const CliRun r = run("generate -m " + dir() + " -p '" + prompt + "' -n 2 --prefill-chunk 4 --device cpu");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("prefill ["), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\r'), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("loading"), std::string::npos) << r.output;
}

TEST_F(Cli, HelpDocumentsPromptEscapes) {
  const CliRun r = run("generate --help");
  EXPECT_NE(r.output.find("$'...'"), std::string::npos) << r.output;
}

TEST_F(Cli, InspectFailsOnALayoutMismatch) {
  namespace fs = std::filesystem;
  const std::string bad = dir() + "_mismatch";
  fs::remove_all(bad);
  fs::copy(dir(), bad, fs::copy_options::recursive);
  nlohmann::json config = nlohmann::json::parse(std::ifstream(bad + "/config.json"));
  config["intermediate_size"] = config["intermediate_size"].get<int64_t>() + 64;
  std::ofstream(bad + "/config.json") << config.dump();
  const CliRun r = run("inspect " + bad);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("layout         MISMATCH"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("specula: error: " + bad + ": the checkpoint does not match config.json"),
            std::string::npos) << r.output;
  fs::remove_all(bad);
}

TEST_F(Cli, DeviceCudaWithoutAGpuSaysSo) {
#ifdef SPECULA_WITH_CUDA
  if (specula::cuda::cuda_device_available()) GTEST_SKIP() << "a GPU is present: --device cuda is valid here";
  expect_error("generate -m " + dir() + " -p hi --device cuda", "--device cuda: no usable CUDA GPU was found");
#else
  expect_error("generate -m " + dir() + " -p hi --device cuda", "--device cuda: this build of specula has no CUDA");
#endif
}

TEST_F(Cli, BenchWithoutAGpuMeasuresTheCpuPreset) {
#ifdef SPECULA_WITH_CUDA
  if (specula::cuda::cuda_device_available()) GTEST_SKIP() << "a GPU is present: bench measures the GPU preset";
#endif
  expect_error("bench --preset llama3-8b --device cpu", "--preset llama3-8b is a GPU benchmark");
  const CliRun r = run("bench --contexts 8 --prefill 8 --decode-steps 2 --repeats 1 --threads 2");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("measuring the cpu-100m preset"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("decode_tokens_per_s_ctx8"), std::string::npos) << r.output;
}

}  // namespace

namespace {

const std::string kEagleData = std::string(SPECULA_TEST_DATA) + "/eagle";

TEST(CliSpec, InspectRecognisesADraftHeadFolder) {
  const CliRun head = run("inspect " + kEagleData + "/head_llama_bias_safetensors --target " + kEagleData + "/target_llama3");
  EXPECT_EQ(head.status, 0) << head.output;
  EXPECT_NE(head.output.find("EAGLE-1/2 head"), std::string::npos) << head.output;
  EXPECT_NE(head.output.find("theta 10000 (EAGLE default)"), std::string::npos) << head.output;
  EXPECT_NE(head.output.find("(with fc.bias)"), std::string::npos) << head.output;
  EXPECT_NE(head.output.find("compatible"), std::string::npos) << head.output;
  const CliRun minicpm = run("inspect " + kEagleData + "/head_minicpm4");
  EXPECT_EQ(minicpm.status, 0) << minicpm.output;
  EXPECT_NE(minicpm.output.find("MiniCPM4 EAGLE head"), std::string::npos) << minicpm.output;
  const CliRun bad = run("inspect " + kEagleData + "/bad_missing_down_proj");
  EXPECT_EQ(bad.status, 1) << bad.output;
  EXPECT_NE(bad.output.find("layers.0.mlp.down_proj.weight"), std::string::npos) << bad.output;
  const CliRun wrong_pair = run("inspect " + kEagleData + "/head_llama_bin --target " + kEagleData + "/target_minicpm4");
  EXPECT_EQ(wrong_pair.status, 1) << wrong_pair.output;
  EXPECT_NE(wrong_pair.output.find("hidden_size"), std::string::npos) << wrong_pair.output;
}

TEST(CliSpec, TreeFlagsAreBoundedBeforeLoading) {
  const CliRun r = run("generate -m /nonexistent --draft /nonexistent -p hi --tree-topk 65");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--tree-topk"), std::string::npos) << r.output;
}

}  // namespace
