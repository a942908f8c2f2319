#include "torch/codec_ops.h"

#include <ATen/Parallel.h>

#include <sstream>

#include "core/check.h"

namespace saddle::torch_ext {
namespace {

codec::CodecId codec_id(const std::string& name) {
  using codec::CodecId;
  for (CodecId id : {CodecId::kNone, CodecId::kFp16, CodecId::kBf16, CodecId::kQsgd, CodecId::kTopk,
                     CodecId::kRandk, CodecId::kSign})
    if (name == codec::codec_name(id)) return id;
  throw std::invalid_argument("unknown codec '" + name + "'; known: none, fp16, bf16, qsgd, topk, randk, sign");
}

void check_float_vector(const at::Tensor& x, const char* what) {
  SADDLE_CHECK_ARG(x.defined() && x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
                   what, ": compressed gossip works on contiguous float32 CPU tensors, got ",
                   x.defined() ? c10::toString(x.scalar_type()) : "undefined");
}

void check_message(const at::Tensor& msg) {
  SADDLE_CHECK_ARG(msg.defined() && msg.device().is_cpu() && msg.scalar_type() == at::kByte && msg.is_contiguous(),
                   "a codec message is a contiguous uint8 CPU tensor");
}

}  // namespace

CodecPtr make_codec(const std::string& name, int bits, double ratio, uint32_t block_size) {
  codec::CodecSpec spec;
  spec.id = codec_id(name);
  spec.bits = bits;
  spec.ratio = ratio;
  spec.block_size = block_size;
  return codec::make_codec(spec);
}

std::string codec_repr(const codec::Codec& c) { return codec::to_string(c.spec()); }

codec::Parallel aten_parallel() {
  return [](size_t count, size_t grain, const std::function<void(size_t, size_t)>& fn) {
    at::parallel_for(0, static_cast<int64_t>(count), static_cast<int64_t>(std::max<size_t>(grain, 1)),
                     [&](int64_t b, int64_t e) { fn(static_cast<size_t>(b), static_cast<size_t>(e)); });
  };
}

void encode_into(const codec::Codec& c, const at::Tensor& x, uint64_t seed, at::Tensor& msg) {
  check_float_vector(x, "encode");
  check_message(msg);
  const size_t n = static_cast<size_t>(x.numel());
  c.encode(x.data_ptr<float>(), n, seed, msg.data_ptr<uint8_t>(), static_cast<size_t>(msg.numel()), aten_parallel());
}

void decode_into(const codec::Codec& c, const at::Tensor& msg, uint64_t seed, at::Tensor& out) {
  check_message(msg);
  check_float_vector(out, "decode");
  c.decode(msg.data_ptr<uint8_t>(), static_cast<size_t>(msg.numel()), static_cast<size_t>(out.numel()), seed,
           out.data_ptr<float>(), aten_parallel());
}

at::Tensor encode(const codec::Codec& c, const at::Tensor& x, uint64_t seed) {
  at::Tensor msg = at::empty({static_cast<int64_t>(c.encoded_bytes(static_cast<size_t>(x.numel())))}, at::kByte);
  encode_into(c, x, seed, msg);
  return msg;
}

at::Tensor decode(const codec::Codec& c, const at::Tensor& msg, int64_t n, uint64_t seed) {
  SADDLE_CHECK_ARG(n >= 0, "decode: n must be non-negative");
  at::Tensor out = at::empty({n}, at::kFloat);
  decode_into(c, msg, seed, out);
  return out;
}

void decode_add(const codec::Codec& c, const at::Tensor& msg, uint64_t seed, double alpha, at::Tensor& acc) {
  check_message(msg);
  check_float_vector(acc, "decode_add");
  c.decode_add(msg.data_ptr<uint8_t>(), static_cast<size_t>(msg.numel()), static_cast<size_t>(acc.numel()), seed,
               static_cast<float>(alpha), acc.data_ptr<float>(), aten_parallel());
}

uint64_t message_seed(uint64_t name_hash, int64_t step, int sender) {
  // splitmix64 of the three inputs: distinct streams per (name, step, sender), equal on all ranks.
  uint64_t z = name_hash ^ (static_cast<uint64_t>(step) * 0x9E3779B97F4A7C15ull) ^
               (static_cast<uint64_t>(sender) << 48);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace saddle::torch_ext
