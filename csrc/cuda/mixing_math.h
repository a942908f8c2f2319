// The gossip's element-wise mixing for the device, bit for bit as core/mixing.cpp: accumulate_first,
// accumulate, apply, mix, choco_step and choco_finish, one element per thread, each the CPU loop body
// with its operations in source order. Which form a call takes (the CPU branches on its scalars after
// converting them to T) is decided on the host by the *_form() functions, the CPU's conditions.
#pragma once

#include "cuda/host_device.h"

namespace saddle::cuda::mixing_math {

// accumulate_first: acc ← b·y + c·s when s is given and c ≠ 0 (as T), else acc ← b·y.
template <typename T>
inline bool first_uses_s(const T* s, T c) {
  return s != nullptr && c != T(0);
}

template <typename T>
SADDLE_HD void accumulate_first_element(T* acc, const T* y, T b, const T* s, T c, bool use_s, size_t i) {
  acc[i] = use_s ? add_rn(mul_rn(b, y[i]), mul_rn(c, s[i])) : mul_rn(b, y[i]);
}

// accumulate (and each neighbour term of mix): acc ← acc + b·y.
template <typename T>
SADDLE_HD void accumulate_element(T* acc, const T* y, T b, size_t i) {
  acc[i] = add_rn(acc[i], mul_rn(b, y[i]));
}

// apply: x ← x·a (no accumulator, a ≠ 1), x ← x + g·acc (a = 1) or x ← a·x + g·acc; nothing when
// there is no accumulator and a = 1.
enum class ApplyForm { kNothing, kScale, kAdd, kAxpby };

template <typename T>
inline ApplyForm apply_form(const T* acc, T a) {
  if (acc == nullptr) return a != T(1) ? ApplyForm::kScale : ApplyForm::kNothing;
  return a == T(1) ? ApplyForm::kAdd : ApplyForm::kAxpby;
}

template <typename T>
SADDLE_HD void apply_element(T* x, const T* acc, T a, T g, ApplyForm form, size_t i) {
  switch (form) {
    case ApplyForm::kScale:
      x[i] = mul_rn(x[i], a);
      break;
    case ApplyForm::kAdd:
      x[i] = add_rn(x[i], mul_rn(g, acc[i]));
      break;
    case ApplyForm::kAxpby:
      x[i] = add_rn(mul_rn(a, x[i]), mul_rn(g, acc[i]));
      break;
    case ApplyForm::kNothing:
      break;
  }
}

// mix's first pass over a block: x ← a·x + c·s (s given, c ≠ 0), else x ← a·x (a ≠ 1), else
// nothing; then one accumulate_element per neighbour, in the row's order.
enum class MixForm { kNothing, kScale, kWithSnapshot };

template <typename T>
inline MixForm mix_form(const T* s, T a, T c) {
  if (s != nullptr && c != T(0)) return MixForm::kWithSnapshot;
  return a != T(1) ? MixForm::kScale : MixForm::kNothing;
}

template <typename T>
SADDLE_HD void mix_first_element(T* x, const T* s, T a, T c, MixForm form, size_t i) {
  if (form == MixForm::kWithSnapshot)
    x[i] = add_rn(mul_rn(a, x[i]), mul_rn(c, s[i]));
  else if (form == MixForm::kScale)
    x[i] = mul_rn(a, x[i]);
}

// choco_step: x ← x + γ·(s − x̂).
template <typename T>
SADDLE_HD void choco_step_element(T* x, const T* s, const T* x_hat, T gamma, size_t i) {
  x[i] = add_rn(x[i], mul_rn(gamma, sub_rn(s[i], x_hat[i])));
}

// choco_finish: x̂ ← x̂ + d; s ← s + acc; x ← x + γ·(s − x̂), reading back what it wrote as the CPU.
template <typename T>
SADDLE_HD void choco_finish_element(T* x, T* s, T* x_hat, const T* d, const T* acc, T gamma, size_t i) {
  x_hat[i] = add_rn(x_hat[i], d[i]);
  s[i] = add_rn(s[i], acc[i]);
  x[i] = add_rn(x[i], mul_rn(gamma, sub_rn(s[i], x_hat[i])));
}

}  // namespace saddle::cuda::mixing_math
