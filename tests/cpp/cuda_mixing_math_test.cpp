// The device mixing arithmetic (csrc/cuda/mixing_math.h), run on the host one element per emulated
// thread, against core/mixing bit for bit: accumulate_first, accumulate, apply, mix, choco_step and
// choco_finish, for float and double, finite and non-finite inputs, and the scalars at which the CPU
// changes form (c = ±0, a = 1 before and after rounding to T). Needs neither nvcc nor a GPU
// (tests/cuda/mixing_device_test.cpp runs the kernels themselves).
#include <gtest/gtest.h>

#include <vector>

#include "core/mixing.h"
#include "core/topology/topology.h"
#include "cuda/mixing_math.h"
#include "cuda_test_values.h"

namespace saddle::cuda {
namespace {

using testing::ambiguous_nans;
using testing::awkward;
using testing::each_thread;
using testing::same_bits;
using testing::traced;
using testing::Traced;
namespace mm = mixing_math;

template <typename T>
class CudaMixingMath : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CudaMixingMath, Types);

// Scalars at which the CPU's branches turn: 0, −0, 1, 1 − 1e-9 (1 as a float, not as a double),
// and ordinary, negative and huge ones.
const std::vector<double> kScalars = {0.0, -0.0, 1.0, 1.0 - 1e-9, 0.25, -1.5, 1.0 / 3.0, 1e300};

TYPED_TEST(CudaMixingMath, AccumulateFirstMatchesCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (bool with_s : {false, true})
        for (double b : {0.25, -1.5, 1.0 / 3.0})
          for (double c : kScalars) {
            SCOPED_TRACE(::testing::Message() << "n = " << n << ", s = " << with_s << ", b = " << b
                                              << ", c = " << c << ", non_finite = " << non_finite);
            const uint64_t seed = n * 3 + with_s;
            const auto y = awkward<T>(n, seed, non_finite), s = awkward<T>(n, seed + 1, non_finite);
            const T* sp = with_s ? s.data() : nullptr;
            std::vector<T> acc(n, T(99)), acc_dev = acc;
            mixing::accumulate_first<T>(acc.data(), y.data(), b, sp, c, 0, n);
            const T bt = static_cast<T>(b), ct = static_cast<T>(c);
            const bool use_s = mm::first_uses_s(sp, ct);
            auto ta = traced(acc_dev), ty = traced(y), ts = traced(s);
            const auto amb = ambiguous_nans(n, [&](size_t i) {
              mm::accumulate_first_element(ta.data(), ty.data(), Traced<T>{bt}, with_s ? ts.data() : nullptr,
                                           Traced<T>{ct}, use_s, i);
            });
            each_thread(n, seed, [&](size_t i) {
              mm::accumulate_first_element(acc_dev.data(), y.data(), bt, sp, ct, use_s, i);
            });
            ASSERT_TRUE(same_bits(acc_dev, acc, amb));
          }
}

TYPED_TEST(CudaMixingMath, AccumulateMatchesCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (double b : kScalars) {
        SCOPED_TRACE(::testing::Message() << "n = " << n << ", b = " << b << ", non_finite = " << non_finite);
        const uint64_t seed = n * 5 + 1;
        const auto y = awkward<T>(n, seed, non_finite);
        std::vector<T> acc = awkward<T>(n, seed + 1, non_finite), acc_dev = acc;
        mixing::accumulate<T>(acc.data(), y.data(), b, 0, n);
        const T bt = static_cast<T>(b);
        auto ta = traced(acc_dev), ty = traced(y);
        const auto amb = ambiguous_nans(
            n, [&](size_t i) { mm::accumulate_element(ta.data(), ty.data(), Traced<T>{bt}, i); });
        each_thread(n, seed, [&](size_t i) { mm::accumulate_element(acc_dev.data(), y.data(), bt, i); });
        ASSERT_TRUE(same_bits(acc_dev, acc, amb));
      }
}

TYPED_TEST(CudaMixingMath, ApplyMatchesCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (bool with_acc : {false, true})
        for (double a : kScalars)
          for (double g : {0.5, -0.0, 1e-3}) {
            SCOPED_TRACE(::testing::Message() << "n = " << n << ", acc = " << with_acc << ", a = " << a
                                              << ", g = " << g << ", non_finite = " << non_finite);
            const uint64_t seed = n * 17 + with_acc;
            const auto acc = awkward<T>(n, seed, non_finite);
            const T* ap = with_acc ? acc.data() : nullptr;
            std::vector<T> x = awkward<T>(n, seed + 1, non_finite), x_dev = x;
            mixing::apply<T>(x.data(), ap, a, g, 0, n);
            const T at = static_cast<T>(a), gt = static_cast<T>(g);
            const mm::ApplyForm form = mm::apply_form(ap, at);
            auto tx = traced(x_dev), ta = traced(acc);
            const auto amb = ambiguous_nans(n, [&](size_t i) {
              mm::apply_element(tx.data(), with_acc ? ta.data() : nullptr, Traced<T>{at}, Traced<T>{gt}, form,
                                i);
            });
            each_thread(n, seed, [&](size_t i) { mm::apply_element(x_dev.data(), ap, at, gt, form, i); });
            ASSERT_TRUE(same_bits(x_dev, x, amb));
          }
}

TYPED_TEST(CudaMixingMath, MixMatchesCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (size_t degree : {0, 1, 2, 4})
        for (bool snapshot : {false, true})
          for (double gamma : {1.0, 0.5, 1e-9}) {
            SCOPED_TRACE(::testing::Message()
                         << "n = " << n << ", degree = " << degree << ", snapshot = " << snapshot
                         << ", gamma = " << gamma << ", non_finite = " << non_finite);
            const uint64_t seed = n * 19 + degree * 2 + snapshot;
            topology::Row row;
            row.self_weight = 1.0 / (degree + 1);
            for (size_t j = 0; j < degree; ++j)
              row.in.push_back({static_cast<int>(j + 1), 1.0 / (degree + 1)});
            const mixing::Coefficients k = mixing::gossip_coefficients(row, gamma, snapshot);
            std::vector<std::vector<T>> ys;
            std::vector<const T*> yp;
            for (size_t j = 0; j < degree; ++j) ys.push_back(awkward<T>(n, seed + 10 + j, non_finite));
            for (const auto& y : ys) yp.push_back(y.data());
            const auto s = awkward<T>(n, seed + 1, non_finite);
            const T* sp = snapshot ? s.data() : nullptr;
            std::vector<T> x = awkward<T>(n, seed + 2, non_finite), x_dev = x;
            mixing::mix<T>(x.data(), sp, yp.data(), k, 0, n);
            // mixing.cu: one launch for the first term, then one per neighbour in order.
            const T a = static_cast<T>(k.a), c = static_cast<T>(k.c);
            const mm::MixForm form = mm::mix_form(sp, a, c);
            auto tx = traced(x_dev), ts = traced(s);
            auto amb = ambiguous_nans(n, [&](size_t i) {
              mm::mix_first_element(tx.data(), snapshot ? ts.data() : nullptr, Traced<T>{a}, Traced<T>{c},
                                    form, i);
            });
            each_thread(n, seed, [&](size_t i) { mm::mix_first_element(x_dev.data(), sp, a, c, form, i); });
            for (size_t j = 0; j < degree; ++j) {
              const T bj = static_cast<T>(k.b[j]);
              const auto ty = traced(ys[j]);
              const auto more = ambiguous_nans(
                  n, [&](size_t i) { mm::accumulate_element(tx.data(), ty.data(), Traced<T>{bj}, i); });
              for (size_t i = 0; i < n; ++i) amb[i] = amb[i] || more[i];  // a NaN's payload travels on
              each_thread(n, seed + j, [&](size_t i) { mm::accumulate_element(x_dev.data(), yp[j], bj, i); });
            }
            ASSERT_TRUE(same_bits(x_dev, x, amb));
          }
}

TYPED_TEST(CudaMixingMath, MixFormsAtTheCpusBranches) {
  using T = TypeParam;
  const T s = T(1);
  EXPECT_EQ(mm::mix_form<T>(&s, T(1), T(0)), mm::MixForm::kNothing);
  EXPECT_EQ(mm::mix_form<T>(&s, T(1), -T(0)), mm::MixForm::kNothing);
  EXPECT_EQ(mm::mix_form<T>(&s, T(2), T(0)), mm::MixForm::kScale);
  EXPECT_EQ(mm::mix_form<T>(nullptr, T(1), T(3)), mm::MixForm::kNothing);
  EXPECT_EQ(mm::mix_form<T>(&s, T(1), T(3)), mm::MixForm::kWithSnapshot);
  EXPECT_EQ(mm::apply_form<T>(nullptr, T(1)), mm::ApplyForm::kNothing);
  EXPECT_EQ(mm::apply_form<T>(nullptr, T(0)), mm::ApplyForm::kScale);
  EXPECT_EQ(mm::apply_form<T>(&s, T(1)), mm::ApplyForm::kAdd);
  EXPECT_EQ(mm::apply_form<T>(&s, T(0.5)), mm::ApplyForm::kAxpby);
  EXPECT_FALSE(mm::first_uses_s<T>(&s, -T(0)));
  EXPECT_FALSE(mm::first_uses_s<T>(nullptr, T(1)));
  EXPECT_TRUE(mm::first_uses_s<T>(&s, T(1)));
}

TYPED_TEST(CudaMixingMath, ChocoStepMatchesCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (double gamma : {1.0, 0.5, 0.0, -0.25, 1e300}) {
        SCOPED_TRACE(::testing::Message()
                     << "n = " << n << ", gamma = " << gamma << ", non_finite = " << non_finite);
        const uint64_t seed = n * 23 + 3;
        const auto s = awkward<T>(n, seed, non_finite), x_hat = awkward<T>(n, seed + 1, non_finite);
        std::vector<T> x = awkward<T>(n, seed + 2, non_finite), x_dev = x;
        mixing::choco_step<T>(x.data(), s.data(), x_hat.data(), gamma, 0, n);
        const T gt = static_cast<T>(gamma);
        auto tx = traced(x_dev), ts = traced(s), th = traced(x_hat);
        const auto amb = ambiguous_nans(
            n, [&](size_t i) { mm::choco_step_element(tx.data(), ts.data(), th.data(), Traced<T>{gt}, i); });
        each_thread(n, seed,
                    [&](size_t i) { mm::choco_step_element(x_dev.data(), s.data(), x_hat.data(), gt, i); });
        ASSERT_TRUE(same_bits(x_dev, x, amb));
      }
}

TYPED_TEST(CudaMixingMath, ChocoFinishMatchesCpu) {
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : testing::sizes())
      for (double gamma : {1.0, 0.5, 0.0, -0.25, 1e300}) {
        SCOPED_TRACE(::testing::Message()
                     << "n = " << n << ", gamma = " << gamma << ", non_finite = " << non_finite);
        const uint64_t seed = n * 29 + 7;
        const auto d = awkward<T>(n, seed, non_finite), acc = awkward<T>(n, seed + 1, non_finite);
        std::vector<T> x = awkward<T>(n, seed + 2, non_finite), s = awkward<T>(n, seed + 3, non_finite),
                       x_hat = awkward<T>(n, seed + 4, non_finite);
        std::vector<T> x_dev = x, s_dev = s, x_hat_dev = x_hat;
        mixing::choco_finish<T>(x.data(), s.data(), x_hat.data(), d.data(), acc.data(), gamma, 0, n);
        const T gt = static_cast<T>(gamma);
        auto tx = traced(x_dev), ts = traced(s_dev), th = traced(x_hat_dev), td = traced(d), ta = traced(acc);
        const auto amb = ambiguous_nans(n, [&](size_t i) {
          mm::choco_finish_element(tx.data(), ts.data(), th.data(), td.data(), ta.data(), Traced<T>{gt}, i);
        });
        each_thread(n, seed, [&](size_t i) {
          mm::choco_finish_element(x_dev.data(), s_dev.data(), x_hat_dev.data(), d.data(), acc.data(), gt, i);
        });
        ASSERT_TRUE(same_bits(x_hat_dev, x_hat, amb)) << "x_hat";
        ASSERT_TRUE(same_bits(s_dev, s, amb)) << "s";
        ASSERT_TRUE(same_bits(x_dev, x, amb)) << "x";
      }
}

}  // namespace
}  // namespace saddle::cuda
