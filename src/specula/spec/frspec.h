// FR-Spec frequency-ranked vocabulary lists (freq_<V>.pt, as thunlp publishes them and
// `specula freq` builds them): torch.save of a plain Python list of token ids, most frequent
// first. The index in the list is the draft id: the drafter's LM head is restricted to these rows
// and a draft id i stands for the full-vocabulary token list[i]. Order is kept as written.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace specula::spec {

// Reads `path` and checks it against a vocabulary of `vocab_size` ids. Refused, with an error
// naming the file: anything but a plain list of ints (a tensor, a dict), an empty list, more
// entries than vocab_size, an id outside [0, vocab_size), and an id listed twice (the error names
// the id and both indexes).
std::vector<int32_t> load_frspec_list(const std::string& path, int64_t vocab_size);

// The same checks on ids in memory; `what` (a file name) starts every error.
void check_frspec_list(std::span<const int64_t> ids, int64_t vocab_size, const std::string& what);

// Checks `ids` like load_frspec_list, then writes them with io::write_torch_int_list (atomically,
// torch.save-compatible).
void write_frspec_list(const std::string& path, std::span<const int32_t> ids, int64_t vocab_size);

}  // namespace specula::spec
