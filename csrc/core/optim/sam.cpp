#include "core/optim/sam.h"

#include "core/check.h"

namespace saddle::optim {

template <typename T>
double sam_norm_sq(const T* g, const T* x, size_t begin, size_t end) {
  SADDLE_CHECK(g != nullptr && begin <= end, "bad range");
  double acc = 0.0;
  if (x == nullptr) {
    for (size_t i = begin; i < end; ++i) acc += static_cast<double>(g[i]) * g[i];
  } else {
    for (size_t i = begin; i < end; ++i) {
      const double v = static_cast<double>(x[i]) * g[i];  // (|x|·g)² = (x·g)²
      acc += v * v;
    }
  }
  return acc;
}

template <typename T>
void sam_perturb(T* x, const T* g, T* e, double scale, bool adaptive, size_t begin, size_t end) {
  SADDLE_CHECK(x != nullptr && g != nullptr && e != nullptr && begin <= end, "bad range");
  const T s = static_cast<T>(scale);
  if (adaptive) {
    for (size_t i = begin; i < end; ++i) {
      const T ei = s * x[i] * x[i] * g[i];
      e[i] = ei;
      x[i] += ei;
    }
  } else {
    for (size_t i = begin; i < end; ++i) {
      const T ei = s * g[i];
      e[i] = ei;
      x[i] += ei;
    }
  }
}

template <typename T>
void sam_restore(T* x, const T* e, size_t begin, size_t end) {
  SADDLE_CHECK(x != nullptr && e != nullptr && begin <= end, "bad range");
  for (size_t i = begin; i < end; ++i) x[i] -= e[i];
}

#define SADDLE_INSTANTIATE(T)                                                      \
  template double sam_norm_sq<T>(const T*, const T*, size_t, size_t);              \
  template void sam_perturb<T>(T*, const T*, T*, double, bool, size_t, size_t);    \
  template void sam_restore<T>(T*, const T*, size_t, size_t);
SADDLE_INSTANTIATE(float)
SADDLE_INSTANTIATE(double)
#undef SADDLE_INSTANTIATE

}  // namespace saddle::optim
