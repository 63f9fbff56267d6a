// kernels/cpu: self-attention with grouped-query heads, fp32: causal (the
// decoder's) or bidirectional (the vision towers', every query sees all T keys).
//
// q, out (B, T, n_head, hd); k, v (B, T, n_kv_head, hd); lse (B, n_head, T).
// Query head h reads kv head h / (n_head / n_kv_head). For query t of a
// segment starting at t0 = seq_start[b, t] (0 without seq_start):
//   s_u = q_t . k_u / sqrt(hd), t0 <= u <= t;  lse_t = log sum_u e^{s_u}
// Keys before t0 are never visited, so a packed row costs less than a padded one.
// Bidirectional: t0 = 0 and u < T for every query.
//   p_u = e^{s_u - lse_t};  out_t = sum_u p_u v_u
// The backward recomputes p from q, k and lse (no T x T matrix is kept):
//   dv_u += p_u dout_t;  dp_u = dout_t . v_u;  D_t = dout_t . out_t
//   ds_u = p_u (dp_u - D_t);  dq_t += ds_u k_u / sqrt(hd);  dk_u += ds_u q_t / sqrt(hd)
// Tiled: a block of queries [t0, t1) of one head against the keys it sees,
// [first_key(t0), t1) (bidirectional: [0, T)): the scores S = Q K^T, dV += P^T dO, dP = dO V^T,
// dQ += dS K and dK += dS^T Q are sgemms (one thread each, inside the OpenMP loop); the (block, keys)
// tiles live on the stack. Q's block and K's keys, KEY_CHUNK at a time, are copied onto the stack first,
// rotated by rope_forward when rope is given (q, k un-rotated: the decoder's fused RoPE); dQ and dK are
// summed there and rotated back (rope_backward) before they are added.
#include "cpu.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

typedef struct AttentionShape {
    int B, T, n_head, n_kv_head, head_dim;
    const int32_t *seq_start; // (B, T) or NULL
    const AttentionRope *rope; // rotation of q and k, or NULL
    bool causal;              // else every query sees every key of its row
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

// At most this many floats per (query block, keys) tile: 256 KiB on a thread's stack.
#define TILE_FLOATS 65536
#define QUERY_BLOCK 64
#define KEY_CHUNK 64

// dst (n, hd) = rows [t0, t0 + n) of `head` in row b of a (B, T, n_heads, hd) tensor, rotated as
// rope_forward rotates them when s->rope is set.
static void load_rows(const AttentionShape *s, float *dst, const float *src, int n_heads, int head, int b, int t0,
                      int n) {
    int hd = s->head_dim;
    for (int i = 0; i < n; i++)
        memcpy(dst + (size_t)i * hd, src + (((size_t)b * s->T + t0 + i) * n_heads + head) * hd, hd * sizeof(float));
    if (s->rope)
        cpu_rope_forward(NULL, dst, s->rope->positions + (size_t)b * s->T + t0, s->rope->inv_freq, n, 1, hd);
}

// Those rows += src (n, hd), rotated back as rope_backward rotates them when s->rope is set (src overwritten).
static void add_rows(const AttentionShape *s, float *dst, float *src, int n_heads, int head, int b, int t0, int n) {
    int hd = s->head_dim;
    if (s->rope)
        cpu_rope_backward(NULL, src, s->rope->positions + (size_t)b * s->T + t0, s->rope->inv_freq, n, 1, hd);
    for (int i = 0; i < n; i++) {
        float *row = dst + (((size_t)b * s->T + t0 + i) * n_heads + head) * hd;
        const float *add = src + (size_t)i * hd;
        #pragma omp simd
        for (int d = 0; d < hd; d++) row[d] += add[d];
    }
}

// Queries [t0, t1) of row b and the keys they see, [k0, k1): seq_start does
// not decrease along a row, so t0's first key is the block's first; k1 = t1
// when causal, else T.
typedef struct QueryBlock {
    int b, h, kv_head, t0, t1, k0, k1;
} QueryBlock;

static int query_block_rows(int T) {
    int rows = TILE_FLOATS / T;
    return rows < 1 ? 1 : rows > QUERY_BLOCK ? QUERY_BLOCK : rows;
}

static QueryBlock query_block(const AttentionShape *s, int b, int h, int t0, int rows) {
    int t1 = t0 + rows < s->T ? t0 + rows : s->T;
    return (QueryBlock){.b = b, .h = h, .kv_head = h / (s->n_head / s->n_kv_head), .t0 = t0, .t1 = t1,
                        .k0 = first_key(s, b, t0), .k1 = s->causal ? t1 : s->T};
}

// P (nq, nk) = the block's probabilities e^{s - lse} (0 outside each query's keys), from the scores
// recomputed from the block's (rotated) queries qr (nq, hd) and its keys, loaded KEY_CHUNK at a time.
// lse (nq) is given (the backward) or, when compute_lse, computed into it (the forward).
static void block_probabilities(const AttentionShape *s, const QueryBlock *qb, const float *qr, const float *k,
                                float *P, float *lse, bool compute_lse) {
    int hd = s->head_dim, nq = qb->t1 - qb->t0, nk = qb->k1 - qb->k0;
    float scale = 1.0f / sqrtf((float)hd), kr[KEY_CHUNK * hd];
    for (int c = 0; c < nk; c += KEY_CHUNK) {
        int nc = nk - c < KEY_CHUNK ? nk - c : KEY_CHUNK;
        load_rows(s, kr, k, s->n_kv_head, qb->kv_head, qb->b, qb->k0 + c, nc);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nc, hd, scale, qr, hd, kr, hd, 0.0f, P + c, nk);
    }
    for (int i = 0; i < nq; i++) {
        int t = qb->t0 + i, first = first_key(s, qb->b, t) - qb->k0, last = s->causal ? t - qb->k0 : nk - 1;
        float *row = P + (size_t)i * nk;
        if (compute_lse) {
            float max_score = -INFINITY;
            double sum = 0.0;  // over up to T keys: in double
            for (int j = first; j <= last; j++) max_score = row[j] > max_score ? row[j] : max_score;
            for (int j = first; j <= last; j++) sum += expf(row[j] - max_score);
            lse[i] = max_score + (float)log(sum);
        }
        for (int j = 0; j < nk; j++) row[j] = j >= first && j <= last ? expf(row[j] - lse[i]) : 0.0f;
    }
}

static float *lse_at(const AttentionShape *s, float *lse, int b, int h, int t) {
    return lse + ((size_t)b * s->n_head + h) * s->T + t;
}

// out[t0, t1) = P V[k0, k1), lse[t0, t1) saved.
static void attention_block_forward(const AttentionShape *s, const QueryBlock *qb, float *out, float *lse,
                                    const float *q, const float *k, const float *v) {
    int hd = s->head_dim, nq = qb->t1 - qb->t0, nk = qb->k1 - qb->k0;
    float P[nq * nk], qr[nq * hd];
    load_rows(s, qr, q, s->n_head, qb->h, qb->b, qb->t0, nq);
    block_probabilities(s, qb, qr, k, P, lse_at(s, lse, qb->b, qb->h, qb->t0), true);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, nk, 1.0f, P, nk,
                v + kv_offset(s, qb->b, qb->k0, qb->kv_head), s->n_kv_head * hd, 0.0f,
                out + q_offset(s, qb->b, qb->t0, qb->h), s->n_head * hd);
}

static void attention_forward(const AttentionShape *s, float *out, float *lse, const float *q, const float *k,
                              const float *v) {
    int B = s->B, T = s->T, n_head = s->n_head, rows = query_block_rows(T), n_blocks = (T + rows - 1) / rows;
    #pragma omp parallel for collapse(3) schedule(dynamic) if ((size_t)B * n_head * T * T * s->head_dim >= CPU_PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < n_head; h++) {
            for (int block = 0; block < n_blocks; block++) {
                QueryBlock qb = query_block(s, b, h, block * rows, rows);
                attention_block_forward(s, &qb, out, lse, q, k, v);
            }
        }
    }
}

void cpu_attention_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                           const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                           int n_kv_head, int head_dim) {
    AttentionShape s = {B, T, n_head, n_kv_head, head_dim, seq_start, rope, true};
    attention_forward(&s, out, lse, q, k, v);
}

void cpu_attention_full_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                                int B, int T, int n_head, int head_dim) {
    AttentionShape s = {B, T, n_head, n_head, head_dim, NULL, NULL, false};
    attention_forward(&s, out, lse, q, k, v);
}

typedef struct AttentionGrads {
    float *dq, *dk, *dv;
    const float *dout, *out, *lse, *q, *k, *v;
} AttentionGrads;

// One query block's share of every gradient (the caller owns dk, dv of its kv head):
// dV += P^T dO;  dP = dO V^T;  dS = P (dP - D) / sqrt(hd);  dQ += dS K;  dK += dS^T Q,
// Q and K rotated, dQ and dK rotated back, a chunk of keys at a time.
static void attention_block_backward(const AttentionShape *s, const AttentionGrads *g, const QueryBlock *qb) {
    int hd = s->head_dim, nq = qb->t1 - qb->t0, nk = qb->k1 - qb->k0;
    int q_stride = s->n_head * hd, kv_stride = s->n_kv_head * hd;
    size_t q_at = q_offset(s, qb->b, qb->t0, qb->h), kv_at = kv_offset(s, qb->b, qb->k0, qb->kv_head);
    float scale = 1.0f / sqrtf((float)hd);
    float P[nq * nk], dS[nq * nk], qr[nq * hd], dq[nq * hd], kr[KEY_CHUNK * hd], dk[KEY_CHUNK * hd];
    load_rows(s, qr, g->q, s->n_head, qb->h, qb->b, qb->t0, nq);
    block_probabilities(s, qb, qr, g->k, P, (float *)lse_at(s, (float *)g->lse, qb->b, qb->h, qb->t0), false);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, hd, nq, 1.0f, P, nk, g->dout + q_at, q_stride, 1.0f,
                g->dv + kv_at, kv_stride);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, hd, 1.0f, g->dout + q_at, q_stride, g->v + kv_at,
                kv_stride, 0.0f, dS, nk);
    for (int i = 0; i < nq; i++) {
        float D = dot(g->dout + q_at + (size_t)i * q_stride, g->out + q_at + (size_t)i * q_stride, hd);
        float *p = P + (size_t)i * nk, *ds = dS + (size_t)i * nk;
        for (int j = 0; j < nk; j++) ds[j] = p[j] * (ds[j] - D) * scale;
    }
    for (int c = 0; c < nk; c += KEY_CHUNK) {
        int nc = nk - c < KEY_CHUNK ? nk - c : KEY_CHUNK;
        load_rows(s, kr, g->k, s->n_kv_head, qb->kv_head, qb->b, qb->k0 + c, nc);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, nc, 1.0f, dS + c, nk, kr, hd, c ? 1.0f : 0.0f,
                    dq, hd);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nc, hd, nq, 1.0f, dS + c, nk, qr, hd, 0.0f, dk, hd);
        add_rows(s, g->dk, dk, s->n_kv_head, qb->kv_head, qb->b, qb->k0 + c, nc);
    }
    add_rows(s, g->dq, dq, s->n_head, qb->h, qb->b, qb->t0, nq);
}

// One thread per (b, kv head): it owns dk, dv of that head and dq of its
// query heads, so no two threads write the same gradient.
static void attention_backward(const AttentionShape *s, const AttentionGrads *g) {
    int B = s->B, T = s->T, n_kv_head = s->n_kv_head, group = s->n_head / n_kv_head, rows = query_block_rows(T);
    #pragma omp parallel for collapse(2) schedule(dynamic) if ((size_t)B * s->n_head * T * T * s->head_dim >= CPU_PARALLEL_MIN_WORK)
    for (int b = 0; b < B; b++) {
        for (int kv_head = 0; kv_head < n_kv_head; kv_head++) {
            for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
                for (int t0 = 0; t0 < T; t0 += rows) {
                    QueryBlock qb = query_block(s, b, h, t0, rows);
                    attention_block_backward(s, g, &qb);
                }
            }
        }
    }
}

void cpu_attention_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                            const float *lse, const void *q, const void *k, const void *v, const int32_t *seq_start,
                            const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, int head_dim) {
    AttentionShape s = {B, T, n_head, n_kv_head, head_dim, seq_start, rope, true};
    AttentionGrads g = {dq, dk, dv, dout, out, lse, q, k, v};
    attention_backward(&s, &g);
}

void cpu_attention_full_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                                 const float *lse, const void *q, const void *k, const void *v, int B, int T,
                                 int n_head, int head_dim) {
    AttentionShape s = {B, T, n_head, n_head, head_dim, NULL, NULL, false};
    AttentionGrads g = {dq, dk, dv, dout, out, lse, q, k, v};
    attention_backward(&s, &g);
}
