// kernels/cpu private header: element-wise loops vectorised for the machine
// they run on, without -march at build time.
//
// A function marked CPU_VECTORIZED is compiled once per x86-64 level
// (x86-64-v4: AVX-512; x86-64-v3: AVX2 + FMA; default: SSE2) and the loader
// binds it to the best one the CPU has (GCC's target_clones, an ifunc). Its
// loops carry `#pragma omp simd`, which lets GCC's -O2 vectorise them. Each
// clone is a whole leaf function: OpenMP regions stay in the callers, since the
// body GCC outlines for a region would not inherit the clone's target.
// Elsewhere (arm64, whose baseline has NEON; clang) it is plain code.
#pragma once
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CPU_VECTORIZED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_VECTORIZED
#endif

// Element-wise ops go to the threads in chunks of this many elements.
#define CPU_CHUNK ((size_t)16384)

static inline size_t cpu_chunk_size(size_t n, size_t start) { return n - start < CPU_CHUNK ? n - start : CPU_CHUNK; }

// e^x in arithmetic a vector loop can hold (libm's expf stays scalar):
// Cephes' expf polynomial, within 1.1 ulp of e^x on [-87.3, 88.7]. Below
// -87.3 (where e^x leaves the normal floats) it gives 0, -inf included;
// above 88.7 the exponent is clamped, giving about 2e38, not inf; NaN stays
// NaN. No clamp of x (one stops GCC vectorising its callers), and the same
// instructions in every lane and in a loop's remainder, so a value does not
// depend on its position.
static inline float exp_vectorizable(float x) {
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
    float r = x - n * 0.693359375f - n * -2.12194440e-4f;              // x - n ln 2, ln 2 in two parts
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t exponent = (int32_t)n;
    exponent = exponent < -126 ? -126 : exponent;
    exponent = exponent > 127 ? 127 : exponent;
    union { int32_t bits; float value; } two_to_n = {.bits = (exponent + 127) << 23}, result = {.value = p * two_to_n.value};
    result.bits &= (int32_t)(x < -87.3f) - 1;  // 0 below -87.3: a mask, as a select is not vectorised either
    return result.value;
}
