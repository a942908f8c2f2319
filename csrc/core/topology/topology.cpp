#include "core/topology/topology.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include "core/check.h"

namespace saddle::topology {
namespace {

constexpr double kSumTolerance = 1e-8;

// Ranks reachable from rank 0 following edges forward (reverse=false) or backward, over all phases.
std::vector<bool> reachable(const std::vector<Phase>& phases, int n, bool reverse) {
  std::vector<std::vector<int>> adj(n);
  for (const auto& phase : phases)
    for (int i = 0; i < n; ++i)
      for (const auto& e : phase[i].in) {
        // Information flows from e.peer to i.
        if (reverse) adj[i].push_back(e.peer);
        else adj[e.peer].push_back(i);
      }
  std::vector<bool> seen(n, false);
  std::vector<int> stack{0};
  seen[0] = true;
  while (!stack.empty()) {
    const int u = stack.back();
    stack.pop_back();
    for (int v : adj[u])
      if (!seen[v]) {
        seen[v] = true;
        stack.push_back(v);
      }
  }
  return seen;
}

std::string unreached(const std::vector<bool>& seen) {
  std::string out;
  for (size_t i = 0; i < seen.size(); ++i)
    if (!seen[i]) out += (out.empty() ? "" : ", ") + std::to_string(i);
  return out;
}

}  // namespace

Weights parse_weights(const std::string& name) {
  if (name == "uniform") return Weights::kUniform;
  if (name == "metropolis") return Weights::kMetropolis;
  throw std::invalid_argument("weights must be 'uniform' or 'metropolis', got '" + name + "'");
}

Topology::Topology(std::string name, std::vector<Phase> phases)
    : name_(std::move(name)), phases_(std::move(phases)) {
  validate_and_link();
}

void Topology::validate_and_link() {
  SADDLE_CHECK_ARG(!phases_.empty(), "topology '", name_, "' has no phases");
  size_ = static_cast<int>(phases_[0].size());
  SADDLE_CHECK_ARG(size_ >= 1, "topology '", name_, "' has no ranks");
  const int n = size_;
  for (size_t p = 0; p < phases_.size(); ++p) {
    Phase& phase = phases_[p];
    SADDLE_CHECK_ARG(static_cast<int>(phase.size()) == n, "topology '", name_, "': phase ", p,
                     " has ", phase.size(), " ranks, phase 0 has ", n);
    std::vector<double> column(n, 0.0);
    for (int i = 0; i < n; ++i) {
      Row& row = phase[i];
      row.out.clear();
      std::sort(row.in.begin(), row.in.end(),
                [](const InEdge& a, const InEdge& b) { return a.peer < b.peer; });
      SADDLE_CHECK_ARG(row.self_weight >= 0.0, "topology '", name_, "': rank ", i,
                       " has negative self weight ", row.self_weight);
      double sum = row.self_weight;
      column[i] += row.self_weight;
      for (size_t k = 0; k < row.in.size(); ++k) {
        const InEdge& e = row.in[k];
        SADDLE_CHECK_ARG(e.peer >= 0 && e.peer < n, "topology '", name_, "': rank ", i,
                         " has neighbour ", e.peer, ", out of range [0, ", n, ")");
        SADDLE_CHECK_ARG(e.peer != i, "topology '", name_, "': self-loop at rank ", i);
        SADDLE_CHECK_ARG(k == 0 || row.in[k - 1].peer != e.peer, "topology '", name_,
                         "': duplicate edge (", e.peer, ", ", i, ")");
        SADDLE_CHECK_ARG(e.weight > 0.0, "topology '", name_, "': edge (", e.peer, ", ", i,
                         ") has non-positive weight ", e.weight);
        sum += e.weight;
        column[e.peer] += e.weight;
      }
      SADDLE_CHECK_ARG(std::abs(sum - 1.0) <= kSumTolerance, "topology '", name_, "': row of rank ",
                       i, " sums to ", sum, ", not 1 (phase ", p, ")");
    }
    for (int j = 0; j < n; ++j)
      SADDLE_CHECK_ARG(std::abs(column[j] - 1.0) <= kSumTolerance, "topology '", name_,
                       "': column of rank ", j, " sums to ", column[j],
                       ", not 1: W is not doubly stochastic (phase ", p, ")");
    for (int i = 0; i < n; ++i)
      for (const auto& e : phase[i].in) phase[e.peer].out.push_back(i);
    for (int i = 0; i < n; ++i) std::sort(phase[i].out.begin(), phase[i].out.end());
  }
  const std::string forward = unreached(reachable(phases_, n, false));
  SADDLE_CHECK_ARG(forward.empty(), "topology '", name_,
                   "' is disconnected: rank(s) ", forward, " cannot be reached from rank 0");
  const std::string backward = unreached(reachable(phases_, n, true));
  SADDLE_CHECK_ARG(backward.empty(), "topology '", name_,
                   "' is disconnected: rank 0 cannot be reached from rank(s) ", backward);
  symmetric_ = phases_.size() == 1;
  if (symmetric_) {
    const linalg::Matrix w = mixing_matrix(0);
    for (int i = 0; i < n && symmetric_; ++i)
      for (int j = 0; j < i; ++j)
        if (std::abs(w(i, j) - w(j, i)) > kSumTolerance) {
          symmetric_ = false;
          break;
        }
  }
}

const Row& Topology::row(int rank, int64_t step) const {
  SADDLE_CHECK_ARG(rank >= 0 && rank < size_, "rank ", rank, " out of range [0, ", size_, ")");
  SADDLE_CHECK_ARG(step >= 0, "step must be non-negative, got ", step);
  return phases_[static_cast<size_t>(step % period())][rank];
}

std::vector<int> Topology::neighbors(int rank, int64_t step) const {
  const Row& r = row(rank, step);
  std::set<int> all(r.out.begin(), r.out.end());
  for (const auto& e : r.in) all.insert(e.peer);
  return {all.begin(), all.end()};
}

linalg::Matrix Topology::mixing_matrix(int64_t step) const {
  linalg::Matrix w(size_);
  for (int i = 0; i < size_; ++i) {
    const Row& r = row(i, step);
    w(i, i) = r.self_weight;
    for (const auto& e : r.in) w(i, e.peer) = e.weight;
  }
  return w;
}

double Topology::spectral_gap() const {
  if (size_ == 1) return 1.0;
  if (symmetric_) {
    // Eigenvalues of W itself are accurate to round-off; sorted descending, λ1 = 1.
    const std::vector<double> eig = linalg::symmetric_eigenvalues(mixing_matrix(0));
    return 1.0 - std::max(std::abs(eig[1]), std::abs(eig.back()));
  }
  linalg::Matrix p = mixing_matrix(0);
  for (int t = 1; t < period(); ++t) p = linalg::multiply(mixing_matrix(t), p);
  const std::vector<double> eig = linalg::symmetric_eigenvalues(linalg::multiply(linalg::transpose(p), p));
  // Eigenvalues of PᵀP below round-off are zero: their square roots would read as 1e-8, not 0.
  const double lambda2 = eig[1] < 1e-13 ? 0.0 : eig[1];
  return 1.0 - std::pow(std::sqrt(lambda2), 1.0 / period());
}

Topology from_undirected(const std::string& name, const std::vector<std::vector<int>>& adjacency,
                         Weights weights) {
  const int n = static_cast<int>(adjacency.size());
  SADDLE_CHECK_ARG(n >= 1, "topology '", name, "' has no ranks");
  std::vector<std::set<int>> adj(n);
  for (int i = 0; i < n; ++i)
    for (int j : adjacency[i]) {
      SADDLE_CHECK_ARG(j >= 0 && j < n, "topology '", name, "': rank ", i, " has neighbour ", j,
                       ", out of range [0, ", n, ")");
      SADDLE_CHECK_ARG(j != i, "topology '", name, "': self-loop at rank ", i);
      adj[i].insert(j);
    }
  size_t max_degree = 0;
  for (int i = 0; i < n; ++i) {
    max_degree = std::max(max_degree, adj[i].size());
    for (int j : adj[i])
      SADDLE_CHECK_ARG(adj[j].count(i), "topology '", name, "' is asymmetric: edge (", i, ", ", j,
                       ") has no reverse edge (", j, ", ", i, ")");
  }
  Phase phase(n);
  for (int i = 0; i < n; ++i) {
    double sum = 0.0;
    for (int j : adj[i]) {
      // Uniform: 1/(d_max+1), which is 1/(deg+1) on regular graphs and doubly stochastic on any graph.
      const size_t d = weights == Weights::kUniform ? max_degree : std::max(adj[i].size(), adj[j].size());
      const double w = 1.0 / static_cast<double>(d + 1);
      phase[i].in.push_back({j, w});
      sum += w;
    }
    phase[i].self_weight = 1.0 - sum;
  }
  return Topology(name, {std::move(phase)});
}

Topology from_matrix(const std::string& name, int n, const std::vector<double>& w) {
  SADDLE_CHECK_ARG(n >= 1 && w.size() == static_cast<size_t>(n) * n, "topology '", name,
                   "': mixing matrix must be n×n with n ≥ 1, got ", w.size(), " entries for n = ", n);
  Phase phase(n);
  for (int i = 0; i < n; ++i) {
    phase[i].self_weight = w[static_cast<size_t>(i) * n + i];
    for (int j = 0; j < n; ++j) {
      const double v = w[static_cast<size_t>(i) * n + j];
      SADDLE_CHECK_ARG(v >= 0.0 && std::isfinite(v), "topology '", name, "': W[", i, ", ", j,
                       "] = ", v, " must be finite and non-negative");
      if (j != i && v > 0.0) phase[i].in.push_back({j, v});
    }
  }
  return Topology(name, {std::move(phase)});
}

}  // namespace saddle::topology
