// quant: NF4 4-bit weights exactly as bitsandbytes stores them (QLoRA).
//
// quantize_4bit(quant_type "nf4", blocksize 64): per block of 64 values an
// fp32 absmax = max |x|; each value scaled by 1 / absmax is replaced by the
// index of the nearest of the 16 NF4 codes (the first of the 15 fp32 midpoints
// (code[i] + code[i+1]) / 2 that is >= the value); element 2j goes in the high
// nibble of byte j, element 2j+1 in the low nibble.
// Double quantization (compress_statistics): offset = mean(absmax); the
// centered absmax - offset are quantized the same way, 8 bits, with the signed
// dynamic map of create_dynamic_map() in blocks of 256.
// Dequantization: absmax = map[absmax_q] * nested_absmax + offset, then
// w = code[nibble] * absmax, each product and sum rounded to fp32.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"
#include "../kernels/ops.h"

#define NF4_BLOCK 64
#define NF4_NESTED_BLOCK 256
#define NF4_DYNAMIC_MAP_SIZE 256

extern const float NF4_CODE[16];
// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), sorted.
void nf4_dynamic_map(float map[NF4_DYNAMIC_MAP_SIZE]);

static inline size_t nf4_packed_bytes(size_t n) { return (n + 1) / 2; }
static inline size_t nf4_blocks(size_t n, size_t block) { return (n + block - 1) / block; }

// ----------------------------------------------------------------------------
// host reference (also what quantizes weights on load)

// packed (nf4_packed_bytes(n)), absmax (nf4_blocks(n, 64)) from x (n).
void nf4_quantize(const float *x, size_t n, uint8_t *packed, float *absmax);
// Blockwise 8-bit quantization of absmax - offset with map (blocks of 256):
// absmax_q (n_blocks), nested_absmax (nf4_blocks(n_blocks, 256)), *offset.
void nf4_double_quantize(const float *absmax, size_t n_blocks, const float *map, uint8_t *absmax_q,
                         float *nested_absmax, float *offset);
// absmax[i] = map[absmax_q[i]] * nested_absmax[i / 256] + offset.
void nf4_dequantize_absmax(float *absmax, const uint8_t *absmax_q, size_t n_blocks, const float *map,
                           const float *nested_absmax, float offset);
// out[i] = code[nibble i] * absmax[i / 64].
void nf4_dequantize(float *out, const uint8_t *packed, size_t n, const float *code, const float *absmax);

// ----------------------------------------------------------------------------
// a frozen linear weight (rows = out features, cols = in features) in backend memory

typedef struct Nf4Weight {
    int64_t rows, cols;
    bool double_quant;
    float offset;            // mean of the absmax (double quant)
    uint8_t *packed;         // (rows * cols / 2) two codes per byte
    float *absmax;           // (blocks) fp32 without double quant, else NULL
    uint8_t *absmax_q;       // (blocks) 8-bit codes with double quant, else NULL
    float *nested_absmax;    // (nested blocks) with double quant, else NULL
    float *code;             // (16) the NF4 code (the checkpoint's quant_map)
    float *nested_map;       // (256) the dynamic map (nested_quant_map), double quant only
} Nf4Weight;

// Bytes one weight occupies in backend memory (the resident size of plan).
size_t nf4_weight_bytes(int64_t rows, int64_t cols, bool double_quant);
// Allocates the weight's buffers (contents undefined); nf4_weight_free releases them.
bool nf4_weight_alloc(Nf4Weight *w, const Ops *ops, int64_t rows, int64_t cols, bool double_quant, Error *err);
void nf4_weight_free(Nf4Weight *w, const Ops *ops);
// Quantizes host fp32 values (rows * cols) as bitsandbytes and uploads them.
bool nf4_weight_quantize_from(Nf4Weight *w, const Ops *ops, const float *values, Error *err);

// A bitsandbytes-quantized weight on the host, as transformers saves it:
// `weight` (U8 packed), `weight.absmax` (U8 with double quant, else F32),
// `weight.quant_map`, `weight.nested_absmax`, `weight.nested_quant_map`,
// and the JSON of `weight.quant_state.bitsandbytes__nf4`.
typedef struct Nf4Serialized {
    const uint8_t *packed;
    size_t packed_bytes;
    const void *absmax;          // uint8_t * with double quant, else float *
    size_t n_absmax;
    const float *quant_map;      // 16
    const float *nested_absmax;  // double quant
    size_t n_nested_absmax;
    const float *nested_map;     // 256, double quant
    const char *quant_state_json;
    size_t quant_state_len;
} Nf4Serialized;

// Checks the JSON (quant_type nf4, blocksize 64, nested_blocksize 256, shape
// [rows, cols]) and every size against w, then uploads. `name` prefixes errors.
bool nf4_weight_upload_serialized(Nf4Weight *w, const Ops *ops, const Nf4Serialized *src, const char *name,
                                  Error *err);
// out (rows, cols) in act_dtype; absmax_scratch: nf4_blocks(rows * cols, 64) fp32
// in backend memory, used with double quant.
void nf4_weight_dequantize(const Nf4Weight *w, const Ops *ops, void *out, float *absmax_scratch);
