// The device SAM and QGM arithmetic (csrc/cuda/sam_math.h, qgm_math.h), run on the host over the
// kernels' decomposition, against core/optim: perturb, restore and both QGM steps bit for bit, for
// float and double, finite and non-finite inputs; the norm's fixed tree within its rounding bound of
// the CPU's sequential sum. Needs neither nvcc nor a GPU (tests/cuda/optim_device_test.cpp runs the
// kernels themselves).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/optim/qgm.h"
#include "core/optim/sam.h"
#include "cuda/qgm_math.h"
#include "cuda/sam_math.h"
#include "cuda_norm_reference.h"
#include "cuda_test_values.h"

namespace saddle::cuda {
namespace {

using testing::ambiguous_nans;
using testing::awkward;
using testing::each_thread;
using testing::same_bits;
using testing::traced;
using testing::Traced;

template <typename T>
class CudaOptimMath : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CudaOptimMath, Types);

template <typename T>
double device_norm(const T* g, const T* x, size_t n) {
  return testing::emulated_device_norm(g, x, n);
}

TYPED_TEST(CudaOptimMath, SamPerturbAndRestoreMatchCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (bool adaptive : {false, true})
        for (double scale : {0.05, 1.0, -0.375, 1e-30, 3e38, 1e300}) {
          SCOPED_TRACE(::testing::Message() << "n = " << n << ", adaptive = " << adaptive
                                            << ", scale = " << scale << ", non_finite = " << non_finite);
          const uint64_t seed = n * 7 + adaptive;
          const auto g = awkward<T>(n, seed, non_finite);
          std::vector<T> x = awkward<T>(n, seed + 1, non_finite), e(n, T(7));
          std::vector<T> x_dev = x, e_dev = e;
          optim::sam_perturb<T>(x.data(), g.data(), e.data(), scale, adaptive, 0, n);
          const T s = static_cast<T>(scale);  // as sam.cu's launcher converts it
          auto tx = traced(x_dev), tg = traced(g), te = traced(e_dev);
          const auto amb = ambiguous_nans(
              n, [&](size_t i) { sam::perturb_element(tx.data(), tg.data(), te.data(), {s}, adaptive, i); });
          each_thread(n, seed, [&](size_t i) {
            sam::perturb_element(x_dev.data(), g.data(), e_dev.data(), s, adaptive, i);
          });
          ASSERT_TRUE(same_bits(e_dev, e, amb)) << "e";
          ASSERT_TRUE(same_bits(x_dev, x, amb)) << "x";
          optim::sam_restore<T>(x.data(), e.data(), 0, n);
          each_thread(n, seed + 2, [&](size_t i) { sam::restore_element(x_dev.data(), e_dev.data(), i); });
          ASSERT_TRUE(same_bits(x_dev, x, amb)) << "restore";  // a subtraction: no new ambiguity
        }
}

TYPED_TEST(CudaOptimMath, QgmDirectionMatchesCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (bool nesterov : {true, false})
        for (double beta : {0.9, 0.0, 0.99, 1.0 / 3.0})
          for (double wd : {0.0, 5e-4, 1e-2, 1e300}) {
            SCOPED_TRACE(::testing::Message() << "n = " << n << ", nesterov = " << nesterov << ", beta = "
                                              << beta << ", wd = " << wd << ", non_finite = " << non_finite);
            const uint64_t seed = n * 11 + nesterov;
            const optim::QgmOptions o{beta, wd, nesterov};
            const auto m_hat = awkward<T>(n, seed, non_finite);
            const auto x = awkward<T>(n, seed + 1, non_finite);
            std::vector<T> g = awkward<T>(n, seed + 2, non_finite), g_dev = g;
            optim::qgm_direction<T>(g.data(), m_hat.data(), x.data(), o, 0, n);
            const auto k = qgm::scalars<T>(o);
            auto tg = traced(g_dev), tm = traced(m_hat), tx = traced(x);
            const qgm::Scalars<Traced<T>> tk{{k.beta}, {k.wd}, k.nesterov};
            const auto amb = ambiguous_nans(
                n, [&](size_t i) { qgm::direction_element(tg.data(), tm.data(), tx.data(), tk, i); });
            each_thread(n, seed, [&](size_t i) {
              qgm::direction_element(g_dev.data(), m_hat.data(), x.data(), k, i);
            });
            ASSERT_TRUE(same_bits(g_dev, g, amb));
          }
}

TYPED_TEST(CudaOptimMath, QgmBufferUpdateMatchesCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (double mu : {0.9, 0.0, 1.0, 0.1})
        for (double lr : {0.1, 1e-3, 3.0, 1e-300}) {  // 1e-300: (1 − μ)/η overflows T
          SCOPED_TRACE(::testing::Message() << "n = " << n << ", mu = " << mu << ", lr = " << lr
                                            << ", non_finite = " << non_finite);
          const uint64_t seed = n * 13 + 5;
          const auto x_prev = awkward<T>(n, seed, non_finite);
          const auto x = awkward<T>(n, seed + 1, non_finite);
          std::vector<T> m = awkward<T>(n, seed + 2, non_finite), m_dev = m;
          optim::qgm_buffer_update<T>(m.data(), x_prev.data(), x.data(), mu, lr, 0, n);
          const auto k = qgm::buffer_scalars<T>(mu, lr);
          auto tm = traced(m_dev), tp = traced(x_prev), tx = traced(x);
          const qgm::BufferScalars<Traced<T>> tk{{k.a}, {k.b}};
          const auto amb = ambiguous_nans(
              n, [&](size_t i) { qgm::buffer_element(tm.data(), tp.data(), tx.data(), tk, i); });
          each_thread(n, seed,
                      [&](size_t i) { qgm::buffer_element(m_dev.data(), x_prev.data(), x.data(), k, i); });
          ASSERT_TRUE(same_bits(m_dev, m, amb));
        }
}

TYPED_TEST(CudaOptimMath, NormTermsAreTheCpus) {
  using T = TypeParam;
  // One term at a time, the CPU's loop over [i, i + 1) is exactly 0.0 + term, so this compares the
  // terms bit for bit; the order of the sum is the one thing that differs.
  for (bool adaptive : {false, true}) {
    const auto g = awkward<T>(5003, 21, true);
    const auto x = awkward<T>(5003, 22, true);
    const T* xp = adaptive ? x.data() : nullptr;
    for (size_t i = 0; i < g.size(); ++i) {
      const double cpu = optim::sam_norm_sq<T>(g.data(), xp, i, i + 1),
                   dev = 0.0 + sam::norm_term(g.data(), xp, i);
      if (std::isnan(cpu)) {
        ASSERT_TRUE(std::isnan(dev)) << i;  // a float NaN's payload after the widening is not compared
      } else {
        ASSERT_EQ(testing::bits(dev), testing::bits(cpu)) << "element " << i << ": " << dev << " vs " << cpu;
      }
    }
  }
}

// Finite sums for double too: magnitudes above 1e30 become ±1e30 (denormals stay).
template <typename T>
std::vector<T> moderate(std::vector<T> v) {
  for (auto& e : v)
    if (std::fabs(e) > T(1e30)) e = std::copysign(T(1e30), e);
  return v;
}

TYPED_TEST(CudaOptimMath, NormWithinRoundingBoundOfCpu) {
  using T = TypeParam;
  const double u = std::ldexp(1.0, -53);
  double worst = 0.0;
  for (size_t n : {size_t{1}, size_t{2}, size_t{255}, size_t{256}, size_t{257}, size_t{4095}, size_t{4096},
                   size_t{4097}, size_t{65537}, size_t{1} << 20, (size_t{1} << 20) + 4097}) {
    for (bool adaptive : {false, true}) {
      for (uint64_t seed : {1ull, 2ull}) {
        SCOPED_TRACE(::testing::Message()
                     << "n = " << n << ", adaptive = " << adaptive << ", seed = " << seed);
        const auto g = moderate(awkward<T>(n, seed));
        const auto x = moderate(awkward<T>(n, seed + 100));
        const T* xp = adaptive ? x.data() : nullptr;
        const double cpu = optim::sam_norm_sq<T>(g.data(), xp, 0, n);
        const double dev = device_norm(g.data(), xp, n);
        ASSERT_TRUE(std::isfinite(cpu) && std::isfinite(dev));
        // Non-negative terms: each sum is within γ_d·Σ of the exact one (d = its depth), so they
        // differ by at most (γ_{n−1} + γ_D)·Σ ≤ (n − 1 + D)·u·cpu / (1 − (n − 1 + D)·u)².
        const double k = static_cast<double>(n + testing::device_norm_depth(n));
        const double bound = k * u * cpu / ((1 - k * u) * (1 - k * u));
        ASSERT_LE(std::fabs(dev - cpu), bound) << "dev " << dev << ", cpu " << cpu;
        if (cpu > 0) worst = std::max(worst, std::fabs(dev - cpu) / cpu);
        // The CPU as the binding runs it: at::parallel_reduce chunks of 2^15, chunk sums added in order.
        double chunked = 0.0;
        for (size_t b = 0; b < n; b += size_t{1} << 15)
          chunked += optim::sam_norm_sq<T>(g.data(), xp, b, std::min(n, b + (size_t{1} << 15)));
        ASSERT_LE(std::fabs(dev - chunked), bound);
      }
    }
  }
  this->RecordProperty("worst_relative_difference", ::testing::PrintToString(worst));
  EXPECT_LT(worst, 1e-12);
}

TYPED_TEST(CudaOptimMath, NormSpecialValues) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  EXPECT_EQ(testing::bits(device_norm<T>(nullptr, nullptr, 0)),
            testing::bits(0.0));  // n = 0: +0.0, as the CPU
  for (size_t n : {size_t{1}, size_t{300}, size_t{5000}}) {
    std::vector<T> g(n, -T(0));
    EXPECT_EQ(testing::bits(device_norm(g.data(), static_cast<const T*>(nullptr), n)), testing::bits(0.0));
    g[n / 2] = -inf;
    EXPECT_EQ(device_norm(g.data(), static_cast<const T*>(nullptr), n),
              optim::sam_norm_sq<T>(g.data(), nullptr, 0, n));
    g[n - 1] = nan;  // inf + NaN and NaN alone: NaN on both sides (payloads not compared: order differs)
    EXPECT_TRUE(std::isnan(device_norm(g.data(), static_cast<const T*>(nullptr), n)));
    EXPECT_TRUE(std::isnan(optim::sam_norm_sq<T>(g.data(), nullptr, 0, n)));
    std::vector<T> x(n, T(0));
    g.assign(n, inf);  // ASAM: 0·inf is NaN on both sides
    EXPECT_TRUE(std::isnan(device_norm(g.data(), x.data(), n)));
    EXPECT_TRUE(std::isnan(optim::sam_norm_sq<T>(g.data(), x.data(), 0, n)));
  }
  // Every float's square fits a double: the largest finite floats sum without overflow on both sides.
  if (sizeof(T) == 4) {
    std::vector<T> g(10000, std::numeric_limits<T>::max());
    const double cpu = optim::sam_norm_sq<T>(g.data(), nullptr, 0, g.size());
    const double dev = device_norm(g.data(), static_cast<const T*>(nullptr), g.size());
    EXPECT_TRUE(std::isfinite(dev));
    EXPECT_NEAR(dev, cpu, cpu * 1e-12);
  }
}

}  // namespace
}  // namespace saddle::cuda
