// Tokenizer against Hugging Face `tokenizers` 0.23.2 goldens (tools/make_tokenizer_goldens.py):
// for every case, encode with and without special tokens, decode with and without skipping special
// tokens, and stream-decode token by token, all exactly equal to HF's output.
// The tokenizer.json files come from scripts/fetch-deps.sh; their absence is a failure.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "specula/core/mapped_file.h"
#include "specula/text/tokenizer.h"

using specula::text::StreamDecoder;
using specula::text::Tokenizer;

namespace {

std::string deps_tokenizer_path(const std::string& name) {
  return std::string(SPECULA_DEPS_DIR) + "/tokenizers/" + name + "/tokenizer.json";
}

std::string ids_to_string(const std::vector<int32_t>& ids) {
  std::ostringstream out;
  for (size_t i = 0; i < ids.size(); ++i) out << (i ? "," : "") << ids[i];
  return out.str();
}

std::string streamed(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip_special) {
  StreamDecoder stream(tokenizer, skip_special);
  std::string text;
  for (int32_t id : ids) text += stream.push(id);
  return text + stream.flush();
}

void check_golden(const std::string& name) {
  const std::string path = deps_tokenizer_path(name);
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " is missing: run scripts/fetch-deps.sh to download the tokenizer files";
  const Tokenizer tokenizer = Tokenizer::from_file(path);
  const auto golden = nlohmann::json::parse(
      specula::read_text_file(std::string(SPECULA_TEST_DATA) + "/tokenizers/golden_" + name + ".json"));
  ASSERT_EQ(golden["tokenizers_version"], "0.23.2");
  const auto& cases = golden["cases"];
  ASSERT_GT(cases.size(), 100u);
  size_t failures = 0;
  for (size_t i = 0; i < cases.size() && failures < 10; ++i) {
    const auto& c = cases[i];
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const auto ids_plain = c["ids_plain"].get<std::vector<int32_t>>();
    const std::string decoded = c["decoded"];
    const std::string decoded_skip = c["decoded_skip"];
    const auto got_ids = tokenizer.encode(text, true);
    const auto got_plain = tokenizer.encode(text, false);
    const std::string got_decoded = tokenizer.decode(ids_plain, false);
    const std::string got_skip = tokenizer.decode(ids_plain, true);
    const std::string got_stream = streamed(tokenizer, ids_plain, false);
    const std::string got_stream_skip = streamed(tokenizer, ids_plain, true);
    const bool ok = got_ids == ids && got_plain == ids_plain && got_decoded == decoded && got_skip == decoded_skip &&
                    got_stream == decoded && got_stream_skip == decoded_skip;
    if (!ok) ++failures;
    EXPECT_EQ(ids_to_string(got_ids), ids_to_string(ids)) << name << " case " << i << " text: " << text;
    EXPECT_EQ(ids_to_string(got_plain), ids_to_string(ids_plain)) << name << " case " << i << " text: " << text;
    EXPECT_EQ(got_decoded, decoded) << name << " case " << i;
    EXPECT_EQ(got_skip, decoded_skip) << name << " case " << i;
    EXPECT_EQ(got_stream, decoded) << name << " case " << i << " (stream)";
    EXPECT_EQ(got_stream_skip, decoded_skip) << name << " case " << i << " (stream, skip special)";
  }
}

}  // namespace

TEST(TokenizerGolden, Llama3) { check_golden("llama3"); }
TEST(TokenizerGolden, Qwen3) { check_golden("qwen3"); }
TEST(TokenizerGolden, Llama2SentencePieceBpe) { check_golden("llama2"); }
