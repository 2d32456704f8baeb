// Fuzz target: encode and decode of arbitrary input with two small committed tokenizers (a
// byte-level BPE trimmed from Llama-3's and a SentencePiece-style BPE with byte fallback trimmed
// from Llama-2's; tests/fuzz/data/, made by tools/make_fuzz_corpus.py).
// The input is encoded as text (invalid UTF-8 must be an Error, nothing worse) and read as token
// ids to decode, including ids outside the vocabulary. Checked properties:
//   - streaming decode equals decode (tokenizer.h);
//   - the byte-level tokenizer round-trips: decode(encode(text)) == text for valid UTF-8.
#include <cstdlib>
#include <cstring>

#include "fuzz_util.h"
#include "specula/core/mapped_file.h"
#include "specula/text/tokenizer.h"

using namespace specula;

namespace {

struct Tokenizers {
  text::Tokenizer byte_level = load("llama3_small.json");
  text::Tokenizer sentencepiece = load("llama2_small.json");
  static text::Tokenizer load(const std::string& name) {
    return text::Tokenizer::from_file(std::string(SPECULA_FUZZ_DATA) + "/" + name);
  }
};

void check_stream(const text::Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  const std::string text = tok.decode(ids, skip);
  text::StreamDecoder stream(tok, skip);
  std::string streamed;
  for (const int32_t id : ids) streamed += stream.push(id);
  streamed += stream.flush();
  if (streamed != text) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizers tokenizers;
  const std::string_view text = fuzz::as_text(data, size);
  for (const text::Tokenizer* tok : {&tokenizers.byte_level, &tokenizers.sentencepiece}) {
    // Ids: little-endian 16-bit values folded onto [-16, vocab_size + 16), so nearly all are
    // tokens and a few lie on either side of the vocabulary.
    std::vector<int32_t> raw_ids;
    for (size_t i = 0; i + 1 < size; i += 2)
      raw_ids.push_back(static_cast<int32_t>((data[i] | (data[i + 1] << 8)) % (tok->vocab_size() + 32)) - 16);
    for (const bool skip : {false, true}) check_stream(*tok, raw_ids, skip);
    fuzz::expect_value_or_error([&] {
      for (const bool parse_special : {true, false}) {
        const std::vector<int32_t> ids = tok->encode(text, true, parse_special);
        for (const int32_t id : ids)
          if (id < 0 || id >= tok->vocab_size()) std::abort();
        check_stream(*tok, ids, false);
      }
      if (tok == &tokenizers.byte_level) {
        const std::vector<int32_t> ids = tok->encode(text, false, false);
        if (tok->decode(ids, false) != text) std::abort();
      }
    });
  }
  return 0;
}
