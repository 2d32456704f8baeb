// Fuzz target: the restricted unpickler of torch.save's data.pkl (io/pickle.h) on raw pickle
// bytes, with the production limits. What it accepts must be self-consistent: each tensor view's
// reach was checked against its storage's declared size.
#include <cstdlib>

#include "fuzz_util.h"
#include "specula/io/pickle.h"

using namespace specula;

static void check_view(const io::TorchTensorRef& t) {
  if (t.size.size() != t.stride.size() || t.storage_offset < 0) std::abort();
  const auto extent = t.storage_extent();
  if (!extent || *extent > static_cast<uint64_t>(t.storage.numel)) std::abort();
  (void)t.is_contiguous();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_value_or_error([&] {
    const io::TorchPickle p = io::read_torch_pickle(fuzz::as_text(data, size), "archive/data.pkl");
    for (const auto& [name, tensor] : p.state_dict) check_view(tensor);
    if (p.tensor) check_view(*p.tensor);
  });
  return 0;
}
