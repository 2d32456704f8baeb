// Tokenizer behaviour beyond the HF goldens: hand-written tokenizer.json fixtures for the
// SentencePiece-BPE layouts (legacy per-segment Prepend/Replace vs Metaspace prepend_scheme
// "first"), both merge serializations and ignore_merges, added-token options, parse_special,
// malformed files (each must fail with an error naming the component and the file), hostile files
// (deep nesting, huge ids, duplicate keys, huge strings, FIFOs and devices), lookups on the real
// Llama-3/Qwen3 files, thread safety, and load/encode speed.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/text/tokenizer.h"

using nlohmann::json;
using specula::text::StreamDecoder;
using specula::text::Tokenizer;

namespace {

const std::string kMeta = "\xE2\x96\x81";  // U+2581, SentencePiece's space

std::string deps_tokenizer_path(const std::string& name) {
  return std::string(SPECULA_DEPS_DIR) + "/tokenizers/" + name + "/tokenizer.json";
}

Tokenizer load_deps(const std::string& name) {
  const std::string path = deps_tokenizer_path(name);
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << path << " is missing: run scripts/fetch-deps.sh to download the tokenizer files";
    throw specula::Error("missing " + path);
  }
  return Tokenizer::from_file(path);
}

// A small SentencePiece-style BPE: <unk>/<s>/</s>, 256 byte tokens, a few merges over "user"/"hi",
// and two ChatML markers as special added tokens.
json sentencepiece_fixture() {
  json vocab = json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  int next = 259;
  for (const std::string& t : {kMeta, std::string("u"), std::string("s"), std::string("e"), std::string("r"),
                               std::string("h"), std::string("i"), kMeta + "u", std::string("se"), kMeta + "use",
                               kMeta + "user", std::string("use"), std::string("user"), std::string("hi"), kMeta + "hi"}) {
    vocab[t] = next++;
  }
  const json merges = json::array({kMeta + " u", "s e", kMeta + "u se", kMeta + "use r", "u se", "use r", "h i", kMeta + " hi"});
  json added = json::array();
  auto add = [&added](int id, const std::string& content) {
    added.push_back({{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  };
  add(0, "<unk>");
  add(1, "<s>");
  add(2, "</s>");
  add(274, "<|im_start|>");
  add(275, "<|im_end|>");
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array()},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", kMeta}}}, {"content", " "}},
                                  {{"type", "ByteFallback"}},
                                  {{"type", "Fuse"}},
                                  {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", true}, {"byte_fallback", true}, {"vocab", vocab}, {"merges", merges}}},
  };
}

// Legacy LlamaTokenizerFast: Prepend("▁") + Replace(" ", "▁") run on every segment between added tokens.
json legacy_layout() {
  json j = sentencepiece_fixture();
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", kMeta}},
                                                  {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMeta}}})}};
  return j;
}

// Newer layout: no normalizer, Metaspace pre-tokenizer that prepends only at the start of the input.
json metaspace_first_layout() {
  json j = sentencepiece_fixture();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", "first"}, {"split", false}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", "first"}, {"split", false}},
                                            {{"type", "ByteFallback"}},
                                            {{"type", "Fuse"}}})}};
  return j;
}

Tokenizer from(const json& j, const std::string& name = "fixture.json") { return Tokenizer::from_json_string(j.dump(), name); }

std::string streamed(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, bool skip_special = false) {
  StreamDecoder stream(tokenizer, skip_special);
  std::string text;
  for (int32_t id : ids) text += stream.push(id);
  return text + stream.flush();
}

// Expects loading `j` to fail with a message containing every one of `parts`.
void expect_load_error(const json& j, std::initializer_list<std::string> parts) {
  try {
    from(j, "broken/tokenizer.json");
    ADD_FAILURE() << "loading succeeded; expected an error mentioning " << *parts.begin();
  } catch (const specula::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("broken/tokenizer.json"), std::string::npos) << message;
    for (const std::string& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
  }
}

}  // namespace

// --- SentencePiece-style BPE layouts --------------------------------------------------------

TEST(TokenizerSentencePiece, LegacyPrependsSpaceToEverySegment) {
  const Tokenizer tok = from(legacy_layout());
  // "user\n" after <|im_start|> is its own segment and gets its own "▁" (legacy behaviour).
  EXPECT_EQ(tok.encode("<|im_start|>user\n", false), (std::vector<int32_t>{274, 269, 3 + '\n'}));
  EXPECT_EQ(tok.encode("user hi", true), (std::vector<int32_t>{1, 269, 273}));
  EXPECT_EQ(tok.encode("", true), (std::vector<int32_t>{1}));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{269, 273}), "user hi");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{1, 269, 273}), "<s> user hi");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{1, 269, 273}, true), "user hi");
}

TEST(TokenizerSentencePiece, MetaspaceFirstPrependsOnlyAtInputStart) {
  const Tokenizer tok = from(metaspace_first_layout());
  EXPECT_EQ(tok.encode("<|im_start|>user\n", false), (std::vector<int32_t>{274, 271, 3 + '\n'}));
  EXPECT_EQ(tok.encode("user hi", false), (std::vector<int32_t>{269, 273}));
  EXPECT_EQ(tok.encode("hi<|im_end|>hi", false), (std::vector<int32_t>{273, 275, 272}));
  // Metaspace decoder: the first token's "▁" is dropped, later ones become spaces.
  EXPECT_EQ(tok.decode(std::vector<int32_t>{269, 273}), "user hi");
  EXPECT_EQ(streamed(tok, {269, 273}), "user hi");
  EXPECT_EQ(tok.decode(std::vector<int32_t>{274, 271, 3 + '\n'}), "<|im_start|>user\n");
}

TEST(TokenizerSentencePiece, ByteFallbackAndFusedUnknown) {
  json j = legacy_layout();
  const Tokenizer tok = from(j);
  // "😀" is not in the vocab: its four UTF-8 bytes become <0xXX> tokens.
  EXPECT_EQ(tok.encode("😀", false), (std::vector<int32_t>{259, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{259, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}), "😀");
  // A run that is not valid UTF-8 becomes one U+FFFD per byte (not lossy decoding).
  EXPECT_EQ(tok.decode(std::vector<int32_t>{3 + 0xF0, 3 + 0x9F, 269}), "\xEF\xBF\xBD\xEF\xBF\xBD user");
  // Without byte fallback, consecutive unknown characters fuse into one <unk>.
  j["model"]["byte_fallback"] = false;
  const Tokenizer no_fallback = from(j);
  EXPECT_EQ(no_fallback.encode("😀😀 hi", false), (std::vector<int32_t>{259, 0, 273}));
  j["model"]["fuse_unk"] = false;
  EXPECT_EQ(from(j).encode("😀😀", false), (std::vector<int32_t>{259, 0, 0}));
}

// --- merges serializations and ignore_merges -------------------------------------------------

TEST(TokenizerBpe, BothMergeSerializationsAgree) {
  json strings = legacy_layout();
  json pairs = legacy_layout();
  pairs["model"]["merges"] = json::array();
  for (const auto& m : strings["model"]["merges"]) {
    const std::string line = m;
    const size_t space = line.find(' ');
    pairs["model"]["merges"].push_back({line.substr(0, space), line.substr(space + 1)});
  }
  const Tokenizer a = from(strings), b = from(pairs);
  for (const char* text : {"user hi", "users hi use us", "hi<|im_start|>user"}) EXPECT_EQ(a.encode(text), b.encode(text)) << text;
}

TEST(TokenizerBpe, IgnoreMergesTakesWholeVocabWords) {
  // Vocab holds "abc", but the merges build it as "a"+"bc" only via "b c" then "a bc" with the
  // first merge "a b" winning: without ignore_merges "abc" ends as ["ab", "c"].
  json j = {{"model",
             {{"type", "BPE"},
              {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}}},
              {"merges", json::array({json::array({"a", "b"}), json::array({"b", "c"}), json::array({"a", "bc"})})}}}};
  EXPECT_EQ(from(j).encode("abc"), (std::vector<int32_t>{3, 2}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(from(j).encode("abc"), (std::vector<int32_t>{5}));
  // No decoder: HF joins tokens with spaces.
  EXPECT_EQ(from(j).decode(std::vector<int32_t>{3, 2}), "ab c");
  EXPECT_EQ(streamed(from(j), {3, 2}), "ab c");
}

TEST(TokenizerBpe, ByteLevelWithGpt2RegexAndPrefixSpace) {
  // ByteLevel alone with use_regex: HF splits with the GPT-2 regex after adding the prefix space.
  const std::string g = "\xC4\xA0";  // "Ġ", the byte-level form of a space
  const json j = {{"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
                  {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
                  {"model",
                   {{"type", "BPE"},
                    {"ignore_merges", true},
                    {"vocab", {{g + "Hello", 0}, {g + "world", 1}, {g, 2}, {"!", 3}, {g + "12", 4}}},
                    {"merges", json::array()}}}};
  const Tokenizer tok = from(j);
  EXPECT_EQ(tok.encode("Hello world!"), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(tok.encode(" world 12"), (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{0, 1, 3}), " Hello world!");  // the decoder keeps the prefix space
}

TEST(TokenizerBpe, Llama31SequencePostProcessorAddsBos) {
  // Llama-3.1 files wrap the BOS template in Sequence[ByteLevel, TemplateProcessing] (section 9).
  const std::string path = deps_tokenizer_path("llama3");
  ASSERT_TRUE(std::filesystem::exists(path)) << path << " is missing: run scripts/fetch-deps.sh";
  json j = json::parse(specula::read_text_file(path));
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       json::array({{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
                    {{"type", "TemplateProcessing"},
                     {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                                             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                     {"pair", json::array()},
                     {"special_tokens",
                      {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {128000}}, {"tokens", {"<|begin_of_text|>"}}}}}}}})}};
  const Tokenizer tok = Tokenizer::from_json_string(j.dump(), "llama31-style tokenizer.json");
  EXPECT_EQ(tok.encode("Hello world", true), (std::vector<int32_t>{128000, 9906, 1917}));
  EXPECT_EQ(tok.encode("Hello world", false), (std::vector<int32_t>{9906, 1917}));
  EXPECT_EQ(tok.encode("", true), (std::vector<int32_t>{128000}));
}

TEST(TokenizerSentencePiece, MetaspaceDecoderPrependSchemes) {
  json j = metaspace_first_layout();
  j["decoder"]["decoders"][0]["prepend_scheme"] = "never";
  EXPECT_EQ(from(j).decode(std::vector<int32_t>{269, 273}), " user hi");
  EXPECT_EQ(streamed(from(j), {269, 273}), " user hi");
  j["decoder"]["decoders"][0]["prepend_scheme"] = "always";
  EXPECT_EQ(from(j).decode(std::vector<int32_t>{269, 273}), "user hi");
  // Legacy form: add_prefix_space instead of prepend_scheme.
  j["decoder"]["decoders"][0].erase("prepend_scheme");
  j["decoder"]["decoders"][0]["add_prefix_space"] = false;
  EXPECT_EQ(from(j).decode(std::vector<int32_t>{269, 273}), " user hi");
  // Pre-tokenizer "always" also prepends after an added token.
  j = metaspace_first_layout();
  j["pre_tokenizer"]["prepend_scheme"] = "always";
  EXPECT_EQ(from(j).encode("<|im_start|>user\n", false), (std::vector<int32_t>{274, 269, 3 + '\n'}));
}

// --- added tokens ------------------------------------------------------------------------------

TEST(TokenizerAddedTokens, LeftmostLongestAndStripOptions) {
  json j = legacy_layout();
  auto add = [&j](int id, const std::string& content, bool lstrip, bool rstrip, bool single_word, bool special) {
    j["added_tokens"].push_back({{"id", id}, {"content", content}, {"single_word", single_word}, {"lstrip", lstrip},
                                 {"rstrip", rstrip}, {"normalized", false}, {"special", special}});
  };
  add(280, "<|im", false, false, false, false);  // a prefix of <|im_start|>: the longer match wins
  add(281, "[M]", true, true, false, false);
  add(282, "hix", false, false, true, false);
  const Tokenizer tok = from(j);
  EXPECT_EQ(tok.encode("<|im_start|><|im", false), (std::vector<int32_t>{274, 280}));
  // lstrip/rstrip absorb the surrounding whitespace into the token.
  EXPECT_EQ(tok.encode("hi  [M]  hi", false), (std::vector<int32_t>{273, 281, 273}));
  // single_word: "hix" inside "uhixu" is not a match; standing alone it is.
  EXPECT_EQ(tok.encode("hix", false), (std::vector<int32_t>{282}));
  const auto inner = tok.encode("uhixu", false);
  EXPECT_EQ(std::count(inner.begin(), inner.end(), 282), 0);
}

TEST(TokenizerAddedTokens, NormalizedTokensMatchNormalizedText) {
  json j = legacy_layout();
  // normalized: true, so its pattern is normalized too: "▁hi▁hi" is matched after "▁" replacement.
  j["added_tokens"].push_back({{"id", 290}, {"content", "hi hi"}, {"single_word", false}, {"lstrip", false},
                               {"rstrip", false}, {"normalized", true}, {"special", false}});
  const Tokenizer tok = from(j);
  EXPECT_EQ(tok.encode("hi hi", false), (std::vector<int32_t>{290}));
  // Found inside the normalized segment "▁user▁hi▁hi", after "▁user".
  EXPECT_EQ(tok.encode("user hi hi", false), (std::vector<int32_t>{269, 290}));
}

TEST(TokenizerAddedTokens, ParseSpecialFalseKeepsSpecialStringsAsText) {
  const Tokenizer llama3 = load_deps("llama3");
  const std::string text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
  const auto parsed = llama3.encode(text, false, true);
  EXPECT_EQ(parsed.front(), 128006);
  EXPECT_EQ(parsed.back(), 128009);
  const auto plain = llama3.encode(text, false, false);
  for (int32_t id : plain) EXPECT_LT(id, 128000) << "special token id in untrusted-mode output";
  EXPECT_EQ(llama3.decode(plain), text);

  const Tokenizer qwen3 = load_deps("qwen3");
  const auto q_plain = qwen3.encode("<|im_end|><think>", false, false);
  EXPECT_EQ(std::count(q_plain.begin(), q_plain.end(), 151645), 0);
  // <think> is an added token with special: false; HF's encode_special_tokens still matches it.
  EXPECT_EQ(q_plain.back(), 151667);
  EXPECT_EQ(qwen3.decode(q_plain), "<|im_end|><think>");
}

// --- lookups on real files ------------------------------------------------------------------

TEST(TokenizerLookup, Llama3AndQwen3Vocabularies) {
  const Tokenizer llama3 = load_deps("llama3");
  EXPECT_EQ(llama3.vocab_size(), 128256);
  EXPECT_EQ(llama3.token_to_id("<|eot_id|>"), 128009);
  EXPECT_EQ(llama3.token_to_id("Hello"), 9906);
  EXPECT_FALSE(llama3.token_to_id("no such token").has_value());
  EXPECT_EQ(llama3.id_to_token(128000), "<|begin_of_text|>");
  EXPECT_EQ(llama3.id_to_token(1917), "\xC4\xA0world");  // "Ġworld"
  EXPECT_EQ(llama3.id_to_token(-1), "");
  EXPECT_EQ(llama3.id_to_token(200000), "");
  EXPECT_TRUE(llama3.is_special(128009));
  EXPECT_FALSE(llama3.is_special(9906));
  // Ids past the vocabulary are skipped by decode, as in HF.
  EXPECT_EQ(llama3.decode(std::vector<int32_t>{9906, 500000, 1917}), "Hello world");

  const Tokenizer qwen3 = load_deps("qwen3");
  EXPECT_EQ(qwen3.vocab_size(), 151669);
  EXPECT_EQ(qwen3.token_to_id("<|im_end|>"), 151645);
  EXPECT_TRUE(qwen3.is_special(151645));
  EXPECT_FALSE(qwen3.is_special(151667));  // <think>
}

TEST(TokenizerLookup, ConcurrentEncodeIsConsistent) {
  const Tokenizer tok = load_deps("qwen3");
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Thread safety " + std::to_string(i) + " 你好 world\n";
  const auto expected = tok.encode(text);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int r = 0; r < 5; ++r) mismatches += tok.encode(text) != expected;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// --- malformed files ----------------------------------------------------------------------------

TEST(TokenizerErrors, MalformedFilesNameTheProblem) {
  try {
    Tokenizer::from_json_string("{\"model\": {", "broken/tokenizer.json");
    ADD_FAILURE() << "bad JSON accepted";
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("broken/tokenizer.json"), std::string::npos) << e.what();
  }

  json j = legacy_layout();
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_load_error(j, {"normalizer", "Lowercase", "not supported"});

  j = legacy_layout();
  j["model"]["type"] = "WordPiece";
  expect_load_error(j, {"model", "WordPiece", "not supported"});

  j = legacy_layout();
  j["model"]["merges"].push_back("zz q");
  expect_load_error(j, {"merges[8]", "'zz'", "not in the vocab"});

  j = legacy_layout();
  j["model"]["merges"].push_back("u s e");
  expect_load_error(j, {"merges[8]", "one space"});

  j = legacy_layout();
  j["model"]["merges"].push_back(json::array({"u", 3}));
  expect_load_error(j, {"merges[8]", "pair"});

  j = legacy_layout();
  j["model"]["vocab"]["zz"] = "seven";
  expect_load_error(j, {"vocab['zz']", "integer"});

  j = legacy_layout();
  j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}};
  expect_load_error(j, {"decoder", "WordPiece", "not supported"});

  j = legacy_layout();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"mystery", 1}};
  expect_load_error(j, {"pre_tokenizer (ByteLevel)", "unknown field 'mystery'"});

  j = legacy_layout();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "[a&&b]"}}}, {"behavior", "Isolated"}, {"invert", false}};
  expect_load_error(j, {"pre_tokenizer (Split)", "&&"});

  j = legacy_layout();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}};
  expect_load_error(j, {"pre_tokenizer (Split)", "does not compile"});

  j = legacy_layout();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "x"}}}, {"behavior", "Sideways"}, {"invert", false}};
  expect_load_error(j, {"behavior", "Sideways"});

  j = legacy_layout();
  j["post_processor"] = {{"type", "RobertaProcessing"}};
  expect_load_error(j, {"post_processor", "RobertaProcessing", "not supported"});

  j = legacy_layout();
  j["model"]["dropout"] = 0.1;
  expect_load_error(j, {"dropout"});

  j = legacy_layout();
  j["added_tokens"][0]["lstrip"] = "yes";
  expect_load_error(j, {"added_tokens[0]", "lstrip", "boolean"});

  j = legacy_layout();
  j["surprise"] = true;
  expect_load_error(j, {"unknown field 'surprise'"});

  EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), specula::Error);
}

TEST(TokenizerErrors, TemplateIdsMustBeTokens) {
  // Caught by fuzz_tokenizer_components' id check: a TemplateProcessing id that no token has was inserted by
  // encode (beyond vocab_size(), or into a gap of the vocabulary), so the model received an id
  // that decode then silently dropped. Refused at load, naming the special_tokens entry.
  json j = legacy_layout();
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {999999};
  expect_load_error(j, {"post_processor (TemplateProcessing)", "special_tokens['<s>']", "token id 999999",
                        "not a token of this tokenizer"});
  // Inside a Sequence too, and for an id below the largest one that names no token.
  j = legacy_layout();
  j["added_tokens"].push_back({{"id", 400}, {"content", "<gap>"}, {"single_word", false}, {"lstrip", false},
                               {"rstrip", false}, {"normalized", false}, {"special", true}});
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {1, 300};
  j["post_processor"] = {{"type", "Sequence"}, {"processors", json::array({j["post_processor"]})}};
  expect_load_error(j, {"special_tokens['<s>']", "token id 300", "not a token of this tokenizer"});
  // An added token (not in model.vocab) is a valid template id; ids only in unused entries are not checked.
  j = legacy_layout();
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {274};
  j["post_processor"]["special_tokens"]["unused"] = {{"id", "unused"}, {"ids", {999999}}, {"tokens", {"unused"}}};
  EXPECT_EQ(from(j).encode("hi", true), (std::vector<int32_t>{274, 273}));
}

TEST(TokenizerErrors, InvalidUtf8InputIsRejected) {
  const Tokenizer tok = from(legacy_layout());
  try {
    tok.encode(std::string("ok\xC3(", 4));
    ADD_FAILURE() << "invalid UTF-8 accepted";
  } catch (const specula::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8 at byte 2"), std::string::npos) << e.what();
  }
}

// --- hostile files -----------------------------------------------------------------------------

namespace {

// Far deeper than any stack survives recursing through.
constexpr size_t kHostileDepth = 100000;
// Error messages quote excerpts; this is generous for the fixed text plus a short excerpt.
constexpr size_t kMaxMessageChars = 300;

// `text` with its only occurrence of `from` replaced by `to`.
std::string splice(std::string text, const std::string& from, const std::string& to) {
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << "fixture lacks " << from;
  EXPECT_EQ(text.find(from, at + 1), std::string::npos) << "fixture has " << from << " twice";
  return at == std::string::npos ? text : text.replace(at, from.size(), to);
}

// The message of the specula::Error that loading `text` throws; any other outcome fails the test.
std::string load_error(const std::string& text) {
  try {
    Tokenizer::from_json_string(text, "broken/tokenizer.json");
    ADD_FAILURE() << "loading succeeded";
  } catch (const specula::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-specula exception: " << e.what();
  }
  return "";
}

bool contains(const std::string& message, const std::string& part) { return message.find(part) != std::string::npos; }

// `levels` Sequence components around `leaf`, as text: building it as a json value would need
// the recursive dump() this file is guarding against.
std::string nested_sequence(const std::string& list_key, const std::string& leaf, size_t levels) {
  std::string text;
  for (size_t i = 0; i < levels; ++i) text += "{\"type\":\"Sequence\",\"" + list_key + "\":[";
  text += leaf;
  for (size_t i = 0; i < levels; ++i) text += "]}";
  return text;
}

struct Component {
  const char* field;     // top-level key
  const char* list_key;  // a Sequence's list
  const char* leaf;      // one simple component of that kind
};
const Component kComponents[] = {
    {"normalizer", "normalizers", R"({"type":"NFC"})"},
    {"pre_tokenizer", "pretokenizers", R"({"type":"ByteLevel","add_prefix_space":false})"},
    {"post_processor", "processors", R"({"type":"ByteLevel"})"},
    {"decoder", "decoders", R"({"type":"Fuse"})"},
};

long peak_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

}  // namespace

TEST(TokenizerHostile, DeepNestingIsRefusedBeforeParsing) {
  const std::string base = sentencepiece_fixture().dump();
  for (const Component& c : kComponents) {
    const std::string field = std::string("\"") + c.field + "\":";
    const std::string current = field + sentencepiece_fixture()[c.field].dump();
    const std::string message = load_error(splice(base, current, field + nested_sequence(c.list_key, c.leaf, kHostileDepth)));
    EXPECT_TRUE(contains(message, "broken/tokenizer.json") && contains(message, "nesting depth limit of 128")) << message;
    EXPECT_LT(message.size(), kMaxMessageChars) << message;
  }
  // Plain deep arrays, in a field the tokenizer ignores and inside the streamed vocabulary.
  const std::string deep = std::string(kHostileDepth, '[') + std::string(kHostileDepth, ']');
  for (const std::string& text : {splice(base, "\"padding\":null", "\"padding\":" + deep),
                                  splice(base, "\"vocab\":{", "\"vocab\":{\"deep\":" + deep + ",")}) {
    const std::string message = load_error(text);
    EXPECT_TRUE(contains(message, "broken/tokenizer.json") && contains(message, "nesting depth limit of 128")) << message;
  }
}

TEST(TokenizerHostile, SequenceNestingIsBounded) {
  const std::string base = sentencepiece_fixture().dump();
  for (const Component& c : kComponents) {
    const std::string current = std::string("\"") + c.field + "\":" + sentencepiece_fixture()[c.field].dump();
    const std::string field = std::string("\"") + c.field + "\":";
    // Eight Sequences around a component load; a ninth level is refused by the builders (the
    // JSON itself, 2 levels per Sequence, is well within the depth limit).
    EXPECT_NO_THROW(Tokenizer::from_json_string(splice(base, current, field + nested_sequence(c.list_key, c.leaf, 8)),
                                                "nested/tokenizer.json"))
        << c.field;
    const std::string message = load_error(splice(base, current, field + nested_sequence(c.list_key, c.leaf, 9)));
    EXPECT_TRUE(contains(message, "broken/tokenizer.json") && contains(message, c.field) &&
                contains(message, "nest more than 8 levels"))
        << message;
  }
}

TEST(TokenizerHostile, HugeIdsAreRefusedWithoutAllocating) {
  const long rss_before = peak_rss_kib();
  const auto start = std::chrono::steady_clock::now();
  json j = sentencepiece_fixture();
  j["model"]["vocab"]["zz"] = 300000000;
  std::string message = load_error(j.dump());
  EXPECT_TRUE(contains(message, "vocab['zz']: token id 300000000 is out of range")) << message;

  j = sentencepiece_fixture();
  j["added_tokens"][4]["id"] = 300000000;
  message = load_error(j.dump());
  EXPECT_TRUE(contains(message, "added_tokens[4]: token id 300000000 is out of range")) << message;

  // The largest id an int32 allows was accepted before and sized the tables by it.
  j = sentencepiece_fixture();
  j["model"]["vocab"]["zz"] = INT32_MAX - 1;
  EXPECT_TRUE(contains(load_error(j.dump()), "out of range"));
  const double elapsed_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  // Tables sized by these ids would take gigabytes and seconds; refusing them takes neither.
  EXPECT_LT(elapsed_ms, 1000.0);
  EXPECT_LT(peak_rss_kib() - rss_before, 256L * 1024) << "KiB of new peak memory";

  // Gaps of real-world size still load: an added token a thousand ids past the vocabulary.
  j = sentencepiece_fixture();
  j["added_tokens"][4]["id"] = 1275;
  const Tokenizer gapped = from(j);
  EXPECT_EQ(gapped.vocab_size(), 1276);
  EXPECT_EQ(gapped.id_to_token(1275), "<|im_end|>");
}

TEST(TokenizerHostile, AddedTokenTextIsBounded) {
  // The matcher's trie costs tens of bytes per byte of token text.
  json j = sentencepiece_fixture();
  for (int i = 0; i < 5; ++i) {
    j["added_tokens"].push_back({{"id", 300 + i}, {"content", std::string(1 << 20, static_cast<char>('a' + i))},
                                 {"special", true}, {"normalized", false}});
  }
  std::string message = load_error(j.dump());
  EXPECT_TRUE(contains(message, "added_tokens: more than 4194304 bytes of token text")) << message;

  // Normalization may multiply a token's text: a Replace of each "a" by a kilobyte. The
  // normalizer's own growth bound (8x + 4 KiB) stops it before the added-token bound would.
  j = sentencepiece_fixture();
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", "a"}}}, {"content", std::string(1024, 'b')}};
  j["added_tokens"].push_back({{"id", 300}, {"content", std::string(8192, 'a')}, {"normalized", true}});
  message = load_error(j.dump());
  EXPECT_TRUE(contains(message, "grew a text of 8192 bytes")) << message;
}

TEST(TokenizerHostile, NormalizerGrowthIsBounded) {
  // A Replace content beyond 1 KiB is refused at load.
  json j = sentencepiece_fixture();
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", "a"}}}, {"content", std::string(1025, 'b')}};
  std::string message = load_error(j.dump());
  EXPECT_TRUE(contains(message, "Replace content of 1025 bytes")) << message;
  // Each step of a Sequence is measured against the text the Sequence started from, so chained
  // Replaces cannot compound: 8 doublings of "a" would make 256x.
  j = sentencepiece_fixture();
  json parts = json::array();
  for (int i = 0; i < 8; ++i) parts.push_back({{"type", "Replace"}, {"pattern", {{"String", "a"}}}, {"content", "aa"}});
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", parts}};
  const Tokenizer t = from(j);
  EXPECT_NO_THROW(t.encode(std::string(10, 'a'), false, false));  // 2560 bytes <= 8 x 10 + 4096
  try {
    t.encode(std::string(100, 'a'), false, false);  // 6400 bytes after 6 steps > 8 x 100 + 4096
    ADD_FAILURE() << "a normalizer that grows the text 256x was allowed";
  } catch (const specula::Error& e) {
    EXPECT_TRUE(contains(e.what(), "Sequence") && contains(e.what(), "grew a text of 100 bytes")) << e.what();
  }
}

TEST(TokenizerHostile, DuplicateKeysAreRefused) {
  const std::string base = sentencepiece_fixture().dump();
  std::string message = load_error(splice(base, "\"normalizer\":null", "\"normalizer\":null,\"normalizer\":null"));
  EXPECT_TRUE(contains(message, "broken/tokenizer.json") && contains(message, "key 'normalizer' appears twice")) << message;

  message = load_error(splice(base, "\"type\":\"BPE\"", "\"type\":\"BPE\",\"type\":\"BPE\""));
  EXPECT_TRUE(contains(message, "key 'type' appears twice")) << message;

  message = load_error(splice(base, "\"lstrip\":false,\"normalized\":false,\"rstrip\":false,\"single_word\":false,\"special\":true}]",
                              "\"lstrip\":false,\"lstrip\":true,\"normalized\":false,\"rstrip\":false,\"single_word\":false,\"special\":true}]"));
  EXPECT_TRUE(contains(message, "key 'lstrip' appears twice")) << message;

  // In the streamed vocabulary a repeated token is refused too (which id would it have?).
  message = load_error(splice(base, "\"vocab\":{", "\"vocab\":{\"hi\":0,"));
  EXPECT_TRUE(contains(message, "vocab lists token 'hi' twice")) << message;
}

TEST(TokenizerHostile, HugeStringsGiveShortMessages) {
  const std::string huge(1 << 20, 'q');
  const std::string base = sentencepiece_fixture().dump();
  const std::vector<std::string> texts = {
      splice(base, "\"padding\":null", "\"padding\":null,\"" + huge + "\":1"),
      splice(base, "\"normalizer\":null", "\"normalizer\":{\"type\":\"" + huge + "\"}"),
      splice(base, "\"vocab\":{", "\"vocab\":{\"" + huge + "\":\"x\","),
      splice(base, "\"vocab\":{", "\"vocab\":{\"" + huge + "\":300000000,"),
      splice(base, "\"merges\":[", "\"merges\":[\"" + huge + " q\","),
      splice(base, "\"pre_tokenizer\":null",
             "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(" + huge +
                 "\"},\"behavior\":\"Isolated\",\"invert\":false}"),
      "{\"model\": \"" + huge,  // unterminated: nlohmann quotes the token it was reading
  };
  for (const std::string& text : texts) {
    const std::string message = load_error(text);
    EXPECT_TRUE(contains(message, "broken/tokenizer.json")) << message.substr(0, kMaxMessageChars);
    EXPECT_LT(message.size(), kMaxMessageChars) << message.substr(0, 2 * kMaxMessageChars);
  }
}

TEST(TokenizerHostile, SpecialFilesAreRefusedWithoutBlocking) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("specula_tokenizer_special_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "tokenizer.json").string();
  auto expect_refused = [&](const std::string& kind) {
    try {
      Tokenizer::from_file(path);
      ADD_FAILURE() << kind << " accepted";
    } catch (const specula::Error& e) {
      EXPECT_TRUE(contains(e.what(), path) && contains(e.what(), kind)) << e.what();
    }
  };
  // A FIFO with no writer: a blocking open would hang here forever.
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  expect_refused("FIFO");
  fs::remove(path);
  fs::create_directory(path);
  expect_refused("directory");
  fs::remove(path);
  fs::create_symlink("/dev/zero", path);
  expect_refused("character device");
  fs::remove_all(dir);
}

// --- speed ------------------------------------------------------------------------------------

TEST(TokenizerPerformance, Llama3LoadAndEncode) {
  const auto t0 = std::chrono::steady_clock::now();
  const Tokenizer tok = load_deps("llama3");
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  const auto golden = json::parse(specula::read_text_file(std::string(SPECULA_TEST_DATA) + "/tokenizers/golden_llama3.json"));
  std::string corpus;
  for (const auto& c : golden["cases"]) corpus += c["text"].get<std::string>() + "\n";
  std::string text;
  while (text.size() < 100000) text += corpus;
  const auto t1 = std::chrono::steady_clock::now();
  const auto ids = tok.encode(text, false);
  const double encode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
  EXPECT_EQ(tok.decode(ids), text);
  std::printf("[ perf     ] llama3 tokenizer.json load %.0f ms; encode %zu bytes -> %zu ids in %.1f ms (%.1f MB/s)\n", load_ms,
              text.size(), ids.size(), encode_ms, text.size() / encode_ms / 1000.0);
  // Generous bounds: the machine may be shared or the build sanitized.
  EXPECT_LT(load_ms, 3000.0);
  EXPECT_LT(encode_ms, 1000.0);
}
