// Corpus token counting and the FR-Spec ranking rule (see frequency.h).
// One reader state is shared by the counting threads: a thread that needs work takes the lock,
// reads the next chunk (about chunk_bytes of whole documents or lines) from the current file and
// releases it, then tokenizes the chunk into its own count table. Reading is a small share of the
// time (tokenizing is about 1 MB/s per core), so a lock per chunk costs nothing measurable, and
// no thread waits for a batch to finish: memory is one chunk per thread plus the read buffer.
#include "specula/spec/frequency.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/core/thread_pool.h"
#include "specula/io/byte_reader.h"
#include "specula/io/strict_json.h"

namespace specula::spec {

namespace {

constexpr size_t kMinChunkBytes = 4096;
// The most eos ids a config may list (as model/config.cpp allows).
constexpr size_t kMaxListedEosIds = 1024;
constexpr const char* kEndTokenNames[] = {"<|eot_id|>", "<|end_of_text|>", "<|endoftext|>",
                                          "<|im_end|>", "<|end|>",         "</s>"};

bool is_blank_char(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }
bool is_space_char(char c) { return is_blank_char(c) || c == '\n'; }

bool has_non_space(std::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) { return !is_space_char(c); });
}

// Starts of the documents that begin inside `text` after its first byte: the start of each
// non-blank line whose previous line is blank (empty or only spaces, tabs, \r). The first line of
// `text` is never one (what precedes it is not known here).
std::vector<size_t> document_starts(std::string_view text) {
  std::vector<size_t> starts;
  bool previous_blank = false;
  size_t line = 0;
  while (line < text.size()) {
    size_t end = text.find('\n', line);
    if (end == std::string_view::npos) end = text.size();
    bool blank = true;
    for (size_t i = line; i < end; ++i) {
      if (!is_blank_char(text[i])) {
        blank = false;
        break;
      }
    }
    if (!blank && previous_blank && line > 0) starts.push_back(line);
    previous_blank = blank;
    line = end + 1;
  }
  return starts;
}

// Whether `text` ends with a blank line (so whatever follows starts a new document).
bool ends_with_blank_line(std::string_view text) {
  if (text.empty() || text.back() != '\n') return false;
  size_t i = text.size() - 1;
  while (i > 0 && is_blank_char(text[i - 1])) --i;
  return i == 0 || text[i - 1] == '\n';
}

// Where to cut a buffer that holds no document boundary: after its last newline, else before its
// last space or tab, else at a UTF-8 character boundary; only the second half is searched, so the
// chunk keeps at least half the buffer. Always in (0, size].
size_t forced_cut(std::string_view text) {
  const size_t half = text.size() / 2;
  if (const size_t nl = text.rfind('\n'); nl != std::string_view::npos && nl + 1 > half) return nl + 1;
  if (const size_t sp = text.find_last_of(" \t"); sp != std::string_view::npos && sp > half) return sp;
  // No whitespace: cut before the character that starts in the last four bytes (the buffer may
  // end inside a character, so its end is not a boundary).
  size_t cut = text.size() - 1;
  while (cut > 1 && text.size() - cut < 4 && (static_cast<uint8_t>(text[cut]) & 0xc0) == 0x80) --cut;
  return std::max<size_t>(cut, 1);
}

// Offset of the first byte where `text` stops being valid UTF-8 (text.size() when it is valid).
size_t first_invalid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    // Checking a whole character at a time with the shared strict checker keeps one definition.
    const auto c = static_cast<uint8_t>(text[i]);
    const size_t length = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (length == 0 || length > text.size() - i || !io::is_valid_utf8(text.substr(i, length))) return i;
    i += length;
  }
  return i;
}

bool ends_with_ci(const std::string& text, std::string_view suffix) {
  if (text.size() < suffix.size()) return false;
  for (size_t i = 0; i < suffix.size(); ++i) {
    const char a = text[text.size() - suffix.size() + i];
    if (std::tolower(static_cast<unsigned char>(a)) != suffix[i]) return false;
  }
  return true;
}

struct Chunk {
  size_t file = 0;
  uint64_t offset = 0;          // byte offset of text[0] in the file
  uint64_t first_line = 1;      // JSONL: line number of text's first line
  bool starts_document = true;  // text: text's first line starts a document (file start or after a blank line)
  std::string text;
};

// A regular file, checked without blocking (a FIFO is refused before any read); size in bytes.
uint64_t check_corpus_file(const std::string& path) {
  struct stat st {};
  SPECULA_CHECK(::stat(path.c_str(), &st) == 0, path, ": cannot read corpus file: ", std::strerror(errno));
  SPECULA_CHECK(S_ISREG(st.st_mode), path, ": not a regular file (a corpus must be a text or JSONL file)");
  return static_cast<uint64_t>(st.st_size);
}

// Sequential reader of one corpus file, producing chunks of whole documents (text) or lines (JSONL).
class CorpusFile {
 public:
  CorpusFile(const std::string& path, size_t index, bool jsonl, size_t chunk_bytes, size_t max_line_bytes)
      : path_(path), index_(index), jsonl_(jsonl), chunk_bytes_(chunk_bytes), max_line_bytes_(max_line_bytes) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    SPECULA_CHECK(fd_ >= 0, path, ": cannot open corpus file: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      fail(path, ": not a regular file (a corpus must be a text or JSONL file)");
    }
  }
  ~CorpusFile() { ::close(fd_); }
  CorpusFile(const CorpusFile&) = delete;
  CorpusFile& operator=(const CorpusFile&) = delete;

  bool next(Chunk& out) {
    fill(chunk_bytes_);
    if (buffer_.empty()) return false;
    const size_t cut = jsonl_ ? jsonl_cut() : text_cut();
    out.file = index_;
    out.offset = buffer_offset_;
    out.first_line = next_line_;
    out.starts_document = starts_document_;
    out.text.assign(buffer_, 0, cut);
    buffer_.erase(0, cut);
    buffer_offset_ += cut;
    if (jsonl_) next_line_ += static_cast<uint64_t>(std::count(out.text.begin(), out.text.end(), '\n'));
    else starts_document_ = ends_with_blank_line(out.text);
    return true;
  }

 private:
  // Reads until the buffer holds `want` bytes or the file ends.
  void fill(size_t want) {
    while (buffer_.size() < want && !eof_) {
      const size_t old = buffer_.size();
      buffer_.resize(want);
      const ssize_t n = ::read(fd_, buffer_.data() + old, want - old);
      if (n < 0) {
        const int err = errno;
        buffer_.resize(old);
        if (err == EINTR) continue;
        fail(path_, ": read failed at byte ", buffer_offset_ + old, ": ", std::strerror(err));
      }
      buffer_.resize(old + static_cast<size_t>(n));
      if (n == 0) eof_ = true;
    }
  }

  size_t text_cut() const {
    if (eof_) return buffer_.size();
    const std::vector<size_t> starts = document_starts(buffer_);
    return starts.empty() ? forced_cut(buffer_) : starts.back();
  }

  // Whole lines; a line longer than the buffer grows it, up to max_line_bytes_.
  size_t jsonl_cut() {
    size_t searched = 0;
    size_t want = chunk_bytes_;
    while (true) {
      const size_t nl = std::string_view(buffer_).substr(searched).rfind('\n');
      if (nl != std::string_view::npos) return searched + nl + 1;
      if (eof_) return buffer_.size();
      SPECULA_CHECK(buffer_.size() <= max_line_bytes_, path_, ":", next_line_, ": line longer than ",
                    max_line_bytes_, " bytes");
      searched = buffer_.size();
      want = std::min(want * 2, max_line_bytes_ + 1);
      fill(want);
    }
  }

  std::string path_;
  size_t index_;
  bool jsonl_;
  size_t chunk_bytes_;
  size_t max_line_bytes_;
  int fd_ = -1;
  std::string buffer_;
  uint64_t buffer_offset_ = 0;
  uint64_t next_line_ = 1;
  bool starts_document_ = true;
  bool eof_ = false;
};

// Everything the counting threads share.
class Counter {
 public:
  Counter(const text::Tokenizer& tokenizer, const std::vector<std::string>& files, std::vector<bool> jsonl,
          const CountOptions& options)
      : tokenizer_(tokenizer), files_(files), jsonl_(std::move(jsonl)), options_(options),
        vocab_(static_cast<size_t>(tokenizer.vocab_size())) {}

  // One thread's loop: take chunks until the corpus ends or another thread failed.
  void work(std::vector<uint64_t>& counts, bool report_progress, uint64_t bytes_total) {
    try {
      Chunk chunk;
      auto last_report = std::chrono::steady_clock::now();
      while (!failed_.load(std::memory_order_relaxed) && next_chunk(chunk)) {
        if (counts.empty()) counts.assign(vocab_, 0);
        if (jsonl_[chunk.file]) count_jsonl(chunk, counts);
        else count_text(chunk, counts);
        bytes_done_ += chunk.text.size();
        if (report_progress && options_.progress) {
          const auto now = std::chrono::steady_clock::now();
          if (now - last_report >= std::chrono::milliseconds(100)) {
            last_report = now;
            options_.progress({bytes_done_.load(), bytes_total, tokens_.load()});
          }
        }
      }
    } catch (...) {
      failed_ = true;
      throw;
    }
  }

  uint64_t documents() const { return documents_.load(); }
  uint64_t tokens() const { return tokens_.load(); }
  uint64_t bytes_done() const { return bytes_done_.load(); }

 private:
  bool next_chunk(Chunk& out) {
    std::lock_guard lock(mutex_);
    while (next_file_ <= files_.size()) {
      if (!current_) {
        if (next_file_ == files_.size()) return false;
        current_ = std::make_unique<CorpusFile>(files_[next_file_], next_file_, jsonl_[next_file_],
                                                std::max(options_.chunk_bytes, kMinChunkBytes),
                                                options_.max_line_bytes);
        ++next_file_;
      }
      if (current_->next(out)) return true;
      current_.reset();
    }
    return false;
  }

  void count_ids(std::string_view text, std::vector<uint64_t>& counts, const std::string& where) {
    const std::vector<int32_t> ids =
        with_context(where, [&] { return tokenizer_.encode(text, /*add_special_tokens=*/false, /*parse_special=*/false); });
    for (const int32_t id : ids) {
      SPECULA_CHECK(id >= 0 && static_cast<size_t>(id) < vocab_, where, ": tokenizer produced id ", id,
                    " outside its vocabulary of ", vocab_);
      ++counts[static_cast<size_t>(id)];
    }
    tokens_ += ids.size();
  }

  void count_text(const Chunk& chunk, std::vector<uint64_t>& counts) {
    const std::string& path = files_[chunk.file];
    const std::string_view text = chunk.text;
    if (const size_t bad = first_invalid_utf8(text); bad < text.size())
      fail(path, ": invalid UTF-8 at byte ", chunk.offset + bad, " (a text corpus must be UTF-8)");
    std::vector<size_t> bounds = document_starts(text);
    bounds.insert(bounds.begin(), 0);
    bounds.push_back(text.size());
    uint64_t documents = 0;
    for (size_t j = 0; j + 1 < bounds.size(); ++j) {
      const std::string_view segment = text.substr(bounds[j], bounds[j + 1] - bounds[j]);
      if (segment.empty()) continue;
      if (j > 0 || (chunk.starts_document && has_non_space(segment))) ++documents;
      count_ids(segment, counts, path + ": byte " + std::to_string(chunk.offset + bounds[j]));
    }
    documents_ += documents;
  }

  void count_jsonl(const Chunk& chunk, std::vector<uint64_t>& counts) {
    const std::string& path = files_[chunk.file];
    const std::string_view text = chunk.text;
    uint64_t line_number = chunk.first_line;
    uint64_t documents = 0;
    for (size_t pos = 0; pos < text.size(); ++line_number) {
      size_t end = text.find('\n', pos);
      if (end == std::string_view::npos) end = text.size();
      std::string_view line = text.substr(pos, end - pos);
      pos = end + 1;
      if (!has_non_space(line)) continue;
      const std::string where = path + ":" + std::to_string(line_number);
      const nlohmann::json object = io::parse_strict_json_object(line, where);
      const auto field = object.find(options_.text_field);
      SPECULA_CHECK(field != object.end(), where, ": the object has no '", io::text_excerpt(options_.text_field),
                    "' field (choose the field with --text-field)");
      SPECULA_CHECK(field->is_string(), where, ": field '", io::text_excerpt(options_.text_field), "' is ",
                    field->type_name(), ", not a string");
      count_ids(field->get_ref<const std::string&>(), counts, where);
      ++documents;
    }
    documents_ += documents;
  }

  const text::Tokenizer& tokenizer_;
  const std::vector<std::string>& files_;
  const std::vector<bool> jsonl_;
  const CountOptions& options_;
  const size_t vocab_;

  std::mutex mutex_;  // guards next_file_ and current_
  size_t next_file_ = 0;
  std::unique_ptr<CorpusFile> current_;

  std::atomic<bool> failed_{false};
  std::atomic<uint64_t> documents_{0}, tokens_{0}, bytes_done_{0};
};

void add_config_eos(const std::string& path, int32_t vocab, std::vector<int32_t>& out) {
  if (!input_present(path)) return;
  const nlohmann::json config = io::parse_strict_json_object(read_text_file(path, kMaxConfigFileBytes), path);
  const auto it = config.find("eos_token_id");
  if (it == config.end() || it->is_null()) return;
  const auto add = [&](const nlohmann::json& v) {
    SPECULA_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < vocab, path,
                  ": 'eos_token_id' holds ", io::json_excerpt(v), ", not a token id of the tokenizer (0 to ",
                  vocab - 1, ")");
    const auto id = static_cast<int32_t>(v.get<int64_t>());
    if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
  };
  if (it->is_array()) {
    SPECULA_CHECK(it->size() <= kMaxListedEosIds, path, ": 'eos_token_id' lists ", it->size(), " ids, more than the ",
                  kMaxListedEosIds, " allowed");
    for (const nlohmann::json& v : *it) add(v);
  } else {
    add(*it);
  }
}

}  // namespace

TokenCounts count_corpus_tokens(const text::Tokenizer& tokenizer, const std::vector<std::string>& files,
                                const CountOptions& options) {
  SPECULA_CHECK(!files.empty(), "no corpus files given");
  SPECULA_CHECK(!options.text_field.empty(), "the JSONL text field name is empty");
  std::vector<bool> jsonl;
  uint64_t bytes_total = 0;
  for (const std::string& path : files) {
    bytes_total += check_corpus_file(path);  // every file checked before any counting starts
    jsonl.push_back(options.format == CorpusFormat::Jsonl ||
                    (options.format == CorpusFormat::Auto && ends_with_ci(path, ".jsonl")));
  }

  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = std::min(options.threads > 0 ? options.threads : cores, cores);
  ThreadPool pool(threads);
  Counter counter(tokenizer, files, std::move(jsonl), options);
  std::vector<std::vector<uint64_t>> tables(static_cast<size_t>(pool.size()));
  pool.parallel_for(pool.size(), [&](int64_t begin, int64_t end) {
    for (int64_t slot = begin; slot < end; ++slot)  // one slot per thread; slot 0 is the calling thread
      counter.work(tables[static_cast<size_t>(slot)], slot == 0, bytes_total);
  });

  TokenCounts result;
  result.counts.assign(static_cast<size_t>(tokenizer.vocab_size()), 0);
  for (const std::vector<uint64_t>& table : tables)
    for (size_t id = 0; id < table.size(); ++id) result.counts[id] += table[id];
  result.documents = counter.documents();
  result.tokens = counter.tokens();
  result.bytes = counter.bytes_done();
  result.threads = pool.size();
  if (options.progress) options.progress({result.bytes, bytes_total, result.tokens});
  return result;
}

std::vector<int32_t> end_token_ids(const text::Tokenizer& tokenizer, const std::string& model_dir) {
  std::vector<int32_t> ids;
  const int32_t vocab = tokenizer.vocab_size();
  add_config_eos(model_dir + "/generation_config.json", vocab, ids);
  add_config_eos(model_dir + "/config.json", vocab, ids);
  for (const char* name : kEndTokenNames) {
    const std::optional<int32_t> id = tokenizer.token_to_id(name);
    if (id && std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  }
  return ids;
}

std::vector<int32_t> rank_by_frequency(std::span<const uint64_t> counts, int64_t size,
                                       std::span<const int32_t> forced, std::span<const uint8_t> usable) {
  const size_t vocab = counts.size();
  SPECULA_CHECK(vocab <= static_cast<size_t>(std::numeric_limits<int32_t>::max()) + 1, "vocabulary of ", vocab,
                " ids is larger than int32 token ids allow");
  SPECULA_CHECK(usable.empty() || usable.size() == vocab, "usable-id mask has ", usable.size(), " entries for ",
                vocab, " ids");
  const auto is_usable = [&](size_t id) { return usable.empty() || usable[id] != 0; };
  size_t candidates = 0;
  for (size_t id = 0; id < vocab; ++id) candidates += is_usable(id) ? 1 : 0;
  SPECULA_CHECK(size >= 1, "list size must be at least 1, got ", size);
  SPECULA_CHECK(static_cast<uint64_t>(size) <= candidates, "list size ", size, " is larger than the vocabulary (",
                candidates, " tokens)");

  std::vector<uint8_t> is_forced(vocab, 0);
  std::vector<int32_t> list;
  for (const int32_t id : forced) {
    SPECULA_CHECK(id >= 0 && static_cast<size_t>(id) < vocab && is_usable(static_cast<size_t>(id)), "end token id ",
                  id, " is not a token of the vocabulary (", vocab, " ids)");
    if (!is_forced[static_cast<size_t>(id)]) {
      is_forced[static_cast<size_t>(id)] = 1;
      list.push_back(id);
    }
  }
  SPECULA_CHECK(list.size() <= static_cast<uint64_t>(size), "list size ", size, " cannot hold the ", list.size(),
                " end tokens that every list keeps");

  const auto ranks_before = [&](int32_t a, int32_t b) {
    const uint64_t ca = counts[static_cast<size_t>(a)], cb = counts[static_cast<size_t>(b)];
    return ca != cb ? ca > cb : a < b;
  };
  std::vector<int32_t> others;
  others.reserve(candidates);
  for (size_t id = 0; id < vocab; ++id)
    if (is_usable(id) && !is_forced[id]) others.push_back(static_cast<int32_t>(id));
  const auto take = static_cast<std::ptrdiff_t>(static_cast<size_t>(size) - list.size());
  std::partial_sort(others.begin(), others.begin() + take, others.end(), ranks_before);
  list.insert(list.end(), others.begin(), others.begin() + take);
  std::sort(list.begin(), list.end(), ranks_before);
  return list;
}

double token_coverage(std::span<const uint64_t> counts, std::span<const int32_t> ids) {
  uint64_t total = 0, inside = 0;
  for (const uint64_t c : counts) total += c;
  for (const int32_t id : ids)
    if (id >= 0 && static_cast<size_t>(id) < counts.size()) inside += counts[static_cast<size_t>(id)];
  return total == 0 ? 0.0 : static_cast<double>(inside) / static_cast<double>(total);
}

std::vector<uint8_t> defined_token_ids(const text::Tokenizer& tokenizer) {
  std::vector<uint8_t> defined(static_cast<size_t>(tokenizer.vocab_size()), 0);
  for (size_t id = 0; id < defined.size(); ++id)
    defined[id] = tokenizer.id_to_token(static_cast<int32_t>(id)).empty() ? 0 : 1;
  return defined;
}

}  // namespace specula::spec
