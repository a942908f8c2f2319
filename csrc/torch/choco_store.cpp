#include "torch/choco_store.h"

#include "core/check.h"

namespace saddle::torch_ext {

bool ChocoStore::has(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  return states_.count(name) != 0;
}

ChocoStore::State ChocoStore::get_or_zeros(const std::string& name, int64_t numel) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = states_.find(name);
  if (it == states_.end()) {
    auto zeros = at::zeros({numel}, at::kFloat);
    it = states_.emplace(name, State{zeros, zeros.clone()}).first;
  }
  SADDLE_CHECK_ARG(it->second.first.numel() == numel, "CHOCO state of '", name, "' has ",
                   it->second.first.numel(), " elements, the tensor ", numel);
  return it->second;
}

ChocoStore::State ChocoStore::get(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = states_.find(name);
  SADDLE_CHECK_ARG(it != states_.end(), "no CHOCO state for '", name, "'");
  return it->second;
}

void ChocoStore::set(const std::string& name, const at::Tensor& x_hat, const at::Tensor& s) {
  SADDLE_CHECK_ARG(x_hat.dim() == 1 && s.sizes() == x_hat.sizes(), "CHOCO state of '", name,
                   "' needs two 1-D tensors of one size, got ", x_hat.sizes(), " and ", s.sizes());
  SADDLE_CHECK_ARG(x_hat.scalar_type() == at::kFloat && s.scalar_type() == at::kFloat,
                   "CHOCO state is float32, got ", x_hat.scalar_type(), " and ", s.scalar_type());
  auto copy = [](const at::Tensor& t) { return t.to(at::kCPU).contiguous().clone(); };
  State state{copy(x_hat), copy(s)};
  std::lock_guard<std::mutex> lock(mu_);
  auto it = states_.find(name);
  if (it != states_.end()) {
    SADDLE_CHECK_ARG(it->second.first.numel() == x_hat.numel(), "CHOCO state of '", name, "' has ",
                     it->second.first.numel(), " elements, the new one ", x_hat.numel());
    it->second.first.copy_(state.first);  // in place: rounds in flight hold these tensors
    it->second.second.copy_(state.second);
  } else {
    states_.emplace(name, std::move(state));
  }
}

void ChocoStore::erase(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  states_.erase(name);
}

void ChocoStore::clear() {
  std::lock_guard<std::mutex> lock(mu_);
  states_.clear();
}

std::vector<std::string> ChocoStore::names() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  out.reserve(states_.size());
  for (const auto& kv : states_) out.push_back(kv.first);
  return out;
}

uint64_t name_hash(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace saddle::torch_ext
