#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/linalg/eigen.h"

namespace saddle::linalg {
namespace {

TEST(Eigen, DiagonalAndKnownSpectrum) {
  Matrix m(3);
  m(0, 0) = 2, m(1, 1) = -1, m(2, 2) = 5;
  EXPECT_EQ(symmetric_eigenvalues(m), (std::vector<double>{5, 2, -1}));
  Matrix r(2);  // [[2,1],[1,2]] has eigenvalues 3 and 1
  r(0, 0) = 2, r(0, 1) = 1, r(1, 0) = 1, r(1, 1) = 2;
  const auto e = symmetric_eigenvalues(r);
  EXPECT_NEAR(e[0], 3, 1e-12);
  EXPECT_NEAR(e[1], 1, 1e-12);
}

TEST(Eigen, TraceAndFrobeniusArePreserved) {
  std::mt19937_64 rng(1);
  std::normal_distribution<double> normal;
  const int n = 20;
  Matrix m(n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j <= i; ++j) m(i, j) = m(j, i) = normal(rng);
  const auto e = symmetric_eigenvalues(m);
  double trace = 0, frob = 0, sum = 0, sq = 0;
  for (int i = 0; i < n; ++i) {
    trace += m(i, i);
    sum += e[i];
    sq += e[i] * e[i];
    for (int j = 0; j < n; ++j) frob += m(i, j) * m(i, j);
  }
  EXPECT_NEAR(trace, sum, 1e-9);
  EXPECT_NEAR(frob, sq, 1e-9);
  for (int i = 1; i < n; ++i) EXPECT_GE(e[i - 1], e[i]);
}

TEST(Eigen, RejectsAsymmetric) {
  Matrix m(2);
  m(0, 1) = 1;
  EXPECT_ANY_THROW(symmetric_eigenvalues(m));
}

}  // namespace
}  // namespace saddle::linalg
