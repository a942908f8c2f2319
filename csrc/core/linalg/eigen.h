// Dense symmetric eigenvalues for small matrices (mixing matrices of at most a few hundred ranks).
#pragma once

#include <cstddef>
#include <vector>

namespace saddle::linalg {

// Row-major square matrix of doubles.
struct Matrix {
  int n = 0;
  std::vector<double> a;

  explicit Matrix(int size = 0) : n(size), a(static_cast<size_t>(size) * size, 0.0) {}
  double& operator()(int i, int j) { return a[static_cast<size_t>(i) * n + j]; }
  double operator()(int i, int j) const { return a[static_cast<size_t>(i) * n + j]; }
};

Matrix multiply(const Matrix& x, const Matrix& y);
Matrix transpose(const Matrix& x);

// Eigenvalues of a symmetric matrix, sorted in descending order (cyclic Jacobi rotations).
std::vector<double> symmetric_eigenvalues(const Matrix& m);

}  // namespace saddle::linalg
