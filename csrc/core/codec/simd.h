// Runtime choice between the AVX2/F16C kernels and the portable ones. The core is built for the
// baseline ISA; fast kernels are compiled per function (SADDLE_TARGET_AVX2) and picked at run time.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SADDLE_CODEC_X86 1
// No "fma": contraction would make the fast kernels round differently from the portable ones.
#define SADDLE_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#else
#define SADDLE_CODEC_X86 0
#endif

namespace saddle::codec::simd {

// True when the CPU has AVX2 and F16C, the environment variable SADDLE_CODEC_PORTABLE is unset, and
// force_portable(true) is not in effect.
bool avx2();

// Test and benchmark hook: true makes every codec use its portable kernels (process-wide).
void force_portable(bool on);

}  // namespace saddle::codec::simd
