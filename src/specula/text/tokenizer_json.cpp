// SAX reader for tokenizer.json (see tokenizer_json.h): a small DOM builder that diverts the
// contents of root.model.vocab (when an object) and root.model.merges (when an array) to BpeTables.
// The shared checks of io/strict_json.h apply as for every JSON input: the depth limit on the raw
// text before parsing, duplicate keys refused in the DOM part (duplicate vocab tokens are refused
// by BpeModel, which sees them all), short excerpts of untrusted strings in messages.
#include "specula/text/tokenizer_json.h"

#include "specula/core/error.h"
#include "specula/io/strict_json.h"

namespace specula::text {
namespace {

using Json = nlohmann::json;

class Reader {
 public:
  using number_integer_t = Json::number_integer_t;
  using number_unsigned_t = Json::number_unsigned_t;
  using number_float_t = Json::number_float_t;
  using string_t = Json::string_t;
  using binary_t = Json::binary_t;

  TokenizerJson result;
  std::string error;

  bool null() { return scalar(Json(nullptr)); }
  bool boolean(bool value) { return scalar(Json(value)); }
  bool number_integer(number_integer_t value) { return scalar(Json(value)); }
  bool number_unsigned(number_unsigned_t value) { return scalar(Json(value)); }
  bool number_float(number_float_t value, const string_t&) { return scalar(Json(value)); }
  bool string(string_t& value) {
    switch (mode_) {
      case Mode::Merges:
        result.tables.merges.push_back({std::move(value), {}, false});
        return true;
      case Mode::MergePair:
        if (pair_count_ == 0) pair_first_ = std::move(value);
        else if (pair_count_ == 1) pair_second_ = std::move(value);
        ++pair_count_;
        return true;
      default:
        return scalar(Json(std::move(value)));
    }
  }
  bool binary(binary_t&) { return reject("invalid JSON: binary value"); }

  bool start_object(std::size_t) {
    if (mode_ == Mode::Dom && in_model_object() && tree_.current_key() == "vocab") {
      mode_ = Mode::Vocab;
      result.tables.vocab_present = true;
      return true;
    }
    if (mode_ == Mode::Vocab) return bad_vocab_value("object");
    if (mode_ == Mode::Merges || mode_ == Mode::MergePair) return bad_merge();
    tree_.open_object();
    return true;
  }
  bool key(string_t& value) {
    if (mode_ == Mode::Vocab) {
      vocab_token_ = std::move(value);
      return true;
    }
    const std::string excerpt = io::text_excerpt(value);
    return tree_.key(std::move(value)) || reject("key '" + excerpt + "' appears twice in one object");
  }
  bool end_object() {
    if (mode_ == Mode::Vocab) {
      mode_ = Mode::Dom;
      return true;
    }
    tree_.close();
    return true;
  }
  bool start_array(std::size_t) {
    if (mode_ == Mode::Dom && in_model_object() && tree_.current_key() == "merges") {
      mode_ = Mode::Merges;
      result.tables.merges_present = true;
      return true;
    }
    if (mode_ == Mode::Merges) {
      mode_ = Mode::MergePair;
      pair_count_ = 0;
      return true;
    }
    if (mode_ == Mode::Vocab) return bad_vocab_value("array");
    if (mode_ == Mode::MergePair) return bad_merge();
    tree_.open_array();
    return true;
  }
  bool end_array() {
    if (mode_ == Mode::MergePair) {
      if (pair_count_ != 2) return bad_merge();
      result.tables.merges.push_back({std::move(pair_first_), std::move(pair_second_), true});
      mode_ = Mode::Merges;
      return true;
    }
    if (mode_ == Mode::Merges) {
      mode_ = Mode::Dom;
      return true;
    }
    tree_.close();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const Json::exception& e) {
    return reject("invalid JSON: " + io::json_error_excerpt(e));
  }
  // The document without its vocab and merges, once parsing is done.
  Json take_tree() { return std::move(tree_.root); }

 private:
  enum class Mode { Dom, Vocab, Merges, MergePair };

  bool in_model_object() const {
    return tree_.depth() == 2 && tree_.key_of(1) == "model" && tree_.container(0).is_object() &&
           tree_.container(1).is_object();
  }
  bool scalar(Json&& value) {
    switch (mode_) {
      case Mode::Dom:
        tree_.value(std::move(value));
        return true;
      case Mode::Vocab:
        if (!value.is_number_integer()) return bad_vocab_value(value.type_name());
        result.tables.vocab.emplace_back(std::move(vocab_token_), value.get<int64_t>());
        return true;
      case Mode::Merges:
      case Mode::MergePair:
        return bad_merge();
    }
    return false;
  }
  bool reject(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
  }
  bool bad_vocab_value(const char* found) {
    return reject("model: vocab['" + io::text_excerpt(vocab_token_) + "']: token id must be an integer, found " +
                  found);
  }
  bool bad_merge() {
    return reject("model: merges[" + std::to_string(result.tables.merges.size()) +
                  "] must be a string \"a b\" or a pair [\"a\", \"b\"]");
  }

  io::JsonTreeBuilder tree_;  // the DOM part (everything but model.vocab and model.merges)
  Mode mode_ = Mode::Dom;
  std::string vocab_token_;
  std::string pair_first_, pair_second_;
  int pair_count_ = 0;
};

}  // namespace

TokenizerJson read_tokenizer_json(const std::string& text) {
  io::check_json_text(text, "invalid JSON");
  Reader reader;
  const bool ok = Json::sax_parse(text, &reader);
  if (!ok) fail(reader.error.empty() ? std::string("invalid JSON") : reader.error);
  reader.result.root = reader.take_tree();
  return std::move(reader.result);
}

}  // namespace specula::text
