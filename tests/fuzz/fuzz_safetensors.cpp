// Fuzz target: the safetensors reader (io/safetensors.h) on a whole file held in a memfd. Every
// tensor it accepts must lie inside the file: the bytes are read through the map with no further
// checks, so the harness checks the promise itself (a range past the map would only fault when
// it reaches an unmapped page, which ASan cannot see).
#include <cstdlib>

#include "fuzz_util.h"
#include "specula/io/safetensors.h"

using namespace specula;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fuzz::MemFile mem(fuzz::as_text(data, size));
  fuzz::expect_value_or_error([&] {
    const MappedFile file(mem.path());
    const io::SafetensorsContents contents = io::parse_safetensors(file);
    const uint8_t* begin = file.data();
    const uint8_t* end = file.data() + file.size();
    for (const io::CheckpointTensor& t : contents.tensors) {
      if (t.nbytes > 0 && (t.data < begin || t.data > end || t.nbytes > static_cast<size_t>(end - t.data)))
        std::abort();
      const int64_t numel = t.numel();  // checked; throws Error on overflow
      if (static_cast<uint64_t>(numel) * dtype_size(t.dtype) != t.nbytes) std::abort();
    }
  });
  return 0;
}
