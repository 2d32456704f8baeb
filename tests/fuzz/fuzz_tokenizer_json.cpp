// Fuzz target: the tokenizer.json loader (text/tokenizer_json.h streams vocab and merges, then
// text/tokenizer.h builds every component). A tokenizer it accepts must then encode and decode a
// fixed sample without failing, and streaming decode must agree with decode, as documented.
#include <cstdlib>

#include "fuzz_util.h"
#include "specula/text/tokenizer.h"

using namespace specula;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string json(fuzz::as_text(data, size));
  fuzz::expect_value_or_error([&] {
    const text::Tokenizer tok = text::Tokenizer::from_json_string(json, "tokenizer.json");
    const std::string sample = "Hello, world! 123  <s> \xC3\xA9t\xC3\xA9\n\t\xE4\xB8\x96\xE7\x95\x8C x";
    for (const bool parse_special : {true, false}) {
      const std::vector<int32_t> ids = tok.encode(sample, true, parse_special);
      for (const bool skip : {false, true}) {
        const std::string text = tok.decode(ids, skip);
        text::StreamDecoder stream(tok, skip);
        std::string streamed;
        for (const int32_t id : ids) streamed += stream.push(id);
        streamed += stream.flush();
        if (streamed != text) std::abort();
      }
    }
    const int32_t n = tok.vocab_size();
    for (int32_t id = -1; id <= n && id < 300; ++id) {
      (void)tok.id_to_token(id);
      (void)tok.is_special(id);
    }
  });
  return 0;
}
