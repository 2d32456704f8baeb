// Duplicate-key rejection is done with nlohmann's parser callback: one set of seen keys per
// open object, pushed and popped as objects start and end. NUL bytes are rejected up front.
#include "specula/io/strict_json.h"

#include <unordered_set>
#include <vector>

#include "specula/core/error.h"

namespace specula::io {

nlohmann::json parse_strict_json(std::string_view text, const std::string& what) {
  using Json = nlohmann::json;
  std::vector<std::unordered_set<std::string>> keys_per_open_object;
  std::string duplicate;
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        keys_per_open_object.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!keys_per_open_object.empty()) keys_per_open_object.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys_per_open_object.empty() && !keys_per_open_object.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };
  // nlohmann's lexer takes a NUL byte for end of input and would ignore whatever follows it;
  // valid JSON never contains a raw NUL (control characters in strings must be escaped).
  const size_t nul = text.find('\0');
  SPECULA_CHECK(nul == std::string_view::npos, what, ": invalid JSON: NUL byte at offset ", nul);
  Json result;
  try {
    result = Json::parse(text.begin(), text.end(), callback);
  } catch (const Json::exception& e) {
    fail(what, ": invalid JSON: ", e.what());
  }
  SPECULA_CHECK(duplicate.empty(), what, ": key '", duplicate, "' appears twice");
  return result;
}

}  // namespace specula::io
