// Statistical properties the CHOCO analysis relies on: unbiasedness of qsgd and randk, contraction
// of the biased codecs (topk, sign).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/codec/codec.h"
#include "core/codec/randk.h"

namespace saddle::codec {
namespace {

std::vector<float> normal_vector(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

std::vector<float> round_trip(const Codec& c, const std::vector<float>& x, uint64_t seed) {
  std::vector<uint8_t> msg(c.encoded_bytes(x.size()));
  c.encode(x.data(), x.size(), seed, msg.data(), msg.size());
  std::vector<float> y(x.size());
  c.decode(msg.data(), msg.size(), x.size(), seed, y.data());
  return y;
}

double sq_norm(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += double(v) * v;
  return s;
}

double sq_dist(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return s;
}

TEST(CodecStatistics, QsgdIsUnbiased) {
  const size_t n = 80, draws = 4000;
  const auto x = normal_vector(n, 1);
  for (int bits : {2, 4, 8}) {
    SCOPED_TRACE(bits);
    const auto codec = make_codec(CodecSpec::qsgd(bits, 32));
    std::vector<double> mean(n, 0.0);
    for (size_t d = 0; d < draws; ++d) {
      const auto y = round_trip(*codec, x, 1000 + d);
      for (size_t i = 0; i < n; ++i) mean[i] += y[i] / double(draws);
    }
    const double s = (1 << (bits - 1)) - 1;
    for (size_t i = 0; i < n; ++i) {
      float scale = 0;
      for (size_t j = i / 32 * 32; j < std::min(n, i / 32 * 32 + 32); ++j)
        scale = std::max(scale, std::fabs(x[j]));
      // One draw has variance <= step²/4; five standard deviations of the mean.
      const double tol = 5.0 * (scale / s) / (2.0 * std::sqrt(double(draws))) + 1e-6;
      ASSERT_NEAR(mean[i], x[i], tol) << "element " << i;
    }
  }
}

TEST(CodecStatistics, RandkIsUnbiasedAndUniform) {
  const size_t n = 40, draws = 4000;
  const auto codec = make_codec(CodecSpec::randk(0.25));
  const size_t k = kept_count(0.25, n);
  const auto x = normal_vector(n, 2);
  std::vector<double> mean(n, 0.0), hits(n, 0.0);
  for (size_t d = 0; d < draws; ++d) {
    const auto y = round_trip(*codec, x, d);
    for (size_t i = 0; i < n; ++i) mean[i] += y[i] / double(draws);
    for (uint32_t i : randk_indices(n, k, d)) hits[i] += 1.0 / draws;
  }
  const double p = double(k) / n;
  for (size_t i = 0; i < n; ++i) {
    // Var of one draw: x²(n/k − 1); inclusion frequency: p(1 − p).
    ASSERT_NEAR(mean[i], x[i], 5.0 * std::fabs(x[i]) * std::sqrt((1.0 / p - 1.0) / draws) + 1e-6) << i;
    ASSERT_NEAR(hits[i], p, 5.0 * std::sqrt(p * (1 - p) / draws)) << i;
  }
}

TEST(CodecStatistics, TopkIsAContraction) {
  for (double ratio : {0.01, 0.1, 0.5}) {
    const auto codec = make_codec(CodecSpec::topk(ratio));
    for (uint64_t seed = 0; seed < 5; ++seed) {
      auto x = normal_vector(3000, seed);
      for (auto& v : x) v = v * v * v;  // heavier tails
      const double delta = double(kept_count(ratio, x.size())) / x.size();
      const double err = sq_dist(round_trip(*codec, x, seed), x);
      ASSERT_LE(err, (1.0 - delta) * sq_norm(x) * (1 + 1e-9)) << ratio;
    }
  }
}

TEST(CodecStatistics, SignErrorMatchesItsFormulaAndContracts) {
  for (uint32_t block : {8u, 64u, 256u}) {
    const auto codec = make_codec(CodecSpec::sign(block));
    const auto x = normal_vector(1000, block);
    const double err = sq_dist(round_trip(*codec, x, 0), x);
    // ||C(x) − x||² = ||x||² − Σ_b ||x_b||₁² / |b| <= (1 − 1/B)·||x||².
    double predicted = sq_norm(x);
    for (size_t lo = 0; lo < x.size(); lo += block) {
      const size_t hi = std::min(x.size(), lo + block);
      double l1 = 0;
      for (size_t i = lo; i < hi; ++i) l1 += std::fabs(x[i]);
      predicted -= l1 * l1 / (hi - lo);
    }
    ASSERT_NEAR(err, predicted, 1e-5 * sq_norm(x)) << block;
    ASSERT_LE(err, (1.0 - 1.0 / block) * sq_norm(x)) << block;
  }
  // One spike per block is the worst case: the bound is attained.
  std::vector<float> spike(64, 0.0f);
  spike[5] = 3.0f;
  const double err = sq_dist(round_trip(*make_codec(CodecSpec::sign(64)), spike, 0), spike);
  EXPECT_NEAR(err, (1.0 - 1.0 / 64) * 9.0, 1e-5);
}

TEST(CodecStatistics, QsgdRandomnessDependsOnSeed) {
  const auto codec = make_codec(CodecSpec::qsgd(2, 64));
  const auto x = normal_vector(256, 3);
  EXPECT_EQ(round_trip(*codec, x, 5), round_trip(*codec, x, 5));
  EXPECT_NE(round_trip(*codec, x, 5), round_trip(*codec, x, 6));
}

}  // namespace
}  // namespace saddle::codec
