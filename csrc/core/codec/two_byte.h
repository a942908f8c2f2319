// The frame shared by the two-byte cast codecs (fp16, bf16): scalar loops, the AVX2 decode loop, work
// splitting and SIMD dispatch. A format supplies only its conversions.
#pragma once

#include "core/codec/buffer.h"
#include "core/codec/codec.h"
#include "core/codec/simd.h"

#if SADDLE_CODEC_X86
#include <immintrin.h>
#endif

namespace saddle::codec {

// A format F provides the scalar conversions (round to nearest even)
//   static uint16_t from_float(float);
//   static float to_float(uint16_t);
// and, where SADDLE_CODEC_X86, AVX2 kernels:
//   static size_t encode_avx2(const float* x, size_t n, uint8_t* out);  // a prefix; returns its length
//   static __m256 load8_avx2(const uint8_t* in);  // eight values -> eight floats
template <typename F>
struct TwoByteKernels {
  static void encode_portable(const float* x, size_t n, uint8_t* out) {
    for (size_t i = 0; i < n; ++i) buffer::store<uint16_t>(out + 2 * i, F::from_float(x[i]));
  }

  template <bool kAdd>
  static void decode_portable(const uint8_t* in, size_t n, float alpha, float* out) {
    for (size_t i = 0; i < n; ++i) {
      const float v = F::to_float(buffer::load<uint16_t>(in + 2 * i));
      if (kAdd)
        out[i] += alpha * v;
      else
        out[i] = v;
    }
  }

#if SADDLE_CODEC_X86
  template <bool kAdd>
  SADDLE_TARGET_AVX2 static void decode_avx2(const uint8_t* in, size_t n, float alpha, float* out) {
    const __m256 a = _mm256_set1_ps(alpha);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 v = F::load8_avx2(in + 2 * i);
      if (kAdd)
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), _mm256_mul_ps(a, v)));
      else
        _mm256_storeu_ps(out + i, v);
    }
    decode_portable<kAdd>(in + 2 * i, n - i, alpha, out + i);
  }
#endif

  static void encode(const float* x, size_t n, uint8_t* out, bool fast) {
    size_t done = 0;
#if SADDLE_CODEC_X86
    if (fast) done = F::encode_avx2(x, n, out);
#endif
    (void)fast;
    encode_portable(x + done, n - done, out + 2 * done);
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

template <typename F>
class TwoByteCodec final : public Codec {
 public:
  explicit TwoByteCodec(const CodecSpec& spec) : Codec(spec) {}
  bool unbiased() const override { return false; }
  size_t payload_bytes(size_t n) const override { return 2 * n; }

 protected:
  using K = TwoByteKernels<F>;

  void encode_payload(const float* x, size_t n, uint64_t, uint8_t* payload,
                      const Parallel& par) const override {
    const bool fast = simd::avx2();
    par(n, buffer::kGrain, [&](size_t b, size_t e) { K::encode(x + b, e - b, payload + 2 * b, fast); });
  }

  void decode_payload(const uint8_t* payload, size_t n, uint64_t, float alpha, float* out, bool accumulate,
                      const Parallel& par) const override {
    const bool fast = simd::avx2();
    par(n, buffer::kGrain, [&](size_t b, size_t e) {
      if (accumulate)
        K::template decode<true>(payload + 2 * b, e - b, alpha, out + b, fast);
      else
        K::template decode<false>(payload + 2 * b, e - b, alpha, out + b, fast);
    });
  }
};

}  // namespace saddle::codec
