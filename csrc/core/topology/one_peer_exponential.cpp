#include "core/check.h"
#include "core/topology/generators.h"

namespace saddle::topology {

Topology one_peer_exponential(int n) {
  SADDLE_CHECK_ARG(n >= 1, "one_peer_exponential: n must be at least 1, got ", n);
  std::vector<Phase> phases;
  for (int hop = 1; hop < n; hop *= 2) {
    Phase phase(n);
    for (int i = 0; i < n; ++i) {
      phase[i].self_weight = 0.5;
      phase[i].in.push_back({(i - hop + n) % n, 0.5});
    }
    phases.push_back(std::move(phase));
  }
  if (phases.empty()) phases.emplace_back(n);  // n == 1: the identity
  return Topology("one_peer_exponential(" + std::to_string(n) + ")", std::move(phases));
}

}  // namespace saddle::topology
