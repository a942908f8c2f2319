// fp16 and bf16 kernels: one element per thread, the conversions of two_byte_math.h.
#include "cuda/check.h"
#include "cuda/device_codecs.h"
#include "cuda/launch.h"
#include "cuda/two_byte_math.h"

namespace saddle::cuda::detail {
namespace {

template <typename F>
__global__ void encode_kernel(const float* __restrict__ x, size_t n, uint8_t* __restrict__ payload) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  for (size_t i = size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    two_byte::encode_element<F>(x, i, payload);
}

template <typename F>
__global__ void decode_kernel(const uint8_t* __restrict__ payload, size_t n, float alpha,
                              float* __restrict__ out, bool accumulate) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  for (size_t i = size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride)
    two_byte::decode_element<F>(payload, i, alpha, out, accumulate);
}

template <typename F>
void encode(const float* x, size_t n, uint8_t* payload, cudaStream_t stream) {
  encode_kernel<F><<<launch::grid(n, launch::kThreads), launch::kThreads, 0, stream>>>(x, n, payload);
  SADDLE_CUDA_CHECK(cudaGetLastError(), "two-byte encode launch, n = ", n);
}

template <typename F>
void decode(const uint8_t* payload, size_t n, float alpha, float* out, bool accumulate, cudaStream_t stream) {
  decode_kernel<F><<<launch::grid(n, launch::kThreads), launch::kThreads, 0, stream>>>(payload, n, alpha, out,
                                                                                       accumulate);
  SADDLE_CUDA_CHECK(cudaGetLastError(), "two-byte decode launch, n = ", n);
}

}  // namespace

void encode_fp16(const codec::CodecSpec&, const float* x, size_t n, uint64_t, uint8_t* payload,
                 cudaStream_t stream) {
  encode<two_byte::Fp16>(x, n, payload, stream);
}

void decode_fp16(const codec::CodecSpec&, const uint8_t* payload, size_t n, float alpha, float* out,
                 bool accumulate, cudaStream_t stream) {
  decode<two_byte::Fp16>(payload, n, alpha, out, accumulate, stream);
}

void encode_bf16(const codec::CodecSpec&, const float* x, size_t n, uint64_t, uint8_t* payload,
                 cudaStream_t stream) {
  encode<two_byte::Bf16>(x, n, payload, stream);
}

void decode_bf16(const codec::CodecSpec&, const uint8_t* payload, size_t n, float alpha, float* out,
                 bool accumulate, cudaStream_t stream) {
  decode<two_byte::Bf16>(payload, n, alpha, out, accumulate, stream);
}

}  // namespace saddle::cuda::detail
