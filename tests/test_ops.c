// The op table: rope frequencies and attention forwards (causal, packed) against
// transformers / torch numbers (scripts/ref_ops.py), and every CPU op against
// a double-precision reference written here, with central finite differences
// of that reference checking every backward.
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/lt_layout.h"
#include "kernels/ops.h"

// ----------------------------------------------------------------------------
// helpers

static const Ops *cpu;

static int setup_ops(void **state) {
    cpu = ops_cpu();
    return cpu ? 0 : -1;
}







// ----------------------------------------------------------------------------
// central finite differences of a double-precision forward
//
// A problem holds double copies of an op's inputs and a forward that reads
// them; the gradient of L = sum(out * w) with respect to input `which` is
// (L(x + eps) - L(x - eps)) / 2 eps, element by element.

#define MATMUL_TOL 1e-4 // fp32 sums of 150 products
#define ROPE_TOL 1e-4   // fp32 angles, as transformers, up to position 250






// ----------------------------------------------------------------------------
// rope inverse frequencies vs transformers

static void check_inverse_frequencies(const char *fixture, float theta, const RopeScaling *scaling) {
    enum { HEAD_DIM = 128 };
    double *expected = load_fixture(fixture, HEAD_DIM / 2);
    float inv_freq[HEAD_DIM / 2];
    rope_inverse_frequencies(inv_freq, HEAD_DIM, theta, scaling);
    assert_true(max_rel_error(inv_freq, expected, HEAD_DIM / 2, 0.0) < 1e-6);
    free(expected);
}

static void test_rope_frequencies_plain(void **state) {
    check_inverse_frequencies("rope_inv_freq_theta10000.txt", 10000.0f, NULL);
}

static void test_rope_frequencies_llama31(void **state) {
    RopeScaling llama31 = {.llama3 = true, .factor = 8.0f, .low_freq_factor = 1.0f,
                           .high_freq_factor = 4.0f, .original_max_position = 8192};
    check_inverse_frequencies("rope_inv_freq_llama31.txt", 500000.0f, &llama31);
}

// ----------------------------------------------------------------------------
// matmul and the linear layer's backward

typedef struct MatmulShape {
    int M, N, K;
    bool trans_a, trans_b;
} MatmulShape;

// out (M, N) = op(a) @ op(b); a stored (K, M) when trans_a, b (N, K) when trans_b
static void matmul_reference(const Problem *p, double *out) {
    const MatmulShape *s = p->shape;
    const double *a = p->inputs[0], *b = p->inputs[1];
    for (int i = 0; i < s->M; i++) {
        for (int j = 0; j < s->N; j++) {
            double sum = 0.0;
            for (int k = 0; k < s->K; k++) {
                double a_ik = s->trans_a ? a[(size_t)k * s->M + i] : a[(size_t)i * s->K + k];
                double b_kj = s->trans_b ? b[(size_t)j * s->K + k] : b[(size_t)k * s->N + j];
                sum += a_ik * b_kj;
            }
            out[(size_t)i * s->N + j] = sum;
        }
    }
}

// Sizes cross the CPU backend's 32 x 128 x 128 tiles.
static void check_matmul(bool trans_a, bool trans_b, float alpha, float beta) {
    MatmulShape s = {37, 133, 150, trans_a, trans_b};
    size_t out_size = (size_t)s.M * s.N;
    Rng rng;
    rng_seed(&rng, 10 + 2 * trans_a + trans_b);
    float *a = random_floats((size_t)s.M * s.K, -1.0f, 1.0f, &rng), *b = random_floats((size_t)s.K * s.N, -1.0f, 1.0f, &rng);
    float *out = beta == 0.0f ? poisoned_floats(out_size) : random_floats(out_size, -1.0f, 1.0f, &rng);
    float *out_before = copy_floats(out, out_size);
    cpu->matmul(cpu, out, a, b, s.M, s.N, s.K, trans_a, trans_b, alpha, beta);
    Problem p = {.inputs = {to_double(a, (size_t)s.M * s.K), to_double(b, (size_t)s.K * s.N)},
                 .out_size = out_size, .forward = matmul_reference, .shape = &s};
    double *want = reference_forward(&p);
    for (size_t i = 0; i < out_size; i++) {
        want[i] = alpha * want[i] + (beta == 0.0f ? 0.0 : beta * (double)out_before[i]);
    }
    assert_close("matmul", out, want, out_size, MATMUL_TOL);
    free_problem(&p);
    free(want), free(a), free(b), free(out), free(out_before);
}

static void test_matmul_transposes(void **state) {
    for (int trans_a = 0; trans_a < 2; trans_a++) {
        for (int trans_b = 0; trans_b < 2; trans_b++) {
            check_matmul(trans_a, trans_b, 1.0f, 0.0f);
            check_matmul(trans_a, trans_b, 0.7f, 0.3f);
        }
    }
}

// y (M, N) = x (M, K) W^T, W (N, K): dW += alpha dy^T x, dx += dy W
static void test_linear_backward(void **state) {
    MatmulShape s = {5, 7, 12, false, true};
    Rng rng;
    rng_seed(&rng, 20);
    float *x = random_floats((size_t)s.M * s.K, -1.0f, 1.0f, &rng), *W = random_floats((size_t)s.N * s.K, -1.0f, 1.0f, &rng);
    float *dout = random_floats((size_t)s.M * s.N, -1.0f, 1.0f, &rng);
    float *dx = random_floats((size_t)s.M * s.K, -1.0f, 1.0f, &rng), *dW = random_floats((size_t)s.N * s.K, -1.0f, 1.0f, &rng);
    float *dx_before = copy_floats(dx, (size_t)s.M * s.K), *dW_before = copy_floats(dW, (size_t)s.N * s.K);
    cpu->matmul_weight_grad(cpu, dW, dout, x, s.M, s.N, s.K, -0.5f);
    cpu->matmul(cpu, dx, dout, W, s.M, s.K, s.N, false, false, 1.0f, 1.0f);

    Problem p = {.inputs = {to_double(x, (size_t)s.M * s.K), to_double(W, (size_t)s.N * s.K)},
                 .input_sizes = {(size_t)s.M * s.K, (size_t)s.N * s.K},
                 .out_size = (size_t)s.M * s.N, .forward = matmul_reference, .shape = &s};
    double *w = to_double(dout, p.out_size);
    double *want_dx = fd_gradient(&p, 0, w), *want_dW = fd_gradient(&p, 1, w);
    for (size_t i = 0; i < p.input_sizes[1]; i++) want_dW[i] *= -0.5;
    assert_increment("linear dx", dx, dx_before, want_dx, p.input_sizes[0], FD_TOL);
    assert_increment("linear dW", dW, dW_before, want_dW, p.input_sizes[1], FD_TOL);
    free_problem(&p);
    free(w), free(want_dx), free(want_dW), free(x), free(W), free(dout);
    free(dx), free(dW), free(dx_before), free(dW_before);
}

// The CUDA backend's cuBLASLt descriptions (kernels/cuda/lt_layout.h), run
// here by a column-major GEMM with cuBLASLt's semantics: operand x stored
// (rows, cols) with leading dimension rows, element (i, j) at i + j * rows,
// op(x) its transpose when `transposed`; D (rows, cols) likewise. Must equal
// the row-major reference for every transpose case and the weight gradient.
static double lt_element(const LtOperand *x, const double *data, uint64_t i, uint64_t j) {
    return x->transposed ? data[j + i * x->rows] : data[i + j * x->rows];
}

static double *lt_emulate(const LtGemm *g, double *const inputs[2], const size_t input_sizes[2]) {
    const LtOperand *A = &g->A, *B = &g->B;
    assert_int_equal(A->transposed ? A->cols : A->rows, g->rows);  // op(A) (rows, inner)
    assert_int_equal(A->transposed ? A->rows : A->cols, g->inner);
    assert_int_equal(B->transposed ? B->cols : B->rows, g->inner);  // op(B) (inner, cols)
    assert_int_equal(B->transposed ? B->rows : B->cols, g->cols);
    assert_int_equal(A->rows * A->cols, input_sizes[A->arg]);
    assert_int_equal(B->rows * B->cols, input_sizes[B->arg]);
    double *d = malloc(g->rows * g->cols * sizeof(double));
    assert_non_null(d);
    for (uint64_t i = 0; i < g->rows; i++) {
        for (uint64_t j = 0; j < g->cols; j++) {
            double sum = 0.0;
            for (uint64_t l = 0; l < g->inner; l++)
                sum += lt_element(A, inputs[A->arg], i, l) * lt_element(B, inputs[B->arg], l, j);
            d[i + j * g->rows] = sum;
        }
    }
    return d;
}

static void expect_same_doubles(const char *what, const double *got, const double *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (fabs(got[i] - want[i]) > 1e-12 * (1.0 + fabs(want[i]))) fail_msg("%s: element %zu", what, i);
}

static void check_lt_layout(MatmulShape s, bool weight_grad) {
    Rng rng;
    rng_seed(&rng, 30 + s.M);
    // the weight grad's inputs: dout (M, N), inp (M, K); as matmul: dout^T @ inp
    MatmulShape as_matmul = weight_grad ? (MatmulShape){s.N, s.K, s.M, true, false} : s;
    size_t sizes[2] = {(size_t)as_matmul.M * as_matmul.K, (size_t)as_matmul.K * as_matmul.N};
    float *a = random_floats(sizes[0], -1.0f, 1.0f, &rng), *b = random_floats(sizes[1], -1.0f, 1.0f, &rng);
    Problem p = {.inputs = {to_double(a, sizes[0]), to_double(b, sizes[1])},
                 .out_size = (size_t)as_matmul.M * as_matmul.N, .forward = matmul_reference, .shape = &as_matmul};
    double *want = reference_forward(&p);
    LtGemm g = weight_grad ? lt_gemm_weight_grad(s.M, s.N, s.K) : lt_gemm_matmul(s.M, s.N, s.K, s.trans_a, s.trans_b);
    double *got = lt_emulate(&g, p.inputs, sizes);
    char what[96];
    snprintf(what, sizeof what, "%s M=%d N=%d K=%d trans_a=%d trans_b=%d", weight_grad ? "weight_grad" : "matmul",
             s.M, s.N, s.K, s.trans_a, s.trans_b);
    expect_same_doubles(what, got, want, p.out_size);
    free_problem(&p);
    free(got), free(want), free(a), free(b);
}

static void test_cublaslt_layouts(void **state) {
    const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {3, 17, 2}, {16, 4, 9}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        for (int t = 0; t < 4; t++)
            check_lt_layout((MatmulShape){shapes[i][0], shapes[i][1], shapes[i][2], t & 1, t & 2}, false);
        check_lt_layout((MatmulShape){shapes[i][0], shapes[i][1], shapes[i][2], false, false}, true);
    }
}

// ----------------------------------------------------------------------------
// embedding

static void test_embedding_forward(void **state) {
    enum { V = 9, C = 5, N = 4 };
    Rng rng;
    rng_seed(&rng, 30);
    float *table = random_floats(V * C, -1.0f, 1.0f, &rng), *out = poisoned_floats(N * C);
    int32_t ids[N] = {4, 0, 8, 4};
    cpu->embedding_forward(cpu, out, ids, table, N, C);
    for (int n = 0; n < N; n++) assert_memory_equal(out + n * C, table + ids[n] * C, C * sizeof(float));
    free(table), free(out);
}

// ----------------------------------------------------------------------------
// RMSNorm

typedef struct RowShape {
    int N, C;
    float eps;
} RowShape;

// inputs x (N, C), weight (C): out = x / sqrt(mean(x^2) + eps) * weight
static double rmsnorm_rstd(const double *x, const RowShape *s) {
    double sum = 0.0;
    for (int i = 0; i < s->C; i++) sum += x[i] * x[i];
    return 1.0 / sqrt(sum / s->C + s->eps);
}

static void rmsnorm_reference(const Problem *p, double *out) {
    const RowShape *s = p->shape;
    for (int n = 0; n < s->N; n++) {
        const double *x = p->inputs[0] + (size_t)n * s->C;
        double rstd = rmsnorm_rstd(x, s);
        for (int i = 0; i < s->C; i++) out[(size_t)n * s->C + i] = x[i] * rstd * p->inputs[1][i];
    }
}

static void test_rmsnorm(void **state) {
    RowShape s = {5, 12, 1e-5f};
    size_t n = (size_t)s.N * s.C;
    Rng rng;
    rng_seed(&rng, 40);
    float *x = random_floats(n, -1.0f, 1.0f, &rng), *weight = random_floats(s.C, -1.0f, 1.0f, &rng), *dout = random_floats(n, -1.0f, 1.0f, &rng);
    float *out = poisoned_floats(n), *rstd = poisoned_floats(s.N);
    float *dx = random_floats(n, -1.0f, 1.0f, &rng), *dx_before = copy_floats(dx, n);
    cpu->rmsnorm_forward(cpu, out, rstd, x, weight, s.N, s.C, s.eps);
    cpu->rmsnorm_backward(cpu, dx, dout, x, weight, rstd, s.N, s.C);

    Problem p = {.inputs = {to_double(x, n), to_double(weight, s.C)}, .input_sizes = {n, (size_t)s.C},
                 .out_size = n, .forward = rmsnorm_reference, .shape = &s};
    double *want = reference_forward(&p), want_rstd[5];
    for (int row = 0; row < s.N; row++) want_rstd[row] = rmsnorm_rstd(p.inputs[0] + row * s.C, &s);
    assert_close("rmsnorm out", out, want, n, FORWARD_TOL);
    assert_close("rmsnorm rstd", rstd, want_rstd, s.N, FORWARD_TOL);
    double *w = to_double(dout, n), *want_dx = fd_gradient(&p, 0, w);
    assert_increment("rmsnorm dx", dx, dx_before, want_dx, n, FD_TOL);
    free_problem(&p);
    free(want), free(w), free(want_dx), free(x), free(weight), free(dout), free(out), free(rstd);
    free(dx), free(dx_before);
}

// The residual add and the norm after it in one op: against transformers'
// LlamaDecoderLayer (hidden = residual + attention output; LlamaRMSNorm) in
// float64, and bit for bit against add_inplace then rmsnorm_forward.
static void test_residual_rmsnorm(void **state) {
    enum { N = 5, C = 37 };
    const size_t n = (size_t)N * C;
    double *x64 = load_fixture("residual_rmsnorm_x.txt", n), *residual64 = load_fixture("residual_rmsnorm_residual.txt", n);
    double *weight64 = load_fixture("residual_rmsnorm_weight.txt", C);
    double *want_sum = load_fixture("residual_rmsnorm_sum.txt", n), *want_out = load_fixture("residual_rmsnorm_out.txt", n);
    float *x = poisoned_floats(n), *residual = poisoned_floats(n), *weight = poisoned_floats(C);
    for (size_t i = 0; i < n; i++) x[i] = (float)x64[i], residual[i] = (float)residual64[i];
    for (int i = 0; i < C; i++) weight[i] = (float)weight64[i];
    float *x_apart = copy_floats(x, n), *out = poisoned_floats(n), *out_apart = poisoned_floats(n);
    float *rstd = poisoned_floats(N), *rstd_apart = poisoned_floats(N);
    cpu->residual_rmsnorm_forward(cpu, out, rstd, x, residual, weight, N, C, 1e-5f);
    assert_close("residual_rmsnorm sum vs torch", x, want_sum, n, FORWARD_TOL);
    assert_close("residual_rmsnorm out vs torch", out, want_out, n, FORWARD_TOL);
    cpu->add_inplace(cpu, x_apart, residual, n);
    cpu->rmsnorm_forward(cpu, out_apart, rstd_apart, x_apart, weight, N, C, 1e-5f);
    assert_memory_equal(x, x_apart, n * sizeof(float));
    assert_memory_equal(out, out_apart, n * sizeof(float));
    assert_memory_equal(rstd, rstd_apart, N * sizeof(float));
    free(x64), free(residual64), free(weight64), free(want_sum), free(want_out);
    free(x), free(residual), free(weight), free(x_apart), free(out), free(out_apart), free(rstd), free(rstd_apart);
}

// ----------------------------------------------------------------------------
// RoPE

typedef struct RopeShape {
    int N, n_head, head_dim;
    const int32_t *positions;
    const float *inv_freq;
} RopeShape;

// input x (N, n_head, hd): rotate_half rotation by positions[n] * inv_freq[i]
static void rope_reference(const Problem *p, double *out) {
    const RopeShape *s = p->shape;
    int half = s->head_dim / 2;
    for (int n = 0; n < s->N; n++) {
        for (int h = 0; h < s->n_head; h++) {
            size_t base = ((size_t)n * s->n_head + h) * s->head_dim;
            const double *x = p->inputs[0] + base;
            for (int i = 0; i < half; i++) {
                double angle = (double)s->positions[n] * s->inv_freq[i];
                out[base + i] = x[i] * cos(angle) - x[i + half] * sin(angle);
                out[base + i + half] = x[i + half] * cos(angle) + x[i] * sin(angle);
            }
        }
    }
}

static void check_rope(const RopeScaling *scaling) {
    enum { N = 5, N_HEAD = 3, HEAD_DIM = 6 };
    size_t n = N * N_HEAD * HEAD_DIM;
    int32_t positions[N] = {3, 17, 0, 250, 9};
    float inv_freq[HEAD_DIM / 2];
    rope_inverse_frequencies(inv_freq, HEAD_DIM, 10000.0f, scaling);
    RopeShape s = {N, N_HEAD, HEAD_DIM, positions, inv_freq};
    Rng rng;
    rng_seed(&rng, 50);
    float *x = random_floats(n, -1.0f, 1.0f, &rng), *dout = random_floats(n, -1.0f, 1.0f, &rng);
    float *rotated = copy_floats(x, n), *dx = copy_floats(dout, n);
    cpu->rope_forward(cpu, rotated, positions, inv_freq, N, N_HEAD, HEAD_DIM);
    cpu->rope_backward(cpu, dx, positions, inv_freq, N, N_HEAD, HEAD_DIM);

    Problem p = {.inputs = {to_double(x, n)}, .input_sizes = {n}, .out_size = n,
                 .forward = rope_reference, .shape = &s};
    double *want = reference_forward(&p), *w = to_double(dout, n), *want_dx = fd_gradient(&p, 0, w);
    assert_close("rope forward", rotated, want, n, ROPE_TOL);
    assert_close("rope backward", dx, want_dx, n, FD_TOL);
    free_problem(&p);
    free(want), free(w), free(want_dx), free(x), free(dout), free(rotated), free(dx);
}

static void test_rope_plain(void **state) { check_rope(NULL); }

// original 256 puts the three frequencies of head_dim 6 (wavelengths 6, 135,
// 2922) in the kept, blended and divided regimes of the llama3 scaling.
static void test_rope_llama3(void **state) {
    RopeScaling scaling = {.llama3 = true, .factor = 8.0f, .low_freq_factor = 1.0f,
                           .high_freq_factor = 4.0f, .original_max_position = 256};
    float plain[3], scaled[3];
    rope_inverse_frequencies(plain, 6, 10000.0f, NULL);
    rope_inverse_frequencies(scaled, 6, 10000.0f, &scaling);
    assert_true(scaled[0] == plain[0]);
    assert_true(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0f);
    assert_true(fabsf(scaled[2] - plain[2] / 8.0f) <= 1e-7f * plain[2]);
    check_rope(&scaling);
}

// ----------------------------------------------------------------------------
// attention

typedef struct AttentionShape {
    int B, T, n_head, n_kv_head, head_dim;
    const int32_t *seq_start; // (B, T) packed rows, or NULL
} AttentionShape;

static int reference_first_key(const AttentionShape *s, int b, int t) {
    return s->seq_start ? s->seq_start[(size_t)b * s->T + t] : 0;
}

// Scores of query (b, t, h) against keys seq_start <= u <= t, and their
// log-sum-exp; scores[u] of other keys are left as they were.
static double reference_scores(const AttentionShape *s, const double *q, const double *k, int b,
                               int t, int h, double *scores) {
    int kv_head = h / (s->n_head / s->n_kv_head), hd = s->head_dim;
    const double *q_row = q + (((size_t)b * s->T + t) * s->n_head + h) * hd;
    double max_score = -INFINITY, sum = 0.0;
    for (int u = reference_first_key(s, b, t); u <= t; u++) {
        const double *k_row = k + (((size_t)b * s->T + u) * s->n_kv_head + kv_head) * hd;
        double dot = 0.0;
        for (int i = 0; i < hd; i++) dot += q_row[i] * k_row[i];
        scores[u] = dot / sqrt((double)hd);
        max_score = fmax(max_score, scores[u]);
    }
    for (int u = reference_first_key(s, b, t); u <= t; u++) sum += exp(scores[u] - max_score);
    return max_score + log(sum);
}

// inputs q, k, v; out (B, T, n_head, hd) = causal softmax(q k^T / sqrt(hd)) v
static void attention_reference(const Problem *p, double *out) {
    const AttentionShape *s = p->shape;
    int hd = s->head_dim;
    double scores[64];
    assert_true(s->T <= 64);
    for (int b = 0; b < s->B; b++) {
        for (int t = 0; t < s->T; t++) {
            for (int h = 0; h < s->n_head; h++) {
                double lse = reference_scores(s, p->inputs[0], p->inputs[1], b, t, h, scores);
                int kv_head = h / (s->n_head / s->n_kv_head);
                double *out_row = out + (((size_t)b * s->T + t) * s->n_head + h) * hd;
                for (int i = 0; i < hd; i++) out_row[i] = 0.0;
                for (int u = reference_first_key(s, b, t); u <= t; u++) {
                    const double *v_row = p->inputs[2] + (((size_t)b * s->T + u) * s->n_kv_head + kv_head) * hd;
                    for (int i = 0; i < hd; i++) out_row[i] += exp(scores[u] - lse) * v_row[i];
                }
            }
        }
    }
}

static double *reference_lse(const Problem *p) {
    const AttentionShape *s = p->shape;
    double scores[64], *lse = malloc((size_t)s->B * s->n_head * s->T * sizeof(double));
    assert_non_null(lse);
    for (int b = 0; b < s->B; b++) {
        for (int h = 0; h < s->n_head; h++) {
            for (int t = 0; t < s->T; t++) {
                lse[((size_t)b * s->n_head + h) * s->T + t] =
                    reference_scores(s, p->inputs[0], p->inputs[1], b, t, h, scores);
            }
        }
    }
    return lse;
}

static void check_attention(AttentionShape s) {
    size_t q_size = (size_t)s.B * s.T * s.n_head * s.head_dim;
    size_t kv_size = (size_t)s.B * s.T * s.n_kv_head * s.head_dim;
    size_t lse_size = (size_t)s.B * s.n_head * s.T;
    Rng rng;
    rng_seed(&rng, 60 + s.n_kv_head);
    float *q = random_floats(q_size, -1.0f, 1.0f, &rng), *k = random_floats(kv_size, -1.0f, 1.0f, &rng), *v = random_floats(kv_size, -1.0f, 1.0f, &rng);
    float *dout = random_floats(q_size, -1.0f, 1.0f, &rng), *out = poisoned_floats(q_size), *lse = poisoned_floats(lse_size);
    float *dq = random_floats(q_size, -1.0f, 1.0f, &rng), *dk = random_floats(kv_size, -1.0f, 1.0f, &rng), *dv = random_floats(kv_size, -1.0f, 1.0f, &rng);
    float *dq_before = copy_floats(dq, q_size), *dk_before = copy_floats(dk, kv_size);
    float *dv_before = copy_floats(dv, kv_size);
    cpu->attention_forward(cpu, out, lse, q, k, v, s.seq_start, NULL, s.B, s.T, s.n_head, s.n_kv_head, s.head_dim);
    cpu->attention_backward(cpu, dq, dk, dv, dout, out, lse, q, k, v, s.seq_start, NULL, s.B, s.T, s.n_head,
                            s.n_kv_head, s.head_dim);

    Problem p = {.inputs = {to_double(q, q_size), to_double(k, kv_size), to_double(v, kv_size)},
                 .input_sizes = {q_size, kv_size, kv_size}, .out_size = q_size,
                 .forward = attention_reference, .shape = &s};
    double *want = reference_forward(&p), *want_lse = reference_lse(&p), *w = to_double(dout, q_size);
    assert_close("attention out", out, want, q_size, FORWARD_TOL);
    assert_close("attention lse", lse, want_lse, lse_size, FORWARD_TOL);
    double *want_dq = fd_gradient(&p, 0, w), *want_dk = fd_gradient(&p, 1, w), *want_dv = fd_gradient(&p, 2, w);
    assert_increment("attention dq", dq, dq_before, want_dq, q_size, FD_TOL);
    assert_increment("attention dk", dk, dk_before, want_dk, kv_size, FD_TOL);
    assert_increment("attention dv", dv, dv_before, want_dv, kv_size, FD_TOL);
    free_problem(&p);
    free(want), free(want_lse), free(w), free(want_dq), free(want_dk), free(want_dv);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
    free(dq_before), free(dk_before), free(dv_before);
}

static void test_attention_gqa(void **state) { check_attention((AttentionShape){2, 5, 4, 2, 6, NULL}); }

static void test_attention_mha(void **state) { check_attention((AttentionShape){1, 7, 3, 3, 4, NULL}); }

static void test_attention_mqa(void **state) { check_attention((AttentionShape){1, 4, 2, 1, 5, NULL}); }

// Packed rows: segments of 1, 3 and 2 tokens, then a row that is one segment.
static const int PACKED_SEGMENTS[] = {1, 3, 2, 6};

static void test_attention_packed_gradcheck(void **state) {
    int32_t seq_start[2 * 6];
    packed_seq_start(seq_start, 2, 6, PACKED_SEGMENTS, 4);
    check_attention((AttentionShape){2, 6, 4, 2, 5, seq_start});
}

// Rows (b, first .. first + T) of x (B_total, T_total, heads, hd) as (1, T, heads, hd).
static float *segment_rows(const float *x, int T_total, int heads, int hd, int b, int first, int T) {
    size_t row = (size_t)heads * hd;
    float *out = malloc((size_t)T * row * sizeof(float));
    assert_non_null(out);
    memcpy(out, x + ((size_t)b * T_total + first) * row, (size_t)T * row * sizeof(float));
    return out;
}

// Packed attention equals, segment by segment, the attention of the segment
// alone (forward, lse and the three gradients, bit for bit).
static void test_attention_packed_equals_segments(void **state) {
    enum { B = 2, T = 6, H = 4, KV = 2, HD = 5 };
    int32_t seq_start[B * T];
    packed_seq_start(seq_start, B, T, PACKED_SEGMENTS, 4);
    size_t q_size = (size_t)B * T * H * HD, kv_size = (size_t)B * T * KV * HD;
    Rng rng;
    rng_seed(&rng, 77);
    float *q = random_floats(q_size, -1, 1, &rng), *k = random_floats(kv_size, -1, 1, &rng);
    float *v = random_floats(kv_size, -1, 1, &rng), *dout = random_floats(q_size, -1, 1, &rng);
    float *out = poisoned_floats(q_size), *lse = poisoned_floats((size_t)B * H * T);
    float *dq = calloc(q_size, sizeof(float)), *dk = calloc(kv_size, sizeof(float)), *dv = calloc(kv_size, sizeof(float));
    cpu->attention_forward(cpu, out, lse, q, k, v, seq_start, NULL, B, T, H, KV, HD);
    cpu->attention_backward(cpu, dq, dk, dv, dout, out, lse, q, k, v, seq_start, NULL, B, T, H, KV, HD);
    int checked = 0;
    for (int i = 0; i < B * T; i++) {
        int b = i / T, first = i % T, length = 1;
        if (seq_start[i] != first) continue; // not a segment's first token
        while (first + length < T && seq_start[i + length] == first) length++;
        float *seg[] = {segment_rows(q, T, H, HD, b, first, length), segment_rows(k, T, KV, HD, b, first, length),
                        segment_rows(v, T, KV, HD, b, first, length), segment_rows(dout, T, H, HD, b, first, length)};
        size_t seg_q = (size_t)length * H * HD, seg_kv = (size_t)length * KV * HD;
        float *seg_out = poisoned_floats(seg_q), *seg_lse = poisoned_floats((size_t)H * length);
        float *seg_dq = calloc(seg_q, sizeof(float)), *seg_dk = calloc(seg_kv, sizeof(float));
        float *seg_dv = calloc(seg_kv, sizeof(float));
        cpu->attention_forward(cpu, seg_out, seg_lse, seg[0], seg[1], seg[2], NULL, NULL, 1, length, H, KV, HD);
        cpu->attention_backward(cpu, seg_dq, seg_dk, seg_dv, seg[3], seg_out, seg_lse, seg[0], seg[1], seg[2], NULL,
                                NULL, 1, length, H, KV, HD);
        size_t q_at = ((size_t)b * T + first) * H * HD, kv_at = ((size_t)b * T + first) * KV * HD;
        assert_memory_equal(out + q_at, seg_out, seg_q * sizeof(float));
        assert_memory_equal(dq + q_at, seg_dq, seg_q * sizeof(float));
        assert_memory_equal(dk + kv_at, seg_dk, seg_kv * sizeof(float));
        assert_memory_equal(dv + kv_at, seg_dv, seg_kv * sizeof(float));
        for (int h = 0; h < H; h++)
            assert_memory_equal(lse + ((size_t)b * H + h) * T + first, seg_lse + (size_t)h * length,
                                length * sizeof(float));
        for (int j = 0; j < 4; j++) free(seg[j]);
        free(seg_out), free(seg_lse), free(seg_dq), free(seg_dk), free(seg_dv);
        checked++;
    }
    assert_int_equal(checked, 4);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
}

// Fused RoPE (AttentionRope): the op on un-rotated q, k equals rope_forward, then attention, then
// rope_backward of dq, dk; the gradients are still added. Positions restart at each packed segment.
static void check_attention_rope(int B, int T, int H, int KV, int HD, const int *segments, int n_segments) {
    size_t q_size = (size_t)B * T * H * HD, kv_size = (size_t)B * T * KV * HD, lse_size = (size_t)B * H * T;
    int32_t *seq_start = NULL, positions[B * T];
    if (segments) {
        seq_start = malloc((size_t)B * T * sizeof(int32_t));
        assert_non_null(seq_start);
        packed_seq_start(seq_start, B, T, segments, n_segments);
    }
    for (int i = 0; i < B * T; i++) positions[i] = 3 * (i % T - (seq_start ? seq_start[i] : 0)) + 1;
    float inv_freq[HD / 2];
    RopeScaling llama31 = {.llama3 = true, .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                           .original_max_position = 64};
    rope_inverse_frequencies(inv_freq, HD, 500000.0f, &llama31);
    AttentionRope rope = {positions, inv_freq};
    Rng rng;
    rng_seed(&rng, 90 + T);
    float *q = random_floats(q_size, -1, 1, &rng), *k = random_floats(kv_size, -1, 1, &rng);
    float *v = random_floats(kv_size, -1, 1, &rng), *dout = random_floats(q_size, -1, 1, &rng);
    float *grad[3] = {random_floats(q_size, -1, 1, &rng), random_floats(kv_size, -1, 1, &rng),
                      random_floats(kv_size, -1, 1, &rng)};
    float *out = poisoned_floats(q_size), *lse = poisoned_floats(lse_size);
    float *ref_grad[3] = {copy_floats(grad[0], q_size), copy_floats(grad[1], kv_size),
                          copy_floats(grad[2], kv_size)};
    float *ref_out = poisoned_floats(q_size), *ref_lse = poisoned_floats(lse_size);
    float *qr = copy_floats(q, q_size), *kr = copy_floats(k, kv_size);
    float *ref_dq = calloc(q_size, sizeof(float)), *ref_dk = calloc(kv_size, sizeof(float));
    cpu->attention_forward(cpu, out, lse, q, k, v, seq_start, &rope, B, T, H, KV, HD);
    cpu->attention_backward(cpu, grad[0], grad[1], grad[2], dout, out, lse, q, k, v, seq_start, &rope, B, T, H, KV, HD);

    cpu->rope_forward(cpu, qr, positions, inv_freq, B * T, H, HD);
    cpu->rope_forward(cpu, kr, positions, inv_freq, B * T, KV, HD);
    cpu->attention_forward(cpu, ref_out, ref_lse, qr, kr, v, seq_start, NULL, B, T, H, KV, HD);
    cpu->attention_backward(cpu, ref_dq, ref_dk, ref_grad[2], dout, ref_out, ref_lse, qr, kr, v, seq_start, NULL, B,
                            T, H, KV, HD);
    cpu->rope_backward(cpu, ref_dq, positions, inv_freq, B * T, H, HD);
    cpu->rope_backward(cpu, ref_dk, positions, inv_freq, B * T, KV, HD);
    for (size_t i = 0; i < q_size; i++) ref_grad[0][i] += ref_dq[i];
    for (size_t i = 0; i < kv_size; i++) ref_grad[1][i] += ref_dk[i];
    double *want_out = to_double(ref_out, q_size), *want_lse = to_double(ref_lse, lse_size);
    assert_close("attention rope out", out, want_out, q_size, 1e-5);
    assert_close("attention rope lse", lse, want_lse, lse_size, 1e-5);
    size_t sizes[3] = {q_size, kv_size, kv_size};
    const char *names[3] = {"attention rope dq", "attention rope dk", "attention rope dv"};
    for (int g = 0; g < 3; g++) {
        double *want = to_double(ref_grad[g], sizes[g]);
        assert_close(names[g], grad[g], want, sizes[g], 1e-5);
        free(want), free(grad[g]), free(ref_grad[g]);
    }
    free(want_out), free(want_lse), free(seq_start), free(q), free(k), free(v), free(dout), free(out), free(lse);
    free(ref_out), free(ref_lse), free(qr), free(kr), free(ref_dq), free(ref_dk);
}

static void test_attention_rope_gqa(void **state) { check_attention_rope(2, 9, 8, 2, 16, NULL, 0); }

static void test_attention_rope_packed(void **state) {
    check_attention_rope(2, 6, 4, 1, 8, PACKED_SEGMENTS, 4);
}

// More keys than one of the backend's key chunks (64), and query heads 8 to a kv head.
static void test_attention_rope_long_packed(void **state) {
    static const int segments[] = {70, 80, 150};
    check_attention_rope(2, 150, 8, 1, 12, segments, 3);
}

// One forward against torch's scaled_dot_product_attention: causal
// (prefix "attention"), or with the block-diagonal causal mask of packed rows
// ("attention_packed", which also holds seq_start).
static void check_attention_vs_torch(const char *prefix, bool packed) {
    char name[64];
    snprintf(name, sizeof name, "%s_shape.txt", prefix);
    double *dims = load_fixture(name, 5);
    int B = (int)dims[0], T = (int)dims[1], H = (int)dims[2], KV = (int)dims[3], hd = (int)dims[4];
    size_t q_size = (size_t)B * T * H * hd, kv_size = (size_t)B * T * KV * hd, lse_size = (size_t)B * H * T;
    const char *parts[] = {"q", "k", "v", "out", "lse", "seq_start"};
    size_t sizes[] = {q_size, kv_size, kv_size, q_size, lse_size, (size_t)B * T};
    double *data[6] = {0};
    for (int i = 0; i < (packed ? 6 : 5); i++) {
        snprintf(name, sizeof name, "%s_%s.txt", prefix, parts[i]);
        data[i] = load_fixture(name, sizes[i]);
    }
    float *qf = poisoned_floats(q_size), *kf = poisoned_floats(kv_size), *vf = poisoned_floats(kv_size);
    for (size_t i = 0; i < q_size; i++) qf[i] = (float)data[0][i];
    for (size_t i = 0; i < kv_size; i++) kf[i] = (float)data[1][i], vf[i] = (float)data[2][i];
    int32_t *seq_start = NULL;
    if (packed) {
        seq_start = malloc((size_t)B * T * sizeof(int32_t));
        assert_non_null(seq_start);
        for (int i = 0; i < B * T; i++) seq_start[i] = (int32_t)data[5][i];
    }
    float *out = poisoned_floats(q_size), *lse = poisoned_floats(lse_size);
    cpu->attention_forward(cpu, out, lse, qf, kf, vf, seq_start, NULL, B, T, H, KV, hd);
    assert_close("attention vs torch", out, data[3], q_size, FORWARD_TOL);
    assert_close("attention lse vs torch", lse, data[4], lse_size, FORWARD_TOL);
    free(dims), free(seq_start);
    for (int i = 0; i < 6; i++) free(data[i]);
    free(qf), free(kf), free(vf), free(out), free(lse);
}

static void test_attention_vs_torch(void **state) { check_attention_vs_torch("attention", false); }

static void test_attention_packed_vs_torch(void **state) { check_attention_vs_torch("attention_packed", true); }

// ----------------------------------------------------------------------------
// SwiGLU

// inputs gate, up: out = gate / (1 + e^-gate) * up
static void swiglu_reference(const Problem *p, double *out) {
    for (size_t i = 0; i < p->out_size; i++) {
        double g = p->inputs[0][i];
        out[i] = g / (1.0 + exp(-g)) * p->inputs[1][i];
    }
}

static void test_swiglu(void **state) {
    enum { N = 37 };
    Rng rng;
    rng_seed(&rng, 70);
    float *gate = random_floats(N, -1.0f, 1.0f, &rng), *up = random_floats(N, -1.0f, 1.0f, &rng), *dout = random_floats(N, -1.0f, 1.0f, &rng);
    for (int i = 0; i < N; i++) gate[i] *= 4.0f;
    float *out = poisoned_floats(N), *dgate = random_floats(N, -1.0f, 1.0f, &rng), *dup = random_floats(N, -1.0f, 1.0f, &rng);
    float *dgate_before = copy_floats(dgate, N), *dup_before = copy_floats(dup, N);
    cpu->swiglu_forward(cpu, out, gate, up, N);
    cpu->swiglu_backward(cpu, dgate, dup, dout, gate, up, N);

    Problem p = {.inputs = {to_double(gate, N), to_double(up, N)}, .input_sizes = {N, N},
                 .out_size = N, .forward = swiglu_reference};
    double *want = reference_forward(&p), *w = to_double(dout, N);
    double *want_dgate = fd_gradient(&p, 0, w), *want_dup = fd_gradient(&p, 1, w);
    assert_close("swiglu out", out, want, N, FORWARD_TOL);
    assert_increment("swiglu dgate", dgate, dgate_before, want_dgate, N, FD_TOL);
    assert_increment("swiglu dup", dup, dup_before, want_dup, N, FD_TOL);
    free_problem(&p);
    free(want), free(w), free(want_dgate), free(want_dup), free(gate), free(up), free(dout);
    free(out), free(dgate), free(dup), free(dgate_before), free(dup_before);
}

// Far out in the tails silu(g) is 0 and g, and NaN stays NaN.
static void test_swiglu_tails(void **state) {
    float gate[4] = {-200.0f, 200.0f, -INFINITY, NAN}, up[4] = {2.0f, 2.0f, 2.0f, 2.0f}, out[4];
    cpu->swiglu_forward(cpu, out, gate, up, 4);
    assert_true(fabsf(out[0]) < 1e-30f && out[1] == 400.0f && isnan(out[3]));
}

// ----------------------------------------------------------------------------
// dropout

typedef struct DropoutShape {
    float p;
    uint64_t seed, offset;
} DropoutShape;

// input x: out = x * keep / (1 - p), keep = rng_uniform_at(seed, offset + i) >= p
static void dropout_reference(const Problem *p, double *out) {
    const DropoutShape *s = p->shape;
    for (size_t i = 0; i < p->out_size; i++) {
        bool keep = rng_uniform_at(s->seed, s->offset + i) >= s->p;
        out[i] = keep ? p->inputs[0][i] / (1.0 - s->p) : 0.0;
    }
}

static void test_dropout_mask(void **state) {
    enum { N = 100000 };
    const float p = 0.25f;
    const uint64_t seed = 42, offset = 1000;
    Rng rng;
    rng_seed(&rng, 80);
    float *x = random_floats(N, -1.0f, 1.0f, &rng), *dout = random_floats(N, -1.0f, 1.0f, &rng), *out = poisoned_floats(N);
    float *shifted = poisoned_floats(N - 1), *dx = random_floats(N, -1.0f, 1.0f, &rng), *dx_before = copy_floats(dx, N);
    cpu->dropout_forward(cpu, out, x, N, p, seed, offset);
    cpu->dropout_backward(cpu, dx, dout, N, p, seed, offset);
    cpu->dropout_forward(cpu, shifted, x + 1, N - 1, p, seed, offset + 1);
    // kept elements are scaled by 1 / (1 - p), and the backward uses the same mask
    size_t kept = 0;
    for (size_t i = 0; i < N; i++) {
        float scale = out[i] != 0.0f ? 1.0f / (1.0f - p) : 0.0f;
        kept += out[i] != 0.0f;
        assert_true(fabsf(out[i] - x[i] * scale) <= 1e-6f);
        assert_true(fabsf(dx[i] - dx_before[i] - dout[i] * scale) <= 1e-6f);
        if (i > 0) assert_true(shifted[i - 1] == out[i]);
    }
    assert_true(fabs((double)kept / N - (1.0 - p)) < 0.01);
    free(x), free(dout), free(out), free(shifted), free(dx), free(dx_before);
}

static void test_dropout_zero_is_identity(void **state) {
    enum { N = 1000 };
    Rng rng;
    rng_seed(&rng, 81);
    float *x = random_floats(N, -1.0f, 1.0f, &rng), *out = poisoned_floats(N), *dx = random_floats(N, -1.0f, 1.0f, &rng);
    float *dx_before = copy_floats(dx, N);
    cpu->dropout_forward(cpu, out, x, N, 0.0f, 7, 0);
    cpu->dropout_backward(cpu, dx, x, N, 0.0f, 7, 0);
    assert_memory_equal(out, x, N * sizeof(float));
    for (int i = 0; i < N; i++) assert_true(dx[i] == dx_before[i] + x[i]);
    free(x), free(out), free(dx), free(dx_before);
}

static void test_dropout_backward(void **state) {
    enum { N = 40 };
    DropoutShape s = {0.3f, 1234, 77};
    Rng rng;
    rng_seed(&rng, 82);
    float *x = random_floats(N, -1.0f, 1.0f, &rng), *dout = random_floats(N, -1.0f, 1.0f, &rng), *out = poisoned_floats(N);
    float *dx = random_floats(N, -1.0f, 1.0f, &rng), *dx_before = copy_floats(dx, N);
    cpu->dropout_forward(cpu, out, x, N, s.p, s.seed, s.offset);
    cpu->dropout_backward(cpu, dx, dout, N, s.p, s.seed, s.offset);
    Problem p = {.inputs = {to_double(x, N)}, .input_sizes = {N}, .out_size = N,
                 .forward = dropout_reference, .shape = &s};
    double *want = reference_forward(&p), *w = to_double(dout, N), *want_dx = fd_gradient(&p, 0, w);
    assert_close("dropout out", out, want, N, FORWARD_TOL);
    assert_increment("dropout dx", dx, dx_before, want_dx, N, FD_TOL);
    free_problem(&p);
    free(want), free(w), free(want_dx), free(x), free(dout), free(out), free(dx), free(dx_before);
}

// ----------------------------------------------------------------------------
// cross-entropy

typedef struct CrossEntropyShape {
    int N, V;
    const int32_t *targets;
    double grad_scale;
} CrossEntropyShape;

// input logits (N, V): out[0] = grad_scale * sum over kept rows of -log softmax[target]
static void cross_entropy_reference(const Problem *p, double *out) {
    const CrossEntropyShape *s = p->shape;
    double loss = 0.0;
    for (int n = 0; n < s->N; n++) {
        if (s->targets[n] == -100) continue;
        const double *row = p->inputs[0] + (size_t)n * s->V;
        double max_logit = -INFINITY, sum = 0.0;
        for (int j = 0; j < s->V; j++) max_logit = fmax(max_logit, row[j]);
        for (int j = 0; j < s->V; j++) sum += exp(row[j] - max_logit);
        loss += max_logit + log(sum) - row[s->targets[n]];
    }
    out[0] = s->grad_scale * loss;
}

static void test_cross_entropy(void **state) {
    enum { N = 6, V = 11 };
    int32_t targets[N] = {3, -100, 0, 10, -100, 7};
    CrossEntropyShape s = {N, V, targets, 0.37};
    Rng rng;
    rng_seed(&rng, 90);
    float *logits = poisoned_floats(N * V), *dlogits = poisoned_floats(N * V);
    fill_uniform(logits, N * V, -3.0f, 3.0f, &rng);
    float loss_sum = 1.5f, loss_only = 1.5f;
    cpu->cross_entropy(cpu, &loss_sum, dlogits, logits, targets, N, V, (float)s.grad_scale);
    cpu->cross_entropy(cpu, &loss_only, NULL, logits, targets, N, V, (float)s.grad_scale);

    Problem p = {.inputs = {to_double(logits, N * V)}, .input_sizes = {N * V}, .out_size = 1,
                 .forward = cross_entropy_reference, .shape = &s};
    double loss, one = 1.0;
    cross_entropy_reference(&p, &loss);
    double want_loss = 1.5 + loss / s.grad_scale;
    assert_close("cross-entropy loss", &loss_sum, &want_loss, 1, FORWARD_TOL);
    assert_true(loss_only == loss_sum);
    double *want_dlogits = fd_gradient(&p, 0, &one);
    assert_close("cross-entropy dlogits", dlogits, want_dlogits, N * V, FD_TOL);
    for (int j = 0; j < V; j++) assert_true(dlogits[1 * V + j] == 0.0f && dlogits[4 * V + j] == 0.0f);

    float aliased_loss = 0.0f;
    float *aliased = copy_floats(logits, N * V);
    cpu->cross_entropy(cpu, &aliased_loss, aliased, aliased, targets, N, V, (float)s.grad_scale);
    assert_memory_equal(aliased, dlogits, N * V * sizeof(float));
    free_problem(&p);
    free(want_dlogits), free(logits), free(dlogits), free(aliased);
}

// Masked classes (logits -inf, as vision rows mask them) get softmax 0 exactly;
// a NaN logit makes the loss NaN rather than vanishing from the sum.
static void test_cross_entropy_masked_and_nan(void **state) {
    float logits[4] = {-INFINITY, 0.5f, -INFINITY, 1.0f}, dlogits[4], loss = 0.0f;
    int32_t target = 3;
    cpu->cross_entropy(cpu, &loss, dlogits, logits, &target, 1, 4, 1.0f);
    double want = log(exp(0.5) + exp(1.0)) - 1.0;
    assert_close("masked cross-entropy loss", &loss, &want, 1, FORWARD_TOL);
    assert_true(dlogits[0] == 0.0f && dlogits[2] == 0.0f && isfinite(dlogits[1]) && dlogits[3] < 0.0f);
    logits[1] = NAN, loss = 0.0f;
    cpu->cross_entropy(cpu, &loss, NULL, logits, &target, 1, 4, 1.0f);
    assert_true(isnan(loss));
}

// ----------------------------------------------------------------------------
// memory, elementwise and reductions

static void test_memory_round_trip(void **state) {
    enum { N = 1000 };
    Error err = {{0}};
    Rng rng;
    rng_seed(&rng, 100);
    float *host = random_floats(N, -1.0f, 1.0f, &rng), *back = poisoned_floats(N);
    float *device = cpu->alloc(cpu, N * sizeof(float), &err), *act = cpu->alloc(cpu, N * sizeof(float), &err);
    assert_non_null(device);
    assert_non_null(act);
    cpu->upload(cpu, device, host, N * sizeof(float));
    cpu->params_to_act(cpu, act, device, N);
    cpu->download_f32(cpu, back, act, N);
    assert_memory_equal(back, host, N * sizeof(float));
    cpu->zero(cpu, device, N * sizeof(float));
    cpu->upload_f32(cpu, act, host, N);
    cpu->download(cpu, back, device, N * sizeof(float));
    for (int i = 0; i < N; i++) assert_true(back[i] == 0.0f);
    cpu->add_inplace(cpu, device, act, N);
    cpu->scale_f32(cpu, device, 2.0f, N);
    cpu->synchronize(cpu);
    for (int i = 0; i < N; i++) assert_true(device[i] == 2.0f * host[i]);
    assert_true(cpu->check(cpu, &err));
    assert_string_equal(cpu->name, "cpu");
    assert_int_equal(cpu->act_dtype, DTYPE_F32);
    cpu->free(cpu, device), cpu->free(cpu, act);
    free(host), free(back);
}

// 1e4^2 followed by a thousand 1s: an fp32 running sum would stay at 1e8.
static void test_sum_squares_in_double(void **state) {
    enum { N = 1001 };
    float g[N], total = 0.0f;
    g[0] = 1e4f;
    for (int i = 1; i < N; i++) g[i] = 1.0f;
    cpu->sum_squares(cpu, &total, g, N);
    assert_true(total == 100001000.0f);
    cpu->sum_squares(cpu, &total, g + 1, 3);
    assert_true(total == 100001000.0f + 3.0f);
}

// peak_bytes is the high water of live allocations: a freed block's bytes
// are reused, only what is held at once counts.
static void test_peak_bytes_counts_live_allocations(void **state) {
    const Ops *ops = ops_cpu();
    Error err;
    size_t before = ops->peak_bytes(ops), big = (size_t)64 << 20;
    void *a = ops->alloc(ops, big, &err);
    assert_non_null(a);
    assert_true(ops->peak_bytes(ops) >= big);
    size_t with_a = ops->peak_bytes(ops);
    ops->free(ops, a);
    void *b = ops->alloc(ops, big / 2, &err), *c = ops->alloc(ops, big / 2, &err);
    assert_non_null(b);
    assert_non_null(c);
    assert_true(ops->peak_bytes(ops) == with_a); // a's bytes were given back first
    void *d = ops->alloc(ops, big, &err);
    assert_non_null(d);
    assert_true(ops->peak_bytes(ops) >= before + 2 * big);
    ops->free(ops, b), ops->free(ops, c), ops->free(ops, d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peak_bytes_counts_live_allocations),
        cmocka_unit_test(test_rope_frequencies_plain),
        cmocka_unit_test(test_rope_frequencies_llama31),
        cmocka_unit_test(test_matmul_transposes),
        cmocka_unit_test(test_linear_backward),
        cmocka_unit_test(test_cublaslt_layouts),
        cmocka_unit_test(test_embedding_forward),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_residual_rmsnorm),
        cmocka_unit_test(test_rope_plain),
        cmocka_unit_test(test_rope_llama3),
        cmocka_unit_test(test_attention_gqa),
        cmocka_unit_test(test_attention_mha),
        cmocka_unit_test(test_attention_mqa),
        cmocka_unit_test(test_attention_vs_torch),
        cmocka_unit_test(test_attention_packed_gradcheck),
        cmocka_unit_test(test_attention_packed_equals_segments),
        cmocka_unit_test(test_attention_packed_vs_torch),
        cmocka_unit_test(test_attention_rope_gqa),
        cmocka_unit_test(test_attention_rope_packed),
        cmocka_unit_test(test_attention_rope_long_packed),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_swiglu_tails),
        cmocka_unit_test(test_dropout_mask),
        cmocka_unit_test(test_dropout_zero_is_identity),
        cmocka_unit_test(test_dropout_backward),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_cross_entropy_masked_and_nan),
        cmocka_unit_test(test_memory_round_trip),
        cmocka_unit_test(test_sum_squares_in_double),
    };
    return cmocka_run_group_tests(tests, setup_ops, NULL);
}
