#include "core/optim/qgm.h"

#include "core/check.h"

namespace saddle::optim {

template <typename T>
void qgm_direction(T* g, const T* m_hat, const T* x, const QgmOptions& o, size_t begin, size_t end) {
  SADDLE_CHECK(g != nullptr && m_hat != nullptr && x != nullptr && begin <= end, "bad range");
  const T beta = static_cast<T>(o.beta), wd = static_cast<T>(o.weight_decay);
  if (o.nesterov) {
    for (size_t i = begin; i < end; ++i) {
      const T d = g[i] + wd * x[i];
      g[i] = d + beta * (beta * m_hat[i] + d);
    }
  } else {
    for (size_t i = begin; i < end; ++i) g[i] = beta * m_hat[i] + g[i] + wd * x[i];
  }
}

template <typename T>
void qgm_buffer_update(T* m_hat, const T* x_prev, const T* x, double mu, double lr, size_t begin, size_t end) {
  SADDLE_CHECK(m_hat != nullptr && x_prev != nullptr && x != nullptr && begin <= end, "bad range");
  SADDLE_CHECK(lr > 0.0, "QGM needs a positive learning rate, got ", lr);
  const T a = static_cast<T>(mu), b = static_cast<T>((1.0 - mu) / lr);
  for (size_t i = begin; i < end; ++i) m_hat[i] = a * m_hat[i] + b * (x_prev[i] - x[i]);
}

#define SADDLE_INSTANTIATE(T)                                                                       \
  template void qgm_direction<T>(T*, const T*, const T*, const QgmOptions&, size_t, size_t);        \
  template void qgm_buffer_update<T>(T*, const T*, const T*, double, double, size_t, size_t);
SADDLE_INSTANTIATE(float)
SADDLE_INSTANTIATE(double)
#undef SADDLE_INSTANTIATE

}  // namespace saddle::optim
