// The device codecs' arithmetic (csrc/cuda/*_math.h, the __host__ __device__ functions the kernels
// call), run on the host over the kernels' own block/thread decomposition, against the CPU codecs:
// the same message bytes, and the same decoded bits. Needs neither nvcc nor a GPU; what only a GPU
// can check (the launches themselves) is tests/cuda/codec_device_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/codec/codec.h"
#include "core/codec/half.h"
#include "core/codec/rng.h"
#include "core/codec/simd.h"
#include "cuda/block_layout.h"
#include "cuda/message.h"
#include "cuda/qsgd_math.h"
#include "cuda/rng.h"
#include "cuda/sign_math.h"
#include "cuda/two_byte_math.h"

namespace saddle::cuda {
namespace {

using codec::CodecId;
using codec::CodecSpec;

uint32_t bits_of(float f) { return float_bits(f); }
float from_bits(uint32_t u) { return bits_float(u); }

// ---- the kernels, emulated: same functions, same decomposition, loops for threads ----

// Element-wise kernels (fp16, bf16 encode; every decode): thread i handles element i.
std::vector<uint8_t> encode_payload_two_byte(CodecId id, const std::vector<float>& x) {
  std::vector<uint8_t> p(2 * x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    if (id == CodecId::kFp16)
      two_byte::encode_element<two_byte::Fp16>(x.data(), i, p.data());
    else
      two_byte::encode_element<two_byte::Bf16>(x.data(), i, p.data());
  }
  return p;
}

// qsgd.cu's encode_kernel: one CUDA block of `threads` per codec block, steps 1-4 of qsgd_math.h.
std::vector<uint8_t> encode_payload_qsgd(const CodecSpec& spec, const std::vector<float>& x, uint64_t seed,
                                         unsigned threads) {
  const BlockLayout layout{x.size(), spec.block_size, spec.bits};
  std::vector<uint8_t> p(layout.payload_bytes(), 0xAB);  // poison: every byte must be written
  const float s = static_cast<float>(qsgd::levels(spec.bits));
  std::vector<float> partial(threads);
  for (size_t j = 0; j < layout.blocks(); ++j) {
    const float* xb = x.data() + layout.first(j);
    const size_t len = layout.length(j);
    for (unsigned t = 0; t < threads; ++t) partial[t] = qsgd::max_abs_partial(xb, len, t, threads);
    for (unsigned h = threads / 2; h > 0; h /= 2)
      for (unsigned t = 0; t < h; ++t) partial[t] = qsgd::max_combine(partial[t], partial[t + h]);
    const float scale = qsgd::block_scale(partial[0]);
    store_f32(p.data() + 4 * j, scale);
    const float inv = qsgd::inverse_scale(scale, s);
    const uint64_t key = rng::block_key(seed, j);
    uint8_t* codes = p.data() + layout.code_offset(j);
    for (unsigned t = 0; t < threads; ++t)
      for (size_t q = t; q < layout.block_code_bytes(j); q += threads)
        codes[q] = qsgd::encode_byte(xb, len, q, spec.bits, inv, s, key);
  }
  return p;
}

// sign.cu's encode_kernel: steps 1-3 of sign_math.h.
std::vector<uint8_t> encode_payload_sign(const CodecSpec& spec, const std::vector<float>& x,
                                         unsigned threads) {
  const BlockLayout layout{x.size(), spec.block_size, 1};
  std::vector<uint8_t> p(layout.payload_bytes(), 0xAB);
  float lanes[sign::kLanes];
  for (size_t j = 0; j < layout.blocks(); ++j) {
    const float* xb = x.data() + layout.first(j);
    const size_t len = layout.length(j);
    for (unsigned r = 0; r < sign::kLanes; ++r) lanes[r] = sign::lane_abs_sum(xb, len, r);
    store_f32(p.data() + 4 * j, sign::block_scale(lanes, len));
    uint8_t* bits = p.data() + layout.code_offset(j);
    for (unsigned t = 0; t < threads; ++t)
      for (size_t q = t; q < layout.block_code_bytes(j); q += threads) bits[q] = sign::sign_byte(xb, len, q);
  }
  return p;
}

// The whole message as saddle::cuda::encode assembles it: header_bytes, then the kernels' payload.
std::vector<uint8_t> device_message(const codec::Codec& c, const std::vector<float>& x, uint64_t seed,
                                    unsigned threads) {
  const CodecSpec& spec = c.spec();
  std::vector<uint8_t> payload;
  if (spec.id == CodecId::kQsgd)
    payload = encode_payload_qsgd(spec, x, seed, threads);
  else if (spec.id == CodecId::kSign)
    payload = encode_payload_sign(spec, x, threads);
  else
    payload = encode_payload_two_byte(spec.id, x);
  const HeaderBytes h = header_bytes(c, x.size(), seed);
  std::vector<uint8_t> msg(h.size() + payload.size());
  std::copy(h.begin(), h.end(), msg.begin());
  std::copy(payload.begin(), payload.end(), msg.begin() + h.size());
  return msg;
}

// The decode kernels: thread i writes out[i] (decode) or adds alpha times it (decode_add).
void device_decode(const codec::Codec& c, const std::vector<uint8_t>& msg, size_t n, float alpha, float* out,
                   bool accumulate) {
  const CodecSpec& spec = c.spec();
  const uint8_t* payload = msg.data() + codec::kHeaderBytes;
  for (size_t i = 0; i < n; ++i) {
    switch (spec.id) {
      case CodecId::kFp16:
        two_byte::decode_element<two_byte::Fp16>(payload, i, alpha, out, accumulate);
        break;
      case CodecId::kBf16:
        two_byte::decode_element<two_byte::Bf16>(payload, i, alpha, out, accumulate);
        break;
      case CodecId::kQsgd:
        put(out + i, qsgd::decode_value(payload, {n, spec.block_size, spec.bits}, i), alpha, accumulate);
        break;
      case CodecId::kSign:
        put(out + i, sign::decode_value(payload, {n, spec.block_size, 1}, i), alpha, accumulate);
        break;
      default:
        FAIL() << "no device codec " << codec::to_string(spec);
    }
  }
}

// ---- inputs ----

std::vector<CodecSpec> device_specs() {
  return {CodecSpec::fp16(),       CodecSpec::bf16(),        CodecSpec::qsgd(2, 8),  CodecSpec::qsgd(2, 16),
          CodecSpec::qsgd(2, 256), CodecSpec::qsgd(4, 24),   CodecSpec::qsgd(4, 64), CodecSpec::int8(),
          CodecSpec::int8(8),      CodecSpec::qsgd(8, 1000), CodecSpec::sign(8),     CodecSpec::sign(24),
          CodecSpec::sign(256),    CodecSpec::sign(4096)};
}

const std::vector<size_t> kSizes = {0,  1,  2,  7,  8,   9,   15,  16,   17,   23,   24,
                                    25, 63, 64, 65, 255, 256, 257, 1000, 1001, 4099, 65537};
const std::vector<uint64_t> kSeeds = {0, 1, 42, 0x9E3779B97F4A7C15ull, ~0ull};

float nan_with(uint32_t payload, bool negative) {
  return from_bits((negative ? 0x80000000u : 0u) | 0x7F800000u |
                   (payload & 0x7FFFFFu ? payload & 0x7FFFFFu : 1u));
}

// Normal values with zeros, -0, ties (0.5), float denormals, tiny values a qsgd scale blows up,
// values beyond fp16's range and fp16-subnormal ones. With nan_window > 0 also ±inf, and in each
// aligned window of nan_window elements at most one quiet or signalling NaN of either sign. (Where
// one float addition meets two NaNs, x86 returns its first operand, and which one that is in the
// CPU codecs is the compiler's choice: see SignScaleWithTwoNaNsDiffersOnlyInNanPayload.)
std::vector<float> awkward_vector(size_t n, uint64_t seed, size_t nan_window = 0) {
  const bool non_finite = nan_window > 0;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) {
    switch (rng() % 20) {
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
      case 5:
        v = normal(rng) * 1e-6f;
        break;
      case 6:
        v = normal(rng) * 1e-37f;
        break;
      case 7:
        v = non_finite ? std::numeric_limits<float>::infinity() : 65520.0f;
        break;
      case 8:
        v = non_finite ? -std::numeric_limits<float>::infinity() : -65504.0f;
        break;
      default:
        v = normal(rng);
    }
  }
  for (size_t w = 0; non_finite && w < n; w += nan_window) {
    if (rng() % 4 == 0) continue;
    const size_t i = w + rng() % std::min(nan_window, n - w);
    x[i] = nan_with(static_cast<uint32_t>(rng()), rng() % 2 == 1);
  }
  return x;
}

// Whole blocks of one kind, where max-abs, the scale and the codes take their special paths.
std::vector<float> special_blocks(size_t block) {
  std::vector<float> x;
  const auto add_block = [&](float v) { x.insert(x.end(), block, v); };
  add_block(0.0f);
  add_block(-0.0f);
  add_block(1e-36f);   // below kMinScale: sent as zeros
  add_block(1e-35f);   // at kMinScale
  add_block(1e-44f);   // float denormals
  add_block(3.0e38f);  // near FLT_MAX: sign's sum overflows to inf
  add_block(-2.5f);
  for (size_t i = 0; i < block; ++i) x.push_back(static_cast<float>(i) - 3.5f);  // exact quarter levels
  x.push_back(1.0f);                                                             // a short last block
  return x;
}

std::vector<uint8_t> cpu_encode(const codec::Codec& c, const std::vector<float>& x, uint64_t seed) {
  std::vector<uint8_t> msg(c.encoded_bytes(x.size()));
  c.encode(x.data(), x.size(), seed, msg.data(), msg.size());
  return msg;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), 4 * a.size()) == 0;
}

size_t first_difference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

// Encode bytes, decode bits and decode_add bits against the CPU codec, for 32 and 256 threads.
void expect_like_cpu(const codec::Codec& c, const std::vector<float>& x, uint64_t seed) {
  const std::vector<uint8_t> cpu = cpu_encode(c, x, seed);
  for (unsigned threads : {32u, 256u}) {
    const std::vector<uint8_t> dev = device_message(c, x, seed, threads);
    ASSERT_EQ(dev.size(), cpu.size());
    ASSERT_TRUE(dev == cpu) << "n = " << x.size() << ", seed = " << seed << ", threads = " << threads
                            << ": first different byte " << first_difference(dev, cpu);
  }
  const size_t n = x.size();
  std::vector<float> want(n), got(n, 7.0f);
  c.decode(cpu.data(), cpu.size(), n, seed, want.data());
  device_decode(c, cpu, n, 1.0f, got.data(), false);
  ASSERT_TRUE(same_bits(got, want)) << "decode, n = " << n;
  std::vector<float> acc = awkward_vector(n, seed ^ 0x5555), dev_acc = acc;
  c.decode_add(cpu.data(), cpu.size(), n, seed, -0.375f, acc.data());
  device_decode(c, cpu, n, -0.375f, dev_acc.data(), true);
  ASSERT_TRUE(same_bits(dev_acc, acc)) << "decode_add, n = " << n;
}

// Runs `body` with the CPU codecs' AVX2 kernels (where the CPU has them) and with the portable ones.
template <typename Fn>
void with_each_cpu_kernel(Fn&& body) {
  {
    SCOPED_TRACE("CPU kernels: default");
    body();
  }
  codec::simd::force_portable(true);
  {
    SCOPED_TRACE("CPU kernels: portable");
    body();
  }
  codec::simd::force_portable(false);
}

// ---- tests ----

TEST(CudaCodecMath, RngMatchesCore) {
  std::mt19937_64 gen(3);
  for (int k = 0; k < 100000; ++k) {
    const uint64_t a = gen(), b = k % 2 ? gen() : gen() % 1000;
    const uint32_t i = static_cast<uint32_t>(gen());
    ASSERT_EQ(rng::splitmix64(a), codec::rng::splitmix64(a));
    ASSERT_EQ(rng::block_key(a, b), codec::rng::block_key(a, b));
    ASSERT_EQ(rng::draw32(a, i), codec::rng::draw32(a, i));
  }
}

TEST(CudaCodecMath, HalfConversionsMatchCore) {
  // Every high half-word with low half-words at every rounding position, just off it, and all ones:
  // every tie and near-tie of fp16 (normal and subnormal results) and bf16, every special class.
  std::vector<uint32_t> lows = {0, 0xFFFF};
  for (int k = 0; k < 16; ++k) {
    lows.push_back(1u << k);
    lows.push_back((1u << k) - 1);
    lows.push_back((1u << k) + 1);
  }
  for (uint32_t hi = 0; hi < 0x10000; ++hi) {
    for (uint32_t lo : lows) {
      const float f = from_bits(hi << 16 | lo);
      ASSERT_EQ(two_byte::fp16_from_float(f), codec::half::from_float(f)) << std::hex << (hi << 16 | lo);
      ASSERT_EQ(two_byte::bf16_from_float(f), codec::half::bf16_from_float(f)) << std::hex << (hi << 16 | lo);
    }
  }
  std::mt19937 gen(5);
  for (int k = 0; k < 1000000; ++k) {
    const float f = from_bits(static_cast<uint32_t>(gen()));
    ASSERT_EQ(two_byte::fp16_from_float(f), codec::half::from_float(f));
    ASSERT_EQ(two_byte::bf16_from_float(f), codec::half::bf16_from_float(f));
  }
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto h16 = static_cast<uint16_t>(h);
    ASSERT_EQ(bits_of(two_byte::fp16_to_float(h16)), bits_of(codec::half::to_float(h16))) << h;
    ASSERT_EQ(bits_of(two_byte::bf16_to_float(h16)), bits_of(codec::half::bf16_to_float(h16))) << h;
  }
}

TEST(CudaCodecMath, X86NanRules) {
  // What the device rewrites its NaN results to, checked against this (x86) host's own results.
  const float inf = std::numeric_limits<float>::infinity();
  const float qnan = nan_with(0x400123, true), snan = nan_with(0x000456, false);
  volatile float vi = inf, vz = 0.0f, vq = qnan, vs = snan, one = 1.0f;
  EXPECT_EQ(bits_of(mul_rn(inf, 0.0f)), bits_of(vi * vz));
  EXPECT_EQ(bits_of(mul_rn(inf, 0.0f)), kDefaultNanBits);
  EXPECT_EQ(bits_of(add_rn(inf, -inf)), bits_of(vi + -vi));
  EXPECT_EQ(bits_of(sub_rn(inf, inf)), bits_of(vi - vi));
  EXPECT_EQ(bits_of(div_rn(0.0f, 0.0f)), bits_of(vz / vz));
  EXPECT_EQ(bits_of(add_rn(qnan, 1.0f)), bits_of(vq + one));
  EXPECT_EQ(bits_of(add_rn(1.0f, snan)), bits_of(one + vs));    // quietened, sign and payload kept
  EXPECT_EQ(bits_of(mul_rn(-1.0f, qnan)), bits_of(-one * vq));  // no sign flip on a NaN
  EXPECT_EQ(bits_of(div_rn(snan, 3.0f)), bits_of(vs / 3.0f));
  EXPECT_EQ(bits_of(abs_bits(qnan)), bits_of(qnan) & 0x7FFFFFFFu);
}

TEST(CudaCodecMath, LayoutMatchesCorePayloadSizes) {
  for (const auto& spec : device_specs()) {
    const auto c = codec::make_codec(spec);
    for (size_t n : kSizes) {
      size_t bytes = 2 * n;
      if (spec.id == CodecId::kQsgd) bytes = BlockLayout{n, spec.block_size, spec.bits}.payload_bytes();
      if (spec.id == CodecId::kSign) bytes = BlockLayout{n, spec.block_size, 1}.payload_bytes();
      ASSERT_EQ(bytes, c->payload_bytes(n)) << codec::to_string(spec) << ", n = " << n;
    }
  }
}

TEST(CudaCodecMath, MessagesMatchCpuFinite) {
  with_each_cpu_kernel([] {
    for (const auto& spec : device_specs()) {
      SCOPED_TRACE(codec::to_string(spec));
      const auto c = codec::make_codec(spec);
      for (size_t n : kSizes)
        for (uint64_t seed : kSeeds) expect_like_cpu(*c, awkward_vector(n, seed + n), seed);
    }
  });
}

TEST(CudaCodecMath, MessagesMatchCpuSpecialBlocks) {
  with_each_cpu_kernel([] {
    for (const auto& spec : device_specs()) {
      SCOPED_TRACE(codec::to_string(spec));
      const auto c = codec::make_codec(spec);
      const size_t block = spec.block_size ? spec.block_size : 64;
      for (uint64_t seed : kSeeds) expect_like_cpu(*c, special_blocks(block), seed);
    }
  });
}

TEST(CudaCodecMath, MessagesMatchPortableCpuNonFinite) {
  // ±inf and NaN input: the device reproduces the CPU's portable kernels (and so the x86 NaN rules,
  // host_device.h); codec.h leaves the AVX2 kernels' output for such input unspecified.
  codec::simd::force_portable(true);
  for (const auto& spec : device_specs()) {
    SCOPED_TRACE(codec::to_string(spec));
    const auto c = codec::make_codec(spec);
    // Many NaNs where no float operation can meet two (fp16, bf16, qsgd); one per block for sign.
    const size_t window = spec.id == CodecId::kSign ? spec.block_size : 8;
    for (size_t n : kSizes)
      for (uint64_t seed : kSeeds) expect_like_cpu(*c, awkward_vector(n, seed * 3 + n, window), seed);
    const size_t block = spec.block_size ? spec.block_size : 64;
    std::vector<float> x = special_blocks(block);
    const float inf = std::numeric_limits<float>::infinity();
    x.insert(x.end(), block, inf);  // qsgd: scale inf, every code the top level; sign: mean inf
    x.insert(x.end(), block, -inf);
    x.insert(x.end(), block, 0.25f);
    x[x.size() - 3] = nan_with(0x1234, true);  // one NaN in an otherwise finite block
    expect_like_cpu(*c, x, 9);
  }
  codec::simd::force_portable(false);
}

TEST(CudaCodecMath, DecodeMatchesCpuOnNonFiniteWireValues) {
  // Scales a peer may send (the payload check does not look at them): inf, NaN, denormal, 0.
  // inf · (code − s = 0) and alpha = 0 times inf make fresh NaNs, x86's default one on the CPU.
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> scales = {
      inf, -inf, nan_with(0x2345, false), nan_with(0x400001, true), 1e-44f, 0.0f, -0.0f, 3.0e38f};
  with_each_cpu_kernel([&] {
    for (const auto& spec : {CodecSpec::qsgd(2, 8), CodecSpec::qsgd(4, 16), CodecSpec::int8(8),
                             CodecSpec::sign(8), CodecSpec::sign(16)}) {
      SCOPED_TRACE(codec::to_string(spec));
      const auto c = codec::make_codec(spec);
      const size_t n = spec.block_size * scales.size() - 3;
      std::vector<uint8_t> msg = cpu_encode(*c, awkward_vector(n, 17), 1);
      for (size_t j = 0; j < scales.size(); ++j)
        store_f32(msg.data() + codec::kHeaderBytes + 4 * j, scales[j]);
      for (float alpha : {1.0f, -0.5f, 0.0f}) {
        std::vector<float> want(n), got(n);
        c->decode(msg.data(), msg.size(), n, 1, want.data());
        device_decode(*c, msg, n, 1.0f, got.data(), false);
        ASSERT_TRUE(same_bits(got, want));
        std::vector<float> acc = awkward_vector(n, 23), dev_acc = acc;
        c->decode_add(msg.data(), msg.size(), n, 1, alpha, acc.data());
        device_decode(*c, msg, n, alpha, dev_acc.data(), true);
        ASSERT_TRUE(same_bits(dev_acc, acc)) << "alpha " << alpha;
      }
    }
  });
}

TEST(CudaCodecMath, DecodeAddIntoNonFiniteAccumulator) {
  // acc holding ±inf and NaN (a diverged model): the x86 rules for acc + alpha·v, v finite.
  const float inf = std::numeric_limits<float>::infinity();
  with_each_cpu_kernel([&] {
    for (const auto& spec : {CodecSpec::fp16(), CodecSpec::bf16(), CodecSpec::int8(), CodecSpec::qsgd(2, 16),
                             CodecSpec::sign(24)}) {
      SCOPED_TRACE(codec::to_string(spec));
      const auto c = codec::make_codec(spec);
      const size_t n = 1003;
      const std::vector<uint8_t> msg = cpu_encode(*c, awkward_vector(n, 29), 2);
      std::vector<float> acc = awkward_vector(n, 31);
      for (size_t i = 0; i < n; i += 5)
        acc[i] = i % 3 == 0 ? inf : i % 3 == 1 ? -inf : nan_with(0x777, i % 2);
      std::vector<float> dev_acc = acc;
      c->decode_add(msg.data(), msg.size(), n, 2, 0.75f, acc.data());
      device_decode(*c, msg, n, 0.75f, dev_acc.data(), true);
      ASSERT_TRUE(same_bits(dev_acc, acc));
    }
  });
}

TEST(CudaCodecMath, SignScaleWithTwoNaNsDiffersOnlyInNanPayload) {
  // Two NaNs in one sign block meet in a float addition (same lane, or lanes in reduce8). x86 then
  // returns its first operand, and the CPU codec's operand order is the compiler's (GCC 12 -O3
  // makes |x| the first operand of abs_sum_portable's tail loop, not the lane), so the NaN payload
  // of such a scale is not reproducible; the device takes the lane. Everything else is.
  codec::simd::force_portable(true);
  for (const auto& spec : {CodecSpec::sign(24), CodecSpec::sign(256)}) {
    const auto c = codec::make_codec(spec);
    for (uint64_t seed : kSeeds) {
      const auto x = awkward_vector(1000, seed, 7);
      const auto cpu = cpu_encode(*c, x, seed), dev = device_message(*c, x, seed, 32);
      ASSERT_EQ(cpu.size(), dev.size());
      const size_t scales_end = codec::kHeaderBytes + 4 * BlockLayout{x.size(), spec.block_size, 1}.blocks();
      for (size_t b = codec::kHeaderBytes; b < scales_end; b += 4) {
        const float want = load_f32(cpu.data() + b), got = load_f32(dev.data() + b);
        if (is_nan(want))
          ASSERT_TRUE(is_nan(got)) << "scale at byte " << b;
        else
          ASSERT_EQ(bits_of(got), bits_of(want)) << "scale at byte " << b;
      }
      ASSERT_TRUE(std::equal(cpu.begin(), cpu.begin() + codec::kHeaderBytes, dev.begin()));
      ASSERT_TRUE(std::equal(cpu.begin() + scales_end, cpu.end(), dev.begin() + scales_end));
    }
  }
  codec::simd::force_portable(false);
}

TEST(CudaCodecMath, EveryPayloadByteIsWritten) {
  // The emulation starts from poisoned payloads, so a byte no thread writes would show up above;
  // this pins the decomposition for a thread count larger than a block's bytes.
  const auto c = codec::make_codec(CodecSpec::qsgd(2, 8));
  const auto x = awkward_vector(77, 1);
  EXPECT_EQ(device_message(*c, x, 5, 256), cpu_encode(*c, x, 5));
}

}  // namespace
}  // namespace saddle::cuda
