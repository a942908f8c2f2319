// CUDA kernels of torch.ops.saddle: the device code of csrc/cuda, on the caller's current stream.
//
// Built into the extension only when torch has CUDA (setup.py). Registered for the CUDA dispatch key,
// so the dispatcher prefers them to the CompositeExplicitAutograd kernels for CUDA tensors. What has no
// device kernel (float16 tensors, the topk and randk codecs) goes the generic way (ATen arithmetic, or
// staging through host memory). A message is host bytes: an encode copies only the message to the host,
// a decode validates the message on the host and copies only the message to the device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "cuda/codec.h"
#include "cuda/mixing.h"
#include "cuda/optim.h"
#include "torch/ops_library.h"
#include "torch/optim_ops.h"
#include "torch/tensor_checks.h"

namespace saddle::torch_ext::op {
namespace {

bool on_device(const at::Tensor& t) {
  return t.is_cuda() && t.is_contiguous() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

double cuda_sam_norm_sq(const at::Tensor& g, const std::optional<at::Tensor>& x) {
  return translated([&]() -> double {
    if (x) check_same(g, *x, "sam_norm_sq");
    if (!on_device(g)) return generic::sam_norm_sq(g, x);
    const c10::cuda::CUDAGuard guard(g.device());
    const size_t n = static_cast<size_t>(g.numel());
    const at::Tensor work = at::empty({static_cast<int64_t>(cuda::optim::sam_norm_workspace(n))},
                                      g.options().dtype(at::kDouble));
    const at::Tensor out = at::empty({1}, g.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "sam_norm_sq", [&] {
      cuda::optim::sam_norm_sq<scalar_t>(g.data_ptr<scalar_t>(), x ? x->data_ptr<scalar_t>() : nullptr, n,
                                         work.data_ptr<double>(), out.data_ptr<double>(), stream_of(g));
    });
    return out.item<double>();  // the step needs the norm on the host
  });
}

void cuda_sam_perturb(at::Tensor x, const at::Tensor& g, at::Tensor e, double scale, bool adaptive) {
  translated([&] {
    check_same(x, g, "sam_perturb");
    check_same(x, e, "sam_perturb");
    if (!on_device(x)) return generic::sam_perturb(x, g, e, scale, adaptive);
    const c10::cuda::CUDAGuard guard(x.device());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sam_perturb", [&] {
      cuda::optim::sam_perturb<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(),
                                         scale, adaptive, static_cast<size_t>(x.numel()), stream_of(x));
    });
  });
}

void cuda_sam_restore(at::Tensor x, const at::Tensor& e) {
  translated([&] {
    check_same(x, e, "sam_restore");
    if (!on_device(x)) return generic::sam_restore(x, e);
    const c10::cuda::CUDAGuard guard(x.device());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sam_restore", [&] {
      cuda::optim::sam_restore<scalar_t>(x.data_ptr<scalar_t>(), e.data_ptr<scalar_t>(),
                                         static_cast<size_t>(x.numel()), stream_of(x));
    });
  });
}

void cuda_qgm_direction(at::Tensor g, const at::Tensor& m_hat, const at::Tensor& x, double beta,
                        double weight_decay, bool nesterov) {
  translated([&] {
    check_same(g, m_hat, "qgm_direction");
    check_same(g, x, "qgm_direction");
    if (!on_device(g)) return generic::qgm_direction(g, m_hat, x, beta, weight_decay, nesterov);
    const c10::cuda::CUDAGuard guard(g.device());
    const saddle::optim::QgmOptions o{beta, weight_decay, nesterov};
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "qgm_direction", [&] {
      cuda::optim::qgm_direction<scalar_t>(g.data_ptr<scalar_t>(), m_hat.data_ptr<scalar_t>(),
                                           x.data_ptr<scalar_t>(), o, static_cast<size_t>(g.numel()),
                                           stream_of(g));
    });
  });
}

void cuda_qgm_buffer_update(at::Tensor m_hat, const at::Tensor& x_prev, const at::Tensor& x, double mu,
                            double lr) {
  translated([&] {
    check_same(m_hat, x_prev, "qgm_buffer_update");
    check_same(m_hat, x, "qgm_buffer_update");
    if (!on_device(m_hat)) return generic::qgm_buffer_update(m_hat, x_prev, x, mu, lr);
    const c10::cuda::CUDAGuard guard(m_hat.device());
    AT_DISPATCH_FLOATING_TYPES(m_hat.scalar_type(), "qgm_buffer_update", [&] {
      cuda::optim::qgm_buffer_update<scalar_t>(m_hat.data_ptr<scalar_t>(), x_prev.data_ptr<scalar_t>(),
                                               x.data_ptr<scalar_t>(), mu, lr, static_cast<size_t>(m_hat.numel()),
                                               stream_of(m_hat));
    });
  });
}

void cuda_weighted_sum_(at::Tensor out, double a, at::TensorList ys, at::ArrayRef<double> b) {
  translated([&] {
    const std::vector<at::Tensor> yv(ys.begin(), ys.end());
    const std::vector<double> bv(b.begin(), b.end());
    SADDLE_CHECK_ARG(yv.size() == bv.size(), "weighted_sum_: ", yv.size(), " tensors but ", bv.size(), " weights");
    for (const auto& y : yv) check_same(out, y, "weighted_sum_");
    if (!on_device(out)) return generic::weighted_sum_(out, a, yv, bv);
    const c10::cuda::CUDAGuard guard(out.device());
    saddle::mixing::Coefficients k;
    k.a = a;
    k.b = bv;
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "weighted_sum_", [&] {
      std::vector<const scalar_t*> yp;
      for (const auto& y : yv) yp.push_back(y.data_ptr<scalar_t>());
      cuda::mixing::mix<scalar_t>(out.data_ptr<scalar_t>(), nullptr, yp.data(), k, static_cast<size_t>(out.numel()),
                                  stream_of(out));
    });
  });
}

// ---- codecs ---------------------------------------------------------------------------------------
bool device_codec(const at::Tensor& x, const codec::Codec& c) {
  return x.is_cuda() && x.is_contiguous() && x.scalar_type() == at::kFloat && cuda::has_device_codec(c.spec().id);
}

// Encodes x on its device into a device buffer (the message, and only it, then goes to `msg`).
at::Tensor device_message(const codec::Codec& c, const at::Tensor& x, int64_t seed) {
  const c10::cuda::CUDAGuard guard(x.device());
  const size_t n = static_cast<size_t>(x.numel());
  at::Tensor msg = at::empty({static_cast<int64_t>(c.encoded_bytes(n))}, x.options().dtype(at::kByte));
  cuda::encode(c, x.data_ptr<float>(), n, unsigned_seed(seed), msg.data_ptr<uint8_t>(),
               static_cast<size_t>(msg.numel()), stream_of(x));
  return msg;
}

at::Tensor cuda_encode(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                       int64_t seed) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  if (!device_codec(x, *c)) return staged_encode(x, name, bits, ratio, block, seed);
  return translated([&] { return device_message(*c, x, seed).to(at::kCPU); });
}

void cuda_encode_into(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                      int64_t seed, at::Tensor msg) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  if (!device_codec(x, *c)) return staged_encode_into(x, name, bits, ratio, block, seed, msg);
  translated([&] {
    SADDLE_CHECK_ARG(msg.scalar_type() == at::kByte && msg.is_contiguous() &&
                         msg.numel() >= static_cast<int64_t>(c->encoded_bytes(static_cast<size_t>(x.numel()))),
                     "encode: the message buffer is too small or not contiguous uint8");
    msg.copy_(device_message(*c, x, seed).view({-1}).narrow(0, 0, msg.numel()), /*non_blocking=*/msg.is_pinned());
  });
}

// Validates the host message, copies it (only it) to acc's device and decodes there.
template <bool Accumulate>
void device_decode(const codec::Codec& c, const at::Tensor& msg, int64_t seed, double alpha, at::Tensor& out) {
  const at::Tensor host_msg = msg.to(at::kCPU).contiguous();
  const size_t n = static_cast<size_t>(out.numel());
  c.validate(host_msg.data_ptr<uint8_t>(), static_cast<size_t>(host_msg.numel()), n, unsigned_seed(seed));
  const c10::cuda::CUDAGuard guard(out.device());
  const at::Tensor dev_msg = host_msg.to(out.device(), /*non_blocking=*/host_msg.is_pinned());
  if (Accumulate)
    cuda::decode_add(c, dev_msg.data_ptr<uint8_t>(), n, static_cast<float>(alpha), out.data_ptr<float>(),
                     stream_of(out));
  else
    cuda::decode(c, dev_msg.data_ptr<uint8_t>(), n, out.data_ptr<float>(), stream_of(out));
}

void cuda_decode_into(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                      int64_t seed, at::Tensor out) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  if (!device_codec(out, *c)) return staged_decode_into(msg, name, bits, ratio, block, seed, out);
  translated([&] { device_decode<false>(*c, msg, seed, 1.0, out); });
}

void cuda_decode_add(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                     int64_t seed, double alpha, at::Tensor acc) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  if (!device_codec(acc, *c)) return staged_decode_add(msg, name, bits, ratio, block, seed, alpha, acc);
  translated([&] { device_decode<true>(*c, msg, seed, alpha, acc); });
}

}  // namespace
}  // namespace saddle::torch_ext::op

TORCH_LIBRARY_IMPL(saddle, CUDA, m) {
  namespace st = saddle::torch_ext::op;
  m.impl("sam_norm_sq", &st::cuda_sam_norm_sq);
  m.impl("sam_perturb", &st::cuda_sam_perturb);
  m.impl("sam_restore", &st::cuda_sam_restore);
  m.impl("qgm_direction", &st::cuda_qgm_direction);
  m.impl("qgm_buffer_update", &st::cuda_qgm_buffer_update);
  m.impl("weighted_sum_", &st::cuda_weighted_sum_);
  m.impl("codec_encode", &st::cuda_encode);
  m.impl("codec_encode_into", &st::cuda_encode_into);
  m.impl("codec_decode_into", &st::cuda_decode_into);
  m.impl("codec_decode_add", &st::cuda_decode_add);
  // codec_decode reads a host message into a new host tensor: the CPU kernel serves it.
}
