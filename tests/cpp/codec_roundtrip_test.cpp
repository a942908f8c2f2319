// Round trips and exact sizes of every codec.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "core/codec/codec.h"
#include "core/codec/randk.h"

namespace saddle::codec {
namespace {

std::vector<CodecSpec> all_specs() {
  return {CodecSpec::none(),      CodecSpec::fp16(),      CodecSpec::bf16(),     CodecSpec::qsgd(2, 16),
          CodecSpec::qsgd(4, 64), CodecSpec::int8(),      CodecSpec::qsgd(8, 8), CodecSpec::topk(0.1),
          CodecSpec::topk(1.0),   CodecSpec::randk(0.25), CodecSpec::randk(1.0), CodecSpec::sign(8),
          CodecSpec::sign(256)};
}

std::vector<float> normal_vector(size_t n, uint64_t seed, float sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  return x;
}

std::vector<uint8_t> encode(const Codec& c, const std::vector<float>& x, uint64_t seed) {
  std::vector<uint8_t> msg(c.encoded_bytes(x.size()));
  EXPECT_EQ(c.encode(x.data(), x.size(), seed, msg.data(), msg.size()), msg.size());
  return msg;
}

std::vector<float> decode(const Codec& c, const std::vector<uint8_t>& msg, size_t n, uint64_t seed) {
  std::vector<float> out(n, 12345.0f);
  c.decode(msg.data(), msg.size(), n, seed, out.data());
  return out;
}

size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// The size table of codec.h, written out independently.
size_t expected_bytes(const CodecSpec& s, size_t n) {
  const size_t k = n == 0 ? 0 : std::max<size_t>(1, static_cast<size_t>(std::ceil(s.ratio * n - 1e-9)));
  switch (s.id) {
    case CodecId::kNone:
      return 48 + 4 * n;
    case CodecId::kFp16:
    case CodecId::kBf16:
      return 48 + 2 * n;
    case CodecId::kQsgd:
      return 48 + 4 * ceil_div(n, s.block_size) + ceil_div(n * s.bits, 8);
    case CodecId::kTopk:
      return 48 + 8 * k;
    case CodecId::kRandk:
      return 48 + 4 * k;
    case CodecId::kSign:
      return 48 + 4 * ceil_div(n, s.block_size) + ceil_div(n, 8);
  }
  return 0;
}

TEST(CodecRoundTrip, EncodeWritesExactlyEncodedBytes) {
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    for (size_t n : {0, 1, 7, 8, 9, 255, 256, 257, 1000, 4099}) {
      ASSERT_EQ(codec->encoded_bytes(n), expected_bytes(spec, n)) << "n=" << n;
      // A guard zone after the message must stay untouched.
      const auto x = normal_vector(n, n);
      std::vector<uint8_t> out(codec->encoded_bytes(n) + 16, 0xAB);
      ASSERT_EQ(codec->encode(x.data(), n, 9, out.data(), out.size()), codec->encoded_bytes(n));
      for (size_t i = codec->encoded_bytes(n); i < out.size(); ++i) ASSERT_EQ(out[i], 0xAB);
      out.resize(codec->encoded_bytes(n));
      std::vector<float> back(n);
      codec->decode(out.data(), out.size(), n, 9, back.data());
    }
  }
}

TEST(CodecRoundTrip, CompressionRatiosCountHeaderAndIndices) {
  const size_t n = size_t{1} << 20;
  const auto ratio = [&](const CodecSpec& s) { return 4.0 * n / make_codec(s)->encoded_bytes(n); };
  // 8 bits plus a 32-bit scale per block: int8 never reaches 4x.
  EXPECT_LT(ratio(CodecSpec::int8(64)), 4.0);
  EXPECT_NEAR(ratio(CodecSpec::int8(256)), 4.0 / (1.0 + 4.0 / 256), 1e-3);
  EXPECT_GT(ratio(CodecSpec::qsgd(4, 256)), 7.5);
  EXPECT_GT(ratio(CodecSpec::qsgd(2, 256)), 15.0);
  EXPECT_GE(ratio(CodecSpec::topk(0.1)), 4.0);
  EXPECT_LT(ratio(CodecSpec::topk(0.125)), 4.0);         // 8 bytes per kept entry plus the header
  EXPECT_NEAR(ratio(CodecSpec::topk(0.01)), 50.0, 0.1);  // ceil(0.01·n) kept
  EXPECT_NEAR(ratio(CodecSpec::randk(0.01)), 100.0, 0.2);
  EXPECT_GT(ratio(CodecSpec::sign(256)), 28.0);
  EXPECT_NEAR(ratio(CodecSpec::fp16()), 2.0, 1e-3);
}

TEST(CodecRoundTrip, NoneIsExact) {
  const auto codec = make_codec(CodecSpec::none());
  const auto x = normal_vector(1001, 1);
  EXPECT_EQ(decode(*codec, encode(*codec, x, 0), x.size(), 0), x);
}

TEST(CodecRoundTrip, Fp16WithinHalfPrecision) {
  const auto codec = make_codec(CodecSpec::fp16());
  auto x = normal_vector(1003, 2, 100.0f);
  x.insert(x.end(), {0.0f, -0.0f, 65504.0f, -65504.0f, 6.1035156e-05f, 5.9604645e-08f, 1e-3f});
  const auto y = decode(*codec, encode(*codec, x, 0), x.size(), 0);
  for (size_t i = 0; i < x.size(); ++i) {
    // Round to nearest: half an ulp, 2^-11 relative for normal halves, 2^-25 absolute below.
    ASSERT_LE(std::fabs(y[i] - x[i]), std::max(std::fabs(x[i]) * 0x1p-11f, 0x1p-25f)) << i;
  }
  const std::vector<float> special = {65520.0f, -1e6f, INFINITY, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f};
  const auto z = decode(*codec, encode(*codec, special, 0), special.size(), 0);
  EXPECT_EQ(z[0], INFINITY);  // 65520 is halfway to the next (overflowing) half: rounds up
  EXPECT_EQ(z[1], -INFINITY);
  EXPECT_EQ(z[2], INFINITY);
  EXPECT_EQ(z[3], 1.0f);            // tie to even
  EXPECT_EQ(z[4], 1.0f + 0x1p-9f);  // tie to even, upwards
}

TEST(CodecRoundTrip, Bf16RoundsToNearestEven) {
  const auto codec = make_codec(CodecSpec::bf16());
  auto x = normal_vector(1003, 3, 1e20f);
  const auto y = decode(*codec, encode(*codec, x, 0), x.size(), 0);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_LE(std::fabs(y[i] - x[i]), std::fabs(x[i]) * 0x1p-8f) << i;
  const std::vector<float> ties = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, NAN, -0.0f, 3.4028235e38f};
  const auto z = decode(*codec, encode(*codec, ties, 0), ties.size(), 0);
  EXPECT_EQ(z[0], 1.0f);
  EXPECT_EQ(z[1], 1.0f + 0x1p-6f);
  EXPECT_TRUE(std::isnan(z[2]));
  EXPECT_TRUE(std::signbit(z[3]));
  EXPECT_EQ(z[4], INFINITY);  // FLT_MAX rounds up past the largest bf16
}

TEST(CodecRoundTrip, QsgdDecodesToNeighbouringLevels) {
  for (int bits : {2, 4, 8}) {
    const auto spec = CodecSpec::qsgd(bits, 64);
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    auto x = normal_vector(1000, bits);
    std::fill(x.begin() + 64, x.begin() + 128, 0.0f);  // an all-zero block
    const auto y = decode(*codec, encode(*codec, x, 7), x.size(), 7);
    const float s = static_cast<float>((1 << (bits - 1)) - 1);
    for (size_t lo = 0; lo < x.size(); lo += 64) {
      const size_t hi = std::min(x.size(), lo + 64);
      float scale = 0;
      for (size_t i = lo; i < hi; ++i) scale = std::max(scale, std::fabs(x[i]));
      const float step = scale / s;
      for (size_t i = lo; i < hi; ++i) {
        if (scale == 0) {
          ASSERT_EQ(y[i], 0.0f);
          continue;
        }
        const float level = y[i] / step;
        ASSERT_NEAR(level, std::round(level), 1e-3) << i;  // on a level
        ASSERT_LE(std::fabs(level), s + 1e-3f);
        ASSERT_LE(std::fabs(y[i] - x[i]), step * 1.0001f) << i;  // a neighbouring one
      }
    }
  }
}

TEST(CodecRoundTrip, TopkKeepsExactlyTheKLargest) {
  const auto codec = make_codec(CodecSpec::topk(0.05));
  const size_t n = 2000, k = kept_count(0.05, n);
  ASSERT_EQ(k, 100u);
  const auto x = normal_vector(n, 4);
  const auto y = decode(*codec, encode(*codec, x, 0), n, 0);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  std::vector<bool> kept(n, false);
  for (size_t j = 0; j < k; ++j) kept[order[j]] = true;
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(y[i], kept[i] ? x[i] : 0.0f) << i;
}

TEST(CodecRoundTrip, TopkBreaksTiesTowardsLowerIndices) {
  const auto codec = make_codec(CodecSpec::topk(0.25));
  std::vector<float> x(40, 1.0f);
  x[33] = -2.0f;  // the largest, then 9 of the 39 tied ones: indices 0..8
  const auto y = decode(*codec, encode(*codec, x, 0), x.size(), 0);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], i == 33 ? -2.0f : i < 9 ? 1.0f : 0.0f) << i;
}

TEST(CodecRoundTrip, TopkAcrossChunksMatchesSort) {
  // More than one selection chunk (2^17 elements), with many equal magnitudes around the threshold.
  const size_t n = 300000;
  std::mt19937_64 rng(5);
  std::vector<float> x(n);
  for (auto& v : x) v = static_cast<float>(static_cast<int>(rng() % 2001) - 1000) / 8.0f;
  const auto codec = make_codec(CodecSpec::topk(0.01));
  const size_t k = kept_count(0.01, n);
  const auto y = decode(*codec, encode(*codec, x, 0), n, 0);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  std::vector<float> want(n, 0.0f);
  for (size_t j = 0; j < k; ++j) want[order[j]] = x[order[j]];
  EXPECT_EQ(y, want);
}

TEST(CodecRoundTrip, RandkKeepsTheSeededIndicesScaled) {
  const size_t n = 1000;
  const auto codec = make_codec(CodecSpec::randk(0.1));
  const size_t k = kept_count(0.1, n);
  const auto x = normal_vector(n, 6);
  const auto y = decode(*codec, encode(*codec, x, 77), n, 77);
  const auto idx = randk_indices(n, k, 77);
  ASSERT_EQ(idx.size(), k);
  ASSERT_TRUE(std::is_sorted(idx.begin(), idx.end()));
  ASSERT_EQ(std::adjacent_find(idx.begin(), idx.end()), idx.end());
  std::vector<float> want(n, 0.0f);
  for (uint32_t i : idx) want[i] = 10.0f * x[i];
  EXPECT_EQ(y, want);
  EXPECT_NE(randk_indices(n, k, 78), idx);
  // k > n/2 goes through the complement and must still give k distinct indices.
  const auto many = randk_indices(n, 900, 1);
  EXPECT_EQ(many.size(), 900u);
  EXPECT_EQ(std::adjacent_find(many.begin(), many.end()), many.end());
  EXPECT_LT(many.back(), n);
}

TEST(CodecRoundTrip, SignDecodesToBlockMeanTimesSign) {
  const auto codec = make_codec(CodecSpec::sign(16));
  auto x = normal_vector(100, 8);
  x[3] = 0.0f;
  const auto y = decode(*codec, encode(*codec, x, 0), x.size(), 0);
  for (size_t lo = 0; lo < x.size(); lo += 16) {
    const size_t hi = std::min(x.size(), lo + 16);
    double mean = 0;
    for (size_t i = lo; i < hi; ++i) mean += std::fabs(x[i]);
    mean /= (hi - lo);
    for (size_t i = lo; i < hi; ++i) ASSERT_NEAR(y[i], x[i] < 0 ? -mean : mean, 1e-6 * mean) << i;
  }
}

TEST(CodecRoundTrip, DecodeAddIsAlphaTimesDecode) {
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    const auto x = normal_vector(517, 9);
    const auto msg = encode(*codec, x, 3);
    const auto dense = decode(*codec, msg, x.size(), 3);
    auto acc = normal_vector(517, 10);
    const auto before = acc;
    codec->decode_add(msg.data(), msg.size(), x.size(), 3, 0.3f, acc.data());
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(acc[i], before[i] + 0.3f * dense[i]) << i;
  }
}

TEST(CodecRoundTrip, QsgdTinyAndHugeBlocks) {
  const auto codec = make_codec(CodecSpec::int8(8));
  std::vector<float> x = {1e-36f, -1e-37f, 0,     0, 0, 0, 0, 0,   // below the smallest sent scale
                          1e-30f, -1e-30f, 0,     0, 0, 0, 0, 0,   // tiny but sent
                          3e38f,  -3e38f,  1e38f, 0, 0, 0, 0, 0};  // near FLT_MAX: no overflow
  const auto y = decode(*codec, encode(*codec, x, 1), x.size(), 1);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(y[i], 0.0f);
  EXPECT_FLOAT_EQ(y[8], 1e-30f);
  EXPECT_FLOAT_EQ(y[9], -1e-30f);
  EXPECT_EQ(y[10], 0.0f);
  EXPECT_FLOAT_EQ(y[16], 3e38f);
  EXPECT_FLOAT_EQ(y[17], -3e38f);
  EXPECT_NEAR(y[18], 1e38f, 3e38f / 127);
  EXPECT_EQ(y[19], 0.0f);
}

TEST(CodecRoundTrip, TopkWithMostlyZeros) {
  // The threshold is 0: zeros fill the kept set, lowest indices first.
  std::vector<float> x(100, 0.0f);
  for (size_t i = 0; i < 100; i += 10) x[i + 7] = static_cast<float>(i + 1);
  const auto codec = make_codec(CodecSpec::topk(0.5));
  const auto msg = encode(*codec, x, 0);
  EXPECT_EQ(decode(*codec, msg, x.size(), 0), x);
  std::vector<uint32_t> idx(50);
  std::memcpy(idx.data(), msg.data() + 48 + 4 * 50, 4 * 50);
  // The 40 lowest zeros and 4 nonzeros are exactly 0..43; then the other nonzeros 47, 57, ..., 97.
  for (uint32_t j = 0; j < 44; ++j) EXPECT_EQ(idx[j], j);
  EXPECT_EQ(idx[44], 47u);
  EXPECT_EQ(idx[49], 97u);
}

TEST(CodecRoundTrip, NonFiniteInputStillGivesValidMessages) {
  // NaN and ±inf give unspecified values, but never a message the decoder rejects.
  auto x = normal_vector(300, 12);
  x[3] = NAN;
  x[100] = INFINITY;
  x[200] = -INFINITY;
  x[290] = -NAN;
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    const auto msg = encode(*codec, x, 4);
    EXPECT_NO_THROW(decode(*codec, msg, x.size(), 4));
  }
}

TEST(CodecRoundTrip, UnalignedBuffers) {
  const auto x = normal_vector(1001, 13);
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    const auto msg = encode(*codec, x, 2);
    std::vector<uint8_t> shifted(msg.size() + 3);
    EXPECT_EQ(codec->encode(x.data(), x.size(), 2, shifted.data() + 3, msg.size()), msg.size());
    EXPECT_TRUE(std::equal(msg.begin(), msg.end(), shifted.begin() + 3));
    std::vector<float> a(x.size()), b(x.size());
    codec->decode(msg.data(), msg.size(), x.size(), 2, a.data());
    codec->decode(shifted.data() + 3, msg.size(), x.size(), 2, b.data());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), 4 * a.size()), 0);
  }
}

TEST(CodecRoundTrip, KeptCount) {
  EXPECT_EQ(kept_count(0.07, 100), 7u);  // 0.07·100 is 7.000000000000001 in doubles
  EXPECT_EQ(kept_count(0.01, 100), 1u);
  EXPECT_EQ(kept_count(0.01, 101), 2u);
  EXPECT_EQ(kept_count(0.01, 1), 1u);
  EXPECT_EQ(kept_count(1e-12, 10), 1u);
  EXPECT_EQ(kept_count(1.0, 12345), 12345u);
  EXPECT_EQ(kept_count(0.5, 0), 0u);
  EXPECT_THROW(kept_count(0.0, 10), std::invalid_argument);
  EXPECT_THROW(kept_count(1.5, 10), std::invalid_argument);
  EXPECT_THROW(kept_count(NAN, 10), std::invalid_argument);
}

TEST(CodecRoundTrip, FactoryValidatesAndNormalises) {
  EXPECT_THROW(make_codec(CodecSpec::qsgd(3)), std::invalid_argument);
  EXPECT_THROW(make_codec(CodecSpec::qsgd(8, 0)), std::invalid_argument);
  EXPECT_THROW(make_codec(CodecSpec::qsgd(8, 12)), std::invalid_argument);
  EXPECT_THROW(make_codec(CodecSpec::sign(100)), std::invalid_argument);
  EXPECT_THROW(make_codec(CodecSpec::topk(0.0)), std::invalid_argument);
  EXPECT_THROW(make_codec(CodecSpec::randk(2.0)), std::invalid_argument);
  EXPECT_THROW(make_codec(CodecSpec{static_cast<CodecId>(99)}), std::invalid_argument);
  const auto fp16 = make_codec(CodecSpec{CodecId::kFp16, 4, 0.5, 16});
  EXPECT_EQ(fp16->spec().bits, 0);
  EXPECT_EQ(fp16->spec().ratio, 0.0);
  EXPECT_EQ(fp16->spec().block_size, 0u);
  EXPECT_EQ(to_string(make_codec(CodecSpec::int8())->spec()), "qsgd(bits=8, block=256)");
  EXPECT_EQ(to_string(make_codec(CodecSpec::topk(0.01))->spec()), "topk(ratio=0.01)");
  EXPECT_TRUE(make_codec(CodecSpec::qsgd(4))->unbiased());
  EXPECT_FALSE(make_codec(CodecSpec::topk(0.1))->unbiased());
}

TEST(CodecRoundTrip, EncodeRejectsSmallOutput) {
  const auto codec = make_codec(CodecSpec::int8());
  const auto x = normal_vector(100, 11);
  std::vector<uint8_t> out(codec->encoded_bytes(100) - 1);
  EXPECT_THROW(codec->encode(x.data(), x.size(), 0, out.data(), out.size()), std::invalid_argument);
  EXPECT_THROW(codec->encode(nullptr, x.size(), 0, out.data(), 1000), std::invalid_argument);
}

}  // namespace
}  // namespace saddle::codec
