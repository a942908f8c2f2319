// Fuzz target for the codec decoders: arbitrary bytes must either decode or raise CorruptMessage,
// never crash, read or write out of bounds, or write output before rejecting.
//
// Input: byte 0 is a mode, the rest the message. Mode bit 0 set: the header checksum is recomputed
// first, so the fuzzer gets past it to the field and payload checks. Each input is decoded by every
// codec below, for a few element counts and for the count the header claims (when small).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "core/codec/codec.h"

namespace {

using saddle::codec::Codec;
using saddle::codec::CodecSpec;
using saddle::codec::CorruptMessage;

const std::vector<std::unique_ptr<Codec>>& fuzzed_codecs() {
  static const auto* codecs = [] {
    auto* list = new std::vector<std::unique_ptr<Codec>>;
    for (const CodecSpec& s :
         {CodecSpec::none(), CodecSpec::fp16(), CodecSpec::bf16(), CodecSpec::qsgd(2, 8),
          CodecSpec::qsgd(4, 16), CodecSpec::int8(8), CodecSpec::int8(256), CodecSpec::topk(0.01),
          CodecSpec::topk(0.5), CodecSpec::topk(1.0), CodecSpec::randk(0.1), CodecSpec::randk(1.0),
          CodecSpec::sign(8), CodecSpec::sign(64)}) {
      list->push_back(saddle::codec::make_codec(s));
    }
    return list;
  }();
  return *codecs;
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "decode_fuzz: %s\n", what);
  std::abort();
}

void try_decode(const Codec& codec, const std::vector<uint8_t>& msg, size_t n, uint64_t seed) {
  std::vector<float> out(n, 7.0f);  // exactly n: ASan flags any write past it
  try {
    codec.decode(msg.data(), msg.size(), n, seed, out.data());
  } catch (const CorruptMessage&) {
    for (float v : out)
      if (v != 7.0f) fail("output written before CorruptMessage");
    return;
  }
  // Accepted once, so decode_add must accept it too (any exception escaping aborts the run).
  codec.decode_add(msg.data(), msg.size(), n, seed, 0.5f, out.data());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool fix_checksum = data[0] & 1;
  std::vector<uint8_t> msg(data + 1, data + size);  // own copy, exactly sized, for ASan
  uint64_t count = 0, seed = 0;
  if (msg.size() >= saddle::codec::kHeaderBytes) {
    if (fix_checksum) {
      const uint32_t crc = saddle::codec::crc32(msg.data(), 44);
      std::memcpy(msg.data() + 44, &crc, 4);
    }
    std::memcpy(&count, msg.data() + 20, 8);
    std::memcpy(&seed, msg.data() + 36, 8);
  }
  std::vector<size_t> counts = {0, 1, 13, 64, 300};
  if (count <= (1u << 16)) counts.push_back(static_cast<size_t>(count));
  for (const auto& codec : fuzzed_codecs())
    for (size_t n : counts) try_decode(*codec, msg, n, seed);
  return 0;
}
