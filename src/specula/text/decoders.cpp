// Batch and streaming forms of the supported decoders (see decoders.h for the contract).
#include "specula/text/decoders.h"

#include "specula/core/error.h"
#include "specula/text/json_fields.h"
#include "specula/text/pipeline.h"
#include "specula/text/unicode.h"

namespace specula::text {
namespace {

using json_fields::Json;

constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

// ---------------------------------------------------------------------------------------------
// ByteLevel: token chars -> bytes through the GPT-2 alphabet (a token with any other char is taken
// as its raw UTF-8 bytes), everything concatenated and decoded lossily into a single token.

void append_byte_level_bytes(std::string_view token, std::string& bytes) {
  const ByteLevelAlphabet& alphabet = byte_level_alphabet();
  const size_t mark = bytes.size();
  size_t pos = 0;
  while (pos < token.size()) {
    size_t length = 0;
    const char32_t c = decode_utf8(token, pos, &length);
    const int byte = c < alphabet.char_to_byte.size() ? alphabet.char_to_byte[c] : -1;
    if (byte < 0) {
      bytes.resize(mark);
      bytes.append(token);
      return;
    }
    bytes.push_back(static_cast<char>(byte));
    pos += length;
  }
}

class ByteLevelStage final : public StreamStage {
 public:
  void append(std::string_view text) override { token_.append(text); }
  void end_token() override {
    append_byte_level_bytes(token_, pending_bytes_);
    token_.clear();
    std::string text;
    const size_t consumed = append_utf8_lossy(text, pending_bytes_, false);
    pending_bytes_.erase(0, consumed);
    if (!text.empty()) next_->append(text);
  }
  void finish() override {
    std::string text;
    append_utf8_lossy(text, pending_bytes_, true);
    pending_bytes_.clear();
    if (!text.empty()) next_->append(text);
    next_->end_token();
    next_->finish();
  }

 private:
  std::string token_;
  std::string pending_bytes_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& token : tokens) append_byte_level_bytes(token, bytes);
    tokens.assign(1, utf8_lossy(bytes));
  }
  void decode_token_bytes(std::string& token) const override {
    std::string bytes;
    append_byte_level_bytes(token, bytes);
    token = std::move(bytes);
  }
  void make_stream_stages(std::vector<std::unique_ptr<StreamStage>>& stages) const override {
    stages.push_back(std::make_unique<ByteLevelStage>());
  }
};

// ---------------------------------------------------------------------------------------------
// ByteFallback: "<0xXX>" tokens become bytes; a maximal run of them becomes one token if it is
// valid UTF-8, else one U+FFFD token per byte (HF does not decode such runs lossily).

int byte_token_value(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return -1;
  // Rust's u8::from_str_radix accepts a leading '+', so "<0x+A>" is byte 10 in HF as well.
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (token[3] == '+') return hex(token[4]);
  const int high = hex(token[3]), low = hex(token[4]);
  return high < 0 || low < 0 ? -1 : high * 16 + low;
}

template <typename Emit>
void flush_byte_run(std::string& run, Emit&& emit) {
  if (run.empty()) return;
  if (find_invalid_utf8(run) == std::string::npos) {
    emit(std::string_view(run));
  } else {
    for (size_t i = 0; i < run.size(); ++i) emit(kReplacementCharacter);
  }
  run.clear();
}

class ByteFallbackStage final : public StreamStage {
 public:
  void append(std::string_view text) override { token_.append(text); }
  void end_token() override {
    const int byte = byte_token_value(token_);
    if (byte >= 0) {
      run_.push_back(static_cast<char>(byte));
    } else {
      flush();
      next_->append(token_);
      next_->end_token();
    }
    token_.clear();
  }
  void finish() override {
    flush();
    next_->finish();
  }

 private:
  void flush() {
    flush_byte_run(run_, [this](std::string_view text) {
      next_->append(text);
      next_->end_token();
    });
  }
  std::string token_;
  std::string run_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    auto emit = [&out](std::string_view text) { out.emplace_back(text); };
    for (std::string& token : tokens) {
      const int byte = byte_token_value(token);
      if (byte >= 0) {
        run.push_back(static_cast<char>(byte));
        continue;
      }
      flush_byte_run(run, emit);
      out.push_back(std::move(token));
    }
    flush_byte_run(run, emit);
    tokens = std::move(out);
  }
  void decode_token_bytes(std::string& token) const override {
    const int byte = byte_token_value(token);
    if (byte >= 0) token.assign(1, static_cast<char>(byte));
  }
  void make_stream_stages(std::vector<std::unique_ptr<StreamStage>>& stages) const override {
    stages.push_back(std::make_unique<ByteFallbackStage>());
  }
};

// ---------------------------------------------------------------------------------------------
// Fuse: all tokens become one.

class FuseStage final : public StreamStage {
 public:
  void append(std::string_view text) override { next_->append(text); }
  void end_token() override {}
  void finish() override {
    next_->end_token();
    next_->finish();
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& token : tokens) joined += token;
    tokens.assign(1, std::move(joined));
  }
  void make_stream_stages(std::vector<std::unique_ptr<StreamStage>>& stages) const override {
    stages.push_back(std::make_unique<FuseStage>());
  }
};

// ---------------------------------------------------------------------------------------------
// Replace: pattern -> content inside each token.

class ReplaceStage final : public StreamStage {
 public:
  ReplaceStage(const TextPattern& pattern, std::string content) : pattern_(pattern), content_(std::move(content)) {}
  void append(std::string_view text) override {
    buffer_.append(text);
    if (!pattern_.is_literal()) return;  // a regex match could span appends: wait for the whole token
    // Emit everything except a suffix that may still grow into the literal.
    const std::string& literal = pattern_.literal();
    std::string replaced;
    size_t pos = 0;
    for (size_t found; (found = buffer_.find(literal, pos)) != std::string::npos; pos = found + literal.size()) {
      replaced.append(buffer_, pos, found - pos);
      replaced += content_;
    }
    size_t keep_from = buffer_.size();
    for (size_t start = std::max(pos, buffer_.size() >= literal.size() ? buffer_.size() - literal.size() + 1 : 0);
         start < buffer_.size(); ++start) {
      if (literal.compare(0, buffer_.size() - start, buffer_, start, buffer_.size() - start) == 0) {
        keep_from = start;
        break;
      }
    }
    keep_from = std::max(keep_from, pos);
    replaced.append(buffer_, pos, keep_from - pos);
    buffer_.erase(0, keep_from);
    if (!replaced.empty()) next_->append(replaced);
  }
  void end_token() override {
    if (!buffer_.empty()) next_->append(pattern_.is_literal() ? buffer_ : replace_all(buffer_, pattern_, content_));
    buffer_.clear();
    next_->end_token();
  }
  void finish() override { next_->finish(); }

 private:
  const TextPattern& pattern_;
  std::string content_;
  std::string buffer_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(TextPattern pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) token = replace_all(token, pattern_, content_);
  }
  void make_stream_stages(std::vector<std::unique_ptr<StreamStage>>& stages) const override {
    stages.push_back(std::make_unique<ReplaceStage>(pattern_, content_));
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

// ---------------------------------------------------------------------------------------------
// Strip: per token, remove up to `start` leading and up to `stop` trailing `content` characters.

class StripStage final : public StreamStage {
 public:
  StripStage(std::string content, size_t start, size_t stop) : content_(std::move(content)), start_(start), stop_(stop) {
    reset();
  }
  void append(std::string_view text) override {
    std::string out;
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t length = utf8_sequence_length(static_cast<unsigned char>(text[pos]));
      const std::string_view ch = text.substr(pos, length);
      pos += length;
      const bool is_content = ch == content_;
      if (in_leading_) {
        if (is_content && leading_left_ > 0) {
          --leading_left_;
          continue;
        }
        in_leading_ = false;
      }
      if (is_content) {
        // Hold at most `stop` trailing content characters; older ones can no longer be stripped.
        if (held_ == stop_) out += content_;
        else ++held_;
        continue;
      }
      for (; held_ > 0; --held_) out += content_;
      out += ch;
    }
    if (!out.empty()) next_->append(out);
  }
  void end_token() override {
    reset();  // the held characters are exactly the ones stripped from the end
    next_->end_token();
  }
  void finish() override { next_->finish(); }

 private:
  void reset() {
    in_leading_ = true;
    leading_left_ = start_;
    held_ = 0;
  }
  std::string content_;
  size_t start_, stop_;
  bool in_leading_ = true;
  size_t leading_left_ = 0;
  size_t held_ = 0;
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop) : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& token : tokens) {
      std::vector<std::string_view> chars;
      for (size_t pos = 0; pos < token.size();) {
        const size_t length = utf8_sequence_length(static_cast<unsigned char>(token[pos]));
        chars.push_back(std::string_view(token).substr(pos, length));
        pos += length;
      }
      size_t start_cut = 0;
      for (size_t i = 0; i < std::min(start_, chars.size()) && chars[i] == content_; ++i) start_cut = i + 1;
      size_t stop_cut = chars.size();
      for (size_t i = 0; i < std::min(stop_, chars.size()) && chars[chars.size() - 1 - i] == content_; ++i) {
        stop_cut = chars.size() - 1 - i;
      }
      // HF panics when the cuts cross (a token made only of content characters); we return "".
      std::string kept;
      for (size_t i = start_cut; i < stop_cut; ++i) kept += chars[i];
      token = std::move(kept);
    }
  }
  void make_stream_stages(std::vector<std::unique_ptr<StreamStage>>& stages) const override {
    stages.push_back(std::make_unique<StripStage>(content_, start_, stop_));
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

// ---------------------------------------------------------------------------------------------
// Metaspace: the replacement character becomes a space, except in the first token, where (unless
// prepend_scheme is "never") every replacement character is dropped, as HF does.

class MetaspaceStage final : public StreamStage {
 public:
  MetaspaceStage(std::string replacement, bool drop_in_first) : replacement_(std::move(replacement)), drop_in_first_(drop_in_first) {}
  void append(std::string_view text) override {
    const std::string_view substitute = (token_index_ == 0 && drop_in_first_) ? std::string_view() : std::string_view(" ");
    std::string out;
    size_t pos = 0;
    for (size_t found; (found = text.find(replacement_, pos)) != std::string_view::npos; pos = found + replacement_.size()) {
      out.append(text.substr(pos, found - pos));
      out.append(substitute);
    }
    out.append(text.substr(pos));
    if (!out.empty()) next_->append(out);
  }
  void end_token() override {
    ++token_index_;
    next_->end_token();
  }
  void finish() override { next_->finish(); }

 private:
  std::string replacement_;
  bool drop_in_first_;
  size_t token_index_ = 0;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool drop_in_first) : replacement_(std::move(replacement)), drop_in_first_(drop_in_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& token = tokens[i];
      size_t pos = 0;
      for (size_t found; (found = token.find(replacement_, pos)) != std::string::npos; pos = found + replacement_.size()) {
        out.append(token, pos, found - pos);
        if (!(i == 0 && drop_in_first_)) out += ' ';
      }
      out.append(token, pos);
      tokens[i] = std::move(out);
    }
  }
  void make_stream_stages(std::vector<std::unique_ptr<StreamStage>>& stages) const override {
    stages.push_back(std::make_unique<MetaspaceStage>(replacement_, drop_in_first_));
  }

 private:
  std::string replacement_;
  bool drop_in_first_;
};

// ---------------------------------------------------------------------------------------------

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& part : parts_) part->decode_chain(tokens);
  }
  void decode_token_bytes(std::string& token) const override {
    for (const auto& part : parts_) part->decode_token_bytes(token);
  }
  void make_stream_stages(std::vector<std::unique_ptr<StreamStage>>& stages) const override {
    for (const auto& part : parts_) part->make_stream_stages(stages);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

class SpaceJoinerStage final : public StreamStage {
 public:
  void append(std::string_view text) override {
    separate();
    next_->append(text);
  }
  void end_token() override {
    separate();
    in_token_ = false;
    next_->end_token();
  }
  void finish() override { next_->finish(); }

 private:
  void separate() {
    if (in_token_) return;
    if (tokens_seen_ > 0) next_->append(" ");
    ++tokens_seen_;
    in_token_ = true;
  }
  size_t tokens_seen_ = 0;
  bool in_token_ = false;
};

std::string single_character_field(const Json& spec, std::string_view key, const std::string& where) {
  const std::string value = json_fields::get_string(spec, key, where);
  size_t length = 0;
  SPECULA_CHECK(!value.empty() && find_invalid_utf8(value) == std::string::npos &&
                    (decode_utf8(value, 0, &length), length == value.size()),
                where, ": field '", key, "' must be a single character");
  return value;
}

size_t count_field(const Json& spec, std::string_view key, const std::string& where) {
  const int64_t value = json_fields::get_integer(spec, key, where);
  SPECULA_CHECK(value >= 0, where, ": field '", key, "' must not be negative");
  return static_cast<size_t>(value);
}

}  // namespace

void Decoder::decode_token_bytes(std::string& token) const {
  std::vector<std::string> tokens{std::move(token)};
  decode_chain(tokens);
  token.clear();
  for (const std::string& piece : tokens) token += piece;
}

std::unique_ptr<Decoder> make_decoder(const Json& spec, const std::string& where_prefix, int nesting) {
  json_fields::check_nesting(nesting, where_prefix);
  json_fields::require_object(spec, where_prefix);
  const std::string type = json_fields::get_string(spec, "type", where_prefix);
  const std::string where = json_fields::component_where(where_prefix, type);
  if (type == "ByteLevel") {
    // add_prefix_space / trim_offsets / use_regex do not affect decoding.
    json_fields::check_known_keys(spec, {"type", "add_prefix_space", "trim_offsets", "use_regex"}, where);
    for (const char* flag : {"add_prefix_space", "trim_offsets", "use_regex"}) json_fields::get_bool(spec, flag, true, where);
    return std::make_unique<ByteLevelDecoder>();
  }
  if (type == "ByteFallback") {
    json_fields::check_known_keys(spec, {"type"}, where);
    return std::make_unique<ByteFallbackDecoder>();
  }
  if (type == "Fuse") {
    json_fields::check_known_keys(spec, {"type"}, where);
    return std::make_unique<FuseDecoder>();
  }
  if (type == "Replace") {
    json_fields::check_known_keys(spec, {"type", "pattern", "content"}, where);
    return std::make_unique<ReplaceDecoder>(
        TextPattern::from_json(json_fields::require_field(spec, "pattern", where), where + ": pattern"),
        json_fields::get_string(spec, "content", where));
  }
  if (type == "Strip") {
    json_fields::check_known_keys(spec, {"type", "content", "start", "stop"}, where);
    return std::make_unique<StripDecoder>(single_character_field(spec, "content", where), count_field(spec, "start", where),
                                          count_field(spec, "stop", where));
  }
  if (type == "Metaspace") {
    json_fields::check_known_keys(spec, {"type", "replacement", "prepend_scheme", "split", "add_prefix_space", "str_rep"},
                                  where);
    std::string replacement = single_character_field(spec, "replacement", where);
    json_fields::get_bool(spec, "split", true, where);
    const std::optional<std::string> scheme = json_fields::get_optional_string(spec, "prepend_scheme", where);
    SPECULA_CHECK(!scheme || *scheme == "always" || *scheme == "first" || *scheme == "never", where,
                  ": unknown prepend_scheme '", io::text_excerpt(scheme.value_or("")), "'");
    const bool add_prefix_space = json_fields::get_bool(spec, "add_prefix_space", true, where);
    const bool never = (scheme && *scheme == "never") || !add_prefix_space;
    return std::make_unique<MetaspaceDecoder>(std::move(replacement), !never);
  }
  if (type == "Sequence") {
    json_fields::check_known_keys(spec, {"type", "decoders"}, where);
    const Json& list = json_fields::require_field(spec, "decoders", where);
    SPECULA_CHECK(list.is_array(), where, ": field 'decoders' must be an array");
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < list.size(); ++i) {
      parts.push_back(make_decoder(list[i], where_prefix + ".decoders[" + std::to_string(i) + "]", nesting + 1));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  fail(where_prefix, ": decoder type '", io::text_excerpt(type), "' is not supported");
}

std::unique_ptr<StreamStage> make_space_joiner_stage() { return std::make_unique<SpaceJoinerStage>(); }

}  // namespace specula::text
