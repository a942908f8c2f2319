// Stand-alone driver for decode_fuzz.cpp when libFuzzer is not available (g++):
//   decode_fuzz_smoke [iterations=10000] [seed=1]    random and mutated-valid inputs
//   decode_fuzz_smoke FILE...                        replays inputs (corpus or crash files)
//   decode_fuzz_smoke --seed-corpus DIR [count=300]  writes valid messages as a libFuzzer corpus
// Generated inputs are mostly valid messages of every codec with a few mutations (bit flips,
// truncation, extension, header fields rewritten, payload words overwritten), so that the checks
// past the header are exercised, plus some pure noise.
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "core/codec/codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using saddle::codec::CodecSpec;

std::vector<uint8_t> valid_message(std::mt19937_64& rng) {
  static const CodecSpec specs[] = {CodecSpec::none(),     CodecSpec::fp16(),      CodecSpec::bf16(),
                                    CodecSpec::qsgd(2, 8), CodecSpec::qsgd(4, 16), CodecSpec::int8(8),
                                    CodecSpec::int8(256),  CodecSpec::topk(0.01),  CodecSpec::topk(0.5),
                                    CodecSpec::topk(1.0),  CodecSpec::randk(0.1),  CodecSpec::randk(1.0),
                                    CodecSpec::sign(8),    CodecSpec::sign(64)};
  static const size_t counts[] = {0, 1, 13, 64, 300};
  const auto codec = saddle::codec::make_codec(specs[rng() % std::size(specs)]);
  const size_t n = rng() % 4 ? counts[rng() % std::size(counts)] : rng() % 1000;
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (auto& v : x) v = rng() % 16 ? normal(rng) : 0.0f;
  std::vector<uint8_t> msg(codec->encoded_bytes(n));
  codec->encode(x.data(), n, rng(), msg.data(), msg.size());
  return msg;
}

void mutate(std::vector<uint8_t>& msg, std::mt19937_64& rng) {
  const int mutations = 1 + static_cast<int>(rng() % 3);
  for (int m = 0; m < mutations; ++m) {
    switch (rng() % 7) {
      case 0:  // flip a bit
        if (!msg.empty()) msg[rng() % msg.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // truncate
        msg.resize(msg.empty() ? 0 : rng() % msg.size());
        break;
      case 2:  // extend
        msg.resize(msg.size() + 1 + rng() % 16, static_cast<uint8_t>(rng()));
        break;
      case 3: {  // rewrite a header field with a nearby or random value
        static const size_t offsets[] = {6, 7, 8, 12, 20, 28, 36};
        const size_t off = offsets[rng() % std::size(offsets)];
        if (msg.size() < off + 8) break;
        uint64_t v;
        std::memcpy(&v, msg.data() + off, 8);
        v = rng() % 2 ? v + (rng() % 5) - 2 : rng();
        std::memcpy(msg.data() + off, &v, off == 6 || off == 7 ? 1 : off == 8 ? 4 : 8);
        break;
      }
      case 4: {  // overwrite a payload word (topk indices, qsgd codes, scales)
        if (msg.size() < saddle::codec::kHeaderBytes + 4) break;
        const size_t words = (msg.size() - saddle::codec::kHeaderBytes) / 4;
        const uint32_t v = rng() % 2 ? static_cast<uint32_t>(rng()) : static_cast<uint32_t>(rng() % 400);
        std::memcpy(msg.data() + saddle::codec::kHeaderBytes + 4 * (rng() % words), &v, 4);
        break;
      }
      case 5:  // set a random byte to an extreme
        if (!msg.empty()) msg[rng() % msg.size()] = rng() % 2 ? 0xFF : 0x00;
        break;
      default:  // leave it valid
        break;
    }
  }
}

int replay(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", argv[i]);
      return 2;
    }
    const std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(data.data(), data.size());
  }
  std::printf("decode_fuzz_smoke: replayed %d inputs, no crash\n", argc - 1);
  return 0;
}

// Valid messages, with the mode byte that keeps the checksum fixed, as libFuzzer seeds.
int write_seed_corpus(const char* dir, long long count) {
  std::mt19937_64 rng(7);
  for (long long i = 0; i < count; ++i) {
    std::vector<uint8_t> input = valid_message(rng);
    input.insert(input.begin(), 1);
    const std::string path = std::string(dir) + "/seed_" + std::to_string(i);
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(input.data()), static_cast<std::streamsize>(input.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      return 2;
    }
  }
  std::printf("decode_fuzz_smoke: wrote %lld seeds to %s\n", count, dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2 && std::strcmp(argv[1], "--seed-corpus") == 0)
    return write_seed_corpus(argv[2], argc > 3 ? std::atoll(argv[3]) : 300);
  if (argc > 1 && !std::isdigit(static_cast<unsigned char>(argv[1][0]))) return replay(argc, argv);
  const long long iterations = argc > 1 ? std::atoll(argv[1]) : 10000;
  std::mt19937_64 rng(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1);
  for (long long it = 0; it < iterations; ++it) {
    std::vector<uint8_t> input;
    if (rng() % 10 == 0) {
      input.resize(rng() % 200);
      for (auto& b : input) b = static_cast<uint8_t>(rng());
    } else {
      input = valid_message(rng);
      mutate(input, rng);
      input.insert(input.begin(), static_cast<uint8_t>(rng()));  // mode byte
    }
    LLVMFuzzerTestOneInput(input.data(), input.size());
  }
  std::printf("decode_fuzz_smoke: %lld inputs, no crash\n", iterations);
  return 0;
}
