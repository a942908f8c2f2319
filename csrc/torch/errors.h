// Exceptions the binding raises to Python (registered in bindings.cpp).
#pragma once

#include <stdexcept>

namespace saddle::torch_ext {

// A neighbour died, stalled past the timeout, or the transport failed. Python: saddle_torch.PeerError.
class PeerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace saddle::torch_ext
