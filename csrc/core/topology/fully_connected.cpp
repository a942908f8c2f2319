#include "core/check.h"
#include "core/topology/generators.h"

namespace saddle::topology {

Topology fully_connected(int n, Weights weights) {
  SADDLE_CHECK_ARG(n >= 1, "fully_connected: n must be at least 1, got ", n);
  std::vector<std::vector<int>> adj(n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      if (j != i) adj[i].push_back(j);
  return from_undirected("fully_connected(" + std::to_string(n) + ")", adj, weights);
}

}  // namespace saddle::topology
