// Portable IEEE binary16 / bfloat16 conversions, bit-identical to F16C (round to nearest even).
#pragma once

#include <cstdint>
#include <cstring>

namespace saddle::codec::half {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// float -> binary16, round to nearest even; overflow gives ±inf, NaN stays NaN (quietened, top
// payload bits kept) as vcvtps2ph does.
inline uint16_t from_float(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  if (ax >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 2^16 (and inf)
  if (ax < 0x38800000u) {
    // Result is subnormal or zero: adding 0.5 aligns the 10 mantissa bits at the bottom, and the
    // FPU's round-to-nearest-even does the rounding (Giesen's float_to_half_fast3_rtne).
    const float shifted = bits_float(ax) + 0.5f;
    return static_cast<uint16_t>(sign | (float_bits(shifted) - 0x3F000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even; a carry
  // into the exponent (up to inf at 65520) is the correct result.
  const uint32_t rounded = ax + 0xC8000FFFu + ((ax >> 13) & 1u);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

// binary16 -> float, exact; NaN is quietened as vcvtph2ps does.
inline float to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  if (em >= 0x7C00u) {
    const uint32_t mant = (em & 0x3FFu) << 13;
    return bits_float(sign | 0x7F800000u | mant | (mant ? 0x00400000u : 0u));
  }
  if (em >= 0x0400u) return bits_float(sign | ((em + 0x1C000u) << 13));
  // Subnormal or zero: em · 2^-24 is exact in float.
  return bits_float(sign | float_bits(static_cast<float>(em) * 5.9604644775390625e-08f));
}

// float -> bfloat16, round to nearest even; NaN stays NaN (quiet bit set).
inline uint16_t bf16_from_float(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
}

inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

}  // namespace saddle::codec::half
