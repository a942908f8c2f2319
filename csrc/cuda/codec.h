// Device (CUDA) encode and decode for the codecs of core/codec: for the same (x, n, seed, spec) the
// message is byte for byte the one Codec::encode writes, and decode / decode_add write the values
// Codec::decode / decode_add write. Pointers are device memory; everything is queued on `stream`
// and nothing synchronises. No torch: the binding passes data_ptr() and the current stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/codec/codec.h"

namespace saddle::cuda {

// Whether codec `id` has device kernels: fp16, bf16, qsgd (int8) and sign.
bool has_device_codec(codec::CodecId id);

// Encodes x[0, n) into msg[0, capacity) as c.encode would. Returns c.encoded_bytes(n). Raises
// std::invalid_argument for what Codec::encode rejects and for a codec without device kernels,
// saddle::Error when a launch fails.
size_t encode(const codec::Codec& c, const float* x, size_t n, uint64_t seed, uint8_t* msg, size_t capacity,
              cudaStream_t stream);

// out[0, n) = C(x) from the message msg, as c.decode. Does not validate: msg must be a message
// that c.validate accepted for n (a gossip message arrives in host memory and is validated there
// before it is copied to the device). Raises as encode.
void decode(const codec::Codec& c, const uint8_t* msg, size_t n, float* out, cudaStream_t stream);

// acc[0, n) += alpha · C(x), as c.decode_add; same contract as decode.
void decode_add(const codec::Codec& c, const uint8_t* msg, size_t n, float alpha, float* acc,
                cudaStream_t stream);

}  // namespace saddle::cuda
