// NF4 dequantization (bitsandbytes' dequantize_blockwise / dequantize_4bit) in fp32.
#include "cpu.h"

void cpu_dequantize_blockwise_u8(const Ops *ops, float *out, const uint8_t *q, const float *code, const float *absmax,
                                 float offset, size_t n, int blocksize) {
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float scaled = code[q[i]] * absmax[i / (size_t)blocksize];
        out[i] = scaled + offset;
    }
}

void cpu_dequantize_nf4(const Ops *ops, void *out, const uint8_t *packed, const float *code, const float *absmax,
                        size_t n) {
    float *w = out;
#pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        uint8_t byte = packed[i / 2];
        w[i] = code[i % 2 ? byte & 15 : byte >> 4] * absmax[i / 64];
    }
}
