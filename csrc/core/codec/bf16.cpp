// bf16 codec: bfloat16 (the top half of a float32), round to nearest even.
#include "core/codec/buffer.h"
#include "core/codec/codecs.h"
#include "core/codec/half.h"
#include "core/codec/simd.h"
#include "core/codec/two_byte.h"

#if SADDLE_CODEC_X86
#include <immintrin.h>
#endif

namespace saddle::codec {
namespace {

void encode_portable(const float* x, size_t n, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) buffer::store<uint16_t>(out + 2 * i, half::bf16_from_float(x[i]));
}

template <bool kAdd>
void decode_portable(const uint8_t* in, size_t n, float alpha, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float v = half::bf16_to_float(buffer::load<uint16_t>(in + 2 * i));
    if (kAdd)
      out[i] += alpha * v;
    else
      out[i] = v;
  }
}

#if SADDLE_CODEC_X86
// Eight floats -> eight bf16 in the low 16 bits of each 32-bit lane, as half::bf16_from_float.
SADDLE_TARGET_AVX2 inline __m256i round8(const float* x) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(0x40));
  const __m256i abs = _mm256_and_si256(v, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F800000));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}

SADDLE_TARGET_AVX2 void encode_avx2(const float* x, size_t n, uint8_t* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    // packus works within 128-bit lanes; the permute restores element order.
    const __m256i packed = _mm256_packus_epi32(round8(x + i), round8(x + i + 8));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i), _mm256_permute4x64_epi64(packed, 0xD8));
  }
  encode_portable(x + i, n - i, out + 2 * i);
}

template <bool kAdd>
SADDLE_TARGET_AVX2 void decode_avx2(const uint8_t* in, size_t n, float alpha, float* out) {
  const __m256 a = _mm256_set1_ps(alpha);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
    const __m256 v = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    if (kAdd)
      _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_mul_ps(a, v)));
    else
      _mm256_storeu_ps(out + i, v);
  }
  decode_portable<kAdd>(in + 2 * i, n - i, alpha, out + i);
}
#endif

struct Bf16Kernels {
  static void encode(const float* x, size_t n, uint8_t* out, bool fast) {
#if SADDLE_CODEC_X86
    if (fast) return encode_avx2(x, n, out);
#endif
    (void)fast;
    encode_portable(x, n, out);
  }

  template <bool kAdd>
  static void decode(const uint8_t* in, size_t n, float alpha, float* out, bool fast) {
#if SADDLE_CODEC_X86
    if (fast) return decode_avx2<kAdd>(in, n, alpha, out);
#endif
    (void)fast;
    decode_portable<kAdd>(in, n, alpha, out);
  }
};

}  // namespace

std::unique_ptr<Codec> make_bf16(const CodecSpec&) {
  return std::make_unique<TwoByteCodec<Bf16Kernels>>(CodecSpec{CodecId::kBf16, 0, 0.0, 0});
}

}  // namespace saddle::codec
