// FR-Spec list loading and writing (see frspec.h).
#include "specula/spec/frspec.h"

#include <limits>
#include <unordered_map>

#include "specula/core/error.h"
#include "specula/io/torch_checkpoint.h"
#include "specula/io/torch_writer.h"

namespace specula::spec {

namespace {

// Token ids are int32 everywhere in the engine, so a vocabulary has at most 2^31 ids.
constexpr int64_t kMaxVocabSize = int64_t{std::numeric_limits<int32_t>::max()} + 1;

void check_vocab_size(int64_t vocab_size, const std::string& what) {
  SPECULA_CHECK(vocab_size > 0 && vocab_size <= kMaxVocabSize, what, ": vocabulary size ", vocab_size,
                " is out of range (1 to ", kMaxVocabSize, ")");
}

}  // namespace

void check_frspec_list(std::span<const int64_t> ids, int64_t vocab_size, const std::string& what) {
  check_vocab_size(vocab_size, what);
  SPECULA_CHECK(!ids.empty(), what, ": FR-Spec list is empty");
  SPECULA_CHECK(static_cast<uint64_t>(ids.size()) <= static_cast<uint64_t>(vocab_size), what, ": FR-Spec list has ",
                ids.size(), " entries, more than the vocabulary's ", vocab_size, " ids");
  std::unordered_map<int64_t, size_t> first_index;
  first_index.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t id = ids[i];
    SPECULA_CHECK(id >= 0 && id < vocab_size, what, ": FR-Spec list entry ", i, " is token id ", id,
                  ", outside the vocabulary [0, ", vocab_size, ")");
    const auto [it, inserted] = first_index.emplace(id, i);
    SPECULA_CHECK(inserted, what, ": FR-Spec list holds token id ", id, " twice, at indexes ", it->second, " and ", i);
  }
}

std::vector<int32_t> load_frspec_list(const std::string& path, int64_t vocab_size) {
  const std::vector<int64_t> values = io::load_torch_plain_int_list(path);
  check_frspec_list(values, vocab_size, path);
  return {values.begin(), values.end()};  // every value checked to lie in [0, vocab_size), which fits int32
}

void write_frspec_list(const std::string& path, std::span<const int32_t> ids, int64_t vocab_size) {
  const std::vector<int64_t> values(ids.begin(), ids.end());
  check_frspec_list(values, vocab_size, path);
  io::write_torch_int_list(path, values);
}

}  // namespace specula::spec
