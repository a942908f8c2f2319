// qsgd(bits, block) for the device, bit for bit as core/codec/qsgd.cpp (its portable kernel, which
// the AVX2 one equals for finite input).
//
// Encode runs one CUDA block of T threads (T a power of two) per codec block j:
//   1. thread t: partial[t] = max_abs_partial(x_j, len, t, T)
//   2. tree:     partial[t] = max_combine(partial[t], partial[t + h]) for t < h, h = T/2, ..., 1
//   3. scale = block_scale(partial[0]); thread 0 stores it at payload[4j]
//   4. thread t: code bytes q = t, t + T, ... of the block: encode_byte(...)
// The max of non-negative, non-NaN floats does not depend on the order it is taken in, and the CPU
// skips NaN (a > m ? a : m) exactly as max_combine does, so step 2 equals the CPU's serial scan.
// Each code depends only on (x[i], scale, seed, j, i): the draw is rng::draw32(block_key(seed, j),
// i), a counter, so nothing is sequential. Decode gives one element to one thread.
#pragma once

#include <cmath>

#include "cuda/block_layout.h"
#include "cuda/host_device.h"
#include "cuda/rng.h"

namespace saddle::cuda::qsgd {

// Smallest block scale that is sent, as the CPU codec's kMinScale.
constexpr float kMinScale = 1e-35f;

SADDLE_HD int levels(int bits) { return (1 << (bits - 1)) - 1; }

SADDLE_HD float max_combine(float m, float a) { return a > m ? a : m; }

// Step 1: max |x| over elements t, t + T, ... of a block of `len` (0 when none; NaN skipped).
SADDLE_HD float max_abs_partial(const float* xb, size_t len, unsigned t, unsigned T) {
  float m = 0.0f;
  for (size_t i = t; i < len; i += T) m = max_combine(m, abs_bits(xb[i]));
  return m;
}

// Step 3: below kMinScale, s/scale may overflow, so such a block is sent as zeros.
SADDLE_HD float block_scale(float max_abs) { return max_abs >= kMinScale ? max_abs : 0.0f; }

SADDLE_HD float inverse_scale(float scale, float s) { return scale > 0.0f ? div_rn(s, scale) : 0.0f; }

// Code (level + s) of v, element i of its block: the CPU's quantize(). t >= 0 and the clamp sends
// NaN to s, so the conversion to int is always in range.
SADDLE_HD unsigned code(float v, float inv, float s, uint64_t key, uint32_t i) {
  float t = mul_rn(abs_bits(v), inv);
  t = t < s ? t : s;
  const float lower = floorf(t);
  const float u = mul_rn(static_cast<float>(rng::draw32(key, i) >> 8), 0x1p-24f);
  const int level = static_cast<int>(lower) + (u < sub_rn(t, lower) ? 1 : 0);
  const int si = static_cast<int>(s);
  return static_cast<unsigned>(v < 0.0f ? si - level : si + level);
}

// Step 4: code byte q of a block of `len` elements at xb, 8/bits codes per byte, padding bits zero.
SADDLE_HD uint8_t encode_byte(const float* xb, size_t len, size_t q, int bits, float inv, float s,
                              uint64_t key) {
  const size_t per_byte = 8 / bits;
  unsigned byte = 0;
  for (size_t r = 0; r < per_byte; ++r) {
    const size_t i = q * per_byte + r;
    if (i >= len) break;
    byte |= code(xb[i], inv, s, key, static_cast<uint32_t>(i)) << (r * bits);
  }
  return static_cast<uint8_t>(byte);
}

// Element i of the message: scale · (code − s) / s, as the CPU's decode (step = scale / s first).
SADDLE_HD float decode_value(const uint8_t* payload, const BlockLayout& layout, size_t i) {
  const int s = levels(layout.bits);
  const float step = div_rn(load_f32(payload + 4 * (i / layout.block)), static_cast<float>(s));
  const size_t bit = i * layout.bits;
  const unsigned c = (payload[4 * layout.blocks() + bit / 8] >> (bit % 8)) & ((1u << layout.bits) - 1);
  return mul_rn(static_cast<float>(static_cast<int>(c) - s), step);
}

}  // namespace saddle::cuda::qsgd
