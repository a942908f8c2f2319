// Gossip mixing on raw buffers: the arithmetic of one round, independent of transport and torch.
#pragma once

#include <cstddef>
#include <vector>

#include "core/topology/topology.h"

namespace saddle::mixing {

// x ← a·x + c·s + Σ_j b[j]·y[j]  (s optional).
struct Coefficients {
  double a = 1.0;
  double c = 0.0;
  std::vector<double> b;  // one per in-edge of the row, in the row's order
};

// Coefficients of x ← x + γ Σ_j w_ij (y_j − base), where base is x itself (snapshot=false) or the
// snapshot s of x taken when the round started (snapshot=true, x may have moved since).
Coefficients gossip_coefficients(const topology::Row& row, double gamma, bool snapshot);

// Applies the coefficients to elements [begin, end). `y` holds one pointer per coefficient in b.
// Blocked so x stays in cache across the neighbour terms; safe to call on disjoint ranges in parallel.
template <typename T>
void mix(T* x, const T* s, const T* const* y, const Coefficients& k, size_t begin, size_t end);

// CHOCO's consensus step x ← x + γ (s − x̂) on [begin, end): the difference first, so s = x̂ leaves x
// unchanged exactly.
template <typename T>
void choco_step(T* x, const T* s, const T* x_hat, double gamma, size_t begin, size_t end);

// The engine's per-neighbour accumulation, run as each message arrives (gossip_engine.cpp):
// acc ← b·y + c·s (first message; s optional), then acc ← acc + b·y for every further one.
template <typename T>
void accumulate_first(T* acc, const T* y, double b, const T* s, double c, size_t begin, size_t end);
template <typename T>
void accumulate(T* acc, const T* y, double b, size_t begin, size_t end);

// The round's single pass over x once every message is in: x ← a·x + g·acc.
template <typename T>
void apply(T* x, const T* acc, double a, double g, size_t begin, size_t end);

// CHOCO's update from accumulated messages, one pass: x̂ ← x̂ + d, s ← s + acc, x ← x + γ (s − x̂),
// where d = C_i (this rank's decoded message) and acc = Σ_{j∈N(i)∪{i}} w_ij C_j.
template <typename T>
void choco_finish(T* x, T* s, T* x_hat, const T* d, const T* acc, double gamma, size_t begin, size_t end);

}  // namespace saddle::mixing
