// Upper bounds on the sizes a user can ask the engine for (CLI flags, later HTTP request fields).
// Each is far above any real use and far below where size arithmetic or memory planning would
// misbehave, so a typo or a hostile value gets an error naming the option and the bound instead
// of a wrapped size, a huge allocation or minutes of work before failing.
#pragma once

#include <cstdint>

#include "specula/core/thread_pool.h"

namespace specula::engine {

// KV-cache rows: 16M tokens, past the longest published context (10M), and small enough that a
// row count times any plausible per-row size stays far from int64 overflow.
constexpr int64_t kMaxContextTokens = int64_t{1} << 24;
// Prompt tokens per forward pass: the activations scale with it (an 8B model needs ~100 KB per
// token), and past a few thousand tokens a larger chunk buys no speed.
constexpr int64_t kMaxPrefillChunk = int64_t{1} << 16;
// Tokens one request may generate: no more than a context can hold.
constexpr int64_t kMaxNewTokens = kMaxContextTokens;
// Alternatives per token a request may ask log-probabilities for (OpenAI's top_logprobs limit).
constexpr int kMaxTopLogprobs = 20;
// CPU worker threads.
constexpr int kMaxThreads = ThreadPool::kMaxThreads;

}  // namespace specula::engine
