#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <stdexcept>

#include "core/topology/generators.h"

namespace saddle::topology {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Every generated topology must be doubly stochastic at every phase.
void expect_doubly_stochastic(const Topology& t) {
  for (int p = 0; p < t.period(); ++p) {
    const linalg::Matrix w = t.mixing_matrix(p);
    for (int i = 0; i < t.size(); ++i) {
      double row = 0.0, col = 0.0;
      for (int j = 0; j < t.size(); ++j) {
        row += w(i, j);
        col += w(j, i);
        EXPECT_GE(w(i, j), 0.0);
      }
      EXPECT_NEAR(row, 1.0, 1e-12) << t.name() << " row " << i;
      EXPECT_NEAR(col, 1.0, 1e-12) << t.name() << " column " << i;
    }
  }
}

void expect_symmetric(const Topology& t) {
  const linalg::Matrix w = t.mixing_matrix(0);
  for (int i = 0; i < t.size(); ++i)
    for (int j = 0; j < t.size(); ++j) EXPECT_DOUBLE_EQ(w(i, j), w(j, i)) << t.name();
  EXPECT_TRUE(t.symmetric());
}

TEST(Topology, RingDegreeWeightsAndClosedFormGap) {
  for (int n : {3, 4, 5, 8, 16}) {
    const Topology t = ring(n);
    expect_doubly_stochastic(t);
    expect_symmetric(t);
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(t.neighbors(i, 0).size(), 2u);
      EXPECT_DOUBLE_EQ(t.row(i, 0).self_weight, 1.0 / 3.0);
    }
    // Eigenvalues of the uniform ring: (1 + 2cos(2πk/n))/3.
    double second = 0.0;
    for (int k = 1; k < n; ++k) second = std::max(second, std::abs((1 + 2 * std::cos(2 * kPi * k / n)) / 3));
    EXPECT_NEAR(t.spectral_gap(), 1.0 - second, 1e-10) << n;
  }
  EXPECT_EQ(ring(2).neighbors(0, 0), std::vector<int>{1});
  EXPECT_DOUBLE_EQ(ring(1).spectral_gap(), 1.0);
}

TEST(Topology, TorusIsFourRegular) {
  const Topology t = torus(3, 4);
  EXPECT_EQ(t.size(), 12);
  expect_doubly_stochastic(t);
  expect_symmetric(t);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(t.neighbors(i, 0).size(), 4u);
  // Torus eigenvalues: (1 + 2cos(2πa/r) + 2cos(2πb/c))/5.
  double second = 0.0;
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 4; ++b)
      if (a || b)
        second = std::max(second, std::abs((1 + 2 * std::cos(2 * kPi * a / 3) + 2 * std::cos(2 * kPi * b / 4)) / 5));
  EXPECT_NEAR(t.spectral_gap(), 1.0 - second, 1e-10);
}

TEST(Topology, ExponentialHasLog2Neighbours) {
  const Topology t = exponential(16);
  expect_doubly_stochastic(t);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(t.row(i, 0).in.size(), 4u);
    EXPECT_EQ(t.row(i, 0).out.size(), 4u);
    EXPECT_DOUBLE_EQ(t.row(i, 0).self_weight, 0.2);
  }
  EXPECT_GT(t.spectral_gap(), ring(16).spectral_gap());
}

TEST(Topology, OnePeerExponentialIsExactAfterLog2Steps) {
  for (int n : {2, 4, 8, 16}) {
    const Topology t = one_peer_exponential(n);
    expect_doubly_stochastic(t);
    EXPECT_EQ(t.period(), static_cast<int>(std::log2(n)));
    linalg::Matrix p = t.mixing_matrix(0);
    for (int s = 1; s < t.period(); ++s) p = linalg::multiply(t.mixing_matrix(s), p);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) EXPECT_NEAR(p(i, j), 1.0 / n, 1e-12);
    EXPECT_NEAR(t.spectral_gap(), 1.0, 1e-9);
    for (int i = 0; i < n; ++i) EXPECT_EQ(t.row(i, 1).in.size(), n > 2 ? 1u : 1u);
  }
  const Topology t = one_peer_exponential(8);
  EXPECT_EQ(t.row(0, 0).out, std::vector<int>{1});
  EXPECT_EQ(t.row(0, 1).out, std::vector<int>{2});
  EXPECT_EQ(t.row(0, 2).out, std::vector<int>{4});
  EXPECT_EQ(t.row(0, 3).out, std::vector<int>{1});  // cycles
  EXPECT_EQ(t.row(0, 2).in[0].peer, 4);
}

TEST(Topology, FullyConnectedIsExactAverage) {
  const Topology t = fully_connected(5);
  const linalg::Matrix w = t.mixing_matrix(0);
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) EXPECT_NEAR(w(i, j), 0.2, 1e-15);
  EXPECT_NEAR(t.spectral_gap(), 1.0, 1e-9);
}

TEST(Topology, StarIsDoublyStochasticWithBothWeightings) {
  for (Weights wt : {Weights::kUniform, Weights::kMetropolis}) {
    const Topology t = star(6, wt);
    expect_doubly_stochastic(t);
    expect_symmetric(t);
    EXPECT_EQ(t.neighbors(0, 0).size(), 5u);
    EXPECT_EQ(t.neighbors(3, 0), std::vector<int>{0});
    EXPECT_GT(t.spectral_gap(), 0.0);
  }
}

TEST(Topology, MetropolisWeights) {
  // Path 0-1-2 (via a user graph): w01 = 1/(1+max(1,2)) = 1/3.
  const Topology t = from_undirected("path", {{1}, {0, 2}, {1}}, Weights::kMetropolis);
  const linalg::Matrix w = t.mixing_matrix(0);
  EXPECT_NEAR(w(0, 1), 1.0 / 3, 1e-15);
  EXPECT_NEAR(w(0, 0), 2.0 / 3, 1e-15);
  EXPECT_NEAR(w(1, 1), 1.0 / 3, 1e-15);
  expect_doubly_stochastic(t);
}

TEST(Topology, RandomRegularIsDeterministicRegularAndConnected) {
  const Topology a = random_regular(12, 3, 42), b = random_regular(12, 3, 42), c = random_regular(12, 3, 7);
  bool differs = false;
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(a.neighbors(i, 0).size(), 3u);
    EXPECT_EQ(a.neighbors(i, 0), b.neighbors(i, 0));
    differs |= a.neighbors(i, 0) != c.neighbors(i, 0);
  }
  EXPECT_TRUE(differs);
  expect_doubly_stochastic(a);
  expect_symmetric(a);
  EXPECT_THROW(random_regular(5, 3, 1), std::invalid_argument);  // n·d odd
  EXPECT_THROW(random_regular(4, 4, 1), std::invalid_argument);
}

void expect_invalid(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning '" << needle << "'";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Topology, ValidationNamesTheFault) {
  expect_invalid([] { from_undirected("g", {{1}, {}, {}}, Weights::kUniform); }, "edge (0, 1)");
  expect_invalid([] { from_undirected("g", {{0}}, Weights::kUniform); }, "self-loop at rank 0");
  expect_invalid([] { from_undirected("g", {{3}, {}}, Weights::kUniform); }, "neighbour 3, out of range");
  expect_invalid([] { from_undirected("g", {{1}, {0}, {3}, {2}}, Weights::kUniform); }, "disconnected");
  expect_invalid([] { from_matrix("m", 2, {0.5, 0.4, 0.5, 0.6}); }, "row of rank 0 sums to 0.9");
  expect_invalid([] { from_matrix("m", 2, {0.5, 0.5, 0.7, 0.3}); }, "column of rank 0");
  expect_invalid([] { from_matrix("m", 2, {1.5, -0.5, -0.5, 1.5}); }, "W[0, 1]");
  expect_invalid([] { ring(0); }, "ring: n must be");
  expect_invalid([] { parse_weights("max"); }, "weights must be");
}

TEST(Topology, FromMatrixRoundTrips) {
  const Topology r = ring(6);
  const linalg::Matrix w = r.mixing_matrix(0);
  const Topology t = from_matrix("copy", 6, w.a);
  EXPECT_NEAR(t.spectral_gap(), r.spectral_gap(), 1e-12);
}

}  // namespace
}  // namespace saddle::topology
