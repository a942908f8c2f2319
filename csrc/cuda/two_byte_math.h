// fp16 and bf16 element conversions for the device, bit for bit those of core/codec/half.h (and so
// of F16C): integer arithmetic, plus one exact float add for fp16 subnormals. The kernels give one
// element to one thread: payload bytes [2i, 2i + 2) hold element i.
#pragma once

#include "cuda/host_device.h"

namespace saddle::cuda::two_byte {

// float -> binary16, round to nearest even; overflow gives ±inf, NaN stays NaN (quietened, top
// payload bits kept), as half::from_float and vcvtps2ph.
SADDLE_HD uint16_t fp16_from_float(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  if (ax >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7C00u);
  if (ax < 0x38800000u) {
    // Subnormal half or zero: |f| + 0.5 puts the 10 result bits at the bottom of the mantissa and
    // the add rounds them to nearest even. A float denormal |f| < 2^-126 rounds away either way,
    // so flush-to-zero could not change this line.
    const float shifted = add_rn(bits_float(ax), 0.5f);
    return static_cast<uint16_t>(sign | (float_bits(shifted) - 0x3F000000u));
  }
  const uint32_t rounded = ax + 0xC8000FFFu + ((ax >> 13) & 1u);
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

// binary16 -> float, exact; NaN is quietened as vcvtph2ps does.
SADDLE_HD float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  if (em >= 0x7C00u) {
    const uint32_t mant = (em & 0x3FFu) << 13;
    return bits_float(sign | 0x7F800000u | mant | (mant ? 0x00400000u : 0u));
  }
  if (em >= 0x0400u) return bits_float(sign | ((em + 0x1C000u) << 13));
  // em · 2^-24 is exact and a normal float (>= 2^-24), so flush-to-zero cannot touch it either.
  return bits_float(sign | float_bits(mul_rn(static_cast<float>(em), 5.9604644775390625e-08f)));
}

// float -> bfloat16, round to nearest even; NaN stays NaN (quiet bit set).
SADDLE_HD uint16_t bf16_from_float(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
}

SADDLE_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

// The formats, as the kernels' template argument.
struct Fp16 {
  SADDLE_HD static uint16_t encode(float f) { return fp16_from_float(f); }
  SADDLE_HD static float decode(uint16_t h) { return fp16_to_float(h); }
};

struct Bf16 {
  SADDLE_HD static uint16_t encode(float f) { return bf16_from_float(f); }
  SADDLE_HD static float decode(uint16_t h) { return bf16_to_float(h); }
};

// Thread i of the encode kernel.
template <typename F>
SADDLE_HD void encode_element(const float* x, size_t i, uint8_t* payload) {
  store_u16(payload + 2 * i, F::encode(x[i]));
}

// Thread i of the decode kernel: out[i] = value, or out[i] += alpha · value.
template <typename F>
SADDLE_HD void decode_element(const uint8_t* payload, size_t i, float alpha, float* out, bool accumulate) {
  put(out + i, F::decode(load_u16(payload + 2 * i)), alpha, accumulate);
}

}  // namespace saddle::cuda::two_byte
