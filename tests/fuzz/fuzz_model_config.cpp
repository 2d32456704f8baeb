// Fuzz target: the Hugging Face config.json reader (model/config.h). The input is config.json,
// optionally followed by a NUL byte and a generation_config.json (JSON text never holds a raw NUL,
// so the split is unambiguous). An accepted config must also survive what the loader does next
// with it: the rotary tables and the summary.
#include <cstring>

#include "fuzz_util.h"
#include "specula/model/config.h"

using namespace specula;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input = fuzz::as_text(data, size);
  const size_t nul = input.find('\0');
  const std::string config(input.substr(0, nul));
  const std::string generation = nul == std::string_view::npos ? std::string() : std::string(input.substr(nul + 1));
  fuzz::expect_value_or_error([&] {
    const model::ModelConfig c = model::ModelConfig::from_json(config, "config.json", generation);
    (void)c.rope_inv_freq();
    (void)c.rope_attention_scaling();
    (void)c.summary();
  });
  return 0;
}
