// Device (CUDA) versions of core/mixing.h's element-wise gossip arithmetic on flat buffers of float
// or double: the per-message accumulation, the round's final pass, the weighted mix and CHOCO's
// steps. For the same inputs each writes the bits its CPU namesake writes (cuda/mixing_math.h).
// Pointers are device memory; everything is queued on `stream` and nothing synchronises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "core/mixing.h"

namespace saddle::cuda::mixing {

// acc ← b·y + c·s (s optional), as saddle::mixing::accumulate_first.
template <typename T>
void accumulate_first(T* acc, const T* y, double b, const T* s, double c, size_t n, cudaStream_t stream);

// acc ← acc + b·y.
template <typename T>
void accumulate(T* acc, const T* y, double b, size_t n, cudaStream_t stream);

// x ← a·x + g·acc (acc optional), as saddle::mixing::apply.
template <typename T>
void apply(T* x, const T* acc, double a, double g, size_t n, cudaStream_t stream);

// x ← a·x + c·s + Σ_j b[j]·y[j], as saddle::mixing::mix. `y` is a host array of k.b.size() device
// pointers; one pass for the first term, then one per neighbour in order.
template <typename T>
void mix(T* x, const T* s, const T* const* y, const saddle::mixing::Coefficients& k, size_t n,
         cudaStream_t stream);

// x ← x + γ (s − x̂).
template <typename T>
void choco_step(T* x, const T* s, const T* x_hat, double gamma, size_t n, cudaStream_t stream);

// x̂ ← x̂ + d, s ← s + acc, x ← x + γ (s − x̂), as saddle::mixing::choco_finish.
template <typename T>
void choco_finish(T* x, T* s, T* x_hat, const T* d, const T* acc, double gamma, size_t n,
                  cudaStream_t stream);

}  // namespace saddle::cuda::mixing
