// fp16 codec: IEEE binary16, round to nearest even (F16C when the CPU has it).
#include "core/codec/buffer.h"
#include "core/codec/codecs.h"
#include "core/codec/half.h"
#include "core/codec/simd.h"

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

class Fp16Codec final : public Codec {
 public:
  explicit Fp16Codec(const CodecSpec& spec) : Codec(spec) {}
  bool unbiased() const override { return false; }
  size_t payload_bytes(size_t n) const override { return 2 * n; }

 protected:
  void encode_payload(const float* x, size_t n, uint64_t, uint8_t* payload,
                      const Parallel& par) const override {
    const bool fast = simd::avx2();
    par(n, buffer::kGrain, [&](size_t b, size_t e) {
#if SADDLE_CODEC_X86
      if (fast) return encode_f16c(x + b, e - b, payload + 2 * b);
#endif
      (void)fast;
      encode_portable(x + b, e - b, payload + 2 * b);
    });
  }

  void decode_payload(const uint8_t* payload, size_t n, uint64_t, float alpha, float* out, bool accumulate,
                      const Parallel& par) const override {
    const bool fast = simd::avx2();
    par(n, buffer::kGrain, [&](size_t b, size_t e) {
      const uint8_t* in = payload + 2 * b;
#if SADDLE_CODEC_X86
      if (fast) {
        return accumulate ? decode_f16c<true>(in, e - b, alpha, out + b)
                          : decode_f16c<false>(in, e - b, alpha, out + b);
      }
#endif
      (void)fast;
      accumulate ? decode_portable<true>(in, e - b, alpha, out + b)
                 : decode_portable<false>(in, e - b, alpha, out + b);
    });
  }
};

}  // namespace

std::unique_ptr<Codec> make_fp16(const CodecSpec&) {
  return std::make_unique<Fp16Codec>(CodecSpec{CodecId::kFp16, 0, 0.0, 0});
}

}  // namespace saddle::codec
