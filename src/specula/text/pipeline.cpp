// Normalizers, pre-tokenizers and post-processors of a tokenizer.json (see pipeline.h).
// Split behaviours follow HF `NormalizedString::split` exactly (including how MergedWithNext folds
// from the right), since they decide where pre-token boundaries fall and thus the final ids.
#include "specula/text/pipeline.h"

#include <algorithm>
#include <optional>
#include <unordered_map>

#include "specula/core/error.h"
#include "specula/text/json_fields.h"
#include "specula/text/regex.h"
#include "specula/text/unicode.h"

namespace specula::text {
namespace {

using json_fields::component_where;
using json_fields::Json;
using io::text_excerpt;

std::string component_type(const Json& spec, const std::string& where) {
  json_fields::require_object(spec, where);
  return json_fields::get_string(spec, "type", where);
}

// ---------------------------------------------------------------------------------------------
// Normalizers

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalizationForm form) : form_(form) {}
  void normalize(std::string& text) const override { text = normalize_unicode(text, form_); }

 private:
  NormalizationForm form_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override {
    if (!text.empty()) text.insert(0, prefix_);  // HF leaves an empty string empty
  }

 private:
  std::string prefix_;
};

// How much normalization may grow a text: a real tokenizer's Replace swaps a space for "▁" (3x
// at worst); a hostile tokenizer.json could otherwise make every byte of a prompt a megabyte.
// Bounds: a Replace content of at most kMaxReplaceContentBytes, and after any normalizer (or any
// step of a Sequence) at most kMaxNormalizedGrowth times the text it started from plus
// kNormalizedSlackBytes; beyond that the tokenizer refuses the text with an error.
constexpr size_t kMaxReplaceContentBytes = 1024;
constexpr size_t kMaxNormalizedGrowth = 8;
constexpr size_t kNormalizedSlackBytes = 4096;

void check_growth(size_t original, size_t now, const char* step) {
  SPECULA_CHECK(now <= kMaxNormalizedGrowth * original + kNormalizedSlackBytes, "tokenizer normalizer (", step,
                ") grew a text of ", original, " bytes to ", now, " bytes, beyond the limit of ", kMaxNormalizedGrowth,
                "x + ", kNormalizedSlackBytes, " (is tokenizer.json hostile?)");
}

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(TextPattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string& text) const override {
    const size_t original = text.size();
    text = replace_all(text, pattern_, content_);
    check_growth(original, text.size(), "Replace");
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(std::string& text) const override {
    const size_t original = text.size();
    for (const auto& part : parts_) {
      part->normalize(text);
      check_growth(original, text.size(), "Sequence");
    }
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

SplitBehavior parse_split_behavior(const std::string& name, const std::string& where) {
  if (name == "Removed") return SplitBehavior::Removed;
  if (name == "Isolated") return SplitBehavior::Isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (name == "Contiguous") return SplitBehavior::Contiguous;
  fail(where, ": unknown split behavior '", text_excerpt(name), "'");
}

// Turns matched/unmatched ranges into the pieces to keep (HF `NormalizedString::split`) and
// appends them to `out`; only the piece starting at offset 0 inherits `at_original_start`.
void split_piece(const PreToken& piece, const std::vector<MatchRange>& ranges, SplitBehavior behavior,
                 std::vector<PreToken>& out) {
  struct Kept {
    size_t start;
    size_t end;
    bool remove;
  };
  std::vector<Kept> kept;
  kept.reserve(ranges.size());
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const MatchRange& r : ranges) kept.push_back({r.start, r.end, false});
      break;
    case SplitBehavior::Removed:
      for (const MatchRange& r : ranges) kept.push_back({r.start, r.end, r.is_match});
      break;
    case SplitBehavior::Contiguous: {
      bool previous_match = false;
      for (const MatchRange& r : ranges) {
        if (r.is_match == previous_match && !kept.empty()) kept.back().end = r.end;
        else kept.push_back({r.start, r.end, false});
        previous_match = r.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool previous_match = false;
      for (const MatchRange& r : ranges) {
        if (r.is_match && !previous_match && !kept.empty()) kept.back().end = r.end;
        else kept.push_back({r.start, r.end, false});
        previous_match = r.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous_match = false;
      for (auto it = ranges.rbegin(); it != ranges.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) kept.back().start = it->start;
        else kept.push_back({it->start, it->end, false});
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
  }
  for (const Kept& k : kept) {
    if (k.remove || k.start == k.end) continue;
    out.push_back({piece.text.substr(k.start, k.end - k.start), piece.at_original_start && k.start == 0});
  }
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(TextPattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    std::vector<PreToken> out;
    out.reserve(pieces.size() * 4);
    for (const PreToken& piece : pieces) {
      std::vector<MatchRange> ranges = ranges_from_matches(piece.text, pattern_.find_all(piece.text));
      if (invert_) {
        for (MatchRange& r : ranges) r.is_match = !r.is_match;
      }
      split_piece(piece, ranges, behavior_, out);
    }
    pieces = std::move(out);
  }

 private:
  TextPattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// HF's ByteLevel regex (GPT-2), used when ByteLevel has use_regex = true.
constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::optional<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    std::vector<PreToken> split;
    split.reserve(pieces.size() * 4);
    for (PreToken& piece : pieces) {
      if (add_prefix_space_ && (piece.text.empty() || piece.text[0] != ' ')) piece.text = " " + piece.text;
      if (regex_) {
        split_piece(piece, ranges_from_matches(piece.text, regex_->find_all(piece.text)), SplitBehavior::Isolated,
                    split);
      } else if (!piece.text.empty()) {
        split.push_back(std::move(piece));
      }
    }
    const ByteLevelAlphabet& alphabet = byte_level_alphabet();
    for (PreToken& piece : split) {
      std::string mapped;
      mapped.reserve(piece.text.size() * 2);
      for (char ch : piece.text) {
        const auto b = static_cast<unsigned char>(ch);
        mapped.append(alphabet.byte_to_utf8[b].data(), alphabet.byte_to_utf8_length[b]);
      }
      piece.text = std::move(mapped);
    }
    pieces = std::move(split);
  }

 private:
  bool add_prefix_space_;
  std::optional<Regex> regex_;
};

enum class PrependScheme { Always, First, Never };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    std::vector<PreToken> out;
    out.reserve(pieces.size() * 4);
    for (PreToken& piece : pieces) {
      std::string text;
      text.reserve(piece.text.size() + replacement_.size());
      for (char ch : piece.text) {
        if (ch == ' ') text += replacement_;
        else text += ch;
      }
      const bool starts_with_replacement = text.compare(0, replacement_.size(), replacement_) == 0;
      const bool prepend = !starts_with_replacement && (scheme_ == PrependScheme::Always ||
                                                       (scheme_ == PrependScheme::First && piece.at_original_start));
      if (prepend) text.insert(0, replacement_);
      PreToken replaced{std::move(text), piece.at_original_start};
      if (!split_) {
        if (!replaced.text.empty()) out.push_back(std::move(replaced));
        continue;
      }
      split_piece(replaced, ranges_from_matches(replaced.text, find_literal(replaced.text, replacement_)),
                  SplitBehavior::MergedWithNext, out);
    }
    pieces = std::move(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<PreToken>& pieces) const override {
    for (const auto& part : parts_) part->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

// ---------------------------------------------------------------------------------------------
// Post-processors

class NoOpPostProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class TemplatePostProcessor final : public PostProcessor {
 public:
  struct Item {
    bool is_sequence;
    std::vector<int32_t> special_ids;
    std::string where;  // the special_tokens entry the ids come from
  };
  explicit TemplatePostProcessor(std::vector<Item> single) : single_(std::move(single)) {}
  std::vector<InsertedToken> inserted_tokens() const override {
    std::vector<InsertedToken> out;
    for (const Item& item : single_)
      for (const int32_t id : item.special_ids) out.push_back({id, item.where});
    return out;
  }
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    out.reserve(ids.size() + 4);
    for (const Item& item : single_) {
      if (item.is_sequence) out.insert(out.end(), ids.begin(), ids.end());
      else out.insert(out.end(), item.special_ids.begin(), item.special_ids.end());
    }
    ids = std::move(out);
  }

 private:
  std::vector<Item> single_;
};

class SequencePostProcessor final : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& part : parts_) part->process(ids, add_special_tokens);
  }
  std::vector<InsertedToken> inserted_tokens() const override {
    std::vector<InsertedToken> out;
    for (const auto& part : parts_) {
      std::vector<InsertedToken> more = part->inserted_tokens();
      out.insert(out.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
    }
    return out;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

std::unique_ptr<PostProcessor> make_template_processing(const Json& spec, const std::string& where) {
  json_fields::check_known_keys(spec, {"type", "single", "pair", "special_tokens"}, where);
  const Json& special_tokens = json_fields::require_field(spec, "special_tokens", where);
  SPECULA_CHECK(special_tokens.is_object(), where, ": field 'special_tokens' must be an object");
  std::unordered_map<std::string, std::vector<int32_t>> special_ids;
  for (const auto& [name, entry] : special_tokens.items()) {
    const std::string entry_where = where + ": special_tokens['" + text_excerpt(name) + "']";
    json_fields::require_object(entry, entry_where);
    json_fields::check_known_keys(entry, {"id", "ids", "tokens"}, entry_where);
    const Json& ids = json_fields::require_field(entry, "ids", entry_where);
    SPECULA_CHECK(ids.is_array(), entry_where, ": field 'ids' must be an array");
    std::vector<int32_t> resolved;
    for (const Json& id : ids) resolved.push_back(json_fields::checked_token_id(id, entry_where));
    special_ids[name] = std::move(resolved);
  }
  const Json& single = json_fields::require_field(spec, "single", where);
  SPECULA_CHECK(single.is_array(), where, ": field 'single' must be an array of template pieces");
  std::vector<TemplatePostProcessor::Item> items;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string item_where = where + ": single[" + std::to_string(i) + "]";
    const Json& item = single[i];
    json_fields::require_object(item, item_where);
    SPECULA_CHECK(item.size() == 1, item_where, ": expected one of 'SpecialToken' or 'Sequence'");
    if (const Json* special = json_fields::find_field(item, "SpecialToken")) {
      json_fields::require_object(*special, item_where);
      json_fields::check_known_keys(*special, {"id", "type_id"}, item_where);
      const std::string name = json_fields::get_string(*special, "id", item_where);
      auto it = special_ids.find(name);
      SPECULA_CHECK(it != special_ids.end(), item_where, ": special token '", text_excerpt(name),
                    "' is not in special_tokens");
      items.push_back({false, it->second, where + ": special_tokens['" + text_excerpt(name) + "']"});
    } else if (const Json* sequence = json_fields::find_field(item, "Sequence")) {
      json_fields::require_object(*sequence, item_where);
      json_fields::check_known_keys(*sequence, {"id", "type_id"}, item_where);
      const std::string id = json_fields::get_string(*sequence, "id", item_where);
      SPECULA_CHECK(id == "A", item_where, ": a single-sequence template can only refer to sequence A, not ",
                    text_excerpt(id));
      items.push_back({true, {}, ""});
    } else {
      fail(item_where, ": unknown template piece '", text_excerpt(item.begin().key()), "'");
    }
  }
  return std::make_unique<TemplatePostProcessor>(std::move(items));
}

}  // namespace

TextPattern TextPattern::from_json(const Json& spec, const std::string& where) {
  json_fields::require_object(spec, where);
  SPECULA_CHECK(spec.size() == 1, where, ": a pattern must have exactly one of 'String' or 'Regex'");
  TextPattern pattern;
  if (const Json* literal = json_fields::find_field(spec, "String")) {
    SPECULA_CHECK(literal->is_string(), where, ": pattern 'String' must be a string");
    pattern.literal_ = literal->get<std::string>();
    // HF's empty-string pattern yields nonsensical offsets; no real tokenizer uses one.
    SPECULA_CHECK(!pattern.literal_.empty(), where, ": empty String pattern is not supported");
  } else if (const Json* regex = json_fields::find_field(spec, "Regex")) {
    SPECULA_CHECK(regex->is_string(), where, ": pattern 'Regex' must be a string");
    pattern.regex_ = Regex::compile_oniguruma(regex->get<std::string>(), where);
  } else {
    fail(where, ": unknown pattern kind '", text_excerpt(spec.begin().key()), "' (expected 'String' or 'Regex')");
  }
  return pattern;
}

std::vector<Match> TextPattern::find_all(std::string_view text) const {
  return regex_ ? regex_->find_all(text) : find_literal(text, literal_);
}

std::string replace_all(std::string_view text, const TextPattern& pattern, std::string_view content) {
  const std::vector<Match> matches = pattern.find_all(text);
  if (matches.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size() + matches.size() * content.size());
  size_t previous = 0;
  for (const Match& m : matches) {
    out.append(text.substr(previous, m.start - previous));
    out.append(content);
    previous = m.end;
  }
  out.append(text.substr(previous));
  return out;
}

std::unique_ptr<Normalizer> make_normalizer(const Json& spec, const std::string& where_prefix, int nesting) {
  json_fields::check_nesting(nesting, where_prefix);
  const std::string type = component_type(spec, where_prefix);
  const std::string where = component_where(where_prefix, type);
  if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    json_fields::check_known_keys(spec, {"type"}, where);
    const NormalizationForm form = type == "NFC"    ? NormalizationForm::NFC
                                   : type == "NFD"  ? NormalizationForm::NFD
                                   : type == "NFKC" ? NormalizationForm::NFKC
                                                    : NormalizationForm::NFKD;
    return std::make_unique<UnicodeNormalizer>(form);
  }
  if (type == "Prepend") {
    json_fields::check_known_keys(spec, {"type", "prepend"}, where);
    return std::make_unique<PrependNormalizer>(json_fields::get_string(spec, "prepend", where));
  }
  if (type == "Replace") {
    json_fields::check_known_keys(spec, {"type", "pattern", "content"}, where);
    std::string content = json_fields::get_string(spec, "content", where);
    SPECULA_CHECK(content.size() <= kMaxReplaceContentBytes, where, ": Replace content of ", content.size(),
                  " bytes (at most ", kMaxReplaceContentBytes, ")");
    return std::make_unique<ReplaceNormalizer>(
        TextPattern::from_json(json_fields::require_field(spec, "pattern", where), where + ": pattern"),
        std::move(content));
  }
  if (type == "Sequence") {
    json_fields::check_known_keys(spec, {"type", "normalizers"}, where);
    const Json& list = json_fields::require_field(spec, "normalizers", where);
    SPECULA_CHECK(list.is_array(), where, ": field 'normalizers' must be an array");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      parts.push_back(make_normalizer(list[i], where_prefix + ".normalizers[" + std::to_string(i) + "]", nesting + 1));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  fail(where_prefix, ": normalizer type '", text_excerpt(type), "' is not supported");
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& spec, const std::string& where_prefix, int nesting) {
  json_fields::check_nesting(nesting, where_prefix);
  const std::string type = component_type(spec, where_prefix);
  const std::string where = component_where(where_prefix, type);
  if (type == "Split") {
    json_fields::check_known_keys(spec, {"type", "pattern", "behavior", "invert"}, where);
    return std::make_unique<SplitPreTokenizer>(
        TextPattern::from_json(json_fields::require_field(spec, "pattern", where), where + ": pattern"),
        parse_split_behavior(json_fields::get_string(spec, "behavior", where), where),
        json_fields::get_bool(spec, "invert", false, where));
  }
  if (type == "ByteLevel") {
    json_fields::check_known_keys(spec, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, where);
    json_fields::get_bool(spec, "trim_offsets", true, where);  // offsets only; checked for type
    const bool add_prefix_space = json_fields::get_bool(spec, "add_prefix_space", true, where);
    std::optional<Regex> regex;
    if (json_fields::get_bool(spec, "use_regex", true, where)) {
      regex = Regex::compile_oniguruma(kGpt2Pattern, where + ": GPT-2 regex");
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(regex));
  }
  if (type == "Metaspace") {
    json_fields::check_known_keys(spec, {"type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"},
                                  where);
    const std::string replacement = json_fields::get_string(spec, "replacement", where);
    size_t length = 0;
    SPECULA_CHECK(!replacement.empty() && (decode_utf8(replacement, 0, &length), length == replacement.size()), where,
                  ": field 'replacement' must be a single character");
    std::optional<std::string> scheme_name = json_fields::get_optional_string(spec, "prepend_scheme", where);
    PrependScheme scheme = PrependScheme::Always;
    if (scheme_name) {
      if (*scheme_name == "always") scheme = PrependScheme::Always;
      else if (*scheme_name == "first") scheme = PrependScheme::First;
      else if (*scheme_name == "never") scheme = PrependScheme::Never;
      else fail(where, ": unknown prepend_scheme '", text_excerpt(*scheme_name), "'");
    }
    // Legacy files say add_prefix_space instead; false means never (HF's deserializer).
    if (!json_fields::get_bool(spec, "add_prefix_space", true, where)) {
      SPECULA_CHECK(!scheme_name || scheme == PrependScheme::Never, where,
                    ": add_prefix_space false contradicts prepend_scheme '", text_excerpt(*scheme_name), "'");
      scheme = PrependScheme::Never;
    }
    return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, json_fields::get_bool(spec, "split", true, where));
  }
  if (type == "Sequence") {
    json_fields::check_known_keys(spec, {"type", "pretokenizers"}, where);
    const Json& list = json_fields::require_field(spec, "pretokenizers", where);
    SPECULA_CHECK(list.is_array(), where, ": field 'pretokenizers' must be an array");
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      parts.push_back(
          make_pre_tokenizer(list[i], where_prefix + ".pretokenizers[" + std::to_string(i) + "]", nesting + 1));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  fail(where_prefix, ": pre_tokenizer type '", text_excerpt(type), "' is not supported");
}

std::unique_ptr<PostProcessor> make_post_processor(const Json& spec, const std::string& where_prefix, int nesting) {
  json_fields::check_nesting(nesting, where_prefix);
  const std::string type = component_type(spec, where_prefix);
  const std::string where = component_where(where_prefix, type);
  if (type == "ByteLevel") {
    // Its options only adjust offsets, which we do not produce.
    json_fields::check_known_keys(spec, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, where);
    for (const char* flag : {"add_prefix_space", "trim_offsets", "use_regex"}) json_fields::get_bool(spec, flag, true, where);
    return std::make_unique<NoOpPostProcessor>();
  }
  if (type == "TemplateProcessing") return make_template_processing(spec, where);
  if (type == "Sequence") {
    json_fields::check_known_keys(spec, {"type", "processors"}, where);
    const Json& list = json_fields::require_field(spec, "processors", where);
    SPECULA_CHECK(list.is_array(), where, ": field 'processors' must be an array");
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      parts.push_back(
          make_post_processor(list[i], where_prefix + ".processors[" + std::to_string(i) + "]", nesting + 1));
    }
    return std::make_unique<SequencePostProcessor>(std::move(parts));
  }
  fail(where_prefix, ": post_processor type '", text_excerpt(type), "' is not supported");
}

}  // namespace specula::text
