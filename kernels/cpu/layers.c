// kernels/cpu: embedding, RMSNorm, RoPE, SwiGLU, dropout, cross-entropy, fp32.
#include "cpu.h"
#include "vectorize.h"

#include <math.h>
#include <string.h>

// ----------------------------------------------------------------------------
// embedding: out (N, C) = table (V, C)[ids[n]]

void cpu_embedding_forward(const Ops *ops, void *out, const int32_t *ids, const void *table, int N, int C) {
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        memcpy((float *)out + (size_t)n * C, (const float *)table + (size_t)ids[n] * C,
               (size_t)C * sizeof(float));
    }
}

// ----------------------------------------------------------------------------
// RMSNorm: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), per row of C
// dx_i = rstd * w_i dy_i - x_i * rstd^3 * (sum_j w_j dy_j x_j) / C

// y = x * rstd * w for one row of C given its sum of squares; returns rstd.
static inline float rmsnorm_scale_row(float *y, const float *x, const float *w, int C, float eps, double sum_squares) {
    float rstd = 1.0f / sqrtf((float)(sum_squares / C) + eps);
    #pragma omp simd
    for (int i = 0; i < C; i++) y[i] = x[i] * rstd * w[i];
    return rstd;
}

// One row's y; returns its rstd. The sum of squares (over the hidden size, 4096) in double.
CPU_VECTORIZED static float rmsnorm_row(float *y, const float *x, const float *w, int C, float eps) {
    double sum_squares = 0.0;
    #pragma omp simd reduction(+ : sum_squares)
    for (int i = 0; i < C; i++) sum_squares += x[i] * x[i];
    return rmsnorm_scale_row(y, x, w, C, eps, sum_squares);
}

// x += residual and the sum of squares in the same pass, then y as rmsnorm_row.
CPU_VECTORIZED static float residual_rmsnorm_row(float *y, float *x, const float *residual, const float *w, int C,
                                                 float eps) {
    double sum_squares = 0.0;
    #pragma omp simd reduction(+ : sum_squares)
    for (int i = 0; i < C; i++) {
        x[i] += residual[i];
        sum_squares += x[i] * x[i];
    }
    return rmsnorm_scale_row(y, x, w, C, eps, sum_squares);
}

void cpu_rmsnorm_forward(const Ops *ops, void *out, float *rstd, const void *inp, const void *weight, int N, int C,
                         float eps) {
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        size_t row = (size_t)n * C;
        rstd[n] = rmsnorm_row((float *)out + row, (const float *)inp + row, weight, C, eps);
    }
}

void cpu_residual_rmsnorm_forward(const Ops *ops, void *out, float *rstd, void *x, const void *residual,
                                  const void *weight, int N, int C, float eps) {
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        size_t row = (size_t)n * C;
        rstd[n] = residual_rmsnorm_row((float *)out + row, (float *)x + row, (const float *)residual + row, weight, C,
                                       eps);
    }
}

CPU_VECTORIZED static void rmsnorm_backward_row(float *dx, const float *dy, const float *x, const float *w, float rstd,
                                                int C) {
    float wdy_dot_x = 0.0f;
    #pragma omp simd reduction(+ : wdy_dot_x)
    for (int i = 0; i < C; i++) wdy_dot_x += w[i] * dy[i] * x[i];
    float correction = rstd * rstd * rstd * wdy_dot_x / C;
    #pragma omp simd
    for (int i = 0; i < C; i++) dx[i] += rstd * w[i] * dy[i] - x[i] * correction;
}

void cpu_rmsnorm_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, const void *weight,
                          const float *rstd, int N, int C) {
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        size_t row = (size_t)n * C;
        rmsnorm_backward_row((float *)dinp + row, (const float *)dout + row, (const float *)inp + row, weight,
                             rstd[n], C);
    }
}

// ----------------------------------------------------------------------------
// RoPE, rotate_half layout: angle = pos * inv_freq[i], i < hd / 2,
// (x1, x2) = (x[i], x[i + hd/2]) -> (x1 cos - x2 sin, x2 cos + x1 sin).
// The backward is the same rotation by -angle (the transpose).

// One token's heads, by its angles' cosines and sines (half = head_dim / 2 each).
CPU_VECTORIZED static void rotate_heads(float *x, const float *cos_angle, const float *sin_angle, int n_head,
                                        int head_dim) {
    int half = head_dim / 2;
    for (int h = 0; h < n_head; h++) {
        float *x1 = x + (size_t)h * head_dim, *x2 = x1 + half;
        #pragma omp simd
        for (int i = 0; i < half; i++) {
            float a = x1[i], b = x2[i];
            x1[i] = a * cos_angle[i] - b * sin_angle[i];
            x2[i] = b * cos_angle[i] + a * sin_angle[i];
        }
    }
}

static void rope_rotate(float *x, const int32_t *positions, const float *inv_freq, int N,
                        int n_head, int head_dim, float direction) {
    int half = head_dim / 2;
    #pragma omp parallel for if ((size_t)N * n_head * head_dim >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        float cos_angle[half], sin_angle[half];
        for (int i = 0; i < half; i++) {
            float angle = (float)positions[n] * inv_freq[i];
            cos_angle[i] = cosf(angle), sin_angle[i] = direction * sinf(angle);
        }
        rotate_heads(x + (size_t)n * n_head * head_dim, cos_angle, sin_angle, n_head, head_dim);
    }
}

void cpu_rope_forward(const Ops *ops, void *x, const int32_t *positions, const float *inv_freq, int N, int n_head,
                      int head_dim) {
    rope_rotate(x, positions, inv_freq, N, n_head, head_dim, 1.0f);
}

void cpu_rope_backward(const Ops *ops, void *dx, const int32_t *positions, const float *inv_freq, int N, int n_head,
                       int head_dim) {
    rope_rotate(dx, positions, inv_freq, N, n_head, head_dim, -1.0f);
}

// ----------------------------------------------------------------------------
// SwiGLU: out = silu(g) * u, silu(g) = g * sigmoid(g)
// dg += dout * u * sigmoid(g) * (1 + g (1 - sigmoid(g))), du += dout * silu(g)

CPU_VECTORIZED static void swiglu_forward_chunk(float *y, const float *g, const float *u, size_t n) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + exp_vectorizable(-g[i])) * u[i];
}

CPU_VECTORIZED static void swiglu_backward_chunk(float *dg, float *du, const float *dy, const float *g,
                                                 const float *u, size_t n) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float sigmoid = 1.0f / (1.0f + exp_vectorizable(-g[i]));
        dg[i] += dy[i] * u[i] * sigmoid * (1.0f + g[i] * (1.0f - sigmoid));
        du[i] += dy[i] * g[i] * sigmoid;
    }
}

void cpu_swiglu_forward(const Ops *ops, void *out, const void *gate, const void *up, size_t n) {
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t start = 0; start < n; start += CPU_CHUNK)
        swiglu_forward_chunk((float *)out + start, (const float *)gate + start, (const float *)up + start,
                             cpu_chunk_size(n, start));
}

void cpu_swiglu_backward(const Ops *ops, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                         size_t n) {
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t start = 0; start < n; start += CPU_CHUNK)
        swiglu_backward_chunk((float *)dgate + start, (float *)dup + start, (const float *)dout + start,
                              (const float *)gate + start, (const float *)up + start, cpu_chunk_size(n, start));
}

// ----------------------------------------------------------------------------
// inverted dropout: keep[i] = rng_uniform_at(seed, offset + i) >= p,
// out = x * keep / (1 - p); the backward regenerates the same mask.

// The factor of element `counter` for key = rng_mix(seed), made once per call,
// and 0 < p < 1. rng_uniform_keyed's value, its 24 bits converted through
// int32 (exact) so that a vector loop holds it.
static inline float dropout_factor(uint64_t key, uint64_t counter, float p, float scale) {
    float uniform = (float)(int32_t)(rng_mix(key ^ counter) >> 40) * (1.0f / 16777216.0f);
    return uniform >= p ? scale : 0.0f;
}

CPU_VECTORIZED static void dropout_forward_chunk(float *y, const float *x, size_t n, float p, uint64_t key,
                                                 uint64_t counter) {
    float scale = 1.0f / (1.0f - p);
    #pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = x[i] * dropout_factor(key, counter + i, p, scale);
}

CPU_VECTORIZED static void dropout_backward_chunk(float *dx, const float *dy, size_t n, float p, uint64_t key,
                                                  uint64_t counter) {
    float scale = 1.0f / (1.0f - p);
    #pragma omp simd
    for (size_t i = 0; i < n; i++) dx[i] += dy[i] * dropout_factor(key, counter + i, p, scale);
}

void cpu_dropout_forward(const Ops *ops, void *out, const void *inp, size_t n, float p, uint64_t seed,
                         uint64_t offset) {
    if (p <= 0.0f || p >= 1.0f) {
        float factor = p <= 0.0f ? 1.0f : 0.0f;
        for (size_t i = 0; i < n; i++) ((float *)out)[i] = ((const float *)inp)[i] * factor;
        return;
    }
    uint64_t key = rng_mix(seed);
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t start = 0; start < n; start += CPU_CHUNK)
        dropout_forward_chunk((float *)out + start, (const float *)inp + start, cpu_chunk_size(n, start), p, key,
                              offset + start);
}

void cpu_dropout_backward(const Ops *ops, void *dinp, const void *dout, size_t n, float p, uint64_t seed,
                          uint64_t offset) {
    if (p <= 0.0f || p >= 1.0f) {
        float factor = p <= 0.0f ? 1.0f : 0.0f;
        for (size_t i = 0; i < n; i++) ((float *)dinp)[i] += ((const float *)dout)[i] * factor;
        return;
    }
    uint64_t key = rng_mix(seed);
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t start = 0; start < n; start += CPU_CHUNK)
        dropout_backward_chunk((float *)dinp + start, (const float *)dout + start, cpu_chunk_size(n, start), p, key,
                               offset + start);
}

// ----------------------------------------------------------------------------
// cross-entropy over logits (N, V): loss_n = lse_n - logits[n, target_n],
// dlogits[n] = grad_scale * (softmax_n - onehot(target_n)), zero rows where
// the target is ignored (-100; any target outside [0, V) is never read).

// The denominator sums the whole vocabulary (128k terms for Llama 3): in double.
CPU_VECTORIZED static float row_log_sum_exp(const float *logits, int V) {
    float max_logit = -INFINITY;
    #pragma omp simd reduction(max : max_logit)
    for (int j = 0; j < V; j++) max_logit = logits[j] > max_logit ? logits[j] : max_logit;
    double sum = 0.0;
    #pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) sum += exp_vectorizable(logits[j] - max_logit);
    return max_logit + (float)log(sum);
}

// dlogits may alias logits: element j is read before it is written, the
// target's before the loop (a test for it inside would keep the loop scalar).
CPU_VECTORIZED static void cross_entropy_row_grad(float *dlogits, const float *logits, int target, int V, float lse,
                                                  float grad_scale) {
    float target_softmax = exp_vectorizable(logits[target] - lse);
    #pragma omp simd
    for (int j = 0; j < V; j++) dlogits[j] = grad_scale * exp_vectorizable(logits[j] - lse);
    dlogits[target] = grad_scale * (target_softmax - 1.0f);
}

void cpu_cross_entropy(const Ops *ops, float *loss_sum, void *dlogits, const void *logits, const int32_t *targets,
                       int N, int V, float grad_scale) {
    double total = 0.0;
    #pragma omp parallel for reduction(+ : total) if ((size_t)N * V >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *row = (const float *)logits + (size_t)n * V;
        float *drow = dlogits ? (float *)dlogits + (size_t)n * V : NULL;
        int target = targets[n];
        if (target < 0 || target >= V) {
            if (drow) memset(drow, 0, (size_t)V * sizeof(float));
            continue;
        }
        float lse = row_log_sum_exp(row, V);
        total += lse - row[target];
        if (drow) cross_entropy_row_grad(drow, row, target, V, lse, grad_scale);
    }
    *loss_sum += (float)total;
}
