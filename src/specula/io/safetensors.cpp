// safetensors parsing. Checks run in the reference reader's order: length prefix, header bounds,
// UTF-8, JSON object, then per-tensor fields, then the tiling of the byte buffer (sorted by
// offsets, each tensor must start where the previous one ended and the last must end at EOF).
// Sizes are computed with core/checked_size.h because every number is untrusted.
// The header (up to 100 MB) is streamed through nlohmann's SAX parser instead of being parsed into
// one JSON document: a document costs 10-15x its text, so a hostile header would take over a GB
// before a single check ran. Each tensor entry becomes a CheckpointTensor as it closes, so time
// and memory are linear in the entries, and kMaxCheckpointEntries refuses a header as soon as it
// is passed. Shard indexes have the same shape (one object, an entry per tensor) and are read the
// same way.
#include "specula/io/safetensors.h"

#include <algorithm>
#include <optional>
#include <tuple>

#include <nlohmann/json.hpp>

#include "specula/core/error.h"
#include "specula/io/byte_reader.h"
#include "specula/io/strict_json.h"

namespace specula::io {

namespace {

using Json = nlohmann::json;

// How a member of a streamed container is read.
enum class Read {
  Skip,          // parsed for syntax, never stored (an unknown field)
  Build,         // built as a small JSON value and handed to take()
  StreamObject,  // if it is an object, its members are offered one by one; anything else is built
  StreamArray,   // the same for an array, whose items are offered with an empty key
};

// Streams a JSON document whose root is an object, holding in memory only the value being built.
// The text gets strict_json's checks first (NUL bytes, nesting depth). Duplicate keys are refused
// inside built values; in streamed objects the subclass refuses them where it stores the members;
// skipped values are never read, so their keys cannot be ambiguous.
class MemberStream : public nlohmann::json_sax<Json> {
 public:
  explicit MemberStream(std::string what) : what_(std::move(what)) {}

  void parse(std::string_view text) {
    check_json_text(text, what_ + ": invalid JSON");
    Json::sax_parse(text.begin(), text.end(), static_cast<nlohmann::json_sax<Json>*>(this));
  }

 protected:
  // `parents` holds the keys of the streamed containers around the member, outermost first (empty
  // for the root's members); `key` is the member's key, empty for an array item.
  virtual Read choose(const std::vector<std::string>& parents, const std::string& key) = 0;
  virtual void take(const std::vector<std::string>& parents, const std::string& key, Json value) = 0;
  // A streamed container other than the root has ended.
  virtual void closed(const std::vector<std::string>& parents, std::string& key) = 0;
  const std::string& what() const { return what_; }

 private:
  bool null() override { return scalar(Json(nullptr)); }
  bool boolean(bool value) override { return scalar(Json(value)); }
  bool number_integer(number_integer_t value) override { return scalar(Json(value)); }
  bool number_unsigned(number_unsigned_t value) override { return scalar(Json(value)); }
  bool number_float(number_float_t value, const string_t& /*text*/) override { return scalar(Json(value)); }
  bool string(string_t& value) override { return scalar(Json(std::move(value))); }
  bool binary(binary_t& /*value*/) override { fail(what_, ": invalid JSON: binary value"); }
  bool start_object(std::size_t /*size*/) override { return open(/*array=*/false); }
  bool start_array(std::size_t /*size*/) override { return open(/*array=*/true); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t /*position*/, const std::string& /*token*/, const Json::exception& e) override {
    fail(what_, ": invalid JSON: ", json_error_excerpt(e));
  }

  bool key(string_t& key) override {
    if (skipping_ > 0) return true;
    if (!building_.empty()) {
      SPECULA_CHECK(!building_.back()->contains(key), what_, ": key '", text_excerpt(key), "' appears twice");
      build_key_ = std::move(key);
      return true;
    }
    member_ = std::move(key);
    read_ = choose(parents_, member_);
    return true;
  }

  // Array items have no key, so they are chosen as they start.
  void start_member() {
    if (!streamed_is_array_.back()) return;
    member_.clear();
    read_ = choose(parents_, member_);
  }

  bool scalar(Json value) {
    if (skipping_ > 0) return true;
    if (!building_.empty()) {
      insert(std::move(value));
      return true;
    }
    SPECULA_CHECK(!streamed_is_array_.empty(), what_, ": not a JSON object");
    start_member();
    if (read_ != Read::Skip) take(parents_, member_, std::move(value));
    return true;
  }

  bool open(bool array) {
    if (skipping_ > 0) {
      ++skipping_;
      return true;
    }
    const auto container = [array] { return array ? Json::array() : Json::object(); };  // built only when kept
    if (!building_.empty()) {
      building_.push_back(&insert(container()));
      return true;
    }
    if (streamed_is_array_.empty()) {  // the root
      SPECULA_CHECK(!array, what_, ": not a JSON object");
      streamed_is_array_.push_back(false);
      return true;
    }
    start_member();
    if (read_ == Read::Skip) {
      skipping_ = 1;
    } else if ((read_ == Read::StreamObject && !array) || (read_ == Read::StreamArray && array)) {
      parents_.push_back(std::move(member_));
      streamed_is_array_.push_back(array);
    } else {
      built_ = container();
      building_.push_back(&built_);
    }
    return true;
  }

  bool close() {
    if (skipping_ > 0) {
      --skipping_;
    } else if (!building_.empty()) {
      building_.pop_back();
      if (building_.empty()) take(parents_, member_, std::move(built_));
    } else {
      streamed_is_array_.pop_back();
      if (streamed_is_array_.empty()) return true;  // the root
      std::string key = std::move(parents_.back());
      parents_.pop_back();
      closed(parents_, key);
    }
    return true;
  }

  // Adds `value` to the innermost value being built and returns where it now lives.
  Json& insert(Json value) {
    Json& parent = *building_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(value));
      return parent.back();
    }
    return parent[build_key_] = std::move(value);
  }

  std::string what_;
  std::vector<bool> streamed_is_array_;  // the open streamed containers, the root first
  std::vector<std::string> parents_;     // their keys, the root's excepted
  std::string member_;                   // key of the member being read in the innermost one
  Read read_ = Read::Skip;               // how that member is read
  size_t skipping_ = 0;                  // open containers inside a skipped member
  Json built_;                           // the member value being built
  std::vector<Json*> building_;          // its open containers, innermost last
  std::string build_key_;                // key of the next member inside the innermost built object
};

// A JSON number that is an integer >= 0 and fits in int64 (shapes and offsets); nlohmann keeps
// non-negative literals as unsigned and negative ones as signed, floats (even 3.0) as float.
bool as_non_negative_int(const Json& value, uint64_t& out) {
  if (!value.is_number_unsigned()) return false;
  out = value.get<uint64_t>();
  return out <= kMaxCheckedSize;
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(dims[i]);
  }
  return text_excerpt(out + "]");
}

// No tensor entry in a header is shorter than this one (which is not even valid).
constexpr size_t kShortestEntryBytes = std::string_view(R"("":{"dtype":"","shape":[],"data_offsets":[0,0]})").size();

struct Placed {
  uint64_t begin, end;
  size_t index;
};

// A header: each tensor entry is checked and stored as it closes (its fields arrive one by one,
// with no JSON value built for it), and the "__metadata__" strings are collected.
class HeaderReader final : public MemberStream {
 public:
  HeaderReader(const std::string& file_name, uint64_t buffer_size, SafetensorsContents& out,
               std::vector<Placed>& placement)
      : MemberStream(file_name + ": header"), file_name_(file_name), buffer_size_(buffer_size), out_(out),
        placement_(placement) {}

 private:
  static constexpr std::string_view kMetadataKey = "__metadata__";
  enum Field : unsigned { kDtype = 1, kShape = 2, kOffsets = 4 };

  // The entry being read; its name is the innermost parent.
  struct Pending {
    unsigned seen = 0;  // Fields present
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    uint64_t offsets[2] = {0, 0};
    size_t offset_count = 0;
  };

  std::string where(const std::string& name) const { return file_name_ + ": tensor '" + text_excerpt(name) + "'"; }

  void count_entry() {
    SPECULA_CHECK(++entries_ <= kMaxCheckpointEntries, file_name_, ": header has more than ", kMaxCheckpointEntries,
                  " entries (the limit; not a real checkpoint)");
  }

  bool in_metadata(const std::vector<std::string>& parents) const {
    return parents.size() == 1 && seen_metadata_ && parents[0] == kMetadataKey;
  }

  Read choose(const std::vector<std::string>& parents, const std::string& key) override {
    if (parents.empty()) {  // a tensor name, or the metadata
      count_entry();
      if (key == kMetadataKey) {
        SPECULA_CHECK(!seen_metadata_, file_name_, ": key '", kMetadataKey, "' appears twice");
        seen_metadata_ = true;
      } else {
        pending_ = Pending{};
      }
      return Read::StreamObject;
    }
    if (in_metadata(parents)) {
      count_entry();
      return Read::Build;
    }
    if (parents.size() > 1) return Read::Build;  // an item of "shape" or "data_offsets"
    const Field field = key == "dtype" ? kDtype : key == "shape" ? kShape : key == "data_offsets" ? kOffsets : Field{};
    if (field == Field{}) return Read::Skip;  // the reference reader ignores unknown fields too
    SPECULA_CHECK((pending_.seen & field) == 0, where(parents[0]), ": key '", key, "' appears twice");
    pending_.seen |= field;
    return field == kDtype ? Read::Build : Read::StreamArray;
  }

  void take(const std::vector<std::string>& parents, const std::string& key, Json value) override {
    if (parents.empty()) {
      SPECULA_CHECK(key != kMetadataKey, file_name_, ": \"", kMetadataKey, "\" is not a JSON object");
      fail(where(key), ": entry is not a JSON object");
    }
    if (in_metadata(parents)) {
      SPECULA_CHECK(value.is_string(), file_name_, ": \"", kMetadataKey, "\" value for '", text_excerpt(key),
                    "' is not a string");
      SPECULA_CHECK(out_.metadata.emplace(key, std::move(value.get_ref<std::string&>())).second, file_name_, ": \"",
                    kMetadataKey, "\" key '", text_excerpt(key), "' appears twice");
      return;
    }
    const std::string& name = parents[0];
    if (parents.size() == 1 && key == "dtype") {
      SPECULA_CHECK(value.is_string(), where(name), ": missing or non-string \"dtype\"");
      const std::optional<DType> dtype = dtype_from_safetensors_name(value.get_ref<const std::string&>());
      SPECULA_CHECK(dtype.has_value(), where(name), ": unknown dtype '", text_excerpt(value.get_ref<const std::string&>()),
                    "'");
      pending_.dtype = *dtype;
      return;
    }
    if (parents.size() == 1) fail(where(name), ": missing or non-array \"", key, "\"");  // shape or data_offsets
    uint64_t n = 0;
    if (parents[1] == "shape") {
      SPECULA_CHECK(as_non_negative_int(value, n), where(name), ": shape entry ", json_excerpt(value),
                    " is not a non-negative integer");
      pending_.shape.push_back(static_cast<int64_t>(n));
      return;
    }
    SPECULA_CHECK(pending_.offset_count < 2 && as_non_negative_int(value, n), where(name), ": data_offsets entry ",
                  json_excerpt(value), " makes them not a pair of non-negative integers");
    pending_.offsets[pending_.offset_count++] = n;
  }

  void closed(const std::vector<std::string>& parents, std::string& key) override {
    if (parents.empty() && key != kMetadataKey) finish_tensor(key);
  }

  void finish_tensor(std::string& name) {
    Pending& p = pending_;
    SPECULA_CHECK(p.seen & kDtype, where(name), ": missing or non-string \"dtype\"");
    SPECULA_CHECK(p.seen & kShape, where(name), ": missing or non-array \"shape\"");
    SPECULA_CHECK(p.seen & kOffsets, where(name), ": missing or non-array \"data_offsets\"");
    uint64_t numel = 1;
    for (const int64_t d : p.shape)
      SPECULA_CHECK(checked_mul(numel, static_cast<uint64_t>(d), kMaxCheckedSize, numel), where(name), ": shape ",
                    dims_text(p.shape), " overflows");
    uint64_t nbytes = 0;
    SPECULA_CHECK(checked_mul(numel, dtype_size(p.dtype), kMaxCheckedSize, nbytes), where(name), ": shape ",
                  dims_text(p.shape), " of ", dtype_name(p.dtype), " overflows the byte count");
    SPECULA_CHECK(p.offset_count == 2, where(name), ": data_offsets is not a pair of non-negative integers");
    const auto [begin, end] = p.offsets;
    SPECULA_CHECK(begin <= end, where(name), ": data_offsets [", begin, ",", end, "] end before they begin");
    SPECULA_CHECK(end <= buffer_size_, where(name), ": data_offsets [", begin, ",", end,
                  "] run past the data buffer (", buffer_size_, " bytes)");
    SPECULA_CHECK(end - begin == nbytes, where(name), ": data_offsets [", begin, ",", end, "] span ", end - begin,
                  " bytes but shape ", dims_text(p.shape), " of ", dtype_name(p.dtype), " needs ", nbytes);
    CheckpointTensor tensor;
    tensor.name = std::move(name);
    tensor.dtype = p.dtype;
    tensor.shape = std::move(p.shape);
    tensor.nbytes = static_cast<size_t>(nbytes);
    tensor.file = file_path_;
    placement_.push_back({begin, end, out_.tensors.size()});
    out_.tensors.push_back(std::move(tensor));
  }

  const std::string& file_name_;
  const TensorFilePath file_path_{file_name_};
  uint64_t buffer_size_;
  SafetensorsContents& out_;
  std::vector<Placed>& placement_;
  Pending pending_;
  size_t entries_ = 0;
  bool seen_metadata_ = false;
};

// A shard index: the "weight_map" object's entries; every other member is skipped.
class ShardIndexReader final : public MemberStream {
 public:
  explicit ShardIndexReader(const std::string& what) : MemberStream(what) {}

  std::map<std::string, std::string> result() {
    SPECULA_CHECK(seen_weight_map_, what(), ": no \"weight_map\"");
    return std::move(weight_map_);
  }

 private:
  Read choose(const std::vector<std::string>& parents, const std::string& key) override {
    if (!parents.empty()) {
      SPECULA_CHECK(weight_map_.size() < kMaxCheckpointEntries, what(), ": \"weight_map\" has more than ",
                    kMaxCheckpointEntries, " entries (the limit; not a real checkpoint)");
      return Read::Build;
    }
    if (key != "weight_map") return Read::Skip;
    SPECULA_CHECK(!seen_weight_map_, what(), ": key 'weight_map' appears twice");
    seen_weight_map_ = true;
    return Read::StreamObject;
  }

  void take(const std::vector<std::string>& parents, const std::string& key, Json value) override {
    SPECULA_CHECK(!parents.empty(), what(), ": \"weight_map\" is not an object of tensor name -> file name");
    SPECULA_CHECK(value.is_string(), what(), ": weight_map entry for tensor '", text_excerpt(key), "' is not a string");
    SPECULA_CHECK(weight_map_.emplace(key, std::move(value.get_ref<std::string&>())).second, what(), ": key '",
                  text_excerpt(key), "' appears twice");
  }

  void closed(const std::vector<std::string>& /*parents*/, std::string& /*key*/) override {}

  std::map<std::string, std::string> weight_map_;
  bool seen_weight_map_ = false;
};

}  // namespace

SafetensorsContents parse_safetensors(const MappedFile& file) {
  const std::string& file_name = file.path();
  const uint64_t file_size = file.size();
  SPECULA_CHECK(file_size >= 8, file_name, ": too small for a safetensors file (", file_size,
                " bytes, the length prefix alone is 8)");
  const ByteReader reader(file.bytes(0, file.size()), file_name);
  const uint64_t header_size = reader.u64(0);
  SPECULA_CHECK(header_size <= kMaxSafetensorsHeaderBytes, file_name, ": header length ", header_size,
                " exceeds the limit of ", kMaxSafetensorsHeaderBytes, " bytes (not a safetensors file?)");
  SPECULA_CHECK(header_size <= file_size - 8, file_name, ": header length ", header_size,
                " runs past the end of the file (", file_size, " bytes)");
  const std::string_view header = reader.slice(8, header_size);
  SPECULA_CHECK(is_valid_utf8(header), file_name, ": header is not valid UTF-8");
  SPECULA_CHECK(!header.empty() && header.front() == '{', file_name, ": header does not start with '{'");

  const uint64_t data_start = add_size(8, header_size, file_name + ": header");
  const uint64_t buffer_size = file_size - data_start;
  const uint8_t* buffer = file.data() + data_start;

  // Room for as many tensors as the header could hold, so that a long header is not copied again
  // each time the vectors grow; pages never written are never touched.
  const size_t most_tensors = std::min<size_t>(header_size / kShortestEntryBytes, kMaxCheckpointEntries);
  SafetensorsContents contents;
  contents.tensors.reserve(most_tensors);
  std::vector<Placed> placement;
  placement.reserve(most_tensors);
  HeaderReader(file_name, buffer_size, contents, placement).parse(header);

  // Offsets must tile [0, buffer_size) exactly: no overlap (two tensors aliasing bytes) and no
  // hole (bytes no tensor owns, which the reference writer never produces).
  std::sort(placement.begin(), placement.end(), [](const Placed& a, const Placed& b) {
    return std::tie(a.begin, a.end, a.index) < std::tie(b.begin, b.end, b.index);  // ties in header order
  });
  uint64_t cursor = 0;
  const CheckpointTensor* previous = nullptr;
  for (const Placed& p : placement) {
    const CheckpointTensor& t = contents.tensors[p.index];
    if (p.begin < cursor)
      fail(file_name, ": tensor '", text_excerpt(t.name), "' (bytes ", p.begin, "..", p.end, ") overlaps tensor '",
           text_excerpt(previous->name), "' (which ends at ", cursor, ")");
    if (p.begin > cursor)
      fail(file_name, ": tensor '", text_excerpt(t.name), "' starts at byte ", p.begin, " but the previous tensor",
           previous ? " '" + text_excerpt(previous->name) + "'" : std::string(), " ends at ", cursor,
           ": hole in the data buffer");
    cursor = p.end;
    previous = &t;
  }
  SPECULA_CHECK(cursor == buffer_size, file_name, ": tensors cover ", cursor, " bytes of the ", buffer_size,
                "-byte data buffer", previous ? " (last is '" + text_excerpt(previous->name) + "')" : std::string(),
                ": trailing bytes belong to no tensor");

  // Moves the tensors into placement order along the permutation's cycles (no second vector).
  std::vector<CheckpointTensor>& tensors = contents.tensors;
  for (size_t start = 0; start < placement.size(); ++start) {
    if (placement[start].index == start) continue;
    CheckpointTensor held = std::move(tensors[start]);
    size_t to = start;
    for (size_t from = placement[to].index; from != start; from = placement[to].index) {
      tensors[to] = std::move(tensors[from]);
      placement[to].index = to;
      to = from;
    }
    tensors[to] = std::move(held);
    placement[to].index = to;
  }
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].data = buffer + placement[i].begin;

  // A name may appear once. Sorting by hash (names compared only where hashes tie) brings repeats
  // together without a node per name.
  std::vector<std::pair<size_t, const std::string*>> names;
  names.reserve(tensors.size());
  for (const CheckpointTensor& t : tensors) names.emplace_back(std::hash<std::string>{}(t.name), &t.name);
  std::sort(names.begin(), names.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : *a.second < *b.second;
  });
  for (size_t i = 1; i < names.size(); ++i)
    SPECULA_CHECK(*names[i - 1].second != *names[i].second, file_name, ": tensor '", text_excerpt(*names[i].second),
                  "' appears twice in the header");
  return contents;
}

std::map<std::string, std::string> parse_shard_index(std::string_view text, const std::string& what) {
  ShardIndexReader reader(what);
  reader.parse(text);
  return reader.result();
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path), contents_(parse_safetensors(file_)) {}

}  // namespace specula::io
