#include "core/mixing.h"

#include <algorithm>

#include "core/check.h"

namespace saddle::mixing {

Coefficients gossip_coefficients(const topology::Row& row, double gamma, bool snapshot) {
  Coefficients k;
  double total = 0.0;
  for (const auto& e : row.in) {
    k.b.push_back(gamma * e.weight);
    total += e.weight;
  }
  if (snapshot) {
    k.a = 1.0;
    k.c = -gamma * total;
  } else {
    k.a = 1.0 - gamma * total;
    k.c = 0.0;
  }
  return k;
}

template <typename T>
void mix(T* x, const T* s, const T* const* y, const Coefficients& k, size_t begin, size_t end) {
  SADDLE_CHECK(x != nullptr && begin <= end, "bad range [", begin, ", ", end, ")");
  constexpr size_t kBlock = 2048;
  const T a = static_cast<T>(k.a), c = static_cast<T>(k.c);
  for (size_t lo = begin; lo < end; lo += kBlock) {
    const size_t hi = std::min(end, lo + kBlock);
    T* __restrict xb = x + lo;
    const size_t len = hi - lo;
    if (s != nullptr && c != T(0)) {
      const T* __restrict sb = s + lo;
      for (size_t i = 0; i < len; ++i) xb[i] = a * xb[i] + c * sb[i];
    } else if (a != T(1)) {
      for (size_t i = 0; i < len; ++i) xb[i] = a * xb[i];
    }
    for (size_t j = 0; j < k.b.size(); ++j) {
      const T bj = static_cast<T>(k.b[j]);
      const T* __restrict yb = y[j] + lo;
      for (size_t i = 0; i < len; ++i) xb[i] += bj * yb[i];
    }
  }
}

template <typename T>
void choco_step(T* x, const T* s, const T* x_hat, double gamma, size_t begin, size_t end) {
  SADDLE_CHECK(x != nullptr && s != nullptr && x_hat != nullptr && begin <= end, "bad range");
  const T g = static_cast<T>(gamma);
  for (size_t i = begin; i < end; ++i) x[i] += g * (s[i] - x_hat[i]);
}

template <typename T>
void accumulate_first(T* acc, const T* y, double b, const T* s, double c, size_t begin, size_t end) {
  SADDLE_CHECK(acc != nullptr && y != nullptr && begin <= end, "bad range");
  const T bt = static_cast<T>(b), ct = static_cast<T>(c);
  if (s != nullptr && ct != T(0)) {
    for (size_t i = begin; i < end; ++i) acc[i] = bt * y[i] + ct * s[i];
  } else {
    for (size_t i = begin; i < end; ++i) acc[i] = bt * y[i];
  }
}

template <typename T>
void accumulate(T* acc, const T* y, double b, size_t begin, size_t end) {
  SADDLE_CHECK(acc != nullptr && y != nullptr && begin <= end, "bad range");
  const T bt = static_cast<T>(b);
  for (size_t i = begin; i < end; ++i) acc[i] += bt * y[i];
}

template <typename T>
void apply(T* x, const T* acc, double a, double g, size_t begin, size_t end) {
  SADDLE_CHECK(x != nullptr && begin <= end, "bad range");
  const T at = static_cast<T>(a), gt = static_cast<T>(g);
  if (acc == nullptr) {  // no in-neighbour this round
    if (at != T(1))
      for (size_t i = begin; i < end; ++i) x[i] *= at;
    return;
  }
  if (at == T(1)) {
    for (size_t i = begin; i < end; ++i) x[i] += gt * acc[i];
  } else {
    for (size_t i = begin; i < end; ++i) x[i] = at * x[i] + gt * acc[i];
  }
}

template <typename T>
void choco_finish(T* x, T* s, T* x_hat, const T* d, const T* acc, double gamma, size_t begin, size_t end) {
  SADDLE_CHECK(x != nullptr && s != nullptr && x_hat != nullptr && d != nullptr && acc != nullptr && begin <= end,
               "bad range");
  const T g = static_cast<T>(gamma);
  for (size_t i = begin; i < end; ++i) {
    x_hat[i] += d[i];
    s[i] += acc[i];
    x[i] += g * (s[i] - x_hat[i]);
  }
}

#define SADDLE_MIXING_INSTANTIATE(T)                                                              \
  template void accumulate_first<T>(T*, const T*, double, const T*, double, size_t, size_t);       \
  template void accumulate<T>(T*, const T*, double, size_t, size_t);                              \
  template void apply<T>(T*, const T*, double, double, size_t, size_t);                           \
  template void choco_finish<T>(T*, T*, T*, const T*, const T*, double, size_t, size_t);
SADDLE_MIXING_INSTANTIATE(float)
SADDLE_MIXING_INSTANTIATE(double)
#undef SADDLE_MIXING_INSTANTIATE

template void choco_step<float>(float*, const float*, const float*, double, size_t, size_t);
template void choco_step<double>(double*, const double*, const double*, double, size_t, size_t);
template void mix<float>(float*, const float*, const float* const*, const Coefficients&, size_t, size_t);
template void mix<double>(double*, const double*, const double* const*, const Coefficients&, size_t,
                          size_t);

}  // namespace saddle::mixing
