// Fuzz target: torch.save archives (io/zip_archive.h, io/pickle.h, io/torch_checkpoint.h) as a
// whole file in a memfd: the zip index alone, then the state_dict reader and the int-list readers
// that FR-Spec uses. Entry and tensor bytes must lie inside the map or inside owned copies.
#include <cstdlib>

#include "fuzz_util.h"
#include "specula/io/torch_checkpoint.h"
#include "specula/io/zip_archive.h"

using namespace specula;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fuzz::MemFile mem(fuzz::as_text(data, size));
  fuzz::expect_value_or_error([&] {
    const MappedFile file(mem.path());
    (void)io::looks_like_torch_file(file);
    const io::ZipArchive zip(file);
    for (const io::ZipEntry& e : zip.entries()) {
      if (e.data_offset > file.size() || e.size > file.size() - e.data_offset) std::abort();
      if (zip.find(e.name) == nullptr) std::abort();
    }
  });
  fuzz::expect_value_or_error([&] {
    const io::TorchCheckpointFile checkpoint(mem.path());
    for (const io::CheckpointTensor& t : checkpoint.tensors()) {
      const int64_t numel = t.numel();
      if (static_cast<uint64_t>(numel) * dtype_size(t.dtype) != t.nbytes) std::abort();
      // Touch the first and last byte: inside the map or an owned buffer, else ASan or a fault.
      if (t.nbytes > 0 && (t.data[0] | t.data[t.nbytes - 1]) == 0x100) std::abort();
    }
  });
  fuzz::expect_value_or_error([&] { (void)io::load_torch_int_list(mem.path()); });
  fuzz::expect_value_or_error([&] { (void)io::load_torch_plain_int_list(mem.path()); });
  return 0;
}
