// What the device codecs and their host tests share: one source that nvcc compiles for the GPU and
// the C++ compiler for the host, so tests/cpp runs the kernels' own arithmetic (no GPU needed).
//
// Float arithmetic goes through add_rn, sub_rn, mul_rn and div_rn below, never through bare
// operators, because the bytes must match the CPU codecs (x86 SSE/AVX rounding and NaN rules):
//   - on the device they are __fadd_rn etc.: IEEE round to nearest even, never contracted into an
//     FMA and with IEEE division, whatever -fmad and -prec-div say;
//   - a NaN result is rewritten as x86 produces it: the NaN operand, quietened (the first one when
//     both are NaN), or x86's default NaN 0xFFC00000 for an invalid operation (inf·0, inf − inf),
//     where the GPU would give its canonical 0x7FFFFFFF.
// Denormals matter (qsgd scales |v|·s/scale up from them, sign sums them), so device code must be
// built without flush-to-zero: CMakeLists.txt passes -ftz=false, and fast math is refused below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__USE_FAST_MATH__)
#error "csrc/cuda must not be built with --use_fast_math: it flushes denormals and changes the bytes"
#endif

#if defined(__CUDACC__)
#define SADDLE_HD __host__ __device__ __forceinline__
#else
#define SADDLE_HD inline
#endif

namespace saddle::cuda {

SADDLE_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

SADDLE_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// x86's "real indefinite": the NaN an invalid operation yields.
constexpr uint32_t kDefaultNanBits = 0xFFC00000u;
constexpr uint32_t kQuietBit = 0x00400000u;

// By bits, so that no compiler flag can fold it away.
SADDLE_HD bool is_nan(float f) { return (float_bits(f) & 0x7FFFFFFFu) > 0x7F800000u; }

// |f| by clearing the sign bit, as the CPU's fabs (andps) does, NaN payload included.
SADDLE_HD float abs_bits(float f) { return bits_float(float_bits(f) & 0x7FFFFFFFu); }

// What x86 returns for an operation on a and b whose result is NaN.
SADDLE_HD float x86_nan(float a, float b) {
  if (is_nan(a)) return bits_float(float_bits(a) | kQuietBit);
  if (is_nan(b)) return bits_float(float_bits(b) | kQuietBit);
  return bits_float(kDefaultNanBits);
}

SADDLE_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  const float r = __fadd_rn(a, b);
#else
  const float r = a + b;
#endif
  return is_nan(r) ? x86_nan(a, b) : r;
}

SADDLE_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  const float r = __fsub_rn(a, b);
#else
  const float r = a - b;
#endif
  return is_nan(r) ? x86_nan(a, b) : r;
}

SADDLE_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  const float r = __fmul_rn(a, b);
#else
  const float r = a * b;
#endif
  return is_nan(r) ? x86_nan(a, b) : r;
}

SADDLE_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  const float r = __fdiv_rn(a, b);
#else
  const float r = a / b;
#endif
  return is_nan(r) ? x86_nan(a, b) : r;
}

// ---- The same for double (the optimizer and mixing kernels run on float64 buffers too) ----

SADDLE_HD uint64_t double_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
#endif
}

SADDLE_HD double bits_double(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  std::memcpy(&d, &u, 8);
  return d;
#endif
}

constexpr uint64_t kDefaultNanBits64 = 0xFFF8000000000000ull;
constexpr uint64_t kQuietBit64 = 0x0008000000000000ull;

SADDLE_HD bool is_nan(double d) { return (double_bits(d) & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull; }

SADDLE_HD double x86_nan(double a, double b) {
  if (is_nan(a)) return bits_double(double_bits(a) | kQuietBit64);
  if (is_nan(b)) return bits_double(double_bits(b) | kQuietBit64);
  return bits_double(kDefaultNanBits64);
}

SADDLE_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  const double r = __dadd_rn(a, b);
#else
  const double r = a + b;
#endif
  return is_nan(r) ? x86_nan(a, b) : r;
}

SADDLE_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  const double r = __dsub_rn(a, b);
#else
  const double r = a - b;
#endif
  return is_nan(r) ? x86_nan(a, b) : r;
}

SADDLE_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  const double r = __dmul_rn(a, b);
#else
  const double r = a * b;
#endif
  return is_nan(r) ? x86_nan(a, b) : r;
}

// Little-endian byte access: a payload starts 48 bytes into a message of any alignment.
SADDLE_HD void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

SADDLE_HD uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<unsigned>(p[1]) << 8));
}

SADDLE_HD void store_f32(uint8_t* p, float f) {
  const uint32_t u = float_bits(f);
  for (int b = 0; b < 4; ++b) p[b] = static_cast<uint8_t>(u >> (8 * b));
}

SADDLE_HD float load_f32(const uint8_t* p) {
  uint32_t u = 0;
  for (int b = 0; b < 4; ++b) u |= static_cast<uint32_t>(p[b]) << (8 * b);
  return bits_float(u);
}

// out = v (decode) or out = out + alpha·v (decode_add), rounded as the CPU codecs round.
SADDLE_HD void put(float* out, float v, float alpha, bool accumulate) {
  *out = accumulate ? add_rn(*out, mul_rn(alpha, v)) : v;
}

}  // namespace saddle::cuda
