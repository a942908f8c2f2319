// Launch geometry shared by the codec kernels.
#pragma once

#include <algorithm>
#include <cstddef>

namespace saddle::cuda::launch {

// Threads per CUDA block of the element-wise kernels.
constexpr unsigned kThreads = 256;
// Most CUDA blocks a launch asks for; kernels stride over the rest.
constexpr size_t kMaxGrid = size_t{1} << 20;

// Blocks for `items` work items of `per_block` each, at least 1.
inline unsigned grid(size_t items, size_t per_block) {
  return static_cast<unsigned>(std::clamp<size_t>((items + per_block - 1) / per_block, 1, kMaxGrid));
}

// Threads for a block program over `work` items per codec block: a power of two in [lo, 256].
inline unsigned block_threads(size_t work, unsigned lo) {
  unsigned t = lo;
  while (t < kThreads && t < work) t *= 2;
  return t;
}

}  // namespace saddle::cuda::launch
