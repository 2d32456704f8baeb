// Fuzz target: the FR-Spec list reader (spec/frspec.h) on a freq_<V>.pt file in a memfd, checked
// against a small and a Llama-3-sized vocabulary. An accepted list is a duplicate-free set of ids
// inside the vocabulary.
#include <cstdlib>
#include <unordered_set>

#include "fuzz_util.h"
#include "specula/spec/frspec.h"

using namespace specula;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fuzz::MemFile mem(fuzz::as_text(data, size));
  for (const int64_t vocab : {int64_t{64}, int64_t{128256}}) {
    fuzz::expect_value_or_error([&] {
      const std::vector<int32_t> ids = spec::load_frspec_list(mem.path(), vocab);
      std::unordered_set<int32_t> seen;
      for (const int32_t id : ids)
        if (id < 0 || id >= vocab || !seen.insert(id).second) std::abort();
    });
  }
  return 0;
}
