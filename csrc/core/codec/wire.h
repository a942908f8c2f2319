// Wire format of a codec message: a fixed 48-byte little-endian header, then the codec's payload.
//
//   offset size field
//   0      4    magic "SDLC" (0x53 0x44 0x4C 0x43)
//   4      2    version (kWireVersion)
//   6      1    codec id (CodecId)
//   7      1    bits (qsgd; 0 for other codecs)
//   8      4    block size (qsgd, sign; 0 for other codecs)
//   12     8    ratio, IEEE-754 binary64 (topk, randk; 0 for other codecs)
//   20     8    element count n
//   28     8    payload bytes
//   36     8    seed the message was encoded with
//   44     4    CRC-32 (IEEE 802.3, as zlib) of bytes [0, 44)
//   48          payload (layout per codec, see codec.h)
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "core/check.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the wire format is little-endian and codecs copy native floats");

namespace saddle::codec {

// A message that fails validation (truncated, altered, or meant for another codec or size). Raised
// before any output is written; what() names what is wrong.
class CorruptMessage : public ::saddle::Error {
 public:
  using Error::Error;
};

constexpr size_t kHeaderBytes = 48;
constexpr uint32_t kWireMagic = 0x434C4453u;  // "SDLC" read as a little-endian u32
constexpr uint16_t kWireVersion = 1;

// The fields of a header that the codec chooses (magic, version and checksum are implied).
struct Header {
  uint8_t codec = 0;
  uint8_t bits = 0;
  uint32_t block_size = 0;
  double ratio = 0.0;
  uint64_t count = 0;
  uint64_t payload_bytes = 0;
  uint64_t seed = 0;
};

// CRC-32 (reflected polynomial 0xEDB88320, init and final xor 0xFFFFFFFF), as zlib's crc32().
uint32_t crc32(const uint8_t* data, size_t len);

// Writes the kHeaderBytes bytes of `h` (with magic, version and checksum) to `out`.
void write_header(const Header& h, uint8_t* out);

// Parses the header of a message of `len` bytes. Checks only the header itself: length >= the
// header, magic, version, checksum. Raises CorruptMessage otherwise.
Header read_header(const uint8_t* msg, size_t len);

}  // namespace saddle::codec
