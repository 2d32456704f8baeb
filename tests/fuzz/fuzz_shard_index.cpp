// Fuzz target: the shard index reader (model.safetensors.index.json, pytorch_model.bin.index.json;
// io/safetensors.h parse_shard_index), a streaming JSON reader of its own.
#include "fuzz_util.h"
#include "specula/io/safetensors.h"

using namespace specula;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_value_or_error(
      [&] { (void)io::parse_shard_index(fuzz::as_text(data, size), "model.safetensors.index.json"); });
  return 0;
}
