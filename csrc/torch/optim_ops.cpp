#include "torch/optim_ops.h"

#include <ATen/Parallel.h>

#include "core/check.h"
#include "core/mixing.h"
#include "core/optim/qgm.h"
#include "core/optim/sam.h"
#include "torch/tensor_checks.h"

namespace saddle::torch_ext {
namespace {

constexpr int64_t kGrain = 1 << 15;

// The fused C++ kernels cover float32/float64 on the CPU; anything else runs the same math in ATen.
bool fused(const at::Tensor& t) {
  return t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

template <typename F>
void for_range(const at::Tensor& t, const F& f) {
  at::parallel_for(0, t.numel(), kGrain, [&](int64_t b, int64_t e) { f(static_cast<size_t>(b), static_cast<size_t>(e)); });
}

}  // namespace

namespace generic {

double sam_norm_sq(const at::Tensor& g, const std::optional<at::Tensor>& x) {
  if (x) check_same(g, *x, "sam_norm_sq");
  const at::Tensor v = x ? (*x * g) : g;
  return v.to(at::kDouble).pow(2).sum().item<double>();
}

void sam_perturb(at::Tensor& x, const at::Tensor& g, at::Tensor& e, double scale, bool adaptive) {
  check_same(x, g, "sam_perturb");
  check_same(x, e, "sam_perturb");
  e.copy_(adaptive ? x * x * g * scale : g * scale);
  x.add_(e);
}

void sam_restore(at::Tensor& x, const at::Tensor& e) {
  check_same(x, e, "sam_restore");
  x.sub_(e);
}

void qgm_direction(at::Tensor& g, const at::Tensor& m_hat, const at::Tensor& x, double beta,
                   double weight_decay, bool nesterov) {
  check_same(g, m_hat, "qgm_direction");
  check_same(g, x, "qgm_direction");
  const at::Tensor d = g + weight_decay * x;
  const at::Tensor m = beta * m_hat + d;
  g.copy_(nesterov ? d + beta * m : m);
}

void qgm_buffer_update(at::Tensor& m_hat, const at::Tensor& x_prev, const at::Tensor& x, double mu, double lr) {
  check_same(m_hat, x_prev, "qgm_buffer_update");
  check_same(m_hat, x, "qgm_buffer_update");
  SADDLE_CHECK_ARG(lr > 0.0, "QGM needs a positive learning rate, got ", lr);
  m_hat.mul_(mu).add_((x_prev - x) * ((1.0 - mu) / lr));
}

void weighted_sum_(at::Tensor& out, double a, const std::vector<at::Tensor>& ys, const std::vector<double>& b) {
  SADDLE_CHECK_ARG(ys.size() == b.size(), "weighted_sum_: ", ys.size(), " tensors but ", b.size(), " weights");
  for (const auto& y : ys) check_same(out, y, "weighted_sum_");
  out.mul_(a);
  for (size_t j = 0; j < ys.size(); ++j) out.add_(ys[j], b[j]);
}

}  // namespace generic

double sam_norm_sq(const at::Tensor& g, const std::optional<at::Tensor>& x) {
  if (x) check_same(g, *x, "sam_norm_sq");
  if (!fused(g)) return generic::sam_norm_sq(g, x);
  return AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "sam_norm_sq", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* xp = x ? x->data_ptr<scalar_t>() : nullptr;
    return at::parallel_reduce(
        0, g.numel(), kGrain, 0.0,
        [&](int64_t b, int64_t e, double acc) {
          return acc + optim::sam_norm_sq<scalar_t>(gp, xp, static_cast<size_t>(b), static_cast<size_t>(e));
        },
        std::plus<double>());
  });
}

void sam_perturb(at::Tensor& x, const at::Tensor& g, at::Tensor& e, double scale, bool adaptive) {
  check_same(x, g, "sam_perturb");
  check_same(x, e, "sam_perturb");
  if (!fused(x)) return generic::sam_perturb(x, g, e, scale, adaptive);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sam_perturb", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* ep = e.data_ptr<scalar_t>();
    for_range(x, [&](size_t b, size_t en) { optim::sam_perturb<scalar_t>(xp, gp, ep, scale, adaptive, b, en); });
  });
}

void sam_restore(at::Tensor& x, const at::Tensor& e) {
  check_same(x, e, "sam_restore");
  if (!fused(x)) return generic::sam_restore(x, e);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sam_restore", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* ep = e.data_ptr<scalar_t>();
    for_range(x, [&](size_t b, size_t en) { optim::sam_restore<scalar_t>(xp, ep, b, en); });
  });
}

void qgm_direction(at::Tensor& g, const at::Tensor& m_hat, const at::Tensor& x, double beta,
                   double weight_decay, bool nesterov) {
  check_same(g, m_hat, "qgm_direction");
  check_same(g, x, "qgm_direction");
  if (!fused(g)) return generic::qgm_direction(g, m_hat, x, beta, weight_decay, nesterov);
  const optim::QgmOptions o{beta, weight_decay, nesterov};
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "qgm_direction", [&] {
    scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* mp = m_hat.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    for_range(g, [&](size_t b, size_t e) { optim::qgm_direction<scalar_t>(gp, mp, xp, o, b, e); });
  });
}

void qgm_buffer_update(at::Tensor& m_hat, const at::Tensor& x_prev, const at::Tensor& x, double mu, double lr) {
  check_same(m_hat, x_prev, "qgm_buffer_update");
  check_same(m_hat, x, "qgm_buffer_update");
  SADDLE_CHECK_ARG(lr > 0.0, "QGM needs a positive learning rate, got ", lr);
  if (!fused(m_hat)) return generic::qgm_buffer_update(m_hat, x_prev, x, mu, lr);
  AT_DISPATCH_FLOATING_TYPES(m_hat.scalar_type(), "qgm_buffer_update", [&] {
    scalar_t* mp = m_hat.data_ptr<scalar_t>();
    const scalar_t* pp = x_prev.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    for_range(m_hat, [&](size_t b, size_t e) { optim::qgm_buffer_update<scalar_t>(mp, pp, xp, mu, lr, b, e); });
  });
}

void weighted_sum_(at::Tensor& out, double a, const std::vector<at::Tensor>& ys, const std::vector<double>& b) {
  SADDLE_CHECK_ARG(ys.size() == b.size(), "weighted_sum_: ", ys.size(), " tensors but ", b.size(), " weights");
  for (const auto& y : ys) check_same(out, y, "weighted_sum_");
  if (!fused(out)) return generic::weighted_sum_(out, a, ys, b);
  mixing::Coefficients k;
  k.a = a;
  k.b = b;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "weighted_sum_", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    std::vector<const scalar_t*> yp;
    for (const auto& y : ys) yp.push_back(y.data_ptr<scalar_t>());
    for_range(out, [&](size_t lo, size_t hi) { mixing::mix<scalar_t>(op, nullptr, yp.data(), k, lo, hi); });
  });
}

}  // namespace saddle::torch_ext
