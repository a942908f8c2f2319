// Topology generators, one file each. All validate their arguments (std::invalid_argument).
#pragma once

#include <cstdint>

#include "core/topology/topology.h"

namespace saddle::topology {

Topology ring(int n, Weights weights = Weights::kUniform);
Topology torus(int rows, int cols, Weights weights = Weights::kUniform);
// Static directed exponential graph: rank i sends to i + 2^k (mod n) for 2^k < n; circulant, so
// doubly stochastic with weights 1/(deg+1).
Topology exponential(int n, Weights weights = Weights::kUniform);
// Time-varying: at step t rank i sends to i + 2^(t mod ⌈log2 n⌉) and averages with weight 1/2.
// Reaches the exact average in log2(n) steps when n is a power of two.
Topology one_peer_exponential(int n);
Topology fully_connected(int n, Weights weights = Weights::kUniform);
Topology star(int n, Weights weights = Weights::kUniform);
// Random simple connected d-regular graph, deterministic for a given seed.
Topology random_regular(int n, int d, uint64_t seed, Weights weights = Weights::kUniform);

}  // namespace saddle::topology
