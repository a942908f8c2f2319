// Compression codecs C(x) on raw float32 buffers, and their exact wire size.
//
// A message is the 48-byte header of wire.h followed by a payload. Payload layout and exact size
// per codec, for n elements (B = block size, nb = ceil(n / B), k = kept_count(ratio, n)):
//   none       f32 x[n]                                              4n
//   fp16       f16 x[n] (round to nearest even, ±inf beyond ±65504)  2n
//   bf16       bf16 x[n] (round to nearest even, NaN kept quiet)     2n
//   qsgd(b,B)  f32 scale[nb], then b-bit codes, element i at bit     4nb + ceil(n·b / 8)
//              (i·b mod 8) of byte i·b/8, code = level + s, s = 2^(b-1) − 1, level in [−s, s];
//              the all-ones code is invalid and padding bits are zero. int8 is qsgd(8).
//   topk(r)    f32 value[k], then u32 index[k], strictly increasing   8k
//   randk(r)   f32 x[i] for the k seeded indices i, ascending         4k
//   sign(B)    f32 scale[nb] (mean |v| of the block), then one bit    4nb + ceil(n / 8)
//              per element, bit (i mod 8) of byte i/8, 1 = negative; padding bits zero
// encoded_bytes(n) = 48 + payload. "c× compression" means encoded_bytes(n) <= 4n / c. The scale
// costs 32/B bits per element, so qsgd(8) never reaches 4× (4 / (1 + 4/B): 3.94× at B = 256) and
// topk reaches 4× only for r < 1/8.
//
// What each decodes to (decode writes it densely, zeros where nothing was sent):
//   qsgd:  level · scale / s, level = floor(t) + [u < t − floor(t)], t = |v|·s/scale, u uniform
//          on a 2^-24 grid from (seed, block, element): unbiased up to 2^-24 of a level step.
//          Blocks with scale < 1e-35 are sent as zeros.
//   topk:  x on the k entries of largest |x| (ties towards the lower index); biased,
//          ||C(x) − x||² <= (1 − k/n)·||x||².
//   randk: (n/k)·x on k indices drawn uniformly without replacement from (seed, n, k); unbiased.
//          The decoder applies the n/k scaling (the wire carries raw values). CHOCO's contractive
//          form (δ = k/n) is (k/n)·C(x): pass alpha·k/n to decode_add.
//   sign:  per block, mean|v| · sign(v) (sign(0) = +); biased,
//          ||C(x) − x||² = ||x||² − Σ_b ||x_b||₁²/|b| <= (1 − 1/B)·||x||².
//
// Output is a pure function of (x, n, seed, spec): identical for any Parallel and thread count,
// and identical between the AVX2/F16C kernels and the portable ones for finite input (NaN and ±inf
// input give memory-safe but otherwise unspecified values).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/codec/parallel.h"
#include "core/codec/wire.h"

namespace saddle::codec {

// Stable on the wire: never renumber.
enum class CodecId : uint8_t { kNone = 0, kFp16 = 1, kBf16 = 2, kQsgd = 3, kTopk = 4, kRandk = 5, kSign = 6 };

constexpr uint32_t kDefaultBlockSize = 256;
// Largest n any codec accepts (topk indices are u32).
constexpr size_t kMaxElements = size_t{1} << 32;

// What to build. Fields a codec does not use are ignored (and written as 0 in the header).
struct CodecSpec {
  CodecId id = CodecId::kNone;
  int bits = 8;                             // qsgd: 2, 4 or 8
  double ratio = 0.01;                      // topk, randk: fraction kept, in (0, 1]
  uint32_t block_size = kDefaultBlockSize;  // qsgd, sign: elements per scale, a positive multiple of 8

  static CodecSpec none() { return {CodecId::kNone}; }
  static CodecSpec fp16() { return {CodecId::kFp16}; }
  static CodecSpec bf16() { return {CodecId::kBf16}; }
  static CodecSpec qsgd(int bits, uint32_t block = kDefaultBlockSize) {
    return {CodecId::kQsgd, bits, 0.0, block};
  }
  static CodecSpec int8(uint32_t block = kDefaultBlockSize) { return qsgd(8, block); }
  static CodecSpec topk(double ratio) { return {CodecId::kTopk, 0, ratio, 0}; }
  static CodecSpec randk(double ratio) { return {CodecId::kRandk, 0, ratio, 0}; }
  static CodecSpec sign(uint32_t block = kDefaultBlockSize) { return {CodecId::kSign, 0, 0.0, block}; }
};

// Number of entries topk / randk keep: ceil(ratio·n), computed so that an exact product
// (0.07·100) is not pushed up by rounding; 0 only when n == 0. Raises std::invalid_argument unless
// 0 < ratio <= 1.
size_t kept_count(double ratio, size_t n);

// Registry name of a codec id ("none", "fp16", "bf16", "qsgd", "topk", "randk", "sign" or
// "unknown").
const char* codec_name(CodecId id);
// Human-readable spec, e.g. "qsgd(bits=8, block=256)", "topk(ratio=0.01)".
std::string to_string(const CodecSpec& spec);

// A codec instance: immutable, thread-safe. Build one with make_codec().
class Codec {
 public:
  virtual ~Codec() = default;

  // The spec with unused fields zeroed: exactly what goes into the header.
  const CodecSpec& spec() const { return spec_; }
  // Whether E[C(x)] = x (qsgd, randk, none) rather than a biased contraction (topk, sign).
  virtual bool unbiased() const = 0;
  // Exact payload size for n elements (see the table above).
  virtual size_t payload_bytes(size_t n) const = 0;
  // Exact size of a message for n elements: kHeaderBytes + payload_bytes(n).
  size_t encoded_bytes(size_t n) const { return kHeaderBytes + payload_bytes(n); }

  // Encodes x[0, n) with `seed` (stochastic rounding, randk indices) into out[0, capacity).
  // Returns the bytes written, always encoded_bytes(n). Raises std::invalid_argument when
  // capacity < encoded_bytes(n), n > kMaxElements or a pointer is null.
  size_t encode(const float* x, size_t n, uint64_t seed, uint8_t* out, size_t capacity,
                const Parallel& par = serial()) const;

  // out[0, n) = C(x) from the message msg[0, len), dense. `n` and `seed` are what the receiver
  // expects (the seed is checked only by codecs that need it to decode: randk). The whole message
  // is validated before out is touched. Raises CorruptMessage if it is malformed or does not match
  // this codec, n or seed. msg and out must not overlap.
  void decode(const uint8_t* msg, size_t len, size_t n, uint64_t seed, float* out,
              const Parallel& par = serial()) const;

  // acc[0, n) += alpha · C(x), without a dense temporary (CHOCO: s += w_j q_j). Element by element
  // it adds exactly alpha · (what decode writes). Same validation and errors as decode.
  void decode_add(const uint8_t* msg, size_t len, size_t n, uint64_t seed, float alpha, float* acc,
                  const Parallel& par = serial()) const;

  // Validates a message as decode does, without decoding. Raises CorruptMessage.
  void validate(const uint8_t* msg, size_t len, size_t n, uint64_t seed,
                const Parallel& par = serial()) const;

 protected:
  explicit Codec(const CodecSpec& normalized) : spec_(normalized) {}

  // Writes payload_bytes(n) bytes. `payload` has no alignment guarantee.
  virtual void encode_payload(const float* x, size_t n, uint64_t seed, uint8_t* payload,
                              const Parallel& par) const = 0;
  // Checks what the header cannot (codes, indices, padding bits); raises CorruptMessage.
  virtual void check_payload(const uint8_t* /*payload*/, size_t /*n*/, const Parallel& /*par*/) const {}
  // out = C(x) (accumulate=false) or out += alpha·C(x) (accumulate=true) from a validated payload.
  virtual void decode_payload(const uint8_t* payload, size_t n, uint64_t seed, float alpha, float* out,
                              bool accumulate, const Parallel& par) const = 0;
  // Whether decoding needs the encoder's seed (then the header seed must equal the expected one).
  virtual bool seeded_decode() const { return false; }

 private:
  void decode_impl(const uint8_t* msg, size_t len, size_t n, uint64_t seed, float alpha, float* out,
                   bool accumulate, const Parallel& par) const;

  CodecSpec spec_;
};

// Builds the codec of `spec`. Raises std::invalid_argument for an unknown id or bad parameters
// (qsgd bits not in {2, 4, 8}; block size 0 or not a multiple of 8; ratio not in (0, 1]).
std::unique_ptr<Codec> make_codec(const CodecSpec& spec);

}  // namespace saddle::codec
