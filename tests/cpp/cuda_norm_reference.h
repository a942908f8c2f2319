// sam.cu's norm kernels emulated on the host, thread by thread and tree level by tree level: what
// the device must return bit for bit (cuda_optim_math_test.cpp, tests/cuda/optim_device_test.cpp).
#pragma once

#include <vector>

#include "cuda/sam_math.h"

namespace saddle::cuda::testing {

template <typename T>
double emulated_device_norm(const T* g, const T* x, size_t n) {
  std::vector<double> tile_sums(sam::tiles(n));
  double v[sam::kThreads];
  for (size_t k = 0; k < tile_sums.size(); ++k) {  // norm_tiles_kernel, one tile per block
    for (unsigned t = 0; t < sam::kThreads; ++t) v[t] = sam::tile_thread_sum(g, x, n, k, t);
    for (unsigned h = sam::kThreads / 2; h > 0; h /= 2)
      for (unsigned t = 0; t < sam::kThreads; ++t) sam::tree_step(v, h, t);
    tile_sums[k] = v[0];
  }
  for (unsigned t = 0; t < sam::kThreads; ++t)  // norm_final_kernel
    v[t] = sam::partial_thread_sum(tile_sums.data(), tile_sums.size(), t);
  for (unsigned h = sam::kThreads / 2; h > 0; h /= 2)
    for (unsigned t = 0; t < sam::kThreads; ++t) sam::tree_step(v, h, t);
  return v[0];
}

// How many additions one term goes through on its way to the device norm, at most.
inline size_t device_norm_depth(size_t n) {
  size_t levels = 0;
  for (unsigned h = sam::kThreads / 2; h > 0; h /= 2) ++levels;
  return sam::kPerThread + 2 * levels + (sam::tiles(n) + sam::kThreads - 1) / sam::kThreads;
}

}  // namespace saddle::cuda::testing
