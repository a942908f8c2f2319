// Tensor front-ends of the torch-free codecs (csrc/core/codec), and CHOCO's mixing arithmetic.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/codec/codec.h"

namespace saddle::torch_ext {

// A codec as Python holds it: immutable, shared by the engine's rounds.
using CodecPtr = std::shared_ptr<codec::Codec>;  // immutable after construction

// Builds a codec from its registry name ("none", "fp16", "bf16", "qsgd", "topk", "randk", "sign").
CodecPtr make_codec(const std::string& name, int bits, double ratio, uint32_t block_size);
std::string codec_repr(const codec::Codec& c);

// The core's work splitting, backed by at::parallel_for (torch's intra-op threads).
codec::Parallel aten_parallel();

// Encodes a contiguous float32 CPU tensor; returns the message as a uint8 tensor.
at::Tensor encode(const codec::Codec& c, const at::Tensor& x, uint64_t seed);
// The same into caller-owned buffers (reused across calls, as the engine's pool does):
// `msg` must hold encoded_bytes(x.numel()) bytes; `out` is overwritten with C(x).
void encode_into(const codec::Codec& c, const at::Tensor& x, uint64_t seed, at::Tensor& msg);
void decode_into(const codec::Codec& c, const at::Tensor& msg, uint64_t seed, at::Tensor& out);
// Decodes a uint8 message into a new float32 tensor of n elements; raises CorruptMessage.
at::Tensor decode(const codec::Codec& c, const at::Tensor& msg, int64_t n, uint64_t seed);
// acc += alpha · C(x) from a message; raises CorruptMessage before touching acc.
void decode_add(const codec::Codec& c, const at::Tensor& msg, uint64_t seed, double alpha, at::Tensor& acc);

// Seed of the message `sender` encodes for round `step` of a gossip name: the same on every rank.
uint64_t message_seed(uint64_t name_hash, int64_t step, int sender);

}  // namespace saddle::torch_ext
