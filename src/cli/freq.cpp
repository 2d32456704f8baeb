// `specula freq`: builds FR-Spec frequency-ranked vocabulary lists (freq_<size>.pt) from a corpus
// with a model's tokenizer: counts token ids over text or JSONL files on all cores, ranks them by
// count (ties by lower id), keeps every end token, and writes one torch.save-compatible list per
// size. The counting and ranking live in specula/spec/frequency.h; this file is options and output.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "options.h"
#include "terminal.h"
#include "specula/core/error.h"
#include "specula/core/thread_pool.h"
#include "specula/spec/frequency.h"
#include "specula/spec/frspec.h"
#include "specula/text/tokenizer.h"

namespace specula::cli {

namespace {

namespace fs = std::filesystem;

struct FreqArgs {
  std::string tokenizer, out, sizes = "8192,16384,32768,65536", text_field = "text", format = "auto";
  std::vector<std::string> corpus;
  int threads = 0;
};

// "8192,16384" -> {8192, 16384}, in the order given, repeats dropped.
std::vector<int64_t> parse_sizes(const std::string& text) {
  std::vector<int64_t> sizes;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(pos, end - pos);
    int64_t value = 0;
    const auto [stop, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    SPECULA_CHECK(ec == std::errc() && stop == item.data() + item.size() && value >= 1 &&
                      value <= std::numeric_limits<int32_t>::max(),
                  "--sizes: each size must be an integer from 1 to ", std::numeric_limits<int32_t>::max(), ", got '",
                  item, "' (the list is comma-separated, e.g. 8192,16384)");
    if (std::find(sizes.begin(), sizes.end(), value) == sizes.end()) sizes.push_back(value);
    pos = end + 1;
  }
  return sizes;
}

spec::CorpusFormat parse_format(const std::string& name) {
  if (name == "auto") return spec::CorpusFormat::Auto;
  if (name == "text") return spec::CorpusFormat::Text;
  if (name == "jsonl") return spec::CorpusFormat::Jsonl;
  fail("--format must be auto, text or jsonl, got '", name, "'");
}

// --tokenizer takes a folder with tokenizer.json (a model folder), or the tokenizer.json itself;
// returns {tokenizer.json, the folder whose config files name the end tokens}.
std::pair<std::string, std::string> locate_tokenizer(const std::string& given) {
  std::error_code ec;
  const fs::file_status status = fs::status(given, ec);
  SPECULA_CHECK(fs::exists(status), given, ": no such file or directory (--tokenizer takes a folder with tokenizer.json)");
  if (fs::is_directory(status)) {
    const fs::path file = fs::path(given) / "tokenizer.json";
    SPECULA_CHECK(fs::exists(file, ec), given, ": no tokenizer.json in this folder");
    return {file.string(), given};
  }
  const std::string parent = fs::path(given).parent_path().string();
  return {given, parent.empty() ? "." : parent};
}

std::string megabytes(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(bytes) / 1e6);
  return buf;
}

std::string short_count(uint64_t n) {
  char buf[32];
  if (n >= 1'000'000) std::snprintf(buf, sizeof buf, "%.1fM", static_cast<double>(n) / 1e6);
  else if (n >= 1'000) std::snprintf(buf, sizeof buf, "%.1fk", static_cast<double>(n) / 1e3);
  else std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  return buf;
}

void draw_counting_bar(const spec::CorpusProgress& p) {
  constexpr int kWidth = 30;
  const uint64_t total = std::max<uint64_t>(p.bytes_total, 1);
  const int filled = static_cast<int>(kWidth * std::min(p.bytes_done, total) / total);
  draw_status_line("counting [" + std::string(static_cast<size_t>(filled), '=') +
                   std::string(static_cast<size_t>(kWidth - filled), ' ') + "] " + megabytes(p.bytes_done) + "/" +
                   megabytes(p.bytes_total) + " MB, " + short_count(p.tokens) + " tokens");
}

void run_freq(const FreqArgs& a) {
  const std::vector<int64_t> sizes = parse_sizes(a.sizes);
  spec::CountOptions options;
  options.format = parse_format(a.format);
  options.text_field = a.text_field;
  options.threads = a.threads;
  SPECULA_CHECK(!a.text_field.empty(), "--text-field must not be empty");

  const auto [tokenizer_file, model_dir] = locate_tokenizer(a.tokenizer);
  const text::Tokenizer tokenizer = text::Tokenizer::from_file(tokenizer_file);
  const std::vector<int32_t> end_ids = spec::end_token_ids(tokenizer, model_dir);
  const std::vector<uint8_t> usable = spec::defined_token_ids(tokenizer);
  // Every size is checked against the vocabulary and the end tokens before the corpus is read.
  const std::vector<uint64_t> no_counts(usable.size(), 0);
  for (const int64_t size : sizes)
    with_context("--sizes " + std::to_string(size), [&] { spec::rank_by_frequency(no_counts, size, end_ids, usable); });

  std::error_code ec;
  fs::create_directories(a.out, ec);
  SPECULA_CHECK(fs::is_directory(a.out, ec), a.out, ": cannot create the output folder",
                ec ? ": " + ec.message() : std::string());

  if (stderr_is_terminal()) options.progress = draw_counting_bar;
  const auto start = std::chrono::steady_clock::now();
  const spec::TokenCounts counts = spec::count_corpus_tokens(tokenizer, a.corpus, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  end_status_line();
  SPECULA_CHECK(counts.tokens > 0, "the corpus holds no text to count (", a.corpus.size(), " file",
                a.corpus.size() == 1 ? "" : "s", ", ", counts.bytes, " bytes)");

  const int threads = counts.threads;
  std::printf("corpus     %zu file%s, %s MB, %llu documents, %llu tokens\n", a.corpus.size(),
              a.corpus.size() == 1 ? "" : "s", megabytes(counts.bytes).c_str(),
              static_cast<unsigned long long>(counts.documents), static_cast<unsigned long long>(counts.tokens));
  std::printf("counted    in %.1f s on %d thread%s (%.2f MB/s)\n", seconds, threads, threads == 1 ? "" : "s",
              static_cast<double>(counts.bytes) / 1e6 / std::max(seconds, 1e-9));
  std::string names;
  for (const int32_t id : end_ids) names += (names.empty() ? "" : ", ") + std::to_string(id) + " " + tokenizer.id_to_token(id);
  std::printf("end tokens %s\n", names.empty() ? "none found" : names.c_str());
  for (const int64_t size : sizes) {
    const std::vector<int32_t> ids = spec::rank_by_frequency(counts.counts, size, end_ids, usable);
    const std::string path = (fs::path(a.out) / ("freq_" + std::to_string(size) + ".pt")).string();
    spec::write_frspec_list(path, ids, tokenizer.vocab_size());
    std::printf("%-10s coverage %.2f%% of corpus tokens -> %s\n", ("freq_" + std::to_string(size)).c_str(),
                100.0 * spec::token_coverage(counts.counts, ids), path.c_str());
  }
}

}  // namespace

void add_freq_command(CLI::App& app) {
  auto a = std::make_shared<FreqArgs>();
  CLI::App* cmd = app.add_subcommand(
      "freq",
      "Build FR-Spec frequency-ranked vocabulary lists (freq_<size>.pt, torch.save lists of token ids, most frequent "
      "first) from a corpus, for a draft model's restricted LM head");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Model folder with tokenizer.json (or the tokenizer.json file); eos_token_id of its "
                  "generation_config.json and config.json, when present, are kept in every list")
      ->required();
  cmd->add_option("--corpus", a->corpus,
                  "Corpus files, one or more (--corpus a.txt b.jsonl or --corpus repeated). Plain text: documents "
                  "are separated by blank lines. JSONL (a .jsonl name, or --format jsonl): one JSON object per "
                  "line, the document is its --text-field string")
      ->required()->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--sizes", a->sizes,
                  "Comma-separated list sizes; one freq_<size>.pt per size, each exactly that many ids, none "
                  "larger than the vocabulary")
      ->capture_default_str();
  cmd->add_option("--out", a->out, "Folder to write the freq_<size>.pt files into (created if missing)")->required();
  cmd->add_option("--threads", a->threads, "Tokenizing threads; 0 = all cores (more than the cores are not used)")
      ->capture_default_str()->check(int_in_range<int>(0, ThreadPool::kMaxThreads));
  cmd->add_option("--text-field", a->text_field, "JSONL only: the string field that holds each document's text")
      ->capture_default_str();
  cmd->add_option("--format", a->format,
                  "auto (JSONL for files named *.jsonl, plain text otherwise), text or jsonl for every file")
      ->capture_default_str();
  cmd->footer(
      "Tokens are counted without BOS or other added special tokens, and special-token strings in the corpus "
      "count as plain text. Ranking: count descending, lower id first on ties. The end tokens (eos_token_id from "
      "the configs, and <|eot_id|>, <|end_of_text|>, <|endoftext|>, <|im_end|>, <|end|>, </s> where the tokenizer "
      "has them) are always in the list: those not ranked high enough take the last places, displacing the "
      "lowest-ranked other tokens. A progress bar is drawn on stderr when it is a terminal; the summary (documents, "
      "tokens, time, and each list's coverage: its share of the corpus tokens) goes to stdout.");
  cmd->callback([a] { run_freq(*a); });
}

}  // namespace specula::cli
