// Generator: one request at a time on an Engine. Prefill runs the prompt in chunks (the engine's
// prefill_chunk tokens per forward, with a progress callback for long prompts); decode runs one
// token per forward, samples, streams each token to the caller and stops at a stop token, at
// max_new_tokens, at the end of the context, or when the caller says so.
//
// The KV cache is the engine's single sequence: each generate() starts from slot 0.
//
// Log-probabilities (GenerationRequest::logprobs) are computed by this plain Generator only, on
// both backends; engine::Scheduler runs every request that asks for them here, also when the
// engine speculates (speculative decoding is lossless: the output distribution is the target
// model's either way, so only the speed differs).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "specula/engine/logprobs.h"
#include "specula/sampling/params.h"
#include "specula/spec/draft_tree.h"

namespace specula::engine {

class Engine;

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int64_t max_new_tokens = 128;
  sampling::SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these (it is not streamed)
  // With `logprobs`, every generated token gets a TokenLogprobs (logprobs.h: the raw model
  // distribution) with `top_logprobs` alternatives, 0 to kMaxTopLogprobs (limits.h).
  bool logprobs = false;
  int top_logprobs = 0;
};

enum class FinishReason { Stop, Length, ContextFull, Cancelled };
std::string_view finish_reason_name(FinishReason reason);

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids, without the stop token
  FinishReason finish_reason = FinishReason::Length;
  int64_t prompt_tokens = 0;
  bool prefill_ran = false;      // false when max_new_tokens is 0: the prompt was checked, not run
  double prefill_seconds = 0.0;  // prompt forward passes until the first token is chosen
  double decode_seconds = 0.0;   // the remaining tokens
  // Speculative decoding (zero without a draft head): target verification passes, draft tokens
  // proposed (tree nodes below the root) and accepted.
  int64_t verifications = 0, drafted_tokens = 0, accepted_tokens = 0;
  // One entry per token of `tokens` when the request asked for logprobs, else empty.
  std::vector<TokenLogprobs> logprobs;
  // Where the decode time went, when the speculative generator was asked to time its phases
  // (benchmarks; zero otherwise, since a greedy cycle then runs as one graph): drafting (the tree
  // levels, the selection and the draft's catch-up) and verification (the target's tree forward,
  // acceptance and KV compaction). Each phase ends at a device synchronisation.
  double draft_seconds = 0.0, verify_seconds = 0.0;
  // Tokens per verification pass, the bonus token included (the figure papers report).
  double tokens_per_verification() const {
    return verifications > 0 ? static_cast<double>(accepted_tokens + verifications) / static_cast<double>(verifications) : 0.0;
  }
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0.0; }
  // Decode rate over the tokens after the first (the first comes from the prefill pass).
  double decode_tokens_per_second() const;
};

struct GenerationCallbacks {
  // Each generated token as soon as it is chosen; return false to stop generating.
  std::function<bool(int32_t)> on_token;
  // With GenerationRequest::logprobs: a token's log-probabilities, called just before on_token
  // for the same token.
  std::function<void(const TokenLogprobs&)> on_logprobs;
  // Prefill progress: prompt tokens processed so far, total.
  std::function<void(int64_t, int64_t)> on_prefill_progress;
  // Speculative decoding: each verified draft tree, the accepted nodes below the root (in path
  // order) and the target's token after them (the next root). For tests and traces.
  std::function<void(const spec::DraftTree&, std::span<const int32_t>, int32_t)> on_verification;
};

// A way of producing a request's tokens on an engine: the autoregressive Generator, or the
// SpeculativeGenerator (EAGLE draft trees verified by the target). Front ends hold a Decoder.
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual GenerationResult generate(const GenerationRequest& request, const GenerationCallbacks& callbacks = {}) = 0;
};

class Generator : public Decoder {
 public:
  explicit Generator(Engine& engine) : engine_(engine) {}
  GenerationResult generate(const GenerationRequest& request, const GenerationCallbacks& callbacks = {}) override;

 private:
  Engine& engine_;
};

// The decoder an engine calls for: speculative when it has a draft head, else autoregressive.
std::unique_ptr<Decoder> make_decoder(Engine& engine);
// Checks a request against the engine (prompt ids, lengths, max_new_tokens, top_logprobs) with
// errors naming the problem; shared by both decoders.
void check_request(Engine& engine, const GenerationRequest& request);

}  // namespace specula::engine
