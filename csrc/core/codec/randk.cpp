// randk(ratio) codec: k = kept_count(ratio, n) entries at indices drawn from the shared seed,
// scaled by n/k in the decoder so that E[C(x)] = x. Only the k values travel.
#include "core/codec/randk.h"

#include <algorithm>

#include "core/check.h"
#include "core/codec/buffer.h"
#include "core/codec/codecs.h"
#include "core/codec/rng.h"

namespace saddle::codec {
namespace {

// Bitmap of the kept indices: O(n/64 + k) time, n/8 bytes.
std::vector<uint64_t> kept_bitmap(size_t n, size_t k, uint64_t seed) {
  SADDLE_CHECK(k <= n, "randk: k ", k, " > n ", n);
  const size_t words = (n + 63) / 64;
  // Draw the smaller of the kept set and its complement, so rejection needs < 2 draws per index.
  const bool complement = k > n / 2;
  const size_t draws = complement ? n - k : k;
  std::vector<uint64_t> bits(words, 0);
  rng::SplitMix64 gen(rng::splitmix64(seed ^ 0x72616E646Bull));  // "randk": its own stream
  for (size_t drawn = 0; drawn < draws;) {
    const uint64_t i = gen.below(n);
    uint64_t& w = bits[i / 64];
    const uint64_t m = uint64_t{1} << (i % 64);
    if (!(w & m)) {
      w |= m;
      ++drawn;
    }
  }
  if (complement) {
    for (auto& w : bits) w = ~w;
    if (n % 64) bits.back() &= (uint64_t{1} << (n % 64)) - 1;
  }
  return bits;
}

// Calls fn(j, i) for the j-th kept index i, in ascending order.
template <typename Fn>
void for_each_kept(const std::vector<uint64_t>& bits, Fn&& fn) {
  size_t j = 0;
  for (size_t w = 0; w < bits.size(); ++w) {
    for (uint64_t word = bits[w]; word != 0; word &= word - 1) fn(j++, w * 64 + __builtin_ctzll(word));
  }
}

class RandkCodec final : public Codec {
 public:
  explicit RandkCodec(const CodecSpec& spec) : Codec(spec), ratio_(spec.ratio) {}

  bool unbiased() const override { return true; }

  size_t payload_bytes(size_t n) const override { return 4 * kept_count(ratio_, n); }

 protected:
  bool seeded_decode() const override { return true; }

  void encode_payload(const float* x, size_t n, uint64_t seed, uint8_t* payload,
                      const Parallel&) const override {
    const size_t k = kept_count(ratio_, n);
    if (k == 0) return;
    for_each_kept(kept_bitmap(n, k, seed),
                  [&](size_t j, size_t i) { buffer::store<float>(payload + 4 * j, x[i]); });
  }

  void decode_payload(const uint8_t* payload, size_t n, uint64_t seed, float alpha, float* out,
                      bool accumulate, const Parallel& par) const override {
    const size_t k = kept_count(ratio_, n);
    if (!accumulate) {
      par(n, buffer::kGrain, [&](size_t b, size_t e) { std::fill(out + b, out + e, 0.0f); });
    }
    if (k == 0) return;
    const float scale = static_cast<float>(static_cast<double>(n) / static_cast<double>(k));
    for_each_kept(kept_bitmap(n, k, seed), [&](size_t j, size_t i) {
      const float v = scale * buffer::load<float>(payload + 4 * j);
      if (accumulate)
        out[i] += alpha * v;
      else
        out[i] = v;
    });
  }

 private:
  double ratio_;
};

}  // namespace

std::vector<uint32_t> randk_indices(size_t n, size_t k, uint64_t seed) {
  SADDLE_CHECK_ARG(k <= n && n <= kMaxElements, "randk_indices: need k <= n <= 2^32, got k ", k, ", n ", n);
  std::vector<uint32_t> out(k);
  if (k == 0) return out;
  for_each_kept(kept_bitmap(n, k, seed), [&](size_t j, size_t i) { out[j] = static_cast<uint32_t>(i); });
  return out;
}

std::unique_ptr<Codec> make_randk(const CodecSpec& spec) {
  kept_count(spec.ratio, 0);  // validates the ratio
  return std::make_unique<RandkCodec>(CodecSpec{CodecId::kRandk, 0, spec.ratio, 0});
}

}  // namespace saddle::codec
