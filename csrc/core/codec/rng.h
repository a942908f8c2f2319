// Small counter-based random numbers: the same (seed, block, element) always gives the same draw,
// so codec output does not depend on how work is split across threads.
#pragma once

#include <cstdint>

namespace saddle::codec::rng {

// SplitMix64 finaliser (Steele et al. 2014): a bijective 64-bit mixer.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Key of one block of one message: independent streams per (seed, block).
inline uint64_t block_key(uint64_t seed, uint64_t block) { return splitmix64(splitmix64(seed) ^ block); }

// 32-bit draw for element i of a block (lowbias32 by C. Wellons, a bijective mixer on 32 bits):
// only 32-bit multiplies, so it vectorises on AVX2.
inline uint32_t draw32(uint64_t key, uint32_t i) {
  uint32_t x = i * 0x9E3779B1u + static_cast<uint32_t>(key);
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x ^ static_cast<uint32_t>(key >> 32);
}

// Sequential generator (SplitMix64 stream) for the few codecs that draw serially (randk).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform integer in [0, bound), exactly unbiased (Lemire 2019, multiply-and-reject). bound > 0.
  uint64_t below(uint64_t bound) {
    __uint128_t m = static_cast<__uint128_t>(next()) * bound;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < bound) {
      const uint64_t threshold = (0 - bound) % bound;
      while (low < threshold) {
        m = static_cast<__uint128_t>(next()) * bound;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

 private:
  uint64_t state_;
};

}  // namespace saddle::codec::rng
