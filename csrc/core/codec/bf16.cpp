// bf16 codec: bfloat16 (the top half of a float32), round to nearest even.
#include "core/codec/codecs.h"
#include "core/codec/half.h"
#include "core/codec/two_byte.h"

namespace saddle::codec {
namespace {

struct Bf16 {
  static uint16_t from_float(float x) { return half::bf16_from_float(x); }
  static float to_float(uint16_t h) { return half::bf16_to_float(h); }

#if SADDLE_CODEC_X86
  // Eight floats -> eight bf16 in the low 16 bits of each 32-bit lane, as half::bf16_from_float.
  SADDLE_TARGET_AVX2 static __m256i round8(const float* x) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(0x40));
    const __m256i abs = _mm256_and_si256(v, _mm256_set1_epi32(0x7FFFFFFF));
    const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F800000));
    return _mm256_blendv_epi8(rounded, quiet, nan);
  }

  SADDLE_TARGET_AVX2 static size_t encode_avx2(const float* x, size_t n, uint8_t* out) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
      // packus works within 128-bit lanes; the permute restores element order.
      const __m256i packed = _mm256_packus_epi32(round8(x + i), round8(x + i + 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i), _mm256_permute4x64_epi64(packed, 0xD8));
    }
    return i;
  }

  SADDLE_TARGET_AVX2 static __m256 load8_avx2(const uint8_t* in) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
#endif
};

}  // namespace

std::unique_ptr<Codec> make_bf16(const CodecSpec&) {
  return std::make_unique<TwoByteCodec<Bf16>>(CodecSpec{CodecId::kBf16, 0, 0.0, 0});
}

}  // namespace saddle::codec
