// Failures the binding raises to Python. Every exception of the project derives from saddle::Error
// (core/check.h); the binding translates each into a class of saddle_torch.errors (bindings.cpp),
// carrying the structured fields below so that Python code never parses a message.
#pragma once

#include <string>

#include "core/check.h"
#include "core/codec/wire.h"

namespace saddle::torch_ext {

// Why a round (or the engine) failed. An empty `what` means it did not.
struct Failure {
  std::string what;
  int peer = -1;         // the rank (in the engine's group) whose link failed; -1 when none is blamed
  bool aborted = false;  // abort() ended it (a membership change): no neighbour is blamed
  bool corrupt = false;  // a neighbour's message failed validation, not the transport
  bool empty() const { return what.empty(); }
};

// A neighbour died, stalled past the timeout, or the transport failed. Python: saddle_torch.PeerError.
class PeerError : public ::saddle::Error {
 public:
  explicit PeerError(const Failure& failure)
      : Error(failure.what), peer_(failure.peer), aborted_(failure.aborted) {}
  explicit PeerError(const std::string& what) : Error(what) {}
  int peer() const { return peer_; }
  bool aborted() const { return aborted_; }

 private:
  int peer_ = -1;
  bool aborted_ = false;
};

// A neighbour's message failed validation. Python: saddle_torch.CorruptMessageError with `peer`.
class CorruptMessageFrom : public codec::CorruptMessage {
 public:
  explicit CorruptMessageFrom(const Failure& failure) : CorruptMessage(failure.what), peer_(failure.peer) {}
  int peer() const { return peer_; }

 private:
  int peer_ = -1;
};

// Throws what `failure` stands for (CorruptMessageFrom or PeerError), its message prefixed
// "saddle_torch: ".
[[noreturn]] inline void raise_failure(Failure failure) {
  failure.what = "saddle_torch: " + failure.what;
  if (failure.corrupt) throw CorruptMessageFrom(failure);
  throw PeerError(failure);
}

}  // namespace saddle::torch_ext
