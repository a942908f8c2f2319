#include "core/codec/wire.h"

#include <array>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "core/check.h"

namespace saddle::codec {
namespace {

constexpr size_t kCrcOffset = 44;

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int b = 0; b < 8; ++b) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}

template <typename T>
void put(uint8_t* out, size_t offset, T v) {
  std::memcpy(out + offset, &v, sizeof(T));
}

template <typename T>
T get(const uint8_t* in, size_t offset) {
  T v;
  std::memcpy(&v, in + offset, sizeof(T));
  return v;
}

std::string hex(uint32_t v) {
  std::ostringstream out;
  out << "0x" << std::hex << std::setw(8) << std::setfill('0') << v;
  return out.str();
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t len) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < len; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

void write_header(const Header& h, uint8_t* out) {
  put<uint32_t>(out, 0, kWireMagic);
  put<uint16_t>(out, 4, kWireVersion);
  put<uint8_t>(out, 6, h.codec);
  put<uint8_t>(out, 7, h.bits);
  put<uint32_t>(out, 8, h.block_size);
  put<double>(out, 12, h.ratio);
  put<uint64_t>(out, 20, h.count);
  put<uint64_t>(out, 28, h.payload_bytes);
  put<uint64_t>(out, 36, h.seed);
  put<uint32_t>(out, kCrcOffset, crc32(out, kCrcOffset));
}

Header read_header(const uint8_t* msg, size_t len) {
  if (msg == nullptr && len > 0) throw std::invalid_argument("read_header: null message");
  if (len < kHeaderBytes) {
    throw CorruptMessage(
        detail::concat("truncated: ", len, " bytes, shorter than the ", kHeaderBytes, "-byte header"));
  }
  const uint32_t magic = get<uint32_t>(msg, 0);
  if (magic != kWireMagic) {
    throw CorruptMessage(detail::concat("bad magic ", hex(magic), ", expected ", hex(kWireMagic),
                                        " (not a saddle codec message)"));
  }
  const uint16_t version = get<uint16_t>(msg, 4);
  if (version != kWireVersion) {
    throw CorruptMessage(detail::concat("wire version ", version, ", expected ", kWireVersion));
  }
  const uint32_t stored = get<uint32_t>(msg, kCrcOffset), actual = crc32(msg, kCrcOffset);
  if (stored != actual) {
    throw CorruptMessage(
        detail::concat("header checksum mismatch: stored ", hex(stored), ", computed ", hex(actual)));
  }
  Header h;
  h.codec = get<uint8_t>(msg, 6);
  h.bits = get<uint8_t>(msg, 7);
  h.block_size = get<uint32_t>(msg, 8);
  h.ratio = get<double>(msg, 12);
  h.count = get<uint64_t>(msg, 20);
  h.payload_bytes = get<uint64_t>(msg, 28);
  h.seed = get<uint64_t>(msg, 36);
  return h;
}

}  // namespace saddle::codec
