// The per-codec launchers behind cuda/codec.h, one file each (two_byte.cu holds fp16 and bf16). Each
// queues kernels on `stream` that write a payload (encode) or read one (decode); pointers are
// device memory, the spec is normalised and the arguments are checked by the caller.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/codec/codec.h"

namespace saddle::cuda::detail {

using EncodeFn = void (*)(const codec::CodecSpec& spec, const float* x, size_t n, uint64_t seed,
                          uint8_t* payload, cudaStream_t stream);
// out = C(x) (accumulate = false) or out += alpha·C(x).
using DecodeFn = void (*)(const codec::CodecSpec& spec, const uint8_t* payload, size_t n, float alpha,
                          float* out, bool accumulate, cudaStream_t stream);

void encode_fp16(const codec::CodecSpec&, const float*, size_t, uint64_t, uint8_t*, cudaStream_t);
void decode_fp16(const codec::CodecSpec&, const uint8_t*, size_t, float, float*, bool, cudaStream_t);
void encode_bf16(const codec::CodecSpec&, const float*, size_t, uint64_t, uint8_t*, cudaStream_t);
void decode_bf16(const codec::CodecSpec&, const uint8_t*, size_t, float, float*, bool, cudaStream_t);
void encode_qsgd(const codec::CodecSpec&, const float*, size_t, uint64_t, uint8_t*, cudaStream_t);
void decode_qsgd(const codec::CodecSpec&, const uint8_t*, size_t, float, float*, bool, cudaStream_t);
void encode_sign(const codec::CodecSpec&, const float*, size_t, uint64_t, uint8_t*, cudaStream_t);
void decode_sign(const codec::CodecSpec&, const uint8_t*, size_t, float, float*, bool, cudaStream_t);

// Writes the kHeaderBytes bytes of `header` to msg (device memory).
void write_header(const uint8_t* header, uint8_t* msg, cudaStream_t stream);

}  // namespace saddle::cuda::detail
