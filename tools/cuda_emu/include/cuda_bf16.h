// cuda_emu: __nv_bfloat16 and the conversions the kernels use, with CUDA's
// rounding: float -> bf16 rounds to nearest even (NaN becomes the canonical
// 0x7FFF), bf16 -> float is exact.
#pragma once
#include <stdint.h>
#include <string.h>

#include <cuda_runtime.h>

struct __nv_bfloat16 {
    uint16_t __x;
};
typedef struct __nv_bfloat16 nv_bfloat16;

static inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t bits = (uint32_t)h.__x << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    __nv_bfloat16 h;
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        h.__x = 0x7fff;
        return h;
    }
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);  // ties to even
    h.__x = (uint16_t)((bits + rounding) >> 16);
    return h;
}

static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
