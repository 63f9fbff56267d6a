#include "gpu_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const Ops *cpu, *gpu;
Rng test_rng;

bool gpu_tests_init(const char *what) {
    Error why;
    gpu = ops_cuda(&why);
    if (!gpu) {
        printf("SKIPPED: %s: %s\n", what, why.message);
        return false;
    }
    cpu = ops_cpu();
    return true;
}

// ----------------------------------------------------------------------------
// host arrays

float *host_alloc(size_t n) {
    float *x = malloc((n > 0 ? n : 1) * sizeof(float));
    assert_non_null(x);
    return x;
}

float *nan_array(size_t n) {
    float *x = host_alloc(n);
    poison(x, n);
    return x;
}

float *random_f32(size_t n, float lo, float hi) {
    float *x = host_alloc(n);
    fill_uniform(x, n, lo, hi, &test_rng);
    return x;
}

float *random_act(size_t n, float lo, float hi) {
    float *x = random_f32(n, lo, hi);
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return x;
}

// ----------------------------------------------------------------------------
// device buffers

void *gpu_alloc(size_t bytes) {
    Error err;
    void *dev = gpu->alloc(gpu, bytes > 0 ? bytes : 1, &err);
    if (!dev) fail_msg("%s", err.message);
    return dev;
}

void *gpu_copy(const void *host, size_t bytes) {
    void *dev = gpu_alloc(bytes);
    gpu->upload(gpu, dev, host, bytes);
    return dev;
}

void *gpu_act(const float *host, size_t n) {
    void *dev = gpu_alloc(n * dtype_size(gpu->act_dtype));
    gpu->upload_f32(gpu, dev, host, n);
    return dev;
}

void *gpu_poisoned(size_t n) {
    float *nan = nan_array(n);
    void *dev = gpu_act(nan, n);
    free(nan);
    return dev;
}

void gpu_ok(void) {
    Error err;
    gpu->synchronize(gpu);
    if (!gpu->check(gpu, &err)) fail_msg("%s", err.message);
}

float *gpu_act_result(const void *dev, size_t n) {
    float *host = host_alloc(n);
    gpu->download_f32(gpu, host, dev, n);
    gpu_ok();
    return host;
}

float *gpu_f32_result(const void *dev, size_t n) {
    float *host = host_alloc(n);
    gpu->download(gpu, host, dev, n * sizeof(float));
    gpu_ok();
    return host;
}

// ----------------------------------------------------------------------------
// fused RoPE

RopeInputs rope_inputs(int B, int T, int head_dim, const int32_t *seq_start) {
    int32_t *positions = malloc((size_t)B * T * sizeof(int32_t));
    float *inv_freq = host_alloc((size_t)head_dim / 2);
    assert_non_null(positions);
    for (int i = 0; i < B * T; i++) positions[i] = 3 * (i % T - (seq_start ? seq_start[i] : 0)) + i / T;
    RopeScaling llama31 = {.llama3 = true, .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                           .original_max_position = 64};
    rope_inverse_frequencies(inv_freq, head_dim, 500000.0f, &llama31);
    AttentionRope dev = {gpu_copy(positions, (size_t)B * T * sizeof(int32_t)),
                         gpu_copy(inv_freq, (size_t)head_dim / 2 * sizeof(float))};
    return (RopeInputs){.host = {positions, inv_freq}, .dev = dev};
}

void rope_inputs_free(RopeInputs *rope) {
    gpu->free(gpu, (void *)rope->dev.positions);
    gpu->free(gpu, (void *)rope->dev.inv_freq);
    free((void *)rope->host.positions);
    free((void *)rope->host.inv_freq);
}

// x (B T, heads, hd) rotated by rope_forward, each value rounded to bf16.
static float *rotated_bf16(const float *x, const AttentionRope *rope, int N, int heads, int hd) {
    size_t n = (size_t)N * heads * hd;
    float *y = host_alloc(n);
    memcpy(y, x, n * sizeof(float));
    cpu->rope_forward(cpu, y, rope->positions, rope->inv_freq, N, heads, hd);
    for (size_t i = 0; i < n; i++) y[i] = bf16_to_f32(f32_to_bf16(y[i]));
    return y;
}

void cpu_attention_forward_bf16_rope(float *out, float *lse, const float *q, const float *k, const float *v,
                                     const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                     int n_kv_head, int head_dim) {
    if (!rope) {
        cpu->attention_forward(cpu, out, lse, q, k, v, seq_start, NULL, B, T, n_head, n_kv_head, head_dim);
        return;
    }
    float *qr = rotated_bf16(q, rope, B * T, n_head, head_dim), *kr = rotated_bf16(k, rope, B * T, n_kv_head, head_dim);
    cpu->attention_forward(cpu, out, lse, qr, kr, v, seq_start, NULL, B, T, n_head, n_kv_head, head_dim);
    free(qr);
    free(kr);
}

void cpu_attention_backward_bf16_rope(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                      const float *lse, const float *q, const float *k, const float *v,
                                      const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                      int n_kv_head, int head_dim) {
    if (!rope) {
        cpu->attention_backward(cpu, dq, dk, dv, dout, out, lse, q, k, v, seq_start, NULL, B, T, n_head, n_kv_head,
                                head_dim);
        return;
    }
    size_t n_q = (size_t)B * T * n_head * head_dim, n_kv = (size_t)B * T * n_kv_head * head_dim;
    float *qr = rotated_bf16(q, rope, B * T, n_head, head_dim), *kr = rotated_bf16(k, rope, B * T, n_kv_head, head_dim);
    float *dqr = calloc(n_q, sizeof(float)), *dkr = calloc(n_kv, sizeof(float));
    assert_true(dqr && dkr);
    cpu->attention_backward(cpu, dqr, dkr, dv, dout, out, lse, qr, kr, v, seq_start, NULL, B, T, n_head, n_kv_head,
                            head_dim);
    cpu->rope_backward(cpu, dqr, rope->positions, rope->inv_freq, B * T, n_head, head_dim);
    cpu->rope_backward(cpu, dkr, rope->positions, rope->inv_freq, B * T, n_kv_head, head_dim);
    for (size_t i = 0; i < n_q; i++) dq[i] += dqr[i];
    for (size_t i = 0; i < n_kv; i++) dk[i] += dkr[i];
    free(qr), free(kr), free(dqr), free(dkr);
}

// ----------------------------------------------------------------------------
// comparisons

double rel_error(const float *a, const float *b, size_t n) {
    double diff = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        diff += d * d;
        ref += (double)b[i] * b[i];
    }
    return ref > 0 ? sqrt(diff / ref) : sqrt(diff);
}

void expect_close(const float *got, const float *want, size_t n, double tol, const char *what) {
    double err = rel_error(got, want, n);
    if (!(err < tol)) fail_msg("%s: relative error %.3g, bound %.3g", what, err, tol);
}

void expect_act(const void *dev, const float *want, size_t n, double tol, const char *what) {
    float *got = gpu_act_result(dev, n);
    expect_close(got, want, n, tol, what);
    free(got);
}

void expect_f32(const void *dev, const float *want, size_t n, double tol, const char *what) {
    float *got = gpu_f32_result(dev, n);
    expect_close(got, want, n, tol, what);
    free(got);
}
