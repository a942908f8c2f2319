// Conversions between core topologies and tensors / Python-friendly values.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/topology/topology.h"

namespace saddle::torch_ext {

// W at `step` as an n×n float64 tensor.
at::Tensor mixing_matrix_tensor(const topology::Topology& t, int64_t step);
// A static topology from a dense n×n matrix (any float dtype, CPU).
std::shared_ptr<topology::Topology> topology_from_tensor(const std::string& name, const at::Tensor& w);
// In-neighbours of `rank` at `step` with their weights w_ij.
std::vector<std::pair<int, double>> in_edges(const topology::Topology& t, int rank, int64_t step);

}  // namespace saddle::torch_ext
