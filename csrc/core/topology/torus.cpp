#include "core/check.h"
#include "core/topology/generators.h"

namespace saddle::topology {

Topology torus(int rows, int cols, Weights weights) {
  SADDLE_CHECK_ARG(rows >= 1 && cols >= 1, "torus: rows and cols must be at least 1, got ", rows,
                   "×", cols);
  const int n = rows * cols;
  std::vector<std::vector<int>> adj(n);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      auto& a = adj[r * cols + c];
      if (rows > 1) {
        a.push_back(((r + 1) % rows) * cols + c);
        a.push_back(((r + rows - 1) % rows) * cols + c);
      }
      if (cols > 1) {
        a.push_back(r * cols + (c + 1) % cols);
        a.push_back(r * cols + (c + cols - 1) % cols);
      }
    }
  return from_undirected("torus(" + std::to_string(rows) + "x" + std::to_string(cols) + ")", adj,
                         weights);
}

}  // namespace saddle::topology
