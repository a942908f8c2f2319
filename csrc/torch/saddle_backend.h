// The torch.distributed backend "saddle": all_reduce(AVG) of float tensors is one gossip round with
// the graph neighbours; every other call goes unchanged to an inner Gloo backend.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "torch/choco_store.h"
#include "torch/gossip_engine.h"

namespace saddle::torch_ext {

struct SaddleBackendOptions {
  // Also gossip all_reduce(SUM) of float tensors, returning n × the neighbourhood average: what
  // unmodified DDP needs (it sums gradients already divided by n). Changes SUM's meaning: opt-in.
  bool gossip_sum = false;
  double gamma = 1.0;
  // Optional CHOCO compression (float32 tensors). The state (x̂, s) is kept per tensor buffer (DDP's
  // gradient buckets persist across iterations), named "backend/buffer<k>/<numel>" with k the order
  // in which buffers were first gossiped: the same on every rank, and a different codec seed each.
  CodecPtr codec;
  bool error_feedback = true;
};

class SaddleBackend : public c10d::Backend {
 public:
  SaddleBackend(c10::intrusive_ptr<c10d::Backend> inner, std::shared_ptr<topology::Topology> topology,
                EngineOptions engine_options, SaddleBackendOptions options);

  const std::string getBackendName() const override { return "saddle"; }
  GossipEngine& engine() { return *engine_; }
  ChocoStore& choco() { return choco_; }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors,
                                           const c10d::AllreduceOptions& opts) override;

  // Delegated to the inner Gloo backend, unchanged.
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& t, const c10d::BroadcastOptions& o) override;
  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(std::vector<at::Tensor>& t,
                                                     const c10d::AllreduceCoalescedOptions& o) override;
  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& t, const c10d::ReduceOptions& o) override;
  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& out, std::vector<at::Tensor>& in,
                                           const c10d::AllgatherOptions& o) override;
  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& out, at::Tensor& in,
                                                 const c10d::AllgatherOptions& o) override;
  c10::intrusive_ptr<c10d::Work> allgather_coalesced(std::vector<std::vector<at::Tensor>>& out,
                                                     std::vector<at::Tensor>& in,
                                                     const c10d::AllgatherOptions& o) override;
  c10::intrusive_ptr<c10d::Work> allgather_into_tensor_coalesced(std::vector<at::Tensor>& out,
                                                                 std::vector<at::Tensor>& in,
                                                                 const c10d::AllgatherOptions& o) override;
  c10::intrusive_ptr<c10d::Work> gather(std::vector<std::vector<at::Tensor>>& out, std::vector<at::Tensor>& in,
                                        const c10d::GatherOptions& o) override;
  c10::intrusive_ptr<c10d::Work> scatter(std::vector<at::Tensor>& out, std::vector<std::vector<at::Tensor>>& in,
                                         const c10d::ScatterOptions& o) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter(std::vector<at::Tensor>& out,
                                                std::vector<std::vector<at::Tensor>>& in,
                                                const c10d::ReduceScatterOptions& o) override;
  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(at::Tensor& out, at::Tensor& in,
                                                      const c10d::ReduceScatterOptions& o) override;
  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& out, at::Tensor& in, std::vector<int64_t>& out_splits,
                                               std::vector<int64_t>& in_splits,
                                               const c10d::AllToAllOptions& o) override;
  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& out, std::vector<at::Tensor>& in,
                                          const c10d::AllToAllOptions& o) override;
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& o) override;
  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& t, int dst, int tag) override;
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& t, int src, int tag) override;
  c10::intrusive_ptr<c10d::Work> recvAnysource(std::vector<at::Tensor>& t, int tag) override;

 private:
  bool gossips(const std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& opts) const;
  // The CHOCO name of a gossiped buffer. A buffer is its storage (held weakly, so a freed buffer
  // whose address is reused is a new buffer), offset and size; state of freed buffers is dropped.
  std::string buffer_name(const at::Tensor& t);

  struct KnownBuffer {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    int64_t offset;
    int64_t numel;
    std::string name;
  };

  c10::intrusive_ptr<c10d::Backend> inner_;
  std::shared_ptr<GossipEngine> engine_;
  SaddleBackendOptions options_;
  int64_t step_ = 0;  // gossip rounds so far: the phase of a time-varying topology
  ChocoStore choco_;
  std::vector<KnownBuffer> buffers_;
  int64_t buffers_seen_ = 0;
};

// A gossip all_reduce in flight. Its future completes on its own (DDP waits on the future, not the
// Work) and holds the list of tensors; errors (PeerError) surface from wait() and the future.
class GossipWork : public c10d::Work {
 public:
  GossipWork(std::shared_ptr<GossipEngine> engine, std::vector<std::shared_ptr<Round>> rounds,
             std::vector<at::Tensor> tensors, double scale);
  ~GossipWork() override;

  bool wait(std::chrono::milliseconds timeout) override;
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override { return future_; }
  std::vector<at::Tensor> result() override { return tensors_; }

 private:
  void run();

  std::shared_ptr<GossipEngine> engine_;
  std::vector<std::shared_ptr<Round>> rounds_;
  std::vector<at::Tensor> tensors_;
  double scale_;
  c10::intrusive_ptr<c10::ivalue::Future> future_;
  std::thread thread_;
};

}  // namespace saddle::torch_ext
