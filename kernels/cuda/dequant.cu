// NF4 dequantization (bitsandbytes' dequantize_blockwise / dequantize_4bit):
// a layer's weight into a bf16 scratch before its cuBLASLt matmul. __fmul_rn
// and __fadd_rn keep nvcc from fusing into an fma, so every product and sum
// rounds to fp32 as on the CPU and in bitsandbytes.
#include "cuda_common.cuh"

#define THREADS 256

__global__ void dequantize_blockwise_u8_kernel(float *out, const uint8_t *q, const float *code,
                                               const float *absmax, float offset, size_t n, int blocksize) {
    GRID_STRIDE(i, n) out[i] = __fadd_rn(__fmul_rn(code[q[i]], absmax[i / (size_t)blocksize]), offset);
}

// One thread per packed byte: elements 2j (high nibble) and 2j + 1 (low nibble).
__global__ void dequantize_nf4_kernel(bf16 *out, const uint8_t *packed, const float *code, const float *absmax,
                                      size_t n) {
    GRID_STRIDE(j, (n + 1) / 2) {
        uint8_t byte = packed[j];
        size_t i = 2 * j;
        out[i] = __float2bfloat16(__fmul_rn(code[byte >> 4], absmax[i / 64]));
        if (i + 1 < n) out[i + 1] = __float2bfloat16(__fmul_rn(code[byte & 15], absmax[(i + 1) / 64]));
    }
}

void cuda_dequantize_blockwise_u8(const Ops *ops, float *out, const uint8_t *q, const float *code, const float *absmax,
                                  float offset, size_t n, int blocksize) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    dequantize_blockwise_u8_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>(out, q, code, absmax, offset,
                                                                                           n, blocksize);
    launchCheck("dequantize_blockwise_u8_kernel");
}

void cuda_dequantize_nf4(const Ops *ops, void *out, const uint8_t *packed, const float *code, const float *absmax,
                         size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    dequantize_nf4_kernel<<<grid_for(ctx, (n + 1) / 2, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)out, packed, code,
                                                                                            absmax, n);
    launchCheck("dequantize_nf4_kernel");
}
