// topk(ratio) codec: the k = kept_count(ratio, n) entries of largest |x|, ties towards the lower
// index. Selection is linear: a radix histogram on the |x| bit patterns (monotone in |x|) finds the
// bucket of the k-th largest, nth_element settles it inside that bucket, one more pass emits.
#include <algorithm>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/codec/buffer.h"
#include "core/codec/codecs.h"
#include "core/codec/simd.h"

#if SADDLE_CODEC_X86
#include <immintrin.h>
#endif

namespace saddle::codec {
namespace {

// Per-chunk counts use fixed chunks, not the Parallel's ranges, so output is thread-independent.
constexpr size_t kChunk = size_t{1} << 17;
constexpr int kShift = 20;  // |x| bits are 31 wide: the top 11 pick the bucket
constexpr size_t kBuckets = size_t{1} << 11;

inline uint32_t abs_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u & 0x7FFFFFFFu;
}

// Calls fn(i, abs_bits(x[i])) for the i in [lo, hi) with abs_bits(x[i]) >= bound, in order. Few
// entries pass, so groups of 16 are tested branch-free first (for 31-bit a and bound > 0,
// a >= bound exactly when bound − 1 − a has its top bit set).
template <typename Fn>
inline void for_each_at_least_portable(const float* x, size_t lo, size_t hi, uint32_t bound, Fn&& fn) {
  constexpr size_t kGroup = 16;
  size_t i = lo;
  // bound == 0: everything passes and the group test does not apply; the tail loop takes it all.
  for (; bound > 0 && i + kGroup <= hi; i += kGroup) {
    uint32_t any = 0;
    for (size_t j = i; j < i + kGroup; ++j) any |= bound - 1 - abs_bits(x[j]);
    if (!(any >> 31)) continue;
    for (size_t j = i; j < i + kGroup; ++j) {
      const uint32_t a = abs_bits(x[j]);
      if (a >= bound) fn(j, a);
    }
  }
  for (; i < hi; ++i) {
    const uint32_t a = abs_bits(x[i]);
    if (a >= bound) fn(i, a);
  }
}

#if SADDLE_CODEC_X86
template <typename Fn>
SADDLE_TARGET_AVX2 void for_each_at_least_avx2(const float* x, size_t lo, size_t hi, uint32_t bound,
                                               Fn&& fn) {
  size_t i = lo;
  if (bound > 0) {
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i below = _mm256_set1_epi32(static_cast<int>(bound - 1));
    for (; i + 16 <= hi; i += 16) {
      const __m256i a0 =
          _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs_mask);
      const __m256i a1 =
          _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)), abs_mask);
      const __m256i hit = _mm256_or_si256(_mm256_cmpgt_epi32(a0, below), _mm256_cmpgt_epi32(a1, below));
      if (_mm256_testz_si256(hit, hit)) continue;
      for (size_t j = i; j < i + 16; ++j) {
        const uint32_t a = abs_bits(x[j]);
        if (a >= bound) fn(j, a);
      }
    }
  }
  for (; i < hi; ++i) {
    const uint32_t a = abs_bits(x[i]);
    if (a >= bound) fn(i, a);
  }
}
#endif

template <typename Fn>
inline void for_each_at_least(const float* x, size_t lo, size_t hi, uint32_t bound, Fn&& fn) {
#if SADDLE_CODEC_X86
  if (simd::avx2()) return for_each_at_least_avx2(x, lo, hi, bound, std::forward<Fn>(fn));
#endif
  for_each_at_least_portable(x, lo, hi, bound, std::forward<Fn>(fn));
}

class TopkCodec final : public Codec {
 public:
  explicit TopkCodec(const CodecSpec& spec) : Codec(spec), ratio_(spec.ratio) {}

  bool unbiased() const override { return false; }

  size_t payload_bytes(size_t n) const override { return 8 * kept_count(ratio_, n); }

 protected:
  void encode_payload(const float* x, size_t n, uint64_t, uint8_t* payload,
                      const Parallel& par) const override {
    const size_t k = kept_count(ratio_, n);
    uint8_t* values = payload;
    uint8_t* indices = payload + 4 * k;
    const auto emit = [&](size_t slot, size_t i) {
      buffer::store<float>(values + 4 * slot, x[i]);
      buffer::store<uint32_t>(indices + 4 * slot, static_cast<uint32_t>(i));
    };
    if (k == n) {
      par(n, buffer::kGrain, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) emit(i, i);
      });
      return;
    }
    const size_t chunks = (n + kChunk - 1) / kChunk;
    const auto chunk_range = [&](size_t c) {
      return std::make_pair(c * kChunk, std::min(n, (c + 1) * kChunk));
    };

    // 1. Bucket histogram per chunk; the k-th largest lies in bucket `pivot`.
    std::vector<uint32_t> hist(chunks * kBuckets, 0);
    par(chunks, 1, [&](size_t cb, size_t ce) {
      // Four interleaved sub-histograms, so runs of one bucket do not serialise on one counter.
      std::vector<uint32_t> sub(4 * kBuckets);
      for (size_t c = cb; c < ce; ++c) {
        std::fill(sub.begin(), sub.end(), 0);
        const auto [lo, hi] = chunk_range(c);
        size_t i = lo;
        for (; i + 4 <= hi; i += 4) {
          ++sub[abs_bits(x[i]) >> kShift];
          ++sub[kBuckets + (abs_bits(x[i + 1]) >> kShift)];
          ++sub[2 * kBuckets + (abs_bits(x[i + 2]) >> kShift)];
          ++sub[3 * kBuckets + (abs_bits(x[i + 3]) >> kShift)];
        }
        for (; i < hi; ++i) ++sub[abs_bits(x[i]) >> kShift];
        uint32_t* h = hist.data() + c * kBuckets;
        for (size_t b = 0; b < kBuckets; ++b)
          h[b] = sub[b] + sub[kBuckets + b] + sub[2 * kBuckets + b] + sub[3 * kBuckets + b];
      }
    });
    std::vector<size_t> total(kBuckets, 0);
    for (size_t c = 0; c < chunks; ++c)
      for (size_t b = 0; b < kBuckets; ++b) total[b] += hist[c * kBuckets + b];
    size_t pivot = kBuckets, above = 0;
    while (pivot > 0 && above + total[pivot - 1] < k) above += total[--pivot];
    --pivot;  // above < k <= above + total[pivot]

    // 2. The pivot bucket's |x| bits, per chunk; the threshold is the (k − above)-th largest.
    std::vector<std::vector<uint32_t>> candidates(chunks);
    par(chunks, 1, [&](size_t cb, size_t ce) {
      for (size_t c = cb; c < ce; ++c) {
        auto& out = candidates[c];
        out.reserve(hist[c * kBuckets + pivot]);
        const auto [lo, hi] = chunk_range(c);
        for_each_at_least(x, lo, hi, static_cast<uint32_t>(pivot << kShift), [&](size_t, uint32_t a) {
          if ((a >> kShift) == pivot) out.push_back(a);
        });
      }
    });
    std::vector<uint32_t> all;
    all.reserve(total[pivot]);
    for (const auto& cand : candidates) all.insert(all.end(), cand.begin(), cand.end());
    const size_t rank = k - above - 1;
    std::nth_element(all.begin(), all.begin() + rank, all.end(), std::greater<uint32_t>());
    const uint32_t threshold = all[rank];

    // 3. Per chunk: how many entries beat the threshold, and how many ties it may take.
    std::vector<size_t> offset(chunks), ties(chunks);
    size_t greater_total = 0;
    std::vector<size_t> greater(chunks), equal(chunks);
    for (size_t c = 0; c < chunks; ++c) {
      size_t g = 0, e = 0;
      for (size_t b = pivot + 1; b < kBuckets; ++b) g += hist[c * kBuckets + b];
      for (uint32_t a : candidates[c]) {
        g += a > threshold;
        e += a == threshold;
      }
      greater[c] = g;
      equal[c] = e;
      greater_total += g;
    }
    size_t ties_left = k - greater_total, pos = 0;
    for (size_t c = 0; c < chunks; ++c) {
      ties[c] = std::min(equal[c], ties_left);
      ties_left -= ties[c];
      offset[c] = pos;
      pos += greater[c] + ties[c];
    }
    SADDLE_CHECK_EQ(pos, k, "topk: selection count");

    // 4. Emit in index order, so indices come out strictly increasing.
    par(chunks, 1, [&](size_t cb, size_t ce) {
      for (size_t c = cb; c < ce; ++c) {
        size_t slot = offset[c], ties_to_take = ties[c];
        const auto [lo, hi] = chunk_range(c);
        for_each_at_least(x, lo, hi, threshold, [&](size_t i, uint32_t a) {
          if (a == threshold) {
            if (ties_to_take == 0) return;
            --ties_to_take;
          }
          emit(slot++, i);
        });
      }
    });
  }

  void check_payload(const uint8_t* payload, size_t n, const Parallel&) const override {
    const size_t k = kept_count(ratio_, n);
    const uint8_t* indices = payload + 4 * k;
    uint64_t prev = 0;
    for (size_t j = 0; j < k; ++j) {
      const uint64_t i = buffer::load<uint32_t>(indices + 4 * j);
      if (i >= n) {
        throw CorruptMessage(
            ::saddle::detail::concat("topk index ", i, " out of range [0, ", n, ") at position ", j));
      }
      if (j > 0 && i <= prev) {
        throw CorruptMessage(::saddle::detail::concat("topk indices not strictly increasing at position ", j,
                                                      " (", i, " after ", prev, ")"));
      }
      prev = i;
    }
  }

  void decode_payload(const uint8_t* payload, size_t n, uint64_t, float alpha, float* out, bool accumulate,
                      const Parallel& par) const override {
    const size_t k = kept_count(ratio_, n);
    const uint8_t* values = payload;
    const uint8_t* indices = payload + 4 * k;
    if (!accumulate) {
      par(n, buffer::kGrain, [&](size_t b, size_t e) { std::fill(out + b, out + e, 0.0f); });
    }
    // Indices are distinct (checked), so ranges of them can be scattered concurrently.
    par(k, buffer::kGrain, [&](size_t b, size_t e) {
      for (size_t j = b; j < e; ++j) {
        const float v = buffer::load<float>(values + 4 * j);
        const uint32_t i = buffer::load<uint32_t>(indices + 4 * j);
        if (accumulate)
          out[i] += alpha * v;
        else
          out[i] = v;
      }
    });
  }

 private:
  double ratio_;
};

}  // namespace

std::unique_ptr<Codec> make_topk(const CodecSpec& spec) {
  kept_count(spec.ratio, 0);  // validates the ratio
  return std::make_unique<TopkCodec>(CodecSpec{CodecId::kTopk, 0, spec.ratio, 0});
}

}  // namespace saddle::codec
