#include "torch/gossip_engine.h"

#include <ATen/Parallel.h>

#include <sstream>

#include "core/check.h"
#include "core/mixing.h"
#include "torch/errors.h"

namespace saddle::torch_ext {
namespace {

using Clock = std::chrono::steady_clock;

// Tags of gossip messages live above the range users typically pick for their own send/recv.
constexpr uint32_t kTagBase = 0x20000000u;
constexpr uint32_t kTagSpan = 0x10000000u;
// Enough for a few tensors in flight at degree ≤ 4; more are allocated and dropped.
constexpr size_t kMaxPooledBuffers = 16;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

Completion::Completion(c10::intrusive_ptr<c10::ivalue::Future> future, c10::IValue value, int rounds,
                       ErrorFactory make_error)
    : future_(std::move(future)), value_(std::move(value)), remaining_(rounds), make_error_(std::move(make_error)) {
  SADDLE_CHECK_ARG(future_, "a completion needs a future");
  SADDLE_CHECK_ARG(rounds > 0, "a completion needs at least one round, got ", rounds);
}

void Completion::round_done(const Failure& failure) {
  Failure first;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure.empty() && failure_.empty()) failure_ = failure;
    if (--remaining_ > 0) return;
    first = failure_;
  }
  // Every round of the future is over (their buffers are free): complete it, outside the lock.
  if (first.empty()) {
    future_->markCompleted(value_);
  } else {
    first.what = "saddle_torch: " + first.what;
    future_->setError(make_error_ ? make_error_(first) : std::make_exception_ptr(PeerError(first)));
  }
}

bool Round::done() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

GossipEngine::GossipEngine(c10::intrusive_ptr<c10d::Backend> backend,
                           std::shared_ptr<topology::Topology> topology, EngineOptions options)
    : backend_(std::move(backend)), options_(options) {
  SADDLE_CHECK_ARG(backend_, "GossipEngine needs a process-group backend, got None");
  SADDLE_CHECK_ARG(options_.timeout.count() > 0, "timeout must be positive");
  rank_ = backend_->getRank();
  size_ = backend_->getSize();
  set_topology(std::move(topology));
  worker_ = std::thread([this] { worker_loop(); });
  sender_ = std::thread([this] { sender_loop(); });
}

GossipEngine::~GossipEngine() { close(); }

void GossipEngine::close() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stop_ = true;
  }
  queue_cv_.notify_all();
  if (sender_.joinable()) sender_.join();  // first: the worker may wait for a round's sends
  if (worker_.joinable()) worker_.join();
  if (broken()) {
    // Rounds given up on (abort, or a failure the caller never finished) may still have receives
    // pending in Gloo: their buffers must outlive the transport, which a broken engine keeps.
    std::lock_guard<std::mutex> lock(queue_mu_);
    new std::vector<std::shared_ptr<Round>>(std::move(retired_));
    retired_.clear();
  }
  drain_retired();
  c10::intrusive_ptr<c10d::Backend> backend;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    if (!broken_.empty()) {
      // A failed Gloo transport may still write into these buffers: never free them.
      new std::vector<std::shared_ptr<Round>>(std::move(graveyard_));
    }
    backend = std::move(backend_);
    if (!broken_.empty()) {
      // Destroying a Gloo group whose peer died or stalled joins threads that may be blocked on that
      // peer until the timeout, and its pairs may still touch the graveyard's buffers: keep it.
      new c10::intrusive_ptr<c10d::Backend>(std::move(backend));
    }
  }
  backend.reset();  // outside the lock: may destroy the process group and join its threads
}

void GossipEngine::abort(const std::string& reason) {
  std::vector<std::shared_ptr<Round>> rounds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    if (broken_.empty()) broken_ = Failure{"aborted: " + reason, -1, true, false};
    aborted_ = true;
  }
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    rounds.assign(queue_.begin(), queue_.end());
    if (waiting_) rounds.push_back(waiting_);
  }
  // Receives are posted before a round is queued; a compressed round's sends once the sender thread
  // has encoded it (sends_posted_). A work posted later is aborted by the worker (wait_round).
  for (const auto& round : rounds) {
    for (auto& work : round->recvs_) work->abort();
    bool sends_posted = false;
    {
      std::lock_guard<std::mutex> lock(round->mu_);
      sends_posted = round->sends_posted_;
    }
    if (sends_posted)
      for (auto& work : round->sends_) work->abort();
  }
}

bool GossipEngine::broken() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !broken_.empty();
}

void GossipEngine::set_topology(std::shared_ptr<topology::Topology> topology) {
  SADDLE_CHECK_ARG(topology != nullptr, "topology must not be None");
  SADDLE_CHECK_ARG(topology->size() == size_, "topology '", topology->name(), "' has ",
                   topology->size(), " ranks but the process group has ", size_);
  std::lock_guard<std::mutex> lock(mu_);
  topology_ = std::move(topology);
}

std::shared_ptr<topology::Topology> GossipEngine::topology() const {
  std::lock_guard<std::mutex> lock(mu_);
  return topology_;
}

void GossipEngine::raise_broken() const {
  Failure failure = broken_;
  failure.what = "the gossip engine of rank " + std::to_string(rank_) +
                 " failed earlier and the process group is unusable: " + broken_.what;
  failure.corrupt = false;
  raise_failure(std::move(failure));
}

std::shared_ptr<Round> GossipEngine::start(const at::Tensor& x, const RoundOptions& options,
                                           std::vector<at::Tensor> scatter, std::shared_ptr<Completion> completion) {
  SADDLE_CHECK_ARG(x.defined(), "gossip needs a tensor, got an undefined one");
  SADDLE_CHECK_ARG(x.device().is_cpu(), "the gossip engine works on CPU tensors, got ", x.device());
  SADDLE_CHECK_ARG(x.layout() == at::kStrided && x.is_contiguous(),
                   "the gossip engine needs a dense contiguous tensor");
  SADDLE_CHECK_ARG(at::isFloatingType(x.scalar_type()),
                   "gossip averages floating-point tensors, got ", x.scalar_type());
  SADDLE_CHECK_ARG(options.step >= 0, "step must be non-negative, got ", options.step);
  SADDLE_CHECK_ARG(!(completion && options.keep_received),
                   "a round finished by the engine cannot keep its received tensors");
  check_scatter(x, scatter);

  auto round = std::make_shared<Round>();
  const std::shared_ptr<topology::Topology> topo = open_round(*round);
  round->x_ = x;
  round->options_ = options;
  round->scatter_ = std::move(scatter);
  round->completion_ = std::move(completion);
  round->row_ = topo->row(rank_, options.step);
  round->sent_ = options.snapshot ? acquire(x).copy_(x) : x;
  for (const auto& e : round->row_.in) {
    round->received_.push_back(acquire(x));
    round->recv_peers_.push_back(e.peer);
  }
  if (!options.keep_received && !round->row_.in.empty()) round->acc_ = acquire(x);
  round->send_peers_ = round->row_.out;
  post(round);
  return round;
}

std::shared_ptr<Round> GossipEngine::start_compressed(const at::Tensor& x, const at::Tensor& x_hat,
                                                      const at::Tensor& s, const RoundOptions& options,
                                                      const CompressionOptions& compression,
                                                      std::vector<at::Tensor> scatter,
                                                      std::shared_ptr<Completion> completion) {
  SADDLE_CHECK_ARG(compression.codec != nullptr, "compressed gossip needs a codec");
  for (const at::Tensor* t : {&x, &x_hat, &s})
    SADDLE_CHECK_ARG(t->defined() && t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                         t->numel() == x.numel(),
                     "compressed gossip needs contiguous float32 CPU tensors x, x_hat, s of one size");
  SADDLE_CHECK_ARG(!options.keep_received, "a compressed round receives codec messages, not tensors");
  check_scatter(x, scatter);
  auto round = std::make_shared<Round>();
  const std::shared_ptr<topology::Topology> topo = open_round(*round);
  round->x_ = x;
  round->options_ = options;
  round->scatter_ = std::move(scatter);
  round->completion_ = std::move(completion);
  round->row_ = topo->row(rank_, options.step);
  round->compression_ = compression;
  round->x_hat_ = x_hat;
  round->s_ = s;
  const codec::Codec& codec = *compression.codec;
  round->own_seed_ = message_seed(compression.name_hash, options.step, rank_);
  // The message source, C(x − x̂) with error feedback, C(x) without: copied now, so that the caller
  // may move x at once; the sender thread encodes it.
  round->source_ = acquire(x);
  if (compression.error_feedback) {
    at::sub_out(round->source_, x, x_hat);
  } else {
    round->source_.copy_(x);
  }
  const int64_t bytes = static_cast<int64_t>(codec.encoded_bytes(static_cast<size_t>(x.numel())));
  round->sent_ = acquire(bytes, at::kByte);
  round->own_ = acquire(x);
  round->acc_ = acquire(x).zero_();
  for (const auto& e : round->row_.in) {
    round->received_.push_back(acquire(bytes, at::kByte));
    round->recv_peers_.push_back(e.peer);
    round->recv_seeds_.push_back(message_seed(compression.name_hash, options.step, e.peer));
  }
  round->send_peers_ = round->row_.out;
  post(round);
  return round;
}

void GossipEngine::check_scatter(const at::Tensor& x, const std::vector<at::Tensor>& scatter) const {
  if (scatter.empty()) return;
  int64_t total = 0;
  for (const auto& t : scatter) {
    SADDLE_CHECK_ARG(t.defined() && t.device().is_cpu() && t.scalar_type() == x.scalar_type(),
                     "scatter targets must be CPU tensors of the gossiped dtype");
    total += t.numel();
  }
  SADDLE_CHECK_ARG(total == x.numel(), "scatter targets hold ", total, " elements, the tensor has ", x.numel());
}

std::shared_ptr<Round> GossipEngine::exchange(const std::vector<std::pair<int, at::Tensor>>& sends,
                                              const std::vector<std::pair<int, at::Tensor>>& recvs) {
  auto round = std::make_shared<Round>();
  round->gossip_ = false;
  auto check = [&](int peer, const at::Tensor& t) {
    SADDLE_CHECK_ARG(peer >= 0 && peer < size_ && peer != rank_, "exchange peer ", peer,
                     " is not another rank of [0, ", size_, ")");
    SADDLE_CHECK_ARG(t.defined() && t.device().is_cpu() && t.is_contiguous(),
                     "exchange needs dense contiguous CPU tensors");
  };
  for (const auto& [peer, t] : recvs) {
    check(peer, t);
    round->recv_peers_.push_back(peer);
    round->received_.push_back(t);
  }
  open_round(*round);
  for (const auto& [peer, t] : sends) {
    check(peer, t);
    round->send_peers_.push_back(peer);
    round->exchange_sends_.push_back(t);  // kept alive until the round completes
  }
  post(round);
  return round;
}

void GossipEngine::drain_retired() {
  std::vector<std::shared_ptr<Round>> dead;
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    dead.swap(retired_);
  }
  // `dead` is destroyed here, on the caller's thread.
}

std::shared_ptr<topology::Topology> GossipEngine::open_round(Round& round) {
  drain_retired();
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_)
    throw std::runtime_error(
        "saddle_torch: the gossip engine was closed (saddle_torch.shutdown() or exit); call saddle_torch.init() "
        "again");
  if (!broken_.empty()) raise_broken();
  // Every rank opens its rounds in the same order, so the k-th round has the same tag everywhere.
  round.tag_ = static_cast<int>(kTagBase + next_tag_ % kTagSpan);
  ++next_tag_;
  return topology_;
}

void GossipEngine::post(const std::shared_ptr<Round>& round) {
  // Receives are posted before sends, and nobody waits before everything is posted: no deadlock.
  // A compressed round's sends are posted by the sender thread once its message is encoded; rounds
  // are encoded in start order, before the worker waits on any of their sends.
  const bool encode = round->gossip_ && round->compression_.codec != nullptr;
  int peer = -1;
  const char* what = "recv";
  try {
    for (size_t j = 0; j < round->recv_peers_.size(); ++j) {
      peer = round->recv_peers_[j];
      std::vector<at::Tensor> buf{round->received_[j]};
      round->recvs_.push_back(backend_->recv(buf, peer, round->tag_));
    }
    what = "send";
    if (!encode) {
      for (size_t j = 0; j < round->send_peers_.size(); ++j) {
        peer = round->send_peers_[j];
        std::vector<at::Tensor> buf{round->gossip_ ? round->sent_ : round->exchange_sends_[j]};
        round->sends_.push_back(backend_->send(buf, peer, round->tag_));
      }
      round->sends_posted_ = true;
    }
  } catch (const std::exception& e) {
    // Gloo refuses to post to a peer whose connection is closed (it died, or gave up on this rank
    // while it stalled). Receives already posted may still write into this round's buffers.
    std::ostringstream msg;
    msg << "rank " << rank_ << ": gossip " << what << " with neighbour " << peer << " could not be posted (step "
        << round->options_.step << "): the neighbour died, stalled or closed its connection. Transport said: "
        << e.what();
    const Failure failure{msg.str(), peer};
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_.empty()) broken_ = failure;
      graveyard_.push_back(round);
    }
    raise_failure(failure);
  }
  round->posted_ = Clock::now();
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    if (encode) send_queue_.push_back(round);
    queue_.push_back(round);
  }
  queue_cv_.notify_all();
}

void GossipEngine::sender_loop() {
  for (;;) {
    std::shared_ptr<Round> round;
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [this] { return stop_ || !send_queue_.empty(); });
      if (send_queue_.empty()) return;
      round = send_queue_.front();  // the worker's queue holds the round too: never the last reference
      send_queue_.pop_front();
    }
    encode_and_send(*round);
  }
}

void GossipEngine::encode_and_send(Round& round) {
  Failure error;
  try {
    const codec::Codec& codec = *round.compression_.codec;
    const codec::Parallel par = aten_parallel();
    const size_t n = static_cast<size_t>(round.source_.numel());
    codec.encode(round.source_.data_ptr<float>(), n, round.own_seed_, round.sent_.data_ptr<uint8_t>(),
                 static_cast<size_t>(round.sent_.numel()), par);
    codec.decode(round.sent_.data_ptr<uint8_t>(), static_cast<size_t>(round.sent_.numel()), n, round.own_seed_,
                 round.own_.data_ptr<float>(), par);
    for (size_t j = 0; j < round.send_peers_.size(); ++j) {
      std::vector<at::Tensor> buf{round.sent_};
      try {
        round.sends_.push_back(backend_->send(buf, round.send_peers_[j], round.tag_));
      } catch (const std::exception& e) {
        std::ostringstream msg;
        msg << "rank " << rank_ << ": gossip send with neighbour " << round.send_peers_[j]
            << " could not be posted (step " << round.options_.step
            << "): the neighbour died, stalled or closed its connection. Transport said: " << e.what();
        error = Failure{msg.str(), round.send_peers_[j]};
        break;
      }
    }
  } catch (const std::exception& e) {
    error = Failure{std::string("rank ") + std::to_string(rank_) + ": encoding the gossip message failed: " + e.what()};
  }
  {
    std::lock_guard<std::mutex> lock(round.mu_);
    round.sends_posted_ = true;
    if (!error.empty() && round.failure_.empty()) round.failure_ = error;
  }
  round.cv_.notify_all();
}

void GossipEngine::worker_loop() {
  // Mixing in place into tensors that may require grad (flat parameters, DDP's parameters): no graph.
  at::NoGradGuard no_grad;
  for (;;) {
    std::shared_ptr<Round> round;
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left to wait for
      round = std::move(queue_.front());
      queue_.pop_front();
      waiting_ = round;
    }
    wait_round(*round);
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      waiting_.reset();
    }
    if (round->completion_) {
      // Nobody will call finish(): mix here, release the buffers, complete the caller's future.
      Failure error;
      {
        std::lock_guard<std::mutex> lock(round->mu_);
        error = round->failure_;
        round->waited_ = round->finished_ = true;
      }
      if (error.empty()) {
        try {
          mix(*round);
          account(*round);
        } catch (const std::exception& e) {
          error = Failure{std::string("rank ") + std::to_string(rank_) + ": " + e.what()};
        }
      }
      if (!error.empty()) {
        fail(round, error);
      } else {
        release_round(*round);
      }
      round->completion_->round_done(error);
    }
    // Never drop a round here: if the caller already let go of it, this would be the last reference,
    // and destroying a round releases tensors whose Python objects need the GIL. While the
    // interpreter finalizes, a thread that asks for the GIL is terminated by pthread_exit, which
    // unwinds through a noexcept destructor: std::terminate ("terminate called without an active
    // exception", observed after destroy_process_group). Callers free retired rounds (open_round).
    std::lock_guard<std::mutex> lock(queue_mu_);
    retired_.push_back(std::move(round));
  }
}

void GossipEngine::fail(const std::shared_ptr<Round>& round, const Failure& failure) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_.empty()) broken_ = failure;
  graveyard_.push_back(round);
}

void GossipEngine::wait_round(Round& round) {
  const auto deadline = round.posted_ + options_.timeout;
  Failure error;
  auto budget = [&] {
    const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    // kNoTimeout is 0 ms in c10d: never pass it by accident.
    return std::max(remaining, std::chrono::milliseconds(1));
  };
  auto wait_one = [&](c10d::Work& work, const char* what, int peer) {
    try {
      if (aborted_) work.abort();  // an abort() that came before this work was waited for
      if (work.wait(budget()) || !aborted_) return true;
      // Gloo returns false from an aborted wait: the round did not complete.
      if (error.empty()) {
        std::lock_guard<std::mutex> lock(mu_);
        // Aborted (a membership change): the neighbour is not to blame, unless an earlier failure was.
        error = Failure{"rank " + std::to_string(rank_) + ": gossip " + what + " with neighbour " +
                            std::to_string(peer) + " (step " + std::to_string(round.options_.step) + ") " +
                            broken_.what,
                        broken_.aborted ? -1 : broken_.peer, broken_.aborted};
      }
      return false;
    } catch (const std::exception& e) {
      if (!error.empty()) return false;
      std::ostringstream msg;
      msg << "rank " << rank_ << ": gossip " << what << " with neighbour " << peer << " failed (step "
          << round.options_.step << ", timeout " << options_.timeout.count() / 1000.0
          << " s): the neighbour died, stalled or closed its connection. Transport said: " << e.what();
      error = Failure{msg.str(), peer};
      return false;
    }
  };
  const bool accumulate_here = round.gossip_ && round.acc_.defined();
  for (size_t j = 0; j < round.recvs_.size(); ++j) {
    // Each neighbour's message is folded in as soon as it is here, while later ones are in flight.
    if (wait_one(*round.recvs_[j], "recv", round.recv_peers_[j]) && error.empty() && accumulate_here) {
      try {
        accumulate(round, j);
      } catch (const codec::CorruptMessage& e) {
        error = Failure{"rank " + std::to_string(rank_) + ": corrupted gossip message from neighbour " +
                            std::to_string(round.recv_peers_[j]) + ": " + e.what(),
                        round.recv_peers_[j], false, true};
      }
    }
  }
  {
    // Compressed rounds: the sender thread posts the sends once the message is encoded.
    std::unique_lock<std::mutex> lock(round.mu_);
    round.cv_.wait(lock, [&] { return round.sends_posted_; });
    if (error.empty() && !round.failure_.empty()) error = round.failure_;
  }
  for (size_t j = 0; j < round.sends_.size(); ++j) wait_one(*round.sends_[j], "send", round.send_peers_[j]);
  if (error.empty() && round.gossip_ && round.compression_.codec) {
    // The own term: + w_ii C_i (CHOCO's s), or − Σ_j w_ij C_i (naive).
    double total = 0.0;
    for (const auto& e : round.row_.in) total += e.weight;
    const double w = round.compression_.error_feedback ? round.row_.self_weight : -total;
    float* acc = round.acc_.data_ptr<float>();
    const float* own = round.own_.data_ptr<float>();
    at::parallel_for(0, round.acc_.numel(), 1 << 16, [&](int64_t b, int64_t e) {
      mixing::accumulate<float>(acc, own, w, static_cast<size_t>(b), static_cast<size_t>(e));
    });
  }
  const double transfer = seconds_since(round.posted_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.transfer_seconds += transfer;
  }
  {
    std::lock_guard<std::mutex> lock(round.mu_);
    round.failure_ = std::move(error);
    round.done_ = true;
  }
  round.cv_.notify_all();
}

void GossipEngine::wait(const std::shared_ptr<Round>& round) {
  SADDLE_CHECK_ARG(round != nullptr, "wait() needs the handle that start() returned");
  SADDLE_CHECK_ARG(!round->completion_, "this round is finished by the engine (its future completes it)");
  const auto t0 = Clock::now();
  {
    std::unique_lock<std::mutex> lock(round->mu_);
    SADDLE_CHECK_ARG(!round->finished_, "this gossip round was already finished");
    if (round->waited_) return;
    round->cv_.wait(lock, [&] { return round->done_; });
    round->waited_ = true;
  }
  const double blocked = seconds_since(t0);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.wait_seconds += blocked;
  }
  if (!round->failure_.empty()) {
    fail(round, round->failure_);
    {
      std::lock_guard<std::mutex> round_lock(round->mu_);
      round->finished_ = true;
    }
    raise_failure(round->failure_);
  }
}

std::vector<at::Tensor> GossipEngine::received(const std::shared_ptr<Round>& round) {
  wait(round);
  SADDLE_CHECK_ARG(round->gossip_, "received() is for gossip rounds; an exchange fills your buffers");
  SADDLE_CHECK_ARG(!round->compression_.codec, "a compressed round receives codec messages, not tensors");
  SADDLE_CHECK_ARG(round->options_.keep_received,
                   "received() needs a round started with keep_received=True (otherwise the messages are "
                   "folded into one accumulator as they arrive)");
  return round->received_;
}

void GossipEngine::finish(const std::shared_ptr<Round>& round) {
  wait(round);
  {
    std::lock_guard<std::mutex> lock(round->mu_);
    round->finished_ = true;
  }
  if (round->gossip_) mix(*round);
  account(*round);
  release_round(*round);
}

at::Tensor GossipEngine::acquire(const at::Tensor& like) {
  return acquire(like.numel(), like.scalar_type()).view(like.sizes());
}

at::Tensor GossipEngine::acquire(int64_t numel, at::ScalarType dtype) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pool_.begin(); it != pool_.end(); ++it) {
      if (it->numel() == numel && it->scalar_type() == dtype) {
        at::Tensor t = std::move(*it);
        pool_.erase(it);
        return t.view({numel});
      }
    }
  }
  return at::empty({numel}, dtype);
}

void GossipEngine::release(std::vector<at::Tensor>& buffers) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& b : buffers)
    if (pool_.size() < kMaxPooledBuffers) pool_.push_back(std::move(b));
  buffers.clear();
}

EngineStats GossipEngine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void GossipEngine::reset_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_ = EngineStats{};
}

}  // namespace saddle::torch_ext
