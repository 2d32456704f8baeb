// StreamDecoder: text is released only when final, partial UTF-8 is held back (byte-level tokens
// and byte-fallback runs), and for any id sequence the streamed concatenation equals decode().
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <random>

#include "specula/core/error.h"
#include "specula/text/tokenizer.h"

using nlohmann::json;
using specula::text::StreamDecoder;
using specula::text::Tokenizer;

namespace {

const std::string kReplacement = "\xEF\xBF\xBD";

Tokenizer load_deps(const std::string& name) {
  const std::string path = std::string(SPECULA_DEPS_DIR) + "/tokenizers/" + name + "/tokenizer.json";
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << path << " is missing: run scripts/fetch-deps.sh to download the tokenizer files";
    throw specula::Error("missing " + path);
  }
  return Tokenizer::from_file(path);
}

// GPT-2 byte alphabet, restated here from its definition so the test does not reuse the code
// under test: printable bytes map to themselves, the other 68 to U+0100.. in increasing order.
std::string byte_level_char(int byte) {
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const int code = printable ? b : 256 + extra++;
    if (b == byte) {
      std::string out;
      if (code < 0x80) out.push_back(static_cast<char>(code));
      else out += {static_cast<char>(0xC0 | (code >> 6)), static_cast<char>(0x80 | (code & 0x3F))};
      return out;
    }
  }
  return {};
}

std::vector<int32_t> byte_level_ids(const Tokenizer& tok, std::string_view bytes) {
  std::vector<int32_t> ids;
  for (char b : bytes) {
    const auto id = tok.token_to_id(byte_level_char(static_cast<unsigned char>(b)));
    EXPECT_TRUE(id.has_value());
    ids.push_back(id.value_or(0));
  }
  return ids;
}

std::string streamed(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip_special) {
  StreamDecoder stream(tokenizer, skip_special);
  std::string text;
  for (int32_t id : ids) text += stream.push(id);
  return text + stream.flush();
}

}  // namespace

TEST(TokenizerStream, ByteLevelHoldsBackPartialUtf8) {
  const Tokenizer tok = load_deps("llama3");
  // "😀" is F0 9F 98 80: one token per byte, as a model may emit them.
  const std::vector<int32_t> ids = byte_level_ids(tok, "\xF0\x9F\x98\x80");
  StreamDecoder stream(tok, false);
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.push(ids[2]), "");
  EXPECT_EQ(stream.push(ids[3]), "😀");
  EXPECT_EQ(stream.push(tok.token_to_id("!").value()), "!");
  EXPECT_EQ(stream.flush(), "");
  EXPECT_EQ(tok.decode(ids), "😀");

  // A sequence broken by another character becomes U+FFFD right away, as in the whole decode.
  std::vector<int32_t> broken = byte_level_ids(tok, "\xF0\x9F");
  broken.push_back(tok.token_to_id("A").value());
  StreamDecoder stream2(tok, false);
  EXPECT_EQ(stream2.push(broken[0]), "");
  EXPECT_EQ(stream2.push(broken[1]), "");
  EXPECT_EQ(stream2.push(broken[2]), kReplacement + "A");
  EXPECT_EQ(tok.decode(broken), kReplacement + "A");

  // An incomplete sequence at the end is one U+FFFD, released by flush.
  StreamDecoder stream3(tok, false);
  const std::vector<int32_t> tail = byte_level_ids(tok, "\xE2\x82");
  EXPECT_EQ(stream3.push(tail[0]), "");
  EXPECT_EQ(stream3.push(tail[1]), "");
  EXPECT_EQ(stream3.flush(), kReplacement);
  EXPECT_EQ(tok.decode(tail), kReplacement);
}

TEST(TokenizerStream, ByteFallbackRunIsReleasedWhenClosed) {
  const Tokenizer tok = load_deps("llama2");
  // The llama2 vocab has "😀" itself but not "🦀", which therefore becomes four <0xXX> tokens.
  const std::vector<int32_t> ids = tok.encode("Hi 🦀 there", false);
  size_t first_byte = ids.size();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (tok.id_to_token(ids[i]).rfind("<0x", 0) == 0) {
      first_byte = i;
      break;
    }
  }
  ASSERT_LT(first_byte + 4, ids.size()) << "expected the crab as four byte-fallback tokens";
  StreamDecoder stream(tok, false);
  std::string text;
  for (size_t i = 0; i < first_byte; ++i) text += stream.push(ids[i]);
  EXPECT_EQ(text, "Hi ");
  for (size_t i = first_byte; i < first_byte + 4; ++i) {
    EXPECT_EQ(stream.push(ids[i]), "") << "byte token " << i - first_byte << " released early";
  }
  const std::string after = stream.push(ids[first_byte + 4]);
  EXPECT_EQ(after.rfind("🦀", 0), 0u) << after;
  for (size_t i = first_byte + 5; i < ids.size(); ++i) text += stream.push(ids[i]);
  text = "Hi " + after + text.substr(3) + stream.flush();
  EXPECT_EQ(text, "Hi 🦀 there");
  EXPECT_EQ(tok.decode(ids), "Hi 🦀 there");
}

TEST(TokenizerStream, StripAppliesOncePerSequenceAndFlushRestarts) {
  const Tokenizer tok = load_deps("llama2");
  const std::vector<int32_t> ids = tok.encode("Hello world", false);
  StreamDecoder stream(tok, false);
  std::string first;
  for (int32_t id : ids) first += stream.push(id);
  first += stream.flush();
  EXPECT_EQ(first, "Hello world");  // the leading "▁" of the first token is stripped
  std::string second;
  for (int32_t id : ids) second += stream.push(id);
  second += stream.flush();
  EXPECT_EQ(second, "Hello world");
}

TEST(TokenizerStream, ReplaceAndStripHoldBackAcrossTokens) {
  // Fuse first, so Replace and Strip act on the whole text and see patterns across tokens.
  const json j = {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {" ", 3}}}, {"merges", json::array()}}},
                  {"decoder",
                   {{"type", "Sequence"},
                    {"decoders", json::array({{{"type", "Fuse"}},
                                              {{"type", "Replace"}, {"pattern", {{"String", "ab"}}}, {"content", "X"}},
                                              {{"type", "Strip"}, {"content", " "}, {"start", 0}, {"stop", 1}}})}}}};
  const Tokenizer tok = Tokenizer::from_json_string(j.dump(), "fixture");
  StreamDecoder stream(tok, false);
  EXPECT_EQ(stream.push(0), "");  // "a" may start "ab"
  EXPECT_EQ(stream.push(1), "X");
  EXPECT_EQ(stream.push(0), "");
  EXPECT_EQ(stream.push(2), "ac");
  EXPECT_EQ(stream.push(3), "");  // a trailing space may be stripped
  EXPECT_EQ(stream.push(3), " ");
  EXPECT_EQ(stream.flush(), "");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{0, 1, 0, 2, 3, 3}), "Xac ");
}

TEST(TokenizerStream, RegexReplaceWaitsForTheWholeToken) {
  const json j = {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}}}, {"merges", json::array()}}},
                  {"decoder",
                   {{"type", "Sequence"},
                    {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"Regex", "a+"}}}, {"content", "A"}},
                                              {{"type", "Fuse"}},
                                              {{"type", "Replace"}, {"pattern", {{"Regex", "(?:Ab)+"}}}, {"content", "X"}}})}}}};
  const Tokenizer tok = Tokenizer::from_json_string(j.dump(), "fixture");
  const std::vector<int32_t> ids = {0, 1, 0, 1, 1, 0};
  StreamDecoder stream(tok, false);
  for (int32_t id : ids) EXPECT_EQ(stream.push(id), "");  // the fused token is open until flush
  EXPECT_EQ(stream.flush(), "XbA");
  EXPECT_EQ(tok.decode(ids), "XbA");
}

TEST(TokenizerStream, RandomIdSequencesMatchDecode) {
  std::mt19937 rng(20261125);
  for (const std::string name : {"llama3", "qwen3", "llama2"}) {
    const Tokenizer tok = load_deps(name);
    // Byte tokens and specials are over-sampled: they exercise the hold-back logic.
    std::vector<int32_t> interesting;
    for (int b = 0; b < 256; ++b) {
      char byte_token[8];
      std::snprintf(byte_token, sizeof(byte_token), "<0x%02X>", b);
      if (auto id = tok.token_to_id(byte_token)) interesting.push_back(*id);
      if (auto id = tok.token_to_id(byte_level_char(b)); id && name != "llama2") interesting.push_back(*id);
    }
    for (int32_t id = 0; id < tok.vocab_size(); ++id) {
      if (tok.is_special(id) && interesting.size() < 2000) interesting.push_back(id);
    }
    std::uniform_int_distribution<int32_t> any_id(0, tok.vocab_size() + 5);
    std::uniform_int_distribution<size_t> pick(0, interesting.size() - 1);
    std::uniform_int_distribution<int> length(0, 24);
    for (int round = 0; round < 1500; ++round) {
      std::vector<int32_t> ids(length(rng));
      for (int32_t& id : ids) id = (rng() % 3 == 0) ? any_id(rng) : interesting[pick(rng)];
      for (bool skip : {false, true}) {
        ASSERT_EQ(streamed(tok, ids, skip), tok.decode(ids, skip)) << name << " round " << round << " skip " << skip;
      }
    }
  }
}

// token_bytes (per-token logprobs): byte-level tokens give their raw bytes, so the pieces of a
// multi-byte character are its bytes (decode() of one such token alone gives U+FFFD) and every
// encoding's pieces concatenate to the text; <0xXX> tokens give their byte.
TEST(TokenizerTokenBytes, RawBytesOfByteLevelAndByteFallbackTokens) {
  const Tokenizer llama3 = load_deps("llama3");
  const std::string text = "naïve 🦀 日本語 (text)";
  std::string joined;
  for (int32_t id : llama3.encode(text, false)) joined += llama3.token_bytes(id);
  EXPECT_EQ(joined, text);
  const std::vector<int32_t> crab = byte_level_ids(llama3, "\xF0\x9F\xA6\x80");
  EXPECT_EQ(llama3.token_bytes(crab[0]), "\xF0");
  EXPECT_EQ(llama3.decode(std::vector<int32_t>{crab[0]}), kReplacement);
  EXPECT_EQ(llama3.token_bytes(-1), "");

  const Tokenizer llama2 = load_deps("llama2");
  const auto byte_token = llama2.token_to_id("<0xF0>");
  ASSERT_TRUE(byte_token.has_value());
  EXPECT_EQ(llama2.token_bytes(*byte_token), "\xF0");
  const auto word = llama2.token_to_id("\xE2\x96\x81there");  // "▁there"
  ASSERT_TRUE(word.has_value());
  EXPECT_EQ(llama2.token_bytes(*word), llama2.decode(std::vector<int32_t>{*word}));
}
