// The checks every JSON reader shares (io/strict_json.h): the nesting-depth limit applied to the
// raw text before a tree exists, duplicate keys, NUL bytes, and error excerpts that stay short
// however large or deep the offending value is. Also built into the AddressSanitizer target, so a
// stack overflow or an over-read here fails loudly there.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <string>

#include "io_test_util.h"
#include "specula/core/error.h"
#include "specula/io/safetensors.h"
#include "specula/io/strict_json.h"

namespace {

using nlohmann::json;
using specula::io::check_json_text;
using specula::io::json_excerpt;
using specula::io::kMaxJsonDepth;
using specula::io::parse_strict_json;
using specula::io::parse_strict_json_object;
using specula::io::text_excerpt;
using specula::io::testing::expect_error;

// The depth a hostile file uses: far beyond any stack a recursive walk could survive.
constexpr size_t kHostileDepth = 100000;

std::string nested_arrays(size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); }

std::string nested_objects(size_t depth) {
  std::string text;
  for (size_t i = 0; i < depth; ++i) text += "{\"a\":";
  text += "1";
  text += std::string(depth, '}');
  return text;
}

}  // namespace

TEST(ioStrictJson, DeepNestingIsRefusedBeforeParsing) {
  for (const std::string& text : {nested_arrays(kHostileDepth), nested_objects(kHostileDepth)}) {
    expect_error([&] { parse_strict_json(text, "deep.json"); },
                 {"deep.json", "nesting depth limit of " + std::to_string(kMaxJsonDepth)});
  }
  // Unclosed nesting is refused by the same scan, before the parser sees the missing brackets.
  expect_error([&] { parse_strict_json(std::string(kHostileDepth, '['), "open.json"); }, {"open.json", "depth"});
}

TEST(ioStrictJson, DepthLimitIsExact) {
  EXPECT_NO_THROW(parse_strict_json(nested_arrays(kMaxJsonDepth), "limit.json"));
  EXPECT_NO_THROW(parse_strict_json(nested_objects(kMaxJsonDepth), "limit.json"));
  expect_error([&] { parse_strict_json(nested_arrays(kMaxJsonDepth + 1), "over.json"); }, {"over.json", "depth"});
  // Siblings do not add up: depth is nesting, not the number of containers.
  std::string wide = "[";
  for (size_t i = 0; i < 10 * kMaxJsonDepth; ++i) wide += (i ? ",[[]]" : "[[]]");
  EXPECT_NO_THROW(parse_strict_json(wide + "]", "wide.json"));
}

TEST(ioStrictJson, BracketsInsideStringsDoNotCount) {
  const std::string brackets(10 * kMaxJsonDepth, '[');
  EXPECT_EQ(parse_strict_json("{\"k\": \"" + brackets + "\"}", "s.json").at("k"), brackets);
  // An escaped quote does not end the string; the brackets after it are still inside.
  const json parsed = parse_strict_json("[\"\\\"" + brackets + "\\\\\"]", "escaped.json");
  EXPECT_EQ(parsed.at(0).get<std::string>().size(), brackets.size() + 2);
  // ...but an escaped backslash before a quote does end it, so these brackets count.
  expect_error([&] { parse_strict_json("[\"\\\\\"," + nested_arrays(kMaxJsonDepth) + "]", "after.json"); },
               {"after.json", "depth"});
}

TEST(ioStrictJson, DeepSafetensorsHeaderIsRefused) {
  specula::io::testing::TempDir dir;
  const std::string header = "{\"__metadata__\":" + nested_arrays(kHostileDepth) + "}";
  const std::string path = dir.write("deep.safetensors", specula::io::testing::safetensors_raw(header, ""));
  // The safetensors reader streams its header with its own SAX handler; whatever limit it applies,
  // the error must name the file and the nesting.
  expect_error([&] { specula::io::SafetensorsFile file(path); }, {"deep.safetensors", "nest"});
}

TEST(ioStrictJson, ManyMembersParseInLinearTime) {
  // nlohmann's callback parser rescans a container's members each time one of them closes, so
  // these took minutes with it; they must take milliseconds.
  constexpr int kMembers = 300000;
  std::string objects = "{";
  std::string arrays = "[";
  for (int i = 0; i < kMembers; ++i) {
    objects += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":{}";
    arrays += i ? ",{}" : "{}";
  }
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(parse_strict_json(objects + "}", "objects.json").size(), static_cast<size_t>(kMembers));
  EXPECT_EQ(parse_strict_json(arrays + "]", "arrays.json").size(), static_cast<size_t>(kMembers));
  const double elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(elapsed_ms, 10000.0);  // generous: the sanitizer build is several times slower
}

TEST(ioStrictJson, DuplicateKeysAtAnyDepthAreRefused) {
  expect_error([&] { parse_strict_json(R"({"a": 1, "a": 2})", "dup.json"); }, {"dup.json", "'a' appears twice"});
  expect_error([&] { parse_strict_json(R"({"x": [{"b": 1, "c": {"d": 1, "d": 1}}]})", "dup.json"); },
               {"dup.json", "'d' appears twice"});
  expect_error([&] { parse_strict_json(R"({"": 1, "": 2})", "dup.json"); }, {"dup.json", "'' appears twice"});
  // The same key in sibling objects is fine.
  EXPECT_NO_THROW(parse_strict_json(R"({"x": {"a": 1}, "y": {"a": 2}})", "ok.json"));
}

TEST(ioStrictJson, NulByteAndTopLevelShapeAreRefused) {
  expect_error([&] { parse_strict_json(std::string("{}\0{", 4), "nul.json"); }, {"nul.json", "NUL byte at offset 2"});
  expect_error([&] { parse_strict_json_object("[1]", "array.json"); }, {"array.json", "object", "array"});
}

TEST(ioStrictJson, ParseErrorsQuoteOnlyAnExcerpt) {
  // nlohmann quotes the whole token being read: here an unterminated megabyte-long string.
  const std::string text = "[\"" + std::string(1 << 20, 'x');
  try {
    parse_strict_json(text, "long.json");
    FAIL() << "unterminated string accepted";
  } catch (const specula::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("long.json: invalid JSON"), std::string::npos) << message;
    EXPECT_LT(message.size(), 400u) << message.substr(0, 400);
  }
}

TEST(ioStrictJson, ExcerptsAreShortAndInert) {
  EXPECT_EQ(text_excerpt("short"), "short");
  const std::string cut = text_excerpt(std::string(1000, 'a'));
  EXPECT_EQ(cut, std::string(specula::io::kExcerptChars, 'a') + "... (1000 bytes)");
  // Control characters (a terminal escape, a newline) are written out, not passed through.
  EXPECT_EQ(text_excerpt("\x1b[2Jx\n"), "\\x1B[2Jx\\x0A");
  // A cut never splits a UTF-8 sequence: 40 two-byte characters cut at 64 bytes keep 32 of them.
  std::string accents;
  for (int i = 0; i < 40; ++i) accents += "\xC3\xA9";
  EXPECT_EQ(text_excerpt(accents).substr(0, 64), accents.substr(0, 64));
  EXPECT_EQ(text_excerpt(accents, 63).find("..."), 62u);

  EXPECT_EQ(json_excerpt(json{{"k", {1, 2}}}), R"({"k":[1,2]})");
  json huge = json::array();
  for (int i = 0; i < 1000000; ++i) huge.push_back(i);
  const std::string excerpt = json_excerpt(huge);
  EXPECT_LE(excerpt.size(), specula::io::kExcerptChars + 3) << excerpt;
  EXPECT_EQ(excerpt.substr(0, 7), "[0,1,2,");
  EXPECT_LE(json_excerpt(json(std::string(1 << 20, 'z'))).size(), specula::io::kExcerptChars + 3);
}

TEST(ioStrictJson, ExcerptOfAValueBuiltDeeperThanTheLimitIsBounded) {
  // Built in code, not parsed, so the depth check never saw it; the excerpt must still not recurse
  // 100,000 levels (nlohmann's dump() would).
  json deep = json::array();
  for (size_t i = 0; i < kHostileDepth; ++i) {
    json outer = json::array();
    outer.push_back(std::move(deep));
    deep = std::move(outer);
  }
  const std::string excerpt = json_excerpt(deep);
  EXPECT_EQ(excerpt, std::string(specula::io::kExcerptChars, '[') + "...");
}

TEST(ioStrictJson, CheckJsonTextAloneAcceptsOrdinaryText) {
  EXPECT_NO_THROW(check_json_text(R"({"a": [1, {"b": "]]]}}}"}], "c": "\"[["})", "plain.json"));
  EXPECT_NO_THROW(check_json_text("", "empty.json"));
}
