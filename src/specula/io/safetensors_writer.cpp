// safetensors writer (see safetensors_writer.h).
#include "specula/io/safetensors_writer.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "specula/core/checked_size.h"
#include "specula/core/error.h"

namespace specula::io {

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    const std::string what = path + ": tensor '" + t.name + "'";
    const int64_t numel = checked_numel(t.shape, what);
    SPECULA_CHECK(checked_nbytes(numel, t.dtype, what) == t.bytes.size(), what, " has ", t.bytes.size(), " bytes for ",
                  numel, " elements of ", dtype_name(t.dtype));
    const uint64_t end = add_size(offset, t.bytes.size(), what);
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
    offset = end;
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
