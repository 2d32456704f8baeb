// safetensors writer (see safetensors_writer.h).
#include "specula/io/safetensors_writer.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "specula/core/error.h"

namespace specula::io {

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    SPECULA_CHECK(numel * dtype_size(t.dtype) == t.bytes.size(), path, ": tensor '", t.name, "' has ", t.bytes.size(),
                  " bytes for ", numel, " elements of ", dtype_name(t.dtype));
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  SPECULA_CHECK(out.good(), path, ": cannot open for writing");
  uint64_t length = text.size();
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(length >> (8 * i));
  out.write(reinterpret_cast<const char*>(le), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const TensorToWrite& t : tensors)
    out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
  SPECULA_CHECK(out.good(), path, ": write failed");
}

}  // namespace specula::io
