// Building FR-Spec lists: token counts over a corpus, the end tokens a list must keep, and the
// ranking rule. `specula freq` is a thin front end over these.
//
// Corpus files are streamed in chunks of about CountOptions::chunk_bytes and tokenized by a pool
// of threads, each with its own count table; memory stays at a few chunks plus one table per
// thread whatever the corpus size. Text is encoded without special tokens (no BOS) and with
// special-token strings treated as plain text, so a corpus cannot inject ids.
//
// Plain text: a document ends at a blank line (a line that is empty or holds only spaces, tabs
// or \r); the next document starts at the first non-blank line after it. Each document is
// tokenized on its own, blank lines included with the document they end, so no text is dropped.
// A document longer than chunk_bytes is cut near the chunk boundary after its last newline, else
// before its last space or tab, else at a UTF-8 character boundary; its parts are tokenized
// separately but count as one document. Text must be valid UTF-8 (an error names the file and
// the byte offset).
// JSONL: one JSON object per line; the string field `text_field` of each is one document. Empty
// lines are skipped; any other line that is not such an object is an error naming file:line.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "specula/text/tokenizer.h"

namespace specula::spec {

enum class CorpusFormat {
  Auto,   // per file: JSONL when the name ends in .jsonl, else plain text
  Text,
  Jsonl,
};

struct CorpusProgress {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;  // sizes of all corpus files
  uint64_t tokens = 0;
};

struct CountOptions {
  CorpusFormat format = CorpusFormat::Auto;
  std::string text_field = "text";
  int threads = 0;  // 0: one per core; more than the machine's cores are not started
  size_t chunk_bytes = size_t{1} << 20;  // text handed to a thread at a time (at least 4096)
  size_t max_line_bytes = size_t{64} << 20;  // JSONL: a longer line is an error naming file:line
  // Called on the calling thread after chunks finish, at most about 10 times a second, and once at the end.
  std::function<void(const CorpusProgress&)> progress;
};

struct TokenCounts {
  std::vector<uint64_t> counts;  // per token id; tokenizer.vocab_size() entries
  uint64_t documents = 0;
  uint64_t tokens = 0;
  uint64_t bytes = 0;
  int threads = 0;  // threads that counted
};

// Counts the tokens of every file in `files`, in order. Throws specula::Error naming the file
// (and line or byte offset) for a missing or non-regular file, invalid UTF-8, or a bad JSONL line.
TokenCounts count_corpus_tokens(const text::Tokenizer& tokenizer, const std::vector<std::string>& files,
                                const CountOptions& options = {});

// The ids an FR-Spec list must always hold: eos_token_id of generation_config.json and
// config.json when `model_dir` has them (an int or a list; ids outside the tokenizer are an
// error), then those of <|eot_id|>, <|end_of_text|>, <|endoftext|>, <|im_end|>, <|end|> and </s>
// that the tokenizer defines; in that order, without repeats.
std::vector<int32_t> end_token_ids(const text::Tokenizer& tokenizer, const std::string& model_dir);

// The ranking rule. Candidates are the ids in [0, counts.size()) whose `usable` entry is nonzero
// (every id when `usable` is empty). The list holds every id of `forced` and the most frequent
// other candidates (count descending, lower id first on ties) up to exactly `size` entries, then
// is ordered by that same rule, so forced ids that were not among the top take the last places,
// displacing the lowest-ranked others. Errors: size < 1, more than the candidates, fewer than the
// forced ids; a forced id that is not a candidate.
std::vector<int32_t> rank_by_frequency(std::span<const uint64_t> counts, int64_t size,
                                       std::span<const int32_t> forced, std::span<const uint8_t> usable = {});

// The share of all counted tokens whose id is in `ids` (0 when nothing was counted).
double token_coverage(std::span<const uint64_t> counts, std::span<const int32_t> ids);

// Which ids of the tokenizer have a token (1) and which are holes in its id space (0).
std::vector<uint8_t> defined_token_ids(const text::Tokenizer& tokenizer);

}  // namespace specula::spec
