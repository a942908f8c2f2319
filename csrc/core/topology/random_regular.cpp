#include <random>
#include <set>

#include "core/check.h"
#include "core/topology/generators.h"

namespace saddle::topology {
namespace {

// One attempt at pairing stubs; returns false when it gets stuck (caller restarts).
bool try_pairing(int n, int d, std::mt19937_64& rng, std::vector<std::set<int>>& adj) {
  adj.assign(n, {});
  std::vector<int> stubs;
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < d; ++k) stubs.push_back(i);
  while (!stubs.empty()) {
    bool paired = false;
    for (int attempt = 0; attempt < 100 && !paired; ++attempt) {
      const size_t a = rng() % stubs.size();
      const size_t b = rng() % stubs.size();
      const int u = stubs[a], v = stubs[b];
      if (a == b || u == v || adj[u].count(v)) continue;
      adj[u].insert(v);
      adj[v].insert(u);
      // Remove the larger index first so the smaller one stays valid.
      const size_t hi = std::max(a, b), lo = std::min(a, b);
      stubs[hi] = stubs.back();
      stubs.pop_back();
      stubs[lo] = stubs.back();
      stubs.pop_back();
      paired = true;
    }
    if (!paired) return false;
  }
  return true;
}

bool connected(const std::vector<std::set<int>>& adj) {
  std::vector<bool> seen(adj.size(), false);
  std::vector<int> stack{0};
  seen[0] = true;
  size_t count = 1;
  while (!stack.empty()) {
    const int u = stack.back();
    stack.pop_back();
    for (int v : adj[u])
      if (!seen[v]) {
        seen[v] = true;
        ++count;
        stack.push_back(v);
      }
  }
  return count == adj.size();
}

}  // namespace

Topology random_regular(int n, int d, uint64_t seed, Weights weights) {
  SADDLE_CHECK_ARG(n >= 2, "random_regular: n must be at least 2, got ", n);
  SADDLE_CHECK_ARG(d >= 1 && d < n, "random_regular: degree must be in [1, ", n - 1, "], got ", d);
  SADDLE_CHECK_ARG((static_cast<int64_t>(n) * d) % 2 == 0, "random_regular: n·d must be even, got ",
                   n, "·", d);
  SADDLE_CHECK_ARG(d >= 2 || n == 2, "random_regular: a 1-regular graph on ", n,
                   " ranks is disconnected");
  std::mt19937_64 rng(seed);
  std::vector<std::set<int>> adj;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    if (!try_pairing(n, d, rng, adj) || !connected(adj)) continue;
    std::vector<std::vector<int>> lists(n);
    for (int i = 0; i < n; ++i) lists[i].assign(adj[i].begin(), adj[i].end());
    return from_undirected("random_regular(" + std::to_string(n) + ", " + std::to_string(d) + ")",
                           lists, weights);
  }
  throw std::invalid_argument("random_regular: no connected " + std::to_string(d) +
                              "-regular graph on " + std::to_string(n) + " ranks found");
}

}  // namespace saddle::topology
