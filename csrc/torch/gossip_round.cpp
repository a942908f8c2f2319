// The arithmetic of one gossip round: the worker folds each message into an accumulator as it
// arrives, and the round ends with one pass over x (GossipEngine::mix).
#include <ATen/Parallel.h>

#include "core/check.h"
#include "core/mixing.h"
#include "torch/gossip_engine.h"

namespace saddle::torch_ext {
namespace {

constexpr int64_t kGrain = 1 << 16;

double in_weight(const topology::Row& row) {
  double total = 0.0;
  for (const auto& e : row.in) total += e.weight;
  return total;
}

template <typename T>
void accumulate_typed(at::Tensor& acc, const at::Tensor& y, double w, const at::Tensor* snapshot, double c,
                      bool first) {
  T* ap = acc.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const T* sp = snapshot != nullptr ? snapshot->data_ptr<T>() : nullptr;
  at::parallel_for(0, acc.numel(), kGrain, [&](int64_t b, int64_t e) {
    if (first) {
      mixing::accumulate_first<T>(ap, yp, w, sp, c, static_cast<size_t>(b), static_cast<size_t>(e));
    } else {
      mixing::accumulate<T>(ap, yp, w, static_cast<size_t>(b), static_cast<size_t>(e));
    }
  });
}

template <typename T>
void apply_typed(at::Tensor& x, const at::Tensor& acc, double a, double g) {
  T* xp = x.data_ptr<T>();
  const T* ap = acc.defined() ? acc.data_ptr<T>() : nullptr;
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
    mixing::apply<T>(xp, ap, a, g, static_cast<size_t>(b), static_cast<size_t>(e));
  });
}

// The pre-accumulation form, for rounds whose caller reads the neighbours' tensors (keep_received).
template <typename T>
void mix_received(at::Tensor& x, const at::Tensor* snapshot, const std::vector<at::Tensor>& received,
                  const mixing::Coefficients& k) {
  T* xp = x.data_ptr<T>();
  const T* sp = snapshot ? snapshot->data_ptr<T>() : nullptr;
  std::vector<const T*> ys;
  ys.reserve(received.size());
  for (const auto& r : received) ys.push_back(r.data_ptr<T>());
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    mixing::mix<T>(xp, sp, ys.data(), k, static_cast<size_t>(begin), static_cast<size_t>(end));
  });
}

}  // namespace

void GossipEngine::accumulate(Round& round, size_t j) {
  const double w = round.row_.in[j].weight;
  const at::Tensor& msg = round.received_[j];
  if (round.compression_.codec) {
    // decode_add validates the whole message before it writes: a corrupted one adds nothing.
    const size_t n = static_cast<size_t>(round.acc_.numel());
    round.compression_.codec->decode_add(msg.data_ptr<uint8_t>(), static_cast<size_t>(msg.numel()), n,
                                         round.recv_seeds_[j], static_cast<float>(w), round.acc_.data_ptr<float>(),
                                         aten_parallel());
  } else {
    // acc = Σ_j w_ij x_j, minus (Σ_j w_ij)·snapshot for a snapshot round (folded into the first term).
    const bool first = j == 0;
    const at::Tensor* snapshot = round.options_.snapshot ? &round.sent_ : nullptr;
    const double c = -in_weight(round.row_);
    switch (round.acc_.scalar_type()) {
      case at::kFloat:
        accumulate_typed<float>(round.acc_, msg, w, snapshot, c, first);
        break;
      case at::kDouble:
        accumulate_typed<double>(round.acc_, msg, w, snapshot, c, first);
        break;
      default:  // reduced precision: the same arithmetic with ATen ops
        if (first) {
          at::mul_out(round.acc_, msg, w);
          if (snapshot != nullptr) round.acc_.add_(*snapshot, c);
        } else {
          round.acc_.add_(msg, w);
        }
    }
  }
  // The receive buffer is free now; return it to the pool at once.
  std::vector<at::Tensor> used{round.received_[j]};
  round.received_[j] = at::Tensor();
  release(used);
}

void GossipEngine::mix(Round& round) {
  const double gamma = round.options_.gamma;
  at::Tensor& x = round.x_;
  SADDLE_CHECK_ARG(x.numel() == (round.compression_.codec ? round.own_.numel() : round.sent_.numel()),
                   "the tensor was resized between start() and finish()");
  if (round.compression_.codec) {
    float* xp = x.data_ptr<float>();
    const float* acc = round.acc_.data_ptr<float>();
    if (round.compression_.error_feedback) {
      float* sp = round.s_.data_ptr<float>();
      float* hp = round.x_hat_.data_ptr<float>();
      const float* own = round.own_.data_ptr<float>();
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
        mixing::choco_finish<float>(xp, sp, hp, own, acc, gamma, static_cast<size_t>(b), static_cast<size_t>(e));
      });
    } else {
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
        mixing::apply<float>(xp, acc, 1.0, gamma, static_cast<size_t>(b), static_cast<size_t>(e));
      });
    }
  } else if (round.options_.keep_received) {
    const mixing::Coefficients k = mixing::gossip_coefficients(round.row_, gamma, round.options_.snapshot);
    const at::Tensor* snapshot = round.options_.snapshot ? &round.sent_ : nullptr;
    switch (x.scalar_type()) {
      case at::kFloat:
        mix_received<float>(x, snapshot, round.received_, k);
        break;
      case at::kDouble:
        mix_received<double>(x, snapshot, round.received_, k);
        break;
      default:
        if (snapshot != nullptr && k.c != 0.0) {
          x.add_(*snapshot, k.c);
        } else if (k.a != 1.0) {
          x.mul_(k.a);
        }
        for (size_t j = 0; j < round.received_.size(); ++j) x.add_(round.received_[j], k.b[j]);
    }
  } else {
    // x ← a·x + γ·acc: a = 1 when the snapshot term is in acc, 1 − γ Σ_j w_ij otherwise.
    const double a = round.options_.snapshot ? 1.0 : 1.0 - gamma * in_weight(round.row_);
    switch (x.scalar_type()) {
      case at::kFloat:
        apply_typed<float>(x, round.acc_, a, gamma);
        break;
      case at::kDouble:
        apply_typed<double>(x, round.acc_, a, gamma);
        break;
      default:
        if (a != 1.0) x.mul_(a);
        if (round.acc_.defined()) x.add_(round.acc_, gamma);
    }
  }
  int64_t offset = 0;
  for (auto& target : round.scatter_) {
    target.copy_(x.narrow(0, offset, target.numel()).view(target.sizes()));
    offset += target.numel();
  }
}

void GossipEngine::account(const Round& round) {
  int64_t sent = 0, received = 0;
  if (!round.gossip_) {
    for (const auto& t : round.exchange_sends_) sent += static_cast<int64_t>(t.nbytes());
    for (const auto& t : round.received_) received += static_cast<int64_t>(t.nbytes());
  } else {
    const int64_t msg = static_cast<int64_t>(round.sent_.nbytes());
    sent = msg * static_cast<int64_t>(round.row_.out.size());
    received = msg * static_cast<int64_t>(round.row_.in.size());
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.bytes_sent += sent;
  stats_.bytes_received += received;
  if (round.gossip_) stats_.rounds += 1;
}

void GossipEngine::release_round(Round& round) {
  if (!round.gossip_) {  // caller-owned buffers
    round.exchange_sends_.clear();
    round.received_.clear();
    return;
  }
  std::vector<at::Tensor> pooled;
  // Buffers handed to Python by received() may own a Python object: they are not pooled, because a
  // pooled buffer may later be dropped on the worker, which must never need the GIL.
  if (!round.options_.keep_received)
    for (auto& r : round.received_)
      if (r.defined()) pooled.push_back(std::move(r));
  round.received_.clear();
  const bool own_sent = round.compression_.codec || round.options_.snapshot;  // else sent_ is x itself
  for (at::Tensor* t : {&round.acc_, &round.own_, &round.source_})
    if (t->defined()) pooled.push_back(std::move(*t));
  if (own_sent && round.sent_.defined()) pooled.push_back(std::move(round.sent_));
  release(pooled);
  round.sent_ = at::Tensor();
  round.acc_ = round.own_ = round.source_ = at::Tensor();
  // x, x̂, s and the scatter targets may be Python-owned: they stay with the round until the caller's
  // thread frees it (drain_retired), never on the worker.
  if (!round.completion_) {
    round.x_ = round.x_hat_ = round.s_ = at::Tensor();
    round.scatter_.clear();
  }
}

}  // namespace saddle::torch_ext
