// QGM's element-wise steps for the device, bit for bit as core/optim/qgm.cpp: the loop bodies with
// their operations in source order, one element per thread. The scalars are converted to T on the
// host exactly as the CPU converts them (scalars()).
#pragma once

#include "core/optim/qgm.h"
#include "cuda/host_device.h"

namespace saddle::cuda::qgm {

template <typename T>
struct Scalars {
  T beta, wd;
  bool nesterov;
};

template <typename T>
inline Scalars<T> scalars(const ::saddle::optim::QgmOptions& o) {
  return {static_cast<T>(o.beta), static_cast<T>(o.weight_decay), o.nesterov};
}

// d = g + λx; g ← d + β·(β·m̂ + d) (Nesterov) or (β·m̂ + g) + λx.
template <typename T>
SADDLE_HD void direction_element(T* g, const T* m_hat, const T* x, const Scalars<T>& k, size_t i) {
  if (k.nesterov) {
    const T d = add_rn(g[i], mul_rn(k.wd, x[i]));
    g[i] = add_rn(d, mul_rn(k.beta, add_rn(mul_rn(k.beta, m_hat[i]), d)));
  } else {
    g[i] = add_rn(add_rn(mul_rn(k.beta, m_hat[i]), g[i]), mul_rn(k.wd, x[i]));
  }
}

// The buffer update's two constants: a = μ, b = (1 − μ)/η, each computed in double then rounded to T.
template <typename T>
struct BufferScalars {
  T a, b;
};

template <typename T>
inline BufferScalars<T> buffer_scalars(double mu, double lr) {
  return {static_cast<T>(mu), static_cast<T>((1.0 - mu) / lr)};
}

// m̂ ← a·m̂ + b·(x_prev − x).
template <typename T>
SADDLE_HD void buffer_element(T* m_hat, const T* x_prev, const T* x, const BufferScalars<T>& k, size_t i) {
  m_hat[i] = add_rn(mul_rn(k.a, m_hat[i]), mul_rn(k.b, sub_rn(x_prev[i], x[i])));
}

}  // namespace saddle::cuda::qgm
