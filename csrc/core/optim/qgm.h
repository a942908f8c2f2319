// Quasi-global momentum (Lin et al., ICML 2021) on flat buffers.
#pragma once

#include <cstddef>

namespace saddle::optim {

struct QgmOptions {
  double beta = 0.9;          // momentum β
  double weight_decay = 0.0;  // λ, added to the gradient before momentum
  bool nesterov = true;
};

// d = g + λx; m = β·m̂ + d; g ← d + β·m (Nesterov) or m. In place on g: the wrapped optimizer then
// steps with the direction as its gradient.
template <typename T>
void qgm_direction(T* g, const T* m_hat, const T* x, const QgmOptions& o, size_t begin, size_t end);

// m̂ ← μ·m̂ + (1−μ)·(x_prev − x)/η: the buffer tracks the net model change, local step and gossip.
template <typename T>
void qgm_buffer_update(T* m_hat, const T* x_prev, const T* x, double mu, double lr, size_t begin, size_t end);

}  // namespace saddle::optim
