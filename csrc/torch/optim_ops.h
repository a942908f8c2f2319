// Fused optimizer operations on flat buffers (tensor front-ends of csrc/core/optim and mixing).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace saddle::torch_ext {

// Σ g² (SAM), or Σ (|x|·g)² when x is given (ASAM).
double sam_norm_sq(const at::Tensor& g, const std::optional<at::Tensor>& x);
// e = scale·g (or scale·x²·g when adaptive); x += e.
void sam_perturb(at::Tensor& x, const at::Tensor& g, at::Tensor& e, double scale, bool adaptive);
// x -= e.
void sam_restore(at::Tensor& x, const at::Tensor& e);
// g ← QGM direction of (g + λx) with buffer m̂ (see core/optim/qgm.h).
void qgm_direction(at::Tensor& g, const at::Tensor& m_hat, const at::Tensor& x, double beta,
                   double weight_decay, bool nesterov);
// m̂ ← μ·m̂ + (1−μ)·(x_prev − x)/lr.
void qgm_buffer_update(at::Tensor& m_hat, const at::Tensor& x_prev, const at::Tensor& x, double mu, double lr);
// out ← a·out + Σ_j b[j]·ys[j] in one blocked pass (the gossip mixing kernel).
void weighted_sum_(at::Tensor& out, double a, const std::vector<at::Tensor>& ys, const std::vector<double>& b);

// The same arithmetic in ATen operations, for any device and dtype (what the dispatcher runs where no
// fused kernel is registered: a CUDA tensor in a build without the device kernels, say). The
// functions above use these for CPU tensors that are neither float32 nor float64.
namespace generic {
double sam_norm_sq(const at::Tensor& g, const std::optional<at::Tensor>& x);
void sam_perturb(at::Tensor& x, const at::Tensor& g, at::Tensor& e, double scale, bool adaptive);
void sam_restore(at::Tensor& x, const at::Tensor& e);
void qgm_direction(at::Tensor& g, const at::Tensor& m_hat, const at::Tensor& x, double beta,
                   double weight_decay, bool nesterov);
void qgm_buffer_update(at::Tensor& m_hat, const at::Tensor& x_prev, const at::Tensor& x, double mu, double lr);
void weighted_sum_(at::Tensor& out, double a, const std::vector<at::Tensor>& ys, const std::vector<double>& b);
}  // namespace generic

}  // namespace saddle::torch_ext
