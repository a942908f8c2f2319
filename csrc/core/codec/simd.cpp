#include "core/codec/simd.h"

#include <atomic>
#include <cstdlib>

#if SADDLE_CODEC_X86
#include <cpuid.h>
#endif

namespace saddle::codec::simd {
namespace {

std::atomic<bool> forced_portable{false};

// cpuid directly: clang's __builtin_cpu_supports does not know "f16c".
bool cpu_has_avx2_f16c() {
#if SADDLE_CODEC_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(osxsave && avx && f16c)) return false;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 6u) != 6u) return false;  // the OS must save XMM and YMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return b & (1u << 5);  // AVX2
#else
  return false;
#endif
}

}  // namespace

bool avx2() {
  static const bool usable = cpu_has_avx2_f16c() && std::getenv("SADDLE_CODEC_PORTABLE") == nullptr;
  return usable && !forced_portable.load(std::memory_order_relaxed);
}

void force_portable(bool on) { forced_portable.store(on, std::memory_order_relaxed); }

}  // namespace saddle::codec::simd
