// bench: the timed op table (see op_timer.h).
#include "op_timer.h"

#include <string.h>

enum {
    OP_matmul, OP_matmul_weight_grad, OP_add_inplace, OP_embedding_forward, OP_rmsnorm_forward,
    OP_residual_rmsnorm_forward, OP_rmsnorm_backward, OP_rope_forward, OP_rope_backward, OP_attention_forward,
    OP_attention_backward, OP_swiglu_forward, OP_swiglu_backward, OP_dropout_forward, OP_dropout_backward, OP_cross_entropy,
    OP_sum_squares, OP_scale_f32, OP_adamw, OP_zero, OP_params_to_act, OP_dequantize_blockwise_u8,
    OP_dequantize_nf4, OP_download, OP_upload, OP_upload_async, OP_COUNT
};

static const char *const OP_NAMES[OP_COUNT] = {
    "matmul", "matmul_weight_grad", "add_inplace", "embedding_forward", "rmsnorm_forward",
    "residual_rmsnorm_forward", "rmsnorm_backward",
    "rope_forward", "rope_backward", "attention_forward", "attention_backward", "swiglu_forward",
    "swiglu_backward", "dropout_forward", "dropout_backward", "cross_entropy", "sum_squares", "scale_f32",
    "adamw", "zero", "params_to_act", "dequantize_blockwise_u8", "dequantize_nf4", "download", "upload",
    "upload_async",
};

static const Ops *base;
static double op_seconds[OP_COUNT];
static long op_calls[OP_COUNT];

#define TIMED(name, params, args)                        \
    static void timed_##name params {                    \
        base->synchronize();                             \
        double start = time_seconds();                   \
        base->name args;                                 \
        base->synchronize();                             \
        op_seconds[OP_##name] += time_seconds() - start; \
        op_calls[OP_##name]++;                           \
    }

TIMED(matmul, (void *o, const void *a, const void *b, int M, int N, int K, bool ta, bool tb, float al, float be),
      (o, a, b, M, N, K, ta, tb, al, be))
TIMED(matmul_weight_grad, (float *dw, const void *dy, const void *x, int M, int N, int K, float al),
      (dw, dy, x, M, N, K, al))
TIMED(add_inplace, (void *a, const void *b, size_t n), (a, b, n))
TIMED(embedding_forward, (void *o, const int32_t *ids, const void *t, int N, int C), (o, ids, t, N, C))
TIMED(rmsnorm_forward, (void *o, float *r, const void *x, const void *w, int N, int C, float e), (o, r, x, w, N, C, e))
TIMED(residual_rmsnorm_forward, (void *o, float *r, void *x, const void *res, const void *w, int N, int C, float e),
      (o, r, x, res, w, N, C, e))
TIMED(rmsnorm_backward, (void *dx, const void *dy, const void *x, const void *w, const float *r, int N, int C),
      (dx, dy, x, w, r, N, C))
TIMED(rope_forward, (void *x, const int32_t *p, const float *f, int N, int h, int d), (x, p, f, N, h, d))
TIMED(rope_backward, (void *x, const int32_t *p, const float *f, int N, int h, int d), (x, p, f, N, h, d))
TIMED(attention_forward, (void *o, float *l, const void *q, const void *k, const void *v, const int32_t *s, int b,
                          int t, int h, int kv, int d), (o, l, q, k, v, s, b, t, h, kv, d))
TIMED(attention_backward, (void *dq, void *dk, void *dv, const void *dout, const void *out, const float *l,
                           const void *q, const void *k, const void *v, const int32_t *s, int b, int t, int h, int kv,
                           int d), (dq, dk, dv, dout, out, l, q, k, v, s, b, t, h, kv, d))
TIMED(swiglu_forward, (void *o, const void *g, const void *u, size_t n), (o, g, u, n))
TIMED(swiglu_backward, (void *dg, void *du, const void *dy, const void *g, const void *u, size_t n),
      (dg, du, dy, g, u, n))
TIMED(dropout_forward, (void *o, const void *x, size_t n, float p, uint64_t s, uint64_t off), (o, x, n, p, s, off))
TIMED(dropout_backward, (void *dx, const void *dy, size_t n, float p, uint64_t s, uint64_t off),
      (dx, dy, n, p, s, off))
TIMED(cross_entropy, (float *l, void *dl, const void *lg, const int32_t *t, int N, int V, float g),
      (l, dl, lg, t, N, V, g))
TIMED(sum_squares, (float *o, const float *g, size_t n), (o, g, n))
TIMED(scale_f32, (float *x, float s, size_t n), (x, s, n))
TIMED(adamw, (float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float e,
              float wd, int step), (p, g, m, v, n, lr, b1, b2, e, wd, step))
TIMED(zero, (void *p, size_t bytes), (p, bytes))
TIMED(params_to_act, (void *d, const float *s, size_t n), (d, s, n))
TIMED(dequantize_blockwise_u8, (float *o, const uint8_t *q, const float *c, const float *a, float off, size_t n,
                                int bs), (o, q, c, a, off, n, bs))
TIMED(dequantize_nf4, (void *o, const uint8_t *p, const float *c, const float *a, size_t n), (o, p, c, a, n))
TIMED(download, (void *dst, const void *src, size_t bytes), (dst, src, bytes))
TIMED(upload, (void *dst, const void *src, size_t bytes), (dst, src, bytes))
TIMED(upload_async, (void *dst, const void *src, size_t bytes), (dst, src, bytes))

Ops op_timer_wrap(const Ops *backend) {
    base = backend;
    Ops ops = *backend;
    ops.matmul = timed_matmul, ops.matmul_weight_grad = timed_matmul_weight_grad;
    ops.add_inplace = timed_add_inplace, ops.embedding_forward = timed_embedding_forward;
    ops.rmsnorm_forward = timed_rmsnorm_forward, ops.rmsnorm_backward = timed_rmsnorm_backward;
    ops.residual_rmsnorm_forward = timed_residual_rmsnorm_forward;
    ops.rope_forward = timed_rope_forward, ops.rope_backward = timed_rope_backward;
    ops.attention_forward = timed_attention_forward, ops.attention_backward = timed_attention_backward;
    ops.swiglu_forward = timed_swiglu_forward, ops.swiglu_backward = timed_swiglu_backward;
    ops.dropout_forward = timed_dropout_forward, ops.dropout_backward = timed_dropout_backward;
    ops.cross_entropy = timed_cross_entropy, ops.sum_squares = timed_sum_squares, ops.scale_f32 = timed_scale_f32;
    ops.adamw = timed_adamw, ops.zero = timed_zero, ops.params_to_act = timed_params_to_act;
    ops.dequantize_blockwise_u8 = timed_dequantize_blockwise_u8, ops.dequantize_nf4 = timed_dequantize_nf4;
    ops.download = timed_download, ops.upload = timed_upload, ops.upload_async = timed_upload_async;
    return ops;
}

void op_timer_reset(void) {
    memset(op_seconds, 0, sizeof op_seconds);
    memset(op_calls, 0, sizeof op_calls);
}

// Op indices by time, largest first; returns how many ran.
static int ops_by_time(int order[OP_COUNT]) {
    int n = 0;
    for (int i = 0; i < OP_COUNT; i++)
        if (op_calls[i] > 0) order[n++] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && op_seconds[order[j]] > op_seconds[order[j - 1]]; j--) {
            int swap = order[j];
            order[j] = order[j - 1], order[j - 1] = swap;
        }
    return n;
}

static double total_seconds(void) {
    double total = 0;
    for (int i = 0; i < OP_COUNT; i++) total += op_seconds[i];
    return total;
}

void op_timer_print(FILE *out, int steps) {
    int order[OP_COUNT], n = ops_by_time(order);
    double total = total_seconds();
    fprintf(out, "| op | calls/step | ms/step | share |\n|---|---|---|---|\n");
    for (int k = 0; k < n; k++) {
        int i = order[k];
        fprintf(out, "| %s | %ld | %.2f | %.1f%% |\n", OP_NAMES[i], op_calls[i] / steps, 1e3 * op_seconds[i] / steps,
                100.0 * op_seconds[i] / total);
    }
    fprintf(out, "| (all timed ops) | | %.2f | |\n", 1e3 * total / steps);
}

void op_timer_print_json(FILE *out, int steps) {
    int order[OP_COUNT], n = ops_by_time(order);
    double total = total_seconds();
    fputc('[', out);
    for (int k = 0; k < n; k++) {
        int i = order[k];
        fprintf(out, "%s{\"op\": \"%s\", \"calls_per_step\": %ld, \"ms_per_step\": %.4f, \"share\": %.4f}",
                k ? ", " : "", OP_NAMES[i], op_calls[i] / steps, 1e3 * op_seconds[i] / steps, op_seconds[i] / total);
    }
    fputc(']', out);
}
