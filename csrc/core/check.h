// Project-prefixed check macros. Every check carries a message; the _EQ forms print both values.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace saddle {

// The root of every exception the project raises (codec::CorruptMessage and the binding's PeerError
// derive from it). Thrown itself for an internal invariant that does not hold (a bug, or memory
// corrupted by a peer); Python sees it as saddle_torch.InternalError.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

}  // namespace detail
}  // namespace saddle

// Internal invariant; throws saddle::Error.
#define SADDLE_CHECK(cond, ...)                                                                   \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      throw ::saddle::Error(::saddle::detail::concat("saddle: check failed: " #cond " (", __FILE__, \
                                                     ":", __LINE__, "): ", __VA_ARGS__));         \
    }                                                                                             \
  } while (0)

#define SADDLE_CHECK_EQ(a, b, ...)                                                                 \
  do {                                                                                             \
    if (!((a) == (b))) {                                                                           \
      throw ::saddle::Error(::saddle::detail::concat("saddle: check failed: " #a " == " #b " (",   \
                                                     (a), " vs ", (b), ") (", __FILE__, ":",       \
                                                     __LINE__, "): ", __VA_ARGS__));               \
    }                                                                                              \
  } while (0)

// Bad input from a user; throws std::invalid_argument (Python: ValueError).
#define SADDLE_CHECK_ARG(cond, ...)                                                     \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      throw std::invalid_argument(::saddle::detail::concat(__VA_ARGS__));               \
    }                                                                                   \
  } while (0)
