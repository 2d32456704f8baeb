// torch.save archives end to end: zip + pickle + storage records. Built archives cover shared
// storages, strided views (materialized) and contiguous ones (zero-copy), both prefix styles,
// ZIP64, and each archive-level failure; the committed qwen2 fixture and (when present on this
// machine) the tinygo EAGLE head and FR-Spec list are real torch.save files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "io_test_util.h"
#include "specula/core/dtype.h"
#include "specula/core/mapped_file.h"
#include "specula/io/torch_checkpoint.h"

using namespace specula;
using namespace specula::io;
using namespace specula::io::testing;

namespace {

const std::vector<float> kStorage0 = [] {
  std::vector<float> v(12);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return v;
}();
const std::vector<uint16_t> kStorage1{f32_to_bf16(0.5f), f32_to_bf16(-1.0f), f32_to_bf16(2.0f)};

// Views of storage "0" (floats 0..11) in the shapes torch.save meets: the full matrix, a row,
// its transpose, a column, a strided slice, an expanded (stride 0) view, a scalar, an empty
// tensor and a size-1 dimension with an arbitrary stride; plus a tensor on storage "1".
const std::vector<PickledTensor> kViews{
    {"w", "FloatStorage", "0", 12, 0, {3, 4}, {4, 1}},
    {"row1", "FloatStorage", "0", 12, 4, {4}, {1}},
    {"w_t", "FloatStorage", "0", 12, 0, {4, 3}, {1, 4}},
    {"col1", "FloatStorage", "0", 12, 1, {3}, {4}},
    {"even", "FloatStorage", "0", 12, 0, {2, 2}, {4, 2}},
    {"expanded", "FloatStorage", "0", 12, 0, {2, 3}, {0, 1}},
    {"scalar", "FloatStorage", "0", 12, 5, {}, {}},
    {"empty", "FloatStorage", "0", 12, 0, {0, 3}, {3, 1}},
    {"last_row", "FloatStorage", "0", 12, 8, {1, 4}, {7, 1}},
    {"bias", "BFloat16Storage", "1", 3, 0, {3}, {1}},
};

std::map<std::string, std::string> view_records() { return {{"0", bytes_of(kStorage0)}, {"1", bytes_of(kStorage1)}}; }

std::vector<float> floats_of(const CheckpointTensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = load_as_f32(t.data, t.dtype, i);
  return out;
}

std::map<std::string, const CheckpointTensor*> by_name(const TorchCheckpointFile& file) {
  std::map<std::string, const CheckpointTensor*> out;
  for (const auto& t : file.tensors()) out[t.name] = &t;
  return out;
}

std::string shared_model(const std::string& relative) { return "/work/shared/models/tinygo-llama3/" + relative; }

}  // namespace

TEST(ioTorchCheckpoint, ReadsViewsOfSharedStoragesCopyingOnlyStridedOnes) {
  TempDir dir;
  const std::string path =
      dir.write("pytorch_model.bin", torch_zip("archive", state_dict_pickle(kViews, {true, true, false}), view_records()));
  const TorchCheckpointFile file(path);
  EXPECT_EQ(file.record_prefix(), "archive");
  ASSERT_EQ(file.tensors().size(), kViews.size());
  for (size_t i = 0; i < kViews.size(); ++i) EXPECT_EQ(file.tensors()[i].name, kViews[i].name) << "pickle order";
  const auto t = by_name(file);

  EXPECT_EQ(floats_of(*t.at("w")), kStorage0);
  EXPECT_EQ(t.at("w")->shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(t.at("w")->file, path);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.at("w")->data) % 64, 0u) << "points at the 64-byte aligned record";
  EXPECT_EQ(t.at("row1")->data, t.at("w")->data + 16) << "shared storage, zero-copy";
  EXPECT_EQ(t.at("last_row")->data, t.at("w")->data + 32) << "size-1 dims do not make a view strided";
  EXPECT_EQ(floats_of(*t.at("row1")), (std::vector<float>{4, 5, 6, 7}));
  EXPECT_EQ(floats_of(*t.at("w_t")), (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  EXPECT_EQ(floats_of(*t.at("col1")), (std::vector<float>{1, 5, 9}));
  EXPECT_EQ(floats_of(*t.at("even")), (std::vector<float>{0, 2, 4, 6}));
  EXPECT_EQ(floats_of(*t.at("expanded")), (std::vector<float>{0, 1, 2, 0, 1, 2}));
  EXPECT_EQ(floats_of(*t.at("scalar")), std::vector<float>{5});
  EXPECT_TRUE(t.at("scalar")->shape.empty());
  EXPECT_EQ(t.at("empty")->nbytes, 0u);
  EXPECT_EQ(t.at("empty")->numel(), 0);
  EXPECT_EQ(floats_of(*t.at("last_row")), (std::vector<float>{8, 9, 10, 11}));
  EXPECT_EQ(t.at("bias")->dtype, DType::BF16);
  EXPECT_EQ(floats_of(*t.at("bias")), (std::vector<float>{0.5f, -1.0f, 2.0f}));
  EXPECT_EQ(file.materialized_count(), 4u);  // w_t, col1, even, expanded
  for (const auto& tensor : file.tensors())
    EXPECT_EQ(tensor.nbytes, static_cast<size_t>(tensor.numel()) * dtype_size(tensor.dtype)) << tensor.name;
}

TEST(ioTorchCheckpoint, DerivesThePrefixFromDataPklAndReadsZip64) {
  TempDir dir;
  for (const Zip64 zip64 : {Zip64::None, Zip64::All, Zip64::OffsetsOnly}) {
    const std::string path = dir.write(
        "m.bin", torch_zip("my_model-v2", state_dict_pickle(kViews), view_records(), "little", zip64));
    const TorchCheckpointFile file(path);
    EXPECT_EQ(file.record_prefix(), "my_model-v2");
    EXPECT_EQ(floats_of(*by_name(file).at("w_t")), (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  }
  // Old writers have no byteorder record: little-endian is implied.
  const TorchCheckpointFile old(dir.write("old.bin", torch_zip("archive", state_dict_pickle(kViews), view_records(), "")));
  EXPECT_EQ(old.tensors().size(), kViews.size());
}

TEST(ioTorchCheckpoint, RejectsMissingOrShortStorageRecords) {
  TempDir dir;
  auto records = view_records();
  records.erase("1");
  expect_error([&] { TorchCheckpointFile f(dir.write("a.bin", torch_zip("archive", state_dict_pickle(kViews), records))); },
               {"a.bin", "tensor 'bias'", "storage record 'archive/data/1' is missing"});
  records = view_records();
  records["0"].resize(40);  // 10 floats, the pickle says 12
  expect_error([&] { TorchCheckpointFile f(dir.write("b.bin", torch_zip("archive", state_dict_pickle(kViews), records))); },
               {"b.bin", "tensor 'w'", "holds 40 bytes", "12 elements of F32"});
}

TEST(ioTorchCheckpoint, RejectsBigEndianAndUnknownByteOrder) {
  TempDir dir;
  expect_error([&] {
    TorchCheckpointFile f(dir.write("be.bin", torch_zip("archive", state_dict_pickle(kViews), view_records(), "big")));
  }, {"be.bin", "big-endian"});
  expect_error([&] {
    TorchCheckpointFile f(dir.write("x.bin", torch_zip("archive", state_dict_pickle(kViews), view_records(), "middle")));
  }, {"x.bin", "byteorder", "middle"});
}

TEST(ioTorchCheckpoint, RejectsLegacyAndNonZipFiles) {
  TempDir dir;
  // Pre-1.6 torch.save: a bare pickle stream starting with PROTO 2 and the magic number LONG1.
  const std::string legacy = PickleBuilder().proto().long1("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19").stop().bytes();
  expect_error([&] { TorchCheckpointFile f(dir.write("legacy.bin", legacy)); }, {"legacy.bin", "legacy", "not supported"});
  expect_error([&] { (void)load_torch_int_list(dir.write("legacy.pt", legacy)); }, {"legacy.pt", "legacy"});
  expect_error([&] { TorchCheckpointFile f(dir.write("text.bin", "hello world")); }, {"text.bin", "not a torch.save zip"});
  expect_error([&] { TorchCheckpointFile f(dir.write("empty.bin", "")); }, {"empty.bin", "not a torch.save zip"});
}

TEST(ioTorchCheckpoint, RejectsArchivesWithoutExactlyOnePickle) {
  TempDir dir;
  expect_error([&] {
    TorchCheckpointFile f(dir.write("none.bin", zip_archive({{"archive/version", "3\n"}, {"data.pkl", "x"}}).bytes));
  }, {"none.bin", "no <folder>/data.pkl"});
  const std::string pickle = state_dict_pickle({});
  expect_error([&] {
    TorchCheckpointFile f(dir.write("two.bin", zip_archive({{"a/data.pkl", pickle}, {"b/data.pkl", pickle}}).bytes));
  }, {"two.bin", "two pickles"});
  // A data.pkl in a nested folder is a storage-like record, not the archive's pickle.
  const TorchCheckpointFile nested(
      dir.write("nested.bin", zip_archive({{"a/data.pkl", pickle}, {"a/data/data.pkl", "zz"}}).bytes));
  EXPECT_EQ(nested.record_prefix(), "a");
  EXPECT_TRUE(nested.tensors().empty());
}

TEST(ioTorchCheckpoint, RejectsHostilePicklesNamingTheFile) {
  TempDir dir;
  const std::string pickle = PickleBuilder().proto().global("os", "system").unicode("rm -rf /").tuple_n(1).reduce().stop().bytes();
  expect_error([&] { TorchCheckpointFile f(dir.write("evil.bin", torch_zip("archive", pickle, {}))); },
               {"evil.bin", "archive/data.pkl", "'os.system' is not allowed"});
  // A well-formed pickle whose view reaches past its storage.
  const std::string too_far = state_dict_pickle({{"w", "FloatStorage", "0", 12, 0, {4, 4}, {4, 1}}});
  expect_error([&] { TorchCheckpointFile f(dir.write("far.bin", torch_zip("archive", too_far, view_records()))); },
               {"far.bin", "storage too small"});
}

TEST(ioTorchCheckpoint, RejectsFilesThatAreNotStateDicts) {
  TempDir dir;
  expect_error([&] { TorchCheckpointFile f(dir.write("freq.pt", torch_zip("archive", int_list_pickle({1, 2}), {}))); },
               {"freq.pt", "list of ints", "not a state_dict"});
}

// Every single-byte change (and truncation) of a small archive either loads or throws
// specula::Error; on success every byte of every tensor is read so ASan sees any bad pointer.
TEST(ioTorchCheckpoint, SurvivesEveryByteCorruption) {
  TempDir dir;
  const std::vector<PickledTensor> tensors{kViews[0], kViews[2], kViews[9]};
  const std::string good = torch_zip("archive", state_dict_pickle(tensors, {true, false, false}), view_records());
  size_t loaded = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    for (const char value : {'\x00', '\xff', '\x05'}) {
      std::string bytes = good;
      bytes[i] = value;
      if (i % 7 == 0) bytes = good.substr(0, i);
      const std::string path = dir.write("f.bin", bytes);
      try {
        TorchCheckpointFile file(path);
        unsigned checksum = 0;
        for (const auto& t : file.tensors())
          for (size_t b = 0; b < t.nbytes; ++b) checksum += t.data[b];
        (void)checksum;
        ++loaded;
      } catch (const specula::Error&) {
      }
    }
  }
  EXPECT_GT(loaded, 0u) << "corruptions of padding and unused fields should still load";
}

TEST(ioTorchCheckpoint, ReadsTheCommittedQwen2BinFixture) {
  const std::string dir = std::string(SPECULA_TEST_DATA) + "/models/qwen2_bias_bin";
  const nlohmann::json config = nlohmann::json::parse(read_text_file(dir + "/config.json"));
  const int64_t hidden = config["hidden_size"], vocab = config["vocab_size"], inter = config["intermediate_size"];
  const int64_t heads = config["num_attention_heads"], kv_heads = config["num_key_value_heads"];
  const int64_t layers = config["num_hidden_layers"];
  const int64_t head_dim = hidden / heads;

  const TorchCheckpointFile file(dir + "/pytorch_model.bin");
  EXPECT_EQ(file.record_prefix(), "pytorch_model");
  EXPECT_EQ(file.materialized_count(), 0u);
  // Per layer: q/k/v weights and biases, o, gate, up, down, two norms; plus embed, norm, lm_head.
  ASSERT_EQ(file.tensors().size(), static_cast<size_t>(layers * 12 + 3));
  const auto t = by_name(file);
  using Shape = std::vector<int64_t>;
  EXPECT_EQ(t.at("model.embed_tokens.weight")->shape, (Shape{vocab, hidden}));
  EXPECT_EQ(t.at("lm_head.weight")->shape, (Shape{vocab, hidden}));
  EXPECT_EQ(t.at("model.norm.weight")->shape, (Shape{hidden}));
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(t.at(p + "self_attn.q_proj.weight")->shape, (Shape{heads * head_dim, hidden}));
    EXPECT_EQ(t.at(p + "self_attn.q_proj.bias")->shape, (Shape{heads * head_dim}));
    EXPECT_EQ(t.at(p + "self_attn.k_proj.weight")->shape, (Shape{kv_heads * head_dim, hidden}));
    EXPECT_EQ(t.at(p + "self_attn.k_proj.bias")->shape, (Shape{kv_heads * head_dim}));
    EXPECT_EQ(t.at(p + "self_attn.v_proj.bias")->shape, (Shape{kv_heads * head_dim}));
    EXPECT_EQ(t.at(p + "self_attn.o_proj.weight")->shape, (Shape{hidden, heads * head_dim}));
    EXPECT_EQ(t.at(p + "mlp.gate_proj.weight")->shape, (Shape{inter, hidden}));
    EXPECT_EQ(t.at(p + "mlp.down_proj.weight")->shape, (Shape{hidden, inter}));
    EXPECT_EQ(t.at(p + "input_layernorm.weight")->shape, (Shape{hidden}));
  }
  // tools/make_model_fixtures.py draws norms as 1 + 0.2 N(0,1), embeddings as 0.05 N(0,1) and
  // other weights as 0.15 N(0,1), then stores bf16: the statistics identify the right bytes.
  const auto stats = [](const CheckpointTensor& tensor) {
    double sum = 0, sq = 0;
    const auto values = floats_of(tensor);
    for (const float v : values) {
      EXPECT_TRUE(std::isfinite(v)) << tensor.name;
      sum += v;
      sq += double{v} * v;
    }
    const double mean = sum / values.size();
    return std::pair<double, double>{mean, std::sqrt(sq / values.size() - mean * mean)};
  };
  for (const auto& tensor : file.tensors()) {
    EXPECT_EQ(tensor.dtype, DType::BF16) << tensor.name;
    const auto [mean, stddev] = stats(tensor);
    if (tensor.name.find("norm") != std::string::npos) {
      EXPECT_NEAR(mean, 1.0, 0.1) << tensor.name;
      EXPECT_NEAR(stddev, 0.2, 0.08) << tensor.name;
    } else if (tensor.name.find("embed_tokens") != std::string::npos) {
      EXPECT_NEAR(stddev, 0.05, 0.01) << tensor.name;
    } else {
      EXPECT_NEAR(stddev, 0.15, 0.05) << tensor.name;
    }
  }
}

TEST(ioFreqList, RoundTripsAListWrittenLikeFrSpec) {
  TempDir dir;
  // 2001 ids: two APPENDS batches of 1000 and a lone APPEND, ids >= 65536 as BININT.
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 2001; ++i) ids.push_back((i * 7919) % 128256);
  ids[0] = 128000;
  ids[2000] = 128009;
  const std::string pickle = int_list_pickle(ids);
  // The byte layout of section 2.4: PROTO 2, EMPTY_LIST, BINPUT 0, MARK, first id as BININT.
  ASSERT_EQ(pickle.substr(0, 7), std::string("\x80\x02]q\x00(J", 7));
  ASSERT_EQ(pickle.substr(pickle.size() - 7), std::string("J\x09\xf4\x01\x00" "a.", 7));
  const std::string path = dir.write("freq_2001.pt", torch_zip("archive", pickle, {}));
  EXPECT_EQ(load_torch_int_list(path), ids);
}

TEST(ioFreqList, AcceptsOneDimensionalIntegerTensors) {
  TempDir dir;
  const std::vector<int64_t> ids{5, 128009, 0, 77};
  TorchPickleWriter w;
  w.builder().proto();
  w.tensor({"", "LongStorage", "0", 4, 0, {4}, {1}});
  EXPECT_EQ(load_torch_int_list(
                dir.write("t.pt", torch_zip("archive", w.builder().stop().bytes(), {{"0", bytes_of(ids)}}))),
            ids);
  // An int32 tensor that is a strided view (every other element, from offset 1).
  const std::vector<int32_t> storage{-1, 10, -1, -20, -1, 30};
  TorchPickleWriter strided;
  strided.builder().proto();
  strided.tensor({"", "IntStorage", "0", 6, 1, {3}, {2}});
  EXPECT_EQ(load_torch_int_list(dir.write(
                "s.pt", torch_zip("archive", strided.builder().stop().bytes(), {{"0", bytes_of(storage)}}))),
            (std::vector<int64_t>{10, -20, 30}));
}

TEST(ioFreqList, RejectsThingsThatAreNotIdLists) {
  TempDir dir;
  expect_error([&] { (void)load_torch_int_list(dir.write("sd.pt", torch_zip("archive", state_dict_pickle(kViews), view_records()))); },
               {"sd.pt", "holds a state_dict"});
  TorchPickleWriter matrix;
  matrix.builder().proto();
  matrix.tensor({"", "LongStorage", "0", 4, 0, {2, 2}, {2, 1}});
  const std::vector<int64_t> four{1, 2, 3, 4};
  expect_error([&] {
    (void)load_torch_int_list(dir.write("m.pt", torch_zip("archive", matrix.builder().stop().bytes(), {{"0", bytes_of(four)}})));
  }, {"m.pt", "rank 2"});
  TorchPickleWriter floats;
  floats.builder().proto();
  floats.tensor({"", "FloatStorage", "0", 3, 0, {3}, {1}});
  expect_error([&] {
    (void)load_torch_int_list(dir.write("f.pt", torch_zip("archive", floats.builder().stop().bytes(), {{"0", std::string(12, '\0')}})));
  }, {"f.pt", "F32"});
  expect_error([&] { (void)load_torch_int_list(dir.file("absent.pt")); }, {"absent.pt", "cannot open"});
}

TEST(ioFreqList, ReadsTheTinygoFrSpecList) {
  const std::string path = shared_model("frspec/freq_8192.pt");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent (only on the development machine)";
  const std::vector<int64_t> ids = load_torch_int_list(path);
  ASSERT_EQ(ids.size(), 8192u);
  EXPECT_EQ(ids.front(), 220);
  const std::set<int64_t> unique(ids.begin(), ids.end());
  EXPECT_EQ(unique.size(), ids.size());
  EXPECT_GE(*unique.begin(), 0);
  EXPECT_LT(*unique.rbegin(), 128256);
  EXPECT_TRUE(unique.count(128001) && unique.count(128009)) << "the README says end tokens are always included";
}

TEST(ioTorchCheckpoint, ReadsTheTinygoEagleHead) {
  const std::string path = shared_model("eagle/pytorch_model.bin");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent (only on the development machine)";
  const TorchCheckpointFile file(path);
  const auto t = by_name(file);
  ASSERT_EQ(file.tensors().size(), 9u);
  EXPECT_EQ(t.at("fc.weight")->shape, (std::vector<int64_t>{192, 384}));
  EXPECT_EQ(t.at("layers.0.self_attn.k_proj.weight")->shape, (std::vector<int64_t>{64, 192}));
  EXPECT_EQ(t.at("layers.0.mlp.down_proj.weight")->shape, (std::vector<int64_t>{192, 512}));
  for (const auto& tensor : file.tensors()) {
    EXPECT_EQ(tensor.dtype, DType::F16) << tensor.name;
    for (const float v : floats_of(tensor)) ASSERT_TRUE(std::isfinite(v)) << tensor.name;
  }
}
