// What the device tests share: whether a GPU is visible (the tests skip without one) and a device
// buffer that uploads and downloads std::vectors.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <vector>

#include "cuda/check.h"

namespace saddle::cuda::testing {

inline bool have_device() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define SADDLE_REQUIRE_GPU() \
  if (!::saddle::cuda::testing::have_device()) GTEST_SKIP() << "no CUDA device visible"

template <typename T>
struct DeviceBuffer {
  explicit DeviceBuffer(size_t count) : count(count) {
    SADDLE_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), count * sizeof(T) + 1), "test buffer");
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const std::vector<T>& v) {
    SADDLE_CUDA_CHECK(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> download() const {
    std::vector<T> v(count);
    SADDLE_CUDA_CHECK(cudaMemcpy(v.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return v;
  }
  T* ptr = nullptr;
  size_t count;
};

}  // namespace saddle::cuda::testing
