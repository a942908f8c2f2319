// sign kernels: the block program of sign_math.h (one CUDA block per codec block, the scale summed
// in the CPU's lane order), and one element per thread to decode.
#include "cuda/block_layout.h"
#include "cuda/check.h"
#include "cuda/device_codecs.h"
#include "cuda/launch.h"
#include "cuda/sign_math.h"

namespace saddle::cuda::detail {
namespace {

__global__ void encode_kernel(const float* __restrict__ x, BlockLayout layout,
                              uint8_t* __restrict__ payload) {
  __shared__ float lanes[sign::kLanes];
  const unsigned t = threadIdx.x, threads = blockDim.x;
  for (size_t j = blockIdx.x; j < layout.blocks(); j += gridDim.x) {
    const float* xb = x + layout.first(j);
    const size_t len = layout.length(j);
    if (t < sign::kLanes) lanes[t] = sign::lane_abs_sum(xb, len, t);
    __syncthreads();
    if (t == 0) store_f32(payload + 4 * j, sign::block_scale(lanes, len));
    uint8_t* bits = payload + layout.code_offset(j);
    const size_t bytes = layout.block_code_bytes(j);
    for (size_t q = t; q < bytes; q += threads) bits[q] = sign::sign_byte(xb, len, q);
    __syncthreads();  // lanes[] is read above and rewritten by the next codec block
  }
}

__global__ void decode_kernel(const uint8_t* __restrict__ payload, BlockLayout layout, float alpha,
                              float* __restrict__ out, bool accumulate) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  for (size_t i = size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < layout.n; i += stride)
    put(out + i, sign::decode_value(payload, layout, i), alpha, accumulate);
}

BlockLayout layout_of(const codec::CodecSpec& spec, size_t n) { return {n, spec.block_size, 1}; }

}  // namespace

void encode_sign(const codec::CodecSpec& spec, const float* x, size_t n, uint64_t, uint8_t* payload,
                 cudaStream_t stream) {
  const BlockLayout layout = layout_of(spec, n);
  const unsigned threads = launch::block_threads(layout.block_code_bytes(0), 32);
  encode_kernel<<<launch::grid(layout.blocks(), 1), threads, 0, stream>>>(x, layout, payload);
  SADDLE_CUDA_CHECK(cudaGetLastError(), "sign encode launch, n = ", n);
}

void decode_sign(const codec::CodecSpec& spec, const uint8_t* payload, size_t n, float alpha, float* out,
                 bool accumulate, cudaStream_t stream) {
  decode_kernel<<<launch::grid(n, launch::kThreads), launch::kThreads, 0, stream>>>(
      payload, layout_of(spec, n), alpha, out, accumulate);
  SADDLE_CUDA_CHECK(cudaGetLastError(), "sign decode launch, n = ", n);
}

}  // namespace saddle::cuda::detail
