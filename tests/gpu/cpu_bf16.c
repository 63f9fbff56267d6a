// The CPU backend with bf16 activation storage: every op of ops_cpu() whose
// output is an activation (act_dtype on CUDA) has that output rounded to bf16
// (round to nearest even) after it runs, as the CUDA kernels round once when
// they store. Computation stays fp32, so this is what a correct bf16 backend
// computes, up to summation order: the oracle that separates bf16 storage's
// own error from a CUDA kernel's (test_gpu_model compares both against the
// fp32 CPU backend).
#include "gpu_test_util.h"

static Ops fp32;  // ops_cpu(), whose functions the wrappers call

static void round_to_bf16(void *x, size_t n) {
    float *f = x;
    for (size_t i = 0; i < n; i++) f[i] = bf16_to_f32(f32_to_bf16(f[i]));
}

static void upload_f32(const Ops *ops, void *dst, const float *src, size_t n) {
    fp32.upload_f32(&fp32, dst, src, n);
    round_to_bf16(dst, n);
}
static void params_to_act(const Ops *ops, void *dst, const float *params, size_t n) {
    fp32.params_to_act(&fp32, dst, params, n);
    round_to_bf16(dst, n);
}
static void matmul(const Ops *ops, void *out, const void *a, const void *b, int M, int N, int K, bool trans_a,
                   bool trans_b, float alpha, float beta) {
    fp32.matmul(&fp32, out, a, b, M, N, K, trans_a, trans_b, alpha, beta);
    round_to_bf16(out, (size_t)M * N);
}
static void add_inplace(const Ops *ops, void *a, const void *b, size_t n) {
    fp32.add_inplace(&fp32, a, b, n);
    round_to_bf16(a, n);
}
static void embedding_forward(const Ops *ops, void *out, const int32_t *ids, const void *table, int N, int C) {
    fp32.embedding_forward(&fp32, out, ids, table, N, C);
    round_to_bf16(out, (size_t)N * C);
}
static void rmsnorm_forward(const Ops *ops, void *out, float *rstd, const void *inp, const void *weight, int N, int C,
                            float eps) {
    fp32.rmsnorm_forward(&fp32, out, rstd, inp, weight, N, C, eps);
    round_to_bf16(out, (size_t)N * C);
}
// The sum is stored (rounded) before the norm reads it, as on CUDA.
static void residual_rmsnorm_forward(const Ops *ops, void *out, float *rstd, void *x, const void *residual,
                                     const void *weight, int N, int C, float eps) {
    add_inplace(ops, x, residual, (size_t)N * C);
    rmsnorm_forward(ops, out, rstd, x, weight, N, C, eps);
}
static void rmsnorm_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, const void *weight,
                             const float *rstd, int N, int C) {
    fp32.rmsnorm_backward(&fp32, dinp, dout, inp, weight, rstd, N, C);
    round_to_bf16(dinp, (size_t)N * C);
}
static void rope_forward(const Ops *ops, void *x, const int32_t *positions, const float *inv_freq, int N, int n_head,
                         int hd) {
    fp32.rope_forward(&fp32, x, positions, inv_freq, N, n_head, hd);
    round_to_bf16(x, (size_t)N * n_head * hd);
}
static void rope_backward(const Ops *ops, void *dx, const int32_t *positions, const float *inv_freq, int N, int n_head,
                          int hd) {
    fp32.rope_backward(&fp32, dx, positions, inv_freq, N, n_head, hd);
    round_to_bf16(dx, (size_t)N * n_head * hd);
}
static void attention_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                              const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                              int n_kv_head, int hd) {
    cpu_attention_forward_bf16_rope(out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, hd);
    round_to_bf16(out, (size_t)B * T * n_head * hd);
}
static void attention_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                               const float *lse, const void *q, const void *k, const void *v, const int32_t *seq_start,
                               const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, int hd) {
    cpu_attention_backward_bf16_rope(dq, dk, dv, dout, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, hd);
    round_to_bf16(dq, (size_t)B * T * n_head * hd);
    round_to_bf16(dk, (size_t)B * T * n_kv_head * hd);
    round_to_bf16(dv, (size_t)B * T * n_kv_head * hd);
}
static void swiglu_forward(const Ops *ops, void *out, const void *gate, const void *up, size_t n) {
    fp32.swiglu_forward(&fp32, out, gate, up, n);
    round_to_bf16(out, n);
}
static void swiglu_backward(const Ops *ops, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                            size_t n) {
    fp32.swiglu_backward(&fp32, dgate, dup, dout, gate, up, n);
    round_to_bf16(dgate, n);
    round_to_bf16(dup, n);
}
static void dropout_forward(const Ops *ops, void *out, const void *inp, size_t n, float p, uint64_t seed,
                            uint64_t offset) {
    fp32.dropout_forward(&fp32, out, inp, n, p, seed, offset);
    round_to_bf16(out, n);
}
static void dropout_backward(const Ops *ops, void *dinp, const void *dout, size_t n, float p, uint64_t seed,
                             uint64_t offset) {
    fp32.dropout_backward(&fp32, dinp, dout, n, p, seed, offset);
    round_to_bf16(dinp, n);
}
static void cross_entropy(const Ops *ops, float *loss_sum, void *dlogits, const void *logits, const int32_t *targets,
                          int N, int V, float grad_scale) {
    fp32.cross_entropy(&fp32, loss_sum, dlogits, logits, targets, N, V, grad_scale);
    if (dlogits) round_to_bf16(dlogits, (size_t)N * V);
}
static void gelu_forward(const Ops *ops, void *out, const void *inp, size_t n) {
    fp32.gelu_forward(&fp32, out, inp, n);
    round_to_bf16(out, n);
}
static void gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n) {
    fp32.gelu_backward(&fp32, dinp, dout, inp, n);
    round_to_bf16(dinp, n);
}
static void bias_add(const Ops *ops, void *out, const void *bias, int N, int C) {
    fp32.bias_add(&fp32, out, bias, N, C);
    round_to_bf16(out, (size_t)N * C);
}
static void scatter_rows(const Ops *ops, void *out, const int32_t *rows, const void *src, int R, int C) {
    fp32.scatter_rows(&fp32, out, rows, src, R, C);
    for (int r = 0; r < R; r++) round_to_bf16((float *)out + (size_t)rows[r] * C, (size_t)C);
}
static void dequantize_nf4(const Ops *ops, void *out, const uint8_t *packed, const float *code, const float *absmax,
                           size_t n) {
    fp32.dequantize_nf4(&fp32, out, packed, code, absmax, n);
    round_to_bf16(out, n);
}

const Ops *ops_cpu_bf16(void) {
    static Ops ops;
    if (ops.name) return &ops;
    fp32 = *ops_cpu();
    ops = fp32;
    ops.upload_f32 = upload_f32, ops.params_to_act = params_to_act, ops.matmul = matmul;
    ops.add_inplace = add_inplace, ops.embedding_forward = embedding_forward;
    ops.rmsnorm_forward = rmsnorm_forward, ops.rmsnorm_backward = rmsnorm_backward;
    ops.residual_rmsnorm_forward = residual_rmsnorm_forward;
    ops.rope_forward = rope_forward, ops.rope_backward = rope_backward;
    ops.attention_forward = attention_forward, ops.attention_backward = attention_backward;
    ops.swiglu_forward = swiglu_forward, ops.swiglu_backward = swiglu_backward;
    ops.dropout_forward = dropout_forward, ops.dropout_backward = dropout_backward;
    ops.cross_entropy = cross_entropy, ops.gelu_forward = gelu_forward, ops.gelu_backward = gelu_backward;
    ops.bias_add = bias_add, ops.scatter_rows = scatter_rows, ops.dequantize_nf4 = dequantize_nf4;
    return &ops;
}
