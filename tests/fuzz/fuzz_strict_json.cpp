// Fuzz target: the strict JSON reader every JSON input goes through (io/strict_json.h), and the
// excerpt helpers that quote untrusted values in error messages.
#include <cstdlib>

#include "fuzz_util.h"
#include "specula/io/strict_json.h"

using namespace specula;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::as_text(data, size);
  // Excerpts are bounded whatever they quote (a few bytes over the limit for "..." and the length).
  const std::string excerpt = io::text_excerpt(text, 16);
  if (excerpt.size() > 16 * 4 + 64) std::abort();
  fuzz::expect_value_or_error([&] {
    const nlohmann::json value = io::parse_strict_json(text, "input.json");
    const std::string short_form = io::json_excerpt(value, 16);
    if (short_form.size() > 16 * 4 + 64) std::abort();
    (void)value.dump();  // every accepted value can be walked (depth is bounded)
  });
  return 0;
}
