// Mixing kernels: one element per thread, the loop bodies of mixing_math.h; which form a call takes
// is decided here on the host, with the CPU's conditions.
#include "core/check.h"
#include "cuda/elementwise.cuh"
#include "cuda/mixing.h"
#include "cuda/mixing_math.h"

namespace saddle::cuda::mixing {
namespace {

template <typename T>
struct AccumulateFirst {
  T* acc;
  const T* y;
  T b;
  const T* s;
  T c;
  bool use_s;
  __device__ void operator()(size_t i) const {
    mixing_math::accumulate_first_element(acc, y, b, s, c, use_s, i);
  }
};

template <typename T>
struct Accumulate {
  T* acc;
  const T* y;
  T b;
  __device__ void operator()(size_t i) const { mixing_math::accumulate_element(acc, y, b, i); }
};

template <typename T>
struct Apply {
  T* x;
  const T* acc;
  T a, g;
  mixing_math::ApplyForm form;
  __device__ void operator()(size_t i) const { mixing_math::apply_element(x, acc, a, g, form, i); }
};

template <typename T>
struct MixFirst {
  T* x;
  const T* s;
  T a, c;
  mixing_math::MixForm form;
  __device__ void operator()(size_t i) const { mixing_math::mix_first_element(x, s, a, c, form, i); }
};

template <typename T>
struct ChocoStep {
  T* x;
  const T* s;
  const T* x_hat;
  T gamma;
  __device__ void operator()(size_t i) const { mixing_math::choco_step_element(x, s, x_hat, gamma, i); }
};

template <typename T>
struct ChocoFinish {
  T* x;
  T* s;
  T* x_hat;
  const T* d;
  const T* acc;
  T gamma;
  __device__ void operator()(size_t i) const {
    mixing_math::choco_finish_element(x, s, x_hat, d, acc, gamma, i);
  }
};

}  // namespace

template <typename T>
void accumulate_first(T* acc, const T* y, double b, const T* s, double c, size_t n, cudaStream_t stream) {
  SADDLE_CHECK((acc != nullptr && y != nullptr) || n == 0, "accumulate_first: null buffer");
  const T bt = static_cast<T>(b), ct = static_cast<T>(c);
  detail::launch_elementwise(AccumulateFirst<T>{acc, y, bt, s, ct, mixing_math::first_uses_s(s, ct)}, n,
                             stream, "accumulate_first");
}

template <typename T>
void accumulate(T* acc, const T* y, double b, size_t n, cudaStream_t stream) {
  SADDLE_CHECK((acc != nullptr && y != nullptr) || n == 0, "accumulate: null buffer");
  detail::launch_elementwise(Accumulate<T>{acc, y, static_cast<T>(b)}, n, stream, "accumulate");
}

template <typename T>
void apply(T* x, const T* acc, double a, double g, size_t n, cudaStream_t stream) {
  SADDLE_CHECK(x != nullptr || n == 0, "apply: null buffer");
  const T at = static_cast<T>(a);
  const mixing_math::ApplyForm form = mixing_math::apply_form(acc, at);
  if (form == mixing_math::ApplyForm::kNothing) return;
  detail::launch_elementwise(Apply<T>{x, acc, at, static_cast<T>(g), form}, n, stream, "apply");
}

template <typename T>
void mix(T* x, const T* s, const T* const* y, const saddle::mixing::Coefficients& k, size_t n,
         cudaStream_t stream) {
  SADDLE_CHECK(x != nullptr || n == 0, "mix: null buffer");
  SADDLE_CHECK(y != nullptr || k.b.empty(), "mix: ", k.b.size(), " coefficients but no neighbour buffers");
  const T a = static_cast<T>(k.a), c = static_cast<T>(k.c);
  const mixing_math::MixForm form = mixing_math::mix_form(s, a, c);
  if (form != mixing_math::MixForm::kNothing)
    detail::launch_elementwise(MixFirst<T>{x, s, a, c, form}, n, stream, "mix");
  for (size_t j = 0; j < k.b.size(); ++j) {
    SADDLE_CHECK(y[j] != nullptr || n == 0, "mix: null neighbour buffer ", j);
    detail::launch_elementwise(Accumulate<T>{x, y[j], static_cast<T>(k.b[j])}, n, stream, "mix");
  }
}

template <typename T>
void choco_step(T* x, const T* s, const T* x_hat, double gamma, size_t n, cudaStream_t stream) {
  SADDLE_CHECK((x != nullptr && s != nullptr && x_hat != nullptr) || n == 0, "choco_step: null buffer");
  detail::launch_elementwise(ChocoStep<T>{x, s, x_hat, static_cast<T>(gamma)}, n, stream, "choco_step");
}

template <typename T>
void choco_finish(T* x, T* s, T* x_hat, const T* d, const T* acc, double gamma, size_t n,
                  cudaStream_t stream) {
  SADDLE_CHECK((x != nullptr && s != nullptr && x_hat != nullptr && d != nullptr && acc != nullptr) || n == 0,
               "choco_finish: null buffer");
  detail::launch_elementwise(ChocoFinish<T>{x, s, x_hat, d, acc, static_cast<T>(gamma)}, n, stream,
                             "choco_finish");
}

#define SADDLE_INSTANTIATE(T)                                                                      \
  template void accumulate_first<T>(T*, const T*, double, const T*, double, size_t, cudaStream_t); \
  template void accumulate<T>(T*, const T*, double, size_t, cudaStream_t);                         \
  template void apply<T>(T*, const T*, double, double, size_t, cudaStream_t);                      \
  template void mix<T>(T*, const T*, const T* const*, const saddle::mixing::Coefficients&, size_t, \
                       cudaStream_t);                                                              \
  template void choco_step<T>(T*, const T*, const T*, double, size_t, cudaStream_t);               \
  template void choco_finish<T>(T*, T*, T*, const T*, const T*, double, size_t, cudaStream_t);
SADDLE_INSTANTIATE(float)
SADDLE_INSTANTIATE(double)
#undef SADDLE_INSTANTIATE

}  // namespace saddle::cuda::mixing
