// ZIP reader: STORED archives laid out like torch.save's (64-byte aligned data, padding in the
// local extra field), ZIP64 archives, and one corrupted field per hostile case, located through
// the writer's layout so each test breaks exactly one structure.
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "specula/core/mapped_file.h"
#include "specula/io/zip_archive.h"

using namespace specula;
using namespace specula::io;
using namespace specula::io::testing;

namespace {

const std::vector<ZipInput> kEntries{
    {"archive/data.pkl", "pickle bytes"},
    {"archive/data/0", std::string(100, '\x07')},
    {"archive/empty", ""},
    {"archive/version", "3\n"},
};

void expect_zip_error(const std::string& bytes, const std::vector<std::string>& parts) {
  TempDir dir;
  const std::string path = dir.write("bad.zip", bytes);
  std::vector<std::string> all{"bad.zip"};
  all.insert(all.end(), parts.begin(), parts.end());
  expect_error([&] {
    MappedFile file(path);
    ZipArchive zip(file);
  }, all);
}

}  // namespace

TEST(ioZipArchive, ReadsStoredEntriesAtTheirLocalHeaderOffsets) {
  for (const Zip64 mode : {Zip64::None, Zip64::All, Zip64::OffsetsOnly}) {
    TempDir dir;
    const ZipLayout layout = zip_archive(kEntries, mode);
    const MappedFile file(dir.write("a.zip", layout.bytes));
    const ZipArchive zip(file);
    ASSERT_EQ(zip.entries().size(), kEntries.size()) << "zip64 mode " << static_cast<int>(mode);
    for (size_t i = 0; i < kEntries.size(); ++i) {
      const ZipEntry* entry = zip.find(kEntries[i].name);
      ASSERT_NE(entry, nullptr) << kEntries[i].name;
      EXPECT_EQ(entry->data_offset, layout.data_offsets[i]);
      EXPECT_EQ(entry->data_offset % 64, 0u) << "torch-style alignment";
      EXPECT_EQ(zip.data(*entry), kEntries[i].data);
    }
    EXPECT_EQ(zip.find("archive/missing"), nullptr);
  }
}

TEST(ioZipArchive, ReadsUnalignedArchivesAndEmptyOnes) {
  TempDir dir;
  const MappedFile file(dir.write("u.zip", zip_archive(kEntries, Zip64::None, 1).bytes));
  EXPECT_EQ(ZipArchive(file).entries().size(), kEntries.size());
  const MappedFile empty(dir.write("e.zip", zip_archive({}).bytes));
  EXPECT_TRUE(ZipArchive(empty).entries().empty());
}

TEST(ioZipArchive, RejectsFilesWithoutEndRecord) {
  const ZipLayout z = zip_archive(kEntries);
  expect_zip_error("", {"too small"});
  expect_zip_error(z.bytes.substr(0, z.bytes.size() - 5), {"end-of-central-directory"});
  std::string wrong = z.bytes;
  wrong[z.end_record_offset] = 'X';
  expect_zip_error(wrong, {"end-of-central-directory"});
  expect_zip_error(std::string(4096, 'A'), {"end-of-central-directory"});
}

TEST(ioZipArchive, RejectsBadCentralDirectorySignature) {
  ZipLayout z = zip_archive(kEntries);
  patch_le(z.bytes, z.central_offsets[1], 0xdeadbeef, 4);
  expect_zip_error(z.bytes, {"bad signature for entry 1"});
}

TEST(ioZipArchive, RejectsTruncatedCentralDirectory) {
  ZipLayout z = zip_archive(kEntries);
  // The directory claims more entries than its size can hold.
  patch_le(z.bytes, z.end_record_offset + 10, 100, 2);
  expect_zip_error(z.bytes, {"100 entries"});
  // The size is cut so the last entry's name runs past the directory.
  z = zip_archive(kEntries);
  const uint64_t size = z.end_record_offset - z.central_directory_offset;
  patch_le(z.bytes, z.end_record_offset + 12, size - 3, 4);
  expect_zip_error(z.bytes, {"central directory", "past the end"});
  // The directory runs past the end record (and so past the file's real content).
  z = zip_archive(kEntries);
  patch_le(z.bytes, z.end_record_offset + 12, size + 1000, 4);
  expect_zip_error(z.bytes, {"outside the file"});
  patch_le(z.bytes, z.end_record_offset + 12, size, 4);
  patch_le(z.bytes, z.end_record_offset + 16, 0xfffffff0, 4);
  expect_zip_error(z.bytes, {"outside the file"});
}

TEST(ioZipArchive, RejectsCompressedAndEncryptedEntries) {
  std::vector<ZipInput> entries = kEntries;
  entries[1].method = 8;
  expect_zip_error(zip_archive(entries).bytes, {"archive/data/0", "compression method 8"});
  entries = kEntries;
  entries[2].flags = 1;
  expect_zip_error(zip_archive(entries).bytes, {"archive/empty", "encrypted"});
  // Central header says STORED but the local header disagrees.
  ZipLayout z = zip_archive(kEntries);
  patch_le(z.bytes, z.local_offsets[3] + 8, 8, 2);
  expect_zip_error(z.bytes, {"archive/version", "compressed"});
  // STORED with different compressed and uncompressed sizes is inconsistent.
  z = zip_archive(kEntries);
  patch_le(z.bytes, z.central_offsets[1] + 20, 99, 4);
  expect_zip_error(z.bytes, {"archive/data/0", "compressed size 99"});
}

TEST(ioZipArchive, RejectsOutOfRangeOffsetsAndSizes) {
  ZipLayout z = zip_archive(kEntries);
  patch_le(z.bytes, z.central_offsets[1] + 42, 0x7fffffff, 4);  // local header offset
  expect_zip_error(z.bytes, {"archive/data/0", "local header offset"});

  z = zip_archive(kEntries);
  patch_le(z.bytes, z.central_offsets[0] + 20, 1u << 30, 4);  // data size: runs into the directory
  patch_le(z.bytes, z.central_offsets[0] + 24, 1u << 30, 4);
  expect_zip_error(z.bytes, {"archive/data.pkl", "runs past"});

  z = zip_archive(kEntries);
  patch_le(z.bytes, z.local_offsets[1] + 28, 0xffff, 2);  // local extra length pushes data out
  expect_zip_error(z.bytes, {"archive/data/0", "runs past"});

  z = zip_archive(kEntries);
  patch_le(z.bytes, z.local_offsets[1], 0x01020304, 4);
  expect_zip_error(z.bytes, {"archive/data/0", "bad local header signature"});

  z = zip_archive(kEntries);
  z.bytes[z.local_offsets[2] + 30] = 'X';  // local name differs from the central one
  expect_zip_error(z.bytes, {"archive/empty", "different entry"});

  z = zip_archive(kEntries);
  patch_le(z.bytes, z.central_offsets[3] + 30, 0x8000, 2);  // extra field length past the directory
  expect_zip_error(z.bytes, {"past the end"});
}

TEST(ioZipArchive, RejectsBrokenZip64Records) {
  ZipLayout z = zip_archive(kEntries, Zip64::All);
  const uint64_t locator = z.end_record_offset - 20;
  const uint64_t record = z.end_record_offset - 20 - 56;
  std::string bytes = z.bytes;
  patch_le(bytes, locator, 0, 4);  // locator gone, placeholders remain
  expect_zip_error(bytes, {"no ZIP64 locator"});
  bytes = z.bytes;
  patch_le(bytes, locator + 8, UINT64_MAX - 3, 8);
  expect_zip_error(bytes, {"ZIP64 end-of-central-directory offset"});
  bytes = z.bytes;
  patch_le(bytes, record, 0, 4);
  expect_zip_error(bytes, {"bad ZIP64 end-of-central-directory signature"});
  bytes = z.bytes;
  patch_le(bytes, record + 48, UINT64_MAX - 10, 8);  // central directory offset
  expect_zip_error(bytes, {"outside the file"});
  bytes = z.bytes;
  patch_le(bytes, record + 32, UINT64_MAX, 8);  // entry count
  expect_zip_error(bytes, {"entries"});
  bytes = z.bytes;
  patch_le(bytes, z.central_offsets[1] + 30, 0, 2);  // drop the 0x0001 extra field
  expect_zip_error(bytes, {"archive/data/0", "no ZIP64 extra field"});
  bytes = z.bytes;
  patch_le(bytes, z.central_offsets[1] + 46 + 14 + 2, 8, 2);  // 0x0001 field too short for 3 values
  expect_zip_error(bytes, {"archive/data/0", "ZIP64 extra field"});
  bytes = z.bytes;
  patch_le(bytes, z.central_offsets[1] + 46 + 14 + 4 + 16, UINT64_MAX - 1, 8);  // 64-bit local offset
  expect_zip_error(bytes, {"archive/data/0", "local header offset"});
}

TEST(ioZipArchive, RejectsDuplicateEntryNames) {
  std::vector<ZipInput> entries = kEntries;
  entries.push_back(kEntries[1]);
  expect_zip_error(zip_archive(entries).bytes, {"archive/data/0", "twice"});
}

TEST(ioZipArchive, RejectsMultiDiskArchives) {
  ZipLayout z = zip_archive(kEntries);
  patch_le(z.bytes, z.end_record_offset + 4, 1, 2);
  expect_zip_error(z.bytes, {"multi-disk"});
}

// Every single-byte corruption and every truncation of a small archive either parses or throws
// specula::Error; under the ASan build this also proves no read leaves the map.
TEST(ioZipArchive, SurvivesEveryByteCorruptionAndTruncation) {
  TempDir dir;
  for (const Zip64 mode : {Zip64::None, Zip64::All, Zip64::OffsetsOnly}) {
    const std::string good = zip_archive({{"p/data.pkl", "abc"}, {"p/data/0", "0123456789"}}, mode, 16).bytes;
    std::vector<std::string> variants;
    for (size_t i = 0; i < good.size(); ++i) {
      variants.push_back(good.substr(0, i));
      for (const char value : {'\x00', '\xff', '\x41'}) {
        variants.push_back(good);
        variants.back()[i] = value;
      }
    }
    for (const std::string& bytes : variants) {
      const std::string path = dir.write("f.zip", bytes);
      try {
        MappedFile file(path);
        ZipArchive zip(file);
        for (const ZipEntry& e : zip.entries()) ASSERT_EQ(zip.data(e).size(), e.size);
      } catch (const specula::Error&) {
      }
    }
  }
}
