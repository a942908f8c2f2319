// Every malformed message is rejected with CorruptMessage before any output is written.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/codec/codec.h"
#include "core/codec/wire.h"

namespace saddle::codec {
namespace {

std::vector<CodecSpec> all_specs() {
  return {CodecSpec::none(),      CodecSpec::fp16(),     CodecSpec::bf16(),    CodecSpec::qsgd(2, 16),
          CodecSpec::qsgd(4, 64), CodecSpec::int8(),     CodecSpec::topk(0.1), CodecSpec::topk(1.0),
          CodecSpec::randk(0.25), CodecSpec::randk(1.0), CodecSpec::sign(8),   CodecSpec::sign(256)};
}

std::vector<uint8_t> valid_message(const Codec& c, size_t n, uint64_t seed) {
  std::mt19937_64 rng(n);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) v = normal(rng);
  std::vector<uint8_t> msg(c.encoded_bytes(n));
  c.encode(x.data(), n, seed, msg.data(), msg.size());
  return msg;
}

// Decodes (and decode_adds) `msg` expecting CorruptMessage, checks the output is untouched, and
// returns the error message.
std::string expect_corrupt(const Codec& c, const uint8_t* msg, size_t len, size_t n, uint64_t seed) {
  std::vector<float> out(n, 42.0f);
  std::string what;
  try {
    c.decode(msg, len, n, seed, out.data());
    ADD_FAILURE() << "decode accepted a corrupt message of " << len << " bytes";
  } catch (const CorruptMessage& e) {
    what = e.what();
  }
  EXPECT_THROW(c.decode_add(msg, len, n, seed, 2.0f, out.data()), CorruptMessage);
  for (float v : out) {
    if (v != 42.0f) {
      ADD_FAILURE() << "output written before validation: " << what;
      break;
    }
  }
  return what;
}

std::string expect_corrupt(const Codec& c, const std::vector<uint8_t>& msg, size_t n, uint64_t seed) {
  return expect_corrupt(c, msg.data(), msg.size(), n, seed);
}

// Rewrites a header field and recomputes the checksum, as a buggy (not a noisy) sender would.
template <typename T>
std::vector<uint8_t> with_field(std::vector<uint8_t> msg, size_t offset, T value) {
  std::memcpy(msg.data() + offset, &value, sizeof(T));
  const uint32_t crc = crc32(msg.data(), 44);
  std::memcpy(msg.data() + 44, &crc, 4);
  return msg;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(CodecCorruption, EveryTruncationIsRejected) {
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    const size_t n = 37;
    const auto msg = valid_message(*codec, n, 5);
    for (size_t len = 0; len < msg.size(); ++len) {
      const std::string what = expect_corrupt(*codec, msg.data(), len, n, 5);
      ASSERT_TRUE(contains(what, "truncated")) << len << ": " << what;
    }
  }
}

TEST(CodecCorruption, EveryHeaderByteFlipIsRejected) {
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    const auto msg = valid_message(*codec, 50, 5);
    for (size_t i = 0; i < kHeaderBytes; ++i) {
      for (uint8_t mask : {0x01, 0x80, 0xFF}) {
        auto bad = msg;
        bad[i] ^= mask;
        expect_corrupt(*codec, bad, 50, 5);
      }
    }
  }
}

TEST(CodecCorruption, MismatchesNameTheField) {
  const auto codec = make_codec(CodecSpec::int8());
  const auto msg = valid_message(*codec, 1000, 1);
  EXPECT_EQ(expect_corrupt(*codec, msg, 1200, 1),
            "element count 1000, expected 1200 for qsgd(bits=8, block=256)");
  EXPECT_TRUE(
      contains(expect_corrupt(*codec, msg.data(), 100, 1000, 1), "truncated: 100 bytes, header says 1064"));
  auto longer = msg;
  longer.push_back(0);
  EXPECT_EQ(expect_corrupt(*codec, longer, 1000, 1), "oversized: 1065 bytes, header says 1064");
  auto flipped = msg;
  flipped[20] ^= 4;
  EXPECT_TRUE(contains(expect_corrupt(*codec, flipped, 1000, 1), "header checksum mismatch"));
  auto magic = msg;
  magic[0] = 'X';
  EXPECT_TRUE(contains(expect_corrupt(*codec, magic, 1000, 1), "bad magic"));
  EXPECT_TRUE(contains(expect_corrupt(*codec, with_field<uint16_t>(msg, 4, 2), 1000, 1), "wire version 2"));
  EXPECT_TRUE(
      contains(expect_corrupt(*codec, with_field<uint64_t>(msg, 28, 999), 1000, 1), "payload length 999"));
  EXPECT_TRUE(contains(expect_corrupt(*codec, with_field<uint64_t>(msg, 20, uint64_t{1} << 60), 1000, 1),
                       "element count"));
  EXPECT_TRUE(
      contains(expect_corrupt(*make_codec(CodecSpec::qsgd(4)), msg, 1000, 1), "codec parameter bits 8"));
  EXPECT_TRUE(
      contains(expect_corrupt(*make_codec(CodecSpec::int8(64)), msg, 1000, 1), "codec block size 256"));
  EXPECT_TRUE(contains(expect_corrupt(*make_codec(CodecSpec::fp16()), msg, 1000, 1),
                       "codec id 3 (qsgd), expected 1 (fp16)"));
  EXPECT_TRUE(
      contains(expect_corrupt(*codec, with_field<uint8_t>(msg, 6, 200), 1000, 1), "codec id 200 (unknown)"));
  const auto topk = make_codec(CodecSpec::topk(0.1));
  EXPECT_TRUE(
      contains(expect_corrupt(*make_codec(CodecSpec::topk(0.2)), valid_message(*topk, 100, 0), 100, 0),
               "codec ratio 0.10000000000000001, expected 0.20000000000000001"));
}

TEST(CodecCorruption, EveryCodecRejectsEveryOtherCodecsMessage) {
  const auto specs = all_specs();
  for (const auto& a : specs) {
    const auto ca = make_codec(a);
    const auto msg = valid_message(*ca, 64, 3);
    for (const auto& b : specs) {
      const auto cb = make_codec(b);
      if (to_string(cb->spec()) == to_string(ca->spec())) continue;
      SCOPED_TRACE(to_string(a) + " decoded as " + to_string(b));
      expect_corrupt(*cb, msg, 64, 3);
    }
  }
}

TEST(CodecCorruption, WrongCountAndOversizeForEveryCodec) {
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    const auto msg = valid_message(*codec, 300, 2);
    for (size_t n : {0, 1, 299, 301, 3000})
      EXPECT_TRUE(contains(expect_corrupt(*codec, msg, n, 2), "element count"));
    for (size_t extra : {1, 7, 1000}) {
      auto longer = msg;
      longer.resize(msg.size() + extra, 0);
      EXPECT_TRUE(contains(expect_corrupt(*codec, longer, 300, 2), "oversized"));
    }
  }
}

TEST(CodecCorruption, TopkIndicesAreChecked) {
  const auto codec = make_codec(CodecSpec::topk(0.1));
  const size_t n = 1000, k = 100;
  const auto msg = valid_message(*codec, n, 0);
  const size_t first_index = kHeaderBytes + 4 * k;
  const auto set_index = [&](size_t j, uint32_t v) {
    auto bad = msg;
    std::memcpy(bad.data() + first_index + 4 * j, &v, 4);
    return bad;
  };
  EXPECT_TRUE(contains(expect_corrupt(*codec, set_index(k - 1, 5000), n, 0),
                       "topk index 5000 out of range [0, 1000)"));
  EXPECT_TRUE(contains(expect_corrupt(*codec, set_index(k - 1, 1000), n, 0), "out of range"));
  EXPECT_TRUE(contains(expect_corrupt(*codec, set_index(0, 0xFFFFFFFFu), n, 0), "out of range"));
  uint32_t second;
  std::memcpy(&second, msg.data() + first_index + 4, 4);
  EXPECT_TRUE(contains(expect_corrupt(*codec, set_index(2, second), n, 0), "not strictly increasing"));
}

TEST(CodecCorruption, QsgdCodesAndPaddingAreChecked) {
  for (int bits : {2, 4, 8}) {
    SCOPED_TRACE(bits);
    const auto codec = make_codec(CodecSpec::qsgd(bits, 16));
    const size_t n = 37;  // 37·bits is not a multiple of 8 for bits 2 and 4
    const auto msg = valid_message(*codec, n, 0);
    const size_t codes = kHeaderBytes + 4 * 3;
    auto bad = msg;
    bad[codes + 2] |= static_cast<uint8_t>((1u << bits) - 1);  // all ones in the first field of byte 2
    EXPECT_TRUE(contains(expect_corrupt(*codec, bad, n, 0), "is not a level")) << bits;
    if ((n * bits) % 8 != 0) {
      auto pad = msg;
      pad.back() |= 0x80;
      EXPECT_TRUE(contains(expect_corrupt(*codec, pad, n, 0), "padding"));
    }
  }
}

TEST(CodecCorruption, SignPaddingAndRandkSeedAreChecked) {
  const auto sign = make_codec(CodecSpec::sign(8));
  auto msg = valid_message(*sign, 13, 0);
  msg.back() |= 0x40;
  EXPECT_TRUE(contains(expect_corrupt(*sign, msg, 13, 0), "padding"));
  const auto randk = make_codec(CodecSpec::randk(0.5));
  EXPECT_TRUE(contains(expect_corrupt(*randk, valid_message(*randk, 100, 7), 100, 8), "seed 7, expected 8"));
}

TEST(CodecCorruption, RandomGarbageIsRejected) {
  std::mt19937_64 rng(1);
  for (const auto& spec : all_specs()) {
    const auto codec = make_codec(spec);
    for (int t = 0; t < 200; ++t) {
      std::vector<uint8_t> junk(rng() % 300);
      for (auto& b : junk) b = static_cast<uint8_t>(rng());
      expect_corrupt(*codec, junk, 10, 0);
    }
  }
}

TEST(CodecCorruption, NullMessageIsABadArgument) {
  const auto codec = make_codec(CodecSpec::fp16());
  float out[4];
  EXPECT_THROW(codec->decode(nullptr, 10, 4, 0, out), std::invalid_argument);
  EXPECT_THROW(codec->decode(nullptr, 0, 4, 0, out), CorruptMessage);
}

}  // namespace
}  // namespace saddle::codec
