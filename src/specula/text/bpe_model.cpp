// BPE model: loading (vocab, both merge serializations, option fields) and per-pre-token merging.
// The merge loop mirrors HF `Word::merge_all` step by step (including how stale queue entries are
// recognised), because any other tie-breaking can produce a different, equally "valid" split.
#include "specula/text/bpe_model.h"

#include <cstdio>
#include <mutex>
#include <queue>
#include <shared_mutex>

#include "specula/core/error.h"
#include "specula/text/json_fields.h"
#include "specula/text/unicode.h"

namespace specula::text {
namespace {

using json_fields::Json;

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Frequent pre-tokens (" the", "\n") recur thousands of times in a long prompt.
constexpr size_t kCacheCapacity = 1 << 16;
constexpr size_t kCacheMaxPieceBytes = 64;

}  // namespace

struct BpeModel::Cache {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> entries;
};

BpeModel::BpeModel() : cache_(std::make_unique<Cache>()) {}
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;
BpeModel::~BpeModel() = default;

BpeModel BpeModel::from_json(const Json& model, const std::string& where) {
  json_fields::require_object(model, where);
  json_fields::check_known_keys(model,
                                {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                                 "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"},
                                where);
  BpeModel bpe;
  bpe.where_ = where;
  if (const Json* dropout = json_fields::find_field(model, "dropout"); dropout != nullptr && !dropout->is_null()) {
    SPECULA_CHECK(dropout->is_number(), where, ": field 'dropout' must be a number or null");
    // Dropout makes encoding random; a tokenizer for inference never has it on.
    SPECULA_CHECK(dropout->get<double>() == 0.0, where, ": BPE dropout ", dropout->get<double>(),
                  " is not supported");
  }
  bpe.unk_token_ = json_fields::get_optional_string(model, "unk_token", where);
  bpe.continuing_subword_prefix_ = json_fields::get_optional_string(model, "continuing_subword_prefix", where);
  bpe.end_of_word_suffix_ = json_fields::get_optional_string(model, "end_of_word_suffix", where);
  bpe.fuse_unk_ = json_fields::get_bool(model, "fuse_unk", false, where);
  bpe.byte_fallback_ = json_fields::get_bool(model, "byte_fallback", false, where);
  bpe.ignore_merges_ = json_fields::get_bool(model, "ignore_merges", false, where);

  const Json& vocab = json_fields::require_field(model, "vocab", where);
  SPECULA_CHECK(vocab.is_object(), where, ": field 'vocab' must be an object of token -> id");
  bpe.vocab_.reserve(vocab.size());
  int32_t max_id = -1;
  for (const auto& [token, id_json] : vocab.items()) {
    const int32_t id = json_fields::checked_token_id(id_json, where + ": vocab['" + token + "']");
    bpe.vocab_.emplace(token, id);
    max_id = std::max(max_id, id);
  }
  bpe.id_to_token_.resize(static_cast<size_t>(max_id + 1));
  bpe.id_present_.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [token, id] : bpe.vocab_) {
    SPECULA_CHECK(!bpe.id_present_[id], where, ": vocab maps two tokens to id ", id, " ('", bpe.id_to_token_[id],
                  "' and '", token, "')");
    bpe.id_present_[id] = true;
    bpe.id_to_token_[id] = token;
  }

  const Json& merges = json_fields::require_field(model, "merges", where);
  SPECULA_CHECK(merges.is_array(), where, ": field 'merges' must be an array");
  const size_t prefix_length = bpe.continuing_subword_prefix_ ? bpe.continuing_subword_prefix_->size() : 0;
  bpe.merges_.reserve(merges.size());
  int32_t rank = 0;
  size_t index = 0;
  std::string merged;
  for (const Json& merge : merges) {
    std::string_view left, right;
    std::string line_storage;
    if (merge.is_string()) {
      // Legacy "a b" lines; HF skips a "#version" header line without giving it a rank.
      const std::string& line = merge.get_ref<const std::string&>();
      if (line.rfind("#version", 0) == 0) {
        ++index;
        continue;
      }
      const size_t space = line.find(' ');
      SPECULA_CHECK(space != std::string::npos && line.find(' ', space + 1) == std::string::npos, where,
                    ": merges[", index, "] \"", line, "\" is not two tokens separated by one space");
      left = std::string_view(line).substr(0, space);
      right = std::string_view(line).substr(space + 1);
    } else if (merge.is_array()) {
      SPECULA_CHECK(merge.size() == 2 && merge[0].is_string() && merge[1].is_string(), where, ": merges[", index,
                    "] must be a pair of strings");
      left = merge[0].get_ref<const std::string&>();
      right = merge[1].get_ref<const std::string&>();
    } else {
      fail(where, ": merges[", index, "] must be a string \"a b\" or a pair [\"a\", \"b\"], found ",
           json_fields::type_name(merge));
    }
    auto left_it = bpe.vocab_.find(left);
    SPECULA_CHECK(left_it != bpe.vocab_.end(), where, ": merges[", index, "] refers to token '", left,
                  "' which is not in the vocab");
    auto right_it = bpe.vocab_.find(right);
    SPECULA_CHECK(right_it != bpe.vocab_.end(), where, ": merges[", index, "] refers to token '", right,
                  "' which is not in the vocab");
    SPECULA_CHECK(right.size() >= prefix_length, where, ": merges[", index, "]: token '", right,
                  "' is shorter than continuing_subword_prefix");
    merged.assign(left);
    merged.append(right.substr(prefix_length));
    auto merged_it = bpe.vocab_.find(merged);
    SPECULA_CHECK(merged_it != bpe.vocab_.end(), where, ": merges[", index, "]: merged token '", merged,
                  "' is not in the vocab");
    // A repeated pair keeps its last rank, as HF's map construction does.
    bpe.merges_[pair_key(left_it->second, right_it->second)] = MergeTarget{rank, merged_it->second};
    ++rank;
    ++index;
  }
  return bpe;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) return nullptr;
  return &id_to_token_[id];
}

const BpeModel::MergeTarget* BpeModel::find_merge(int32_t left, int32_t right) const {
  auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::initial_symbols(std::string_view piece, std::vector<Symbol>& symbols) const {
  auto add = [&symbols](int32_t id, uint32_t byte_length) {
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, -1, byte_length});
    if (index > 0) symbols[index - 1].next = index;
  };
  struct PendingUnk {
    bool active = false;
    int32_t id = 0;
    uint32_t byte_length = 0;
  } pending_unk;
  std::string decorated;
  size_t pos = 0;
  while (pos < piece.size()) {
    const size_t length = utf8_sequence_length(static_cast<unsigned char>(piece[pos]));
    const bool is_first = pos == 0;
    const bool is_last = pos + length >= piece.size();
    std::string_view key = piece.substr(pos, length);
    if ((!is_first && continuing_subword_prefix_) || (is_last && end_of_word_suffix_)) {
      decorated.clear();
      if (!is_first && continuing_subword_prefix_) decorated += *continuing_subword_prefix_;
      decorated += key;
      if (is_last && end_of_word_suffix_) decorated += *end_of_word_suffix_;
      key = decorated;
    }
    pos += length;
    if (auto it = vocab_.find(key); it != vocab_.end()) {
      if (pending_unk.active) add(pending_unk.id, pending_unk.byte_length);
      pending_unk.active = false;
      add(it->second, static_cast<uint32_t>(length));
      continue;
    }
    if (byte_fallback_) {
      // All bytes must have a <0xXX> token, else the character goes to <unk> (HF behaviour).
      int32_t byte_ids[16];
      bool all_found = key.size() <= 16;
      for (size_t b = 0; all_found && b < key.size(); ++b) {
        char name[8];
        std::snprintf(name, sizeof(name), "<0x%02X>", static_cast<unsigned char>(key[b]));
        auto it = vocab_.find(std::string_view(name, 6));
        all_found = it != vocab_.end();
        if (all_found) byte_ids[b] = it->second;
      }
      if (all_found) {
        for (size_t b = 0; b < key.size(); ++b) add(byte_ids[b], 1);
        continue;
      }
    }
    if (unk_token_) {
      auto unk_it = vocab_.find(*unk_token_);
      SPECULA_CHECK(unk_it != vocab_.end(), where_, ": unk_token '", *unk_token_, "' is not in the vocab");
      if (pending_unk.active && fuse_unk_) {
        pending_unk.byte_length += static_cast<uint32_t>(length);
      } else {
        if (pending_unk.active) add(pending_unk.id, pending_unk.byte_length);
        pending_unk = {true, unk_it->second, static_cast<uint32_t>(length)};
      }
    }
    // Without byte fallback or unk_token, HF drops the character; so do we.
  }
  if (pending_unk.active) add(pending_unk.id, pending_unk.byte_length);
}

void BpeModel::merge_all(std::vector<Symbol>& symbols) const {
  struct QueuedMerge {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  // Lowest rank first; among equal ranks the leftmost position.
  auto lower_priority = [](const QueuedMerge& a, const QueuedMerge& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<QueuedMerge, std::vector<QueuedMerge>, decltype(lower_priority)> queue(lower_priority);
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeTarget* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const QueuedMerge top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.pos];
    if (current.byte_length == 0 || current.next == -1) continue;
    const int32_t next_pos = current.next;
    const Symbol right = symbols[next_pos];
    // The entry is stale if the pair at this position changed since it was queued.
    const MergeTarget* still = find_merge(current.id, right.id);
    if (still == nullptr || still->new_id != top.new_id) continue;

    current.id = top.new_id;
    current.byte_length += right.byte_length;
    current.next = right.next;
    symbols[next_pos].byte_length = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;

    if (current.prev >= 0) {
      if (const MergeTarget* m = find_merge(symbols[current.prev].id, current.id)) {
        queue.push({m->rank, current.prev, m->new_id});
      }
    }
    if (current.next >= 0) {
      if (const MergeTarget* m = find_merge(current.id, symbols[current.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kCacheMaxPieceBytes;
  if (cacheable) {
    std::shared_lock lock(cache_->mutex);
    if (auto it = cache_->entries.find(piece); it != cache_->entries.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  initial_symbols(piece, symbols);
  merge_all(symbols);
  const size_t first = ids.size();
  for (const Symbol& s : symbols) {
    if (s.byte_length != 0) ids.push_back(s.id);
  }
  if (cacheable) {
    std::unique_lock lock(cache_->mutex);
    if (cache_->entries.size() < kCacheCapacity) {
      cache_->entries.emplace(std::string(piece), std::vector<int32_t>(ids.begin() + first, ids.end()));
    }
  }
}

}  // namespace specula::text
