#include "core/check.h"
#include "core/topology/generators.h"

namespace saddle::topology {

Topology ring(int n, Weights weights) {
  SADDLE_CHECK_ARG(n >= 1, "ring: n must be at least 1, got ", n);
  std::vector<std::vector<int>> adj(n);
  for (int i = 0; i < n && n > 1; ++i) {
    adj[i].push_back((i + 1) % n);
    adj[i].push_back((i + n - 1) % n);  // same rank as the line above when n == 2: deduplicated
  }
  return from_undirected("ring(" + std::to_string(n) + ")", adj, weights);
}

}  // namespace saddle::topology
