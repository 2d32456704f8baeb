// Strict accessors for tokenizer.json objects.
// A field we do not know may change behaviour in a way we would silently get wrong, so every
// component checks its keys against the list it understands; a field of the wrong type is an error
// that names the component path (e.g. "pre_tokenizer.pretokenizers[1] (ByteLevel): field
// 'add_prefix_space' must be a boolean"). Strings taken from the file (keys, type names, tokens)
// appear in messages only as short excerpts (io::text_excerpt).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include "specula/core/error.h"
#include "specula/io/strict_json.h"

namespace specula::text::json_fields {

using Json = nlohmann::json;

inline const char* type_name(const Json& j) { return j.type_name(); }

// How deeply Sequence components (normalizers, pre-tokenizers, post-processors, decoders) may
// nest. Real files nest at most two levels. The builders, and the components they build, recurse
// once per level and each level lengthens the component path quoted in errors, so the depth must
// not be the file's choice: the JSON depth limit alone would still allow about 60 levels.
constexpr int kMaxComponentNesting = 8;

inline void check_nesting(int nesting, const std::string& where) {
  SPECULA_CHECK(nesting <= kMaxComponentNesting, where, ": Sequence components nest more than ", kMaxComponentNesting,
                " levels deep (the limit)");
}

// `where` + " (" + type + ")", the component path used in messages.
inline std::string component_where(const std::string& where, const std::string& type) {
  return where + " (" + io::text_excerpt(type) + ")";
}

inline void require_object(const Json& j, const std::string& where) {
  SPECULA_CHECK(j.is_object(), where, ": expected a JSON object, found ", type_name(j));
}

inline void check_known_keys(const Json& object, std::initializer_list<std::string_view> known,
                             const std::string& where) {
  for (const auto& [key, value] : object.items()) {
    bool found = false;
    for (std::string_view k : known) found = found || (k == key);
    SPECULA_CHECK(found, where, ": unknown field '", io::text_excerpt(key), "' (not supported)");
  }
}

inline const Json* find_field(const Json& object, std::string_view key) {
  auto it = object.find(std::string(key));
  return it == object.end() ? nullptr : &*it;
}

inline const Json& require_field(const Json& object, std::string_view key, const std::string& where) {
  const Json* field = find_field(object, key);
  SPECULA_CHECK(field != nullptr, where, ": missing field '", key, "'");
  return *field;
}

inline std::string get_string(const Json& object, std::string_view key, const std::string& where) {
  const Json& field = require_field(object, key, where);
  SPECULA_CHECK(field.is_string(), where, ": field '", key, "' must be a string, found ", type_name(field));
  return field.get<std::string>();
}

// Absent or null -> nullopt.
inline std::optional<std::string> get_optional_string(const Json& object, std::string_view key,
                                                      const std::string& where) {
  const Json* field = find_field(object, key);
  if (field == nullptr || field->is_null()) return std::nullopt;
  SPECULA_CHECK(field->is_string(), where, ": field '", key, "' must be a string or null, found ",
                type_name(*field));
  return field->get<std::string>();
}

// Absent or null -> fallback.
inline bool get_bool(const Json& object, std::string_view key, bool fallback, const std::string& where) {
  const Json* field = find_field(object, key);
  if (field == nullptr || field->is_null()) return fallback;
  SPECULA_CHECK(field->is_boolean(), where, ": field '", key, "' must be a boolean, found ", type_name(*field));
  return field->get<bool>();
}

inline int64_t get_integer(const Json& object, std::string_view key, const std::string& where) {
  const Json& field = require_field(object, key, where);
  SPECULA_CHECK(field.is_number_integer(), where, ": field '", key, "' must be an integer, found ",
                type_name(field));
  return field.get<int64_t>();
}

inline int32_t checked_token_id(const Json& value, const std::string& where) {
  SPECULA_CHECK(value.is_number_integer(), where, ": token id must be an integer, found ", type_name(value));
  const int64_t id = value.get<int64_t>();
  SPECULA_CHECK(id >= 0 && id < (int64_t{1} << 31) - 1, where, ": token id ", id, " is out of range");
  return static_cast<int32_t>(id);
}

}  // namespace specula::text::json_fields
