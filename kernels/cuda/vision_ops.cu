// Ops of vision towers and projectors: LayerNorm, GELU, quick_gelu, GELU tanh, bias, column
// scale, row scatter, patch embedding (the towers' bidirectional attention is attention.cu's).
// bf16 storage, fp32 math.
#include "cuda_common.cuh"

#define THREADS 256

__device__ __forceinline__ float ld(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }

// ----------------------------------------------------------------------------
// LayerNorm, one block per row: xhat = (x - mean) rstd, y = xhat w + b
// dx += rstd (w dy - mean(w dy) - xhat mean(w dy xhat)); dw, db by atomics

__global__ void layernorm_forward_kernel(bf16 *out, float *mean, float *rstd, const bf16 *inp, const bf16 *weight,
                                         const bf16 *bias, int C, float eps) {
    const bf16 *x = inp + (size_t)blockIdx.x * C;
    bf16 *y = out + (size_t)blockIdx.x * C;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += ld(x, c);
    float row_mean = block_sum(sum) / C, sum_sq = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum_sq += (ld(x, c) - row_mean) * (ld(x, c) - row_mean);
    float row_rstd = rsqrtf(block_sum(sum_sq) / C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        y[c] = __float2bfloat16_rn((ld(x, c) - row_mean) * row_rstd * ld(weight, c) + ld(bias, c));
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = row_mean;
        rstd[blockIdx.x] = row_rstd;
    }
}

__global__ void layernorm_backward_kernel(bf16 *dinp, float *dweight, float *dbias, const bf16 *dout, const bf16 *inp,
                                          const bf16 *weight, const float *mean, const float *rstd, int C) {
    size_t row = blockIdx.x;
    const bf16 *x = inp + row * C, *dy = dout + row * C;
    bf16 *dx = dinp + row * C;
    float m = mean[row], r = rstd[row], wdy_sum = 0.0f, wdy_xhat_sum = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float wdy = ld(weight, c) * ld(dy, c);
        wdy_sum += wdy;
        wdy_xhat_sum += wdy * (ld(x, c) - m) * r;
    }
    float wdy_mean = block_sum(wdy_sum) / C, wdy_xhat_mean = block_sum(wdy_xhat_sum) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = (ld(x, c) - m) * r;
        float grad = r * (ld(weight, c) * ld(dy, c) - wdy_mean - xhat * wdy_xhat_mean);
        dx[c] = __float2bfloat16_rn(ld(dx, c) + grad);
        if (dweight) atomicAdd(&dweight[c], ld(dy, c) * xhat);
        if (dbias) atomicAdd(&dbias[c], ld(dy, c));
    }
}

void cuda_layernorm_forward(const Ops *ops, void *out, float *mean, float *rstd, const void *inp, const void *weight,
                            const void *bias, int N, int C, float eps) {
    CudaContext *ctx = cuda_context(ops);
    if (N == 0) return;
    layernorm_forward_kernel<<<N, THREADS, 0, ctx->stream>>>((bf16 *)out, mean, rstd, (const bf16 *)inp,
                                                             (const bf16 *)weight, (const bf16 *)bias, C, eps);
    launchCheck("layernorm_forward_kernel");
}

void cuda_layernorm_backward(const Ops *ops, void *dinp, float *dweight, float *dbias, const void *dout,
                             const void *inp, const void *weight, const float *mean, const float *rstd, int N, int C) {
    CudaContext *ctx = cuda_context(ops);
    if (N == 0) return;
    layernorm_backward_kernel<<<N, THREADS, 0, ctx->stream>>>((bf16 *)dinp, dweight, dbias, (const bf16 *)dout,
                                                              (const bf16 *)inp, (const bf16 *)weight, mean, rstd, C);
    launchCheck("layernorm_backward_kernel");
}

// ----------------------------------------------------------------------------
// GELU (exact), quick_gelu and GELU tanh (u = k (x + 0.044715 x^3), y = x (1 + tanh u) / 2)

__device__ __forceinline__ float normal_cdf(float x) { return 0.5f * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void gelu_forward_kernel(bf16 *out, const bf16 *inp, size_t n) {
    GRID_STRIDE(i, n) out[i] = __float2bfloat16_rn(ld(inp, i) * normal_cdf(ld(inp, i)));
}

__global__ void gelu_backward_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp, size_t n) {
    GRID_STRIDE(i, n) {
        float x = ld(inp, i), pdf = 0.3989422804014327f * expf(-0.5f * x * x);
        dinp[i] = __float2bfloat16_rn(ld(dinp, i) + ld(dout, i) * (normal_cdf(x) + x * pdf));
    }
}

__global__ void quick_gelu_forward_kernel(bf16 *out, const bf16 *inp, size_t n) {
    GRID_STRIDE(i, n) out[i] = __float2bfloat16_rn(ld(inp, i) * sigmoidf(1.702f * ld(inp, i)));
}

__global__ void quick_gelu_backward_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp, size_t n) {
    GRID_STRIDE(i, n) {
        float x = ld(inp, i), s = sigmoidf(1.702f * x);
        dinp[i] = __float2bfloat16_rn(ld(dinp, i) + ld(dout, i) * (s + 1.702f * x * s * (1.0f - s)));
    }
}

#define GELU_TANH_K 0.7978845608028654f // sqrt(2 / pi)
#define GELU_TANH_A 0.044715f

__global__ void gelu_tanh_forward_kernel(bf16 *out, const bf16 *inp, size_t n) {
    GRID_STRIDE(i, n) {
        float x = ld(inp, i);
        out[i] = __float2bfloat16_rn(0.5f * x * (1.0f + tanhf(GELU_TANH_K * (x + GELU_TANH_A * x * x * x))));
    }
}

// dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) k (1 + 3 * 0.044715 x^2) / 2
__global__ void gelu_tanh_backward_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp, size_t n) {
    GRID_STRIDE(i, n) {
        float x = ld(inp, i), t = tanhf(GELU_TANH_K * (x + GELU_TANH_A * x * x * x));
        float du = GELU_TANH_K * (1.0f + 3.0f * GELU_TANH_A * x * x);
        dinp[i] = __float2bfloat16_rn(ld(dinp, i) + ld(dout, i) * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du));
    }
}

void cuda_gelu_forward(const Ops *ops, void *out, const void *inp, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    gelu_forward_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)inp, n);
    launchCheck("gelu_forward_kernel");
}

void cuda_gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    gelu_backward_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)dinp, (const bf16 *)dout,
                                                                                 (const bf16 *)inp, n);
    launchCheck("gelu_backward_kernel");
}

void cuda_quick_gelu_forward(const Ops *ops, void *out, const void *inp, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    quick_gelu_forward_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)inp,
                                                                                      n);
    launchCheck("quick_gelu_forward_kernel");
}

void cuda_quick_gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    quick_gelu_backward_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)dinp, (const bf16 *)dout,
                                                                                       (const bf16 *)inp, n);
    launchCheck("quick_gelu_backward_kernel");
}

void cuda_gelu_tanh_forward(const Ops *ops, void *out, const void *inp, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    gelu_tanh_forward_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)inp, n);
    launchCheck("gelu_tanh_forward_kernel");
}

void cuda_gelu_tanh_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    gelu_tanh_backward_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)dinp, (const bf16 *)dout,
                                                                                      (const bf16 *)inp, n);
    launchCheck("gelu_tanh_backward_kernel");
}

// ----------------------------------------------------------------------------
// bias and rows

__global__ void bias_add_kernel(bf16 *out, const bf16 *bias, size_t n, int C) {
    GRID_STRIDE(i, n) out[i] = __float2bfloat16_rn(ld(out, i) + ld(bias, i % C));
}

// one thread per column, summing down the rows
__global__ void bias_backward_kernel(float *dbias, const bf16 *dout, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sum = 0.0f;
    for (int n = 0; n < N; n++) sum += ld(dout, (size_t)n * C + c);
    dbias[c] += sum;
}

__global__ void scale_columns_kernel(bf16 *x, const bf16 *scale, size_t n, int C) {
    GRID_STRIDE(i, n) x[i] = __float2bfloat16_rn(ld(x, i) * ld(scale, i % C));
}

__global__ void scatter_rows_kernel(bf16 *out, const int32_t *rows, const bf16 *src, int C) {
    bf16 *dst = out + (size_t)rows[blockIdx.x] * C;
    const bf16 *row = src + (size_t)blockIdx.x * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = row[c];
}

// one block per row: dst[r, dst_col0 + c] = src[r, src_col0 + c]
__global__ void copy_columns_kernel(bf16 *dst, int dst_cols, int dst_col0, const bf16 *src, int src_cols, int src_col0,
                                    int n_cols) {
    bf16 *out = dst + (size_t)blockIdx.x * dst_cols + dst_col0;
    const bf16 *row = src + (size_t)blockIdx.x * src_cols + src_col0;
    for (int c = threadIdx.x; c < n_cols; c += blockDim.x) out[c] = row[c];
}

void cuda_bias_add(const Ops *ops, void *out, const void *bias, int N, int C) {
    CudaContext *ctx = cuda_context(ops);
    size_t n = (size_t)N * C;
    if (n == 0) return;
    bias_add_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)bias, n, C);
    launchCheck("bias_add_kernel");
}

void cuda_bias_backward(const Ops *ops, float *dbias, const void *dout, int N, int C) {
    CudaContext *ctx = cuda_context(ops);
    if (C == 0) return;
    bias_backward_kernel<<<ceil_div(C, THREADS), THREADS, 0, ctx->stream>>>(dbias, (const bf16 *)dout, N, C);
    launchCheck("bias_backward_kernel");
}

void cuda_scale_columns(const Ops *ops, void *x, const void *scale, int N, int C) {
    CudaContext *ctx = cuda_context(ops);
    size_t n = (size_t)N * C;
    if (n == 0) return;
    scale_columns_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)x, (const bf16 *)scale, n, C);
    launchCheck("scale_columns_kernel");
}

void cuda_scatter_rows(const Ops *ops, void *out, const int32_t *rows, const void *src, int R, int C) {
    CudaContext *ctx = cuda_context(ops);
    if (R == 0) return;
    scatter_rows_kernel<<<R, THREADS, 0, ctx->stream>>>((bf16 *)out, rows, (const bf16 *)src, C);
    launchCheck("scatter_rows_kernel");
}

void cuda_copy_columns(const Ops *ops, void *dst, int dst_cols, int dst_col0, const void *src, int src_cols,
                       int src_col0, int n_cols, int rows) {
    CudaContext *ctx = cuda_context(ops);
    if (rows == 0 || n_cols == 0) return;
    copy_columns_kernel<<<rows, THREADS, 0, ctx->stream>>>((bf16 *)dst, dst_cols, dst_col0, (const bf16 *)src,
                                                           src_cols, src_col0, n_cols);
    launchCheck("copy_columns_kernel");
}

// ----------------------------------------------------------------------------
// patch embedding: one block per (image, patch), one thread per output channel d

__global__ void patch_embed_kernel(bf16 *out, const bf16 *images, const bf16 *weight, int channels, int image_size,
                                   int patch, int D) {
    int grid = image_size / patch, n_patches = grid * grid;
    int b = blockIdx.x / n_patches, p = blockIdx.x % n_patches, py = p / grid, px = p % grid;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float sum = 0.0f;
        for (int c = 0; c < channels; c++) {
            const bf16 *plane = images + ((size_t)b * channels + c) * image_size * image_size;
            const bf16 *kernel = weight + ((size_t)d * channels + c) * patch * patch;
            for (int i = 0; i < patch; i++) {
                size_t row = (size_t)(py * patch + i) * image_size + px * patch;
                for (int j = 0; j < patch; j++) sum += ld(kernel, i * patch + j) * ld(plane, row + j);
            }
        }
        out[(size_t)blockIdx.x * D + d] = __float2bfloat16_rn(sum);
    }
}

void cuda_patch_embed_forward(const Ops *ops, void *out, const void *images, const void *weight, int B, int channels,
                              int image_size, int patch, int D) {
    CudaContext *ctx = cuda_context(ops);
    int grid = image_size / patch;
    if (B == 0 || grid == 0) return;
    patch_embed_kernel<<<B * grid * grid, THREADS, 0, ctx->stream>>>(
        (bf16 *)out, (const bf16 *)images, (const bf16 *)weight, channels, image_size, patch, D);
    launchCheck("patch_embed_kernel");
}
