// kernels/cpu: embedding, RMSNorm, RoPE, SwiGLU, dropout, cross-entropy, fp32.
#include "cpu.h"

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

void cpu_rmsnorm_forward(const Ops *ops, void *out, float *rstd, const void *inp, const void *weight, int N, int C,
                         float eps) {
    const float *w = weight;
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = (const float *)inp + (size_t)n * C;
        float *y = (float *)out + (size_t)n * C;
        double sum_squares = 0.0;  // over the hidden size (4096): in double
        for (int i = 0; i < C; i++) sum_squares += x[i] * x[i];
        float row_rstd = 1.0f / sqrtf((float)(sum_squares / C) + eps);
        for (int i = 0; i < C; i++) y[i] = x[i] * row_rstd * w[i];
        rstd[n] = row_rstd;
    }
}

void cpu_rmsnorm_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, const void *weight,
                          const float *rstd, int N, int C) {
    const float *w = weight;
    #pragma omp parallel for if ((size_t)N * C >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        const float *x = (const float *)inp + (size_t)n * C;
        const float *dy = (const float *)dout + (size_t)n * C;
        float *dx = (float *)dinp + (size_t)n * C;
        float r = rstd[n];
        float wdy_dot_x = 0.0f;
        for (int i = 0; i < C; i++) wdy_dot_x += w[i] * dy[i] * x[i];
        float correction = r * r * r * wdy_dot_x / C;
        for (int i = 0; i < C; i++) dx[i] += r * w[i] * dy[i] - x[i] * correction;
    }
}

// ----------------------------------------------------------------------------
// RoPE, rotate_half layout: angle = pos * inv_freq[i], i < hd / 2,
// (x1, x2) = (x[i], x[i + hd/2]) -> (x1 cos - x2 sin, x2 cos + x1 sin).
// The backward is the same rotation by -angle (the transpose).

static void rope_rotate(float *x, const int32_t *positions, const float *inv_freq, int N,
                        int n_head, int head_dim, float direction) {
    int half = head_dim / 2;
    #pragma omp parallel for if ((size_t)N * n_head * head_dim >= CPU_PARALLEL_MIN_WORK)
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < half; i++) {
            float angle = (float)positions[n] * inv_freq[i];
            float c = cosf(angle), s = direction * sinf(angle);
            for (int h = 0; h < n_head; h++) {
                float *x_head = x + ((size_t)n * n_head + h) * head_dim;
                float x1 = x_head[i], x2 = x_head[i + half];
                x_head[i] = x1 * c - x2 * s;
                x_head[i + half] = x2 * c + x1 * s;
            }
        }
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

void cpu_swiglu_forward(const Ops *ops, void *out, const void *gate, const void *up, size_t n) {
    const float *g = gate, *u = up;
    float *y = out;
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void cpu_swiglu_backward(const Ops *ops, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                         size_t n) {
    const float *g = gate, *u = up, *dy = dout;
    float *dg = dgate, *du = dup;
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float sigmoid = 1.0f / (1.0f + expf(-g[i]));
        dg[i] += dy[i] * u[i] * sigmoid * (1.0f + g[i] * (1.0f - sigmoid));
        du[i] += dy[i] * g[i] * sigmoid;
    }
}

// ----------------------------------------------------------------------------
// inverted dropout: keep[i] = rng_uniform_at(seed, offset + i) >= p,
// out = x * keep / (1 - p); the backward regenerates the same mask.

// The factor of element `counter` for key = rng_mix(seed), made once per call.
static inline float dropout_factor(uint64_t key, uint64_t counter, float p) {
    if (p <= 0.0f) return 1.0f;
    if (p >= 1.0f) return 0.0f;
    return rng_uniform_keyed(key, counter) >= p ? 1.0f / (1.0f - p) : 0.0f;
}

void cpu_dropout_forward(const Ops *ops, void *out, const void *inp, size_t n, float p, uint64_t seed,
                         uint64_t offset) {
    const float *x = inp;
    float *y = out;
    uint64_t key = rng_mix(seed);
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * dropout_factor(key, offset + i, p);
}

void cpu_dropout_backward(const Ops *ops, void *dinp, const void *dout, size_t n, float p, uint64_t seed,
                          uint64_t offset) {
    const float *dy = dout;
    float *dx = dinp;
    uint64_t key = rng_mix(seed);
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) dx[i] += dy[i] * dropout_factor(key, offset + i, p);
}

// ----------------------------------------------------------------------------
// cross-entropy over logits (N, V): loss_n = lse_n - logits[n, target_n],
// dlogits[n] = grad_scale * (softmax_n - onehot(target_n)), zero rows where
// the target is ignored (-100; any target outside [0, V) is never read).

// The denominator sums the whole vocabulary (128k terms for Llama 3): in double.
static float row_log_sum_exp(const float *logits, int V) {
    float max_logit = -INFINITY;
    for (int j = 0; j < V; j++) max_logit = logits[j] > max_logit ? logits[j] : max_logit;
    double sum = 0.0;
    for (int j = 0; j < V; j++) sum += expf(logits[j] - max_logit);
    return max_logit + (float)log(sum);
}

// dlogits may alias logits: element j is read before it is written.
static void cross_entropy_row_grad(float *dlogits, const float *logits, int target, int V,
                                   float lse, float grad_scale) {
    for (int j = 0; j < V; j++) {
        float softmax = expf(logits[j] - lse);
        dlogits[j] = grad_scale * (softmax - (j == target ? 1.0f : 0.0f));
    }
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
