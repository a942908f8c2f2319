// The kernels of the operator library torch.ops.saddle (ops_library.cpp), shared with the CUDA
// registration (cuda/ops_cuda.cpp, built only when torch has CUDA), and what the Python side that
// translates its errors (saddle_torch/kernels.py) must agree on.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "core/check.h"
#include "core/codec/wire.h"
#include "torch/codec_ops.h"

namespace saddle::torch_ext {

// A RuntimeError from a torch.ops.saddle op that starts with one of these is turned back into
// saddle_torch.CorruptMessageError / InternalError by saddle_torch.kernels (keep the two in step).
inline constexpr const char* kCorruptMessagePrefix = "saddle_torch.CorruptMessageError: ";
inline constexpr const char* kInternalErrorPrefix = "saddle_torch.InternalError: ";

namespace op {

// Runs f, turning the project's exceptions into c10 errors that keep their meaning in Python:
// std::invalid_argument → ValueError, CorruptMessage and saddle::Error → prefixed RuntimeError.
template <typename F>
auto translated(const F& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  } catch (const codec::CorruptMessage& e) {
    TORCH_CHECK(false, kCorruptMessagePrefix, e.what());
  } catch (const ::saddle::Error& e) {
    TORCH_CHECK(false, kInternalErrorPrefix, e.what());
  }
}

inline uint64_t unsigned_seed(int64_t seed) { return static_cast<uint64_t>(seed); }

// The codec a schema's (codec, bits, ratio, block_size) name.
CodecPtr codec_of(const std::string& name, int64_t bits, double ratio, int64_t block_size);

// The codecs on the host (CPU kernels), and staged through host memory (any other device).
at::Tensor cpu_encode(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                      int64_t seed);
void cpu_encode_into(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                     int64_t seed, at::Tensor msg);
at::Tensor cpu_decode(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                      int64_t n, int64_t seed);
void cpu_decode_into(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                     int64_t seed, at::Tensor out);
void cpu_decode_add(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                    int64_t seed, double alpha, at::Tensor acc);
at::Tensor staged_encode(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                         int64_t seed);
void staged_encode_into(const at::Tensor& x, const std::string& name, int64_t bits, double ratio, int64_t block,
                        int64_t seed, at::Tensor msg);
void staged_decode_into(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                        int64_t seed, at::Tensor out);
void staged_decode_add(const at::Tensor& msg, const std::string& name, int64_t bits, double ratio, int64_t block,
                       int64_t seed, double alpha, at::Tensor acc);

}  // namespace op
}  // namespace saddle::torch_ext
