// torch.save archives end to end: zip + pickle + storage records. Built archives cover shared
// storages, strided views (materialized) and contiguous ones (zero-copy), both prefix styles,
// ZIP64, and each archive-level failure; the committed qwen2 fixture and (when present on this
// machine) the tinygo EAGLE head and FR-Spec list are real torch.save files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <optional>
#include <random>
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

// A state_dict holding the views `tensors`, all of storage "0" whose bytes are `record`.
std::string views_archive(const std::vector<PickledTensor>& tensors, const std::string& record) {
  return torch_zip("archive", state_dict_pickle(tensors), {{"0", record}});
}

// A file holding one tensor at the top level, as FR-Spec's freq_N.pt may (torch.save(tensor)).
std::string top_level_tensor_archive(const PickledTensor& view, const std::string& record) {
  TorchPickleWriter w;
  w.builder().proto();
  w.tensor(view);
  return torch_zip("archive", w.builder().stop().bytes(), {{"0", record}});
}

std::string describe(const PickledTensor& v) {
  std::string out = v.storage_class + " of " + std::to_string(v.storage_numel) + ", offset " + std::to_string(v.offset);
  const auto list = [](const std::vector<int64_t>& values) {
    std::string text = "[";
    for (size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
    return text + "]";
  };
  return out + ", size " + list(v.size) + ", stride " + list(v.stride);
}

// What a view means, worked out independently of the reader with the compiler's overflow
// builtins: Outside when any product or sum passes int64 or an element lies outside the storage;
// Expanding when it fits but has more elements than its storage (only overlapping views can);
// Fits otherwise. `bytes` is the row-major gather, filled for views of at most kMaxGather elements.
struct ReferenceView {
  enum Verdict { Outside, Expanding, Fits } verdict = Outside;
  uint64_t numel = 0;
  std::optional<std::string> bytes;
};

ReferenceView reference_view(const PickledTensor& v, const std::string& record, size_t itemsize) {
  constexpr uint64_t kMaxGather = 1 << 16;
  ReferenceView ref;
  uint64_t numel = 1;
  for (const int64_t d : v.size)
    if (d < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) || numel > INT64_MAX) return ref;
  ref.numel = numel;
  uint64_t last = static_cast<uint64_t>(v.offset);
  if (numel > 0) {
    for (size_t d = 0; d < v.size.size(); ++d) {
      uint64_t reach = 0;
      if (__builtin_mul_overflow(static_cast<uint64_t>(v.size[d] - 1), static_cast<uint64_t>(v.stride[d]), &reach) ||
          __builtin_add_overflow(last, reach, &last) || last > INT64_MAX)
        return ref;
    }
    if (last >= static_cast<uint64_t>(v.storage_numel)) return ref;
  }
  ref.verdict = numel <= static_cast<uint64_t>(v.storage_numel) ? ReferenceView::Fits : ReferenceView::Expanding;
  if (numel > kMaxGather) return ref;
  std::string bytes;
  std::vector<int64_t> index(v.size.size(), 0);
  for (uint64_t i = 0; i < numel; ++i) {
    uint64_t element = static_cast<uint64_t>(v.offset);
    for (size_t d = 0; d < index.size(); ++d) element += static_cast<uint64_t>(index[d] * v.stride[d]);
    bytes += record.substr(element * itemsize, itemsize);
    for (size_t d = index.size(); d-- > 0;) {
      if (++index[d] < v.size[d]) break;
      index[d] = 0;
    }
  }
  ref.bytes = std::move(bytes);
  return ref;
}

// Little-endian integers of `itemsize` bytes, sign-extended unless `is_unsigned`.
std::vector<int64_t> decode_ints(const std::string& bytes, size_t itemsize, bool is_unsigned) {
  std::vector<int64_t> out;
  for (size_t at = 0; at < bytes.size(); at += itemsize) {
    uint64_t raw = 0;
    for (size_t b = 0; b < itemsize; ++b) raw |= uint64_t{static_cast<uint8_t>(bytes[at + b])} << (8 * b);
    const int shift = static_cast<int>(64 - 8 * itemsize);
    out.push_back(is_unsigned ? static_cast<int64_t>(raw) : static_cast<int64_t>(raw << shift) >> shift);
  }
  return out;
}

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

// The reported file: a one-element storage viewed with stride 0 and size 2^62 + 1, whose byte
// count (2^64 + 4) wrapped to 4 before the gather wrote 2^62 + 1 elements into that buffer. Such
// expanded views, and every other view with far more elements than its storage, are refused
// before anything is allocated; small expansions still load.
TEST(ioTorchCheckpoint, RefusesViewsThatExpandTheirStorage) {
  TempDir dir;
  const std::string one_float = bytes_of(std::vector<float>{1.5f});
  const int64_t wraps = (int64_t{1} << 62) + 1;
  const std::string reported = views_archive({{"w", "FloatStorage", "0", 1, 0, {wraps}, {0}}}, one_float);
  EXPECT_LT(reported.size(), 1024u) << "a few hundred bytes, like the reported file";
  expect_error([&] { TorchCheckpointFile f(dir.write("stride0.bin", reported)); },
               {"stride0.bin", "tensor 'w'", "4611686018427387905 elements", "expanded"});

  const std::vector<PickledTensor> expanding{
      {"tb", "FloatStorage", "0", 1, 0, {int64_t{1} << 40}, {0}},               // 4 TiB of one float
      {"square", "FloatStorage", "0", 1, 0, {1 << 20, 1 << 20}, {0, 0}},        // both dimensions broadcast
      {"rows", "FloatStorage", "0", 4, 0, {int64_t{1} << 31, 4}, {0, 1}},       // a row repeated 2^31 times
      {"overlap", "FloatStorage", "0", 15, 0, {8, 8}, {1, 1}},                  // overlapping, no zero stride
      {"max", "FloatStorage", "0", 1, 0, {INT64_MAX}, {0}},                     // the largest count there is
  };
  const std::string sixteen_floats = bytes_of(std::vector<float>(16, 2.0f));
  for (const PickledTensor& view : expanding) {
    SCOPED_TRACE(view.name);
    expect_error([&] { TorchCheckpointFile f(dir.write("e.bin", views_archive({view}, sixteen_floats))); },
                 {"e.bin", "tensor '" + view.name + "'", "expanded"});
  }
  // The same refusal for an id list saved as a tensor (FR-Spec freq_N.pt).
  const std::string one_long = bytes_of(std::vector<int64_t>{7});
  expect_error([&] {
    (void)load_torch_int_list(dir.write("f.pt", top_level_tensor_archive({"", "LongStorage", "0", 1, 0, {wraps}, {0}}, one_long)));
  }, {"f.pt", "expanded"});
  expect_error([&] {
    (void)load_torch_int_list(
        dir.write("g.pt", top_level_tensor_archive({"", "LongStorage", "0", 1, 0, {int64_t{1} << 40}, {0}}, one_long)));
  }, {"g.pt", "expanded"});

  // Twice its storage is within the factor: broadcasting one float to two loads.
  const TorchCheckpointFile twice(dir.write("two.bin", views_archive({{"w", "FloatStorage", "0", 1, 0, {2}, {0}}}, one_float)));
  EXPECT_EQ(floats_of(twice.tensors()[0]), (std::vector<float>{1.5f, 1.5f}));
  EXPECT_EQ(load_torch_int_list(dir.write("two.pt", top_level_tensor_archive({"", "LongStorage", "0", 1, 0, {2}, {0}}, one_long))),
            (std::vector<int64_t>{7, 7}));
}

// Views that fit their storage one by one can still add up: every one of these transposes of the
// same 32x32 storage is copied, and together they would be many times the file.
TEST(ioTorchCheckpoint, BoundsTheBytesCopiedForStridedViewsOfOneFile) {
  TempDir dir;
  const std::string storage = bytes_of(std::vector<float>(32 * 32, 1.0f));
  const auto transposes = [](size_t n) {
    std::vector<PickledTensor> views;
    for (size_t i = 0; i < n; ++i) views.push_back({"t" + std::to_string(i), "FloatStorage", "0", 32 * 32, 0, {32, 32}, {1, 32}});
    return views;
  };
  const TorchCheckpointFile one(dir.write("one.bin", views_archive(transposes(1), storage)));
  EXPECT_EQ(one.materialized_count(), 1u);
  expect_error([&] { TorchCheckpointFile f(dir.write("many.bin", views_archive(transposes(16), storage))); },
               {"many.bin", "tensor 't", "copies past", "its size"});
}

// Size and offset arithmetic that leaves int64 is refused by name, never wrapped: offset + reach,
// (size - 1) * stride, the element count, and a storage's element count times its item size.
TEST(ioTorchCheckpoint, RefusesSizeAndOffsetArithmeticThatOverflows) {
  TempDir dir;
  const std::string floats = bytes_of(std::vector<float>(12, 0.0f));
  const std::vector<PickledTensor> overflowing{
      {"offset", "FloatStorage", "0", 12, INT64_MAX, {2}, {1}},
      {"reach", "FloatStorage", "0", 12, int64_t{1} << 62, {3}, {int64_t{1} << 61}},
      {"stride", "FloatStorage", "0", 12, 0, {3, 2}, {int64_t{1} << 62, 1}},
      {"count", "FloatStorage", "0", 12, 0, {int64_t{1} << 32, int64_t{1} << 31}, {0, 0}},
      {"last", "FloatStorage", "0", 12, 0, {2}, {INT64_MAX}},
  };
  for (const PickledTensor& view : overflowing) {
    SCOPED_TRACE(view.name);
    expect_error([&] { TorchCheckpointFile f(dir.write("o.bin", views_archive({view}, floats))); }, {"o.bin", "overflow"});
  }
  // 2^60 doubles are 2^63 bytes, one past int64.
  expect_error([&] {
    TorchCheckpointFile f(dir.write("s.bin", views_archive({{"d", "DoubleStorage", "0", int64_t{1} << 60, 0, {1}, {1}}}, floats)));
  }, {"s.bin", "overflows"});
  // Declared storage larger than its record, by an amount whose byte count still fits.
  expect_error([&] {
    TorchCheckpointFile f(dir.write("r.bin", views_archive({{"d", "DoubleStorage", "0", (int64_t{1} << 60) - 1, 0, {1}, {1}}}, floats)));
  }, {"r.bin", "tensor 'd'", "holds 48 bytes"});
  // Empty views read nothing, so their strides and offset do not matter (as in torch).
  const TorchCheckpointFile empty(dir.write("z.bin", views_archive({{"z", "FloatStorage", "0", 12, INT64_MAX, {0, 5}, {INT64_MAX, INT64_MAX}}}, floats)));
  EXPECT_EQ(empty.tensors()[0].nbytes, 0u);
}

// Random views of small storages, from a fixed seed: sizes, strides and offsets drawn from small
// values, zeros, ones, values near the int64 limit and its square root, and arbitrary 63-bit
// numbers. Each loads with exactly the bytes of a plain gather, or is refused with specula::Error
// naming the file; a view that fits its storage without expanding it must load. Under ASan a
// wrong bound in the reader is also an out-of-bounds read or write.
TEST(ioTorchCheckpoint, RandomViewsLoadAsAPlainGatherOrAreRefused) {
  constexpr uint64_t kSeed = 20240613;
  constexpr int kIterations = 1500;
  constexpr int64_t kMaxStorage = 24;
  const int64_t kEdges[] = {INT64_MAX,           INT64_MAX - 1,         INT64_MAX / 2,         INT64_MAX / 2 + 1,
                            (int64_t{1} << 62) + 1, int64_t{1} << 62,   int64_t{1} << 32,      (int64_t{1} << 32) + 1,
                            int64_t{1} << 31,    3037000499 /* floor(sqrt(INT64_MAX)) */, 3037000500, int64_t{1} << 20};
  struct Kind {
    const char* storage_class;
    DType dtype;
    bool integer;
  };
  const Kind kinds[] = {{"FloatStorage", DType::F32, false}, {"BFloat16Storage", DType::BF16, false},
                        {"LongStorage", DType::I64, true},   {"IntStorage", DType::I32, true},
                        {"ShortStorage", DType::I16, true},  {"CharStorage", DType::I8, true},
                        {"ByteStorage", DType::U8, true}};
  std::mt19937_64 rng(kSeed);
  const auto draw = [&](int64_t small_max) -> int64_t {
    switch (rng() % 10) {
      case 0: return 0;
      case 1: return 1;
      case 2: return kEdges[rng() % std::size(kEdges)];
      case 3: return static_cast<int64_t>(rng() >> 1);
      default: return static_cast<int64_t>(rng() % static_cast<uint64_t>(small_max + 1));
    }
  };
  TempDir dir;
  int loaded = 0, refused = 0, int_lists = 0;
  for (int iteration = 0; iteration < kIterations; ++iteration) {
    const Kind& kind = kinds[rng() % std::size(kinds)];
    const size_t itemsize = dtype_size(kind.dtype);
    PickledTensor view{"v", kind.storage_class, "0", static_cast<int64_t>(rng() % (kMaxStorage + 1)), draw(8), {}, {}};
    const size_t rank = rng() % 4;
    for (size_t d = 0; d < rank; ++d) {
      view.size.push_back(draw(4));
      view.stride.push_back(draw(3));
    }
    std::string record(static_cast<size_t>(view.storage_numel) * itemsize, '\0');
    for (char& c : record) c = static_cast<char>(rng());
    SCOPED_TRACE("seed " + std::to_string(kSeed) + ", iteration " + std::to_string(iteration) + ": " + describe(view));
    const ReferenceView expected = reference_view(view, record, itemsize);

    try {
      const TorchCheckpointFile file(dir.write("r.bin", views_archive({view}, record)));
      ASSERT_EQ(file.tensors().size(), 1u);
      const CheckpointTensor& t = file.tensors()[0];
      ASSERT_NE(expected.verdict, ReferenceView::Outside) << "loaded a view that leaves its storage";
      ASSERT_TRUE(expected.bytes.has_value()) << "materialised " << expected.numel << " elements from "
                                              << view.storage_numel;
      EXPECT_EQ(t.shape, view.size);
      ASSERT_EQ(t.nbytes, expected.bytes->size());
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(t.data), t.nbytes), *expected.bytes);
      ++loaded;
    } catch (const specula::Error& e) {
      EXPECT_NE(expected.verdict, ReferenceView::Fits) << "refused a view that fits its storage: " << e.what();
      EXPECT_NE(std::string(e.what()).find("r.bin"), std::string::npos) << e.what();
      ++refused;
    }

    if (rank == 1 && kind.integer) {  // the same view as an FR-Spec id list
      ++int_lists;
      try {
        const std::vector<int64_t> ids = load_torch_int_list(dir.write("r.pt", top_level_tensor_archive(view, record)));
        ASSERT_NE(expected.verdict, ReferenceView::Outside) << "loaded an id list that leaves its storage";
        ASSERT_TRUE(expected.bytes.has_value()) << "expanded an id list to " << expected.numel << " entries";
        EXPECT_EQ(ids, decode_ints(*expected.bytes, itemsize, kind.dtype == DType::U8));
      } catch (const specula::Error& e) {
        EXPECT_NE(expected.verdict, ReferenceView::Fits) << "refused an id list that fits its storage: " << e.what();
      }
    }
    if (::testing::Test::HasFatalFailure()) return;
  }
  // The draws must exercise both outcomes, and the id-list path, often.
  EXPECT_GT(loaded, kIterations / 5);
  EXPECT_GT(refused, kIterations / 5);
  EXPECT_GT(int_lists, kIterations / 20);
}
