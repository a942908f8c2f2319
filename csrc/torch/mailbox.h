// Point-to-point messages that never wait for each other (asynchronous push-sum gossip).
//
// One message in flight per peer and direction, each completed by a waiter thread of its own: a slow
// neighbour holds up nothing but its own link, where the gossip engine's rounds complete in order.
// The k-th message in each direction carries tag kTagBase + k (mod kTagSpan) on both ends, so sends
// and receives posted at different times still match. saddle_torch/gossip/pushsum.py drives it.
#pragma once

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "torch/errors.h"

namespace saddle::torch_ext {

class Mailbox {
 public:
  // `backend`: the Gloo backend of the group; `timeout`: how long one message may take before the
  // waiter gives up on its peer (PeerError).
  Mailbox(c10::intrusive_ptr<c10d::Backend> backend, std::chrono::milliseconds timeout);
  ~Mailbox();
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  // Posts `t` (a contiguous CPU tensor, kept alive until sent) to `peer`; the last send to `peer`
  // must have completed (sent()). Returns at once.
  void send(int peer, const at::Tensor& t);
  // Posts a receive from `peer` into `t`; the last receive from `peer` must have completed.
  void recv(int peer, const at::Tensor& t);
  // Whether the last send to / receive from `peer` completed (true when none was posted).
  bool sent(int peer);
  bool received(int peer);
  // Block until the last receive from `peer` completed (bounded staleness). Raise PeerError if it failed.
  void wait_received(int peer);
  // Aborts everything in flight and joins the waiters (idempotent); later calls raise.
  void close();
  int64_t bytes_sent() const { return bytes_sent_.load(); }
  int64_t bytes_received() const { return bytes_received_.load(); }

 private:
  struct Slot {
    std::mutex mu;
    std::condition_variable cv;
    c10::intrusive_ptr<c10d::Work> work;  // the message in flight, if any
    at::Tensor tensor;
    bool pending = false;  // posted, not yet completed
    bool stop = false;
    int64_t seq = 0;  // messages posted in this direction
    Failure failure;
    std::thread waiter;
  };

  Slot& slot(int peer, bool send);
  void post(int peer, bool send, const at::Tensor& t);
  bool idle(int peer, bool send);
  void wait_idle(int peer, bool send);
  void run(Slot* s, int peer, bool send);
  int tag(int64_t seq) const;

  c10::intrusive_ptr<c10d::Backend> backend_;
  std::chrono::milliseconds timeout_;
  std::mutex mu_;  // guards slots_, closed_
  std::map<std::pair<int, bool>, std::unique_ptr<Slot>> slots_;
  bool closed_ = false;
  std::atomic<int64_t> bytes_sent_{0};
  std::atomic<int64_t> bytes_received_{0};
};

}  // namespace saddle::torch_ext
