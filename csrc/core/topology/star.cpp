#include "core/check.h"
#include "core/topology/generators.h"

namespace saddle::topology {

Topology star(int n, Weights weights) {
  SADDLE_CHECK_ARG(n >= 1, "star: n must be at least 1, got ", n);
  std::vector<std::vector<int>> adj(n);
  for (int i = 1; i < n; ++i) {
    adj[0].push_back(i);
    adj[i].push_back(0);
  }
  return from_undirected("star(" + std::to_string(n) + ")", adj, weights);
}

}  // namespace saddle::topology
