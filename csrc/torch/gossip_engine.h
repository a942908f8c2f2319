// Neighbour gossip over a torch.distributed Gloo group, driven from C++.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/topology/topology.h"
#include "torch/codec_ops.h"
#include "torch/errors.h"

namespace saddle::torch_ext {

struct EngineOptions {
  // How long a round may wait for any one neighbour before the engine gives up (PeerError).
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
};

struct RoundOptions {
  int64_t step = 0;       // selects the phase of a time-varying topology
  double gamma = 1.0;     // x ← x + γ Σ_j w_ij (x_j − x)
  bool snapshot = false;  // copy x at start, so the caller may modify x before finish()
  // Keep every neighbour's tensor for received() (NGM reads the neighbours' models). Otherwise the
  // worker folds each message into one accumulator as it arrives and the buffers are reused at once.
  bool keep_received = false;
};

// Compressed gossip (CHOCO, Koloskova et al. 2019) for one round.
struct CompressionOptions {
  CodecPtr codec;
  // true: CHOCO with error feedback (x̂, s); false: naive x ← x + γ Σ_j w_ij (C(x_j) − C(x_i)).
  bool error_feedback = true;
  uint64_t name_hash = 0;  // seeds the codecs' randomness, the same on every rank
};

struct EngineStats {
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  int64_t rounds = 0;
  double wait_seconds = 0.0;      // time callers spent blocked in finish()
  double transfer_seconds = 0.0;  // time from posting a round to its last message, summed
};

// Completes a torch Future once `rounds` rounds have been finished by the engine's worker (the DDP
// hook's future: backward goes on while the buckets gossip). The value is set by the caller, as
// Future.set_result would; the first failure of any of the rounds becomes the future's error.
class Completion {
 public:
  // `make_error` turns a failure into the exception the future carries (the binding makes it a
  // Python saddle_torch.PeerError with its fields, which backward() then raises with its type intact).
  using ErrorFactory = std::function<std::exception_ptr(const Failure&)>;
  Completion(c10::intrusive_ptr<c10::ivalue::Future> future, c10::IValue value, int rounds,
             ErrorFactory make_error = {});
  void round_done(const Failure& failure);  // called by the worker, once per round

 private:
  std::mutex mu_;
  c10::intrusive_ptr<c10::ivalue::Future> future_;
  c10::IValue value_;
  int remaining_;
  Failure failure_;
  ErrorFactory make_error_;
};

// One in-flight round. Created by GossipEngine::start, completed by GossipEngine::finish (or by the
// worker, for a round with a Completion).
class Round {
 public:
  bool done();  // true once every message of the round has arrived (or failed)

 private:
  friend class GossipEngine;
  bool gossip_ = true;  // false: a plain exchange (no mixing, caller-owned buffers)
  at::Tensor x_;
  at::Tensor sent_;    // exact: x_ itself or its snapshot; compressed: the encoded message
  at::Tensor source_;  // compressed: what the sender thread encodes (x − x̂, or a copy of x)
  at::Tensor acc_;     // Σ_j w_ij x_j (− Σ_j w_ij · snapshot), or Σ_j w_ij C_j: filled as messages arrive
  at::Tensor own_;     // compressed: this rank's decoded message C_i
  std::vector<at::Tensor> received_;
  std::vector<at::Tensor> exchange_sends_;
  std::vector<at::Tensor> scatter_;  // after mixing, x is copied back into these, in order
  std::shared_ptr<Completion> completion_;
  std::vector<int> recv_peers_, send_peers_;
  // Compressed rounds: the codec, CHOCO state (caller-owned), message seeds (own, then per in-edge).
  CompressionOptions compression_;
  at::Tensor x_hat_, s_;
  uint64_t own_seed_ = 0;
  std::vector<uint64_t> recv_seeds_;
  topology::Row row_;
  RoundOptions options_;
  int tag_ = 0;
  std::vector<c10::intrusive_ptr<c10d::Work>> sends_, recvs_;
  std::chrono::steady_clock::time_point posted_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool sends_posted_ = false;  // compressed: the sender thread encoded and posted the message
  bool done_ = false;
  bool waited_ = false;
  bool finished_ = false;
  Failure failure_;  // empty unless the round failed (set by the worker, or the sender thread first)
};

class GossipEngine {
 public:
  // `backend` is the Gloo backend of the group torch.distributed created; `rank` is this process's
  // rank in it. Starts two threads: the worker and the sender.
  GossipEngine(c10::intrusive_ptr<c10d::Backend> backend,
               std::shared_ptr<topology::Topology> topology, EngineOptions options);
  ~GossipEngine();
  GossipEngine(const GossipEngine&) = delete;
  GossipEngine& operator=(const GossipEngine&) = delete;

  void set_topology(std::shared_ptr<topology::Topology> topology);
  std::shared_ptr<topology::Topology> topology() const;
  int rank() const { return rank_; }
  int size() const { return size_; }

  // Posts every send and receive of one round to the neighbours of `step` and returns at once.
  // Every rank must start its rounds in the same order (as for collectives). Raises PeerError if an
  // earlier round failed: after a transport failure the group is unusable.
  // `scatter`/`completion`: see finish_on_worker below.
  std::shared_ptr<Round> start(const at::Tensor& x, const RoundOptions& options,
                               std::vector<at::Tensor> scatter = {}, std::shared_ptr<Completion> completion = {});
  // Posts one compressed round: copies x − x̂ (CHOCO) or x (naive); the sender
  // thread encodes and sends it; the worker validates and decodes each neighbour's message as it
  // arrives. finish() then updates x̂ += C_i, s += Σ_{j∈N(i)∪{i}} w_ij C_j and x += γ (s − x̂) in one
  // pass; a corrupted message leaves x, x̂, s untouched. x, x̂, s: float32, same size. On a
  // time-varying topology the caller passes the (x̂, s) of the round's phase (GossipContext.choco_key).
  //
  // With a `completion`, the worker finishes the round itself (mixes x, copies it into `scatter`,
  // then counts the round done on the completion); the caller must not finish() it.
  std::shared_ptr<Round> start_compressed(const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& s,
                                          const RoundOptions& options, const CompressionOptions& compression,
                                          std::vector<at::Tensor> scatter = {},
                                          std::shared_ptr<Completion> completion = {});
  // Posts a point-to-point exchange: sends[k].second to rank sends[k].first, and receives from
  // recvs[k].first into recvs[k].second (caller-owned). Complete it with wait() or finish().
  std::shared_ptr<Round> exchange(const std::vector<std::pair<int, at::Tensor>>& sends,
                                  const std::vector<std::pair<int, at::Tensor>>& recvs);
  // Blocks until every message of the round arrived; raises PeerError naming the neighbour that
  // failed or timed out. Idempotent; does not mix.
  void wait(const std::shared_ptr<Round>& round);
  // The neighbours' tensors of a waited gossip round started with keep_received, in the order of
  // the row's in-edges.
  std::vector<at::Tensor> received(const std::shared_ptr<Round>& round);
  // wait(), then for a gossip round mix in place, one pass over x: x ← x + γ Σ_j w_ij (x_j − base),
  // base = x, or the snapshot taken at start. Releases the round's buffers. Raises PeerError, or
  // CorruptMessage for a compressed round whose message failed validation.
  void finish(const std::shared_ptr<Round>& round);

  EngineStats stats() const;
  void reset_stats();

  // Stops the worker thread and releases the process-group backend, on the calling thread
  // (idempotent). Called by saddle_torch.shutdown() and at interpreter exit with the GIL released:
  // if this was the last reference to the group, its Gloo threads are joined while they can still
  // take the GIL to free the tensors they hold. Rounds started afterwards raise.
  void close();

  // Gives up on every round in flight and refuses new ones, as a transport failure would: waits
  // blocked on a neighbour return at once and raise PeerError carrying `reason`. For elastic
  // training: a rank that learns the membership is changing must not wait out the timeout on a
  // neighbour that has already stopped gossiping. Idempotent; the first reason is kept. Thread-safe.
  void abort(const std::string& reason);
  // Whether a round failed or abort() was called (new rounds raise PeerError).
  bool broken() const;

 private:
  // Refuses new rounds after a failure, gives the round its tag; returns the current topology.
  std::shared_ptr<topology::Topology> open_round(Round& round);
  // Posts the receives, and the sends unless the sender thread encodes the message first.
  void post(const std::shared_ptr<Round>& round);
  void check_scatter(const at::Tensor& x, const std::vector<at::Tensor>& scatter) const;
  void sender_loop();
  void encode_and_send(Round& round);
  void worker_loop();
  void wait_round(Round& round);
  // Worker side: folds message j into the round's accumulator (throws CorruptMessage).
  void accumulate(Round& round, size_t j);
  // The mixing pass over x (and scatter), on whichever thread finishes the round.
  void mix(Round& round);
  void account(const Round& round);
  void release_round(Round& round);
  void fail(const std::shared_ptr<Round>& round, const Failure& failure);
  // Receive and snapshot buffers are reused across rounds: warm pages, no allocation per round.
  at::Tensor acquire(const at::Tensor& like);
  at::Tensor acquire(int64_t numel, at::ScalarType dtype);
  void release(std::vector<at::Tensor>& buffers);
  // Frees the rounds the worker has finished with, on the calling thread (never on the worker).
  void drain_retired();
  [[noreturn]] void raise_broken() const;

  c10::intrusive_ptr<c10d::Backend> backend_;
  EngineOptions options_;
  int rank_ = 0;
  int size_ = 1;

  mutable std::mutex mu_;  // guards topology_, stats_, broken_, graveyard_, next_tag_, pool_
  std::shared_ptr<topology::Topology> topology_;
  EngineStats stats_;
  Failure broken_;  // the first failure (or abort); empty while the engine is healthy
  // Rounds whose buffers a failed transport may still write into: kept alive on purpose.
  std::vector<std::shared_ptr<Round>> graveyard_;
  uint32_t next_tag_ = 0;
  std::vector<at::Tensor> pool_;

  std::mutex queue_mu_;  // guards the two queues, retired_ and stop_
  std::condition_variable queue_cv_;
  std::deque<std::shared_ptr<Round>> queue_;       // rounds the worker waits for, in start order
  std::deque<std::shared_ptr<Round>> send_queue_;  // compressed rounds the sender encodes, in order
  std::shared_ptr<Round> waiting_;  // the round the worker is waiting for (abort() reaches it)
  std::vector<std::shared_ptr<Round>> retired_;  // waited by the worker; freed by drain_retired()
  bool stop_ = false;
  bool closed_ = false;  // guarded by mu_
  std::atomic<bool> aborted_{false};  // abort() was called: a work that returns false was aborted
  std::thread sender_;  // encodes compressed messages and posts their sends
  std::thread worker_;  // waits for each round's messages, accumulating them as they arrive
};

}  // namespace saddle::torch_ext
