// CHOCO's per-name state (x̂, s): the one owner used by the gossip context and the saddle backend.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace saddle::torch_ext {

// x̂ (this rank's public copy) and s = Σ_{j∈N(i)∪{i}} w_ij x̂_j, float32 CPU, one pair per gossip name.
// Every rank must hold, for a name, the x̂ its neighbours believe it holds: the state is created
// (zeros, or a common initial tensor), changed by rounds, reset and restored on every rank alike.
class ChocoStore {
 public:
  using State = std::pair<at::Tensor, at::Tensor>;

  bool has(const std::string& name) const;
  // The state of `name`, created as zeros on first use. Throws ValueError if it holds another size.
  State get_or_zeros(const std::string& name, int64_t numel);
  // The state of `name`; throws ValueError if there is none.
  State get(const std::string& name) const;
  // Replaces the state of `name` with copies of x̂ and s (same size, float32, CPU).
  void set(const std::string& name, const at::Tensor& x_hat, const at::Tensor& s);
  void erase(const std::string& name);
  // Drops every state: the next round of each name starts afresh (a new topology changes s).
  void clear();
  std::vector<std::string> names() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, State> states_;
};

// A stable, platform-independent 64-bit hash of a gossip name (FNV-1a): seeds the codecs' randomness.
uint64_t name_hash(const std::string& name);

}  // namespace saddle::torch_ext
