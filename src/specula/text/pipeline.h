// The encode-side stages of a tokenizer.json: normalizers, pre-tokenizers and post-processors.
// Each is parsed strictly from its JSON object (unknown types or fields are errors naming the
// component path) and reproduces the corresponding Hugging Face `tokenizers` component on the
// text alone: offsets and alignments, which HF also tracks, are not needed to produce ids.
// Supported: normalizers NFC/NFD/NFKC/NFKD, Prepend, Replace, Sequence; pre-tokenizers Split,
// ByteLevel, Metaspace, Sequence; post-processors ByteLevel, TemplateProcessing, Sequence.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "specula/text/regex.h"

namespace specula::text {

// {"String": "..."} or {"Regex": "..."}, as used by Split and Replace (HF escapes a String
// pattern into a regex, which amounts to non-overlapping leftmost literal matches).
class TextPattern {
 public:
  static TextPattern from_json(const nlohmann::json& spec, const std::string& where);
  std::vector<Match> find_all(std::string_view text) const;
  bool is_literal() const { return !regex_.has_value(); }
  const std::string& literal() const { return literal_; }

 private:
  std::optional<Regex> regex_;
  std::string literal_;
};
// Replaces every match of `pattern` in `text` by `content`.
std::string replace_all(std::string_view text, const TextPattern& pattern, std::string_view content);

// The make_* builders below take `nesting`, how many Sequences enclose `spec`, and refuse more
// than json_fields::kMaxComponentNesting.

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // `text` is valid UTF-8 and stays so.
  virtual void normalize(std::string& text) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec, const std::string& where, int nesting = 0);

// A piece of text flowing through pre-tokenization. `at_original_start` says whether it begins at
// byte 0 of the text passed to encode (HF `offsets_original().0 == 0`), which Metaspace's
// prepend_scheme "first" depends on.
struct PreToken {
  std::string text;
  bool at_original_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits; empty pieces are dropped, as in HF.
  virtual void pre_tokenize(std::vector<PreToken>& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec, const std::string& where, int nesting = 0);

// A token id a post-processor inserts, and where the file defines it (for error messages).
struct InsertedToken {
  int32_t id = 0;
  std::string where;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
  // Every id process() can insert. The tokenizer checks at load that each names one of its tokens:
  // a template id without a token would reach the model as an id decode cannot show.
  virtual std::vector<InsertedToken> inserted_tokens() const { return {}; }
};
std::unique_ptr<PostProcessor> make_post_processor(const nlohmann::json& spec, const std::string& where,
                                                   int nesting = 0);

}  // namespace specula::text
