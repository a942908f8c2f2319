// Device (CUDA) versions of core/optim's SAM and QGM steps on flat buffers of float or double. For
// the same inputs perturb, restore, qgm_direction and qgm_buffer_update write the bits the CPU
// functions write; sam_norm_sq sums in a fixed order of its own (cuda/sam_math.h), within a
// rounding bound of the CPU's sum. Pointers are device memory; everything is queued on `stream` and
// nothing synchronises. No torch: the binding passes data_ptr() and the current stream.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "core/optim/qgm.h"

namespace saddle::cuda::optim {

// Doubles of device workspace sam_norm_sq needs for n elements.
size_t sam_norm_workspace(size_t n);

// *out = Σ g² over [0, n) (SAM), or Σ ((double)x·g)² when x is given (ASAM), as a double in device
// memory. The terms are the CPU's; their order is cuda/sam_math.h's fixed tree, which depends on n
// only, so the result is reproducible run to run but not the CPU's bits. `workspace` holds at least
// sam_norm_workspace(n) doubles and must not be in use by another queued call.
template <typename T>
void sam_norm_sq(const T* g, const T* x, size_t n, double* workspace, double* out, cudaStream_t stream);

// e = scale·g (SAM) or scale·x²·g (ASAM); x += e. As core/optim/sam.h's sam_perturb.
template <typename T>
void sam_perturb(T* x, const T* g, T* e, double scale, bool adaptive, size_t n, cudaStream_t stream);

// x -= e.
template <typename T>
void sam_restore(T* x, const T* e, size_t n, cudaStream_t stream);

// The QGM direction in place on g, as core/optim/qgm.h's qgm_direction.
template <typename T>
void qgm_direction(T* g, const T* m_hat, const T* x, const saddle::optim::QgmOptions& o, size_t n,
                   cudaStream_t stream);

// m̂ ← μ·m̂ + (1−μ)·(x_prev − x)/η. Raises std::invalid_argument unless lr > 0.
template <typename T>
void qgm_buffer_update(T* m_hat, const T* x_prev, const T* x, double mu, double lr, size_t n,
                       cudaStream_t stream);

}  // namespace saddle::cuda::optim
