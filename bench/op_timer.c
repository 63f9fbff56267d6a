// bench: the timed op table (see op_timer.h).
#include "op_timer.h"

#include <string.h>

enum {
    OP_matmul, OP_matmul_weight_grad, OP_add_inplace, OP_embedding_forward, OP_rmsnorm_forward,
    OP_residual_rmsnorm_forward, OP_rmsnorm_backward, OP_rope_forward, OP_rope_backward, OP_attention_forward,
    OP_attention_backward, OP_swiglu_forward, OP_swiglu_backward, OP_dropout_forward, OP_dropout_backward, OP_cross_entropy,
    OP_sum_squares, OP_scale_f32, OP_clip_by_norm, OP_adamw, OP_zero, OP_params_to_act, OP_dequantize_blockwise_u8,
    OP_dequantize_nf4, OP_download, OP_upload, OP_upload_async, OP_COUNT
};

static const char *const OP_NAMES[OP_COUNT] = {
    "matmul", "matmul_weight_grad", "add_inplace", "embedding_forward", "rmsnorm_forward",
    "residual_rmsnorm_forward", "rmsnorm_backward",
    "rope_forward", "rope_backward", "attention_forward", "attention_backward", "swiglu_forward",
    "swiglu_backward", "dropout_forward", "dropout_backward", "cross_entropy", "sum_squares", "scale_f32",
    "clip_by_norm", "adamw", "zero", "params_to_act", "dequantize_blockwise_u8", "dequantize_nf4", "download",
    "upload", "upload_async",
};

static const Ops *base;
static double op_seconds[OP_COUNT], op_flops[OP_COUNT], op_bytes[OP_COUNT];
static long op_calls[OP_COUNT];

// What one call does at the least: floating-point operations (a multiply-add
// is 2) and bytes it must read and write once, with E the bytes of an
// activation element (act_dtype) and 4 of an fp32 one. Element-wise FLOPs
// count the arithmetic of the formula (an exp or a tanh as 1); attention
// counts one causal sequence per row, an upper bound for packed rows.
typedef struct OpCost {
    double flops, bytes;
} OpCost;

// Causal (query, key) pairs of B rows of T tokens and H heads: T (T + 1) / 2 per row and head.
static double causal_pairs(int B, int T, int H) { return (double)B * H * T * (T + 1) / 2.0; }

#define TIMED(name, params, args, cost)                  \
    static void timed_##name params {                    \
        double E = (double)dtype_size(ops->act_dtype);   \
        OpCost call = cost;                              \
        (void)E;                                         \
        base->synchronize(base);                         \
        double start = time_seconds();                   \
        base->name args;                                 \
        base->synchronize(base);                         \
        op_seconds[OP_##name] += time_seconds() - start; \
        op_flops[OP_##name] += call.flops;               \
        op_bytes[OP_##name] += call.bytes;               \
        op_calls[OP_##name]++;                           \
    }

// matmul: 2 M N K; A (M, K), B (K, N) read, out written (and read when beta != 0)
TIMED(matmul, (const Ops *ops, void *o, const void *a, const void *b, int M, int N, int K, bool ta, bool tb, float al,
               float be), (base, o, a, b, M, N, K, ta, tb, al, be),
      ((OpCost){2.0 * M * N * K, E * ((double)M * K + (double)K * N + (double)M * N * (be != 0 ? 2 : 1))}))
// dW (N, K) fp32 += dout^T (N, M) @ inp (M, K): dW read and written
TIMED(matmul_weight_grad, (const Ops *ops, float *dw, const void *dy, const void *x, int M, int N, int K, float al),
      (base, dw, dy, x, M, N, K, al), ((OpCost){2.0 * M * N * K, E * ((double)M * N + (double)M * K) + 8.0 * N * K}))
TIMED(add_inplace, (const Ops *ops, void *a, const void *b, size_t n), (base, a, b, n),
      ((OpCost){(double)n, 3 * E * n}))
TIMED(embedding_forward, (const Ops *ops, void *o, const int32_t *ids, const void *t, int N, int C),
      (base, o, ids, t, N, C), ((OpCost){0, 2 * E * N * C + 4.0 * N}))
// x^2, sum, x * rstd * w: 4 per element; inp read, out written, rstd (fp32) written
TIMED(rmsnorm_forward, (const Ops *ops, void *o, float *r, const void *x, const void *w, int N, int C, float e),
      (base, o, r, x, w, N, C, e), ((OpCost){4.0 * N * C, E * (2.0 * N * C + C) + 4.0 * N}))
// x += residual, then rmsnorm_forward: 5 per element; x read and written, residual read, out written
TIMED(residual_rmsnorm_forward, (const Ops *ops, void *o, float *r, void *x, const void *res, const void *w, int N,
                                 int C, float e), (base, o, r, x, res, w, N, C, e),
      ((OpCost){5.0 * N * C, E * (4.0 * N * C + C) + 4.0 * N}))
// dout * w, its dot with x, and dx = rstd (g - x dot / C): 7 per element; dinp read and written
TIMED(rmsnorm_backward, (const Ops *ops, void *dx, const void *dy, const void *x, const void *w, const float *r, int N,
                         int C), (base, dx, dy, x, w, r, N, C),
      ((OpCost){7.0 * N * C, E * (4.0 * N * C + C) + 4.0 * N}))
// a rotation of each pair: 4 multiplies, 2 adds, in place
TIMED(rope_forward, (const Ops *ops, void *x, const int32_t *p, const float *f, int N, int h, int d),
      (base, x, p, f, N, h, d), ((OpCost){3.0 * N * h * d, 2 * E * N * h * d + 4.0 * N + 2.0 * d}))
TIMED(rope_backward, (const Ops *ops, void *x, const int32_t *p, const float *f, int N, int h, int d),
      (base, x, p, f, N, h, d), ((OpCost){3.0 * N * h * d, 2 * E * N * h * d + 4.0 * N + 2.0 * d}))
// Fused RoPE: q and k rotated once each as rope_forward counts them (3 per element), positions and inv_freq read.
static OpCost rope_rotation(const AttentionRope *rope, int b, int t, int h, int kv, int d) {
    return rope ? (OpCost){3.0 * b * t * d * (h + kv), 4.0 * b * t + 2.0 * d} : (OpCost){0, 0};
}
// q k and p v per causal pair: 4 d; q, k, v read, out and lse (fp32) written; the rotation of q, k
TIMED(attention_forward, (const Ops *ops, void *o, float *l, const void *q, const void *k, const void *v,
                          const int32_t *s, const AttentionRope *r, int b, int t, int h, int kv, int d),
      (base, o, l, q, k, v, s, r, b, t, h, kv, d),
      ((OpCost){4.0 * d * causal_pairs(b, t, h) + rope_rotation(r, b, t, h, kv, d).flops,
                E * ((double)b * t * d * (2.0 * h + 2.0 * kv)) + 4.0 * b * h * t +
                    rope_rotation(r, b, t, h, kv, d).bytes}))
// FlashAttention-2's backward: s = q k and dp = dout v again, dq, dk, dv: 10 d per
// pair; q, k, v, out, dout, lse read, dq, dk, dv read and written; q, k rotated again and dq, dk rotated back
TIMED(attention_backward, (const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                           const float *l, const void *q, const void *k, const void *v, const int32_t *s,
                           const AttentionRope *r, int b, int t, int h, int kv, int d),
      (base, dq, dk, dv, dout, out, l, q, k, v, s, r, b, t, h, kv, d),
      ((OpCost){10.0 * d * causal_pairs(b, t, h) + 2 * rope_rotation(r, b, t, h, kv, d).flops,
                E * ((double)b * t * d * (5.0 * h + 6.0 * kv)) + 4.0 * b * h * t +
                    rope_rotation(r, b, t, h, kv, d).bytes}))
// silu(g) u = g u / (1 + e^-g): 5 per element
TIMED(swiglu_forward, (const Ops *ops, void *o, const void *g, const void *u, size_t n), (base, o, g, u, n),
      ((OpCost){5.0 * n, 3 * E * n}))
TIMED(swiglu_backward, (const Ops *ops, void *dg, void *du, const void *dy, const void *g, const void *u, size_t n),
      (base, dg, du, dy, g, u, n), ((OpCost){10.0 * n, 7 * E * n}))
TIMED(dropout_forward, (const Ops *ops, void *o, const void *x, size_t n, float p, uint64_t s, uint64_t off),
      (base, o, x, n, p, s, off), ((OpCost){(double)n, 2 * E * n}))
TIMED(dropout_backward, (const Ops *ops, void *dx, const void *dy, size_t n, float p, uint64_t s, uint64_t off),
      (base, dx, dy, n, p, s, off), ((OpCost){(double)n, 3 * E * n}))
// max, exp, sum, and (softmax - onehot) * scale: 5 per logit; logits read, dlogits written
TIMED(cross_entropy, (const Ops *ops, float *l, void *dl, const void *lg, const int32_t *t, int N, int V, float g),
      (base, l, dl, lg, t, N, V, g), ((OpCost){5.0 * N * V, E * (double)N * V * (dl ? 2 : 1) + 4.0 * N}))
TIMED(sum_squares, (const Ops *ops, float *o, const float *g, size_t n), (base, o, g, n),
      ((OpCost){2.0 * n, 4.0 * n}))
TIMED(scale_f32, (const Ops *ops, float *x, float s, size_t n), (base, x, s, n), ((OpCost){(double)n, 8.0 * n}))
// decay, two moments, the update: 12 per element; p, m, v read and written, g read (fp32)
// coefficient from the norm, then a scale: x read and written
TIMED(clip_by_norm, (const Ops *ops, float *x, size_t n, const float *sum, float max_norm), (base, x, n, sum, max_norm),
      ((OpCost){(double)n, 8.0 * n}))
TIMED(adamw, (const Ops *ops, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
              float e, float wd, int step, const float *skip, float limit),
      (base, p, g, m, v, n, lr, b1, b2, e, wd, step, skip, limit), ((OpCost){12.0 * n, 28.0 * n}))
TIMED(zero, (const Ops *ops, void *p, size_t bytes), (base, p, bytes), ((OpCost){0, (double)bytes}))
TIMED(params_to_act, (const Ops *ops, void *d, const float *s, size_t n), (base, d, s, n),
      ((OpCost){0, (4 + E) * n}))
TIMED(dequantize_blockwise_u8, (const Ops *ops, float *o, const uint8_t *q, const float *c, const float *a, float off,
                                size_t n, int bs), (base, o, q, c, a, off, n, bs),
      ((OpCost){2.0 * n, 5.0 * n + 4.0 * n / bs}))
TIMED(dequantize_nf4, (const Ops *ops, void *o, const uint8_t *p, const float *c, const float *a, size_t n),
      (base, o, p, c, a, n), ((OpCost){(double)n, (0.5 + E) * n + 4.0 * n / 64}))
// host <-> device copies: bytes over the host link, no floor of the device's memory
TIMED(download, (const Ops *ops, void *dst, const void *src, size_t bytes), (base, dst, src, bytes),
      ((OpCost){0, (double)bytes}))
TIMED(upload, (const Ops *ops, void *dst, const void *src, size_t bytes), (base, dst, src, bytes),
      ((OpCost){0, (double)bytes}))
TIMED(upload_async, (const Ops *ops, void *dst, const void *src, size_t bytes), (base, dst, src, bytes),
      ((OpCost){0, (double)bytes}))

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
    ops.clip_by_norm = timed_clip_by_norm, ops.adamw = timed_adamw, ops.zero = timed_zero;
    ops.params_to_act = timed_params_to_act;
    ops.dequantize_blockwise_u8 = timed_dequantize_blockwise_u8, ops.dequantize_nf4 = timed_dequantize_nf4;
    ops.download = timed_download, ops.upload = timed_upload, ops.upload_async = timed_upload_async;
    return ops;
}

void op_timer_reset(void) {
    memset(op_seconds, 0, sizeof op_seconds);
    memset(op_flops, 0, sizeof op_flops);
    memset(op_bytes, 0, sizeof op_bytes);
    memset(op_calls, 0, sizeof op_calls);
}

bool op_timer_totals(const char *op, OpTotals *totals) {
    for (int i = 0; i < OP_COUNT; i++) {
        if (strcmp(OP_NAMES[i], op) != 0) continue;
        *totals = (OpTotals){op_calls[i], op_seconds[i], op_flops[i], op_bytes[i]};
        return true;
    }
    return false;
}

static bool is_host_copy(int op) { return op == OP_download || op == OP_upload || op == OP_upload_async; }

// The op's time on `device` at its peak rates: the larger of compute and memory time.
static double floor_seconds(int op, const DevicePeak *device) {
    if (is_host_copy(op)) return 0;
    double compute = op_flops[op] / device->flops, memory = op_bytes[op] / device->bytes_per_s;
    return compute > memory ? compute : memory;
}

const DevicePeak DEVICE_H100 = {"H100 SXM", 989.4e12, 3.35e12};
const DevicePeak DEVICE_H200 = {"H200 SXM", 989.4e12, 4.8e12};

const DevicePeak *device_peak_named(const char *name) {
    if (strstr(name, "H200")) return &DEVICE_H200;
    if (strstr(name, "H100")) return &DEVICE_H100;
    return NULL;
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

static void print_floor(FILE *out, int op, const DevicePeak *device, int steps) {
    if (is_host_copy(op)) fprintf(out, " - |");
    else fprintf(out, " %.4f |", 1e3 * floor_seconds(op, device) / steps);
}

void op_timer_print(FILE *out, int steps, const DevicePeak *device) {
    int order[OP_COUNT], n = ops_by_time(order);
    double total = total_seconds(), total_flops = 0, total_bytes = 0;
    fprintf(out, "| op | calls/step | ms/step | share | GFLOP/step | MB/step | %s floor ms | %s floor ms |%s\n",
            DEVICE_H100.name, DEVICE_H200.name, device ? " x its floor here |" : "");
    fprintf(out, "|---|---|---|---|---|---|---|---|%s\n", device ? "---|" : "");
    for (int k = 0; k < n; k++) {
        int i = order[k];
        fprintf(out, "| %s | %ld | %.2f | %.1f%% | %.4f | %.3f |", OP_NAMES[i], op_calls[i] / steps,
                1e3 * op_seconds[i] / steps, 100.0 * op_seconds[i] / total, op_flops[i] / steps / 1e9,
                op_bytes[i] / steps / 1e6);
        print_floor(out, i, &DEVICE_H100, steps), print_floor(out, i, &DEVICE_H200, steps);
        if (device && !is_host_copy(i)) fprintf(out, " %.1f |", op_seconds[i] / floor_seconds(i, device));
        else if (device) fprintf(out, " - |");
        fputc('\n', out);
        total_flops += op_flops[i], total_bytes += op_bytes[i];
    }
    fprintf(out, "| (all timed ops) | | %.2f | | %.4f | %.3f | | |%s\n", 1e3 * total / steps, total_flops / steps / 1e9,
            total_bytes / steps / 1e6, device ? " |" : "");
}

void op_timer_print_json(FILE *out, int steps) {
    int order[OP_COUNT], n = ops_by_time(order);
    double total = total_seconds();
    fputc('[', out);
    for (int k = 0; k < n; k++) {
        int i = order[k];
        fprintf(out,
                "%s{\"op\": \"%s\", \"calls_per_step\": %ld, \"ms_per_step\": %.4f, \"share\": %.4f, "
                "\"flops_per_step\": %.6g, \"bytes_per_step\": %.6g, \"h100_floor_ms\": %.6g, \"h200_floor_ms\": %.6g}",
                k ? ", " : "", OP_NAMES[i], op_calls[i] / steps, 1e3 * op_seconds[i] / steps, op_seconds[i] / total,
                op_flops[i] / steps, op_bytes[i] / steps, 1e3 * floor_seconds(i, &DEVICE_H100) / steps,
                1e3 * floor_seconds(i, &DEVICE_H200) / steps);
    }
    fputc(']', out);
}
