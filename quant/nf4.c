// NF4 quantization and dequantization on the host, as bitsandbytes'
// quantize_4bit / dequantize_4bit (nf4, blocksize 64, compress_statistics).
#include <math.h>
#include <stdlib.h>

#include "quant.h"

// bitsandbytes' NF4 code (functional.get_4bit_type("nf4")): quantiles of N(0, 1)
// normalised to [-1, 1], with an exact zero.
const float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// torch.linspace(start, end, steps) in fp32 on the CPU: the first half counts
// up from start, the second half down from end, each an fma.
static float linspace_at(float start, float end, int steps, int i) {
    float step = (end - start) / (float)(steps - 1);
    return i < steps / 2 ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - 1 - i), end);
}

static int compare_floats(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

// For exponent i = 0..6: the midpoints of linspace(0.1, 1, 2^i + 1) times
// +-10^(i - 6); then 0 and 1; sorted.
void nf4_dynamic_map(float map[NF4_DYNAMIC_MAP_SIZE]) {
    int count = 0;
    for (int i = 0; i < 7; i++) {
        int steps = (1 << i) + 1;
        float scale = (float)pow(10.0, i - 6);
        for (int j = 0; j + 1 < steps; j++) {
            float mean = (linspace_at(0.1f, 1.0f, steps, j) + linspace_at(0.1f, 1.0f, steps, j + 1)) / 2.0f;
            map[count++] = scale * mean;
            map[count++] = -scale * mean;
        }
    }
    map[count++] = 0.0f;
    map[count++] = 1.0f;
    qsort(map, NF4_DYNAMIC_MAP_SIZE, sizeof(float), compare_floats);
}

// Index of the nearest code: how many midpoints lie strictly below x
// (torch.bucketize over fp32 midpoints; a tie goes to the lower code).
static uint8_t nearest_code(float x, const float *code, int n_codes) {
    int lo = 0, hi = n_codes - 1; // answer in [lo, hi]
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        float midpoint = (code[mid] + code[mid + 1]) / 2.0f;
        if (x > midpoint) lo = mid + 1;
        else hi = mid;
    }
    return (uint8_t)lo;
}

static float block_absmax(const float *x, size_t n) {
    float absmax = 0.0f;
    for (size_t i = 0; i < n; i++) absmax = fmaxf(absmax, fabsf(x[i]));
    return absmax;
}

// codes[i] = nearest code of x[i] / absmax[block], clamped to [-1, 1]. As
// bitsandbytes' torch kernels: whole blocks multiply by 1 / absmax, a short
// last block divides by its absmax; absmax is at least 1e-38.
static void quantize_blocks(const float *x, size_t n, size_t block, const float *code, int n_codes,
                            uint8_t *codes, float *absmax) {
    for (size_t start = 0, b = 0; start < n; start += block, b++) {
        size_t len = n - start < block ? n - start : block;
        absmax[b] = block_absmax(x + start, len);
        float divisor = fmaxf(absmax[b], 1e-38f), inverse = 1.0f / divisor;
        for (size_t i = 0; i < len; i++) {
            float scaled = len == block ? x[start + i] * inverse : x[start + i] / divisor;
            codes[start + i] = nearest_code(fminf(fmaxf(scaled, -1.0f), 1.0f), code, n_codes);
        }
    }
}

void nf4_quantize(const float *x, size_t n, uint8_t *packed, float *absmax) {
    enum { CHUNK = 4096 }; // codes of whole blocks at a time
    uint8_t codes[CHUNK];
    for (size_t start = 0; start < n; start += CHUNK) {
        size_t len = n - start < CHUNK ? n - start : CHUNK;
        quantize_blocks(x + start, len, NF4_BLOCK, NF4_CODE, 16, codes, absmax + start / NF4_BLOCK);
        if (len % 2) codes[len] = 7; // torch pads an odd count with 0.0, code 7
        for (size_t j = 0; j < (len + 1) / 2; j++) {
            packed[start / 2 + j] = (uint8_t)(codes[2 * j] << 4 | codes[2 * j + 1]);
        }
    }
}

void nf4_double_quantize(const float *absmax, size_t n_blocks, const float *map, uint8_t *absmax_q,
                         float *nested_absmax, float *offset) {
    double sum = 0;
    for (size_t i = 0; i < n_blocks; i++) sum += absmax[i];
    *offset = (float)(sum / (double)n_blocks);
    enum { CHUNK = 16 * NF4_NESTED_BLOCK };
    float centered[CHUNK];
    for (size_t start = 0; start < n_blocks; start += CHUNK) {
        size_t len = n_blocks - start < CHUNK ? n_blocks - start : CHUNK;
        for (size_t i = 0; i < len; i++) centered[i] = absmax[start + i] - *offset;
        quantize_blocks(centered, len, NF4_NESTED_BLOCK, map, NF4_DYNAMIC_MAP_SIZE, absmax_q + start,
                        nested_absmax + start / NF4_NESTED_BLOCK);
    }
}

void nf4_dequantize_absmax(float *absmax, const uint8_t *absmax_q, size_t n_blocks, const float *map,
                           const float *nested_absmax, float offset) {
    for (size_t i = 0; i < n_blocks; i++) {
        float scaled = map[absmax_q[i]] * nested_absmax[i / NF4_NESTED_BLOCK];
        absmax[i] = scaled + offset;
    }
}

void nf4_dequantize(float *out, const uint8_t *packed, size_t n, const float *code, const float *absmax) {
    for (size_t i = 0; i < n; i++) {
        uint8_t byte = packed[i / 2];
        out[i] = code[i % 2 ? byte & 15 : byte >> 4] * absmax[i / NF4_BLOCK];
    }
}
