// sign(block) for the device, bit for bit as core/codec/sign.cpp.
//
// The scale is mean |v| of the block, summed by the CPU in a fixed order: lane r (r < 8) adds the
// elements i ≡ r (mod 8) one after the other, then the lanes are added in a fixed tree. Float
// addition is not associative, so the device keeps that order: one thread per lane. Encode runs one
// CUDA block of T >= 8 threads per codec block j:
//   1. threads r < 8: lanes[r] = lane_abs_sum(x_j, len, r)   (len/8 sequential adds each)
//   2. scale = block_scale(lanes, len); thread 0 stores it at payload[4j]
//   3. thread t: sign bytes q = t, t + T, ... of the block: sign_byte(...)
// Decode gives one element to one thread.
#pragma once

#include "cuda/block_layout.h"
#include "cuda/host_device.h"

namespace saddle::cuda::sign {

constexpr unsigned kLanes = 8;

// Step 1: lane r's sum of |x_i|, i = r, r + 8, ... < len, in increasing i.
SADDLE_HD float lane_abs_sum(const float* xb, size_t len, unsigned r) {
  float acc = 0.0f;
  for (size_t i = r; i < len; i += kLanes) acc = add_rn(acc, abs_bits(xb[i]));
  return acc;
}

// Step 2: the CPU's reduce8, then the mean.
SADDLE_HD float block_scale(const float* lanes, size_t len) {
  const float sum = add_rn(add_rn(add_rn(lanes[0], lanes[1]), add_rn(lanes[2], lanes[3])),
                           add_rn(add_rn(lanes[4], lanes[5]), add_rn(lanes[6], lanes[7])));
  return div_rn(sum, static_cast<float>(len));
}

// Step 3: bit r of byte q is x[8q + r] < 0 (NaN and -0 give 0); padding bits zero.
SADDLE_HD uint8_t sign_byte(const float* xb, size_t len, size_t q) {
  unsigned byte = 0;
  for (size_t r = 0; r < 8 && 8 * q + r < len; ++r) byte |= (xb[8 * q + r] < 0.0f ? 1u : 0u) << r;
  return static_cast<uint8_t>(byte);
}

// Element i of the message: ±scale by flipping the sign bit (the CPU does not multiply either).
SADDLE_HD float decode_value(const uint8_t* payload, const BlockLayout& layout, size_t i) {
  const uint32_t scale = float_bits(load_f32(payload + 4 * (i / layout.block)));
  const uint32_t negative = (payload[4 * layout.blocks() + i / 8] >> (i % 8)) & 1u;
  return bits_float(scale ^ (negative << 31));
}

}  // namespace saddle::cuda::sign
