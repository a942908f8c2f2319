// SAM kernels: perturb and restore one element per thread; the norm in sam_math.h's fixed tree
// (a tile kernel, then one block over the tile sums).
#include "core/check.h"
#include "cuda/elementwise.cuh"
#include "cuda/optim.h"
#include "cuda/sam_math.h"

namespace saddle::cuda::optim {
namespace {

template <typename T>
struct Perturb {
  T* x;
  const T* g;
  T* e;
  T s;
  bool adaptive;
  __device__ void operator()(size_t i) const { sam::perturb_element(x, g, e, s, adaptive, i); }
};

template <typename T>
struct Restore {
  T* x;
  const T* e;
  __device__ void operator()(size_t i) const { sam::restore_element(x, e, i); }
};

// Steps 1 and 2 of sam_math.h: tile_sums[k] for every tile k (grid-stride over tiles).
template <typename T>
__global__ void __launch_bounds__(sam::kThreads)
    norm_tiles_kernel(const T* __restrict__ g, const T* x, size_t n, double* __restrict__ tile_sums) {
  __shared__ double v[sam::kThreads];
  const unsigned t = threadIdx.x;
  for (size_t k = blockIdx.x; k < sam::tiles(n); k += gridDim.x) {
    v[t] = sam::tile_thread_sum(g, x, n, k, t);
    __syncthreads();
    for (unsigned h = sam::kThreads / 2; h > 0; h /= 2) {
      sam::tree_step(v, h, t);
      __syncthreads();
    }
    if (t == 0) tile_sums[k] = v[0];
    __syncthreads();  // v[] is rewritten by the next tile
  }
}

// Step 3: one block.
__global__ void __launch_bounds__(sam::kThreads)
    norm_final_kernel(const double* __restrict__ tile_sums, size_t count, double* __restrict__ out) {
  __shared__ double v[sam::kThreads];
  const unsigned t = threadIdx.x;
  v[t] = sam::partial_thread_sum(tile_sums, count, t);
  __syncthreads();
  for (unsigned h = sam::kThreads / 2; h > 0; h /= 2) {
    sam::tree_step(v, h, t);
    __syncthreads();
  }
  if (t == 0) *out = v[0];
}

}  // namespace

size_t sam_norm_workspace(size_t n) { return sam::tiles(n); }

template <typename T>
void sam_norm_sq(const T* g, const T* x, size_t n, double* workspace, double* out, cudaStream_t stream) {
  SADDLE_CHECK((g != nullptr && workspace != nullptr) || n == 0, "sam_norm_sq: null buffer, n = ", n);
  SADDLE_CHECK(out != nullptr, "sam_norm_sq: null output");
  const size_t tiles = sam::tiles(n);
  if (tiles > 0) {
    norm_tiles_kernel<T><<<launch::grid(tiles, 1), sam::kThreads, 0, stream>>>(g, x, n, workspace);
    SADDLE_CUDA_CHECK(cudaGetLastError(), "sam_norm_sq tile launch, n = ", n);
  }
  norm_final_kernel<<<1, sam::kThreads, 0, stream>>>(workspace, tiles, out);
  SADDLE_CUDA_CHECK(cudaGetLastError(), "sam_norm_sq final launch, n = ", n);
}

template <typename T>
void sam_perturb(T* x, const T* g, T* e, double scale, bool adaptive, size_t n, cudaStream_t stream) {
  SADDLE_CHECK((x != nullptr && g != nullptr && e != nullptr) || n == 0, "sam_perturb: null buffer");
  detail::launch_elementwise(Perturb<T>{x, g, e, static_cast<T>(scale), adaptive}, n, stream, "sam_perturb");
}

template <typename T>
void sam_restore(T* x, const T* e, size_t n, cudaStream_t stream) {
  SADDLE_CHECK((x != nullptr && e != nullptr) || n == 0, "sam_restore: null buffer");
  detail::launch_elementwise(Restore<T>{x, e}, n, stream, "sam_restore");
}

#define SADDLE_INSTANTIATE(T)                                                               \
  template void sam_norm_sq<T>(const T*, const T*, size_t, double*, double*, cudaStream_t); \
  template void sam_perturb<T>(T*, const T*, T*, double, bool, size_t, cudaStream_t);       \
  template void sam_restore<T>(T*, const T*, size_t, cudaStream_t);
SADDLE_INSTANTIATE(float)
SADDLE_INSTANTIATE(double)
#undef SADDLE_INSTANTIATE

}  // namespace saddle::cuda::optim
