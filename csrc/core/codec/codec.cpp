#include "core/codec/codec.h"

#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "core/check.h"

namespace saddle::codec {
namespace {

uint64_t double_bits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}

std::string exact(double d) {
  std::ostringstream out;
  out << std::setprecision(17) << d;
  return out.str();
}

}  // namespace

size_t kept_count(double ratio, size_t n) {
  SADDLE_CHECK_ARG(ratio > 0.0 && ratio <= 1.0, "codec ratio must be in (0, 1], got ", ratio);
  if (n == 0) return 0;
  const double t = ratio * static_cast<double>(n);
  // The product carries a relative error of ~1e-16; shave it so 0.07·100 gives 7, not 8.
  const double k = std::ceil(t - t * 1e-12);
  if (k < 1.0) return 1;
  return k >= static_cast<double>(n) ? n : static_cast<size_t>(k);
}

size_t Codec::encode(const float* x, size_t n, uint64_t seed, uint8_t* out, size_t capacity,
                     const Parallel& par) const {
  SADDLE_CHECK_ARG(n <= kMaxElements, "encode: ", n, " elements, at most ", kMaxElements);
  SADDLE_CHECK_ARG(x != nullptr || n == 0, "encode: null input");
  SADDLE_CHECK_ARG(out != nullptr, "encode: null output");
  const size_t payload = payload_bytes(n);
  const size_t bytes = kHeaderBytes + payload;
  SADDLE_CHECK_ARG(capacity >= bytes, "encode: output holds ", capacity, " bytes, ", to_string(spec_),
                   " needs ", bytes, " for ", n, " elements");
  Header h;
  h.codec = static_cast<uint8_t>(spec_.id);
  h.bits = static_cast<uint8_t>(spec_.bits);
  h.block_size = spec_.block_size;
  h.ratio = spec_.ratio;
  h.count = n;
  h.payload_bytes = payload;
  h.seed = seed;
  write_header(h, out);
  encode_payload(x, n, seed, out + kHeaderBytes, par);
  return bytes;
}

void Codec::validate(const uint8_t* msg, size_t len, size_t n, uint64_t seed, const Parallel& par) const {
  SADDLE_CHECK_ARG(n <= kMaxElements, "decode: ", n, " elements expected, at most ", kMaxElements);
  const Header h = read_header(msg, len);
  const auto mismatch = [&](const char* field, const auto& got, const auto& want) {
    throw CorruptMessage(
        ::saddle::detail::concat(field, " ", got, ", expected ", want, " for ", to_string(spec_)));
  };
  if (h.codec != static_cast<uint8_t>(spec_.id)) {
    throw CorruptMessage(::saddle::detail::concat(
        "codec id ", static_cast<int>(h.codec), " (", codec_name(static_cast<CodecId>(h.codec)),
        "), expected ", static_cast<int>(spec_.id), " (", codec_name(spec_.id), ")"));
  }
  if (h.bits != spec_.bits) mismatch("codec parameter bits", static_cast<int>(h.bits), spec_.bits);
  if (h.block_size != spec_.block_size) mismatch("codec block size", h.block_size, spec_.block_size);
  if (double_bits(h.ratio) != double_bits(spec_.ratio)) {
    mismatch("codec ratio", exact(h.ratio), exact(spec_.ratio));
  }
  if (h.count != n) mismatch("element count", h.count, n);
  const size_t payload = payload_bytes(n);
  if (h.payload_bytes != payload) mismatch("payload length", h.payload_bytes, payload);
  const size_t expected_len = kHeaderBytes + payload;
  if (len < expected_len) {
    throw CorruptMessage(::saddle::detail::concat("truncated: ", len, " bytes, header says ", expected_len));
  }
  if (len > expected_len) {
    throw CorruptMessage(::saddle::detail::concat("oversized: ", len, " bytes, header says ", expected_len));
  }
  if (seeded_decode() && h.seed != seed) {
    throw CorruptMessage(::saddle::detail::concat("seed ", h.seed, ", expected ", seed,
                                                  " (sender and receiver disagree on the round)"));
  }
  check_payload(msg + kHeaderBytes, n, par);
}

void Codec::decode_impl(const uint8_t* msg, size_t len, size_t n, uint64_t seed, float alpha, float* out,
                        bool accumulate, const Parallel& par) const {
  SADDLE_CHECK_ARG(out != nullptr || n == 0, "decode: null output");
  validate(msg, len, n, seed, par);
  decode_payload(msg + kHeaderBytes, n, seed, alpha, out, accumulate, par);
}

void Codec::decode(const uint8_t* msg, size_t len, size_t n, uint64_t seed, float* out,
                   const Parallel& par) const {
  decode_impl(msg, len, n, seed, 1.0f, out, false, par);
}

void Codec::decode_add(const uint8_t* msg, size_t len, size_t n, uint64_t seed, float alpha, float* acc,
                       const Parallel& par) const {
  decode_impl(msg, len, n, seed, alpha, acc, true, par);
}

}  // namespace saddle::codec
