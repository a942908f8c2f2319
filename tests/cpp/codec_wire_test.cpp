// Header layout, checksum, and the portable half-precision conversions against the hardware.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/codec/codec.h"
#include "core/codec/half.h"
#include "core/codec/simd.h"
#include "core/codec/wire.h"

#if SADDLE_CODEC_X86
#include <immintrin.h>
#endif

namespace saddle::codec {
namespace {

template <typename T>
T at(const std::vector<uint8_t>& msg, size_t offset) {
  T v;
  std::memcpy(&v, msg.data() + offset, sizeof(T));
  return v;
}

TEST(CodecWire, Crc32KnownAnswer) {
  const char* check = "123456789";
  EXPECT_EQ(crc32(reinterpret_cast<const uint8_t*>(check), 9), 0xCBF43926u);
  EXPECT_EQ(crc32(nullptr, 0), 0u);
}

TEST(CodecWire, HeaderLayout) {
  const auto codec = make_codec(CodecSpec::qsgd(4, 64));
  std::vector<float> x(100, 1.0f);
  std::vector<uint8_t> msg(codec->encoded_bytes(100));
  codec->encode(x.data(), x.size(), 0x1122334455667788ull, msg.data(), msg.size());
  EXPECT_EQ(std::string(msg.begin(), msg.begin() + 4), "SDLC");
  EXPECT_EQ(at<uint16_t>(msg, 4), kWireVersion);
  EXPECT_EQ(msg[6], static_cast<uint8_t>(CodecId::kQsgd));
  EXPECT_EQ(msg[7], 4);
  EXPECT_EQ(at<uint32_t>(msg, 8), 64u);
  EXPECT_EQ(at<double>(msg, 12), 0.0);
  EXPECT_EQ(at<uint64_t>(msg, 20), 100u);
  EXPECT_EQ(at<uint64_t>(msg, 28), 4u * 2 + 50);
  EXPECT_EQ(at<uint64_t>(msg, 36), 0x1122334455667788ull);
  EXPECT_EQ(at<uint32_t>(msg, 44), crc32(msg.data(), 44));
  EXPECT_EQ(msg.size(), kHeaderBytes + 58);

  const auto topk = make_codec(CodecSpec::topk(0.25));
  std::vector<uint8_t> t(topk->encoded_bytes(100));
  topk->encode(x.data(), x.size(), 0, t.data(), t.size());
  EXPECT_EQ(t[6], static_cast<uint8_t>(CodecId::kTopk));
  EXPECT_EQ(at<double>(t, 12), 0.25);
  EXPECT_EQ(at<uint64_t>(t, 28), 8u * 25);
}

TEST(CodecWire, ReadHeaderRoundTrip) {
  Header h;
  h.codec = 6;
  h.bits = 0;
  h.block_size = 512;
  h.ratio = 0.0;
  h.count = 123456789012ull;
  h.payload_bytes = 77;
  h.seed = 42;
  uint8_t buf[kHeaderBytes];
  write_header(h, buf);
  const Header r = read_header(buf, sizeof(buf));
  EXPECT_EQ(r.codec, 6);
  EXPECT_EQ(r.block_size, 512u);
  EXPECT_EQ(r.count, 123456789012ull);
  EXPECT_EQ(r.payload_bytes, 77u);
  EXPECT_EQ(r.seed, 42u);
}

#if SADDLE_CODEC_X86
__attribute__((target("f16c"))) uint16_t hw_from_float(float f) {
  return static_cast<uint16_t>(_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0));
}
__attribute__((target("f16c"))) float hw_to_float(uint16_t h) {
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}
#endif

TEST(CodecWire, PortableHalfMatchesF16C) {
#if SADDLE_CODEC_X86
  if (!simd::avx2()) GTEST_SKIP() << "no F16C on this CPU";
  for (uint32_t h = 0; h < 65536; ++h) {
    const float a = half::to_float(static_cast<uint16_t>(h)), b = hw_to_float(static_cast<uint16_t>(h));
    ASSERT_EQ(half::float_bits(a), half::float_bits(b)) << std::hex << h;
  }
  // Every sign and exponent, with mantissas that hit each rounding case of the 13 dropped bits.
  std::mt19937_64 rng(1);
  for (uint32_t se = 0; se < 512; ++se) {
    for (uint32_t low : {0x0u, 0x1u, 0xFFFu, 0x1000u, 0x1001u, 0x1FFFu}) {
      for (int t = 0; t < 64; ++t) {
        const uint32_t mant = ((static_cast<uint32_t>(rng()) << 13) | low) & 0x7FFFFF;
        const float f = half::bits_float((se << 23) | mant);
        ASSERT_EQ(half::from_float(f), hw_from_float(f)) << std::hex << half::float_bits(f);
      }
    }
  }
#else
  GTEST_SKIP() << "not x86";
#endif
}

}  // namespace
}  // namespace saddle::codec
