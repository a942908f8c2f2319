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

template <typename T>
void mix_typed(at::Tensor& x, const at::Tensor* snapshot,
               const std::vector<at::Tensor>& received, const mixing::Coefficients& k) {
  T* xp = x.data_ptr<T>();
  const T* sp = snapshot ? snapshot->data_ptr<T>() : nullptr;
  std::vector<const T*> ys;
  ys.reserve(received.size());
  for (const auto& r : received) ys.push_back(r.data_ptr<T>());
  at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    mixing::mix<T>(xp, sp, ys.data(), k, static_cast<size_t>(begin), static_cast<size_t>(end));
  });
}

// Reduced-precision dtypes: the same arithmetic with ATen ops.
void mix_aten(at::Tensor& x, const at::Tensor* snapshot, const std::vector<at::Tensor>& received,
              const mixing::Coefficients& k) {
  if (snapshot != nullptr && k.c != 0.0) {
    x.add_(*snapshot, k.c);
  } else if (k.a != 1.0) {
    x.mul_(k.a);
  }
  for (size_t j = 0; j < received.size(); ++j) x.add_(received[j], k.b[j]);
}

}  // namespace

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
}

GossipEngine::~GossipEngine() { close(); }

void GossipEngine::close() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stop_ = true;
  }
  queue_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  drain_retired();
  c10::intrusive_ptr<c10d::Backend> backend;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    if (!broken_reason_.empty()) {
      // A failed Gloo transport may still write into these buffers: never free them.
      new std::vector<std::shared_ptr<Round>>(std::move(graveyard_));
    }
    backend = std::move(backend_);
  }
  backend.reset();  // outside the lock: may destroy the process group and join its threads
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
  throw PeerError("saddle_torch: the gossip engine of rank " + std::to_string(rank_) +
                  " failed earlier and the process group is unusable: " + broken_reason_);
}

std::shared_ptr<Round> GossipEngine::start(const at::Tensor& x, const RoundOptions& options) {
  SADDLE_CHECK_ARG(x.defined(), "gossip needs a tensor, got an undefined one");
  SADDLE_CHECK_ARG(x.device().is_cpu(), "the gossip engine works on CPU tensors, got ", x.device());
  SADDLE_CHECK_ARG(x.layout() == at::kStrided && x.is_contiguous(),
                   "the gossip engine needs a dense contiguous tensor");
  SADDLE_CHECK_ARG(at::isFloatingType(x.scalar_type()),
                   "gossip averages floating-point tensors, got ", x.scalar_type());
  SADDLE_CHECK_ARG(options.step >= 0, "step must be non-negative, got ", options.step);

  auto round = std::make_shared<Round>();
  const std::shared_ptr<topology::Topology> topo = open_round(*round);
  round->x_ = x;
  round->options_ = options;
  round->row_ = topo->row(rank_, options.step);
  round->sent_ = options.snapshot ? acquire(x).copy_(x) : x;
  for (const auto& e : round->row_.in) {
    round->received_.push_back(acquire(x));
    round->recv_peers_.push_back(e.peer);
  }
  round->send_peers_ = round->row_.out;
  post(round);
  return round;
}

std::shared_ptr<Round> GossipEngine::start_compressed(const at::Tensor& x, const at::Tensor& x_hat,
                                                      const at::Tensor& s, const RoundOptions& options,
                                                      const CompressionOptions& compression) {
  SADDLE_CHECK_ARG(compression.codec != nullptr, "compressed gossip needs a codec");
  for (const at::Tensor* t : {&x, &x_hat, &s})
    SADDLE_CHECK_ARG(t->defined() && t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                         t->numel() == x.numel(),
                     "compressed gossip needs contiguous float32 CPU tensors x, x_hat, s of one size");
  auto round = std::make_shared<Round>();
  const std::shared_ptr<topology::Topology> topo = open_round(*round);
  SADDLE_CHECK_ARG(topo->period() == 1, "compressed gossip (CHOCO) needs a static topology; '", topo->name(),
                   "' changes every step");
  round->x_ = x;
  round->options_ = options;
  round->row_ = topo->row(rank_, options.step);
  round->compression_ = compression;
  round->x_hat_ = x_hat;
  round->s_ = s;
  const codec::Codec& codec = *compression.codec;
  round->own_seed_ = message_seed(compression.name_hash, options.step, rank_);
  // The message: C(x − x̂) with error feedback, C(x) without.
  at::Tensor source = x;
  if (compression.error_feedback) {
    source = acquire(x);
    at::sub_out(source, x, x_hat);
  }
  const int64_t bytes = static_cast<int64_t>(codec.encoded_bytes(static_cast<size_t>(x.numel())));
  round->sent_ = acquire(bytes, at::kByte);
  codec.encode(source.data_ptr<float>(), static_cast<size_t>(x.numel()), round->own_seed_,
               round->sent_.data_ptr<uint8_t>(), static_cast<size_t>(bytes), aten_parallel());
  if (compression.error_feedback) {
    std::vector<at::Tensor> scratch{source};
    release(scratch);
  }
  for (const auto& e : round->row_.in) {
    round->received_.push_back(acquire(bytes, at::kByte));
    round->recv_peers_.push_back(e.peer);
    round->recv_seeds_.push_back(message_seed(compression.name_hash, options.step, e.peer));
  }
  round->send_peers_ = round->row_.out;
  post(round);
  return round;
}

void GossipEngine::finish_compressed(Round& round) {
  const codec::Codec& codec = *round.compression_.codec;
  const codec::Parallel par = aten_parallel();
  const size_t n = static_cast<size_t>(round.x_.numel());
  // Validate every message before anything is written: a bad one leaves x, x̂ and s untouched.
  for (size_t j = 0; j < round.received_.size(); ++j) {
    try {
      codec.validate(round.received_[j].data_ptr<uint8_t>(), static_cast<size_t>(round.received_[j].numel()), n,
                     round.recv_seeds_[j], par);
    } catch (const codec::CorruptMessage& e) {
      std::lock_guard<std::mutex> lock(mu_);
      const std::string what = "rank " + std::to_string(rank_) + ": corrupted gossip message from neighbour " +
                               std::to_string(round.recv_peers_[j]) + ": " + e.what();
      if (broken_reason_.empty()) broken_reason_ = what;
      throw codec::CorruptMessage(what);
    }
  }
  const double gamma = round.options_.gamma;
  auto add = [&](const at::Tensor& msg, uint64_t seed, double alpha, at::Tensor& acc) {
    codec.decode_add(msg.data_ptr<uint8_t>(), static_cast<size_t>(msg.numel()), n, seed, static_cast<float>(alpha),
                     acc.data_ptr<float>(), par);
  };
  if (round.compression_.error_feedback) {
    add(round.sent_, round.own_seed_, 1.0, round.x_hat_);
    add(round.sent_, round.own_seed_, round.row_.self_weight, round.s_);
    for (size_t j = 0; j < round.received_.size(); ++j)
      add(round.received_[j], round.recv_seeds_[j], round.row_.in[j].weight, round.s_);
    float* xp = round.x_.data_ptr<float>();
    const float* sp = round.s_.data_ptr<float>();
    const float* hp = round.x_hat_.data_ptr<float>();
    at::parallel_for(0, round.x_.numel(), 1 << 16, [&](int64_t b, int64_t e) {
      mixing::choco_step<float>(xp, sp, hp, gamma, static_cast<size_t>(b), static_cast<size_t>(e));
    });
  } else {
    double total = 0.0;
    for (const auto& e : round.row_.in) total += e.weight;
    add(round.sent_, round.own_seed_, -gamma * total, round.x_);
    for (size_t j = 0; j < round.received_.size(); ++j)
      add(round.received_[j], round.recv_seeds_[j], gamma * round.row_.in[j].weight, round.x_);
  }
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
  if (!broken_reason_.empty()) raise_broken();
  // Every rank opens its rounds in the same order, so the k-th round has the same tag everywhere.
  round.tag_ = static_cast<int>(kTagBase + next_tag_ % kTagSpan);
  ++next_tag_;
  return topology_;
}

void GossipEngine::post(const std::shared_ptr<Round>& round) {
  // Receives are posted before sends, and nobody waits before everything is posted: no deadlock.
  int peer = -1;
  const char* what = "recv";
  try {
    for (size_t j = 0; j < round->recv_peers_.size(); ++j) {
      peer = round->recv_peers_[j];
      std::vector<at::Tensor> buf{round->received_[j]};
      round->recvs_.push_back(backend_->recv(buf, peer, round->tag_));
    }
    what = "send";
    for (size_t j = 0; j < round->send_peers_.size(); ++j) {
      peer = round->send_peers_[j];
      std::vector<at::Tensor> buf{round->gossip_ ? round->sent_ : round->exchange_sends_[j]};
      round->sends_.push_back(backend_->send(buf, peer, round->tag_));
    }
  } catch (const std::exception& e) {
    // Gloo refuses to post to a peer whose connection is closed (it died, or gave up on this rank
    // while it stalled). Receives already posted may still write into this round's buffers.
    std::ostringstream msg;
    msg << "rank " << rank_ << ": gossip " << what << " with neighbour " << peer << " could not be posted (step "
        << round->options_.step << "): the neighbour died, stalled or closed its connection. Transport said: "
        << e.what();
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_reason_.empty()) broken_reason_ = msg.str();
    graveyard_.push_back(round);
    throw PeerError("saddle_torch: " + msg.str());
  }
  round->posted_ = Clock::now();
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    queue_.push_back(round);
  }
  queue_cv_.notify_one();
}

void GossipEngine::worker_loop() {
  for (;;) {
    std::shared_ptr<Round> round;
    {
      std::unique_lock<std::mutex> lock(queue_mu_);
      queue_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and nothing left to wait for
      round = std::move(queue_.front());
      queue_.pop_front();
    }
    wait_round(*round);
    // Never drop a round here: if the caller already let go of it, this would be the last reference,
    // and destroying a round releases tensors whose Python objects need the GIL. While the
    // interpreter finalizes, a thread that asks for the GIL is terminated by pthread_exit, which
    // unwinds through a noexcept destructor: std::terminate ("terminate called without an active
    // exception", observed after destroy_process_group). Callers free retired rounds (open_round).
    std::lock_guard<std::mutex> lock(queue_mu_);
    retired_.push_back(std::move(round));
  }
}

void GossipEngine::wait_round(Round& round) {
  const auto deadline = round.posted_ + options_.timeout;
  std::string error;
  auto wait_one = [&](c10d::Work& work, const char* what, int peer) {
    const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    // kNoTimeout is 0 ms in c10d: never pass it by accident.
    const auto budget = std::max(remaining, std::chrono::milliseconds(1));
    try {
      work.wait(budget);
    } catch (const std::exception& e) {
      if (!error.empty()) return;
      std::ostringstream msg;
      msg << "rank " << rank_ << ": gossip " << what << " with neighbour " << peer << " failed (step "
          << round.options_.step << ", timeout " << options_.timeout.count() / 1000.0
          << " s): the neighbour died, stalled or closed its connection. Transport said: " << e.what();
      error = msg.str();
    }
  };
  for (size_t j = 0; j < round.recvs_.size(); ++j) wait_one(*round.recvs_[j], "recv", round.recv_peers_[j]);
  for (size_t j = 0; j < round.sends_.size(); ++j) wait_one(*round.sends_[j], "send", round.send_peers_[j]);
  const double transfer = seconds_since(round.posted_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.transfer_seconds += transfer;
  }
  {
    std::lock_guard<std::mutex> lock(round.mu_);
    round.error_ = std::move(error);
    round.done_ = true;
  }
  round.cv_.notify_all();
}

void GossipEngine::wait(const std::shared_ptr<Round>& round) {
  SADDLE_CHECK_ARG(round != nullptr, "wait() needs the handle that start() returned");
  const auto t0 = Clock::now();
  {
    std::unique_lock<std::mutex> lock(round->mu_);
    SADDLE_CHECK_ARG(!round->finished_, "this gossip round was already finished");
    if (round->waited_) return;
    round->cv_.wait(lock, [&] { return round->done_; });
    round->waited_ = true;
  }
  const double blocked = seconds_since(t0);
  std::lock_guard<std::mutex> lock(mu_);
  stats_.wait_seconds += blocked;
  if (!round->error_.empty()) {
    if (broken_reason_.empty()) broken_reason_ = round->error_;
    graveyard_.push_back(round);
    {
      std::lock_guard<std::mutex> round_lock(round->mu_);
      round->finished_ = true;
    }
    throw PeerError("saddle_torch: " + round->error_);
  }
}

std::vector<at::Tensor> GossipEngine::received(const std::shared_ptr<Round>& round) {
  wait(round);
  SADDLE_CHECK_ARG(round->gossip_, "received() is for gossip rounds; an exchange fills your buffers");
  SADDLE_CHECK_ARG(!round->compression_.codec, "a compressed round receives codec messages, not tensors");
  return round->received_;
}

void GossipEngine::finish(const std::shared_ptr<Round>& round) {
  wait(round);
  {
    std::lock_guard<std::mutex> lock(round->mu_);
    round->finished_ = true;
  }
  if (!round->gossip_) {
    const auto count = [](const std::vector<at::Tensor>& ts) {
      int64_t n = 0;
      for (const auto& t : ts) n += static_cast<int64_t>(t.nbytes());
      return n;
    };
    std::lock_guard<std::mutex> lock(mu_);
    stats_.bytes_sent += count(round->exchange_sends_);
    stats_.bytes_received += count(round->received_);
    round->exchange_sends_.clear();
    round->received_.clear();
    return;
  }
  if (round->compression_.codec) {
    finish_compressed(*round);
    const int64_t msg_bytes = round->sent_.numel();
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.bytes_sent += msg_bytes * static_cast<int64_t>(round->row_.out.size());
      for (const auto& r : round->received_) stats_.bytes_received += r.numel();
      stats_.rounds += 1;
    }
    round->received_.push_back(round->sent_);
    release(round->received_);
    round->sent_ = at::Tensor();
    round->x_ = round->x_hat_ = round->s_ = at::Tensor();
    return;
  }
  SADDLE_CHECK_ARG(round->x_.sizes() == round->sent_.sizes(),
                   "the tensor was resized between start() and finish()");
  const mixing::Coefficients k =
      mixing::gossip_coefficients(round->row_, round->options_.gamma, round->options_.snapshot);
  const at::Tensor* snapshot = round->options_.snapshot ? &round->sent_ : nullptr;
  switch (round->x_.scalar_type()) {
    case at::kFloat:
      mix_typed<float>(round->x_, snapshot, round->received_, k);
      break;
    case at::kDouble:
      mix_typed<double>(round->x_, snapshot, round->received_, k);
      break;
    default:
      mix_aten(round->x_, snapshot, round->received_, k);
  }
  const int64_t nbytes = static_cast<int64_t>(round->x_.nbytes());
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.bytes_sent += nbytes * static_cast<int64_t>(round->row_.out.size());
    stats_.bytes_received += nbytes * static_cast<int64_t>(round->row_.in.size());
    stats_.rounds += 1;
  }
  if (round->options_.snapshot) round->received_.push_back(round->sent_);
  release(round->received_);
  round->sent_ = at::Tensor();
  round->x_ = at::Tensor();
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
