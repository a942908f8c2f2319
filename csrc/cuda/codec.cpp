#include "cuda/codec.h"

#include "core/check.h"
#include "cuda/device_codecs.h"
#include "cuda/message.h"

namespace saddle::cuda {
namespace {

struct Entry {
  codec::CodecId id;
  detail::EncodeFn encode;
  detail::DecodeFn decode;
};

// A new device codec is one file plus one row here.
constexpr Entry kRegistry[] = {
    {codec::CodecId::kFp16, detail::encode_fp16, detail::decode_fp16},
    {codec::CodecId::kBf16, detail::encode_bf16, detail::decode_bf16},
    {codec::CodecId::kQsgd, detail::encode_qsgd, detail::decode_qsgd},
    {codec::CodecId::kSign, detail::encode_sign, detail::decode_sign},
};

const Entry& find(const codec::Codec& c) {
  for (const Entry& e : kRegistry)
    if (e.id == c.spec().id) return e;
  SADDLE_CHECK_ARG(false, "codec ", codec::to_string(c.spec()), " has no CUDA kernels (",
                   "fp16, bf16, qsgd and sign have)");
  return kRegistry[0];  // not reached
}

void decode_impl(const codec::Codec& c, const uint8_t* msg, size_t n, float alpha, float* out,
                 bool accumulate, cudaStream_t stream) {
  const Entry& e = find(c);
  SADDLE_CHECK_ARG(n <= codec::kMaxElements, "decode: ", n, " elements expected, at most ",
                   codec::kMaxElements);
  SADDLE_CHECK_ARG(msg != nullptr, "decode: null message");
  SADDLE_CHECK_ARG(out != nullptr || n == 0, "decode: null output");
  if (n == 0) return;
  e.decode(c.spec(), msg + codec::kHeaderBytes, n, alpha, out, accumulate, stream);
}

}  // namespace

bool has_device_codec(codec::CodecId id) {
  for (const Entry& e : kRegistry)
    if (e.id == id) return true;
  return false;
}

size_t encode(const codec::Codec& c, const float* x, size_t n, uint64_t seed, uint8_t* msg, size_t capacity,
              cudaStream_t stream) {
  const Entry& e = find(c);
  // The checks of Codec::encode, with its messages.
  SADDLE_CHECK_ARG(n <= codec::kMaxElements, "encode: ", n, " elements, at most ", codec::kMaxElements);
  SADDLE_CHECK_ARG(x != nullptr || n == 0, "encode: null input");
  SADDLE_CHECK_ARG(msg != nullptr, "encode: null output");
  const size_t bytes = c.encoded_bytes(n);
  SADDLE_CHECK_ARG(capacity >= bytes, "encode: output holds ", capacity, " bytes, ",
                   codec::to_string(c.spec()), " needs ", bytes, " for ", n, " elements");
  const HeaderBytes header = header_bytes(c, n, seed);
  detail::write_header(header.data(), msg, stream);
  if (n > 0) e.encode(c.spec(), x, n, seed, msg + codec::kHeaderBytes, stream);
  return bytes;
}

void decode(const codec::Codec& c, const uint8_t* msg, size_t n, float* out, cudaStream_t stream) {
  decode_impl(c, msg, n, 1.0f, out, false, stream);
}

void decode_add(const codec::Codec& c, const uint8_t* msg, size_t n, float alpha, float* acc,
                cudaStream_t stream) {
  decode_impl(c, msg, n, alpha, acc, true, stream);
}

}  // namespace saddle::cuda
