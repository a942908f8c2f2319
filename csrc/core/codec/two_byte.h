// The frame shared by the two-byte cast codecs (fp16, bf16): work splitting and SIMD dispatch.
#pragma once

#include "core/codec/buffer.h"
#include "core/codec/codec.h"
#include "core/codec/simd.h"

namespace saddle::codec {

// Kernels K provide the conversions of one format, on a range, choosing SIMD when `fast`:
//   static void encode(const float* x, size_t n, uint8_t* out, bool fast);
//   template <bool kAdd> static void decode(const uint8_t* in, size_t n, float alpha, float* out, bool fast);
template <typename K>
class TwoByteCodec final : public Codec {
 public:
  explicit TwoByteCodec(const CodecSpec& spec) : Codec(spec) {}
  bool unbiased() const override { return false; }
  size_t payload_bytes(size_t n) const override { return 2 * n; }

 protected:
  void encode_payload(const float* x, size_t n, uint64_t, uint8_t* payload, const Parallel& par) const override {
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
