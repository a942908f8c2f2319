#include "core/check.h"
#include "core/topology/generators.h"

namespace saddle::topology {

Topology exponential(int n, Weights /*weights: all degrees are equal, so Metropolis == uniform*/) {
  SADDLE_CHECK_ARG(n >= 1, "exponential: n must be at least 1, got ", n);
  std::vector<int> offsets;
  for (int hop = 1; hop < n; hop *= 2) offsets.push_back(hop);
  const double w = 1.0 / static_cast<double>(offsets.size() + 1);
  Phase phase(n);
  for (int i = 0; i < n; ++i) {
    phase[i].self_weight = w;
    for (int hop : offsets) phase[i].in.push_back({(i - hop % n + n) % n, w});
  }
  return Topology("exponential(" + std::to_string(n) + ")", {std::move(phase)});
}

}  // namespace saddle::topology
