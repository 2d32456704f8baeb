// Hugging Face `tokenizer.json` tokenizer: encode text to ids and decode ids to text exactly as the
// HF `tokenizers` library does (checked against goldens from tokenizers 0.23.2 for Llama-3, Qwen3 and
// a Llama-2-style SentencePiece BPE), without Python or Rust.
//
// Supported components (anything else is rejected at load with an error naming the component and
// the file, so a tokenizer is never silently approximated):
//   model          BPE (merges as "a b" strings or ["a","b"] pairs; ignore_merges, byte_fallback,
//                  unk_token + fuse_unk, continuing_subword_prefix, end_of_word_suffix; no dropout)
//   added_tokens   leftmost-longest matching with lstrip, rstrip, single_word, normalized, special
//   normalizer     NFC, NFD, NFKC, NFKD (utf8proc), Prepend, Replace, Sequence
//   pre_tokenizer  Split (Oniguruma regex run by PCRE2, see regex.h), ByteLevel, Metaspace, Sequence
//   post_processor ByteLevel, TemplateProcessing (single sequences), Sequence
//   decoder        ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence
// `truncation` and `padding` in the file are ignored, as transformers' tokenizers ignore them
// unless a call asks for them.
//
// Differences from HF that remain: Unicode tables are those of the installed PCRE2 and utf8proc
// (HF uses Oniguruma's and Rust crates'), so characters assigned in newer Unicode versions may be
// classified differently; ids outside the vocabulary are skipped by decode, as HF does.
//
// A Tokenizer is immutable after loading (a BPE cache inside is internally synchronised), cheap to
// copy (shared state) and safe to use from several threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace specula::text {

class Tokenizer {
 public:
  // Errors (specula::Error) name the file and the offending component or field.
  static Tokenizer from_file(const std::string& tokenizer_json_path);
  static Tokenizer from_json_string(const std::string& json, const std::string& source_name);

  // parse_special: whether special added-token strings inside `text` become their ids (true = HF
  // default). Pass false for untrusted user content: special tokens (special: true, e.g.
  // <|im_end|>, <|eot_id|>) are then tokenized as plain text, as HF's `encode_special_tokens` /
  // transformers' `split_special_tokens` do. Non-special added tokens (Qwen's <think>,
  // <tool_call>) are still recognised either way, again as in HF.
  // `text` must be valid UTF-8 (an Error says where it is not).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true, bool parse_special = true) const;
  // Ids without a token (beyond the vocabulary) are skipped, as in HF.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  // One token's text as raw bytes, for per-token logprobs: the decoder applied to this token
  // alone, except that byte-level and <0xXX> tokens give their bytes as they are, also when they
  // are only part of a UTF-8 character (decode() would give U+FFFD). "" for an unknown id.
  std::string token_bytes(int32_t id) const;

  int32_t vocab_size() const;  // max id + 1 over vocab and added tokens
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // raw token string ("" if none)
  bool is_special(int32_t id) const;          // an added token marked special

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
  friend class StreamDecoder;
};

// Incremental detokenizer for streaming generation. push() returns only text that is final: the
// concatenation of all push() results and flush() equals tokenizer.decode(all ids) exactly, decoders
// such as Strip and Metaspace included. Text is held back while a later token could still change
// it: an incomplete UTF-8 sequence of byte-level tokens, and a run of <0xXX> byte-fallback tokens
// until a non-byte token (or flush) closes it, because HF decodes such a run as a whole (an
// invalid run becomes one U+FFFD per byte). flush() ends the sequence; a later push() starts a new
// one. Keeps the tokenizer's state alive by itself.
class StreamDecoder {
 public:
  StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);
  StreamDecoder(StreamDecoder&&) noexcept;
  StreamDecoder& operator=(StreamDecoder&&) noexcept;
  ~StreamDecoder();

  std::string push(int32_t id);
  std::string flush();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace specula::text
