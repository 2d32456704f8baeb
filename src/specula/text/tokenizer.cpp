// Tokenizer: loads a tokenizer.json into its components and runs HF's encode pipeline
// (added tokens -> normalizer -> normalized added tokens -> pre-tokenizer -> BPE -> post-processor)
// and decode pipeline (ids -> token strings -> decoder chain). See tokenizer.h.
#include "specula/text/tokenizer.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/io/strict_json.h"
#include "specula/text/added_tokens.h"
#include "specula/text/bpe_model.h"
#include "specula/text/decoders.h"
#include "specula/text/json_fields.h"
#include "specula/text/pipeline.h"
#include "specula/text/tokenizer_json.h"
#include "specula/text/unicode.h"

namespace specula::text {

using json_fields::Json;

namespace {

// Added-token text the matchers may hold in all. Each byte costs a trie node (about 64 bytes),
// and real files have a few hundred to a few thousand short tokens: kilobytes, 100 KB at most.
constexpr size_t kMaxAddedTokenTextBytes = size_t{4} << 20;

struct TransparentStringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
}  // namespace

struct Tokenizer::Impl {
  std::string source;
  std::optional<BpeModel> model;
  std::vector<AddedToken> added_tokens;
  AddedTokenMatcher raw_matcher;         // normalized: false, searched in the input text
  AddedTokenMatcher normalized_matcher;  // normalized: true, searched in normalized segments
  std::unordered_map<std::string, int32_t, TransparentStringHash, std::equal_to<>> added_by_content;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  // Per id: the string decode uses (added token content first, as in HF), whether
  // skip_special_tokens drops it (HF compares the string with the special tokens' contents),
  // and whether it is a special added token.
  std::vector<std::string_view> token_of_id;  // views into model or added_tokens
  std::vector<uint8_t> has_token;
  std::vector<uint8_t> skipped_on_decode;
  std::vector<uint8_t> special;

  void encode_normalized_segment(std::string_view segment, bool at_original_start, std::vector<int32_t>& ids) const {
    if (segment.empty()) return;
    std::vector<PreToken> pieces{{std::string(segment), at_original_start}};
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(pieces);
    for (const PreToken& piece : pieces) model->tokenize(piece.text, ids);
  }

  void encode_segment(std::string_view raw, bool at_original_start, bool parse_special, std::vector<int32_t>& ids) const {
    std::string normalized(raw);
    if (normalizer) normalizer->normalize(normalized);
    if (normalized.empty()) return;
    if (normalized_matcher.empty()) {
      encode_normalized_segment(normalized, at_original_start, ids);
      return;
    }
    for (const TextSegment& part : normalized_matcher.split(normalized, parse_special)) {
      if (part.token_id >= 0) ids.push_back(part.token_id);
      else encode_normalized_segment(std::string_view(normalized).substr(part.start, part.end - part.start),
                                     at_original_start && part.start == 0, ids);
    }
  }
};

namespace {

AddedToken parse_added_token(const Json& spec, const std::string& where) {
  json_fields::require_object(spec, where);
  json_fields::check_known_keys(spec, {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"}, where);
  AddedToken token;
  token.id = json_fields::checked_token_id(json_fields::require_field(spec, "id", where), where);
  token.content = json_fields::get_string(spec, "content", where);
  SPECULA_CHECK(!token.content.empty(), where, ": empty added token content");
  SPECULA_CHECK(find_invalid_utf8(token.content) == std::string::npos, where, ": content is not valid UTF-8");
  token.single_word = json_fields::get_bool(spec, "single_word", false, where);
  token.lstrip = json_fields::get_bool(spec, "lstrip", false, where);
  token.rstrip = json_fields::get_bool(spec, "rstrip", false, where);
  token.special = json_fields::get_bool(spec, "special", false, where);
  // HF's default for a token without the field: normalized unless special.
  token.normalized = json_fields::get_bool(spec, "normalized", !token.special, where);
  return token;
}

std::shared_ptr<const Tokenizer::Impl> load(const std::string& text, const std::string& source) {
  TokenizerJson parsed = read_tokenizer_json(text);
  const Json& root = parsed.root;
  json_fields::require_object(root, "top level");
  json_fields::check_known_keys(root, {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer",
                                       "post_processor", "decoder", "model"},
                                "top level");
  auto impl = std::make_shared<Tokenizer::Impl>();
  impl->source = source;

  const Json& model = json_fields::require_field(root, "model", "top level");
  json_fields::require_object(model, "model");
  const std::optional<std::string> model_type = json_fields::get_optional_string(model, "type", "model");
  // Old files may omit the type; HF then infers it from the fields, which for merges means BPE.
  const bool is_bpe = model_type ? *model_type == "BPE"
                                 : parsed.tables.merges_present || json_fields::find_field(model, "merges") != nullptr;
  SPECULA_CHECK(is_bpe, "model: model type '", io::text_excerpt(model_type.value_or("(none)")),
                "' is not supported (only BPE)");
  BpeTables tables = bpe_tables_from_dom(model, "model (BPE)");
  if (parsed.tables.vocab_present) {
    tables.vocab_present = true;
    tables.vocab = std::move(parsed.tables.vocab);
  }
  if (parsed.tables.merges_present) {
    tables.merges_present = true;
    tables.merges = std::move(parsed.tables.merges);
  }
  auto optional_component = [&root](const char* key) -> const Json* {
    const Json* field = json_fields::find_field(root, key);
    return field == nullptr || field->is_null() ? nullptr : field;
  };
  const Json* added_list = optional_component("added_tokens");
  SPECULA_CHECK(added_list == nullptr || added_list->is_array(), "added_tokens must be an array");
  // Every token the file defines; ids are bounded by it (check_token_id_bound) before any table
  // indexed by id is sized.
  const size_t defined_tokens = tables.vocab.size() + (added_list ? added_list->size() : 0);
  impl->model.emplace(BpeModel::from_json(model, std::move(tables), "model (BPE)", defined_tokens));

  if (const Json* spec = optional_component("normalizer")) impl->normalizer = make_normalizer(*spec, "normalizer");
  if (const Json* spec = optional_component("pre_tokenizer")) impl->pre_tokenizer = make_pre_tokenizer(*spec, "pre_tokenizer");
  if (const Json* spec = optional_component("post_processor")) impl->post_processor = make_post_processor(*spec, "post_processor");
  if (const Json* spec = optional_component("decoder")) impl->decoder = make_decoder(*spec, "decoder");

  if (added_list != nullptr) {
    impl->added_tokens.reserve(added_list->size());
    for (size_t i = 0; i < added_list->size(); ++i) {
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      AddedToken token = parse_added_token((*added_list)[i], where);
      check_token_id_bound(token.id, defined_tokens, where);
      impl->added_tokens.push_back(std::move(token));
    }
  }
  // The vector is complete, so pointers into it stay valid from here on.
  size_t matcher_bytes = 0;
  auto charge = [&matcher_bytes](size_t bytes) {
    matcher_bytes += bytes;
    SPECULA_CHECK(matcher_bytes <= kMaxAddedTokenTextBytes, "added_tokens: more than ", kMaxAddedTokenTextBytes,
                  " bytes of token text (after normalization)");
  };
  for (const AddedToken& token : impl->added_tokens) {
    auto [it, inserted] = impl->added_by_content.emplace(token.content, token.id);
    SPECULA_CHECK(inserted || it->second == token.id, "added_tokens: '", io::text_excerpt(token.content),
                  "' is listed with ids ", it->second, " and ", token.id);
    charge(token.content.size());  // before normalizing, which may multiply it
    if (token.normalized) {
      std::string pattern = token.content;
      if (impl->normalizer) impl->normalizer->normalize(pattern);
      charge(pattern.size() - std::min(pattern.size(), token.content.size()));
      impl->normalized_matcher.add(pattern, &token);
    } else {
      impl->raw_matcher.add(token.content, &token);
    }
  }

  int32_t max_id = impl->model->max_id();
  for (const AddedToken& token : impl->added_tokens) max_id = std::max(max_id, token.id);
  const auto vocab_size = static_cast<size_t>(max_id + 1);
  impl->token_of_id.assign(vocab_size, std::string_view());
  impl->has_token.assign(vocab_size, 0);
  impl->skipped_on_decode.assign(vocab_size, 0);
  impl->special.assign(vocab_size, 0);
  for (size_t id = 0; id < vocab_size; ++id) {
    if (auto token = impl->model->id_to_token(static_cast<int32_t>(id))) {
      impl->token_of_id[id] = *token;
      impl->has_token[id] = 1;
    }
  }
  std::unordered_set<std::string_view> special_contents;
  for (const AddedToken& token : impl->added_tokens) {
    impl->token_of_id[token.id] = token.content;
    impl->has_token[token.id] = 1;
    if (token.special) {
      impl->special[token.id] = 1;
      special_contents.insert(token.content);
    }
  }
  // After the added tokens, so that has_token covers both sources of tokens.
  if (impl->post_processor) {
    for (const InsertedToken& inserted : impl->post_processor->inserted_tokens()) {
      const auto id = static_cast<size_t>(inserted.id);  // checked_token_id: non-negative
      SPECULA_CHECK(id < vocab_size && impl->has_token[id], inserted.where, ": token id ", inserted.id,
                    " is not a token of this tokenizer (neither in model.vocab nor in added_tokens)");
    }
  }
  for (size_t id = 0; id < vocab_size; ++id) {
    impl->skipped_on_decode[id] = impl->has_token[id] && special_contents.count(impl->token_of_id[id]) != 0;
  }
  return impl;
}

class OutputSink final : public TokenSink {
 public:
  void append(std::string_view text) override { output.append(text); }
  void end_token() override {}
  void finish() override {}
  std::string take() { return std::exchange(output, std::string()); }
  std::string output;
};

}  // namespace

Tokenizer Tokenizer::from_json_string(const std::string& json, const std::string& source_name) {
  return Tokenizer(with_context("tokenizer " + source_name, [&] { return load(json, source_name); }));
}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json_path) {
  return from_json_string(read_text_file(tokenizer_json_path), tokenizer_json_path);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens, bool parse_special) const {
  const size_t invalid = find_invalid_utf8(text);
  SPECULA_CHECK(invalid == std::string_view::npos, "tokenizer ", impl_->source, ": encode: text is not valid UTF-8 at byte ",
                invalid);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (!text.empty()) {
    if (impl_->raw_matcher.empty()) {
      impl_->encode_segment(text, true, parse_special, ids);
    } else {
      for (const TextSegment& segment : impl_->raw_matcher.split(text, parse_special)) {
        if (segment.token_id >= 0) ids.push_back(segment.token_id);
        else impl_->encode_segment(text.substr(segment.start, segment.end - segment.start), segment.start == 0, parse_special, ids);
      }
    }
  }
  if (impl_->post_processor) impl_->post_processor->process(ids, add_special_tokens);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->token_of_id.size()) continue;
    if (!impl_->has_token[id] || (skip_special_tokens && impl_->skipped_on_decode[id])) continue;
    tokens.emplace_back(impl_->token_of_id[id]);
  }
  std::string text;
  if (impl_->decoder) {
    impl_->decoder->decode_chain(tokens);
    for (const std::string& piece : tokens) text += piece;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) text += ' ';
      text += tokens[i];
    }
  }
  return text;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->token_of_id.size() || !impl_->has_token[id]) return {};
  std::string token(impl_->token_of_id[id]);
  if (impl_->decoder) impl_->decoder->decode_token_bytes(token);
  return token;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->token_of_id.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end()) return it->second;
  return impl_->model->token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->token_of_id.size() || !impl_->has_token[id]) return {};
  return std::string(impl_->token_of_id[id]);
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->special.size() && impl_->special[id] != 0;
}

// ---------------------------------------------------------------------------------------------

struct StreamDecoder::State {
  std::shared_ptr<const Tokenizer::Impl> impl;
  bool skip_special_tokens = false;
  std::vector<std::unique_ptr<StreamStage>> stages;
  OutputSink sink;

  void build() {
    stages.clear();
    if (impl->decoder) impl->decoder->make_stream_stages(stages);
    else stages.push_back(make_space_joiner_stage());
    for (size_t i = 0; i < stages.size(); ++i) {
      stages[i]->connect(i + 1 < stages.size() ? static_cast<TokenSink*>(stages[i + 1].get()) : &sink);
    }
  }
  TokenSink& first() { return stages.empty() ? static_cast<TokenSink&>(sink) : *stages.front(); }
};

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens) : state_(std::make_unique<State>()) {
  state_->impl = tokenizer.impl_;
  state_->skip_special_tokens = skip_special_tokens;
  state_->build();
}
StreamDecoder::StreamDecoder(StreamDecoder&&) noexcept = default;
StreamDecoder& StreamDecoder::operator=(StreamDecoder&&) noexcept = default;
StreamDecoder::~StreamDecoder() = default;

std::string StreamDecoder::push(int32_t id) {
  const Tokenizer::Impl& impl = *state_->impl;
  if (id < 0 || static_cast<size_t>(id) >= impl.token_of_id.size()) return {};
  if (!impl.has_token[id] || (state_->skip_special_tokens && impl.skipped_on_decode[id])) return {};
  TokenSink& first = state_->first();
  first.append(impl.token_of_id[id]);
  first.end_token();
  return state_->sink.take();
}

std::string StreamDecoder::flush() {
  state_->first().finish();
  std::string text = state_->sink.take();
  state_->build();
  return text;
}

}  // namespace specula::text
