// One element per thread: launches F(i) for i in [0, n) over a grid-stride loop. The optimizer and
// mixing kernels are this plus a functor that calls one *_math.h element function.
#pragma once

#include <cuda_runtime_api.h>

#include "cuda/check.h"
#include "cuda/launch.h"

namespace saddle::cuda::detail {

template <typename F>
__global__ void elementwise_kernel(F f, size_t n) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  for (size_t i = size_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

template <typename F>
void launch_elementwise(const F& f, size_t n, cudaStream_t stream, const char* what) {
  if (n == 0) return;
  elementwise_kernel<<<launch::grid(n, launch::kThreads), launch::kThreads, 0, stream>>>(f, n);
  SADDLE_CUDA_CHECK(cudaGetLastError(), what, " launch, n = ", n);
}

}  // namespace saddle::cuda::detail
