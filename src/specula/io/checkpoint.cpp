// Directory resolution and shard indexes. The format of a file is decided by its extension when
// that is unambiguous and by its first bytes otherwise, so a misnamed file still gets the error
// of the reader that matches its content. Shard names from an index are untrusted: a name with a
// path separator or '..' could reach outside the model directory, so it is rejected.
#include "specula/io/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "specula/core/checked_size.h"
#include "specula/core/error.h"
#include "specula/core/mapped_file.h"
#include "specula/io/safetensors.h"
#include "specula/io/strict_json.h"
#include "specula/io/torch_checkpoint.h"

namespace specula::io {

namespace {

namespace fs = std::filesystem;

constexpr const char* kSafetensorsIndex = "model.safetensors.index.json";
constexpr const char* kTorchIndex = "pytorch_model.bin.index.json";
constexpr const char* kSafetensorsFormat = "safetensors";
constexpr const char* kTorchFormat = "pytorch zip";

bool ends_with(const std::string& text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts_like_torch(const std::string& path) {
  const std::string got = read_file_prefix(path, 4);
  return got == std::string_view("PK\x03\x04", 4) || (got.size() >= 2 && got[0] == '\x80' && got[1] == '\x02');
}

// Opens one checkpoint file with the reader its name or content calls for.
std::unique_ptr<TensorFile> open_tensor_file(const std::string& path) {
  const bool torch = ends_with(path, ".bin") || ends_with(path, ".pt") || ends_with(path, ".pth") ||
                     (!ends_with(path, ".safetensors") && starts_like_torch(path));
  if (torch) return std::make_unique<TorchCheckpointFile>(path);
  return std::make_unique<SafetensorsFile>(path);
}

const char* format_of(const TensorFile& file) {
  return dynamic_cast<const TorchCheckpointFile*>(&file) != nullptr ? kTorchFormat : kSafetensorsFormat;
}

bool is_safe_shard_name(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name.find('\\') == std::string::npos &&
         name.find("..") == std::string::npos;
}

// weight_map of an index file: tensor name -> shard file name, validated.
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  std::map<std::string, std::string> weight_map = parse_shard_index(read_text_file(index_path), index_path);
  for (const auto& [tensor, file_name] : weight_map) {
    SPECULA_CHECK(is_safe_shard_name(file_name), index_path, ": weight_map entry for tensor '", text_excerpt(tensor),
                  "' names file '", text_excerpt(file_name), "', which is not a plain file name in the index's directory");
  }
  SPECULA_CHECK(!weight_map.empty(), index_path, ": \"weight_map\" is empty");
  return weight_map;
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

}  // namespace

Checkpoint::~Checkpoint() = default;

void Checkpoint::add_file(std::unique_ptr<TensorFile> file) {
  for (const CheckpointTensor& t : file->tensors()) {
    const auto [it, inserted] = tensors_.emplace(t.name, t);
    SPECULA_CHECK(inserted, path_, ": tensor '", text_excerpt(t.name), "' appears in both ", it->second.file, " and ",
                  t.file);
    total_bytes_ = add_size(total_bytes_, t.nbytes, path_ + ": total tensor bytes");
  }
  files_.push_back(std::move(file));
}

Checkpoint Checkpoint::open(const std::string& path) {
  Checkpoint checkpoint;
  checkpoint.path_ = path;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  SPECULA_CHECK(!ec && fs::exists(status), path, ": no such file or directory");

  std::string index_path;
  std::string single_file;
  if (fs::is_directory(status)) {
    const fs::path dir(path);
    if (fs::is_regular_file(dir / kSafetensorsIndex)) {
      index_path = (dir / kSafetensorsIndex).string();
    } else if (fs::is_regular_file(dir / kTorchIndex)) {
      index_path = (dir / kTorchIndex).string();
    } else {
      std::map<std::string, std::vector<std::string>> by_extension;
      try {
        for (const auto& entry : fs::directory_iterator(dir)) {
          if (entry.is_regular_file()) by_extension[entry.path().extension().string()].push_back(entry.path().string());
        }
      } catch (const fs::filesystem_error& e) {
        fail(path, ": cannot list directory: ", e.what());
      }
      for (const char* extension : {".safetensors", ".bin", ".pt"}) {
        std::vector<std::string>& files = by_extension[extension];
        if (files.empty()) continue;
        std::sort(files.begin(), files.end());
        SPECULA_CHECK(files.size() == 1, path, ": ", files.size(), " *", extension,
                      " files and no index to say how they fit together: ", join_names(files));
        single_file = files.front();
        break;
      }
      SPECULA_CHECK(!single_file.empty(), path, ": no checkpoint found (looked for ", kSafetensorsIndex, ", ",
                    kTorchIndex, ", then a single *.safetensors, *.bin or *.pt file)");
    }
  } else if (ends_with(path, ".index.json")) {
    index_path = path;
  } else {
    single_file = path;
  }

  if (!single_file.empty()) {
    auto file = open_tensor_file(single_file);
    checkpoint.description_ = format_of(*file);
    checkpoint.add_file(std::move(file));
    return checkpoint;
  }

  const std::map<std::string, std::string> weight_map = read_weight_map(index_path);
  const fs::path shard_dir = fs::path(index_path).parent_path();
  std::map<std::string, const TensorFile*> shards;
  for (const auto& [tensor, file_name] : weight_map) shards.emplace(file_name, nullptr);
  std::set<std::string> formats;
  for (auto& [file_name, opened] : shards) {
    auto file = open_tensor_file((shard_dir / file_name).string());
    formats.insert(format_of(*file));
    opened = file.get();
    checkpoint.add_file(std::move(file));
  }
  for (const auto& [tensor, file_name] : weight_map) {
    const auto it = checkpoint.tensors_.find(tensor);
    SPECULA_CHECK(it != checkpoint.tensors_.end() && it->second.file == shards.at(file_name)->path(), index_path,
                  ": tensor '", text_excerpt(tensor), "' is mapped to ", file_name, " but that shard does not contain it");
  }
  std::string format_names;
  for (const auto& f : formats) {
    if (!format_names.empty()) format_names += " + ";
    format_names += f;
  }
  checkpoint.description_ =
      format_names + ", " + std::to_string(shards.size()) + (shards.size() == 1 ? " shard" : " shards");
  return checkpoint;
}

const CheckpointTensor* Checkpoint::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const CheckpointTensor& Checkpoint::get(const std::string& name) const {
  const CheckpointTensor* tensor = find(name);
  SPECULA_CHECK(tensor != nullptr, path_, ": tensor '", name, "' not found");
  return *tensor;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, tensor] : tensors_) out.push_back(name);
  return out;
}

}  // namespace specula::io
