// SADDLE_CUDA_CHECK: a CUDA runtime call that must succeed, or saddle::Error naming the call.
#pragma once

#include <cuda_runtime_api.h>

#include "core/check.h"

#define SADDLE_CUDA_CHECK(expr, ...)                                                                    \
  do {                                                                                                  \
    const cudaError_t saddle_cuda_status_ = (expr);                                                     \
    if (saddle_cuda_status_ != cudaSuccess) {                                                           \
      throw ::saddle::Error(                                                                            \
          ::saddle::detail::concat("saddle: CUDA call failed: " #expr " (", __FILE__, ":", __LINE__,    \
                                   "): ", cudaGetErrorString(saddle_cuda_status_), ": ", __VA_ARGS__)); \
    }                                                                                                   \
  } while (0)
