// Vision ops of the CPU backend against double-precision references written
// here from the documented definitions (nn.LayerNorm, nn.GELU exact and tanh,
// CLIP's quick_gelu, LayerScale, Conv2d with stride = kernel, softmax attention), with
// central finite differences of those references checking every backward;
// GELU tanh and bidirectional attention also against PyTorch's forward and autograd
// (scripts/ref_ops.py).
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"


static const Ops *cpu;

static int setup_ops(void **state) {
    cpu = ops_cpu();
    return 0;
}





// ----------------------------------------------------------------------------
// a double forward of up to three inputs and the finite-difference gradient
// of L = sum(out * w) with respect to one of them






// ----------------------------------------------------------------------------
// LayerNorm: y = (x - mean) / sqrt(var + eps) * w + b, biased variance

static void layernorm_reference(const Problem *p, double *out) {
    for (int n = 0; n < p->N; n++) {
        const double *x = p->inputs[0] + (size_t)n * p->C;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < p->C; i++) mean += x[i] / p->C;
        for (int i = 0; i < p->C; i++) var += (x[i] - mean) * (x[i] - mean) / p->C;
        for (int i = 0; i < p->C; i++)
            out[(size_t)n * p->C + i] = (x[i] - mean) / sqrt(var + 1e-5) * p->inputs[1][i] + p->inputs[2][i];
    }
}

static void test_layernorm(void **state) {
    enum { N = 5, C = 13 };
    Rng rng;
    rng_seed(&rng, 1);
    float *x = random_floats(N * C, -1.5f, 1.5f, &rng), *w = random_floats(C, -1.5f, 1.5f, &rng), *b = random_floats(C, -1.5f, 1.5f, &rng);
    float *dout = random_floats(N * C, -1.5f, 1.5f, &rng), *out = poisoned_floats(N * C), mean[N], rstd[N];
    float *dx = random_floats(N * C, -1.5f, 1.5f, &rng), *dw = random_floats(C, -1.5f, 1.5f, &rng), *db = random_floats(C, -1.5f, 1.5f, &rng);
    float dx_before[N * C], dw_before[C], db_before[C];
    memcpy(dx_before, dx, sizeof dx_before), memcpy(dw_before, dw, sizeof dw_before), memcpy(db_before, db, sizeof db_before);
    cpu->layernorm_forward(cpu, out, mean, rstd, x, w, b, N, C, 1e-5f);
    cpu->layernorm_backward(cpu, dx, dw, db, dout, x, w, mean, rstd, N, C);
    Problem p = {.inputs = {to_double(x, N * C), to_double(w, C), to_double(b, C)}, .input_sizes = {N * C, C, C},
                 .out_size = N * C, .forward = layernorm_reference, .N = N, .C = C};
    double *want = reference_forward(&p), *weights = to_double(dout, N * C);
    assert_close("layernorm out", out, want, N * C, FORWARD_TOL);
    double *want_dx = fd_gradient(&p, 0, weights), *want_dw = fd_gradient(&p, 1, weights), *want_db = fd_gradient(&p, 2, weights);
    assert_increment("layernorm dx", dx, dx_before, want_dx, N * C, FD_TOL);
    assert_increment("layernorm dweight", dw, dw_before, want_dw, C, FD_TOL);
    assert_increment("layernorm dbias", db, db_before, want_db, C, FD_TOL);
    cpu->layernorm_backward(cpu, dx, NULL, NULL, dout, x, w, mean, rstd, N, C); // frozen norms: no weight grads
    free_problem(&p);
    free(want), free(weights), free(want_dx), free(want_dw), free(want_db);
    free(x), free(w), free(b), free(dout), free(out), free(dx), free(dw), free(db);
}

// ----------------------------------------------------------------------------
// GELU and quick_gelu

static void gelu_reference(const Problem *p, double *out) {
    for (size_t i = 0; i < p->out_size; i++) out[i] = p->inputs[0][i] * 0.5 * (1.0 + erf(p->inputs[0][i] / sqrt(2.0)));
}

static void quick_gelu_reference(const Problem *p, double *out) {
    for (size_t i = 0; i < p->out_size; i++) out[i] = p->inputs[0][i] / (1.0 + exp(-1.702 * p->inputs[0][i]));
}

static void gelu_tanh_reference(const Problem *p, double *out) {
    for (size_t i = 0; i < p->out_size; i++) {
        double x = p->inputs[0][i];
        out[i] = 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    }
}

typedef void (*ElementwiseForward)(const Ops *ops, void *out, const void *inp, size_t n);
typedef void (*ElementwiseBackward)(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);

static void check_activation(const char *what, ElementwiseForward forward, ElementwiseBackward backward,
                             void (*reference)(const Problem *, double *)) {
    enum { N = 41 };
    Rng rng;
    rng_seed(&rng, 2);
    float *x = random_floats(N, -1.5f, 1.5f, &rng), *dout = random_floats(N, -1.5f, 1.5f, &rng), *out = poisoned_floats(N);
    float *dx = random_floats(N, -1.5f, 1.5f, &rng), dx_before[N];
    x[0] = 0.0f, x[1] = -4.0f, x[2] = 4.0f;
    memcpy(dx_before, dx, sizeof dx_before);
    forward(cpu, out, x, N);
    backward(cpu, dx, dout, x, N);
    Problem p = {.inputs = {to_double(x, N)}, .input_sizes = {N}, .out_size = N, .forward = reference, .N = N, .C = 1};
    double *want = reference_forward(&p), *weights = to_double(dout, N), *want_dx = fd_gradient(&p, 0, weights);
    assert_close(what, out, want, N, FORWARD_TOL);
    assert_increment(what, dx, dx_before, want_dx, N, FD_TOL);
    free_problem(&p);
    free(want), free(weights), free(want_dx), free(x), free(dout), free(out), free(dx);
}

static void test_gelu(void **state) { check_activation("gelu", cpu->gelu_forward, cpu->gelu_backward, gelu_reference); }

static void test_quick_gelu(void **state) {
    check_activation("quick_gelu", cpu->quick_gelu_forward, cpu->quick_gelu_backward, quick_gelu_reference);
}

static void test_gelu_tanh(void **state) {
    check_activation("gelu_tanh", cpu->gelu_tanh_forward, cpu->gelu_tanh_backward, gelu_tanh_reference);
}

// F.gelu(x, approximate="tanh") and its autograd gradient, from PyTorch in fp32
static void test_gelu_tanh_matches_pytorch(void **state) {
    enum { N = 65 };
    double *x = load_fixture("gelu_tanh_x.txt", N), *want_out = load_fixture("gelu_tanh_out.txt", N);
    double *dout = load_fixture("gelu_tanh_dout.txt", N), *want_dx = load_fixture("gelu_tanh_dx.txt", N);
    float xf[N], doutf[N], out[N], dx[N], zeros[N] = {0};
    for (int i = 0; i < N; i++) xf[i] = (float)x[i], doutf[i] = (float)dout[i], dx[i] = 0.0f;
    cpu->gelu_tanh_forward(cpu, out, xf, N);
    cpu->gelu_tanh_backward(cpu, dx, doutf, xf, N);
    assert_close("gelu_tanh vs PyTorch", out, want_out, N, FORWARD_TOL);
    assert_increment("gelu_tanh backward vs PyTorch", dx, zeros, want_dx, N, FORWARD_TOL);
    free(x), free(want_out), free(dout), free(want_dx);
}

// ----------------------------------------------------------------------------
// bias and row scatter

static void test_bias_add_and_backward(void **state) {
    enum { N = 4, C = 7 };
    Rng rng;
    rng_seed(&rng, 3);
    float *y = random_floats(N * C, -1.5f, 1.5f, &rng), *b = random_floats(C, -1.5f, 1.5f, &rng), *dbias = random_floats(C, -1.5f, 1.5f, &rng);
    float y_before[N * C], dbias_before[C];
    memcpy(y_before, y, sizeof y_before), memcpy(dbias_before, dbias, sizeof dbias_before);
    cpu->bias_add(cpu, y, b, N, C);
    cpu->bias_backward(cpu, dbias, y_before, N, C);
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) assert_float_equal(y[n * C + c], y_before[n * C + c] + b[c], 1e-6);
    }
    for (int c = 0; c < C; c++) {
        double column = 0;
        for (int n = 0; n < N; n++) column += y_before[n * C + c];
        assert_float_equal(dbias[c], dbias_before[c] + column, 1e-5);
    }
    free(y), free(b), free(dbias);
}

static void test_scale_columns(void **state) {
    enum { N = 4, C = 7 };
    Rng rng;
    rng_seed(&rng, 6);
    float *x = random_floats(N * C, -1.5f, 1.5f, &rng), *scale = random_floats(C, -1.5f, 1.5f, &rng);
    float *before = copy_floats(x, N * C);
    cpu->scale_columns(cpu, x, scale, N, C);
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) assert_float_equal(x[n * C + c], before[n * C + c] * scale[c], 0.0);
    }
    free(x), free(scale), free(before);
}

static void test_scatter_rows(void **state) {
    enum { N = 6, C = 3, R = 2 };
    float out[N * C], src[R * C] = {1, 2, 3, 4, 5, 6};
    for (int i = 0; i < N * C; i++) out[i] = -1.0f;
    int32_t rows[R] = {4, 1};
    cpu->scatter_rows(cpu, out, rows, src, R, C);
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            float want = n == 4 ? src[c] : n == 1 ? src[C + c] : -1.0f;
            assert_float_equal(out[n * C + c], want, 0.0);
        }
    }
}

// ----------------------------------------------------------------------------
// patch embedding: Conv2d(channels, D, kernel = stride = patch, bias = False), flattened

static void check_patch_embed(int S) {
    enum { B = 2, CH = 3, P = 4, D = 5, MAX_G = 4 };
    int G = S / P;
    Rng rng;
    rng_seed(&rng, 4);
    float *images = random_floats(B * CH * S * S, -1.5f, 1.5f, &rng), *w = random_floats(D * CH * P * P, -1.5f, 1.5f, &rng);
    float *out = poisoned_floats(B * G * G * D);
    cpu->patch_embed_forward(cpu, out, images, w, B, CH, S, P, D);
    double want[B * MAX_G * MAX_G * D];
    assert_true(G <= MAX_G);
    for (int b = 0; b < B; b++)
        for (int py = 0; py < G; py++)
            for (int px = 0; px < G; px++)
                for (int d = 0; d < D; d++) {
                    double sum = 0;
                    for (int c = 0; c < CH; c++)
                        for (int i = 0; i < P; i++)
                            for (int j = 0; j < P; j++)
                                sum += (double)w[((d * CH + c) * P + i) * P + j] *
                                       images[((b * CH + c) * S + py * P + i) * S + px * P + j];
                    want[((b * G + py) * G + px) * D + d] = sum;
                }
    assert_close("patch_embed", out, want, B * G * G * D, FORWARD_TOL);
    free(images), free(w), free(out);
}

static void test_patch_embed(void **state) {
    check_patch_embed(12);
    check_patch_embed(14); // 3 x 3 patches, the last 2 columns and rows unused ('valid' padding)
}

// ----------------------------------------------------------------------------
// non-causal attention: out_t = sum_u softmax_u(q_t . k_u / sqrt(hd)) v_u over all u,
// lse_t = log sum_u e^{q_t . k_u / sqrt(hd)}

static void test_attention_full(void **state) {
    enum { B = 2, T = 7, H = 3, HD = 4, W = H * HD };
    Rng rng;
    rng_seed(&rng, 5);
    float *q = random_floats(B * T * W, -1.5f, 1.5f, &rng), *k = random_floats(B * T * W, -1.5f, 1.5f, &rng), *v = random_floats(B * T * W, -1.5f, 1.5f, &rng);
    float *out = poisoned_floats(B * T * W), *lse = poisoned_floats(B * H * T);
    cpu->attention_full_forward(cpu, out, lse, q, k, v, B, T, H, HD);
    double want[B * T * W], want_lse[B * H * T];
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                double scores[T], max_score = -INFINITY, sum = 0;
                for (int u = 0; u < T; u++) {
                    double dot = 0;
                    for (int i = 0; i < HD; i++) dot += (double)q[(b * T + t) * W + h * HD + i] * k[(b * T + u) * W + h * HD + i];
                    scores[u] = dot / sqrt(HD);
                    max_score = fmax(max_score, scores[u]);
                }
                for (int u = 0; u < T; u++) sum += (scores[u] = exp(scores[u] - max_score));
                want_lse[(b * H + h) * T + t] = max_score + log(sum);
                for (int i = 0; i < HD; i++) {
                    double acc = 0;
                    for (int u = 0; u < T; u++) acc += scores[u] / sum * v[(b * T + u) * W + h * HD + i];
                    want[(b * T + t) * W + h * HD + i] = acc;
                }
            }
    assert_close("attention_full", out, want, B * T * W, FORWARD_TOL);
    assert_close("attention_full lse", lse, want_lse, B * H * T, FORWARD_TOL);
    free(q), free(k), free(v), free(out), free(lse);
}

// Forward and backward against torch's scaled_dot_product_attention(is_causal=False) and
// autograd (scripts/ref_ops.py): the backward adds into gradients that start non-zero (the
// increments, differences of fp32 sums near 1, to 1e-4).
static void test_attention_full_vs_torch(void **state) {
    double *dims = load_fixture("attention_full_shape.txt", 4);
    int B = (int)dims[0], T = (int)dims[1], H = (int)dims[2], hd = (int)dims[3];
    size_t n = (size_t)B * T * H * hd, n_lse = (size_t)B * H * T;
    enum { Q, K, V, DOUT, OUT, LSE, DQ, DK, DV, PARTS };
    const char *parts[PARTS] = {"q", "k", "v", "dout", "out", "lse", "dq", "dk", "dv"};
    double *want[PARTS];
    float *f[DOUT + 1];
    for (int i = 0; i < PARTS; i++) {
        char name[64];
        snprintf(name, sizeof name, "attention_full_%s.txt", parts[i]);
        want[i] = load_fixture(name, i == LSE ? n_lse : n);
        if (i > DOUT) continue;
        f[i] = poisoned_floats(n);
        for (size_t j = 0; j < n; j++) f[i][j] = (float)want[i][j];
    }
    Rng rng;
    rng_seed(&rng, 11);
    float *out = poisoned_floats(n), *lse = poisoned_floats(n_lse), *grads[3], *before[3];
    for (int i = 0; i < 3; i++) grads[i] = random_floats(n, -1.0f, 1.0f, &rng), before[i] = copy_floats(grads[i], n);
    cpu->attention_full_forward(cpu, out, lse, f[Q], f[K], f[V], B, T, H, hd);
    cpu->attention_full_backward(cpu, grads[0], grads[1], grads[2], f[DOUT], out, lse, f[Q], f[K], f[V], B, T, H, hd);
    assert_close("attention_full out vs torch", out, want[OUT], n, FORWARD_TOL);
    assert_close("attention_full lse vs torch", lse, want[LSE], n_lse, FORWARD_TOL);
    assert_increment("attention_full dq vs torch", grads[0], before[0], want[DQ], n, FD_TOL);
    assert_increment("attention_full dk vs torch", grads[1], before[1], want[DK], n, FD_TOL);
    assert_increment("attention_full dv vs torch", grads[2], before[2], want[DV], n, FD_TOL);
    for (int i = 0; i < PARTS; i++) free(want[i]);
    for (int i = 0; i <= DOUT; i++) free(f[i]);
    for (int i = 0; i < 3; i++) free(grads[i]), free(before[i]);
    free(dims), free(out), free(lse);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_quick_gelu),
        cmocka_unit_test(test_gelu_tanh),
        cmocka_unit_test(test_gelu_tanh_matches_pytorch),
        cmocka_unit_test(test_bias_add_and_backward),
        cmocka_unit_test(test_scale_columns),
        cmocka_unit_test(test_scatter_rows),
        cmocka_unit_test(test_patch_embed),
        cmocka_unit_test(test_attention_full),
        cmocka_unit_test(test_attention_full_vs_torch),
    };
    return cmocka_run_group_tests(tests, setup_ops, NULL);
}
