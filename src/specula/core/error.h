// Error reporting for the whole library.
// One style everywhere: throw specula::Error with a message that names the thing that is wrong
// (file, tensor, config key, request field). Callers at API boundaries add context by catching
// and rethrowing with `Error::with_context`, so a user sees "loading model.safetensors: tensor
// 'x': offsets out of range" instead of a bare low-level message. Nothing in the library aborts.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace specula {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
  // Prefixes `context: ` to the message of an existing error.
  static Error with_context(const std::string& context, const std::exception& inner) {
    return Error(context + ": " + inner.what());
  }
};

namespace detail {
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

// Throws specula::Error whose message is the concatenation of `parts`.
template <typename... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(detail::concat(std::forward<Parts>(parts)...));
}

// Runs `body`; any exception it throws is rethrown as Error with `context` prefixed.
template <typename Body>
auto with_context(const std::string& context, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const std::exception& e) {
    throw Error::with_context(context, e);
  }
}

}  // namespace specula

// Checks an invariant on input data; the message parts follow the condition.
#define SPECULA_CHECK(cond, ...)                 \
  do {                                           \
    if (!(cond)) ::specula::fail(__VA_ARGS__);   \
  } while (0)
