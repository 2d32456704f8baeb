// Fuzz target: the OpenAI request parser (server/openai_request.h) on arbitrary POST bodies, for
// both endpoints. Its contract is stricter than "specula::Error": every refusal is a
// RequestError (it becomes the HTTP 400), so any other exception escaping is a finding, and a
// request it accepts must satisfy what the server relies on without checking again.
#include <cstdlib>

#include "fuzz_util.h"
#include "specula/engine/limits.h"
#include "specula/server/openai_request.h"
#include "specula/server/stop_matcher.h"

using namespace specula;

static void check(bool ok) {
  if (!ok) std::abort();  // an accepted request broke the parser's promises
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body = fuzz::as_text(data, size);
  for (const server::Endpoint endpoint : {server::Endpoint::kChatCompletions, server::Endpoint::kCompletions}) {
    server::CompletionRequest r;
    try {
      r = server::parse_request(endpoint, body);
    } catch (const server::RequestError& e) {
      check(e.status() >= 400 && e.status() < 500);
      continue;
    }
    r.sampling.validate();  // "validated": an Error here escapes and is reported
    check(r.endpoint == endpoint);
    check(endpoint == server::Endpoint::kCompletions || !r.messages.empty());
    check(r.max_tokens >= 0 && r.max_tokens <= engine::kMaxNewTokens);
    check(r.stop.size() <= server::kMaxStops);
    for (const std::string& s : r.stop) check(!s.empty() && s.size() <= server::kMaxStopBytes);
    check(r.top_logprobs >= 0 && r.top_logprobs <= 20);
    check(!r.include_usage || r.stream);
  }
  return 0;
}
