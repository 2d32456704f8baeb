// FR-Spec frequency-ranked vocabulary lists: the strict loader (published freq_N.pt files and
// every malformed shape refused), the torch.save-compatible writer (byte-identical to a
// torch-written list apart from the serialization id, every pickle int opcode, atomic writes),
// the ranking rule on known count tables, corpus counting (plain text split into documents at
// blank lines, JSONL with its errors by file:line, threads and chunk sizes that do not change
// the counts) and `specula freq` end to end.
// The Llama-3 tokenizer comes from scripts/fetch-deps.sh (.deps/tokenizers/llama3; a test fails
// saying so when it is missing); the published-list tests read the tinygo-llama3 FR-Spec lists
// from SPECULA_TINYGO_DIR or /work/shared/models/tinygo-llama3 and are skipped, saying so, where
// that optional model is absent.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_test_util.h"
#include "io_test_util.h"
#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/io/torch_checkpoint.h"
#include "specula/io/torch_writer.h"
#include "specula/io/zip_archive.h"
#include "specula/spec/frequency.h"
#include "specula/spec/frspec.h"
#include "specula/text/tokenizer.h"

#include <unistd.h>

using namespace specula;
using namespace specula::io::testing;

namespace {

constexpr int64_t kLlama3Vocab = 128256;

std::string tinygo_dir() {
  const char* env = std::getenv("SPECULA_TINYGO_DIR");
  return env && *env ? env : "/work/shared/models/tinygo-llama3";
}

std::string hex_bytes(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

text::Tokenizer llama3() {
  const std::string path = std::string(SPECULA_DEPS_DIR) + "/tokenizers/llama3/tokenizer.json";
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << path << " is missing: run scripts/fetch-deps.sh to download the tokenizer files";
    throw Error("missing " + path);
  }
  static const text::Tokenizer tokenizer = text::Tokenizer::from_file(path);
  return tokenizer;
}

std::vector<uint64_t> reference_counts(const text::Tokenizer& tokenizer, const std::vector<std::string>& documents) {
  std::vector<uint64_t> counts(static_cast<size_t>(tokenizer.vocab_size()), 0);
  for (const std::string& d : documents)
    for (const int32_t id : tokenizer.encode(d, false, false)) ++counts[static_cast<size_t>(id)];
  return counts;
}

uint64_t sum(const std::vector<uint64_t>& v) {
  uint64_t s = 0;
  for (const uint64_t x : v) s += x;
  return s;
}

int32_t single_token(const text::Tokenizer& tokenizer, const std::string& word) {
  const std::vector<int32_t> ids = tokenizer.encode(word, false, false);
  EXPECT_EQ(ids.size(), 1u) << "'" << word << "' is not one Llama-3 token";
  return ids.empty() ? -1 : ids[0];
}

using specula::test::CliRun;
using specula::test::run_cli;

// A varied plain-text document: words, numbers, punctuation, indentation and non-ASCII text.
std::string document(int i) {
  std::string d = "Document " + std::to_string(i) + ": the quick brown fox, number " + std::to_string(i * 7919) +
                  ", jumps over\n  the lazy dog (été, Straße, 東京).";
  for (int k = 0; k < i % 5; ++k) d += "\nline " + std::to_string(k) + " of def f(x): return x * " + std::to_string(k);
  return d;
}

// ---------------------------------------------------------------------------------------------
// The published lists

TEST(FrSpecList, ReadsThePublishedTinygoList) {
  const std::string path = tinygo_dir() + "/frspec/freq_8192.pt";
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << path << " is absent (the optional tinygo-llama3 model; set SPECULA_TINYGO_DIR)";
  const std::vector<int32_t> ids = spec::load_frspec_list(path, kLlama3Vocab);
  ASSERT_EQ(ids.size(), 8192u);
  const std::set<int32_t> unique(ids.begin(), ids.end());
  EXPECT_EQ(unique.size(), ids.size());
  EXPECT_TRUE(unique.count(128001)) << "<|end_of_text|> must be in the list";
  EXPECT_TRUE(unique.count(128009)) << "<|eot_id|> must be in the list";
  // Loaded with a vocabulary that is too small, the same file is refused naming an id.
  expect_error([&] { (void)spec::load_frspec_list(path, 128001); }, {path, "outside the vocabulary [0, 128001)"});
}

TEST(FrSpecList, WriterReproducesATorchWrittenListByteForByte) {
  const std::string path = tinygo_dir() + "/frspec/freq_8192.pt";
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << path << " is absent (the optional tinygo-llama3 model; set SPECULA_TINYGO_DIR)";
  const std::string real = read_file_bytes(path);
  const std::vector<int64_t> ids = io::load_torch_plain_int_list(path);
  TempDir dir;
  const std::string ours_path = dir.write("freq_8192.pt", io::torch_int_list_archive(ids, "freq_8192"));
  const std::string ours = read_file_bytes(ours_path);
  ASSERT_EQ(ours.size(), real.size());
  // Only the serialization id (torch hashes its record names with std::hash) and its CRC differ.
  const MappedFile file(ours_path);
  const io::ZipArchive zip(file);
  const io::ZipEntry* id = zip.find("freq_8192/.data/serialization_id");
  ASSERT_NE(id, nullptr);
  const size_t id_at = id->data_offset;
  const size_t cd_crc_at = ours.rfind(std::string("PK\x01\x02", 4)) + 16;  // the last directory entry is the id's
  size_t differing = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    if (ours[i] == real[i]) continue;
    ++differing;
    const bool allowed = (i >= id_at && i < id_at + 40) || (i >= id_at + 44 && i < id_at + 48) ||
                         (i >= cd_crc_at && i < cd_crc_at + 4);
    ASSERT_TRUE(allowed) << "byte " << i << " differs from the torch-written file";
  }
  EXPECT_GT(differing, 0u);
}

// ---------------------------------------------------------------------------------------------
// The writer

TEST(FrSpecWriter, PicklesIntsAsCPythonDoes) {
  // Expected bytes are pickle.dumps(list, protocol=2) from CPython 3.11.
  EXPECT_EQ(io::pickle_int_list({}), hex_bytes("80025d71002e"));
  const std::vector<int64_t> one{5};
  EXPECT_EQ(io::pickle_int_list(one), hex_bytes("80025d71004b05612e"));
  const std::vector<int64_t> mixed{0,       255,      256,           65535,      65536,         2147483647,
                                   2147483648LL, -1,   -2147483648LL, -2147483649LL, 1LL << 40, INT64_MAX,
                                   INT64_MIN,    128,  -129};
  EXPECT_EQ(io::pickle_int_list(mixed),
            hex_bytes("80025d7100284b004bff4d00014dffff4a000001004affffff7f8a0500000080004affffffff4a000000808a05ffffff7fff"
                      "8a060000000000018a08ffffffffffffff7f8a0800000000000000804b804a7fffffff652e"));
  // Batches of 1000: CPython's C pickler closes a final batch of one with MARK ... APPENDS too.
  std::vector<int64_t> range(1001);
  for (size_t i = 0; i < range.size(); ++i) range[i] = static_cast<int64_t>(i);
  const std::string p1001 = io::pickle_int_list(range);
  EXPECT_EQ(p1001.substr(p1001.size() - 12), hex_bytes("e6034de70365284de803652e"));
  range.resize(2000);
  for (size_t i = 0; i < range.size(); ++i) range[i] = static_cast<int64_t>(i);
  const std::string p2000 = io::pickle_int_list(range);
  EXPECT_EQ(p2000.substr(p2000.size() - 12), hex_bytes("074dcd074dce074dcf07652e"));
}

TEST(FrSpecWriter, RoundTripsEveryIntOpcodeAndBatchSize) {
  TempDir dir;
  for (const size_t n : {size_t{1}, size_t{2}, size_t{999}, size_t{1000}, size_t{1001}, size_t{2000}, size_t{2001}}) {
    std::vector<int64_t> ids;
    for (size_t i = 0; i < n; ++i) {
      const int64_t pick[] = {static_cast<int64_t>(i % 256),            // BININT1
                              static_cast<int64_t>(256 + i * 13 % 65280),  // BININT2
                              static_cast<int64_t>(65536 + i * 7919),      // BININT (>= 65536)
                              (int64_t{1} << 33) + static_cast<int64_t>(i),  // LONG1
                              -static_cast<int64_t>(i) - 1};                // negative BININT
      ids.push_back(pick[i % 5]);
    }
    const std::string path = dir.file("freq_" + std::to_string(n) + ".pt");
    io::write_torch_int_list(path, ids);
    EXPECT_EQ(io::load_torch_plain_int_list(path), ids) << n;
    EXPECT_EQ(io::load_torch_int_list(path), ids) << n;  // the lenient reader agrees
  }
  // FR-Spec lists themselves: a permutation of ids with many above 65535.
  std::vector<int32_t> fr;
  for (int32_t i = 0; i < 5000; ++i) fr.push_back(static_cast<int32_t>((static_cast<int64_t>(i) * 104729) % kLlama3Vocab));
  const std::string path = dir.file("freq_5000.pt");
  spec::write_frspec_list(path, fr, kLlama3Vocab);
  EXPECT_EQ(spec::load_frspec_list(path, kLlama3Vocab), fr);
}

TEST(FrSpecWriter, ArchiveHasTorchsRecordsAlignedAndChecksummed) {
  EXPECT_EQ(io::zip_crc32("123456789"), 0xcbf43926u);
  TempDir dir;
  const std::vector<int64_t> ids{128000, 7, 128009};
  const std::string path = dir.file("freq_3.pt");
  io::write_torch_int_list(path, ids);
  const MappedFile file(path);
  const io::ZipArchive zip(file);
  const std::vector<std::string> names{"freq_3/data.pkl",  "freq_3/.format_version", "freq_3/.storage_alignment",
                                       "freq_3/byteorder", "freq_3/version",         "freq_3/.data/serialization_id"};
  ASSERT_EQ(zip.entries().size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(zip.entries()[i].name, names[i]);
    EXPECT_EQ(zip.entries()[i].data_offset % 64, 0u) << names[i];
  }
  EXPECT_EQ(zip.data(*zip.find("freq_3/version")), "3\n");
  EXPECT_EQ(zip.data(*zip.find("freq_3/byteorder")), "little");
  EXPECT_EQ(zip.data(*zip.find("freq_3/.format_version")), "1");
  EXPECT_EQ(zip.data(*zip.find("freq_3/.storage_alignment")), "64");
  EXPECT_EQ(zip.data(*zip.find("freq_3/data.pkl")), io::pickle_int_list(ids));
  const std::string_view id = zip.data(*zip.find("freq_3/.data/serialization_id"));
  ASSERT_EQ(id.size(), 40u);
  EXPECT_EQ(id.find_first_not_of("0123456789"), std::string_view::npos);
  // Each central directory entry's CRC is the CRC of its data (miniz checks it on read).
  const std::string bytes = read_file_bytes(path);
  size_t entry = 0;
  for (size_t at = bytes.find(std::string("PK\x01\x02", 4)); at != std::string::npos;
       at = bytes.find(std::string("PK\x01\x02", 4), at + 4), ++entry) {
    uint32_t crc = 0;
    for (int k = 3; k >= 0; --k) crc = (crc << 8) | static_cast<uint8_t>(bytes[at + 16 + static_cast<size_t>(k)]);
    ASSERT_LT(entry, names.size());
    EXPECT_EQ(crc, io::zip_crc32(zip.data(zip.entries()[entry]))) << names[entry];
  }
  EXPECT_EQ(entry, names.size());
  // The record folder is the file name up to its last dot, as torch names it.
  io::write_torch_int_list(dir.file("list.v2.pt"), ids);
  const MappedFile dotted(dir.file("list.v2.pt"));
  EXPECT_NE(io::ZipArchive(dotted).find("list.v2/data.pkl"), nullptr);
}

TEST(FrSpecWriter, WritesAtomically) {
  TempDir dir;
  const std::string path = dir.file("freq_4.pt");
  const std::vector<int32_t> first{3, 1, 2, 0}, second{0, 1, 2, 3};
  spec::write_frspec_list(path, first, 10);
  spec::write_frspec_list(path, second, 10);  // replaces the file
  EXPECT_EQ(spec::load_frspec_list(path, 10), second);
  // A list refused by the checks leaves the old file untouched.
  const std::vector<int32_t> bad{1, 1};
  expect_error([&] { spec::write_frspec_list(path, bad, 10); }, {path, "token id 1 twice, at indexes 0 and 1"});
  EXPECT_EQ(spec::load_frspec_list(path, 10), second);
  // No temporary file is left behind.
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    ++files;
    EXPECT_EQ(e.path().filename(), "freq_4.pt");
  }
  EXPECT_EQ(files, 1u);
  const std::string missing = dir.file("no/such/folder/freq_4.pt");
  expect_error([&] { spec::write_frspec_list(missing, second, 10); }, {missing, "cannot create a temporary file"});
}

// ---------------------------------------------------------------------------------------------
// The strict loader

TEST(FrSpecLoader, RefusesMalformedLists) {
  TempDir dir;
  const auto list_file = [&](const std::string& name, const std::vector<int64_t>& ids) {
    return dir.write(name, io::torch_int_list_archive(ids, "x"));
  };
  std::string p = list_file("dup.pt", {5, 7, 9, 7});
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "token id 7 twice, at indexes 1 and 3"});
  p = list_file("high.pt", {5, 100});
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "entry 1 is token id 100", "[0, 100)"});
  p = list_file("negative.pt", {-3});
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "token id -3"});
  p = list_file("empty.pt", {});
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "empty"});
  p = list_file("long.pt", {0, 1, 2, 3});
  expect_error([&] { (void)spec::load_frspec_list(p, 3); }, {p, "4 entries, more than the vocabulary's 3"});
  expect_error([&] { (void)spec::load_frspec_list(p, 0); }, {p, "vocabulary size 0"});

  // A 1-D int64 tensor (torch.save(torch.tensor(ids))): the lenient reader takes it, FR-Spec does not.
  TorchPickleWriter tensor;
  tensor.builder().proto();
  tensor.tensor({"", "LongStorage", "0", 3, 0, {3}, {1}});
  const std::vector<int64_t> three{1, 2, 3};
  p = dir.write("tensor.pt", torch_zip("archive", tensor.builder().stop().bytes(), {{"0", bytes_of(three)}}));
  EXPECT_EQ(io::load_torch_int_list(p), three);
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "holds a tensor", "plain list of ints"});

  // A dict: of tensors (a state_dict), of ints, and empty.
  p = dir.write("sd.pt", torch_zip("archive", state_dict_pickle({{"w", "LongStorage", "0", 3, 0, {3}, {1}}}),
                                   {{"0", bytes_of(three)}}));
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "dict", "plain list of ints"});
  PickleBuilder int_dict;
  int_dict.proto().empty_dict().put(0).unicode("a").integer(1).setitem().stop();
  p = dir.write("intdict.pt", torch_zip("archive", int_dict.bytes(), {}));
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "'a' is a int, not a tensor"});
  PickleBuilder empty_dict;
  empty_dict.proto().empty_dict().put(0).stop();
  p = dir.write("emptydict.pt", torch_zip("archive", empty_dict.bytes(), {}));
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "dict", "plain list of ints"});

  // A list with something other than an int in it.
  PickleBuilder strings;
  strings.proto().empty_list().put(0).mark().integer(1).unicode("2").appends().stop();
  p = dir.write("strings.pt", torch_zip("archive", strings.bytes(), {}));
  expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p, "list item 1 is a str, not an int"});

  // Truncated archives: cut anywhere, the zip reader refuses them.
  const std::string whole = io::torch_int_list_archive(std::vector<int64_t>{1, 2, 3, 4}, "t");
  for (const size_t cut : {size_t{0}, size_t{10}, whole.size() / 2, whole.size() - 30, whole.size() - 1}) {
    p = dir.write("cut.pt", whole.substr(0, cut));
    expect_error([&] { (void)spec::load_frspec_list(p, 100); }, {p});
  }
  expect_error([&] { (void)spec::load_frspec_list(dir.file("absent.pt"), 100); }, {"absent.pt"});
}

// ---------------------------------------------------------------------------------------------
// Ranking

TEST(FreqRanking, OrdersByCountThenIdAndKeepsEndTokens) {
  //                                 id: 0  1  2  3  4  5  6  7
  const std::vector<uint64_t> counts{5, 9, 9, 0, 3, 9, 1, 0};
  EXPECT_EQ(spec::rank_by_frequency(counts, 4, {}), (std::vector<int32_t>{1, 2, 5, 0}));
  EXPECT_EQ(spec::rank_by_frequency(counts, 8, {}), (std::vector<int32_t>{1, 2, 5, 0, 4, 6, 3, 7}));
  // An end token outside the top displaces the lowest-ranked other token and takes the last place.
  const std::vector<int32_t> seven{7};
  EXPECT_EQ(spec::rank_by_frequency(counts, 4, seven), (std::vector<int32_t>{1, 2, 5, 7}));
  // One already inside displaces nothing; repeats in the forced list count once.
  const std::vector<int32_t> two_twice{2, 2};
  EXPECT_EQ(spec::rank_by_frequency(counts, 4, two_twice), (std::vector<int32_t>{1, 2, 5, 0}));
  // Two outside: both kept, ordered by count then id, the list stays exactly the size asked.
  const std::vector<int32_t> seven_three{7, 3};
  EXPECT_EQ(spec::rank_by_frequency(counts, 4, seven_three), (std::vector<int32_t>{1, 2, 3, 7}));
  const std::vector<int32_t> six_seven{7, 6};
  EXPECT_EQ(spec::rank_by_frequency(counts, 3, six_seven), (std::vector<int32_t>{1, 6, 7}));
  // Ids without a token (holes in the id space) are never listed.
  const std::vector<uint8_t> usable{1, 1, 0, 1, 1, 1, 1, 1};
  EXPECT_EQ(spec::rank_by_frequency(counts, 4, {}, usable), (std::vector<int32_t>{1, 5, 0, 4}));

  expect_error([&] { (void)spec::rank_by_frequency(counts, 9, {}); }, {"list size 9 is larger than the vocabulary (8"});
  expect_error([&] { (void)spec::rank_by_frequency(counts, 8, {}, usable); }, {"larger than the vocabulary (7"});
  expect_error([&] { (void)spec::rank_by_frequency(counts, 0, {}); }, {"at least 1"});
  expect_error([&] { (void)spec::rank_by_frequency(counts, 1, seven_three); }, {"cannot hold the 2 end tokens"});
  const std::vector<int32_t> outside{8};
  expect_error([&] { (void)spec::rank_by_frequency(counts, 2, outside); }, {"end token id 8"});
  const std::vector<int32_t> hole{2};
  expect_error([&] { (void)spec::rank_by_frequency(counts, 2, hole, usable); }, {"end token id 2"});

  EXPECT_DOUBLE_EQ(spec::token_coverage(counts, std::vector<int32_t>{1, 2, 5, 0}), 32.0 / 36.0);
  EXPECT_DOUBLE_EQ(spec::token_coverage(std::vector<uint64_t>(4, 0), std::vector<int32_t>{1}), 0.0);
}

TEST(FreqRanking, SyntheticCorpusWithAKnownCountTable) {
  const text::Tokenizer tok = llama3();
  // One token per JSONL document, so the count table is known exactly.
  const int32_t alpha = single_token(tok, "alpha"), beta = single_token(tok, "beta"), gamma = single_token(tok, "gamma"),
                delta = single_token(tok, "delta");
  TempDir dir;
  std::string jsonl;
  for (const auto& [word, times] : std::vector<std::pair<std::string, int>>{{"alpha", 3}, {"gamma", 2}, {"beta", 3}, {"delta", 1}})
    for (int i = 0; i < times; ++i) jsonl += "{\"text\": \"" + word + "\"}\n";
  const std::string corpus = dir.write("c.jsonl", jsonl);
  const spec::TokenCounts counts = spec::count_corpus_tokens(tok, {corpus});
  EXPECT_EQ(counts.documents, 9u);
  EXPECT_EQ(counts.tokens, 9u);
  std::vector<uint64_t> expected(static_cast<size_t>(tok.vocab_size()), 0);
  expected[static_cast<size_t>(alpha)] = 3;
  expected[static_cast<size_t>(beta)] = 3;
  expected[static_cast<size_t>(gamma)] = 2;
  expected[static_cast<size_t>(delta)] = 1;
  EXPECT_EQ(counts.counts, expected);

  const std::vector<int32_t> end_ids = spec::end_token_ids(tok, dir.path().string());
  EXPECT_EQ(end_ids, (std::vector<int32_t>{128009, 128001}));  // <|eot_id|>, <|end_of_text|> (no configs here)
  const std::vector<uint8_t> usable = spec::defined_token_ids(tok);
  const std::vector<int32_t> list = spec::rank_by_frequency(counts.counts, 5, end_ids, usable);
  // alpha and beta tie at 3 (lower id first), then gamma; delta is displaced by the two end tokens.
  EXPECT_EQ(list, (std::vector<int32_t>{std::min(alpha, beta), std::max(alpha, beta), gamma, 128001, 128009}));
  EXPECT_DOUBLE_EQ(spec::token_coverage(counts.counts, list), 8.0 / 9.0);
  // A list as large as the vocabulary is every id; one more is an error.
  EXPECT_EQ(spec::rank_by_frequency(counts.counts, kLlama3Vocab, end_ids, usable).size(), static_cast<size_t>(kLlama3Vocab));
  expect_error([&] { (void)spec::rank_by_frequency(counts.counts, kLlama3Vocab + 1, end_ids, usable); },
               {"larger than the vocabulary (128256 tokens)"});
}

TEST(FreqEndTokens, ReadsConfigsAndTheTokenizersEndTokens) {
  const text::Tokenizer tok = llama3();
  TempDir dir;
  dir.write("generation_config.json", R"({"bos_token_id": 128000, "eos_token_id": [128001, 128008]})");
  dir.write("config.json", R"({"eos_token_id": 128009, "vocab_size": 128256})");
  EXPECT_EQ(spec::end_token_ids(tok, dir.path().string()), (std::vector<int32_t>{128001, 128008, 128009}));
  dir.write("config.json", R"({"eos_token_id": 128256})");
  expect_error([&] { (void)spec::end_token_ids(tok, dir.path().string()); },
               {"config.json", "'eos_token_id' holds 128256", "not a token id of the tokenizer"});
  dir.write("config.json", R"({"eos_token_id": "x"})");
  expect_error([&] { (void)spec::end_token_ids(tok, dir.path().string()); }, {"config.json", "eos_token_id"});
  dir.write("config.json", R"({"eos_token_id": null})");
  EXPECT_EQ(spec::end_token_ids(tok, dir.path().string()), (std::vector<int32_t>{128001, 128008, 128009}));
}

// ---------------------------------------------------------------------------------------------
// Counting a corpus

TEST(FreqCorpus, PlainTextIsCountedPerDocument) {
  const text::Tokenizer tok = llama3();
  TempDir dir;
  // 400 documents separated by blank lines (one of them with spaces and \r on it, one a run of
  // three), each tokenized on its own with the blank lines that end it.
  std::vector<std::string> pieces;
  std::string content;
  for (int i = 0; i < 400; ++i) {
    std::string piece = document(i);
    if (i + 1 < 400) piece += i % 50 == 7 ? "\n \t\r\n" : i % 50 == 9 ? "\n\n\n\n" : "\n\n";
    pieces.push_back(piece);
    content += piece;
  }
  const std::string path = dir.write("corpus.txt", content);
  const std::vector<uint64_t> expected = reference_counts(tok, pieces);
  for (const int threads : {1, 2}) {
    for (const size_t chunk : {size_t{4096}, size_t{1} << 20}) {
      spec::CountOptions options;
      options.threads = threads;
      options.chunk_bytes = chunk;
      spec::CorpusProgress last;
      options.progress = [&](const spec::CorpusProgress& p) { last = p; };
      const spec::TokenCounts counts = spec::count_corpus_tokens(tok, {path}, options);
      EXPECT_EQ(last.bytes_done, content.size());
      EXPECT_EQ(last.bytes_total, content.size());
      EXPECT_EQ(last.tokens, counts.tokens);
      EXPECT_EQ(counts.documents, 400u) << threads << " threads, chunk " << chunk;
      EXPECT_EQ(counts.bytes, content.size());
      EXPECT_EQ(counts.tokens, sum(expected));
      EXPECT_TRUE(counts.counts == expected) << threads << " threads, chunk " << chunk;
    }
  }
  // Leading blank lines and whitespace-only text are tokens but no document; two files add up.
  const std::string blank = dir.write("blank.txt", "\n\n   \n");
  const spec::TokenCounts both = spec::count_corpus_tokens(tok, {blank, path});
  EXPECT_EQ(both.documents, 400u);
  EXPECT_EQ(both.tokens, sum(expected) + tok.encode("\n\n   \n", false, false).size());
  // Special-token strings in a corpus are plain text, and no BOS is added.
  const std::string special = dir.write("special.txt", "<|eot_id|>");
  const spec::TokenCounts plain = spec::count_corpus_tokens(tok, {special});
  EXPECT_EQ(plain.counts[128009], 0u);
  EXPECT_EQ(plain.counts[128000], 0u);
  EXPECT_GT(plain.tokens, 1u);
}

TEST(FreqCorpus, LongDocumentsAreCutAtWhitespaceAndCountOnce) {
  const text::Tokenizer tok = llama3();
  TempDir dir;
  std::string prose;  // one 60 kB document without a blank line
  for (int i = 0; prose.size() < 60000; ++i) prose += "word" + std::to_string(i) + (i % 40 == 39 ? "\n" : " ");
  std::string spaces;  // one 30 kB document without a newline
  for (int i = 0; spaces.size() < 30000; ++i) spaces += "w" + std::to_string(i) + " ";
  std::string no_space;  // 20 kB of two-byte characters without any whitespace
  while (no_space.size() < 20000) no_space += "\xc3\xa9";
  for (const std::string& content : {prose, spaces, no_space}) {
    const std::string path = dir.write("long.txt", content);
    spec::CountOptions options;
    options.chunk_bytes = 4096;
    options.threads = 2;
    const spec::TokenCounts counts = spec::count_corpus_tokens(tok, {path}, options);
    EXPECT_EQ(counts.documents, 1u);
    EXPECT_EQ(counts.bytes, content.size());
    // Cuts change tokens only at the cut points: a few per 4 kB chunk at most.
    const double whole = static_cast<double>(tok.encode(content, false, false).size());
    EXPECT_NEAR(static_cast<double>(counts.tokens), whole, 2.0 * (static_cast<double>(content.size()) / 2048 + 1));
  }
}

TEST(FreqCorpus, JsonlCountsTheTextFieldAndNamesBadLines) {
  const text::Tokenizer tok = llama3();
  TempDir dir;
  const std::vector<std::string> texts{"first document", "zweites Dokument: Straße", "line one\nline two\n\nthree"};
  std::string jsonl;
  for (const std::string& t : texts) {
    nlohmann::json line{{"source", "x"}, {"body", t}};
    jsonl += line.dump() + (t == texts[1] ? "\r\n\n" : "\n");  // CRLF and an empty line are fine
  }
  const std::string path = dir.write("c.jsonl", jsonl);
  spec::CountOptions options;
  options.text_field = "body";
  const spec::TokenCounts counts = spec::count_corpus_tokens(tok, {path}, options);
  EXPECT_EQ(counts.documents, 3u);
  EXPECT_TRUE(counts.counts == reference_counts(tok, texts));
  // --format jsonl reads any name as JSONL; auto reads a .txt name as plain text.
  const std::string txt = dir.write("c.txt", jsonl);
  options.format = spec::CorpusFormat::Jsonl;
  EXPECT_TRUE(spec::count_corpus_tokens(tok, {txt}, options).counts == counts.counts);
  options.format = spec::CorpusFormat::Auto;
  EXPECT_FALSE(spec::count_corpus_tokens(tok, {txt}, options).counts == counts.counts);

  const auto bad = [&](const std::string& name, const std::string& content, const std::vector<std::string>& parts) {
    const std::string p = dir.write(name, content);
    std::vector<std::string> with_file = parts;
    with_file.insert(with_file.begin(), p);
    expect_error([&] { (void)spec::count_corpus_tokens(tok, {p}, options); }, with_file);
  };
  bad("a.jsonl", "{\"body\": \"ok\"}\n{\"body\": \"ok\"}\n{\"body\": \"broken\n", {":3:"});
  bad("b.jsonl", "{\"body\": \"ok\"}\n\n{\"text\": \"no body\"}\n", {":3:", "no 'body' field", "--text-field"});
  bad("c.jsonl", "{\"body\": 42}\n", {":1:", "field 'body' is number, not a string"});
  bad("d.jsonl", "[\"body\"]\n", {":1:"});
  bad("e.jsonl", "{\"body\": \"a\", \"body\": \"b\"}\n", {":1:", "body"});
  bad("f.jsonl", "{\"body\": \"\xff\"}\n", {":1:"});
  // Line numbers stay right across chunks.
  std::string many;
  for (int i = 0; i < 3000; ++i) many += "{\"body\": \"document number " + std::to_string(i) + "\"}\n";
  options.chunk_bytes = 4096;
  options.threads = 2;
  bad("g.jsonl", many + "not json\n" + many, {":3001:"});
  options.max_line_bytes = 10000;
  bad("h.jsonl", many + "{\"body\": \"" + std::string(20000, 'x') + "\"}\n", {":3001:", "line longer than 10000 bytes"});
  const std::string fits = dir.write("i.jsonl", many + "{\"body\": \"" + std::string(9000, 'x') + "\"}");
  EXPECT_EQ(spec::count_corpus_tokens(tok, {fits}, options).documents, 3001u);  // the last line needs no newline
}

TEST(FreqCorpus, RefusesWhatIsNotATextCorpus) {
  const text::Tokenizer tok = llama3();
  TempDir dir;
  const std::string p = dir.write("latin1.txt", std::string(5000, 'a') + "\n\nb\xc3\x28" + "c");
  spec::CountOptions options;
  options.chunk_bytes = 4096;
  expect_error([&] { (void)spec::count_corpus_tokens(tok, {p}, options); }, {p, "invalid UTF-8 at byte 5003"});
  expect_error([&] { (void)spec::count_corpus_tokens(tok, {dir.path().string()}); }, {"not a regular file"});
  expect_error([&] { (void)spec::count_corpus_tokens(tok, {dir.file("absent.txt")}); }, {"absent.txt"});
  expect_error([&] { (void)spec::count_corpus_tokens(tok, {}); }, {"no corpus files"});
}

// ---------------------------------------------------------------------------------------------
// The command

TEST(FreqCli, BuildsListsEndToEnd) {
  TempDir dir;
  const std::string model = dir.file("model");
  ASSERT_EQ(run_cli("create-demo-model " + model).status, 0);
  std::string content;
  for (int i = 0; i < 200; ++i) content += document(i) + "\n\n";
  const std::string corpus = dir.write("corpus.txt", content);
  const std::string jsonl = dir.write("more.jsonl", "{\"text\": \"the quick brown fox\"}\n{\"text\": \"again\"}\n");
  const std::string out = dir.file("lists");
  const CliRun r = run_cli("freq --tokenizer " + model + " --corpus " + corpus + " " + jsonl + " --sizes 64,128 --out " +
                           out + " --threads 2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("202 documents"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("freq_64"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("coverage"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("\r"), std::string::npos) << "no progress bar when stderr is not a terminal";

  // The files hold exactly what the library computes for the same corpus.
  const text::Tokenizer tok = text::Tokenizer::from_file(model + "/tokenizer.json");
  const spec::TokenCounts counts = spec::count_corpus_tokens(tok, {corpus, jsonl});
  const std::vector<int32_t> end_ids = spec::end_token_ids(tok, model);
  ASSERT_FALSE(end_ids.empty());
  for (const int64_t size : {64, 128}) {
    const std::vector<int32_t> ids = spec::load_frspec_list(out + "/freq_" + std::to_string(size) + ".pt", tok.vocab_size());
    ASSERT_EQ(ids.size(), static_cast<size_t>(size));
    EXPECT_EQ(ids, spec::rank_by_frequency(counts.counts, size, end_ids, spec::defined_token_ids(tok)));
    for (const int32_t e : end_ids) EXPECT_NE(std::find(ids.begin(), ids.end(), e), ids.end()) << "end token " << e;
  }

  // Errors: a size beyond the vocabulary (before any counting), a bad size, a bad JSONL line.
  CliRun e = run_cli("freq --tokenizer " + model + " --corpus " + corpus + " --sizes 64,100000 --out " + out);
  EXPECT_EQ(e.status, 1);
  EXPECT_NE(e.output.find("specula: error: --sizes 100000: list size 100000 is larger than the vocabulary"),
            std::string::npos) << e.output;
  e = run_cli("freq --tokenizer " + model + " --corpus " + corpus + " --sizes 64,x --out " + out);
  EXPECT_EQ(e.status, 1);
  EXPECT_NE(e.output.find("--sizes: each size must be an integer"), std::string::npos) << e.output;
  const std::string broken = dir.write("broken.jsonl", "{\"text\": \"fine\"}\n{\"text\": 3}\n");
  e = run_cli("freq --tokenizer " + model + " --corpus " + broken + " --out " + out + " --sizes 64");
  EXPECT_EQ(e.status, 1);
  EXPECT_NE(e.output.find(broken + ":2: field 'text' is number"), std::string::npos) << e.output;
  e = run_cli("freq --tokenizer " + dir.file("nothing") + " --corpus " + corpus + " --out " + out);
  EXPECT_EQ(e.status, 1);
  EXPECT_NE(e.output.find("no such file or directory"), std::string::npos) << e.output;

  const CliRun help = run_cli("freq --help");
  EXPECT_EQ(help.status, 0);
  for (const char* option : {"--tokenizer", "--corpus", "--sizes", "--out", "--threads", "--text-field", "--format"})
    EXPECT_NE(help.output.find(option), std::string::npos) << option;
}

}  // namespace
