// kernels/cpu: causal self-attention with grouped-query heads, fp32.
//
// q, out (B, T, n_head, hd); k, v (B, T, n_kv_head, hd); lse (B, n_head, T).
// Query head h reads kv head h / (n_head / n_kv_head). For query t of a
// segment starting at t0 = seq_start[b, t] (0 without seq_start):
//   s_u = q_t . k_u / sqrt(hd), t0 <= u <= t;  lse_t = log sum_u e^{s_u}
// Keys before t0 are never visited, so a packed row costs less than a padded one.
//   p_u = e^{s_u - lse_t};  out_t = sum_u p_u v_u
// The backward recomputes p from q, k and lse (no T x T matrix is kept):
//   dv_u += p_u dout_t;  dp_u = dout_t . v_u;  D_t = dout_t . out_t
//   ds_u = p_u (dp_u - D_t);  dq_t += ds_u k_u / sqrt(hd);  dk_u += ds_u q_t / sqrt(hd)
#include "cpu.h"

#include <math.h>

typedef struct AttentionShape {
    int B, T, n_head, n_kv_head, head_dim;
    const int32_t *seq_start; // (B, T) or NULL
} AttentionShape;

// first key query t of row b attends to
static int first_key(const AttentionShape *s, int b, int t) {
    return s->seq_start ? s->seq_start[(size_t)b * s->T + t] : 0;
}

static size_t q_offset(const AttentionShape *s, int b, int t, int h) {
    return (((size_t)b * s->T + t) * s->n_head + h) * s->head_dim;
}

static size_t kv_offset(const AttentionShape *s, int b, int t, int kv_head) {
    return (((size_t)b * s->T + t) * s->n_kv_head + kv_head) * s->head_dim;
}

// x . y, vectorized: a simd reduction (partial sums per vector lane).
static float dot(const float *x, const float *y, int n) {
    float sum = 0.0f;
    #pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n; i++) sum += x[i] * y[i];
    return sum;
}

// y += a x, vectorized (y and x never overlap)
static void axpy(float *restrict y, float a, const float *restrict x, int n) {
    #pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

// log sum_{t0 <= u <= t} e^{s_u} of one query row, in a single running pass
static float row_log_sum_exp(const AttentionShape *s, const float *q_row, const float *k, int b,
                             int t, int kv_head, float scale) {
    float max_score = -INFINITY, sum = 0.0f;
    for (int u = first_key(s, b, t); u <= t; u++) {
        float score = dot(q_row, k + kv_offset(s, b, u, kv_head), s->head_dim) * scale;
        if (score > max_score) {
            sum = sum * expf(max_score - score) + 1.0f;
            max_score = score;
        } else {
            sum += expf(score - max_score);
        }
    }
    return max_score + logf(sum);
}

static void attention_row_forward(const AttentionShape *s, float *out, float *lse, const float *q,
                                  const float *k, const float *v, int b, int t, int h) {
    int kv_head = h / (s->n_head / s->n_kv_head);
    float scale = 1.0f / sqrtf((float)s->head_dim);
    const float *q_row = q + q_offset(s, b, t, h);
    float row_lse = row_log_sum_exp(s, q_row, k, b, t, kv_head, scale);
    float *out_row = out + q_offset(s, b, t, h);
    for (int i = 0; i < s->head_dim; i++) out_row[i] = 0.0f;
    for (int u = first_key(s, b, t); u <= t; u++) {
        float p = expf(dot(q_row, k + kv_offset(s, b, u, kv_head), s->head_dim) * scale - row_lse);
        axpy(out_row, p, v + kv_offset(s, b, u, kv_head), s->head_dim);
    }
    lse[((size_t)b * s->n_head + h) * s->T + t] = row_lse;
}

void cpu_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v,
                           const int32_t *seq_start, int B, int T, int n_head, int n_kv_head,
                           int head_dim) {
    AttentionShape s = {B, T, n_head, n_kv_head, head_dim, seq_start};
    #pragma omp parallel for collapse(2) schedule(dynamic) if ((size_t)B * n_head * T * T * head_dim >= CPU_PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < n_head; h++) {
            for (int t = 0; t < T; t++) attention_row_forward(&s, out, lse, q, k, v, b, t, h);
        }
    }
}

typedef struct AttentionGrads {
    float *dq, *dk, *dv;
    const float *dout, *out, *lse, *q, *k, *v;
} AttentionGrads;

static void attention_row_backward(const AttentionShape *s, const AttentionGrads *g, int b, int t,
                                   int h) {
    int hd = s->head_dim;
    int kv_head = h / (s->n_head / s->n_kv_head);
    float scale = 1.0f / sqrtf((float)hd);
    const float *q_row = g->q + q_offset(s, b, t, h);
    const float *dout_row = g->dout + q_offset(s, b, t, h);
    float *dq_row = g->dq + q_offset(s, b, t, h);
    float row_lse = g->lse[((size_t)b * s->n_head + h) * s->T + t];
    float D = dot(dout_row, g->out + q_offset(s, b, t, h), hd);
    for (int u = first_key(s, b, t); u <= t; u++) {
        size_t kv = kv_offset(s, b, u, kv_head);
        float p = expf(dot(q_row, g->k + kv, hd) * scale - row_lse);
        float ds = p * (dot(dout_row, g->v + kv, hd) - D) * scale;
        axpy(g->dv + kv, p, dout_row, hd);
        axpy(dq_row, ds, g->k + kv, hd);
        axpy(g->dk + kv, ds, q_row, hd);
    }
}

// One thread per (b, kv head): it owns dk, dv of that head and dq of its
// query heads, so no two threads write the same gradient.
void cpu_attention_backward(void *dq, void *dk, void *dv, const void *dout, const void *out,
                            const float *lse, const void *q, const void *k, const void *v,
                            const int32_t *seq_start, int B, int T, int n_head, int n_kv_head,
                            int head_dim) {
    AttentionShape s = {B, T, n_head, n_kv_head, head_dim, seq_start};
    AttentionGrads g = {dq, dk, dv, dout, out, lse, q, k, v};
    int group = n_head / n_kv_head;
    #pragma omp parallel for collapse(2) schedule(dynamic) if ((size_t)B * n_head * T * T * head_dim >= CPU_PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int kv_head = 0; kv_head < n_kv_head; kv_head++) {
            for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
                for (int t = 0; t < T; t++) attention_row_backward(&s, &g, b, t, h);
            }
        }
    }
}
