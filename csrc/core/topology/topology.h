// A (possibly time-varying) mixing topology: for each phase of its period, one row of W per rank.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/linalg/eigen.h"

namespace saddle::topology {

// Rank `peer` sends to this rank, whose mixing row gives it `weight` (w_ij).
struct InEdge {
  int peer = 0;
  double weight = 0.0;
};

// One rank's row of the mixing matrix W at one phase.
struct Row {
  double self_weight = 1.0;  // w_ii
  std::vector<InEdge> in;    // ranks this rank receives from, sorted by peer
  std::vector<int> out;      // ranks this rank sends to, sorted (derived from the other rows)
};

using Phase = std::vector<Row>;  // one Row per rank

enum class Weights { kUniform, kMetropolis };

// Parses "uniform" / "metropolis"; throws std::invalid_argument otherwise.
Weights parse_weights(const std::string& name);

// Immutable, validated topology. Step t uses phase t mod period().
class Topology {
 public:
  // Validates every phase and derives the `out` lists. Throws std::invalid_argument naming the rank
  // or edge at fault: out-of-range peer, self-loop, duplicate edge, negative weight, a row or column
  // not summing to 1, a graph that is not (strongly) connected over one period.
  Topology(std::string name, std::vector<Phase> phases);

  const std::string& name() const { return name_; }
  int size() const { return size_; }
  int period() const { return static_cast<int>(phases_.size()); }
  bool symmetric() const { return symmetric_; }

  const Row& row(int rank, int64_t step) const;
  // Union of in- and out-neighbours at `step`, sorted.
  std::vector<int> neighbors(int rank, int64_t step) const;
  linalg::Matrix mixing_matrix(int64_t step) const;
  // 1 − σ₂(P)^(1/τ) with P = W_{τ−1}···W_0 over one period τ; for symmetric static W: 1 − max_{i≥2}|λ_i|.
  double spectral_gap() const;

 private:
  void validate_and_link();

  std::string name_;
  int size_ = 0;
  bool symmetric_ = true;
  std::vector<Phase> phases_;
};

// Builds a static topology from an undirected graph given as adjacency lists. Throws
// std::invalid_argument for an edge without its reverse, a self-loop or an out-of-range rank.
Topology from_undirected(const std::string& name, const std::vector<std::vector<int>>& adjacency,
                         Weights weights);

// Builds a static topology from a dense row-major n×n mixing matrix (validated like any topology).
Topology from_matrix(const std::string& name, int n, const std::vector<double>& w);

}  // namespace saddle::topology
