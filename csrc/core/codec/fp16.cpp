// fp16 codec: IEEE binary16, round to nearest even (F16C when the CPU has it).
#include "core/codec/codecs.h"
#include "core/codec/half.h"
#include "core/codec/two_byte.h"

namespace saddle::codec {
namespace {

struct Fp16 {
  static uint16_t from_float(float x) { return half::from_float(x); }
  static float to_float(uint16_t h) { return half::to_float(h); }

#if SADDLE_CODEC_X86
  SADDLE_TARGET_AVX2 static size_t encode_avx2(const float* x, size_t n, uint8_t* out) {
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m128i a = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), kRound);
      const __m128i b = _mm256_cvtps_ph(_mm256_loadu_ps(x + i + 8), kRound);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), a);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i + 16), b);
    }
    for (; i + 8 <= n; i += 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(x + i), kRound));
    }
    return i;
  }

  SADDLE_TARGET_AVX2 static __m256 load8_avx2(const uint8_t* in) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)));
  }
#endif
};

}  // namespace

std::unique_ptr<Codec> make_fp16(const CodecSpec&) {
  return std::make_unique<TwoByteCodec<Fp16>>(CodecSpec{CodecId::kFp16, 0, 0.0, 0});
}

}  // namespace saddle::codec
