// safetensors reader: round trips of every dtype the engine uses, then one test per check of
// the reference reader, each on a file built byte by byte (io_test_util.h) so the test states
// exactly what is wrong. Every rejection must name the file, and the tensor when there is one.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <cmath>

#include "io_test_util.h"
#include "specula/core/dtype.h"
#include "specula/core/mapped_file.h"
#include "specula/io/safetensors.h"

using namespace specula;
using namespace specula::io;
using namespace specula::io::testing;

namespace {

std::string open_error_file(const TempDir& dir, const std::string& bytes) { return dir.write("bad.safetensors", bytes); }

// A header of `count` empty tensors, the cheapest entry there is (no data bytes), as in the
// report of a 50,000-entry header that took 67 s: nlohmann's callback parser, used for every
// header then, rescanned the header's members each time an entry closed.
std::string empty_tensors_header(size_t count) {
  std::string header = "{";
  for (size_t i = 0; i < count; ++i) {
    header += i ? ",\"t" : "\"t";
    header += std::to_string(i);
    header += "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
  }
  return header + "}";
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Linear time, measured as scaling rather than against a clock (machines, sanitizers and load
// differ by 10x): ten times the entries may take at most kMaxScaling times as long (linear is 10,
// n log n about 12, quadratic 100), plus kSlackSeconds for timer noise on the small run.
constexpr double kMaxScaling = 30, kSlackSeconds = 0.5;
void expect_linear_time(const std::function<double(size_t)>& seconds_for, size_t small) {
  const double t_small = seconds_for(small), t_large = seconds_for(10 * small);
  EXPECT_LT(t_large, kMaxScaling * t_small + kSlackSeconds)
      << small << " entries took " << t_small << " s, " << 10 * small << " took " << t_large << " s";
}

// A one-tensor header with the given fields spliced in verbatim.
std::string one_tensor_header(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return "{\"w\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}}";
}

}  // namespace

TEST(ioSafetensors, RoundTripsEveryDtypeScalarAndEmptyTensors) {
  TempDir dir;
  const std::vector<float> f32{1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 42.0f};
  const std::vector<uint16_t> bf16{f32_to_bf16(1.0f), f32_to_bf16(-0.5f), f32_to_bf16(3.0f)};
  const std::vector<uint16_t> f16{f32_to_f16(0.25f), f32_to_f16(-8.0f)};
  const std::vector<int64_t> i64{-1, 0, INT64_MAX};
  const std::vector<int32_t> i32{7, -7};
  const std::vector<uint8_t> u8{0, 255, 128};
  const std::vector<uint8_t> boolean{1, 0, 1, 1};
  const std::vector<float> scalar{6.5f};
  const std::string path = dir.write(
      "model.safetensors",
      safetensors_file({{"f32", "F32", {2, 3}, bytes_of(f32)},
                        {"bf16", "BF16", {3}, bytes_of(bf16)},
                        {"f16", "F16", {1, 2}, bytes_of(f16)},
                        {"i64", "I64", {3}, bytes_of(i64)},
                        {"i32", "I32", {2}, bytes_of(i32)},
                        {"u8", "U8", {3}, bytes_of(u8)},
                        {"bool", "BOOL", {2, 2}, bytes_of(boolean)},
                        {"scalar", "F32", {}, bytes_of(scalar)},
                        {"empty", "F32", {0, 4}, ""},
                        {"empty_tail", "BF16", {3, 0}, ""}},
                       {{"format", "pt"}}));
  const SafetensorsFile file(path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  ASSERT_EQ(file.tensors().size(), 10u);

  const MappedFile raw(path);
  std::map<std::string, const CheckpointTensor*> by_name;
  for (const auto& t : file.tensors()) {
    by_name[t.name] = &t;
    EXPECT_EQ(t.file, path);
    EXPECT_EQ(t.nbytes, static_cast<size_t>(t.numel()) * dtype_size(t.dtype)) << t.name;
  }
  const auto expect_bytes = [&](const std::string& name, DType dtype, std::vector<int64_t> shape,
                                const std::string& bytes) {
    const CheckpointTensor* t = by_name.at(name);
    EXPECT_EQ(t->dtype, dtype) << name;
    EXPECT_EQ(t->shape, shape) << name;
    ASSERT_EQ(t->nbytes, bytes.size()) << name;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(t->data), t->nbytes), bytes) << name;
  };
  expect_bytes("f32", DType::F32, {2, 3}, bytes_of(f32));
  expect_bytes("bf16", DType::BF16, {3}, bytes_of(bf16));
  expect_bytes("f16", DType::F16, {1, 2}, bytes_of(f16));
  expect_bytes("i64", DType::I64, {3}, bytes_of(i64));
  expect_bytes("i32", DType::I32, {2}, bytes_of(i32));
  expect_bytes("u8", DType::U8, {3}, bytes_of(u8));
  expect_bytes("bool", DType::Bool, {2, 2}, bytes_of(boolean));
  expect_bytes("scalar", DType::F32, {}, bytes_of(scalar));
  EXPECT_EQ(by_name.at("scalar")->numel(), 1);
  expect_bytes("empty", DType::F32, {0, 4}, "");
  EXPECT_EQ(by_name.at("empty_tail")->numel(), 0);
  EXPECT_EQ(load_as_f32(by_name.at("bf16")->data, DType::BF16, 1), -0.5f);
  EXPECT_EQ(load_as_f32(by_name.at("f16")->data, DType::F16, 1), -8.0f);
}

TEST(ioSafetensors, IsZeroCopyIntoTheMappedFile) {
  TempDir dir;
  const std::vector<float> values{1, 2, 3, 4};
  const std::string path = dir.write("a.safetensors", safetensors_file({{"x", "F32", {4}, bytes_of(values)}}));
  const MappedFile mapped(path);
  const SafetensorsContents contents = parse_safetensors(mapped);
  ASSERT_EQ(contents.tensors.size(), 1u);
  EXPECT_EQ(contents.tensors[0].data, mapped.data() + mapped.size() - 16);
}

TEST(ioSafetensors, AcceptsAnyKeyOrderTrailingSpacesAndUnpaddedData) {
  TempDir dir;
  // Keys out of offset order, a field order different from the writer's, odd header length
  // (so data is not 8-byte aligned, as some non-reference writers leave it).
  const std::string header =
      "{\"b\":{\"data_offsets\":[4,6],\"shape\":[1],\"dtype\":\"BF16\"},"
      "\"a\":{\"shape\":[1],\"dtype\":\"F32\",\"data_offsets\":[0,4]}}   ";
  const std::string path = dir.write("x.safetensors", safetensors_raw(header, std::string(6, '\x01')));
  const SafetensorsFile file(path);
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "a");
  EXPECT_EQ(file.tensors()[1].name, "b");
}

TEST(ioSafetensors, AcceptsHeaderWithNoTensors) {
  TempDir dir;
  const SafetensorsFile file(dir.write("e.safetensors", safetensors_raw("{}      ", "")));
  EXPECT_TRUE(file.tensors().empty());
}

TEST(ioSafetensors, RejectsFilesShorterThanTheLengthPrefix) {
  TempDir dir;
  expect_error([&] { SafetensorsFile f(open_error_file(dir, "")); }, {"bad.safetensors", "too small"});
  expect_error([&] { SafetensorsFile f(open_error_file(dir, std::string("\x10\0\0", 3))); }, {"bad.safetensors", "too small"});
}

TEST(ioSafetensors, RejectsHeaderLengthBeyondFile) {
  TempDir dir;
  std::string bytes = safetensors_raw("{}", "");
  patch_le(bytes, 0, 3, 8);  // claims 3 header bytes, file has 2
  expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "header length 3", "past the end"});
}

TEST(ioSafetensors, RejectsHeaderLongerThanTheReferenceLimit) {
  TempDir dir;
  std::string bytes = safetensors_raw("{}", "");
  patch_le(bytes, 0, 100'000'001, 8);
  expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "exceeds the limit"});
  patch_le(bytes, 0, UINT64_MAX, 8);  // would overflow 8 + N
  expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "exceeds the limit"});
}

TEST(ioSafetensors, RejectsTruncatedData) {
  TempDir dir;
  const std::vector<float> values(16, 1.0f);
  std::string bytes = safetensors_file({{"w", "F32", {16}, bytes_of(values)}});
  bytes.resize(bytes.size() - 4);
  expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "'w'", "past the data buffer"});
  // Truncated inside the header as well.
  bytes.resize(20);
  expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "past the end"});
}

TEST(ioSafetensors, RejectsInvalidUtf8Header) {
  TempDir dir;
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("{\"\xc3\x28\":1}", ""))); },
               {"bad.safetensors", "UTF-8"});
  // An overlong encoding of '/' is invalid UTF-8 too.
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("{\"\xc0\xaf\":1}", ""))); },
               {"bad.safetensors", "UTF-8"});
}

TEST(ioSafetensors, RejectsMalformedJson) {
  TempDir dir;
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("{\"w\": {", ""))); },
               {"bad.safetensors", "invalid JSON"});
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("{} trailing", ""))); },
               {"bad.safetensors", "invalid JSON"});
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw(std::string("{}\0\0", 4), ""))); },
               {"bad.safetensors", "invalid JSON"});
}

TEST(ioSafetensors, RejectsHeaderThatIsNotAnObject) {
  TempDir dir;
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("[1, 2]", ""))); },
               {"bad.safetensors", "'{'"});
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("  {}", ""))); },
               {"bad.safetensors", "'{'"});
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("{\"w\": 3}", "")));},
               {"bad.safetensors", "'w'", "not a JSON object"});
}

TEST(ioSafetensors, RejectsUnknownDtypeNamingIt) {
  TempDir dir;
  const std::string bytes = safetensors_raw(one_tensor_header("\"F4\"", "[2]", "[0,1]"), std::string(1, '\0'));
  expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "tensor 'w'", "unknown dtype 'F4'"});
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw(one_tensor_header("7", "[1]", "[0,1]"), "x"))); },
               {"bad.safetensors", "'w'", "dtype"});
}

TEST(ioSafetensors, RejectsShapesThatAreNotNonNegativeIntegers) {
  TempDir dir;
  for (const std::string shape : {"[-1]", "[2.0]", "[2.5]", "[\"2\"]", "[null]", "2", "[18446744073709551616]"}) {
    const std::string bytes = safetensors_raw(one_tensor_header("\"U8\"", shape, "[0,2]"), "ab");
    expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "tensor 'w'", "shape"});
  }
}

TEST(ioSafetensors, RejectsShapeWhoseSizeOverflows) {
  TempDir dir;
  const std::string bytes =
      safetensors_raw(one_tensor_header("\"F32\"", "[4611686018427387904, 4]", "[0,0]"), "");
  expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "'w'", "overflows"});
}

TEST(ioSafetensors, RejectsBadOffsets) {
  TempDir dir;
  const std::string data(8, '\0');
  const std::vector<std::pair<std::string, std::string>> cases{
      {"[0,16]", "past the data buffer"},  // beyond the buffer
      {"[8,0]", "end before they begin"},
      {"[0]", "pair of non-negative integers"},
      {"[-8,0]", "pair of non-negative integers"},
      {"[0,8.0]", "pair of non-negative integers"},
      {"[0,8,8]", "pair of non-negative integers"},
      {"[0,99999999999999999999]", "pair of non-negative integers"},
  };
  for (const auto& [offsets, message] : cases) {
    const std::string bytes = safetensors_raw(one_tensor_header("\"F32\"", "[2]", offsets), data);
    expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "tensor 'w'", message});
  }
}

TEST(ioSafetensors, RejectsSizeShapeMismatch) {
  TempDir dir;
  const std::string bytes = safetensors_raw(one_tensor_header("\"F32\"", "[3]", "[0,8]"), std::string(8, '\0'));
  expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); },
               {"bad.safetensors", "tensor 'w'", "span 8 bytes", "needs 12"});
}

TEST(ioSafetensors, RejectsOverlappingTensors) {
  TempDir dir;
  const std::string header =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw(header, std::string(12, '\0')))); },
               {"bad.safetensors", "'b'", "overlaps tensor 'a'"});
  // Two tensors aliasing exactly the same bytes are an overlap too.
  const std::string alias =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw(alias, std::string(8, '\0')))); },
               {"bad.safetensors", "overlaps"});
}

TEST(ioSafetensors, RejectsHolesAndTrailingBytes) {
  TempDir dir;
  const std::string gap =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw(gap, std::string(12, '\0')))); },
               {"bad.safetensors", "'b'", "hole"});
  const std::string leading = one_tensor_header("\"F32\"", "[1]", "[4,8]");
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw(leading, std::string(8, '\0')))); },
               {"bad.safetensors", "'w'", "hole"});
  const std::string tail = one_tensor_header("\"F32\"", "[1]", "[0,4]");
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw(tail, std::string(6, '\0')))); },
               {"bad.safetensors", "'w'", "trailing bytes"});
}

TEST(ioSafetensors, RejectsDuplicateTensorNames) {
  TempDir dir;
  const std::string header =
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw(header, std::string(8, '\0')))); },
               {"bad.safetensors", "'w'", "twice"});
}

TEST(ioSafetensors, RejectsMetadataThatIsNotStringToString) {
  TempDir dir;
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("{\"__metadata__\":{\"n\":1}}", ""))); },
               {"bad.safetensors", "__metadata__", "'n'"});
  expect_error([&] { SafetensorsFile f(open_error_file(dir, safetensors_raw("{\"__metadata__\":[]}", ""))); },
               {"bad.safetensors", "__metadata__"});
}

TEST(ioSafetensors, RejectsMissingFields) {
  TempDir dir;
  for (const std::string entry : {"{\"shape\":[1],\"data_offsets\":[0,4]}", "{\"dtype\":\"F32\",\"data_offsets\":[0,4]}",
                                  "{\"dtype\":\"F32\",\"shape\":[1]}"}) {
    const std::string bytes = safetensors_raw("{\"w\":" + entry + "}", std::string(4, '\0'));
    expect_error([&] { SafetensorsFile f(open_error_file(dir, bytes)); }, {"bad.safetensors", "tensor 'w'", "missing"});
  }
}

TEST(ioSafetensors, EveryTruncationOfAGoodFileIsRejectedCleanly) {
  TempDir dir;
  const std::vector<float> values{1, 2, 3};
  const std::string good = safetensors_file({{"a", "F32", {3}, bytes_of(values)}, {"b", "U8", {2}, "xy"}});
  for (size_t n = 0; n < good.size(); ++n) {
    const std::string path = dir.write("t.safetensors", good.substr(0, n));
    EXPECT_THROW(SafetensorsFile f(path), specula::Error) << "truncated to " << n << " bytes";
  }
  EXPECT_NO_THROW(SafetensorsFile f(dir.write("t.safetensors", good)));
}

TEST(ioSafetensors, AMillionEntryHeaderParsesInLinearTime) {
  TempDir dir;
  expect_linear_time(
      [&](size_t entries) {
        // The text is freed before the timed parse, to keep the test's memory down.
        const std::string path = dir.write("many.safetensors", safetensors_raw(empty_tensors_header(entries), ""));
        const auto start = std::chrono::steady_clock::now();
        const SafetensorsFile file(path);
        const double seconds = seconds_since(start);
        EXPECT_EQ(file.tensors().size(), entries);
        return seconds;
      },
      100'000);
}

TEST(ioSafetensors, AMillionEntryShardIndexParsesInLinearTime) {
  expect_linear_time(
      [&](size_t entries) {
        std::string index = "{\"metadata\":{\"total_size\":0},\"weight_map\":{";
        for (size_t i = 0; i < entries; ++i) {
          index += i ? ",\"t" : "\"t";
          index += std::to_string(i);
          index += "\":\"model-";
          index += std::to_string(i % 7);
          index += ".safetensors\"";
        }
        index += "}}";
        const auto start = std::chrono::steady_clock::now();
        const auto weight_map = parse_shard_index(index, "model.safetensors.index.json");
        const double seconds = seconds_since(start);
        EXPECT_EQ(weight_map.size(), entries);
        EXPECT_EQ(weight_map.at("t" + std::to_string(entries - 2)), "model-" + std::to_string((entries - 2) % 7) + ".safetensors");
        return seconds;
      },
      100'000);
}

// Beyond kMaxCheckpointEntries a header or index is refused as soon as the limit is passed, before
// the rest is read. Metadata items and index entries are the cheapest entries to write.
TEST(ioSafetensors, HeadersAndIndexesOverTheEntryLimitAreRefused) {
  std::string metadata = "{\"__metadata__\":{";
  std::string index = "{\"weight_map\":{";
  for (size_t i = 0; i <= kMaxCheckpointEntries; ++i) {
    for (std::string* text : {&metadata, &index}) {
      *text += i ? ",\"" : "\"";
      *text += std::to_string(i);
      *text += "\":\"x\"";
    }
  }
  metadata += "}}";
  index += "}}";
  TempDir dir;
  expect_error([&] { SafetensorsFile f(dir.write("meta.safetensors", safetensors_raw(metadata, ""))); },
               {"meta.safetensors", "more than " + std::to_string(kMaxCheckpointEntries) + " entries"});
  expect_error([&] { (void)parse_shard_index(index, "big.index.json"); },
               {"big.index.json", "more than " + std::to_string(kMaxCheckpointEntries) + " entries"});
}
