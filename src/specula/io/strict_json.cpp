// The shared checks of every JSON reader (see strict_json.h). The depth limit is enforced by a
// scan of the raw text, not by the parser, so no deep tree is ever built (or destroyed). The
// document is built by a small SAX handler that refuses duplicate keys as they arrive (one set of
// seen keys per open object). Not nlohmann's parser callback: after every closing object or array
// it rescans the parent's members for discarded values, which is quadratic in the number of
// members ({"a":{},"b":{},...} of a few hundred MB would take hours).
#include "specula/io/strict_json.h"

#include <cstdio>

#include "specula/core/error.h"

namespace specula::io {

namespace {

using Json = nlohmann::json;

// nlohmann's parse errors quote the token being read ("last read: '...'"), which can be a whole
// multi-megabyte string; the rest of its message is at most about 150 characters.
constexpr size_t kParseErrorChars = 200;

// Appends `text` with control characters (C0 and DEL) written as \xNN.
void append_escaped(std::string_view text, std::string& out) {
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7F) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02X", byte);
      out += hex;
    } else {
      out += c;
    }
  }
}

// The longest prefix of `text` of at most `max_bytes` bytes that does not split a UTF-8 sequence.
std::string_view utf8_prefix(std::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut);
}

// A string as a JSON literal, of at most about `max_bytes` of its bytes.
void append_json_string(const std::string& s, size_t max_bytes, std::string& out) {
  const Json prefix = std::string(utf8_prefix(s, max_bytes));
  out += prefix.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// Compact JSON for `v`, stopping once `out` holds more than `budget` bytes. Each level writes at
// least one byte before descending, so the recursion is at most `budget` deep even for a value
// that was built (not parsed) deeper than kMaxJsonDepth.
void append_json_excerpt(const Json& v, size_t budget, std::string& out) {
  if (out.size() > budget) return;
  switch (v.type()) {
    case Json::value_t::object: {
      out += '{';
      for (auto it = v.begin(); it != v.end() && out.size() <= budget; ++it) {
        if (it != v.begin()) out += ',';
        append_json_string(it.key(), budget, out);
        out += ':';
        append_json_excerpt(it.value(), budget, out);
      }
      out += '}';
      break;
    }
    case Json::value_t::array: {
      out += '[';
      for (auto it = v.begin(); it != v.end() && out.size() <= budget; ++it) {
        if (it != v.begin()) out += ',';
        append_json_excerpt(*it, budget, out);
      }
      out += ']';
      break;
    }
    case Json::value_t::string:
      append_json_string(v.get_ref<const std::string&>(), budget, out);
      break;
    case Json::value_t::binary:
      out += "<binary>";
      break;
    default:  // null, boolean, number: a few bytes
      out += v.dump();
      break;
  }
}

// parse_strict_json's SAX handler: a JsonTreeBuilder that stops at the first error.
class StrictDomBuilder {
 public:
  using number_integer_t = Json::number_integer_t;
  using number_unsigned_t = Json::number_unsigned_t;
  using number_float_t = Json::number_float_t;
  using string_t = Json::string_t;
  using binary_t = Json::binary_t;

  JsonTreeBuilder tree;
  std::string error;  // why parsing stopped

  bool null() { return add(Json(nullptr)); }
  bool boolean(bool value) { return add(Json(value)); }
  bool number_integer(number_integer_t value) { return add(Json(value)); }
  bool number_unsigned(number_unsigned_t value) { return add(Json(value)); }
  bool number_float(number_float_t value, const string_t&) { return add(Json(value)); }
  bool string(string_t& value) { return add(Json(std::move(value))); }
  bool binary(binary_t&) { return stop("binary value"); }  // only binary formats have them
  bool start_object(std::size_t) {
    tree.open_object();
    return true;
  }
  bool key(string_t& value) {
    const std::string excerpt = text_excerpt(value);
    return tree.key(std::move(value)) || stop("key '" + excerpt + "' appears twice in one object");
  }
  bool end_object() {
    tree.close();
    return true;
  }
  bool start_array(std::size_t) {
    tree.open_array();
    return true;
  }
  bool end_array() {
    tree.close();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const Json::exception& e) {
    return stop("invalid JSON: " + json_error_excerpt(e));
  }

 private:
  bool add(Json&& value) {
    tree.value(std::move(value));
    return true;
  }
  bool stop(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
  }
};

}  // namespace

Json* JsonTreeBuilder::insert(Json&& v) {
  if (open_.empty()) {
    root = std::move(v);
    return &root;
  }
  Json& parent = *open_.back();
  if (parent.is_array()) {
    parent.push_back(std::move(v));
    return &parent.back();
  }
  Json& slot = parent[key_];
  slot = std::move(v);
  return &slot;
}

void JsonTreeBuilder::open(Json&& container) {
  const bool under_object = !open_.empty() && open_.back()->is_object();
  open_keys_.push_back(under_object ? key_ : std::string());
  open_.push_back(insert(std::move(container)));
}

void JsonTreeBuilder::open_object() {
  keys_.open_object();
  open(Json::object());
}

void JsonTreeBuilder::open_array() { open(Json::array()); }

void JsonTreeBuilder::close() {
  if (open_.empty()) return;
  if (open_.back()->is_object()) keys_.close_object();
  open_.pop_back();
  open_keys_.pop_back();
}

bool JsonTreeBuilder::key(std::string&& k) {
  if (!keys_.add(k)) return false;
  key_ = std::move(k);
  return true;
}

void check_json_text(std::string_view text, const std::string& what, size_t max_depth) {
  size_t depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    SPECULA_CHECK(c != '\0', what, ": NUL byte at offset ", i, " (not allowed in JSON)");
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    switch (c) {
      case '"':
        in_string = true;
        break;
      case '[':
      case '{':
        SPECULA_CHECK(++depth <= max_depth, what, ": arrays and objects nest deeper than the nesting depth limit of ",
                      max_depth, " levels (at byte ", i, ")");
        break;
      case ']':
      case '}':
        // An unbalanced close is malformed JSON; the parser reports it with a better message.
        if (depth > 0) --depth;
        break;
      default:
        break;
    }
  }
}

std::string text_excerpt(std::string_view text, size_t max_chars) {
  std::string out;
  append_escaped(utf8_prefix(text, max_chars), out);
  if (text.size() > max_chars) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

std::string json_excerpt(const Json& value, size_t max_chars) {
  std::string rendered;
  append_json_excerpt(value, max_chars, rendered);
  std::string out;
  append_escaped(utf8_prefix(rendered, max_chars), out);
  if (rendered.size() > max_chars) out += "...";
  return out;
}

std::string json_error_excerpt(const Json::exception& e) { return text_excerpt(e.what(), kParseErrorChars); }

Json parse_strict_json(std::string_view text, const std::string& what) {
  check_json_text(text, what + ": invalid JSON");
  StrictDomBuilder builder;
  if (!Json::sax_parse(text.begin(), text.end(), &builder))
    fail(what, ": ", builder.error.empty() ? std::string("invalid JSON") : builder.error);
  return std::move(builder.tree.root);
}

Json parse_strict_json_object(std::string_view text, const std::string& what) {
  Json result = parse_strict_json(text, what);
  SPECULA_CHECK(result.is_object(), what, ": expected a JSON object at the top level, found ", result.type_name());
  return result;
}

}  // namespace specula::io
