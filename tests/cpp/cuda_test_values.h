// Inputs and bit comparisons shared by the host tests of the device optimizer and mixing arithmetic
// (cuda_optim_math_test.cpp, cuda_mixing_math_test.cpp): awkward float/double vectors and an
// emulated one-element-per-thread launch.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/host_device.h"

namespace saddle::cuda::testing {

template <typename T>
using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

template <typename T>
Bits<T> bits(T v) {
  Bits<T> u;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}

// Sizes around the vector widths (4, 8), the launch block (256) and the CPU's 2048-element mix block.
inline std::vector<size_t> sizes() { return {1, 2, 3, 7, 8, 9, 15, 16, 17, 255, 256, 257, 2047, 2049, 5003}; }

// Normal values, with zeros, -0, ±1, denormals, tiny and huge magnitudes (products overflow and
// underflow); with `non_finite` also ±inf and quiet and signalling NaNs of both signs and random
// payloads.
template <typename T>
std::vector<T> awkward(size_t n, uint64_t seed, bool non_finite = false) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<T> normal;
  const T inf = std::numeric_limits<T>::infinity();
  const T denorm = std::numeric_limits<T>::denorm_min();
  const T big = std::numeric_limits<T>::max() / T(4);
  std::vector<T> x(n);
  for (auto& v : x) {
    switch (rng() % (non_finite ? 16 : 12)) {
      case 0:
        v = T(0);
        break;
      case 1:
        v = -T(0);
        break;
      case 2:
        v = rng() % 2 ? T(1) : T(-1);
        break;
      case 3:
        v = normal(rng) * denorm * T(1000);
        break;
      case 4:
        v = normal(rng) * std::numeric_limits<T>::min();
        break;
      case 5:
        v = normal(rng) * big;
        break;
      case 6:
        v = normal(rng) * T(1e-3);
        break;
      case 12:
        v = rng() % 2 ? inf : -inf;
        break;
      case 13:
      case 14:
      case 15: {
        using B = Bits<T>;
        const int mant = std::numeric_limits<T>::digits - 1;
        const B exp = ((B{1} << (8 * sizeof(T) - 1 - mant)) - 1) << mant;
        const B payload = static_cast<B>(1 + rng() % ((B{1} << mant) - 1));
        const B sign = rng() % 2 ? B{1} << (8 * sizeof(T) - 1) : B{0};
        const B u = sign | exp | payload;
        std::memcpy(&v, &u, sizeof(T));
        break;
      }
      default:
        v = normal(rng);
    }
  }
  return x;
}

// The kernels give element i to one thread and no element depends on another, so the order of the
// threads must not matter: run f(i) for every i in a shuffled order.
template <typename F>
void each_thread(size_t n, uint64_t seed, const F& f) {
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  for (size_t i : order) f(i);
}

// Where two NaNs of different bits meet in one addition or multiplication, x86 returns the first
// operand, and which one is first in the CPU's code is the compiler's choice (these operations
// commute; GCC 12 at -O3 swaps some). Traced<T> runs an element function once more on the host
// with add_rn and mul_rn that note such a meeting (found by ADL), so a test can tell those elements
// (NaN on both sides, payload unspecified) from all others (same bits required). Subtraction does
// not commute: its first operand is fixed, and its NaN is compared.
template <typename T>
struct Traced {
  T v;
};

inline bool& two_nans_met() {
  static bool met = false;
  return met;
}

template <typename T>
Traced<T> add_rn(Traced<T> a, Traced<T> b) {
  if (std::isnan(a.v) && std::isnan(b.v) && bits(a.v) != bits(b.v)) two_nans_met() = true;
  return {::saddle::cuda::add_rn(a.v, b.v)};
}

template <typename T>
Traced<T> mul_rn(Traced<T> a, Traced<T> b) {
  if (std::isnan(a.v) && std::isnan(b.v) && bits(a.v) != bits(b.v)) two_nans_met() = true;
  return {::saddle::cuda::mul_rn(a.v, b.v)};
}

template <typename T>
Traced<T> sub_rn(Traced<T> a, Traced<T> b) {
  return {::saddle::cuda::sub_rn(a.v, b.v)};
}

template <typename T>
std::vector<Traced<T>> traced(const std::vector<T>& v) {
  std::vector<Traced<T>> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i].v = v[i];
  return out;
}

// Elements i for which f(i) (an element function over Traced copies of the inputs) meets two NaNs.
template <typename F>
std::vector<bool> ambiguous_nans(size_t n, const F& f) {
  std::vector<bool> out(n);
  for (size_t i = 0; i < n; ++i) {
    two_nans_met() = false;
    f(i);
    out[i] = two_nans_met();
  }
  return out;
}

// Whether a and b hold the same bits; otherwise the first difference, in hex. Where `ambiguous`
// marks an element (two NaNs met there), both must be NaN and the payload is not compared.
template <typename T>
::testing::AssertionResult same_bits(const std::vector<T>& device, const std::vector<T>& cpu,
                                     const std::vector<bool>& ambiguous) {
  if (device.size() != cpu.size() || ambiguous.size() != cpu.size())
    return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (ambiguous[i] && std::isnan(device[i]) && std::isnan(cpu[i])) continue;
    if (bits(device[i]) != bits(cpu[i])) {
      std::ostringstream out;
      out << "element " << i << " of " << cpu.size() << (ambiguous[i] ? " (two NaNs met)" : "") << ": device "
          << std::hex << bits(device[i]) << " (" << device[i] << "), cpu " << bits(cpu[i]) << " (" << cpu[i]
          << ")";
      return ::testing::AssertionFailure() << out.str();
    }
  }
  return ::testing::AssertionSuccess();
}

// The device tests' comparison for non-finite input: same bits, or NaN on both sides (they do not
// trace where two NaNs meet; the host tests do, and compare every other payload).
template <typename T>
::testing::AssertionResult same_bits_or_nans(const std::vector<T>& device, const std::vector<T>& cpu) {
  return same_bits(device, cpu, std::vector<bool>(cpu.size(), true));
}

// Whether a and b hold the same bits; otherwise the first difference, in hex.
template <typename T>
::testing::AssertionResult same_bits(const std::vector<T>& device, const std::vector<T>& cpu) {
  if (device.size() != cpu.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (bits(device[i]) != bits(cpu[i])) {
      std::ostringstream out;
      out << "element " << i << " of " << cpu.size() << ": device " << std::hex << bits(device[i]) << " ("
          << device[i] << "), cpu " << bits(cpu[i]) << " (" << cpu[i] << ")";
      return ::testing::AssertionFailure() << out.str();
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace saddle::cuda::testing
