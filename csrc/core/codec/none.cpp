// Identity codec: raw float32 on the wire (a baseline and a transport check).
#include <cstring>

#include "core/codec/buffer.h"
#include "core/codec/codecs.h"

namespace saddle::codec {
namespace {

class NoneCodec final : public Codec {
 public:
  explicit NoneCodec(const CodecSpec& spec) : Codec(spec) {}
  bool unbiased() const override { return true; }
  size_t payload_bytes(size_t n) const override { return 4 * n; }

 protected:
  void encode_payload(const float* x, size_t n, uint64_t, uint8_t* payload,
                      const Parallel& par) const override {
    par(n, buffer::kGrain, [&](size_t b, size_t e) { std::memcpy(payload + 4 * b, x + b, 4 * (e - b)); });
  }

  void decode_payload(const uint8_t* payload, size_t n, uint64_t, float alpha, float* out, bool accumulate,
                      const Parallel& par) const override {
    par(n, buffer::kGrain, [&](size_t b, size_t e) {
      if (!accumulate) {
        std::memcpy(out + b, payload + 4 * b, 4 * (e - b));
        return;
      }
      for (size_t i = b; i < e; ++i) out[i] += alpha * buffer::load<float>(payload + 4 * i);
    });
  }
};

}  // namespace

std::unique_ptr<Codec> make_none(const CodecSpec& spec) {
  (void)spec;  // no parameters
  return std::make_unique<NoneCodec>(CodecSpec{CodecId::kNone, 0, 0.0, 0});
}

}  // namespace saddle::codec
