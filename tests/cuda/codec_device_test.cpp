// Device codecs against the CPU codecs on a real GPU: the message bytes of saddle::cuda::encode
// equal Codec::encode's, and decode / decode_add write the same bits as the CPU. Skips where no CUDA
// device is visible (every machine without a GPU), so it only means something on one.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/codec/codec.h"
#include "core/codec/simd.h"
#include "cuda/check.h"
#include "cuda/codec.h"
#include "device_buffer.h"

namespace saddle::cuda {
namespace {

using codec::CodecSpec;

using testing::DeviceBuffer;

std::vector<CodecSpec> device_specs() {
  return {CodecSpec::fp16(),        CodecSpec::bf16(),        CodecSpec::qsgd(2, 8), CodecSpec::qsgd(2, 256),
          CodecSpec::qsgd(4, 24),   CodecSpec::qsgd(4, 64),   CodecSpec::int8(),     CodecSpec::int8(8),
          CodecSpec::qsgd(8, 1000), CodecSpec::qsgd(8, 4096), CodecSpec::sign(8),    CodecSpec::sign(24),
          CodecSpec::sign(256),     CodecSpec::sign(4096)};
}

// As tests/cpp/cuda_codec_math_test.cpp: normal values with zeros, -0, ties, float denormals,
// values beyond fp16's range; with nan_window > 0 also ±inf, and at most one NaN in each aligned
// window of nan_window elements (two NaNs meeting in one x86 addition give a compiler-dependent
// payload on the CPU, docs/cuda_kernels.md).
std::vector<float> awkward_vector(size_t n, uint64_t seed, size_t nan_window = 0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const bool non_finite = nan_window > 0;
  const float inf = std::numeric_limits<float>::infinity();
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
        v = non_finite ? inf : 65520.0f;
        break;
      case 8:
        v = non_finite ? -inf : -65504.0f;
        break;
      default:
        v = normal(rng);
    }
  }
  for (size_t w = 0; non_finite && w < n; w += nan_window) {
    if (rng() % 4 == 0) continue;
    const size_t i = w + rng() % std::min(nan_window, n - w);
    const uint32_t bits =
        0x7F800000u | static_cast<uint32_t>(1 + rng() % 0x7FFFFF) | (rng() % 2 ? 0x80000000u : 0u);
    std::memcpy(&x[i], &bits, 4);
  }
  return x;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), 4 * a.size()) == 0;
}

void check_against_cpu(const CodecSpec& spec, const std::vector<float>& x, uint64_t seed) {
  const auto c = codec::make_codec(spec);
  const size_t n = x.size(), bytes = c->encoded_bytes(n);
  std::vector<uint8_t> cpu(bytes);
  c->encode(x.data(), n, seed, cpu.data(), cpu.size());

  DeviceBuffer<float> dx(n), dout(n);
  DeviceBuffer<uint8_t> dbuf(bytes + 1);
  uint8_t* dmsg = dbuf.ptr + n % 2;  // odd n: a message at an odd address (byte-wise access)
  dx.upload(x);
  ASSERT_EQ(encode(*c, dx.ptr, n, seed, dmsg, bytes, nullptr), bytes);
  SADDLE_CUDA_CHECK(cudaDeviceSynchronize(), "encode");
  std::vector<uint8_t> gpu = dbuf.download();
  gpu.erase(gpu.begin(), gpu.begin() + n % 2);
  gpu.resize(bytes);
  ASSERT_EQ(gpu, cpu) << "n = " << n << ", seed = " << seed;

  std::vector<float> want(n);
  c->decode(cpu.data(), cpu.size(), n, seed, want.data());
  decode(*c, dmsg, n, dout.ptr, nullptr);
  SADDLE_CUDA_CHECK(cudaDeviceSynchronize(), "decode");
  auto got = dout.download();
  got.resize(n);
  ASSERT_TRUE(same_bits(got, want)) << "decode, n = " << n;

  std::vector<float> acc = awkward_vector(n, seed + 1);
  dout.upload(acc);
  c->decode_add(cpu.data(), cpu.size(), n, seed, -0.375f, acc.data());
  decode_add(*c, dmsg, n, -0.375f, dout.ptr, nullptr);
  SADDLE_CUDA_CHECK(cudaDeviceSynchronize(), "decode_add");
  got = dout.download();
  got.resize(n);
  ASSERT_TRUE(same_bits(got, acc)) << "decode_add, n = " << n;
}

TEST(CudaCodecDevice, MatchesCpuBytesFinite) {
  SADDLE_REQUIRE_GPU();
  for (const auto& spec : device_specs()) {
    SCOPED_TRACE(codec::to_string(spec));
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{255}, size_t{257}, size_t{5003},
                     size_t{65537}, size_t{1} << 20})
      for (uint64_t seed : {0ull, 1ull, 0xDEADBEEFCAFEull})
        check_against_cpu(spec, awkward_vector(n, seed + n), seed);
  }
}

TEST(CudaCodecDevice, MatchesPortableCpuBytesNonFinite) {
  SADDLE_REQUIRE_GPU();
  // The device follows the CPU's portable kernels; the AVX2 ones differ for NaN input (codec.h).
  codec::simd::force_portable(true);
  for (const auto& spec : device_specs()) {
    SCOPED_TRACE(codec::to_string(spec));
    const size_t window = spec.id == codec::CodecId::kSign ? spec.block_size : 8;
    for (size_t n : {size_t{1}, size_t{9}, size_t{257}, size_t{5003}})
      for (uint64_t seed : {3ull, 4ull}) check_against_cpu(spec, awkward_vector(n, seed + n, window), seed);
  }
  codec::simd::force_portable(false);
}

TEST(CudaCodecDevice, LargeTensor) {
  SADDLE_REQUIRE_GPU();
  // 25M elements: grid-stride loops past kMaxGrid blocks for the element-wise kernels.
  const auto x = awkward_vector(size_t{25} << 20, 7);
  for (const auto& spec : {CodecSpec::fp16(), CodecSpec::int8(), CodecSpec::qsgd(2, 8), CodecSpec::sign(8)}) {
    SCOPED_TRACE(codec::to_string(spec));
    check_against_cpu(spec, x, 11);
  }
}

TEST(CudaCodecDevice, RejectsWhatTheCpuRejects) {
  const auto topk = codec::make_codec(CodecSpec::topk(0.1));
  EXPECT_FALSE(has_device_codec(codec::CodecId::kTopk));
  EXPECT_TRUE(has_device_codec(codec::CodecId::kQsgd));
  uint8_t byte = 0;
  float f = 0.0f;
  EXPECT_THROW(encode(*topk, &f, 1, 0, &byte, 1, nullptr), std::invalid_argument);
  const auto fp16 = codec::make_codec(CodecSpec::fp16());
  EXPECT_THROW(encode(*fp16, &f, 1, 0, &byte, 1, nullptr), std::invalid_argument);  // capacity
  EXPECT_THROW(encode(*fp16, nullptr, 1, 0, &byte, 100, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace saddle::cuda
