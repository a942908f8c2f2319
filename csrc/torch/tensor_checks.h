// Argument checks shared by the tensor ops of the extension (CPU and CUDA kernels alike).
#pragma once

#include <ATen/ATen.h>

#include "core/check.h"

namespace saddle::torch_ext {

// The two tensors of an elementwise op: same size, dtype and device, both contiguous.
inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* what) {
  SADDLE_CHECK_ARG(a.numel() == b.numel() && a.scalar_type() == b.scalar_type() && a.device() == b.device(),
                   what, ": tensors differ in size, dtype or device (", a.numel(), " ", a.scalar_type(), " ",
                   a.device(), " vs ", b.numel(), " ", b.scalar_type(), " ", b.device(), ")");
  SADDLE_CHECK_ARG(a.is_contiguous() && b.is_contiguous(), what, ": tensors must be contiguous");
}

}  // namespace saddle::torch_ext
