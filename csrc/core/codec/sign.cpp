// sign codec (1-bit, signSGD with a scale): per block, mean|v| · sign(v). Biased; a contraction
// with ||C(x) − x||² = ||x||² − Σ_b ||x_b||₁² / |b|.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/codec/buffer.h"
#include "core/codec/codecs.h"
#include "core/codec/simd.h"

#if SADDLE_CODEC_X86
#include <immintrin.h>
#endif

namespace saddle::codec {
namespace {

// Sum over the 8 lanes in a fixed tree order; lane j holds the elements i with i mod 8 == j, so the
// portable and AVX2 kernels add in exactly the same order.
inline float reduce8(const float* lanes) {
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

float abs_sum_portable(const float* x, size_t len) {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (size_t j = 0; j < 8; ++j) lanes[j] += std::fabs(x[i + j]);
  for (; i < len; ++i) lanes[i % 8] += std::fabs(x[i]);
  return reduce8(lanes);
}

// Bit i of the result is x[i] < 0, for len <= 8.
inline uint8_t sign_byte(const float* x, size_t len) {
  unsigned byte = 0;
  for (size_t i = 0; i < len; ++i) byte |= (x[i] < 0.0f ? 1u : 0u) << i;
  return static_cast<uint8_t>(byte);
}

void encode_bits_portable(const float* x, size_t len, uint8_t* out) {
  for (size_t i = 0; i < len; i += 8) out[i / 8] = sign_byte(x + i, std::min<size_t>(8, len - i));
}

template <bool kAdd>
void decode_block_portable(const uint8_t* bits, size_t len, float scale, float alpha, float* out) {
  uint32_t scale_bits;
  std::memcpy(&scale_bits, &scale, 4);
  for (size_t i = 0; i < len; ++i) {
    // Branch-free: signs are random, a branch would mispredict half the time.
    const uint32_t negative = (bits[i / 8] >> (i % 8)) & 1u;
    float v;
    const uint32_t v_bits = scale_bits ^ (negative << 31);
    std::memcpy(&v, &v_bits, 4);
    if (kAdd)
      out[i] += alpha * v;
    else
      out[i] = v;
  }
}

#if SADDLE_CODEC_X86
SADDLE_TARGET_AVX2 float abs_sum_avx2(const float* x, size_t len) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= len; i += 8) acc = _mm256_add_ps(acc, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  for (; i < len; ++i) lanes[i % 8] += std::fabs(x[i]);
  return reduce8(lanes);
}

SADDLE_TARGET_AVX2 void encode_bits_avx2(const float* x, size_t len, uint8_t* out) {
  const __m256 zero = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= len; i += 8)
    out[i / 8] =
        static_cast<uint8_t>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), zero, _CMP_LT_OQ)));
  if (i < len) out[i / 8] = sign_byte(x + i, len - i);
}

template <bool kAdd>
SADDLE_TARGET_AVX2 void decode_block_avx2(const uint8_t* bits, size_t len, float scale, float alpha,
                                          float* out) {
  const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i sign_bit = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256 vscale = _mm256_set1_ps(scale), valpha = _mm256_set1_ps(alpha);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256i b = _mm256_and_si256(_mm256_set1_epi32(bits[i / 8]), select);
    const __m256i negative = _mm256_cmpeq_epi32(b, select);
    const __m256 v = _mm256_xor_ps(vscale, _mm256_castsi256_ps(_mm256_and_si256(negative, sign_bit)));
    if (kAdd)
      _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_mul_ps(valpha, v)));
    else
      _mm256_storeu_ps(out + i, v);
  }
  decode_block_portable<kAdd>(bits + i / 8, len - i, scale, alpha, out + i);
}
#endif

class SignCodec final : public Codec {
 public:
  explicit SignCodec(const CodecSpec& spec) : Codec(spec), block_(spec.block_size) {}

  bool unbiased() const override { return false; }

  size_t payload_bytes(size_t n) const override { return 4 * blocks(n) + (n + 7) / 8; }

 protected:
  void encode_payload(const float* x, size_t n, uint64_t, uint8_t* payload,
                      const Parallel& par) const override {
    const bool fast = simd::avx2();
    uint8_t* bits = payload + 4 * blocks(n);
    par(blocks(n), block_grain(), [&](size_t jb, size_t je) {
      for (size_t j = jb; j < je; ++j) {
        const size_t lo = j * block_, len = std::min<size_t>(block_, n - lo);
#if SADDLE_CODEC_X86
        if (fast) {
          buffer::store<float>(payload + 4 * j, abs_sum_avx2(x + lo, len) / static_cast<float>(len));
          encode_bits_avx2(x + lo, len, bits + lo / 8);
          continue;
        }
#endif
        buffer::store<float>(payload + 4 * j, abs_sum_portable(x + lo, len) / static_cast<float>(len));
        encode_bits_portable(x + lo, len, bits + lo / 8);
      }
    });
    (void)fast;
  }

  void check_payload(const uint8_t* payload, size_t n, const Parallel&) const override {
    if (n % 8 == 0) return;
    const uint8_t last = payload[payload_bytes(n) - 1];
    if ((last >> (n % 8)) != 0) {
      throw CorruptMessage(::saddle::detail::concat("sign: nonzero padding bits in the last byte (",
                                                    static_cast<int>(last), ")"));
    }
  }

  void decode_payload(const uint8_t* payload, size_t n, uint64_t, float alpha, float* out, bool accumulate,
                      const Parallel& par) const override {
    const bool fast = simd::avx2();
    const uint8_t* bits = payload + 4 * blocks(n);
    par(blocks(n), block_grain(), [&](size_t jb, size_t je) {
      for (size_t j = jb; j < je; ++j) {
        const size_t lo = j * block_, len = std::min<size_t>(block_, n - lo);
        const float scale = buffer::load<float>(payload + 4 * j);
#if SADDLE_CODEC_X86
        if (fast) {
          accumulate ? decode_block_avx2<true>(bits + lo / 8, len, scale, alpha, out + lo)
                     : decode_block_avx2<false>(bits + lo / 8, len, scale, alpha, out + lo);
          continue;
        }
#endif
        accumulate ? decode_block_portable<true>(bits + lo / 8, len, scale, alpha, out + lo)
                   : decode_block_portable<false>(bits + lo / 8, len, scale, alpha, out + lo);
      }
    });
    (void)fast;
  }

 private:
  size_t blocks(size_t n) const { return (n + block_ - 1) / block_; }
  size_t block_grain() const { return std::max<size_t>(1, buffer::kGrain / block_); }

  size_t block_;
};

}  // namespace

std::unique_ptr<Codec> make_sign(const CodecSpec& spec) {
  check_block_size(spec.block_size);
  return std::make_unique<SignCodec>(CodecSpec{CodecId::kSign, 0, 0.0, spec.block_size});
}

}  // namespace saddle::codec
