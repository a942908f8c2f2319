#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/mixing.h"
#include "core/topology/generators.h"

namespace saddle::mixing {
namespace {

// Mixes rank `rank`'s buffer with its in-neighbours' buffers, exactly as the engine does.
template <typename T>
std::vector<T> mix_rank(const topology::Topology& t, int rank, const std::vector<std::vector<T>>& xs,
                        double gamma, const std::vector<T>* snapshot = nullptr) {
  const auto& row = t.row(rank, 0);
  std::vector<T> x = xs[rank];
  std::vector<const T*> y;
  for (const auto& e : row.in) y.push_back(xs[e.peer].data());
  const Coefficients k = gossip_coefficients(row, gamma, snapshot != nullptr);
  // Two disjoint ranges, as a parallel caller would split them.
  const size_t mid = x.size() / 3;
  mix<T>(x.data(), snapshot ? snapshot->data() : nullptr, y.data(), k, 0, mid);
  mix<T>(x.data(), snapshot ? snapshot->data() : nullptr, y.data(), k, mid, x.size());
  return x;
}

TEST(Mixing, GammaOneEqualsDenseWTimesX) {
  const topology::Topology t = topology::ring(5);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  const size_t d = 5000;  // several blocks plus a tail
  std::vector<std::vector<double>> xs(5, std::vector<double>(d));
  for (auto& x : xs)
    for (auto& v : x) v = normal(rng);
  const linalg::Matrix w = t.mixing_matrix(0);
  for (int i = 0; i < 5; ++i) {
    const auto out = mix_rank(t, i, xs, 1.0);
    for (size_t k = 0; k < d; ++k) {
      double ref = 0;
      for (int j = 0; j < 5; ++j) ref += w(i, j) * xs[j][k];
      ASSERT_NEAR(out[k], ref, 1e-12);
    }
  }
}

TEST(Mixing, GammaStepAndFloat) {
  const topology::Topology t = topology::exponential(8);
  std::vector<std::vector<float>> xs(8, std::vector<float>(3000));
  for (int i = 0; i < 8; ++i)
    for (size_t k = 0; k < 3000; ++k) xs[i][k] = static_cast<float>(i * 0.5 + k * 1e-3);
  const double gamma = 0.4;
  const auto out = mix_rank(t, 2, xs, gamma);
  const auto& row = t.row(2, 0);
  for (size_t k = 0; k < 3000; ++k) {
    double ref = xs[2][k];
    for (const auto& e : row.in) ref += gamma * e.weight * (xs[e.peer][k] - xs[2][k]);
    ASSERT_NEAR(out[k], ref, 1e-5);
  }
}

TEST(Mixing, SnapshotFormAddsNeighbourDifferencesToAMovedModel) {
  const topology::Topology t = topology::ring(4);
  std::vector<std::vector<double>> xs(4, std::vector<double>(100));
  for (int i = 0; i < 4; ++i)
    for (size_t k = 0; k < 100; ++k) xs[i][k] = i + 0.01 * k;
  const std::vector<double> snapshot = xs[1];
  std::vector<std::vector<double>> moved = xs;
  for (auto& v : moved[1]) v -= 0.25;  // the local step happened after the round started
  const auto out = mix_rank(t, 1, moved, 1.0, &snapshot);
  for (size_t k = 0; k < 100; ++k) {
    double ref = moved[1][k];
    for (const auto& e : t.row(1, 0).in) ref += e.weight * (xs[e.peer][k] - snapshot[k]);
    ASSERT_NEAR(out[k], ref, 1e-12);
  }
}

TEST(Mixing, PreservesTheAverage) {
  const topology::Topology t = topology::star(6);
  std::vector<std::vector<double>> xs(6, std::vector<double>(10));
  for (int i = 0; i < 6; ++i)
    for (size_t k = 0; k < 10; ++k) xs[i][k] = (i * 7 + k * 3) % 11;
  std::vector<std::vector<double>> next(6);
  for (int i = 0; i < 6; ++i) next[i] = mix_rank(t, i, xs, 1.0);
  for (size_t k = 0; k < 10; ++k) {
    double before = 0, after = 0;
    for (int i = 0; i < 6; ++i) before += xs[i][k], after += next[i][k];
    EXPECT_NEAR(before, after, 1e-12);
  }
}

}  // namespace
}  // namespace saddle::mixing

namespace saddle::mixing {
namespace {

TEST(Mixing, ChocoStepIsExactWhenPublicCopiesAgree) {
  std::vector<float> x{1.5f, -2.25f, 3.0f}, s{0.1f, 0.2f, 0.3f}, h = s;
  const std::vector<float> x0 = x;
  choco_step<float>(x.data(), s.data(), h.data(), 0.7, 0, 3);
  EXPECT_EQ(x, x0);
  h = {0.0f, 0.0f, 0.0f};
  choco_step<float>(x.data(), s.data(), h.data(), 0.5, 0, 3);
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(x[i], x0[i] + 0.5f * s[i]);
}

}  // namespace
}  // namespace saddle::mixing

namespace saddle::mixing {
namespace {

// The engine's per-message accumulation followed by one pass over x must equal the blocked mix.
TEST(Mixing, AccumulateThenApplyEqualsMix) {
  const size_t n = 37;
  std::vector<double> x(n), s(n), y0(n), y1(n), y2(n);
  for (size_t k = 0; k < n; ++k) {
    x[k] = std::sin(0.3 * k);
    s[k] = std::cos(0.7 * k);
    y0[k] = 0.1 * k;
    y1[k] = -0.05 * k + 1;
    y2[k] = std::sin(1.1 * k + 2);
  }
  topology::Row row;
  row.self_weight = 0.4;
  row.in = {{3, 0.3}, {5, 0.2}, {7, 0.1}};
  const double gamma = 0.8;
  const double total = 0.6;
  const double* ys[] = {y0.data(), y1.data(), y2.data()};
  for (bool snapshot : {false, true}) {
    std::vector<double> want = x, got = x, acc(n);
    mix<double>(want.data(), snapshot ? s.data() : nullptr, ys, gossip_coefficients(row, gamma, snapshot), 0, n);
    accumulate_first<double>(acc.data(), y0.data(), 0.3, snapshot ? s.data() : nullptr, -total, 0, n);
    accumulate<double>(acc.data(), y1.data(), 0.2, 0, n);
    accumulate<double>(acc.data(), y2.data(), 0.1, 0, n);
    apply<double>(got.data(), acc.data(), snapshot ? 1.0 : 1.0 - gamma * total, gamma, 0, n);
    for (size_t k = 0; k < n; ++k) EXPECT_NEAR(got[k], want[k], 1e-12) << "snapshot=" << snapshot << " k=" << k;
  }
}

TEST(Mixing, ChocoFinishEqualsTheSteps) {
  std::vector<float> x{1.5f, -2.0f}, s{0.25f, 0.5f}, h{0.125f, -0.5f}, d{0.5f, 0.25f}, acc{0.75f, -1.0f};
  std::vector<float> wx = x, ws = s, wh = h;
  for (int i = 0; i < 2; ++i) {
    wh[i] += d[i];
    ws[i] += acc[i];
  }
  choco_step<float>(wx.data(), ws.data(), wh.data(), 0.5, 0, 2);
  choco_finish<float>(x.data(), s.data(), h.data(), d.data(), acc.data(), 0.5, 0, 2);
  EXPECT_EQ(x, wx);
  EXPECT_EQ(s, ws);
  EXPECT_EQ(h, wh);
}

}  // namespace
}  // namespace saddle::mixing
