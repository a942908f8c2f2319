// Sharpness-aware minimisation on flat buffers: the norm, the perturbation and its removal.
#pragma once

#include <cstddef>

namespace saddle::optim {

// Σ g² over [begin, end) (SAM), or Σ (|x|·g)² when x is given (ASAM).
template <typename T>
double sam_norm_sq(const T* g, const T* x, size_t begin, size_t end);

// e = scale·g (SAM) or scale·x²·g (ASAM, x given); x += e. One pass; e is kept for the restore.
// scale = ρ / (‖·‖ + 1e-12) with the norm taken over all buffers together.
template <typename T>
void sam_perturb(T* x, const T* g, T* e, double scale, bool adaptive, size_t begin, size_t end);

// x -= e: back to the unperturbed model after the second pass.
template <typename T>
void sam_restore(T* x, const T* e, size_t begin, size_t end);

}  // namespace saddle::optim
