#include "torch/saddle_backend.h"

#include <ATen/core/ivalue.h>

#include "core/check.h"

namespace saddle::torch_ext {

SaddleBackend::SaddleBackend(c10::intrusive_ptr<c10d::Backend> inner, std::shared_ptr<topology::Topology> topology,
                             EngineOptions engine_options, SaddleBackendOptions options)
    : c10d::Backend(inner->getRank(), inner->getSize()),
      inner_(std::move(inner)),
      engine_(std::make_shared<GossipEngine>(inner_, std::move(topology), engine_options)),
      options_(std::move(options)) {}

bool SaddleBackend::gossips(const std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& opts) const {
  const auto op = opts.reduceOp.op_;
  if (op != c10d::ReduceOp::AVG && !(op == c10d::ReduceOp::SUM && options_.gossip_sum)) return false;
  for (const auto& t : tensors)
    if (!t.is_floating_point() || !t.device().is_cpu() || !t.is_contiguous()) return false;
  if (options_.codec) {
    for (const auto& t : tensors)
      SADDLE_CHECK_ARG(t.scalar_type() == at::kFloat, "the saddle backend compresses float32 tensors only, got ",
                       t.scalar_type());
  }
  return !tensors.empty();
}

c10::intrusive_ptr<c10d::Work> SaddleBackend::allreduce(std::vector<at::Tensor>& tensors,
                                                        const c10d::AllreduceOptions& opts) {
  if (!gossips(tensors, opts)) {
    SADDLE_CHECK_ARG(opts.reduceOp.op_ != c10d::ReduceOp::AVG,
                     "the saddle backend gossips ReduceOp.AVG on contiguous floating-point CPU tensors only");
    return inner_->allreduce(tensors, opts);
  }
  std::vector<std::shared_ptr<Round>> rounds;
  for (auto& t : tensors) {
    const RoundOptions round_options{step_, options_.gamma, false};
    if (!options_.codec) {
      rounds.push_back(engine_->start(t, round_options));
      continue;
    }
    const std::string name = buffer_name(t);
    const ChocoStore::State state = choco_.get_or_zeros(name, t.numel());
    const CompressionOptions compression{options_.codec, options_.error_feedback, name_hash(name)};
    rounds.push_back(engine_->start_compressed(t.view({-1}), state.first, state.second, round_options, compression));
  }
  ++step_;
  const double scale = opts.reduceOp.op_ == c10d::ReduceOp::SUM ? static_cast<double>(getSize()) : 1.0;
  return c10::make_intrusive<GossipWork>(engine_, std::move(rounds), tensors, scale);
}

std::string SaddleBackend::buffer_name(const at::Tensor& t) {
  c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
  std::string found;
  for (auto it = buffers_.begin(); it != buffers_.end();) {
    auto alive = it->storage.lock();
    if (!alive) {  // freed (DDP rebuilt its buckets): its state is no one's any more
      choco_.erase(it->name);
      it = buffers_.erase(it);
      continue;
    }
    if (alive.get() == storage && it->offset == t.storage_offset() && it->numel == t.numel()) found = it->name;
    ++it;
  }
  if (!found.empty()) return found;
  std::string name = "backend/buffer" + std::to_string(buffers_seen_++) + "/" + std::to_string(t.numel());
  buffers_.push_back(KnownBuffer{t.storage().getWeakStorageImpl(), t.storage_offset(), t.numel(), name});
  return name;
}

GossipWork::GossipWork(std::shared_ptr<GossipEngine> engine, std::vector<std::shared_ptr<Round>> rounds,
                       std::vector<at::Tensor> tensors, double scale)
    : c10d::Work(-1, c10d::OpType::ALLREDUCE),
      engine_(std::move(engine)),
      rounds_(std::move(rounds)),
      tensors_(std::move(tensors)),
      scale_(scale),
      future_(c10::make_intrusive<c10::ivalue::Future>(c10::ListType::create(c10::TensorType::get()))) {
  thread_ = std::thread([this] { run(); });
}

GossipWork::~GossipWork() {
  if (thread_.joinable()) thread_.join();
}

void GossipWork::run() {
  try {
    for (const auto& r : rounds_) engine_->finish(r);
    if (scale_ != 1.0)
      for (auto& t : tensors_) t.mul_(scale_);
    future_->markCompleted(c10::IValue(tensors_));
    finish();
  } catch (...) {
    auto error = std::current_exception();
    future_->setError(error);
    finish(error);
  }
}

bool GossipWork::wait(std::chrono::milliseconds /*timeout: the engine's own timeout applies*/) {
  future_->wait();
  if (future_->hasError()) std::rethrow_exception(future_->exception_ptr());
  return true;
}

// --- delegation ------------------------------------------------------------------------------------
using WorkPtr = c10::intrusive_ptr<c10d::Work>;

WorkPtr SaddleBackend::broadcast(std::vector<at::Tensor>& t, const c10d::BroadcastOptions& o) {
  return inner_->broadcast(t, o);
}
WorkPtr SaddleBackend::allreduce_coalesced(std::vector<at::Tensor>& t, const c10d::AllreduceCoalescedOptions& o) {
  return inner_->allreduce_coalesced(t, o);
}
WorkPtr SaddleBackend::reduce(std::vector<at::Tensor>& t, const c10d::ReduceOptions& o) {
  return inner_->reduce(t, o);
}
WorkPtr SaddleBackend::allgather(std::vector<std::vector<at::Tensor>>& out, std::vector<at::Tensor>& in,
                                 const c10d::AllgatherOptions& o) {
  return inner_->allgather(out, in, o);
}
WorkPtr SaddleBackend::_allgather_base(at::Tensor& out, at::Tensor& in, const c10d::AllgatherOptions& o) {
  return inner_->_allgather_base(out, in, o);
}
WorkPtr SaddleBackend::allgather_coalesced(std::vector<std::vector<at::Tensor>>& out, std::vector<at::Tensor>& in,
                                           const c10d::AllgatherOptions& o) {
  return inner_->allgather_coalesced(out, in, o);
}
WorkPtr SaddleBackend::allgather_into_tensor_coalesced(std::vector<at::Tensor>& out, std::vector<at::Tensor>& in,
                                                       const c10d::AllgatherOptions& o) {
  return inner_->allgather_into_tensor_coalesced(out, in, o);
}
WorkPtr SaddleBackend::gather(std::vector<std::vector<at::Tensor>>& out, std::vector<at::Tensor>& in,
                              const c10d::GatherOptions& o) {
  return inner_->gather(out, in, o);
}
WorkPtr SaddleBackend::scatter(std::vector<at::Tensor>& out, std::vector<std::vector<at::Tensor>>& in,
                               const c10d::ScatterOptions& o) {
  return inner_->scatter(out, in, o);
}
WorkPtr SaddleBackend::reduce_scatter(std::vector<at::Tensor>& out, std::vector<std::vector<at::Tensor>>& in,
                                      const c10d::ReduceScatterOptions& o) {
  return inner_->reduce_scatter(out, in, o);
}
WorkPtr SaddleBackend::_reduce_scatter_base(at::Tensor& out, at::Tensor& in, const c10d::ReduceScatterOptions& o) {
  return inner_->_reduce_scatter_base(out, in, o);
}
WorkPtr SaddleBackend::alltoall_base(at::Tensor& out, at::Tensor& in, std::vector<int64_t>& out_splits,
                                     std::vector<int64_t>& in_splits, const c10d::AllToAllOptions& o) {
  return inner_->alltoall_base(out, in, out_splits, in_splits, o);
}
WorkPtr SaddleBackend::alltoall(std::vector<at::Tensor>& out, std::vector<at::Tensor>& in,
                                const c10d::AllToAllOptions& o) {
  return inner_->alltoall(out, in, o);
}
WorkPtr SaddleBackend::barrier(const c10d::BarrierOptions& o) { return inner_->barrier(o); }
WorkPtr SaddleBackend::send(std::vector<at::Tensor>& t, int dst, int tag) { return inner_->send(t, dst, tag); }
WorkPtr SaddleBackend::recv(std::vector<at::Tensor>& t, int src, int tag) { return inner_->recv(t, src, tag); }
WorkPtr SaddleBackend::recvAnysource(std::vector<at::Tensor>& t, int tag) { return inner_->recvAnysource(t, tag); }

}  // namespace saddle::torch_ext
