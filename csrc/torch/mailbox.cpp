#include "torch/mailbox.h"

#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"

namespace saddle::torch_ext {
namespace {

// Below the gossip engine's tags (0x20000000 and up), above the elastic state transfer's.
constexpr int64_t kTagBase = 0x10000000;
constexpr int64_t kTagSpan = 0x0F000000;

}  // namespace

Mailbox::Mailbox(c10::intrusive_ptr<c10d::Backend> backend, std::chrono::milliseconds timeout)
    : backend_(std::move(backend)), timeout_(timeout) {
  SADDLE_CHECK_ARG(backend_, "Mailbox needs a process-group backend, got None");
  SADDLE_CHECK_ARG(timeout_.count() > 0, "timeout must be positive");
}

Mailbox::~Mailbox() { close(); }

int Mailbox::tag(int64_t seq) const { return static_cast<int>(kTagBase + seq % kTagSpan); }

Mailbox::Slot& Mailbox::slot(int peer, bool send) {
  SADDLE_CHECK_ARG(peer >= 0 && peer < backend_->getSize() && peer != backend_->getRank(), "peer ", peer,
                   " is not another rank of [0, ", backend_->getSize(), ")");
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) throw std::runtime_error("saddle_torch: the mailbox was closed");
  auto& s = slots_[{peer, send}];
  if (!s) {
    s = std::make_unique<Slot>();
    s->waiter = std::thread([this, p = s.get(), peer, send] { run(p, peer, send); });
  }
  return *s;
}

void Mailbox::post(int peer, bool send, const at::Tensor& t) {
  SADDLE_CHECK_ARG(t.defined() && t.device().is_cpu() && t.is_contiguous(),
                   "the mailbox carries contiguous CPU tensors");
  Slot& s = slot(peer, send);
  std::lock_guard<std::mutex> lock(s.mu);
  SADDLE_CHECK_ARG(!s.pending, send ? "a message to " : "a message from ", peer,
                   " is still in flight: wait for it before posting the next");
  if (!s.failure.empty()) raise_failure(s.failure);
  std::vector<at::Tensor> buf{t};
  const int message_tag = tag(s.seq);
  try {
    s.work = send ? backend_->send(buf, peer, message_tag) : backend_->recv(buf, peer, message_tag);
  } catch (const std::exception& e) {
    std::ostringstream msg;
    msg << "rank " << backend_->getRank() << ": push-sum " << (send ? "send to" : "receive from") << " neighbour "
        << peer << " could not be posted: the neighbour died, stalled or closed its connection. Transport said: "
        << e.what();
    s.failure = Failure{msg.str(), peer};
    raise_failure(s.failure);
  }
  s.tensor = t;
  s.pending = true;
  ++s.seq;
  s.cv.notify_all();
}

void Mailbox::run(Slot* s, int peer, bool send) {
  for (;;) {
    c10::intrusive_ptr<c10d::Work> work;
    {
      std::unique_lock<std::mutex> lock(s->mu);
      s->cv.wait(lock, [&] { return s->stop || (s->pending && s->work); });
      if (s->stop) return;
      work = s->work;
    }
    Failure failure;
    try {
      if (!work->wait(timeout_)) failure = Failure{"push-sum message aborted", -1, true};
    } catch (const std::exception& e) {
      std::ostringstream msg;
      msg << "rank " << backend_->getRank() << ": push-sum " << (send ? "send to" : "receive from")
          << " neighbour " << peer << " failed (timeout " << timeout_.count() / 1000.0
          << " s): the neighbour died, stalled or closed its connection. Transport said: " << e.what();
      failure = Failure{msg.str(), peer};
    }
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (failure.empty()) {
        (send ? bytes_sent_ : bytes_received_) += static_cast<int64_t>(s->tensor.nbytes());
      } else if (s->failure.empty()) {
        s->failure = failure;
      }
      s->work.reset();
      if (send) s->tensor = at::Tensor();  // sent: the caller may reuse its buffer
      s->pending = false;
    }
    s->cv.notify_all();
    if (!failure.empty()) return;  // the slot is unusable; sent()/received()/wait_received() raise it
  }
}

bool Mailbox::idle(int peer, bool send) {
  Slot& s = slot(peer, send);
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.failure.empty()) raise_failure(s.failure);
  return !s.pending;
}

void Mailbox::wait_idle(int peer, bool send) {
  Slot& s = slot(peer, send);
  std::unique_lock<std::mutex> lock(s.mu);
  s.cv.wait(lock, [&] { return !s.pending || s.stop; });
  if (!s.failure.empty()) raise_failure(s.failure);
}

void Mailbox::send(int peer, const at::Tensor& t) { post(peer, true, t); }
void Mailbox::recv(int peer, const at::Tensor& t) { post(peer, false, t); }
bool Mailbox::sent(int peer) { return idle(peer, true); }
bool Mailbox::received(int peer) { return idle(peer, false); }
void Mailbox::wait_received(int peer) { wait_idle(peer, false); }

void Mailbox::close() {
  std::map<std::pair<int, bool>, std::unique_ptr<Slot>> slots;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    slots.swap(slots_);
  }
  for (auto& [key, s] : slots) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->stop = true;
    if (s->pending && s->work) s->work->abort();  // the waiter's wait() returns at once
    s->cv.notify_all();
  }
  for (auto& [key, s] : slots)
    if (s->waiter.joinable()) s->waiter.join();
  // A message aborted in flight may still be touched by the transport: its buffer is kept.
  for (auto& [key, s] : slots)
    if (s->pending) new at::Tensor(std::move(s->tensor));
}

}  // namespace saddle::torch_ext
