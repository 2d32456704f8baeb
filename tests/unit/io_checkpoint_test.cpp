// Checkpoint: directory resolution order, shard indexes (and their hostile variants), the
// committed fixtures in every layout, and the guarantees the model loader relies on (sorted
// names, lookup errors naming the directory, pointers that survive moving the Checkpoint).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "io_test_util.h"
#include "specula/core/mapped_file.h"
#include "specula/io/checkpoint.h"

using namespace specula;
using namespace specula::io;
using namespace specula::io::testing;

namespace {

std::string fixture(const std::string& name) { return std::string(SPECULA_TEST_DATA) + "/models/" + name; }

std::string one_tensor_safetensors(const std::string& name, float value) {
  return safetensors_file({{name, "F32", {1}, bytes_of(std::vector<float>{value})}});
}

std::string one_tensor_torch(const std::string& name, float value) {
  return torch_zip("archive", state_dict_pickle({{name, "FloatStorage", "0", 1, 0, {1}, {1}}}),
                   {{"0", bytes_of(std::vector<float>{value})}});
}

float first_float(const CheckpointTensor& t) { return load_as_f32(t.data, t.dtype, 0); }

// An index whose weight_map maps each name to a file.
std::string index_json(const std::map<std::string, std::string>& weight_map) {
  nlohmann::json j;
  j["metadata"] = {{"total_size", 0}};
  j["weight_map"] = weight_map;
  return j.dump();
}

}  // namespace

TEST(ioCheckpoint, OpensTheShardedSafetensorsFixture) {
  const std::string dir = fixture("llama3_untied_sharded");
  const Checkpoint ckpt = Checkpoint::open(dir);
  EXPECT_EQ(ckpt.format_description(), "safetensors, 3 shards");
  EXPECT_EQ(ckpt.path(), dir);
  const nlohmann::json index = nlohmann::json::parse(read_text_file(dir + "/model.safetensors.index.json"));
  std::vector<std::string> expected;
  for (const auto& [name, file] : index["weight_map"].items()) {
    expected.push_back(name);
    const CheckpointTensor& t = ckpt.get(name);
    EXPECT_EQ(t.file, dir + "/" + file.get<std::string>()) << name;
    EXPECT_EQ(t.dtype, DType::BF16) << name;
  }
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(ckpt.names(), expected);
  EXPECT_EQ(ckpt.total_bytes(), index["metadata"]["total_size"].get<size_t>());
  EXPECT_EQ(ckpt.get("lm_head.weight").shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(ckpt.get("model.layers.1.self_attn.k_proj.weight").shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(ckpt.find("model.layers.2.mlp.up_proj.weight"), nullptr);
  expect_error([&] { (void)ckpt.get("model.layers.9.mlp.up_proj.weight"); },
               {dir, "tensor 'model.layers.9.mlp.up_proj.weight' not found"});
}

TEST(ioCheckpoint, OpensEveryCommittedFixtureLayout) {
  const Checkpoint bin = Checkpoint::open(fixture("qwen2_bias_bin"));
  EXPECT_EQ(bin.format_description(), "pytorch zip");
  EXPECT_NE(bin.find("model.layers.0.self_attn.q_proj.bias"), nullptr);

  const Checkpoint tied = Checkpoint::open(fixture("llama3_tied_ropescaling"));
  EXPECT_EQ(tied.format_description(), "safetensors");
  EXPECT_EQ(tied.find("lm_head.weight"), nullptr) << "tied embeddings: no head tensor";
  EXPECT_NE(tied.find("model.embed_tokens.weight"), nullptr);

  for (const char* name : {"qwen3_headdim_qknorm", "minicpm4_longrope"}) {
    const Checkpoint c = Checkpoint::open(fixture(name));
    EXPECT_EQ(c.format_description(), "safetensors") << name;
    EXPECT_FALSE(c.names().empty()) << name;
  }
  // Single files and index files can be named directly.
  EXPECT_EQ(Checkpoint::open(fixture("qwen2_bias_bin") + "/pytorch_model.bin").names(), bin.names());
  EXPECT_EQ(Checkpoint::open(fixture("llama3_untied_sharded") + "/model.safetensors.index.json").format_description(),
            "safetensors, 3 shards");
  EXPECT_EQ(Checkpoint::open(fixture("llama3_tied_ropescaling") + "/model.safetensors").names(), tied.names());
}

TEST(ioCheckpoint, TensorPointersSurviveMovingTheCheckpoint) {
  Checkpoint original = Checkpoint::open(fixture("llama3_untied_sharded"));
  const CheckpointTensor* before = original.find("model.norm.weight");
  ASSERT_NE(before, nullptr);
  const uint8_t* data = before->data;
  const float value = first_float(*before);
  Checkpoint moved = std::move(original);
  EXPECT_EQ(moved.find("model.norm.weight"), before);
  EXPECT_EQ(moved.get("model.norm.weight").data, data);
  EXPECT_EQ(first_float(*before), value);
  Checkpoint assigned = Checkpoint::open(fixture("qwen2_bias_bin"));
  assigned = std::move(moved);
  EXPECT_EQ(first_float(assigned.get("model.norm.weight")), value);
  static_assert(!std::is_copy_constructible_v<Checkpoint>);
  static_assert(std::is_nothrow_move_constructible_v<Checkpoint>);
}

TEST(ioCheckpoint, ResolvesDirectoriesInTheDocumentedOrder) {
  TempDir dir;
  dir.write("model.pt", one_tensor_torch("from_pt", 3));
  EXPECT_EQ(Checkpoint::open(dir.path().string()).names(), std::vector<std::string>{"from_pt"});
  dir.write("model.bin", one_tensor_torch("from_bin", 2));
  EXPECT_EQ(Checkpoint::open(dir.path().string()).names(), std::vector<std::string>{"from_bin"});
  dir.write("model.safetensors", one_tensor_safetensors("from_safetensors", 1));
  EXPECT_EQ(Checkpoint::open(dir.path().string()).names(), std::vector<std::string>{"from_safetensors"});
  dir.write("pytorch_model-00001-of-00001.bin", one_tensor_torch("from_bin_index", 5));
  dir.write("pytorch_model.bin.index.json", index_json({{"from_bin_index", "pytorch_model-00001-of-00001.bin"}}));
  const Checkpoint bin_index = Checkpoint::open(dir.path().string());
  EXPECT_EQ(bin_index.names(), std::vector<std::string>{"from_bin_index"});
  EXPECT_EQ(bin_index.format_description(), "pytorch zip, 1 shard");
  dir.write("shard.safetensors.part", one_tensor_safetensors("from_index", 4));
  dir.write("model.safetensors.index.json", index_json({{"from_index", "shard.safetensors.part"}}));
  const Checkpoint index = Checkpoint::open(dir.path().string());
  EXPECT_EQ(index.names(), std::vector<std::string>{"from_index"});
  EXPECT_EQ(first_float(index.get("from_index")), 4.0f);
}

TEST(ioCheckpoint, FailsListingWhatItLookedFor) {
  TempDir dir;
  dir.write("config.json", "{}");
  expect_error([&] { (void)Checkpoint::open(dir.path().string()); },
               {dir.path().string(), "no checkpoint found", "model.safetensors.index.json", "pytorch_model.bin.index.json",
                "*.safetensors", "*.bin", "*.pt"});
  expect_error([&] { (void)Checkpoint::open(dir.file("missing")); }, {"missing", "no such file"});
  dir.write("a.safetensors", one_tensor_safetensors("a", 1));
  dir.write("b.safetensors", one_tensor_safetensors("b", 1));
  expect_error([&] { (void)Checkpoint::open(dir.path().string()); }, {"2 *.safetensors files and no index", "a.safetensors"});
}

TEST(ioCheckpoint, ReadsTorchShardIndexesAcrossFiles) {
  TempDir dir;
  dir.write("pytorch_model-00001-of-00002.bin", one_tensor_torch("a", 1));
  dir.write("pytorch_model-00002-of-00002.bin", one_tensor_torch("b", 2));
  dir.write("pytorch_model.bin.index.json", index_json({{"a", "pytorch_model-00001-of-00002.bin"},
                                                         {"b", "pytorch_model-00002-of-00002.bin"}}));
  const Checkpoint c = Checkpoint::open(dir.path().string());
  EXPECT_EQ(c.format_description(), "pytorch zip, 2 shards");
  EXPECT_EQ(first_float(c.get("a")), 1.0f);
  EXPECT_EQ(first_float(c.get("b")), 2.0f);
  EXPECT_EQ(c.total_bytes(), 8u);
}

TEST(ioCheckpoint, RejectsHostileOrInconsistentIndexes) {
  const auto expect_index_error = [](const std::string& index, const std::vector<std::string>& parts) {
    TempDir dir;
    dir.write("s1.safetensors", one_tensor_safetensors("a", 1));
    dir.write("s2.safetensors", one_tensor_safetensors("b", 2));
    dir.write("model.safetensors.index.json", index);
    std::vector<std::string> all{"model.safetensors.index.json"};
    all.insert(all.end(), parts.begin(), parts.end());
    expect_error([&] { (void)Checkpoint::open(dir.path().string()); }, all);
  };
  expect_index_error("{\"weight_map\": {", {"invalid JSON"});
  expect_index_error("[]", {"not a JSON object"});
  expect_index_error("{\"metadata\": {}}", {"no \"weight_map\""});
  expect_index_error("{\"weight_map\": [\"s1.safetensors\"]}", {"not an object"});
  expect_index_error("{\"weight_map\": {}}", {"empty"});
  expect_index_error("{\"weight_map\": {\"a\": 1}}", {"tensor 'a'", "not a string"});
  expect_index_error(index_json({{"a", "../s1.safetensors"}}), {"'../s1.safetensors'", "not a plain file name"});
  expect_index_error(index_json({{"a", "/etc/passwd"}}), {"'/etc/passwd'", "not a plain file name"});
  expect_index_error(index_json({{"a", "sub/s1.safetensors"}}), {"not a plain file name"});
  expect_index_error(index_json({{"a", ".."}}), {"not a plain file name"});
  expect_index_error(index_json({{"a", ""}}), {"not a plain file name"});
  expect_index_error(index_json({{"a", "s1.safetensors"}, {"c", "s2.safetensors"}}),
                     {"tensor 'c' is mapped to s2.safetensors but that shard does not contain it"});
  expect_index_error(index_json({{"a", "s2.safetensors"}, {"b", "s2.safetensors"}}),
                     {"tensor 'a' is mapped to s2.safetensors"});
  expect_index_error("{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s2.safetensors\"}}", {"'a' appears twice"});

  // A shard named by the index but absent from the directory.
  TempDir dir;
  dir.write("model.safetensors.index.json", index_json({{"a", "gone.safetensors"}}));
  expect_error([&] { (void)Checkpoint::open(dir.path().string()); }, {"gone.safetensors", "cannot open"});
  // The same tensor in two shards is ambiguous.
  TempDir dup;
  dup.write("s1.safetensors", one_tensor_safetensors("a", 1));
  dup.write("s2.safetensors", one_tensor_safetensors("a", 2));
  dup.write("model.safetensors.index.json", index_json({{"a", "s1.safetensors"}, {"x", "s2.safetensors"}}));
  expect_error([&] { (void)Checkpoint::open(dup.path().string()); }, {"tensor 'a' appears in both"});
}

TEST(ioCheckpoint, ReportsErrorsOfTheReaderMatchingTheFile) {
  TempDir dir;
  // A torch archive misnamed .safetensors is read as safetensors (the name says so) and fails.
  expect_error([&] { (void)Checkpoint::open(dir.write("m.safetensors", one_tensor_torch("a", 1))); },
               {"m.safetensors"});
  // An unknown extension is sniffed: a torch archive is read as one.
  EXPECT_EQ(Checkpoint::open(dir.write("weights.ckpt", one_tensor_torch("a", 1))).format_description(), "pytorch zip");
  EXPECT_EQ(Checkpoint::open(dir.write("weights.st", one_tensor_safetensors("a", 1))).format_description(),
            "safetensors");
  // A corrupt shard names itself.
  dir.write("pytorch_model-1.bin", "garbage");
  dir.write("pytorch_model.bin.index.json", index_json({{"a", "pytorch_model-1.bin"}}));
  expect_error([&] { (void)Checkpoint::open(dir.path().string()); }, {"pytorch_model-1.bin", "not a torch.save zip"});
}

TEST(ioCheckpoint, TensorElementCountsAreChecked) {
  CheckpointTensor t;
  t.name = "w";
  t.file = "m.safetensors";
  t.shape = {3, 4};
  EXPECT_EQ(t.numel(), 12);
  t.shape = {int64_t{1} << 62, 4};
  expect_error([&] { (void)t.numel(); }, {"m.safetensors", "tensor 'w'", "overflows"});
  t.shape = {2, -1};
  expect_error([&] { (void)t.numel(); }, {"m.safetensors", "tensor 'w'", "negative"});
}

// A million-entry index is read in seconds (nlohmann's callback parser, which strict_json used,
// was quadratic in the members of an object), and the first tensor its shard lacks is named.
TEST(ioCheckpoint, AMillionEntryIndexIsReadInLinearTime) {
  constexpr size_t kEntries = 1'000'000;
  constexpr double kMaxSeconds = 20;  // generous: a few seconds under the sanitizers
  TempDir dir;
  dir.write("s.safetensors", one_tensor_safetensors("t0", 1));
  std::string index = "{\"metadata\":{\"total_size\":4},\"weight_map\":{";
  for (size_t i = 0; i < kEntries; ++i) {
    index += i ? ",\"t" : "\"t";
    index += std::to_string(i);
    index += "\":\"s.safetensors\"";
  }
  dir.write("model.safetensors.index.json", index + "}}");
  index = std::string();
  const auto start = std::chrono::steady_clock::now();
  expect_error([&] { (void)Checkpoint::open(dir.path().string()); },
               {"model.safetensors.index.json", "tensor 't1' is mapped to s.safetensors but that shard does not contain it"});
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), kMaxSeconds);
}
