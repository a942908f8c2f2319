// qsgd kernels: the block program of qsgd_math.h (one CUDA block per codec block), and one element
// per thread to decode.
#include "cuda/block_layout.h"
#include "cuda/check.h"
#include "cuda/device_codecs.h"
#include "cuda/launch.h"
#include "cuda/qsgd_math.h"

namespace saddle::cuda::detail {
namespace {

__global__ void encode_kernel(const float* __restrict__ x, BlockLayout layout, uint64_t seed,
                              uint8_t* __restrict__ payload) {
  __shared__ float partial[launch::kThreads];
  const unsigned t = threadIdx.x, threads = blockDim.x;
  const float s = static_cast<float>(qsgd::levels(layout.bits));
  for (size_t j = blockIdx.x; j < layout.blocks(); j += gridDim.x) {
    const float* xb = x + layout.first(j);
    const size_t len = layout.length(j);
    partial[t] = qsgd::max_abs_partial(xb, len, t, threads);
    __syncthreads();
    for (unsigned h = threads / 2; h > 0; h /= 2) {
      if (t < h) partial[t] = qsgd::max_combine(partial[t], partial[t + h]);
      __syncthreads();
    }
    const float scale = qsgd::block_scale(partial[0]);
    if (t == 0) store_f32(payload + 4 * j, scale);
    const float inv = qsgd::inverse_scale(scale, s);
    const uint64_t key = rng::block_key(seed, j);
    uint8_t* codes = payload + layout.code_offset(j);
    const size_t bytes = layout.block_code_bytes(j);
    for (size_t q = t; q < bytes; q += threads)
      codes[q] = qsgd::encode_byte(xb, len, q, layout.bits, inv, s, key);
    __syncthreads();  // partial[0] is read above and rewritten by the next codec block
  }
}

__global__ void decode_kernel(const uint8_t* __restrict__ payload, BlockLayout layout, float alpha,
                              float* __restrict__ out, bool accumulate) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  for (size_t i = size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < layout.n; i += stride)
    put(out + i, qsgd::decode_value(payload, layout, i), alpha, accumulate);
}

BlockLayout layout_of(const codec::CodecSpec& spec, size_t n) { return {n, spec.block_size, spec.bits}; }

}  // namespace

void encode_qsgd(const codec::CodecSpec& spec, const float* x, size_t n, uint64_t seed, uint8_t* payload,
                 cudaStream_t stream) {
  const BlockLayout layout = layout_of(spec, n);
  const unsigned threads = launch::block_threads(layout.block_code_bytes(0), 32);
  encode_kernel<<<launch::grid(layout.blocks(), 1), threads, 0, stream>>>(x, layout, seed, payload);
  SADDLE_CUDA_CHECK(cudaGetLastError(), "qsgd encode launch, n = ", n);
}

void decode_qsgd(const codec::CodecSpec& spec, const uint8_t* payload, size_t n, float alpha, float* out,
                 bool accumulate, cudaStream_t stream) {
  decode_kernel<<<launch::grid(n, launch::kThreads), launch::kThreads, 0, stream>>>(
      payload, layout_of(spec, n), alpha, out, accumulate);
  SADDLE_CUDA_CHECK(cudaGetLastError(), "qsgd decode launch, n = ", n);
}

}  // namespace saddle::cuda::detail
