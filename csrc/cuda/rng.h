// The counter-based draws of core/codec/rng.h for the device: the same (seed, block, element) gives
// the same 32 bits on either side, so the stochastic rounding of qsgd is reproduced per element.
#pragma once

#include "cuda/host_device.h"

namespace saddle::cuda::rng {

SADDLE_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

SADDLE_HD uint64_t block_key(uint64_t seed, uint64_t block) { return splitmix64(splitmix64(seed) ^ block); }

SADDLE_HD uint32_t draw32(uint64_t key, uint32_t i) {
  uint32_t x = i * 0x9E3779B1u + static_cast<uint32_t>(key);
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x ^ static_cast<uint32_t>(key >> 32);
}

}  // namespace saddle::cuda::rng
