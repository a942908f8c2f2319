// Device mixing (cuda/mixing.h) against core/mixing on a real GPU, bit for bit: accumulate_first,
// accumulate, apply, mix, choco_step and choco_finish, float and double, finite and non-finite
// inputs. Skips where no CUDA device is visible.
#include <gtest/gtest.h>

#include <vector>

#include "../cpp/cuda_test_values.h"
#include "core/mixing.h"
#include "core/topology/topology.h"
#include "cuda/mixing.h"
#include "device_buffer.h"

namespace saddle::cuda {
namespace {

using testing::awkward;
using testing::DeviceBuffer;
using testing::same_bits;

// Finite input: bit for bit. Non-finite: NaN payloads where two NaNs meet are unspecified
// (docs/cuda_kernels.md); tests/cpp checks every other payload.
template <typename T>
::testing::AssertionResult matches(const std::vector<T>& device, const std::vector<T>& cpu, bool non_finite) {
  return non_finite ? testing::same_bits_or_nans(device, cpu) : same_bits(device, cpu);
}

template <typename T>
class CudaMixingDevice : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CudaMixingDevice, Types);

template <typename T>
std::vector<T> fetch(const DeviceBuffer<T>& d, size_t n) {
  SADDLE_CUDA_CHECK(cudaDeviceSynchronize(), "kernel");
  auto v = d.download();
  v.resize(n);
  return v;
}

template <typename T>
struct Dev {
  explicit Dev(const std::vector<T>& v) : buf(v.size()) { buf.upload(v); }
  DeviceBuffer<T> buf;
};

TYPED_TEST(CudaMixingDevice, MatchesCpu) {
  SADDLE_REQUIRE_GPU();
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : {size_t{1}, size_t{257}, size_t{5003}, (size_t{1} << 20) + 3, size_t{25} << 20}) {
      if (non_finite && n > (size_t{1} << 21)) continue;
      SCOPED_TRACE(::testing::Message() << "n = " << n << ", non_finite = " << non_finite);
      const auto y = awkward<T>(n, n + 1, non_finite), s = awkward<T>(n, n + 2, non_finite);
      std::vector<T> acc(n, T(99));
      Dev<T> dy(y), ds(s), dacc(acc);
      for (double c : {0.0, -0.75}) {
        saddle::mixing::accumulate_first<T>(acc.data(), y.data(), 0.25, s.data(), c, 0, n);
        cuda::mixing::accumulate_first<T>(dacc.buf.ptr, dy.buf.ptr, 0.25, ds.buf.ptr, c, n, nullptr);
        ASSERT_TRUE(matches(fetch(dacc.buf, n), acc, non_finite)) << "accumulate_first, c = " << c;
      }
      saddle::mixing::accumulate<T>(acc.data(), s.data(), 1.0 / 3.0, 0, n);
      cuda::mixing::accumulate<T>(dacc.buf.ptr, ds.buf.ptr, 1.0 / 3.0, n, nullptr);
      ASSERT_TRUE(matches(fetch(dacc.buf, n), acc, non_finite)) << "accumulate";

      std::vector<T> x = awkward<T>(n, n + 3, non_finite);
      Dev<T> dx(x);
      for (double a : {1.0, 0.5, 1.0 - 1e-9}) {
        for (bool with_acc : {true, false}) {
          saddle::mixing::apply<T>(x.data(), with_acc ? acc.data() : nullptr, a, 0.5, 0, n);
          cuda::mixing::apply<T>(dx.buf.ptr, with_acc ? dacc.buf.ptr : nullptr, a, 0.5, n, nullptr);
          ASSERT_TRUE(matches(fetch(dx.buf, n), x, non_finite))
              << "apply, a = " << a << ", acc = " << with_acc;
        }
      }

      for (bool snapshot : {false, true}) {
        topology::Row row;
        row.self_weight = 0.25;
        for (int j = 1; j <= 3; ++j) row.in.push_back({j, 0.25});
        const auto k = saddle::mixing::gossip_coefficients(row, 0.5, snapshot);
        const std::vector<const T*> yh = {y.data(), s.data(), acc.data()};
        const std::vector<const T*> yd = {dy.buf.ptr, ds.buf.ptr, dacc.buf.ptr};
        saddle::mixing::mix<T>(x.data(), snapshot ? s.data() : nullptr, yh.data(), k, 0, n);
        cuda::mixing::mix<T>(dx.buf.ptr, snapshot ? ds.buf.ptr : nullptr, yd.data(), k, n, nullptr);
        ASSERT_TRUE(matches(fetch(dx.buf, n), x, non_finite)) << "mix, snapshot = " << snapshot;
      }

      saddle::mixing::choco_step<T>(x.data(), s.data(), y.data(), 0.5, 0, n);
      cuda::mixing::choco_step<T>(dx.buf.ptr, ds.buf.ptr, dy.buf.ptr, 0.5, n, nullptr);
      ASSERT_TRUE(matches(fetch(dx.buf, n), x, non_finite)) << "choco_step";

      std::vector<T> s2 = s, x_hat = awkward<T>(n, n + 4, non_finite);
      const auto d = awkward<T>(n, n + 5, non_finite);
      Dev<T> ds2(s2), dh(x_hat), dd(d);
      saddle::mixing::choco_finish<T>(x.data(), s2.data(), x_hat.data(), d.data(), acc.data(), 0.25, 0, n);
      cuda::mixing::choco_finish<T>(dx.buf.ptr, ds2.buf.ptr, dh.buf.ptr, dd.buf.ptr, dacc.buf.ptr, 0.25, n,
                                    nullptr);
      ASSERT_TRUE(matches(fetch(dh.buf, n), x_hat, non_finite)) << "choco_finish x_hat";
      ASSERT_TRUE(matches(fetch(ds2.buf, n), s2, non_finite)) << "choco_finish s";
      ASSERT_TRUE(matches(fetch(dx.buf, n), x, non_finite)) << "choco_finish x";
    }
}

}  // namespace
}  // namespace saddle::cuda
