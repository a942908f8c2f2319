// Unaligned little-endian access to message buffers (a payload may start at any address), and the
// work-splitting grain shared by the codecs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace saddle::codec::buffer {

// Elements per parallel task for element-wise loops: big enough to amortise a task, small enough
// to balance 25M elements over many threads.
constexpr size_t kGrain = size_t{1} << 15;

template <typename T>
inline T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
inline void store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace saddle::codec::buffer
