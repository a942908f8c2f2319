#include "torch/topology_ops.h"

#include "core/check.h"

namespace saddle::torch_ext {

at::Tensor mixing_matrix_tensor(const topology::Topology& t, int64_t step) {
  const linalg::Matrix w = t.mixing_matrix(step);
  at::Tensor out = at::empty({w.n, w.n}, at::kDouble);
  std::copy(w.a.begin(), w.a.end(), out.data_ptr<double>());
  return out;
}

std::shared_ptr<topology::Topology> topology_from_tensor(const std::string& name, const at::Tensor& w) {
  SADDLE_CHECK_ARG(w.dim() == 2 && w.size(0) == w.size(1),
                   "a mixing matrix must be square (n×n), got shape ", w.sizes());
  const at::Tensor dense = w.to(at::kCPU, at::kDouble).contiguous();
  const double* p = dense.data_ptr<double>();
  std::vector<double> values(p, p + dense.numel());
  return std::make_shared<topology::Topology>(
      topology::from_matrix(name, static_cast<int>(w.size(0)), values));
}

std::vector<std::pair<int, double>> in_edges(const topology::Topology& t, int rank, int64_t step) {
  std::vector<std::pair<int, double>> out;
  for (const auto& e : t.row(rank, step).in) out.emplace_back(e.peer, e.weight);
  return out;
}

}  // namespace saddle::torch_ext
