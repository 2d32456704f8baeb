// Prefill + decode loop (see generator.h).
#include "specula/engine/generator.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "specula/core/error.h"
#include "specula/engine/limits.h"
#include "specula/engine/engine.h"
#include "specula/engine/speculative.h"
#include "specula/sampling/sampler.h"

namespace specula::engine {

std::string_view finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::ContextFull: return "context_full";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

double GenerationResult::decode_tokens_per_second() const {
  const double n = static_cast<double>(tokens.size()) - 1.0;
  return decode_seconds > 0 && n > 0 ? n / decode_seconds : 0.0;
}

void check_request(Engine& engine, const GenerationRequest& request) {
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  const int64_t context = engine.max_context();
  const int64_t vocab = engine.config().vocab_size;
  SPECULA_CHECK(prompt_len > 0, "the prompt is empty (nothing to condition on)");
  SPECULA_CHECK(prompt_len < context, "the prompt has ", prompt_len, " tokens but the context holds ", context,
                " (raise --max-context or shorten the prompt)");
  for (int32_t id : request.prompt)
    SPECULA_CHECK(id >= 0 && id < vocab, "prompt token id ", id, " is outside the model's vocabulary [0, ", vocab, ")");
  SPECULA_CHECK(request.max_new_tokens >= 0 && request.max_new_tokens <= kMaxNewTokens,
                "max_new_tokens must be from 0 to ", kMaxNewTokens, ", got ", request.max_new_tokens);
  SPECULA_CHECK(request.top_logprobs >= 0 && request.top_logprobs <= kMaxTopLogprobs,
                "top_logprobs must be from 0 to ", kMaxTopLogprobs, ", got ", request.top_logprobs);
  SPECULA_CHECK(request.logprobs || request.top_logprobs == 0, "top_logprobs needs logprobs");
}

std::unique_ptr<Decoder> make_decoder(Engine& engine) {
  if (engine.draft() != nullptr) return std::make_unique<SpeculativeGenerator>(engine);
  return std::make_unique<Generator>(engine);
}

GenerationResult Generator::generate(const GenerationRequest& request, const GenerationCallbacks& callbacks) {
  using clock = std::chrono::steady_clock;
  check_request(engine_, request);
  const int64_t prompt_len = static_cast<int64_t>(request.prompt.size());
  const int64_t context = engine_.max_context();
  sampling::Sampler sampler(request.sampling);

  GenerationResult result;
  result.prompt_tokens = prompt_len;
  if (request.max_new_tokens == 0) return result;

  std::vector<int32_t> positions, ids;
  std::vector<float> logits;
  result.prefill_ran = true;
  const auto prefill_start = clock::now();
  const int64_t chunk = engine_.prefill_chunk();
  model::KvCache& kv = engine_.transformer().kv_cache();
  kv.truncate(0);  // one sequence per request, from row 0
  for (int64_t begin = 0; begin < prompt_len; begin += chunk) {
    const int64_t n = std::min(chunk, prompt_len - begin);
    positions.resize(static_cast<size_t>(n));
    std::iota(positions.begin(), positions.end(), static_cast<int32_t>(begin));
    engine_.write_inputs(std::span(request.prompt).subspan(static_cast<size_t>(begin), static_cast<size_t>(n)),
                         positions, positions);
    engine_.forward(n, begin + n == prompt_len ? 1 : 0, prompt_len);
    kv.append(n);
    if (callbacks.on_prefill_progress) {
      engine_.synchronize();
      callbacks.on_prefill_progress(begin + n, prompt_len);
    }
  }
  // Plain greedy decoding needs no logits on the host: the argmax is taken where they are. On
  // CUDA every other setting samples on the device too; on the CPU the host sampler runs.
  const sampling::SamplingParams& sp = request.sampling;
  const bool plain_greedy = sp.is_greedy() && sp.repetition_penalty == 1.0f && sp.presence_penalty == 0.0f &&
                            sp.frequency_penalty == 0.0f;
  const bool on_cuda = engine_.device() == Device::CUDA;
  using StepOutput = Engine::StepOutput;
  const StepOutput step_output =
      plain_greedy ? StepOutput::Greedy : (on_cuda ? StepOutput::Sampled : StepOutput::Logits);
  const bool device_sampling = step_output == StepOutput::Sampled;
  // The device sampler rewrites the logits in place (penalties, temperature), so with logprobs
  // the decode graph stops at the logits, the log-probabilities are captured from the raw row,
  // and the token is drawn after that (outside the graph).
  const bool want_logprobs = request.logprobs;
  const StepOutput graph_output = device_sampling && want_logprobs ? StepOutput::Logits : step_output;
  if (device_sampling) engine_.begin_sampling(sp, request.prompt);
  TokenLogprobs token_logprobs;
  // The next token from logits row 0 of the last forward; `chosen` >= 0 when the forward's graph
  // already took it (greedy on the device, which leaves the logits as they were).
  auto choose = [&](int32_t chosen) {
    if (want_logprobs) engine_.capture_logprobs(request.top_logprobs);
    if (chosen < 0) {
      if (device_sampling) {
        chosen = engine_.sample_on_device();
      } else {
        engine_.read_logits(1, logits);
        chosen = sampler.sample(logits, request.prompt, result.tokens);
      }
    }
    if (want_logprobs) token_logprobs = engine_.read_logprobs(chosen, request.top_logprobs);
    return chosen;
  };
  int32_t token = choose(-1);
  const auto decode_start = clock::now();
  result.prefill_seconds = std::chrono::duration<double>(decode_start - prefill_start).count();

  int64_t position = prompt_len;
  for (;;) {
    if (std::find(request.stop_ids.begin(), request.stop_ids.end(), token) != request.stop_ids.end()) {
      result.finish_reason = FinishReason::Stop;
      break;
    }
    result.tokens.push_back(token);
    if (want_logprobs) {
      if (callbacks.on_logprobs) callbacks.on_logprobs(token_logprobs);
      result.logprobs.push_back(std::move(token_logprobs));
    }
    if (callbacks.on_token && !callbacks.on_token(token)) {
      result.finish_reason = FinishReason::Cancelled;
      break;
    }
    if (static_cast<int64_t>(result.tokens.size()) >= request.max_new_tokens) {
      result.finish_reason = FinishReason::Length;
      break;
    }
    if (position >= context) {
      result.finish_reason = FinishReason::ContextFull;
      break;
    }
    const int32_t pos = static_cast<int32_t>(position);
    const int32_t next = engine_.decode_step(token, pos, graph_output);
    kv.append(1);
    token = choose(next);
    ++position;
  }
  engine_.synchronize();  // surfaces any input error a kernel flagged during the steps
  result.decode_seconds = std::chrono::duration<double>(clock::now() - decode_start).count();
  return result;
}

}  // namespace specula::engine
