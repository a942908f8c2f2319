// Output depends only on (x, n, seed, spec): not on the thread count, nor on the SIMD kernels used.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/codec/codec.h"
#include "core/codec/simd.h"

namespace saddle::codec {
namespace {

std::vector<CodecSpec> all_specs() {
  return {CodecSpec::none(),        CodecSpec::fp16(),      CodecSpec::bf16(),      CodecSpec::qsgd(2, 16),
          CodecSpec::qsgd(2, 256),  CodecSpec::qsgd(4, 40), CodecSpec::qsgd(4, 64), CodecSpec::int8(),
          CodecSpec::qsgd(8, 1024), CodecSpec::topk(0.01),  CodecSpec::topk(0.3),   CodecSpec::randk(0.25),
          CodecSpec::randk(0.9),    CodecSpec::sign(8),     CodecSpec::sign(256)};
}

// Normal values with some zeros, negative zeros, ties, subnormals and values beyond fp16's range.
std::vector<float> awkward_vector(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) {
    switch (rng() % 16) {
      case 0:
        v = 0.0f;
        break;
      case 1:
        v = -0.0f;
        break;
      case 2:
        v = 0.5f;
        break;
      case 3:
        v = normal(rng) * 1e-40f;
        break;
      case 4:
        v = normal(rng) * 1e5f;
        break;
      default:
        v = normal(rng);
    }
  }
  return x;
}

std::vector<uint8_t> encode(const Codec& c, const std::vector<float>& x, uint64_t seed, const Parallel& par) {
  std::vector<uint8_t> msg(c.encoded_bytes(x.size()));
  c.encode(x.data(), x.size(), seed, msg.data(), msg.size(), par);
  return msg;
}

std::vector<float> decode(const Codec& c, const std::vector<uint8_t>& msg, size_t n, uint64_t seed,
                          const Parallel& par) {
  std::vector<float> out(n);
  c.decode(msg.data(), msg.size(), n, seed, out.data(), par);
  return out;
}

// Bitwise, so NaN == NaN and -0 != +0.
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), 4 * a.size()) == 0;
}

TEST(CodecDeterminism, SameSeedSameBytes) {
  const auto x = awkward_vector(3001, 1);
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    EXPECT_EQ(encode(*codec, x, 11, serial()), encode(*codec, x, 11, serial()));
  }
}

TEST(CodecDeterminism, IndependentOfThreadCount) {
  // Large enough for several parallel tasks in every codec (topk selects in chunks of 2^17).
  const size_t n = 300007;
  const auto x = awkward_vector(n, 2);
  const Parallel four = thread_pool_parallel(4), three = thread_pool_parallel(3);
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    const auto msg = encode(*codec, x, 5, serial());
    ASSERT_EQ(encode(*codec, x, 5, four), msg);
    ASSERT_EQ(encode(*codec, x, 5, three), msg);
    const auto y = decode(*codec, msg, n, 5, serial());
    ASSERT_TRUE(same_bits(decode(*codec, msg, n, 5, four), y));
    std::vector<float> acc(n, 1.0f), acc4(n, 1.0f);
    codec->decode_add(msg.data(), msg.size(), n, 5, -0.5f, acc.data());
    codec->decode_add(msg.data(), msg.size(), n, 5, -0.5f, acc4.data(), four);
    ASSERT_TRUE(same_bits(acc, acc4));
  }
}

TEST(CodecDeterminism, PortableKernelsMatchAvx2) {
  if (!simd::avx2()) GTEST_SKIP() << "no AVX2/F16C on this CPU";
  const auto x = awkward_vector(5003, 3);  // odd length: vector bodies and scalar tails
  for (const auto& spec : all_specs()) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    const auto fast = encode(*codec, x, 9, serial());
    const auto fast_y = decode(*codec, fast, x.size(), 9, serial());
    std::vector<float> fast_acc(x.size(), 2.0f);
    codec->decode_add(fast.data(), fast.size(), x.size(), 9, 0.25f, fast_acc.data());
    simd::force_portable(true);
    const auto slow = encode(*codec, x, 9, serial());
    const auto slow_y = decode(*codec, fast, x.size(), 9, serial());
    std::vector<float> slow_acc(x.size(), 2.0f);
    codec->decode_add(fast.data(), fast.size(), x.size(), 9, 0.25f, slow_acc.data());
    simd::force_portable(false);
    ASSERT_EQ(fast, slow);
    ASSERT_TRUE(same_bits(fast_y, slow_y));
    ASSERT_TRUE(same_bits(fast_acc, slow_acc));
  }
}

TEST(CodecDeterminism, EveryLengthAroundTheVectorWidth) {
  // Tails of every length, both kernels, for the codecs with SIMD paths.
  for (const auto& spec : {CodecSpec::fp16(), CodecSpec::bf16(), CodecSpec::qsgd(2, 8),
                           CodecSpec::qsgd(2, 64), CodecSpec::qsgd(4, 16), CodecSpec::qsgd(4, 24),
                           CodecSpec::int8(32), CodecSpec::sign(8), CodecSpec::sign(24)}) {
    SCOPED_TRACE(to_string(spec));
    const auto codec = make_codec(spec);
    for (size_t n = 0; n <= 70; ++n) {
      const auto x = awkward_vector(n, n);
      const auto fast = encode(*codec, x, n, serial());
      simd::force_portable(true);
      const auto slow = encode(*codec, x, n, serial());
      simd::force_portable(false);
      ASSERT_EQ(fast, slow) << n;
    }
  }
}

}  // namespace
}  // namespace saddle::codec
