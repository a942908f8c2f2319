#include "torch/saddle_backend.h"

#include <ATen/core/ivalue.h>
#include <pybind11/pybind11.h>

#include "core/check.h"

namespace saddle::torch_ext {

SaddleBackend::SaddleBackend(c10::intrusive_ptr<c10d::Backend> inner, double timeout_seconds)
    : c10d::Backend(inner->getRank(), inner->getSize()), inner_(std::move(inner)), timeout_seconds_(timeout_seconds) {
  SADDLE_CHECK_ARG(inner_, "the saddle backend needs an inner Gloo backend");
}

// The inner ProcessGroupGloo joins its worker threads when it is destroyed, and a worker that finishes a
// work item releases that item's tensors, whose Python objects need the GIL. DDP's Reducer drops the
// last reference to this backend from pybind's deallocator, holding the GIL: joining there deadlocked
// (1 run in 3 of a DDP loop on this backend that ended with an all_gather, the main thread in
// ~ProcessGroupGloo's join, the worker in ~AsyncAllgatherWork waiting for the GIL). So the inner
// backend is released with the GIL let go when this thread holds it.
SaddleBackend::~SaddleBackend() {
  if (Py_IsInitialized() && PyGILState_Check()) {
    pybind11::gil_scoped_release nogil;
    inner_.reset();
  } else {
    inner_.reset();
  }
}

c10::intrusive_ptr<c10d::Work> SaddleBackend::allreduce(std::vector<at::Tensor>& tensors,
                                                        const c10d::AllreduceOptions& opts) {
  if (opts.reduceOp.op_ != c10d::ReduceOp::AVG) return inner_->allreduce(tensors, opts);
  c10d::AllreduceOptions sum = opts;
  sum.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
  auto work = inner_->allreduce(tensors, sum);
  const int64_t size = getSize();
  auto averaged = work->getFuture()->then(
      [tensors, size](c10::ivalue::Future& done) {
        if (done.hasError()) std::rethrow_exception(done.exception_ptr());
        for (const auto& t : tensors) {
          if (at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type()))
            t.div_(size);
          else
            t.div_(size, "floor");
        }
        return c10::IValue(tensors);
      },
      c10::ListType::create(c10::TensorType::get()));
  return c10d::Work::create_from_future(averaged);
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
