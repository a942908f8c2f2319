// The 48-byte header of a device-encoded message: a function of (codec, n, seed) only, built on the
// host by the core's write_header and copied in front of the payload the kernels write.
#pragma once

#include <array>
#include <cstdint>

#include "core/codec/codec.h"
#include "core/codec/wire.h"

namespace saddle::cuda {

using HeaderBytes = std::array<uint8_t, codec::kHeaderBytes>;

// The header Codec::encode writes for n elements and `seed`.
inline HeaderBytes header_bytes(const codec::Codec& c, size_t n, uint64_t seed) {
  const codec::CodecSpec& spec = c.spec();
  codec::Header h;
  h.codec = static_cast<uint8_t>(spec.id);
  h.bits = static_cast<uint8_t>(spec.bits);
  h.block_size = spec.block_size;
  h.ratio = spec.ratio;
  h.count = n;
  h.payload_bytes = c.payload_bytes(n);
  h.seed = seed;
  HeaderBytes out{};
  codec::write_header(h, out.data());
  return out;
}

}  // namespace saddle::cuda
