#include "core/linalg/eigen.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/check.h"

namespace saddle::linalg {

Matrix multiply(const Matrix& x, const Matrix& y) {
  SADDLE_CHECK_EQ(x.n, y.n, "matrix sizes differ");
  Matrix out(x.n);
  for (int i = 0; i < x.n; ++i) {
    for (int k = 0; k < x.n; ++k) {
      const double xik = x(i, k);
      if (xik == 0.0) continue;
      for (int j = 0; j < x.n; ++j) out(i, j) += xik * y(k, j);
    }
  }
  return out;
}

Matrix transpose(const Matrix& x) {
  Matrix out(x.n);
  for (int i = 0; i < x.n; ++i)
    for (int j = 0; j < x.n; ++j) out(j, i) = x(i, j);
  return out;
}

std::vector<double> symmetric_eigenvalues(const Matrix& m) {
  const int n = m.n;
  Matrix a = m;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j)
      SADDLE_CHECK(std::abs(a(i, j) - a(j, i)) <= 1e-9 * (1.0 + std::abs(a(i, j))),
                   "matrix is not symmetric at (", i, ", ", j, ")");
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0.0;
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) off += a(i, j) * a(i, j);
    if (off < 1e-30) break;
    for (int p = 0; p < n; ++p) {
      for (int q = p + 1; q < n; ++q) {
        const double apq = a(p, q);
        if (std::abs(apq) < 1e-300) continue;
        // Rotation that zeroes a(p, q): tan(2θ) = 2 a_pq / (a_qq − a_pp).
        const double theta = (a(q, q) - a(p, p)) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0);
        const double s = t * c;
        for (int k = 0; k < n; ++k) {
          const double akp = a(k, p), akq = a(k, q);
          a(k, p) = c * akp - s * akq;
          a(k, q) = s * akp + c * akq;
        }
        for (int k = 0; k < n; ++k) {
          const double apk = a(p, k), aqk = a(q, k);
          a(p, k) = c * apk - s * aqk;
          a(q, k) = s * apk + c * aqk;
        }
      }
    }
  }
  std::vector<double> values(n);
  for (int i = 0; i < n; ++i) values[i] = a(i, i);
  std::sort(values.begin(), values.end(), std::greater<double>());
  return values;
}

}  // namespace saddle::linalg
