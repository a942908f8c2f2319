// Device SAM and QGM steps (cuda/optim.h) against core/optim on a real GPU: perturb, restore and both
// QGM steps bit for bit; the norm bit for bit equal to its host emulation (the fixed tree of
// cuda/sam_math.h) and within its rounding bound of the CPU. Skips where no CUDA device is visible.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../cpp/cuda_norm_reference.h"
#include "../cpp/cuda_test_values.h"
#include "core/optim/qgm.h"
#include "core/optim/sam.h"
#include "cuda/optim.h"
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
class CudaOptimDevice : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CudaOptimDevice, Types);

std::vector<size_t> device_sizes() { return {1, 7, 257, 5003, 65537, (size_t{1} << 20) + 3}; }

template <typename T>
std::vector<T> run(const std::vector<T>& host, DeviceBuffer<T>& d) {
  SADDLE_CUDA_CHECK(cudaDeviceSynchronize(), "kernel");
  auto v = d.download();
  v.resize(host.size());
  return v;
}

TYPED_TEST(CudaOptimDevice, SamMatchesCpu) {
  SADDLE_REQUIRE_GPU();
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : device_sizes())
      for (bool adaptive : {false, true})
        for (double scale : {0.05, -0.375, 3e38}) {
          SCOPED_TRACE(::testing::Message() << "n = " << n << ", adaptive = " << adaptive
                                            << ", scale = " << scale << ", non_finite = " << non_finite);
          const auto g = awkward<T>(n, n + 1, non_finite);
          std::vector<T> x = awkward<T>(n, n + 2, non_finite), e(n, T(7));
          DeviceBuffer<T> dg(n), dx(n), de(n);
          dg.upload(g);
          dx.upload(x);
          de.upload(e);
          saddle::optim::sam_perturb<T>(x.data(), g.data(), e.data(), scale, adaptive, 0, n);
          cuda::optim::sam_perturb<T>(dx.ptr, dg.ptr, de.ptr, scale, adaptive, n, nullptr);
          ASSERT_TRUE(matches(run(e, de), e, non_finite)) << "e";
          ASSERT_TRUE(matches(run(x, dx), x, non_finite)) << "x";
          saddle::optim::sam_restore<T>(x.data(), e.data(), 0, n);
          cuda::optim::sam_restore<T>(dx.ptr, de.ptr, n, nullptr);
          ASSERT_TRUE(matches(run(x, dx), x, non_finite)) << "restore";
        }
}

TYPED_TEST(CudaOptimDevice, QgmMatchesCpu) {
  SADDLE_REQUIRE_GPU();
  using T = TypeParam;
  for (bool non_finite : {false, true})
    for (size_t n : device_sizes())
      for (bool nesterov : {true, false}) {
        SCOPED_TRACE(::testing::Message()
                     << "n = " << n << ", nesterov = " << nesterov << ", non_finite = " << non_finite);
        const saddle::optim::QgmOptions o{0.9, 5e-4, nesterov};
        const auto m = awkward<T>(n, n + 3, non_finite), x = awkward<T>(n, n + 4, non_finite);
        std::vector<T> g = awkward<T>(n, n + 5, non_finite);
        DeviceBuffer<T> dm(n), dx(n), dg(n);
        dm.upload(m);
        dx.upload(x);
        dg.upload(g);
        saddle::optim::qgm_direction<T>(g.data(), m.data(), x.data(), o, 0, n);
        cuda::optim::qgm_direction<T>(dg.ptr, dm.ptr, dx.ptr, o, n, nullptr);
        ASSERT_TRUE(matches(run(g, dg), g, non_finite)) << "direction";
        // m̂ ← μ·m̂ + (1−μ)(x_prev − x)/η with g as x_prev.
        std::vector<T> m_cpu = m;
        saddle::optim::qgm_buffer_update<T>(m_cpu.data(), g.data(), x.data(), 0.9, 0.1, 0, n);
        cuda::optim::qgm_buffer_update<T>(dm.ptr, dg.ptr, dx.ptr, 0.9, 0.1, n, nullptr);
        ASSERT_TRUE(matches(run(m_cpu, dm), m_cpu, non_finite)) << "buffer";
      }
  EXPECT_THROW(cuda::optim::qgm_buffer_update<T>(nullptr, nullptr, nullptr, 0.9, 0.0, 0, nullptr),
               std::invalid_argument);
}

TYPED_TEST(CudaOptimDevice, NormIsTheFixedTreeAndNearTheCpu) {
  SADDLE_REQUIRE_GPU();
  using T = TypeParam;
  const double u = std::ldexp(1.0, -53);
  std::vector<size_t> sizes = device_sizes();
  sizes.push_back(size_t{25} << 20);  // 6,400 tiles: several per thread in the final kernel
  for (size_t n : sizes)
    for (bool adaptive : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << ", adaptive = " << adaptive);
      auto g = awkward<T>(n, n + 6), x = awkward<T>(n, n + 7);
      for (auto* v : {&g, &x})
        for (auto& e : *v)
          if (std::fabs(e) > T(1e30)) e = std::copysign(T(1e30), e);
      const T* xp = adaptive ? x.data() : nullptr;
      DeviceBuffer<T> dg(n), dx(n);
      DeviceBuffer<double> work(cuda::optim::sam_norm_workspace(n) + 1), out(1);
      dg.upload(g);
      dx.upload(x);
      cuda::optim::sam_norm_sq<T>(dg.ptr, adaptive ? dx.ptr : nullptr, n, work.ptr, out.ptr, nullptr);
      SADDLE_CUDA_CHECK(cudaDeviceSynchronize(), "norm");
      const double dev = out.download()[0];
      ASSERT_EQ(testing::bits(dev), testing::bits(testing::emulated_device_norm(g.data(), xp, n)));
      const double cpu = saddle::optim::sam_norm_sq<T>(g.data(), xp, 0, n);
      const double k = static_cast<double>(n + testing::device_norm_depth(n));
      ASSERT_LE(std::fabs(dev - cpu), k * u * cpu / ((1 - k * u) * (1 - k * u)));
    }
}

}  // namespace
}  // namespace saddle::cuda
