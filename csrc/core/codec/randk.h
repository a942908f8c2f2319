// The index set of randk, shared by encoder, decoder and tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace saddle::codec {

// The k distinct indices randk keeps for (n, k, seed), ascending: a uniform k-subset of [0, n)
// (rejection sampling into a bitmap from a SplitMix64 stream; the complement when k > n/2). Both
// sides of a link derive it from the shared seed, so no index goes on the wire. Requires k <= n.
std::vector<uint32_t> randk_indices(size_t n, size_t k, uint64_t seed);

}  // namespace saddle::codec
