// The BPE model of a tokenizer.json ("model": {"type": "BPE", ...}).
// Reproduces Hugging Face `tokenizers` BPE (no dropout): each pre-token is split into characters
// (looked up in the vocab, with byte fallback to <0xXX> tokens and optional fused <unk>), then
// adjacent pairs are merged lowest rank first (ties: leftmost) with a priority queue over id pairs,
// the same algorithm and tie-breaking as HF's `Word::merge_all`, so splits are identical.
// `ignore_merges` (Llama-3) emits a pre-token that is itself in the vocab as one id.
// A small per-model cache of recent pre-tokens avoids re-merging frequent words.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace specula::text {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using TokenIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // `model` is the JSON object under "model"; `where` prefixes error messages.
  static BpeModel from_json(const nlohmann::json& model, const std::string& where);

  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;
  ~BpeModel();

  // Appends the ids of one pre-token (valid UTF-8; empty appends nothing).
  void tokenize(std::string_view piece, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // nullptr when the id has no token in the model vocab.
  const std::string* id_to_token(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  BpeModel();
  struct MergeTarget {
    int32_t rank;
    int32_t new_id;
  };
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    uint32_t byte_length;  // 0 marks a symbol merged into its left neighbour
  };
  void initial_symbols(std::string_view piece, std::vector<Symbol>& symbols) const;
  void merge_all(std::vector<Symbol>& symbols) const;
  const MergeTarget* find_merge(int32_t left, int32_t right) const;

  TokenIdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_present_;
  std::unordered_map<uint64_t, MergeTarget> merges_;
  std::optional<std::string> unk_token_;
  std::optional<std::string> continuing_subword_prefix_;
  std::optional<std::string> end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string where_;

  struct Cache;
  std::unique_ptr<Cache> cache_;
};

}  // namespace specula::text
