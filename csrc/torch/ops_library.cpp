// saddle_torch's tensor operations as a PyTorch operator library: torch.ops.saddle.*.
//
// The schemas are defined once (TORCH_LIBRARY). Each op has a CPU kernel (the fused kernels of
// optim_ops.cpp and the codecs of codec_ops.cpp) and a CompositeExplicitAutograd kernel that serves every
// other device: the ATen arithmetic for the optimizer ops, staging through host memory for the codecs
// (a message is bytes on the host). A build with the device kernels (csrc/cuda) registers CUDA kernels
// on top (ops_cuda.cpp), which the dispatcher then prefers for CUDA tensors.
//
// Errors: bad arguments surface as ValueError (c10::ValueError); a corrupt message and an internal
// check carry a prefix that saddle_torch._ops turns back into CorruptMessageError / InternalError.
#include <torch/library.h>

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "torch/codec_ops.h"
#include "torch/ops_library.h"
#include "torch/optim_ops.h"

namespace saddle::torch_ext::op {

CodecPtr codec_of(const std::string& name, int64_t bits, double ratio, int64_t block_size) {
  return translated([&] { return make_codec(name, static_cast<int>(bits), ratio, static_cast<uint32_t>(block_size)); });
}

// ---- optimizer ops ---------------------------------------------------------------------------------
template <bool Fused>
double op_sam_norm_sq(const at::Tensor& g, const std::optional<at::Tensor>& x) {
  return translated([&] { return Fused ? sam_norm_sq(g, x) : generic::sam_norm_sq(g, x); });
}

template <bool Fused>
void op_sam_perturb(at::Tensor x, const at::Tensor& g, at::Tensor e, double scale, bool adaptive) {
  translated([&] { Fused ? sam_perturb(x, g, e, scale, adaptive) : generic::sam_perturb(x, g, e, scale, adaptive); });
}

template <bool Fused>
void op_sam_restore(at::Tensor x, const at::Tensor& e) {
  translated([&] { Fused ? sam_restore(x, e) : generic::sam_restore(x, e); });
}

template <bool Fused>
void op_qgm_direction(at::Tensor g, const at::Tensor& m_hat, const at::Tensor& x, double beta, double weight_decay,
                      bool nesterov) {
  translated([&] {
    Fused ? qgm_direction(g, m_hat, x, beta, weight_decay, nesterov)
          : generic::qgm_direction(g, m_hat, x, beta, weight_decay, nesterov);
  });
}

template <bool Fused>
void op_qgm_buffer_update(at::Tensor m_hat, const at::Tensor& x_prev, const at::Tensor& x, double mu, double lr) {
  translated([&] {
    Fused ? qgm_buffer_update(m_hat, x_prev, x, mu, lr) : generic::qgm_buffer_update(m_hat, x_prev, x, mu, lr);
  });
}

template <bool Fused>
void op_weighted_sum_(at::Tensor out, double a, at::TensorList ys, at::ArrayRef<double> b) {
  translated([&] {
    const std::vector<at::Tensor> yv(ys.begin(), ys.end());
    const std::vector<double> bv(b.begin(), b.end());
    Fused ? weighted_sum_(out, a, yv, bv) : generic::weighted_sum_(out, a, yv, bv);
  });
}

// ---- codecs: on the host -------------------------------------------------------------------------
at::Tensor cpu_encode(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                      int64_t seed) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  return translated([&] { return encode(*c, x, unsigned_seed(seed)); });
}

void cpu_encode_into(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                     int64_t seed, at::Tensor msg) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  translated([&] { encode_into(*c, x, unsigned_seed(seed), msg); });
}

at::Tensor cpu_decode(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                      int64_t n, int64_t seed) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  return translated([&] { return decode(*c, msg, n, unsigned_seed(seed)); });
}

void cpu_decode_into(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                     int64_t seed, at::Tensor out) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  translated([&] { decode_into(*c, msg, unsigned_seed(seed), out); });
}

void cpu_decode_add(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                    int64_t seed, double alpha, at::Tensor acc) {
  const CodecPtr c = codec_of(name, bits, ratio, block);
  translated([&] { decode_add(*c, msg, unsigned_seed(seed), alpha, acc); });
}

// ---- codecs: any other device, staged through host memory ------------------------------------------
namespace {
at::Tensor host(const at::Tensor& t) { return t.to(at::kCPU).contiguous(); }
}  // namespace

at::Tensor staged_encode(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                         int64_t seed) {
  return cpu_encode(host(x), name, bits, ratio, block, seed);  // the message lives on the host
}

void staged_encode_into(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                        int64_t seed, at::Tensor msg) {
  at::Tensor staged = host(msg);
  cpu_encode_into(host(x), name, bits, ratio, block, seed, staged);
  msg.copy_(staged);
}

at::Tensor staged_decode(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                         int64_t n, int64_t seed) {
  return cpu_decode(host(msg), name, bits, ratio, block, n, seed);
}

void staged_decode_into(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                        int64_t seed, at::Tensor out) {
  at::Tensor staged = host(out);
  cpu_decode_into(host(msg), name, bits, ratio, block, seed, staged);
  out.copy_(staged);
}

void staged_decode_add(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                       int64_t seed, double alpha, at::Tensor acc) {
  at::Tensor staged = host(acc);
  cpu_decode_add(host(msg), name, bits, ratio, block, seed, alpha, staged);
  acc.copy_(staged);
}

}  // namespace saddle::torch_ext::op

TORCH_LIBRARY(saddle, m) {
  m.def("sam_norm_sq(Tensor g, Tensor? x) -> float");
  m.def("sam_perturb(Tensor(a!) x, Tensor g, Tensor(b!) e, float scale, bool adaptive) -> ()");
  m.def("sam_restore(Tensor(a!) x, Tensor e) -> ()");
  m.def("qgm_direction(Tensor(a!) g, Tensor m_hat, Tensor x, float beta, float weight_decay, bool nesterov) -> ()");
  m.def("qgm_buffer_update(Tensor(a!) m_hat, Tensor x_prev, Tensor x, float mu, float lr) -> ()");
  m.def("weighted_sum_(Tensor(a!) out, float a, Tensor[] ys, float[] b) -> ()");
  m.def("codec_encode(Tensor x, str codec, int bits, float ratio, int block_size, int seed) -> Tensor");
  m.def(
      "codec_encode_into(Tensor x, str codec, int bits, float ratio, int block_size, int seed, Tensor(a!) msg) -> ()");
  m.def("codec_decode(Tensor msg, str codec, int bits, float ratio, int block_size, int n, int seed) -> Tensor");
  m.def(
      "codec_decode_into(Tensor msg, str codec, int bits, float ratio, int block_size, int seed, Tensor(a!) out) -> "
      "()");
  m.def(
      "codec_decode_add(Tensor msg, str codec, int bits, float ratio, int block_size, int seed, float alpha, "
      "Tensor(a!) acc) -> ()");
}

TORCH_LIBRARY_IMPL(saddle, CPU, m) {
  namespace st = saddle::torch_ext::op;
  m.impl("sam_norm_sq", &st::op_sam_norm_sq<true>);
  m.impl("sam_perturb", &st::op_sam_perturb<true>);
  m.impl("sam_restore", &st::op_sam_restore<true>);
  m.impl("qgm_direction", &st::op_qgm_direction<true>);
  m.impl("qgm_buffer_update", &st::op_qgm_buffer_update<true>);
  m.impl("weighted_sum_", &st::op_weighted_sum_<true>);
  m.impl("codec_encode", &st::cpu_encode);
  m.impl("codec_encode_into", &st::cpu_encode_into);
  m.impl("codec_decode", &st::cpu_decode);
  m.impl("codec_decode_into", &st::cpu_decode_into);
  m.impl("codec_decode_add", &st::cpu_decode_add);
}

TORCH_LIBRARY_IMPL(saddle, CompositeExplicitAutograd, m) {
  namespace st = saddle::torch_ext::op;
  m.impl("sam_norm_sq", &st::op_sam_norm_sq<false>);
  m.impl("sam_perturb", &st::op_sam_perturb<false>);
  m.impl("sam_restore", &st::op_sam_restore<false>);
  m.impl("qgm_direction", &st::op_qgm_direction<false>);
  m.impl("qgm_buffer_update", &st::op_qgm_buffer_update<false>);
  m.impl("weighted_sum_", &st::op_weighted_sum_<false>);
  m.impl("codec_encode", &st::staged_encode);
  m.impl("codec_encode_into", &st::staged_encode_into);
  m.impl("codec_decode", &st::staged_decode);
  m.impl("codec_decode_into", &st::staged_decode_into);
  m.impl("codec_decode_add", &st::staged_decode_add);
}
