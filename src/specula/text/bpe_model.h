// The BPE model of a tokenizer.json ("model": {"type": "BPE", ...}).
// Reproduces Hugging Face `tokenizers` BPE (no dropout): each pre-token is split into characters
// (looked up in the vocab, with byte fallback to <0xXX> tokens and optional fused <unk>), then
// adjacent pairs are merged lowest rank first (ties: leftmost) with a priority queue over id pairs,
// the same algorithm and tie-breaking as HF's `Word::merge_all`, so splits are identical.
// `ignore_merges` (Llama-3) emits a pre-token that is itself in the vocab as one id.
// Vocab and merges live in flat open-addressing tables (token bytes in one arena): a 150k-token
// vocab with 280k merges loads in well under a second and lookups stay cache-friendly. A bounded
// cache of recent pre-tokens avoids re-merging frequent words.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace specula::text {

// Open-addressing map from token bytes to id; the bytes are copied into one arena.
class TokenTable {
 public:
  void reserve(size_t count);
  // Inserts `token`; false (and no change) when it is already there.
  bool insert(std::string_view token, int32_t id);
  // -1 when absent.
  int32_t find(std::string_view token) const;
  size_t size() const { return count_; }
  template <typename Visit>
  void for_each(Visit&& visit) const {
    for (const Slot& s : slots_) {
      if (s.id >= 0) visit(std::string_view(arena_.data() + s.offset, s.length), s.id);
    }
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t offset = 0;
    uint32_t length = 0;
    int32_t id = -1;
  };
  void grow();
  std::vector<char> arena_;  // a vector so views into it survive moves
  std::vector<Slot> slots_;
  size_t count_ = 0;
};

// The two large tables of a BPE model, as read from the file. The streaming JSON reader fills
// them directly (see tokenizer_json.h); `bpe_tables_from_dom` does it from a parsed object.
struct BpeTables {
  bool vocab_present = false;
  std::vector<std::pair<std::string, int64_t>> vocab;  // file order
  struct Merge {
    std::string first;  // a whole "a b" line when !is_pair
    std::string second;
    bool is_pair = false;
  };
  bool merges_present = false;
  std::vector<Merge> merges;
};
BpeTables bpe_tables_from_dom(const nlohmann::json& model, const std::string& where);

// Tables indexed by token id are as long as the largest id, not as the number of tokens, so a
// file defining three tokens, one with id 300,000,000, would make them allocate gigabytes. Real
// vocabularies are dense (ids 0..n-1, added tokens right after, at most a few gaps), so every id
// must be below this bound on the number of tokens the file defines (vocab entries plus added
// tokens): the id tables then stay within a small multiple of the file's own size.
int64_t token_id_limit(size_t defined_tokens);
// Throws, prefixing `where`, unless 0 <= id < token_id_limit(defined_tokens).
void check_token_id_bound(int64_t id, size_t defined_tokens, const std::string& where);

class BpeModel {
 public:
  // `model` is the JSON object under "model" (its "vocab"/"merges" may already be moved into
  // `tables`); `where` prefixes error messages. Ids must be below token_id_limit(defined_tokens),
  // where `defined_tokens` counts all tokens of the file (vocab and added tokens). A token listed
  // twice in the vocab is an error (which id would it have?).
  static BpeModel from_json(const nlohmann::json& model, BpeTables tables, const std::string& where,
                            size_t defined_tokens);

  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;
  ~BpeModel();

  // Appends the ids of one pre-token (valid UTF-8; empty appends nothing).
  void tokenize(std::string_view piece, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string_view> id_to_token(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  BpeModel();
  struct MergeTarget {
    int32_t rank;
    int32_t new_id;
  };
  // Open-addressing map from an id pair to its merge.
  class MergeTable {
   public:
    void reserve(size_t count);
    void insert_or_assign(int32_t left, int32_t right, MergeTarget target);
    const MergeTarget* find(int32_t left, int32_t right) const;

   private:
    struct Slot {
      uint64_t key = 0;
      MergeTarget target{-1, -1};  // rank -1: empty
    };
    void grow();
    std::vector<Slot> slots_;
    size_t count_ = 0;
  };
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    uint32_t byte_length;  // 0 marks a symbol merged into its left neighbour
  };
  void initial_symbols(std::string_view piece, std::vector<Symbol>& symbols) const;
  void merge_all(std::vector<Symbol>& symbols) const;

  TokenTable vocab_;
  std::vector<std::string_view> id_to_token_;  // views into vocab_'s arena
  std::vector<uint8_t> id_present_;
  MergeTable merges_;
  std::optional<std::string> unk_token_;
  std::optional<std::string> continuing_subword_prefix_;
  std::optional<std::string> end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_fallback_ids_{};  // -1 where <0xXX> is not in the vocab
  std::string where_;

  struct Cache;
  std::unique_ptr<Cache> cache_;
};

}  // namespace specula::text
