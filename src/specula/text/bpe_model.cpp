// BPE model: loading (vocab, both merge serializations, option fields) and per-pre-token merging.
// The merge loop mirrors HF `Word::merge_all` step by step (including how stale queue entries are
// recognised), because any other tie-breaking can produce a different, equally "valid" split.
#include "specula/text/bpe_model.h"

#include <bit>
#include <cstdio>
#include <limits>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <unordered_map>

#include "specula/core/error.h"
#include "specula/io/strict_json.h"
#include "specula/text/json_fields.h"
#include "specula/text/unicode.h"

namespace specula::text {
namespace {

using json_fields::Json;

// token_id_limit: ids may run to twice the number of tokens defined, plus this much so that small
// hand-made tokenizers (tests, demos) can leave gaps; a 4096-entry gap costs under 100 KB.
constexpr int64_t kTokenIdHeadroom = 4096;

// Frequent pre-tokens (" the", "\n") recur thousands of times in a long prompt.
constexpr size_t kCacheCapacity = 1 << 16;
constexpr size_t kCacheMaxPieceBytes = 64;

uint64_t hash_bytes(std::string_view s) { return std::hash<std::string_view>{}(s); }

uint64_t mix_pair(uint64_t key) {
  key ^= key >> 31;
  key *= 0x9E3779B97F4A7C15ULL;
  return key ^ (key >> 29);
}

struct TransparentStringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// TokenTable

void TokenTable::reserve(size_t count) {
  size_t capacity = 16;
  while (capacity < count * 2) capacity *= 2;
  if (capacity <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(capacity, Slot{});
  const size_t mask = capacity - 1;
  for (const Slot& s : old) {
    if (s.id < 0) continue;
    size_t i = s.hash & mask;
    while (slots_[i].id >= 0) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

void TokenTable::grow() { reserve(std::max<size_t>(16, count_ * 2 + 2)); }

bool TokenTable::insert(std::string_view token, int32_t id) {
  if ((count_ + 1) * 2 > slots_.size()) grow();
  const uint64_t hash = hash_bytes(token);
  const size_t mask = slots_.size() - 1;
  size_t i = hash & mask;
  for (; slots_[i].id >= 0; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.hash == hash && std::string_view(arena_.data() + s.offset, s.length) == token) return false;
  }
  SPECULA_CHECK(arena_.size() + token.size() < std::numeric_limits<uint32_t>::max(), "vocabulary too large");
  const auto offset = static_cast<uint32_t>(arena_.size());
  arena_.insert(arena_.end(), token.begin(), token.end());
  slots_[i] = Slot{hash, offset, static_cast<uint32_t>(token.size()), id};
  ++count_;
  return true;
}

int32_t TokenTable::find(std::string_view token) const {
  if (slots_.empty()) return -1;
  const uint64_t hash = hash_bytes(token);
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash & mask; slots_[i].id >= 0; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.hash == hash && s.length == token.size() && std::string_view(arena_.data() + s.offset, s.length) == token) {
      return s.id;
    }
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// MergeTable

void BpeModel::MergeTable::reserve(size_t count) {
  size_t capacity = 16;
  while (capacity < count * 2) capacity *= 2;
  if (capacity <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(capacity, Slot{});
  const size_t mask = capacity - 1;
  for (const Slot& s : old) {
    if (s.target.rank < 0) continue;
    size_t i = mix_pair(s.key) & mask;
    while (slots_[i].target.rank >= 0) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

void BpeModel::MergeTable::grow() { reserve(std::max<size_t>(16, count_ * 2 + 2)); }

void BpeModel::MergeTable::insert_or_assign(int32_t left, int32_t right, MergeTarget target) {
  if ((count_ + 1) * 2 > slots_.size()) grow();
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  const size_t mask = slots_.size() - 1;
  size_t i = mix_pair(key) & mask;
  for (; slots_[i].target.rank >= 0; i = (i + 1) & mask) {
    if (slots_[i].key == key) {
      slots_[i].target = target;
      return;
    }
  }
  slots_[i] = Slot{key, target};
  ++count_;
}

const BpeModel::MergeTarget* BpeModel::MergeTable::find(int32_t left, int32_t right) const {
  if (slots_.empty()) return nullptr;
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  const size_t mask = slots_.size() - 1;
  for (size_t i = mix_pair(key) & mask; slots_[i].target.rank >= 0; i = (i + 1) & mask) {
    if (slots_[i].key == key) return &slots_[i].target;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// Loading

BpeTables bpe_tables_from_dom(const Json& model, const std::string& where) {
  BpeTables tables;
  if (const Json* vocab = json_fields::find_field(model, "vocab")) {
    SPECULA_CHECK(vocab->is_object(), where, ": field 'vocab' must be an object of token -> id, found ",
                  json_fields::type_name(*vocab));
    tables.vocab_present = true;
    tables.vocab.reserve(vocab->size());
    for (const auto& [token, id] : vocab->items()) {
      SPECULA_CHECK(id.is_number_integer(), where, ": vocab['", io::text_excerpt(token),
                    "']: token id must be an integer, found ",
                    json_fields::type_name(id));
      tables.vocab.emplace_back(token, id.get<int64_t>());
    }
  }
  if (const Json* merges = json_fields::find_field(model, "merges")) {
    SPECULA_CHECK(merges->is_array(), where, ": field 'merges' must be an array, found ", json_fields::type_name(*merges));
    tables.merges_present = true;
    tables.merges.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const Json& merge = (*merges)[i];
      if (merge.is_string()) {
        tables.merges.push_back({merge.get<std::string>(), {}, false});
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
        tables.merges.push_back({merge[0].get<std::string>(), merge[1].get<std::string>(), true});
      } else {
        fail(where, ": merges[", i, "] must be a string \"a b\" or a pair [\"a\", \"b\"]");
      }
    }
  }
  return tables;
}

BpeModel::BpeModel() : cache_(std::make_unique<Cache>()) {}
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;
BpeModel::~BpeModel() = default;

struct BpeModel::Cache {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>, TransparentStringHash, std::equal_to<>> entries;
};

int64_t token_id_limit(size_t defined_tokens) {
  const int64_t max_limit = std::numeric_limits<int32_t>::max();  // ids are int32
  const auto defined = static_cast<int64_t>(std::min<size_t>(defined_tokens, max_limit));
  return std::min(2 * defined + kTokenIdHeadroom, max_limit);
}

void check_token_id_bound(int64_t id, size_t defined_tokens, const std::string& where) {
  const int64_t limit = token_id_limit(defined_tokens);
  SPECULA_CHECK(id >= 0 && id < limit, where, ": token id ", id, " is out of range: ids must be below ", limit,
                " for a tokenizer defining ", defined_tokens, " tokens");
}

BpeModel BpeModel::from_json(const Json& model, BpeTables tables, const std::string& where, size_t defined_tokens) {
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
    SPECULA_CHECK(dropout->get<double>() == 0.0, where, ": BPE dropout ", dropout->get<double>(), " is not supported");
  }
  bpe.unk_token_ = json_fields::get_optional_string(model, "unk_token", where);
  bpe.continuing_subword_prefix_ = json_fields::get_optional_string(model, "continuing_subword_prefix", where);
  bpe.end_of_word_suffix_ = json_fields::get_optional_string(model, "end_of_word_suffix", where);
  bpe.fuse_unk_ = json_fields::get_bool(model, "fuse_unk", false, where);
  bpe.byte_fallback_ = json_fields::get_bool(model, "byte_fallback", false, where);
  bpe.ignore_merges_ = json_fields::get_bool(model, "ignore_merges", false, where);

  SPECULA_CHECK(tables.vocab_present, where, ": missing field 'vocab'");
  SPECULA_CHECK(tables.merges_present, where, ": missing field 'merges'");
  bpe.vocab_.reserve(tables.vocab.size());
  for (const auto& [token, id] : tables.vocab) {
    check_token_id_bound(id, defined_tokens, where + ": vocab['" + io::text_excerpt(token) + "']");
    SPECULA_CHECK(bpe.vocab_.insert(token, static_cast<int32_t>(id)), where, ": vocab lists token '",
                  io::text_excerpt(token), "' twice");
  }
  tables.vocab = {};
  int32_t max_id = -1;
  bpe.vocab_.for_each([&](std::string_view, int32_t id) { max_id = std::max(max_id, id); });
  bpe.id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string_view());
  bpe.id_present_.assign(static_cast<size_t>(max_id + 1), 0);
  bpe.vocab_.for_each([&](std::string_view token, int32_t id) {
    SPECULA_CHECK(!bpe.id_present_[id], where, ": vocab maps two tokens to id ", id, " ('",
                  io::text_excerpt(bpe.id_to_token_[id]), "' and '", io::text_excerpt(token), "')");
    bpe.id_present_[id] = 1;
    bpe.id_to_token_[id] = token;
  });
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    bpe.byte_fallback_ids_[b] = bpe.vocab_.find(std::string_view(name, 6));
  }

  const size_t prefix_length = bpe.continuing_subword_prefix_ ? bpe.continuing_subword_prefix_->size() : 0;
  bpe.merges_.reserve(tables.merges.size());
  int32_t rank = 0;
  std::string merged;
  for (size_t index = 0; index < tables.merges.size(); ++index) {
    const BpeTables::Merge& merge = tables.merges[index];
    std::string_view left, right;
    if (merge.is_pair) {
      left = merge.first;
      right = merge.second;
    } else {
      // Legacy "a b" lines; HF skips a "#version" header line without giving it a rank.
      const std::string& line = merge.first;
      if (line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      SPECULA_CHECK(space != std::string::npos && line.find(' ', space + 1) == std::string::npos, where, ": merges[", index,
                    "] \"", io::text_excerpt(line), "\" is not two tokens separated by one space");
      left = std::string_view(line).substr(0, space);
      right = std::string_view(line).substr(space + 1);
    }
    const int32_t left_id = bpe.vocab_.find(left);
    SPECULA_CHECK(left_id >= 0, where, ": merges[", index, "] refers to token '", io::text_excerpt(left),
                  "' which is not in the vocab");
    const int32_t right_id = bpe.vocab_.find(right);
    SPECULA_CHECK(right_id >= 0, where, ": merges[", index, "] refers to token '", io::text_excerpt(right),
                  "' which is not in the vocab");
    SPECULA_CHECK(right.size() >= prefix_length, where, ": merges[", index, "]: token '", io::text_excerpt(right),
                  "' is shorter than continuing_subword_prefix");
    merged.assign(left);
    merged.append(right.substr(prefix_length));
    const int32_t merged_id = bpe.vocab_.find(merged);
    SPECULA_CHECK(merged_id >= 0, where, ": merges[", index, "]: merged token '", io::text_excerpt(merged),
                  "' is not in the vocab");
    // A repeated pair keeps its last rank, as HF's map construction does.
    bpe.merges_.insert_or_assign(left_id, right_id, MergeTarget{rank, merged_id});
    ++rank;
  }
  return bpe;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const int32_t id = vocab_.find(token);
  if (id < 0) return std::nullopt;
  return id;
}

std::optional<std::string_view> BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) return std::nullopt;
  return id_to_token_[id];
}

// ---------------------------------------------------------------------------------------------
// Encoding

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
    if (const int32_t id = vocab_.find(key); id >= 0) {
      if (pending_unk.active) add(pending_unk.id, pending_unk.byte_length);
      pending_unk.active = false;
      add(id, static_cast<uint32_t>(length));
      continue;
    }
    if (byte_fallback_) {
      // All bytes must have a <0xXX> token, else the character goes to <unk>. As in HF, a pending
      // <unk> is not flushed first.
      bool all_found = true;
      for (char b : key) all_found = all_found && byte_fallback_ids_[static_cast<unsigned char>(b)] >= 0;
      if (all_found) {
        for (char b : key) add(byte_fallback_ids_[static_cast<unsigned char>(b)], 1);
        continue;
      }
    }
    if (unk_token_) {
      const int32_t unk_id = vocab_.find(*unk_token_);
      SPECULA_CHECK(unk_id >= 0, where_, ": unk_token '", io::text_excerpt(*unk_token_), "' is not in the vocab");
      if (pending_unk.active && fuse_unk_) {
        pending_unk.byte_length += static_cast<uint32_t>(length);
      } else {
        if (pending_unk.active) add(pending_unk.id, pending_unk.byte_length);
        pending_unk = {true, unk_id, static_cast<uint32_t>(length)};
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
  std::vector<QueuedMerge> storage;
  storage.reserve(symbols.size() * 2);
  std::priority_queue<QueuedMerge, std::vector<QueuedMerge>, decltype(lower_priority)> queue(lower_priority,
                                                                                              std::move(storage));
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeTarget* m = merges_.find(symbols[i].id, symbols[i + 1].id)) {
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
    const MergeTarget* still = merges_.find(current.id, right.id);
    if (still == nullptr || still->new_id != top.new_id) continue;

    current.id = top.new_id;
    current.byte_length += right.byte_length;
    current.next = right.next;
    symbols[next_pos].byte_length = 0;
    if (right.next >= 0) symbols[right.next].prev = top.pos;

    if (current.prev >= 0) {
      if (const MergeTarget* m = merges_.find(symbols[current.prev].id, current.id)) {
        queue.push({m->rank, current.prev, m->new_id});
      }
    }
    if (current.next >= 0) {
      if (const MergeTarget* m = merges_.find(current.id, symbols[current.next].id)) {
        queue.push({m->rank, top.pos, m->new_id});
      }
    }
  }
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (const int32_t id = vocab_.find(piece); id >= 0) {
      ids.push_back(id);
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
