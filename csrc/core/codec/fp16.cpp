// fp16 codec: IEEE binary16, round to nearest even (F16C when the CPU has it).
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
  for (size_t i = 0; i < n; ++i) buffer::store<uint16_t>(out + 2 * i, half::from_float(x[i]));
}

template <bool kAdd>
void decode_portable(const uint8_t* in, size_t n, float alpha, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float v = half::to_float(buffer::load<uint16_t>(in + 2 * i));
    if (kAdd)
      out[i] += alpha * v;
    else
      out[i] = v;
  }
}

#if SADDLE_CODEC_X86
SADDLE_TARGET_AVX2 void encode_f16c(const float* x, size_t n, uint8_t* out) {
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
  encode_portable(x + i, n - i, out + 2 * i);
}

template <bool kAdd>
SADDLE_TARGET_AVX2 void decode_f16c(const uint8_t* in, size_t n, float alpha, float* out) {
  const __m256 a = _mm256_set1_ps(alpha);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i)));
    if (kAdd)
      _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_mul_ps(a, v)));
    else
      _mm256_storeu_ps(out + i, v);
  }
  decode_portable<kAdd>(in + 2 * i, n - i, alpha, out + i);
}
#endif

struct Fp16Kernels {
  static void encode(const float* x, size_t n, uint8_t* out, bool fast) {
#if SADDLE_CODEC_X86
    if (fast) return encode_f16c(x, n, out);
#endif
    (void)fast;
    encode_portable(x, n, out);
  }

  template <bool kAdd>
  static void decode(const uint8_t* in, size_t n, float alpha, float* out, bool fast) {
#if SADDLE_CODEC_X86
    if (fast) return decode_f16c<kAdd>(in, n, alpha, out);
#endif
    (void)fast;
    decode_portable<kAdd>(in, n, alpha, out);
  }
};

}  // namespace

std::unique_ptr<Codec> make_fp16(const CodecSpec&) {
  return std::make_unique<TwoByteCodec<Fp16Kernels>>(CodecSpec{CodecId::kFp16, 0, 0.0, 0});
}

}  // namespace saddle::codec
