// Every CUDA op against the CPU backend (the fp32 oracle) on fresh random
// inputs, several shapes including odd ones. Inputs are rounded to bf16 on
// the host first, so both backends see the same values and the difference is
// the CUDA op's bf16 storage and accumulation order only. Outputs the op
// writes are poisoned with NaN first; outputs it adds into start from random
// values of the gradient's own size, so "write" instead of "add" fails.
// Error: ||gpu - cpu|| / ||cpu||, < 1e-2 for bf16 outputs, < 1e-5 for fp32 ops.
// Without a usable CUDA device every test is skipped with the reason.
#include "gpu_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "offload/pinned.h"

#define BF16_TOL 1e-2
#define F32_TOL 1e-5
#define STAT_TOL 1e-4  // fp32 results of bf16 inputs: rstd, lse, loss

// ----------------------------------------------------------------------------
// inputs

static double rms(const float *x, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (double)x[i] * x[i];
    return n > 0 ? sqrt(sum / n) : 0;
}

// Starting values for an output the op adds into, of the size of `grad`.
static float *accumulator_like(const float *grad, size_t n) {
    // At least 1e-3: a gradient that is zero but for rounding (attention over one
    // token: dS = P (dP - D) with dP = D) would make it as small as that noise,
    // which differs between backends.
    float scale = fmaxf((float)rms(grad, n), 1e-3f);
    return random_act(n, -scale, scale);
}

// ----------------------------------------------------------------------------
// memory and conversions

static void test_upload_download_round_trip(void **state) {
    size_t n = 1000003;
    float *x = random_act(n, -3, 3);
    void *dev = gpu_act(x, n);
    float *back = gpu_act_result(dev, n);
    assert_memory_equal(back, x, n * sizeof(float));  // bf16 values survive exactly
    free(back);
    gpu->free(gpu, dev);
    free(x);
}

static float *pinned_floats(size_t n) {
    Error err;
    float *x = pinned_alloc(n * sizeof(float), "the test's pinned buffer", &err);
    if (!x) fail_msg("%s", err.message);
    return x;
}

// upload, download, upload_f32 and download_f32 return with the copy done,
// also from and into pinned host memory, which cudaMemcpyAsync does not
// stage: the source may be overwritten, and the destination read, at once.
static void test_copies_are_done_on_return(void **state) {
    size_t n = 40009;
    float *x = random_act(n, -2, 2), *pinned = pinned_floats(n);
    memcpy(pinned, x, n * sizeof(float));
    float *dev = gpu_alloc(n * sizeof(float));
    gpu->upload(gpu, dev, pinned, n * sizeof(float));
    memset(pinned, 0, n * sizeof(float));
    gpu->download(gpu, pinned, dev, n * sizeof(float));
    assert_memory_equal(pinned, x, n * sizeof(float));

    void *act = gpu_alloc(n * dtype_size(gpu->act_dtype));
    gpu->upload_f32(gpu, act, pinned, n);
    memset(pinned, 0, n * sizeof(float));
    gpu->download_f32(gpu, pinned, act, n);
    assert_memory_equal(pinned, x, n * sizeof(float));  // bf16 values survive exactly
    gpu_ok();
    gpu->free(gpu, act), gpu->free(gpu, dev), pinned_free(pinned), free(x);
}

// upload_async takes the bytes before it returns, through two halves of
// pinned staging: several uploads in a row, more than the whole staging,
// with no wait between them, all arrive (a half is refilled only once the
// copies out of it have run).
static void test_upload_async_past_the_staging(void **state) {
    enum { UPLOADS = 5 };
    size_t n = CUDA_UPLOAD_STAGING_BYTES / 2 / sizeof(int32_t) * 3 / 4;  // 3 MiB: one per half
    int32_t *host = malloc(n * sizeof(int32_t));
    assert_non_null(host);
    void *dev[UPLOADS];
    for (int u = 0; u < UPLOADS; u++) {
        for (size_t i = 0; i < n; i++) host[i] = (int32_t)(u * n + i);
        dev[u] = gpu_alloc(n * sizeof(int32_t));
        gpu->upload_async(gpu, dev[u], host, n * sizeof(int32_t));
    }
    for (int u = 0; u < UPLOADS; u++) {
        gpu->download(gpu, host, dev[u], n * sizeof(int32_t));
        for (size_t i = 0; i < n; i++)
            if (host[i] != (int32_t)(u * n + i)) fail_msg("upload %d, element %zu: %d", u, i, host[i]);
        gpu->free(gpu, dev[u]);
    }
    gpu_ok();
    free(host);
}

#ifdef LORA_TRAIN_CUDA_EMU
// A kernel fault (here an add 64 bf16 past the end of its buffer, inside the
// emulated device's 256 guard bytes, which catch it) is reported by check
// once synchronize has run the kernel, as a GPU reports it at the next
// synchronization. (A write past the guard lands in the emulator's own heap.)
static void test_an_asynchronous_fault_is_reported(void **state) {
    size_t n = 1000;
    float *x = random_act(n, -1, 1);
    void *small = gpu_act(x, n - 64), *large = gpu_act(x, n);
    gpu->add_inplace(gpu, small, large, n);
    gpu->synchronize(gpu);
    Error err;
    assert_false(gpu->check(gpu, &err));
    print_message("check after the fault: %s\n", err.message);
    free(x);
}
#endif

static void test_params_to_act_rounds_to_nearest_even(void **state) {
    size_t n = 4099;
    float *params = random_f32(n, -5, 5);
    float *dev_params = gpu_copy(params, n * sizeof(float));
    float *dev_act = gpu_poisoned(n);
    gpu->params_to_act(gpu, dev_act, dev_params, n);
    float *got = gpu_act_result(dev_act, n);
    for (size_t i = 0; i < n; i++) assert_true(got[i] == bf16_to_f32(f32_to_bf16(params[i])));
    free(got);
    gpu->free(gpu, dev_act);
    gpu->free(gpu, dev_params);
    free(params);
}

// a starting `skew` elements into its allocation: 1 leaves it off the 16-byte
// boundary the kernels' 128-bit path needs, so they take the scalar one.
static void check_add_inplace(size_t n, size_t skew) {
    float *a = random_act(n + skew, -1, 1), *b = random_act(n, -1, 1);
    void *dev_a = gpu_act(a, n + skew), *dev_b = gpu_act(b, n);
    void *dev_a_skewed = (uint8_t *)dev_a + skew * dtype_size(gpu->act_dtype);
    cpu->add_inplace(cpu, a + skew, b, n);
    gpu->add_inplace(gpu, dev_a_skewed, dev_b, n);
    expect_act(dev_a_skewed, a + skew, n, BF16_TOL, "add_inplace");
    gpu->free(gpu, dev_a);
    gpu->free(gpu, dev_b);
    free(a);
    free(b);
}

static void test_add_inplace(void **state) {
    check_add_inplace(10007, 0); // 1250 packs of 8 and a tail of 7
    check_add_inplace(10007, 1); // unaligned: one element at a time
    check_add_inplace(4096, 0);
}

// ----------------------------------------------------------------------------
// matmul

static void check_matmul(int M, int N, int K, bool trans_a, bool trans_b, float alpha, float beta) {
    size_t n_out = (size_t)M * N;
    float *a = random_act((size_t)M * K, -1, 1), *b = random_act((size_t)K * N, -1, 1);
    float *out = beta == 0.0f ? nan_array(n_out) : random_act(n_out, -1, 1);
    void *dev_a = gpu_act(a, (size_t)M * K), *dev_b = gpu_act(b, (size_t)K * N), *dev_out = gpu_act(out, n_out);
    cpu->matmul(cpu, out, a, b, M, N, K, trans_a, trans_b, alpha, beta);
    gpu->matmul(gpu, dev_out, dev_a, dev_b, M, N, K, trans_a, trans_b, alpha, beta);
    char what[128];
    snprintf(what, sizeof what, "matmul M=%d N=%d K=%d trans_a=%d trans_b=%d alpha=%g beta=%g", M, N, K,
             trans_a, trans_b, alpha, beta);
    expect_act(dev_out, out, n_out, BF16_TOL, what);
    gpu->free(gpu, dev_a);
    gpu->free(gpu, dev_b);
    gpu->free(gpu, dev_out);
    free(a);
    free(b);
    free(out);
}

static void test_matmul(void **state) {
    const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 65, 127}, {64, 96, 48}, {128, 256, 512}, {3, 4096, 17}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (int t = 0; t < 4; t++) {
            check_matmul(shapes[s][0], shapes[s][1], shapes[s][2], t & 1, t & 2, 1.0f, 0.0f);
            check_matmul(shapes[s][0], shapes[s][1], shapes[s][2], t & 1, t & 2, 0.5f, 1.0f);
        }
    }
}

// More shapes than the backend keeps descriptors for (64), each twice, then
// the first ones again after they were replaced: every call still right.
static void test_matmul_many_shapes(void **state) {
    for (int round = 0; round < 2; round++)
        for (int M = 1; M <= 80; M++) check_matmul(M, 8, 16, false, true, 1.0f, 0.0f);
    for (int M = 1; M <= 10; M++) check_matmul(M, 8, 16, false, true, 0.5f, 1.0f);
}

static void check_matmul_weight_grad(int M, int N, int K) {
    float *dout = random_act((size_t)M * N, -1, 1), *inp = random_act((size_t)M * K, -1, 1);
    float *dweight = random_f32((size_t)N * K, -1, 1);
    void *dev_dout = gpu_act(dout, (size_t)M * N), *dev_inp = gpu_act(inp, (size_t)M * K);
    float *dev_dweight = gpu_copy(dweight, (size_t)N * K * sizeof(float));
    cpu->matmul_weight_grad(cpu, dweight, dout, inp, M, N, K, 0.25f);
    gpu->matmul_weight_grad(gpu, dev_dweight, dev_dout, dev_inp, M, N, K, 0.25f);
    char what[96];
    snprintf(what, sizeof what, "matmul_weight_grad M=%d N=%d K=%d", M, N, K);
    expect_f32(dev_dweight, dweight, (size_t)N * K, BF16_TOL, what);
    gpu->free(gpu, dev_dout);
    gpu->free(gpu, dev_inp);
    gpu->free(gpu, dev_dweight);
    free(dout);
    free(inp);
    free(dweight);
}

static void test_matmul_weight_grad(void **state) {
    check_matmul_weight_grad(1, 1, 1);
    check_matmul_weight_grad(37, 11, 23);
    check_matmul_weight_grad(512, 16, 256);
    check_matmul_weight_grad(300, 128, 8);
}

// ----------------------------------------------------------------------------
// embedding, RMSNorm, RoPE, SwiGLU

static void test_embedding(void **state) {
    int V = 50, C = 37, N = 19;
    float *table = random_act((size_t)V * C, -1, 1), *out = nan_array((size_t)N * C);
    int32_t ids[19];
    for (int n = 0; n < N; n++) ids[n] = (int32_t)rng_below(&test_rng, V);
    void *dev_table = gpu_act(table, (size_t)V * C), *dev_out = gpu_act(out, (size_t)N * C);
    int32_t *dev_ids = gpu_copy(ids, sizeof ids);
    cpu->embedding_forward(cpu, out, ids, table, N, C);
    gpu->embedding_forward(gpu, dev_out, dev_ids, dev_table, N, C);
    expect_act(dev_out, out, (size_t)N * C, BF16_TOL, "embedding_forward");
    gpu->free(gpu, dev_table);
    gpu->free(gpu, dev_out);
    gpu->free(gpu, dev_ids);
    free(table);
    free(out);
}

static void check_rmsnorm(int N, int C) {
    size_t n = (size_t)N * C;
    float *inp = random_act(n, -2, 2), *weight = random_act(C, 0.5f, 1.5f), *dout = random_act(n, -1, 1);
    float *out = nan_array(n), *rstd = nan_array(N);
    void *dev_inp = gpu_act(inp, n), *dev_weight = gpu_act(weight, C), *dev_dout = gpu_act(dout, n);
    void *dev_out = gpu_act(out, n);
    float *dev_rstd = gpu_copy(rstd, N * sizeof(float));
    cpu->rmsnorm_forward(cpu, out, rstd, inp, weight, N, C, 1e-5f);
    gpu->rmsnorm_forward(gpu, dev_out, dev_rstd, dev_inp, dev_weight, N, C, 1e-5f);
    expect_act(dev_out, out, n, BF16_TOL, "rmsnorm_forward out");
    expect_f32(dev_rstd, rstd, N, STAT_TOL, "rmsnorm_forward rstd");

    float *dinp_alone = calloc(n, sizeof(float));
    assert_non_null(dinp_alone);
    cpu->rmsnorm_backward(cpu, dinp_alone, dout, inp, weight, rstd, N, C);
    float *dinp = accumulator_like(dinp_alone, n);
    void *dev_dinp = gpu_act(dinp, n);
    cpu->rmsnorm_backward(cpu, dinp, dout, inp, weight, rstd, N, C);
    gpu->rmsnorm_backward(gpu, dev_dinp, dev_dout, dev_inp, dev_weight, dev_rstd, N, C);
    expect_act(dev_dinp, dinp, n, BF16_TOL, "rmsnorm_backward dinp");

    void *devs[] = {dev_inp, dev_weight, dev_dout, dev_out, dev_rstd, dev_dinp};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) gpu->free(gpu, devs[i]);
    float *hosts[] = {inp, weight, dout, out, rstd, dinp_alone, dinp};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
}

// x += residual, then the norm: the sum rounded to bf16 as add_inplace stores it.
static void check_residual_rmsnorm(int N, int C) {
    size_t n = (size_t)N * C;
    float *x = random_act(n, -2, 2), *residual = random_act(n, -2, 2), *weight = random_act(C, 0.5f, 1.5f);
    float *out = nan_array(n), *rstd = nan_array(N);
    void *dev_x = gpu_act(x, n), *dev_residual = gpu_act(residual, n), *dev_weight = gpu_act(weight, C);
    void *dev_out = gpu_act(out, n);
    float *dev_rstd = gpu_copy(rstd, N * sizeof(float));
    ops_cpu_bf16()->residual_rmsnorm_forward(ops_cpu_bf16(), out, rstd, x, residual, weight, N, C, 1e-5f);
    gpu->residual_rmsnorm_forward(gpu, dev_out, dev_rstd, dev_x, dev_residual, dev_weight, N, C, 1e-5f);
    expect_act(dev_x, x, n, BF16_TOL, "residual_rmsnorm_forward sum");
    expect_act(dev_out, out, n, BF16_TOL, "residual_rmsnorm_forward out");
    expect_f32(dev_rstd, rstd, N, STAT_TOL, "residual_rmsnorm_forward rstd");
    void *devs[] = {dev_x, dev_residual, dev_weight, dev_out, dev_rstd};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) gpu->free(gpu, devs[i]);
    free(x), free(residual), free(weight), free(out), free(rstd);
}

static void test_residual_rmsnorm(void **state) {
    check_residual_rmsnorm(1, 1);
    check_residual_rmsnorm(5, 33);
    check_residual_rmsnorm(3, 40);
    check_residual_rmsnorm(17, 4096);
}

static void test_rmsnorm(void **state) {
    check_rmsnorm(1, 1);
    check_rmsnorm(5, 33);
    check_rmsnorm(3, 40); // every row 16-byte aligned: 5 packs of 8, no tail
    check_rmsnorm(17, 4096);
    check_rmsnorm(64, 1000);
}

static void check_rope(int N, int n_head, int head_dim, bool llama3) {
    size_t n = (size_t)N * n_head * head_dim;
    RopeScaling scaling = {.llama3 = true, .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                           .original_max_position = 8192};
    float *inv_freq = host_alloc(head_dim / 2);
    rope_inverse_frequencies(inv_freq, head_dim, 500000.0f, llama3 ? &scaling : NULL);
    int32_t *positions = malloc(N * sizeof(int32_t));
    assert_non_null(positions);
    for (int i = 0; i < N; i++) positions[i] = (int32_t)rng_below(&test_rng, 4096);
    float *x = random_act(n, -1, 1);
    void *dev_x = gpu_act(x, n);
    float *dev_inv_freq = gpu_copy(inv_freq, head_dim / 2 * sizeof(float));
    int32_t *dev_positions = gpu_copy(positions, N * sizeof(int32_t));
    cpu->rope_forward(cpu, x, positions, inv_freq, N, n_head, head_dim);
    gpu->rope_forward(gpu, dev_x, dev_positions, dev_inv_freq, N, n_head, head_dim);
    expect_act(dev_x, x, n, BF16_TOL, "rope_forward");

    float *dx = random_act(n, -1, 1);
    void *dev_dx = gpu_act(dx, n);
    cpu->rope_backward(cpu, dx, positions, inv_freq, N, n_head, head_dim);
    gpu->rope_backward(gpu, dev_dx, dev_positions, dev_inv_freq, N, n_head, head_dim);
    expect_act(dev_dx, dx, n, BF16_TOL, "rope_backward");

    gpu->free(gpu, dev_x);
    gpu->free(gpu, dev_dx);
    gpu->free(gpu, dev_inv_freq);
    gpu->free(gpu, dev_positions);
    free(inv_freq);
    free(positions);
    free(x);
    free(dx);
}

static void test_rope(void **state) {
    check_rope(1, 1, 2, false);
    check_rope(13, 3, 64, false);
    check_rope(31, 8, 128, true);
    check_rope(7, 5, 80, true);
}

static void check_swiglu(size_t n) {
    float *gate = random_act(n, -4, 4), *up = random_act(n, -2, 2), *dout = random_act(n, -1, 1);
    float *out = nan_array(n);
    void *dev_gate = gpu_act(gate, n), *dev_up = gpu_act(up, n), *dev_dout = gpu_act(dout, n);
    void *dev_out = gpu_act(out, n);
    cpu->swiglu_forward(cpu, out, gate, up, n);
    gpu->swiglu_forward(gpu, dev_out, dev_gate, dev_up, n);
    expect_act(dev_out, out, n, BF16_TOL, "swiglu_forward");

    float *dgate_alone = calloc(n, sizeof(float)), *dup_alone = calloc(n, sizeof(float));
    assert_true(dgate_alone && dup_alone);
    cpu->swiglu_backward(cpu, dgate_alone, dup_alone, dout, gate, up, n);
    float *dgate = accumulator_like(dgate_alone, n), *dup = accumulator_like(dup_alone, n);
    void *dev_dgate = gpu_act(dgate, n), *dev_dup = gpu_act(dup, n);
    cpu->swiglu_backward(cpu, dgate, dup, dout, gate, up, n);
    gpu->swiglu_backward(gpu, dev_dgate, dev_dup, dev_dout, dev_gate, dev_up, n);
    expect_act(dev_dgate, dgate, n, BF16_TOL, "swiglu_backward dgate");
    expect_act(dev_dup, dup, n, BF16_TOL, "swiglu_backward dup");

    void *devs[] = {dev_gate, dev_up, dev_dout, dev_out, dev_dgate, dev_dup};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) gpu->free(gpu, devs[i]);
    float *hosts[] = {gate, up, dout, out, dgate_alone, dup_alone, dgate, dup};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
}

static void test_swiglu(void **state) {
    check_swiglu(1);
    check_swiglu(1001);
    check_swiglu(1 << 20);
}

// ----------------------------------------------------------------------------
// dropout: the GPU must drop exactly the elements the CPU drops

// Values in +-[0.5, 1.5): never zero, so a zero output means dropped.
static float *nonzero_act(size_t n) {
    float *x = random_act(n, 0.5f, 1.5f);
    for (size_t i = 0; i < n; i += 2) x[i] = -x[i];
    return x;
}

static void expect_same_zeros(const float *got, const float *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if ((got[i] == 0.0f) != (want[i] == 0.0f)) fail_msg("%s: element %zu kept on one backend only", what, i);
}

static void check_dropout(size_t n, float p, uint64_t seed, uint64_t offset) {
    float *inp = nonzero_act(n), *out = nan_array(n);
    void *dev_inp = gpu_act(inp, n), *dev_out = gpu_act(out, n);
    cpu->dropout_forward(cpu, out, inp, n, p, seed, offset);
    gpu->dropout_forward(gpu, dev_out, dev_inp, n, p, seed, offset);
    float *got = gpu_act_result(dev_out, n);
    expect_same_zeros(got, out, n, "dropout_forward");
    expect_close(got, out, n, BF16_TOL, "dropout_forward");
    free(got);

    // backward onto zeros: the regenerated mask alone, then onto values
    float *dinp_zero = calloc(n, sizeof(float));
    assert_non_null(dinp_zero);
    void *dev_dinp_zero = gpu_act(dinp_zero, n);
    cpu->dropout_backward(cpu, dinp_zero, inp, n, p, seed, offset);
    gpu->dropout_backward(gpu, dev_dinp_zero, dev_inp, n, p, seed, offset);
    got = gpu_act_result(dev_dinp_zero, n);
    expect_same_zeros(got, dinp_zero, n, "dropout_backward mask");
    free(got);

    float *dinp = accumulator_like(dinp_zero, n);
    void *dev_dinp = gpu_act(dinp, n);
    cpu->dropout_backward(cpu, dinp, inp, n, p, seed, offset);
    gpu->dropout_backward(gpu, dev_dinp, dev_inp, n, p, seed, offset);
    expect_act(dev_dinp, dinp, n, BF16_TOL, "dropout_backward");

    gpu->free(gpu, dev_inp);
    gpu->free(gpu, dev_out);
    gpu->free(gpu, dev_dinp_zero);
    gpu->free(gpu, dev_dinp);
    free(inp);
    free(out);
    free(dinp_zero);
    free(dinp);
}

static void test_dropout(void **state) {
    check_dropout(1, 0.5f, 1, 0);
    check_dropout(100003, 0.1f, 42, 0);
    check_dropout(4097, 0.05f, 7, ((uint64_t)1 << 33) + 5);
    check_dropout(999, 0.0f, 3, 17);
    check_dropout(999, 1.0f, 3, 17);
}

// ----------------------------------------------------------------------------
// cross-entropy

// With `masked` the first MASKED logits of every row are -inf (a masked
// vocabulary): each thread of the GPU's row block then starts on -inf, where a
// naive online softmax computes exp(-inf - -inf) = NaN.
#define MASKED 600
static void check_cross_entropy(int N, int V, bool in_place, bool with_grad, bool masked) {
    size_t n = (size_t)N * V;
    float *logits = random_act(n, -8, 8);
    int32_t *targets = malloc(N * sizeof(int32_t));
    assert_non_null(targets);
    int first_target = masked ? MASKED : 0;
    for (int i = 0; i < N; i++)
        targets[i] = i % 4 == 3 ? -100 : first_target + (int32_t)rng_below(&test_rng, V - first_target);
    for (int i = 0; i < N && masked; i++)
        for (int c = 0; c < MASKED; c++) logits[(size_t)i * V + c] = -INFINITY;
    float loss = 1.5f;
    void *dev_logits = gpu_act(logits, n);
    int32_t *dev_targets = gpu_copy(targets, N * sizeof(int32_t));
    float *dev_loss = gpu_copy(&loss, sizeof loss);
    float *dlogits = in_place ? logits : nan_array(n);
    void *dev_dlogits = in_place ? dev_logits : gpu_act(dlogits, n);
    cpu->cross_entropy(cpu, &loss, with_grad ? dlogits : NULL, logits, targets, N, V, 0.125f);
    gpu->cross_entropy(gpu, dev_loss, with_grad ? dev_dlogits : NULL, dev_logits, dev_targets, N, V, 0.125f);
    char what[96];
    snprintf(what, sizeof what, "cross_entropy N=%d V=%d in_place=%d loss", N, V, in_place);
    expect_f32(dev_loss, &loss, 1, STAT_TOL, what);
    if (with_grad) {
        snprintf(what, sizeof what, "cross_entropy N=%d V=%d in_place=%d dlogits", N, V, in_place);
        expect_act(dev_dlogits, dlogits, n, BF16_TOL, what);
    }
    if (!in_place) {
        gpu->free(gpu, dev_dlogits);
        free(dlogits);
    }
    gpu->free(gpu, dev_logits);
    gpu->free(gpu, dev_targets);
    gpu->free(gpu, dev_loss);
    free(logits);
    free(targets);
}

static void test_cross_entropy(void **state) {
    check_cross_entropy(1, 1, false, true, false);
    check_cross_entropy(13, 37, false, true, false);
    check_cross_entropy(9, 5003, false, true, false);
    check_cross_entropy(9, 5003, true, true, false);
    check_cross_entropy(6, 32000, false, false, false);
    check_cross_entropy(4, 128256, true, true, false);
    check_cross_entropy(8, 5003, true, true, true);
}

// ----------------------------------------------------------------------------
// attention

typedef struct AttentionShape {
    int B, T, n_head, n_kv_head, head_dim;
} AttentionShape;

// Packed rows: n_segments > 0 segment lengths laid end to end, row after row. With rope, q and k are
// rotated inside attention (AttentionRope), positions restarting at each segment.
static void check_attention(AttentionShape s, const int *segments, int n_segments, bool with_rope) {
    size_t n_q = (size_t)s.B * s.T * s.n_head * s.head_dim, n_kv = (size_t)s.B * s.T * s.n_kv_head * s.head_dim;
    size_t n_lse = (size_t)s.B * s.n_head * s.T;
    float *q = random_act(n_q, -2, 2), *k = random_act(n_kv, -2, 2), *v = random_act(n_kv, -1, 1);
    float *out = nan_array(n_q), *lse = nan_array(n_lse), *dout = random_act(n_q, -1, 1);
    int32_t *seq_start = NULL, *dev_seq_start = NULL;
    if (n_segments > 0) {
        seq_start = malloc((size_t)s.B * s.T * sizeof(int32_t));
        assert_non_null(seq_start);
        packed_seq_start(seq_start, s.B, s.T, segments, n_segments);
        dev_seq_start = gpu_copy(seq_start, (size_t)s.B * s.T * sizeof(int32_t));
    }
    RopeInputs rope_in = with_rope ? rope_inputs(s.B, s.T, s.head_dim, seq_start) : (RopeInputs){0};
    const AttentionRope *rope = with_rope ? &rope_in.host : NULL, *dev_rope = with_rope ? &rope_in.dev : NULL;
    void *dev_q = gpu_act(q, n_q), *dev_k = gpu_act(k, n_kv), *dev_v = gpu_act(v, n_kv);
    void *dev_out = gpu_act(out, n_q), *dev_dout = gpu_act(dout, n_q);
    float *dev_lse = gpu_copy(lse, n_lse * sizeof(float));
    cpu_attention_forward_bf16_rope(out, lse, q, k, v, seq_start, rope, s.B, s.T, s.n_head, s.n_kv_head, s.head_dim);
    gpu->attention_forward(gpu, dev_out, dev_lse, dev_q, dev_k, dev_v, dev_seq_start, dev_rope, s.B, s.T, s.n_head,
                           s.n_kv_head, s.head_dim);
    char what[128];
    snprintf(what, sizeof what, "attention B=%d T=%d heads=%d/%d hd=%d segments=%d rope=%d", s.B, s.T, s.n_head,
             s.n_kv_head, s.head_dim, n_segments, with_rope);
    print_message("%s\n", what);
    expect_act(dev_out, out, n_q, BF16_TOL, "attention_forward out");
    expect_f32(dev_lse, lse, n_lse, STAT_TOL, "attention_forward lse");

    float *dq_alone = calloc(n_q, sizeof(float)), *dk_alone = calloc(n_kv, sizeof(float));
    float *dv_alone = calloc(n_kv, sizeof(float));
    assert_true(dq_alone && dk_alone && dv_alone);
    cpu_attention_backward_bf16_rope(dq_alone, dk_alone, dv_alone, dout, out, lse, q, k, v, seq_start, rope, s.B, s.T,
                                     s.n_head, s.n_kv_head, s.head_dim);
    float *dq = accumulator_like(dq_alone, n_q), *dk = accumulator_like(dk_alone, n_kv);
    float *dv = accumulator_like(dv_alone, n_kv);
    void *dev_dq = gpu_act(dq, n_q), *dev_dk = gpu_act(dk, n_kv), *dev_dv = gpu_act(dv, n_kv);
    cpu_attention_backward_bf16_rope(dq, dk, dv, dout, out, lse, q, k, v, seq_start, rope, s.B, s.T, s.n_head,
                                     s.n_kv_head, s.head_dim);
    gpu->attention_backward(gpu, dev_dq, dev_dk, dev_dv, dev_dout, dev_out, dev_lse, dev_q, dev_k, dev_v, dev_seq_start,
                            dev_rope, s.B, s.T, s.n_head, s.n_kv_head, s.head_dim);
    expect_act(dev_dq, dq, n_q, BF16_TOL, "attention_backward dq");
    expect_act(dev_dk, dk, n_kv, BF16_TOL, "attention_backward dk");
    expect_act(dev_dv, dv, n_kv, BF16_TOL, "attention_backward dv");

    void *devs[] = {dev_q, dev_k, dev_v, dev_out, dev_dout, dev_lse, dev_dq, dev_dk, dev_dv};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) gpu->free(gpu, devs[i]);
    float *hosts[] = {q, k, v, out, lse, dout, dq_alone, dk_alone, dv_alone, dq, dk, dv};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
    if (dev_seq_start) gpu->free(gpu, dev_seq_start);
    free(seq_start);
    if (with_rope) rope_inputs_free(&rope_in);
}

static void test_attention(void **state) {
    const AttentionShape shapes[] = {
        {1, 1, 1, 1, 32},    // one token
        {2, 17, 4, 2, 64},   // GQA, T not a multiple of the tiles
        {1, 70, 8, 2, 128},  // Llama head size, several key tiles
        {1, 33, 6, 1, 80},   // MQA, head_dim not a multiple of 32
        {3, 9, 3, 3, 40},    // MHA
        {1, 130, 2, 1, 256}, // the largest head_dim
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_attention(shapes[i], NULL, 0, false);
}

// Packed rows: segments of length 1, rows that are one segment, segments across key tiles.
static void test_attention_packed(void **state) {
    const int packed_then_whole[] = {1, 5, 30, 4, 40};
    check_attention((AttentionShape){2, 40, 4, 2, 64}, packed_then_whole, 5, false);
    const int across_tiles[] = {10, 1, 1, 33, 25};
    check_attention((AttentionShape){1, 70, 8, 2, 128}, across_tiles, 5, false);
    const int mqa[] = {3, 14, 1, 1, 1, 14};
    check_attention((AttentionShape){2, 17, 6, 1, 80}, mqa, 6, false);
    const int single_tokens[] = {9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9};
    check_attention((AttentionShape){3, 9, 3, 3, 40}, single_tokens, 11, false);
}

// Fused RoPE: head sizes the CUDA-core kernels take (32, 40, 256) and two the flash kernels take, T off the
// tiles, GQA 1, 4 and 8, packed rows whose positions restart.
static void test_attention_rope(void **state) {
    check_attention((AttentionShape){2, 17, 4, 1, 40}, NULL, 0, true);    // GQA 4, fallback
    check_attention((AttentionShape){1, 1, 1, 1, 32}, NULL, 0, true);     // one token, fallback
    const int across_tiles[] = {10, 1, 1, 33, 25};
    check_attention((AttentionShape){1, 70, 8, 1, 32}, across_tiles, 5, true);  // GQA 8, packed, fallback
    const int single_tokens[] = {9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9};
    check_attention((AttentionShape){3, 9, 3, 3, 40}, single_tokens, 11, true);  // MHA, packed, fallback
    check_attention((AttentionShape){1, 40, 2, 1, 256}, NULL, 0, true);   // the largest head_dim, fallback
    const int packed_then_whole[] = {1, 5, 30, 4, 40};
    check_attention((AttentionShape){2, 40, 4, 2, 64}, packed_then_whole, 5, true);  // flash
    check_attention((AttentionShape){1, 70, 8, 2, 128}, NULL, 0, true);   // flash, GQA 4
}

static void test_attention_rejects_large_head_dim(void **state) {
    size_t n = 2 * 300;
    float *x = random_act(n, -1, 1);
    void *dev_q = gpu_act(x, n), *dev_out = gpu_act(x, n);
    float *dev_lse = gpu_copy(x, 2 * sizeof(float));
    gpu->attention_forward(gpu, dev_out, dev_lse, dev_q, dev_q, dev_q, NULL, NULL, 1, 2, 1, 1, 300);
    gpu->synchronize(gpu);
    Error err;
    assert_false(gpu->check(gpu, &err));
    assert_non_null(strstr(err.message, "head_dim"));
    assert_true(gpu->check(gpu, &err)); // reported once
    gpu->free(gpu, dev_q);
    gpu->free(gpu, dev_out);
    gpu->free(gpu, dev_lse);
    free(x);
}

// ----------------------------------------------------------------------------
// fp32 optimizer ops

static void test_sum_squares_and_scale(void **state) {
    const size_t sizes[] = {1, 1023, 1000003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *g = random_f32(n, -1, 1), total = 3.25f;
        float *dev_g = gpu_copy(g, n * sizeof(float)), *dev_total = gpu_copy(&total, sizeof total);
        cpu->sum_squares(cpu, &total, g, n);
        gpu->sum_squares(gpu, dev_total, dev_g, n);
        expect_f32(dev_total, &total, 1, F32_TOL, "sum_squares");
        cpu->scale_f32(cpu, g, 0.3f, n);
        gpu->scale_f32(gpu, dev_g, 0.3f, n);
        expect_f32(dev_g, g, n, F32_TOL, "scale_f32");
        gpu->free(gpu, dev_g);
        gpu->free(gpu, dev_total);
        free(g);
    }
}

static void test_adamw(void **state) {
    size_t n = 10007;
    float *params = random_f32(n, -1, 1), *m = random_f32(n, -0.1f, 0.1f), *v = random_f32(n, 0, 0.01f);
    float *dev_params = gpu_copy(params, n * sizeof(float)), *dev_m = gpu_copy(m, n * sizeof(float));
    float *dev_v = gpu_copy(v, n * sizeof(float));
    for (int step = 1; step <= 3; step++) {
        float *grads = random_f32(n, -1, 1);
        float *dev_grads = gpu_copy(grads, n * sizeof(float));
        cpu->adamw(cpu, params, grads, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step, NULL, INFINITY);
        gpu->adamw(gpu, dev_params, dev_grads, dev_m, dev_v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step, NULL,
                   INFINITY);
        gpu->free(gpu, dev_grads);
        free(grads);
    }
    expect_f32(dev_params, params, n, F32_TOL, "adamw params");
    expect_f32(dev_m, m, n, F32_TOL, "adamw m");
    expect_f32(dev_v, v, n, F32_TOL, "adamw v");
    gpu->free(gpu, dev_params);
    gpu->free(gpu, dev_m);
    gpu->free(gpu, dev_v);
    free(params);
    free(m);
    free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upload_download_round_trip),
        cmocka_unit_test(test_copies_are_done_on_return),
        cmocka_unit_test(test_upload_async_past_the_staging),
        cmocka_unit_test(test_params_to_act_rounds_to_nearest_even),
        cmocka_unit_test(test_add_inplace),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_many_shapes),
        cmocka_unit_test(test_matmul_weight_grad),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_residual_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_packed),
        cmocka_unit_test(test_attention_rope),
        cmocka_unit_test(test_attention_rejects_large_head_dim),
        cmocka_unit_test(test_sum_squares_and_scale),
        cmocka_unit_test(test_adamw),
#ifdef LORA_TRAIN_CUDA_EMU
        cmocka_unit_test(test_an_asynchronous_fault_is_reported),  // last: the device is unusable after it
#endif
    };
    if (!gpu_tests_init("every GPU parity test")) return GPU_TESTS_SKIPPED;
    rng_seed(&test_rng, 20240611);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
