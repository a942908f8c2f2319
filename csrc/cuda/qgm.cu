// QGM kernels: one element per thread, the loop bodies of qgm_math.h.
#include "core/check.h"
#include "cuda/elementwise.cuh"
#include "cuda/optim.h"
#include "cuda/qgm_math.h"

namespace saddle::cuda::optim {
namespace {

template <typename T>
struct Direction {
  T* g;
  const T* m_hat;
  const T* x;
  qgm::Scalars<T> k;
  __device__ void operator()(size_t i) const { qgm::direction_element(g, m_hat, x, k, i); }
};

template <typename T>
struct Buffer {
  T* m_hat;
  const T* x_prev;
  const T* x;
  qgm::BufferScalars<T> k;
  __device__ void operator()(size_t i) const { qgm::buffer_element(m_hat, x_prev, x, k, i); }
};

}  // namespace

template <typename T>
void qgm_direction(T* g, const T* m_hat, const T* x, const saddle::optim::QgmOptions& o, size_t n,
                   cudaStream_t stream) {
  SADDLE_CHECK((g != nullptr && m_hat != nullptr && x != nullptr) || n == 0, "qgm_direction: null buffer");
  detail::launch_elementwise(Direction<T>{g, m_hat, x, qgm::scalars<T>(o)}, n, stream, "qgm_direction");
}

template <typename T>
void qgm_buffer_update(T* m_hat, const T* x_prev, const T* x, double mu, double lr, size_t n,
                       cudaStream_t stream) {
  SADDLE_CHECK((m_hat != nullptr && x_prev != nullptr && x != nullptr) || n == 0,
               "qgm_buffer_update: null buffer");
  SADDLE_CHECK_ARG(lr > 0.0, "QGM needs a positive learning rate, got ", lr);
  detail::launch_elementwise(Buffer<T>{m_hat, x_prev, x, qgm::buffer_scalars<T>(mu, lr)}, n, stream,
                             "qgm_buffer_update");
}

#define SADDLE_INSTANTIATE(T)                                                                      \
  template void qgm_direction<T>(T*, const T*, const T*, const saddle::optim::QgmOptions&, size_t, \
                                 cudaStream_t);                                                    \
  template void qgm_buffer_update<T>(T*, const T*, const T*, double, double, size_t, cudaStream_t);
SADDLE_INSTANTIATE(float)
SADDLE_INSTANTIATE(double)
#undef SADDLE_INSTANTIATE

}  // namespace saddle::cuda::optim
