// SAM's element-wise steps for the device, bit for bit as core/optim/sam.cpp, and the fixed
// summation tree of the device norm (which cannot follow the CPU's order: see below).
//
// Perturb and restore are element-wise: one element per thread, each the CPU loop body with its
// operations in source order: e = s·g, or ((s·x)·x)·g for ASAM; x ← x + e; restore x ← x − e.
//
// The norm Σ g² (or Σ ((double)x·g)²) is a double sum. The CPU adds the terms one after the other
// within each at::parallel_reduce chunk and then adds the chunk results, so its order depends on
// the thread count; a parallel device sum cannot follow a sequential order. The device uses a
// fixed tree that depends on n only (not on the grid): each term is the CPU's term bit for bit,
//   1. tile k = elements [k·kTile, (k+1)·kTile): thread t (of kThreads) adds terms
//      k·kTile + t + kThreads·m, m = 0..kPerThread−1, in increasing m, from 0.0;
//   2. the kThreads thread sums of a tile are added in the tree tree_reduce() describes;
//   3. one block: thread t adds tile sums t, t + kThreads, ... in increasing order, from 0.0,
//      then the same tree. The result is the norm.
// Every term is non-negative, so both sums are within γ_d·Σ of the exact sum (d = the most
// additions one term goes through): the device's d is kPerThread + 2·log2(kThreads) +
// ceil(tiles/kThreads), the CPU's at most n. tests/cpp/cuda_optim_math_test.cpp checks that bound.
#pragma once

#include "cuda/host_device.h"

namespace saddle::cuda::sam {

// e_i = s·g_i (SAM) or ((s·x_i)·x_i)·g_i (ASAM); x_i ← x_i + e_i.
template <typename T>
SADDLE_HD void perturb_element(T* x, const T* g, T* e, T s, bool adaptive, size_t i) {
  const T ei = adaptive ? mul_rn(mul_rn(mul_rn(s, x[i]), x[i]), g[i]) : mul_rn(s, g[i]);
  e[i] = ei;
  x[i] = add_rn(x[i], ei);
}

// x_i ← x_i − e_i.
template <typename T>
SADDLE_HD void restore_element(T* x, const T* e, size_t i) {
  x[i] = sub_rn(x[i], e[i]);
}

// Term i of the norm: (double)g_i·g_i, or v·v with v = (double)x_i·g_i (ASAM, x given).
template <typename T>
SADDLE_HD double norm_term(const T* g, const T* x, size_t i) {
  if (x == nullptr) return mul_rn(static_cast<double>(g[i]), static_cast<double>(g[i]));
  const double v = mul_rn(static_cast<double>(x[i]), static_cast<double>(g[i]));
  return mul_rn(v, v);
}

constexpr unsigned kThreads = 256;  // threads of both reduction kernels (a power of two)
constexpr unsigned kPerThread = 16;
constexpr size_t kTile = size_t{kThreads} * kPerThread;

SADDLE_HD size_t tiles(size_t n) { return (n + kTile - 1) / kTile; }

// Step 1: thread t's sum over tile k.
template <typename T>
SADDLE_HD double tile_thread_sum(const T* g, const T* x, size_t n, size_t k, unsigned t) {
  double acc = 0.0;
  for (unsigned m = 0; m < kPerThread; ++m) {
    const size_t i = k * kTile + t + size_t{kThreads} * m;
    if (i < n) acc = add_rn(acc, norm_term(g, x, i));
  }
  return acc;
}

// Step 3: thread t's sum of tile sums t, t + kThreads, ...
SADDLE_HD double partial_thread_sum(const double* tile_sums, size_t count, unsigned t) {
  double acc = 0.0;
  for (size_t k = t; k < count; k += kThreads) acc = add_rn(acc, tile_sums[k]);
  return acc;
}

// Steps 2 and 3, one level of the tree: for h = kThreads/2, kThreads/4, ..., 1 in turn, every
// thread t < h sets v[t] ← v[t] + v[t + h] (the kernel puts __syncthreads() between levels).
SADDLE_HD void tree_step(double* v, unsigned h, unsigned t) {
  if (t < h) v[t] = add_rn(v[t], v[t + h]);
}

}  // namespace saddle::cuda::sam
