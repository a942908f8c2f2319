// qsgd(bits) codec (Alistarh et al. 2017) with a max-norm scale per block: stochastic rounding of
// |v|·s/scale to one of s + 1 levels, s = 2^(bits-1) − 1, so E[C(x)] = x. int8 is qsgd(8).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/codec/buffer.h"
#include "core/codec/codecs.h"
#include "core/codec/rng.h"
#include "core/codec/simd.h"

#if SADDLE_CODEC_X86
#include <immintrin.h>
#endif

namespace saddle::codec {
namespace {

// Smallest block scale that is sent: s/scale stays finite (127/3.4e38 ≈ 3.7e-37) with margin.
constexpr float kMinScale = 1e-35f;

// ---- scalar pieces, shared by both kernels (the AVX2 kernel mirrors them lane by lane) ----

// Code (level + s) of v. t >= 0, and the clamp is written as _mm256_min_ps behaves (NaN -> s), so
// the float->int conversion is always in range and both kernels agree.
inline uint8_t quantize(float v, float inv, float s, uint64_t key, uint32_t i) {
  float t = std::fabs(v) * inv;
  t = t < s ? t : s;
  const float lower = std::floor(t);
  const float u = static_cast<float>(rng::draw32(key, i) >> 8) * 0x1p-24f;
  const int level = static_cast<int>(lower) + (u < t - lower ? 1 : 0);
  const int si = static_cast<int>(s);
  return static_cast<uint8_t>(v < 0.0f ? si - level : si + level);
}

// Packs `len` codes (< 2^bits each) at bit (i·bits mod 8) of byte i·bits/8; padding bits are zero.
inline void pack(const uint8_t* codes, size_t len, int bits, uint8_t* out) {
  if (bits == 8) {
    std::memcpy(out, codes, len);
    return;
  }
  const size_t per_byte = 8 / bits;
  for (size_t o = 0; o * per_byte < len; ++o) {
    unsigned byte = 0;
    for (size_t r = 0; r < per_byte && o * per_byte + r < len; ++r)
      byte |= static_cast<unsigned>(codes[o * per_byte + r]) << (r * bits);
    out[o] = static_cast<uint8_t>(byte);
  }
}

inline unsigned code_at(const uint8_t* codes, size_t i, int bits) {
  if (bits == 8) return codes[i];
  const size_t bit = i * bits;
  return (codes[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
}

float max_abs_portable(const float* x, size_t len) {
  float m = 0.0f;
  for (size_t i = 0; i < len; ++i) {
    const float a = std::fabs(x[i]);
    m = a > m ? a : m;
  }
  return m;
}

void encode_block_portable(const float* x, size_t len, float inv, float s, uint64_t key, int bits,
                           uint8_t* out) {
  uint8_t tmp[64];
  for (size_t lo = 0; lo < len; lo += 64) {
    const size_t m = std::min<size_t>(64, len - lo);
    for (size_t j = 0; j < m; ++j) tmp[j] = quantize(x[lo + j], inv, s, key, static_cast<uint32_t>(lo + j));
    pack(tmp, m, bits, out + lo * bits / 8);
  }
}

template <bool kAdd>
void decode_block_portable(const uint8_t* codes, size_t len, int bits, int s, float step, float alpha,
                           float* out) {
  for (size_t i = 0; i < len; ++i) {
    const float v = static_cast<float>(static_cast<int>(code_at(codes, i, bits)) - s) * step;
    if (kAdd)
      out[i] += alpha * v;
    else
      out[i] = v;
  }
}

// True if some `bits`-wide field of the bytes is all ones (an invalid code). SWAR: a field of
// v = ~w is zero exactly when (v − 0x..0101) & ~v & 0x..8080 (per field width) is nonzero.
bool has_invalid_code(const uint8_t* p, size_t len, int bits) {
  const uint64_t lo = bits == 8   ? 0x0101010101010101ull
                      : bits == 4 ? 0x1111111111111111ull
                                  : 0x5555555555555555ull;
  const uint64_t hi = lo << (bits - 1);
  uint64_t found = 0;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const uint64_t w = buffer::load<uint64_t>(p + i);
    found |= (~w - lo) & w & hi;
  }
  uint64_t w = 0;
  std::memcpy(&w, p + i, len - i);  // missing bytes are zero fields, never invalid
  found |= (~w - lo) & w & hi;
  return found != 0;
}

#if SADDLE_CODEC_X86
// has_invalid_code, 32 bytes at a time: a field is invalid when (byte & mask) == mask.
SADDLE_TARGET_AVX2 bool has_invalid_code_avx2(const uint8_t* p, size_t len, int bits) {
  const int fields = 8 / bits;
  __m256i masks[4];
  for (int f = 0; f < fields; ++f)
    masks[f] = _mm256_set1_epi8(static_cast<char>(((1u << bits) - 1) << (f * bits)));
  __m256i found = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 32 <= len; i += 32) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
    for (int f = 0; f < fields; ++f)
      found = _mm256_or_si256(found, _mm256_cmpeq_epi8(_mm256_and_si256(v, masks[f]), masks[f]));
  }
  return !_mm256_testz_si256(found, found) || has_invalid_code(p + i, len - i, bits);
}

SADDLE_TARGET_AVX2 float max_abs_avx2(const float* x, size_t len) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= len; i += 16) {
    m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
    m1 = _mm256_max_ps(m1, _mm256_and_ps(_mm256_loadu_ps(x + i + 8), abs_mask));
  }
  for (; i + 8 <= len; i += 8) m0 = _mm256_max_ps(m0, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
  float m = max_abs_portable(x + i, len - i);
  for (float v : lanes) m = v > m ? v : m;
  return m;
}

// Codes of x[0, 8) as eight int32 lanes; lane for lane the same arithmetic as quantize().
// `counter` holds i·0x9E3779B1 + (uint32)key for the eight element indices i (see rng::draw32).
SADDLE_TARGET_AVX2 inline __m256i quantize8(const float* x, __m256 inv, __m256 s, __m256i si, __m256i khi,
                                            __m256i counter) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 v = _mm256_loadu_ps(x);
  __m256 t = _mm256_mul_ps(_mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))), inv);
  t = _mm256_min_ps(t, s);
  const __m256 lower = _mm256_floor_ps(t);
  // rng::draw32, vectorised.
  __m256i h = _mm256_xor_si256(counter, _mm256_srli_epi32(counter, 16));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(0x7FEB352D));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 15));
  h = _mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int>(0x846CA68Bu)));
  h = _mm256_xor_si256(h, _mm256_srli_epi32(h, 16));
  h = _mm256_xor_si256(h, khi);
  const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)), _mm256_set1_ps(0x1p-24f));
  const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(u, _mm256_sub_ps(t, lower), _CMP_LT_OQ));
  const __m256i level = _mm256_sub_epi32(_mm256_cvttps_epi32(lower), up);  // up is -1 where rounding up
  const __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_LT_OQ));
  return _mm256_add_epi32(si, _mm256_sub_epi32(_mm256_xor_si256(level, neg), neg));  // s ± level
}

// Sixteen codes as sixteen bytes in element order (packs work per 128-bit lane); advances counter.
SADDLE_TARGET_AVX2 inline __m128i quantize16(const float* x, __m256 inv, __m256 s, __m256i si, __m256i khi,
                                             __m256i step, __m256i& counter) {
  const __m256i c0 = quantize8(x, inv, s, si, khi, counter);
  counter = _mm256_add_epi32(counter, step);
  const __m256i c1 = quantize8(x + 8, inv, s, si, khi, counter);
  counter = _mm256_add_epi32(counter, step);
  const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(c0, c1), 0xD8);
  return _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
}

// The low byte of each int32 lane (values < 256), in order, as 8 bytes.
SADDLE_TARGET_AVX2 inline __m128i narrow8(__m256i c) {
  const __m256i w16 = _mm256_packus_epi32(c, c);
  const __m256i w8 = _mm256_packus_epi16(w16, w16);
  return _mm_unpacklo_epi32(_mm256_castsi256_si128(w8), _mm256_extracti128_si256(w8, 1));
}

SADDLE_TARGET_AVX2 void encode_block_avx2(const float* x, size_t len, float inv, float s, uint64_t key,
                                          int bits, uint8_t* out) {
  const __m256 vinv = _mm256_set1_ps(inv), vs = _mm256_set1_ps(s);
  const __m256i si = _mm256_set1_epi32(static_cast<int>(s));
  const __m256i khi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(key >> 32)));
  const uint32_t golden = 0x9E3779B1u, klo = static_cast<uint32_t>(key);
  // The draw counter advances by 8·golden per vector instead of a multiply per lane.
  __m256i counter = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                        _mm256_set1_epi32(static_cast<int>(golden))),
                                     _mm256_set1_epi32(static_cast<int>(klo)));
  const __m256i step = _mm256_set1_epi32(static_cast<int>(8u * golden));
  size_t i = 0;
  if (bits == 8) {
    for (; i + 16 <= len; i += 16)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                       quantize16(x + i, vinv, vs, si, khi, step, counter));
  } else if (bits == 4) {
    // Byte m = e[2m] + 16·e[2m+1].
    const __m128i weights = _mm_set1_epi16(0x1001);
    for (; i + 16 <= len; i += 16) {
      const __m128i pairs = _mm_maddubs_epi16(quantize16(x + i, vinv, vs, si, khi, step, counter), weights);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i / 2), _mm_packus_epi16(pairs, pairs));
    }
  } else {
    // Byte m = e[4m] + 4·e[4m+1] + 16·e[4m+2] + 64·e[4m+3].
    const __m128i w_pairs = _mm_set1_epi16(0x0401), w_quads = _mm_set1_epi32(0x00100001);
    for (; i + 32 <= len; i += 32) {
      const __m128i q0 = _mm_madd_epi16(
          _mm_maddubs_epi16(quantize16(x + i, vinv, vs, si, khi, step, counter), w_pairs), w_quads);
      const __m128i q1 = _mm_madd_epi16(
          _mm_maddubs_epi16(quantize16(x + i + 16, vinv, vs, si, khi, step, counter), w_pairs), w_quads);
      const __m128i w16 = _mm_packs_epi32(q0, q1);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i / 4), _mm_packus_epi16(w16, w16));
    }
  }
  for (; i + 8 <= len; i += 8) {
    const __m128i codes = narrow8(quantize8(x + i, vinv, vs, si, khi, counter));
    counter = _mm256_add_epi32(counter, step);
    if (bits == 8) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), codes);
    } else {
      alignas(8) uint8_t tmp[8];
      _mm_storel_epi64(reinterpret_cast<__m128i*>(tmp), codes);
      pack(tmp, 8, bits, out + i * bits / 8);
    }
  }
  uint8_t tmp[8];
  for (size_t j = i; j < len; ++j) tmp[j - i] = quantize(x[j], inv, s, key, static_cast<uint32_t>(j));
  pack(tmp, len - i, bits, out + i * bits / 8);
}

// Eight codes (the low 8 bytes of `bytes`) -> eight values at out + at (stored, or alpha·v added).
template <bool kAdd>
SADDLE_TARGET_AVX2 inline void put8(__m256i si, __m256 step, __m256 alpha, float* out, __m128i bytes,
                                    size_t at) {
  const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), si);
  const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), step);
  if (kAdd)
    _mm256_storeu_ps(out + at, _mm256_add_ps(_mm256_loadu_ps(out + at), _mm256_mul_ps(alpha, v)));
  else
    _mm256_storeu_ps(out + at, v);
}

template <bool kAdd>
SADDLE_TARGET_AVX2 void decode_block_avx2(const uint8_t* codes, size_t len, int bits, int s, float step,
                                          float alpha, float* out) {
  const __m256i si = _mm256_set1_epi32(s);
  const __m256 vstep = _mm256_set1_ps(step), valpha = _mm256_set1_ps(alpha);
  size_t i = 0;
  if (bits == 4) {
    const __m128i low = _mm_set1_epi8(0x0F);
    for (; i + 16 <= len; i += 16) {
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i / 2));
      const __m128i e = _mm_unpacklo_epi8(_mm_and_si128(v, low), _mm_and_si128(_mm_srli_epi16(v, 4), low));
      put8<kAdd>(si, vstep, valpha, out, e, i);
      put8<kAdd>(si, vstep, valpha, out, _mm_srli_si128(e, 8), i + 8);
    }
  } else if (bits == 2) {
    const __m128i low = _mm_set1_epi8(0x03);
    for (; i + 32 <= len; i += 32) {
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i / 4));
      const __m128i f0 = _mm_and_si128(v, low), f1 = _mm_and_si128(_mm_srli_epi16(v, 2), low);
      const __m128i f2 = _mm_and_si128(_mm_srli_epi16(v, 4), low),
                    f3 = _mm_and_si128(_mm_srli_epi16(v, 6), low);
      const __m128i u01 = _mm_unpacklo_epi8(f0, f1), u23 = _mm_unpacklo_epi8(f2, f3);
      const __m128i e0 = _mm_unpacklo_epi16(u01, u23), e1 = _mm_unpackhi_epi16(u01, u23);
      put8<kAdd>(si, vstep, valpha, out, e0, i);
      put8<kAdd>(si, vstep, valpha, out, _mm_srli_si128(e0, 8), i + 8);
      put8<kAdd>(si, vstep, valpha, out, e1, i + 16);
      put8<kAdd>(si, vstep, valpha, out, _mm_srli_si128(e1, 8), i + 24);
    }
  }
  for (; i + 8 <= len; i += 8) {
    __m128i bytes;
    if (bits == 8) {
      bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i));
    } else {
      alignas(8) uint8_t tmp[8];
      for (size_t j = 0; j < 8; ++j) tmp[j] = static_cast<uint8_t>(code_at(codes, i + j, bits));
      bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(tmp));
    }
    put8<kAdd>(si, vstep, valpha, out, bytes, i);
  }
  for (; i < len; ++i) {
    const float v = static_cast<float>(static_cast<int>(code_at(codes, i, bits)) - s) * step;
    if (kAdd)
      out[i] += alpha * v;
    else
      out[i] = v;
  }
}
#endif

class QsgdCodec final : public Codec {
 public:
  explicit QsgdCodec(const CodecSpec& spec)
      : Codec(spec), bits_(spec.bits), block_(spec.block_size), levels_((1 << (spec.bits - 1)) - 1) {}

  bool unbiased() const override { return true; }

  size_t payload_bytes(size_t n) const override { return 4 * blocks(n) + code_bytes(n); }

 protected:
  void encode_payload(const float* x, size_t n, uint64_t seed, uint8_t* payload,
                      const Parallel& par) const override {
    const bool fast = simd::avx2();
    uint8_t* codes = payload + 4 * blocks(n);
    const float s = static_cast<float>(levels_);
    par(blocks(n), block_grain(), [&](size_t jb, size_t je) {
      for (size_t j = jb; j < je; ++j) {
        const size_t lo = j * block_, len = std::min<size_t>(block_, n - lo);
        const uint64_t key = rng::block_key(seed, j);
        uint8_t* out = codes + lo * bits_ / 8;
#if SADDLE_CODEC_X86
        float scale = fast ? max_abs_avx2(x + lo, len) : max_abs_portable(x + lo, len);
#else
        float scale = max_abs_portable(x + lo, len);
#endif
        // Below kMinScale, s/scale may overflow: send such a block (and a NaN scale) as zeros.
        if (!(scale >= kMinScale)) scale = 0.0f;
        const float inv = scale > 0.0f ? s / scale : 0.0f;
        buffer::store<float>(payload + 4 * j, scale);
#if SADDLE_CODEC_X86
        if (fast) {
          encode_block_avx2(x + lo, len, inv, s, key, bits_, out);
          continue;
        }
#endif
        encode_block_portable(x + lo, len, inv, s, key, bits_, out);
      }
    });
    (void)fast;
  }

  void check_payload(const uint8_t* payload, size_t n, const Parallel& par) const override {
    const uint8_t* codes = payload + 4 * blocks(n);
    const size_t bytes = code_bytes(n);
    const size_t used_bits = (n * bits_) % 8;
    if (used_bits != 0 && (codes[bytes - 1] >> used_bits) != 0) {
      throw CorruptMessage(::saddle::detail::concat("qsgd: nonzero padding bits in the last code byte (",
                                                    static_cast<int>(codes[bytes - 1]), ")"));
    }
    const bool fast = simd::avx2();
    std::atomic<bool> bad{false};
    par(bytes, buffer::kGrain, [&](size_t b, size_t e) {
#if SADDLE_CODEC_X86
      if (fast) {
        if (has_invalid_code_avx2(codes + b, e - b, bits_)) bad.store(true, std::memory_order_relaxed);
        return;
      }
#endif
      (void)fast;
      if (has_invalid_code(codes + b, e - b, bits_)) bad.store(true, std::memory_order_relaxed);
    });
    if (!bad.load()) return;
    const unsigned invalid = (1u << bits_) - 1;
    for (size_t i = 0; i < n; ++i) {
      if (code_at(codes, i, bits_) == invalid) {
        throw CorruptMessage(::saddle::detail::concat("qsgd: code ", invalid, " at element ", i,
                                                      " is not a level (codes are 0..", 2 * levels_, ")"));
      }
    }
    SADDLE_CHECK(false, "qsgd: an invalid code was detected but not located");
  }

  void decode_payload(const uint8_t* payload, size_t n, uint64_t, float alpha, float* out, bool accumulate,
                      const Parallel& par) const override {
    const bool fast = simd::avx2();
    const uint8_t* codes = payload + 4 * blocks(n);
    par(blocks(n), block_grain(), [&](size_t jb, size_t je) {
      for (size_t j = jb; j < je; ++j) {
        const size_t lo = j * block_, len = std::min<size_t>(block_, n - lo);
        const float step = buffer::load<float>(payload + 4 * j) / static_cast<float>(levels_);
        const uint8_t* in = codes + lo * bits_ / 8;
#if SADDLE_CODEC_X86
        if (fast) {
          accumulate ? decode_block_avx2<true>(in, len, bits_, levels_, step, alpha, out + lo)
                     : decode_block_avx2<false>(in, len, bits_, levels_, step, alpha, out + lo);
          continue;
        }
#endif
        accumulate ? decode_block_portable<true>(in, len, bits_, levels_, step, alpha, out + lo)
                   : decode_block_portable<false>(in, len, bits_, levels_, step, alpha, out + lo);
      }
    });
    (void)fast;
  }

 private:
  size_t blocks(size_t n) const { return (n + block_ - 1) / block_; }
  size_t code_bytes(size_t n) const { return (n * bits_ + 7) / 8; }
  size_t block_grain() const { return std::max<size_t>(1, buffer::kGrain / block_); }

  int bits_;
  size_t block_;
  int levels_;
};

}  // namespace

std::unique_ptr<Codec> make_qsgd(const CodecSpec& spec) {
  SADDLE_CHECK_ARG(spec.bits == 2 || spec.bits == 4 || spec.bits == 8, "qsgd bits must be 2, 4 or 8, got ",
                   spec.bits);
  check_block_size(spec.block_size);
  return std::make_unique<QsgdCodec>(CodecSpec{CodecId::kQsgd, spec.bits, 0.0, spec.block_size});
}

}  // namespace saddle::codec
