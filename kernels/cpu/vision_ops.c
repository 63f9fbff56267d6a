// kernels/cpu: ops of vision towers and projectors, fp32: LayerNorm, GELU,
// quick_gelu, GELU tanh, bias, column scale, row scatter, patch embedding (the towers'
// bidirectional attention is attention.c's).
#include "cpu.h"

#include <math.h>
#include <string.h>

// ----------------------------------------------------------------------------
// LayerNorm per row of C: xhat = (x - mean) * rstd, y = xhat * w + b
// dx = rstd * (w dy - mean(w dy) - xhat * mean(w dy xhat)); dw += dy xhat; db += dy

void cpu_layernorm_forward(const Ops *ops, void *out, float *mean, float *rstd, const void *inp, const void *weight,
                           const void *bias, int N, int C, float eps) {
    const float *w = weight, *b = bias;
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = (const float *)inp + (size_t)n * C;
        float *y = (float *)out + (size_t)n * C;
        float sum = 0.0f;
        for (int i = 0; i < C; i++) sum += x[i];
        float row_mean = sum / C, sum_squares = 0.0f;
        for (int i = 0; i < C; i++) sum_squares += (x[i] - row_mean) * (x[i] - row_mean);
        float row_rstd = 1.0f / sqrtf(sum_squares / C + eps);
        for (int i = 0; i < C; i++) y[i] = (x[i] - row_mean) * row_rstd * w[i] + b[i];
        mean[n] = row_mean;
        rstd[n] = row_rstd;
    }
}

void cpu_layernorm_backward(const Ops *ops, void *dinp, float *dweight, float *dbias, const void *dout, const void *inp,
                            const void *weight, const float *mean, const float *rstd, int N, int C) {
    const float *w = weight;
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = (const float *)inp + (size_t)n * C;
        const float *dy = (const float *)dout + (size_t)n * C;
        float *dx = (float *)dinp + (size_t)n * C;
        float wdy_sum = 0.0f, wdy_xhat_sum = 0.0f;
        for (int i = 0; i < C; i++) {
            float xhat = (x[i] - mean[n]) * rstd[n];
            wdy_sum += w[i] * dy[i];
            wdy_xhat_sum += w[i] * dy[i] * xhat;
        }
        float wdy_mean = wdy_sum / C, wdy_xhat_mean = wdy_xhat_sum / C;
        for (int i = 0; i < C; i++) {
            float xhat = (x[i] - mean[n]) * rstd[n];
            dx[i] += rstd[n] * (w[i] * dy[i] - wdy_mean - xhat * wdy_xhat_mean);
        }
    }
    for (int n = 0; n < N && (dweight || dbias); n++) {
        const float *x = (const float *)inp + (size_t)n * C;
        const float *dy = (const float *)dout + (size_t)n * C;
        for (int i = 0; i < C; i++) {
            if (dweight) dweight[i] += dy[i] * (x[i] - mean[n]) * rstd[n];
            if (dbias) dbias[i] += dy[i];
        }
    }
}

// ----------------------------------------------------------------------------
// GELU (exact): y = x Phi(x), dy/dx = Phi(x) + x phi(x)
// quick_gelu: y = x s(1.702 x), dy/dx = s + 1.702 x s (1 - s)
// GELU tanh: u = k (x + 0.044715 x^3), k = sqrt(2 / pi), y = x (1 + tanh u) / 2,
//   dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) k (1 + 3 * 0.044715 x^2) / 2

static float normal_cdf(float x) { return 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)); }

void cpu_gelu_forward(const Ops *ops, void *out, const void *inp, size_t n) {
    const float *x = inp;
    float *y = out;
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * normal_cdf(x[i]);
}

void cpu_gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n) {
    const float *x = inp, *dy = dout;
    float *dx = dinp;
    const float inv_sqrt_2pi = 0.3989422804014327f;
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float pdf = inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]);
        dx[i] += dy[i] * (normal_cdf(x[i]) + x[i] * pdf);
    }
}

static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

void cpu_quick_gelu_forward(const Ops *ops, void *out, const void *inp, size_t n) {
    const float *x = inp;
    float *y = out;
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * sigmoid(1.702f * x[i]);
}

void cpu_quick_gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n) {
    const float *x = inp, *dy = dout;
    float *dx = dinp;
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float s = sigmoid(1.702f * x[i]);
        dx[i] += dy[i] * (s + 1.702f * x[i] * s * (1.0f - s));
    }
}

#define GELU_TANH_K 0.7978845608028654f // sqrt(2 / pi)
#define GELU_TANH_A 0.044715f

void cpu_gelu_tanh_forward(const Ops *ops, void *out, const void *inp, size_t n) {
    const float *x = inp;
    float *y = out;
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + tanhf(GELU_TANH_K * (x[i] + GELU_TANH_A * x[i] * x[i] * x[i])));
}

void cpu_gelu_tanh_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n) {
    const float *x = inp, *dy = dout;
    float *dx = dinp;
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float x2 = x[i] * x[i], t = tanhf(GELU_TANH_K * (x[i] + GELU_TANH_A * x2 * x[i]));
        float du = GELU_TANH_K * (1.0f + 3.0f * GELU_TANH_A * x2);
        dx[i] += dy[i] * (0.5f * (1.0f + t) + 0.5f * x[i] * (1.0f - t * t) * du);
    }
}

// ----------------------------------------------------------------------------
// bias and rows

void cpu_bias_add(const Ops *ops, void *out, const void *bias, int N, int C) {
    const float *b = bias;
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        float *y = (float *)out + (size_t)n * C;
        for (int i = 0; i < C; i++) y[i] += b[i];
    }
}

void cpu_bias_backward(const Ops *ops, float *dbias, const void *dout, int N, int C) {
    const float *dy = dout;
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < C; i++) dbias[i] += dy[(size_t)n * C + i];
    }
}

void cpu_scale_columns(const Ops *ops, void *x, const void *scale, int N, int C) {
    const float *s = scale;
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        float *row = (float *)x + (size_t)n * C;
        for (int i = 0; i < C; i++) row[i] *= s[i];
    }
}

void cpu_scatter_rows(const Ops *ops, void *out, const int32_t *rows, const void *src, int R, int C) {
    for (int r = 0; r < R; r++) {
        memcpy((float *)out + (size_t)rows[r] * C, (const float *)src + (size_t)r * C, (size_t)C * sizeof(float));
    }
}

void cpu_copy_columns(const Ops *ops, void *dst, int dst_cols, int dst_col0, const void *src, int src_cols,
                      int src_col0, int n_cols, int rows) {
    for (int r = 0; r < rows; r++) {
        memcpy((float *)dst + (size_t)r * dst_cols + dst_col0, (const float *)src + (size_t)r * src_cols + src_col0,
               (size_t)n_cols * sizeof(float));
    }
}

// ----------------------------------------------------------------------------
// patch embedding: out[b, py * G + px, d] =
//   sum_{c, i, j} weight[d, c, i, j] * images[b, c, py * patch + i, px * patch + j], G = size / patch

void cpu_patch_embed_forward(const Ops *ops, void *out, const void *images, const void *weight, int B, int channels,
                             int image_size, int patch, int D) {
    int grid = image_size / patch, n_patches = grid * grid;
    const float *img = images, *w = weight;
    #pragma omp parallel for collapse(2) if ((size_t)B * n_patches * D * channels * patch * patch >= CPU_PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int p = 0; p < n_patches; p++) {
            int py = p / grid, px = p % grid;
            float *y = (float *)out + ((size_t)b * n_patches + p) * D;
            for (int d = 0; d < D; d++) {
                float sum = 0.0f;
                for (int c = 0; c < channels; c++) {
                    const float *plane = img + ((size_t)b * channels + c) * image_size * image_size;
                    const float *kernel = w + (((size_t)d * channels + c) * patch) * patch;
                    for (int i = 0; i < patch; i++) {
                        const float *row = plane + (size_t)(py * patch + i) * image_size + px * patch;
                        for (int j = 0; j < patch; j++) sum += kernel[i * patch + j] * row[j];
                    }
                }
                y[d] = sum;
            }
        }
    }
}
