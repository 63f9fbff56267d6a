// The tensor-core flash attention (kernels/cuda/flash_attention.cu) that attention_forward / attention_backward
// (causal) and attention_full_forward / _backward (bidirectional) take for head_dim 64, 80, 96 and 128, against
// two oracles on the same bf16-rounded inputs: the CPU backend (fp32) and the CUDA-core kernels it replaces
// (kernels/cuda_testing.h). First the fragment functions of
// kernels/cuda/mma.cuh alone, on small integers whose products and sums are exact, so a layout error is named
// by its mode and element. ctest runs it twice on the emulation, the second time with CUDA_EMU_SCHEDULE=random:7.
#include "gpu_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda_testing.h"

#define BF16_TOL 1e-2       // vs the CPU backend, as test_gpu_ops
#define STAT_TOL 1e-4       // lse
#define REFERENCE_TOL 5e-3  // vs the CUDA-core kernels: both round to bf16, the flash kernels P too

// ----------------------------------------------------------------------------
// mma.cuh

static float *small_integers(size_t n) {
    float *x = host_alloc(n);
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)(rng_next(&test_rng) % 9) - 4);
    return x;
}

static void test_mma_fragments(void **state) {
    float *a = small_integers(16 * 16), *b = small_integers(16 * 8), *c = small_integers(16 * 8);
    float *bt = host_alloc(8 * 16), *want = host_alloc(16 * 8);
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 8; n++) bt[n * 16 + k] = b[k * 8 + n];
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            float sum = c[m * 8 + n];
            for (int k = 0; k < 16; k++) sum += a[m * 16 + k] * b[k * 8 + n];
            want[m * 8 + n] = sum;  // small integers: exact in any order
        }
    void *dev_a = gpu_act(a, 16 * 16), *dev_b = gpu_act(b, 16 * 8), *dev_bt = gpu_act(bt, 8 * 16);
    float *dev_c = gpu_copy(c, 16 * 8 * sizeof(float)), *dev_d = gpu_alloc(16 * 8 * sizeof(float));
    const char *modes[] = {"fragments by the PTX tables", "ldmatrix.x4 + ldmatrix.x2.trans",
                           "ldmatrix.x4 + ldmatrix.x2"};
    for (int mode = 0; mode < 3; mode++) {
        cuda_mma_probe(gpu, dev_d, dev_a, mode == 2 ? dev_bt : dev_b, dev_c, mode);
        float *d = gpu_f32_result(dev_d, 16 * 8);
        for (int i = 0; i < 16 * 8; i++)
            if (d[i] != want[i]) fail_msg("mma %s: D[%d][%d] = %g, want %g", modes[mode], i / 8, i % 8, d[i], want[i]);
        free(d);
    }
    void *devs[] = {dev_a, dev_b, dev_bt, dev_c, dev_d};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) gpu->free(gpu, devs[i]);
    float *hosts[] = {a, b, c, bt, want};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
}

// ----------------------------------------------------------------------------
// attention

typedef struct Shape {
    int B, T, n_head, n_kv_head, head_dim;
} Shape;

static void cpu_forward(Shape s, bool causal, float *out, float *lse, const float *q, const float *k, const float *v,
                        const int32_t *seq_start, const AttentionRope *rope) {
    if (causal)
        cpu_attention_forward_bf16_rope(out, lse, q, k, v, seq_start, rope, s.B, s.T, s.n_head, s.n_kv_head,
                                        s.head_dim);
    else
        cpu->attention_full_forward(cpu, out, lse, q, k, v, s.B, s.T, s.n_head, s.head_dim);
}

static void gpu_forward(Shape s, bool causal, void *out, float *lse, const void *q, const void *k, const void *v,
                        const int32_t *seq_start, const AttentionRope *rope) {
    if (causal)
        gpu->attention_forward(gpu, out, lse, q, k, v, seq_start, rope, s.B, s.T, s.n_head, s.n_kv_head, s.head_dim);
    else
        gpu->attention_full_forward(gpu, out, lse, q, k, v, s.B, s.T, s.n_head, s.head_dim);
}

// grad[0..2] += dq, dk, dv
static void cpu_backward(Shape s, bool causal, float *grad[3], const float *dout, const float *out, const float *lse,
                         const float *q, const float *k, const float *v, const int32_t *seq_start,
                         const AttentionRope *rope) {
    if (causal)
        cpu_attention_backward_bf16_rope(grad[0], grad[1], grad[2], dout, out, lse, q, k, v, seq_start, rope, s.B, s.T,
                                         s.n_head, s.n_kv_head, s.head_dim);
    else
        cpu->attention_full_backward(cpu, grad[0], grad[1], grad[2], dout, out, lse, q, k, v, s.B, s.T, s.n_head,
                                     s.head_dim);
}

static void gpu_backward(Shape s, bool causal, void *grad[3], const void *dout, const void *out, const float *lse,
                         const void *q, const void *k, const void *v, const int32_t *seq_start,
                         const AttentionRope *rope) {
    if (causal)
        gpu->attention_backward(gpu, grad[0], grad[1], grad[2], dout, out, lse, q, k, v, seq_start, rope, s.B, s.T,
                                s.n_head, s.n_kv_head, s.head_dim);
    else
        gpu->attention_full_backward(gpu, grad[0], grad[1], grad[2], dout, out, lse, q, k, v, s.B, s.T, s.n_head,
                                     s.head_dim);
}

// Packed rows: n_segments > 0 segment lengths laid end to end, row after row (test_gpu_ops's convention).
// With rope, q and k are rotated inside attention (AttentionRope). Not causal: attention_full_forward /
// _backward, n_kv_head = n_head, no segments, no rope.
static void check_attention(Shape s, const int *segments, int n_segments, bool with_rope, bool causal) {
    size_t n_q = (size_t)s.B * s.T * s.n_head * s.head_dim, n_kv = (size_t)s.B * s.T * s.n_kv_head * s.head_dim;
    size_t n_lse = (size_t)s.B * s.n_head * s.T;
    char what[128];
    snprintf(what, sizeof what, "flash attention B=%d T=%d heads=%d/%d hd=%d segments=%d rope=%d causal=%d", s.B, s.T,
             s.n_head, s.n_kv_head, s.head_dim, n_segments, with_rope, causal);
    print_message("%s\n", what);
    float *q = random_act(n_q, -2, 2), *k = random_act(n_kv, -2, 2), *v = random_act(n_kv, -1, 1);
    float *dout = random_act(n_q, -1, 1), *out = nan_array(n_q), *lse = nan_array(n_lse);
    int32_t *seq_start = NULL, *dev_seq_start = NULL;
    if (n_segments > 0) {
        seq_start = malloc((size_t)s.B * s.T * sizeof(int32_t));
        assert_non_null(seq_start);
        packed_seq_start(seq_start, s.B, s.T, segments, n_segments);
        dev_seq_start = gpu_copy(seq_start, (size_t)s.B * s.T * sizeof(int32_t));
    }
    RopeInputs rope_in = with_rope ? rope_inputs(s.B, s.T, s.head_dim, seq_start) : (RopeInputs){0};
    const AttentionRope *rope = with_rope ? &rope_in.host : NULL, *dev_rope = with_rope ? &rope_in.dev : NULL;
    void *dev_q = gpu_act(q, n_q), *dev_k = gpu_act(k, n_kv), *dev_v = gpu_act(v, n_kv), *dev_dout = gpu_act(dout, n_q);
    void *dev_out = gpu_poisoned(n_q), *ref_out = gpu_poisoned(n_q);
    float *dev_lse = gpu_copy(lse, n_lse * sizeof(float)), *ref_lse = gpu_copy(lse, n_lse * sizeof(float));

    cpu_forward(s, causal, out, lse, q, k, v, seq_start, rope);
    gpu_forward(s, causal, dev_out, dev_lse, dev_q, dev_k, dev_v, dev_seq_start, dev_rope);
    cuda_attention_reference_forward(gpu, ref_out, ref_lse, dev_q, dev_k, dev_v, dev_seq_start, dev_rope, s.B, s.T,
                                     s.n_head, s.n_kv_head, s.head_dim, causal);
    expect_act(dev_out, out, n_q, BF16_TOL, "forward out vs CPU");
    expect_f32(dev_lse, lse, n_lse, STAT_TOL, "forward lse vs CPU");
    float *ref = gpu_act_result(ref_out, n_q), *ref_l = gpu_f32_result(ref_lse, n_lse);
    expect_act(dev_out, ref, n_q, REFERENCE_TOL, "forward out vs CUDA cores");
    expect_f32(dev_lse, ref_l, n_lse, STAT_TOL, "forward lse vs CUDA cores");
    free(ref);
    free(ref_l);

    // Gradients add into random starting values; the same ones for the three backward passes.
    size_t sizes[3] = {n_q, n_kv, n_kv};
    float *grad[3], *start[3];
    void *dev_grad[3], *ref_grad[3];
    for (int i = 0; i < 3; i++) {
        start[i] = random_act(sizes[i], -0.1f, 0.1f);
        grad[i] = host_alloc(sizes[i]);
        memcpy(grad[i], start[i], sizes[i] * sizeof(float));
        dev_grad[i] = gpu_act(start[i], sizes[i]);
        ref_grad[i] = gpu_act(start[i], sizes[i]);
    }
    cpu_backward(s, causal, grad, dout, out, lse, q, k, v, seq_start, rope);
    gpu_backward(s, causal, dev_grad, dev_dout, dev_out, dev_lse, dev_q, dev_k, dev_v, dev_seq_start, dev_rope);
    cuda_attention_reference_backward(gpu, ref_grad[0], ref_grad[1], ref_grad[2], dev_dout, dev_out, dev_lse, dev_q,
                                      dev_k, dev_v, dev_seq_start, dev_rope, s.B, s.T, s.n_head, s.n_kv_head,
                                      s.head_dim, causal);
    const char *names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        // the gradient alone, without its starting values, so the bound is on what the kernels add; but with
        // one token dq and dk are 0 (one key: dS = P (dP - D) = 0) up to rounding noise, against the values
        float *got = gpu_act_result(dev_grad[i], sizes[i]), *other = gpu_act_result(ref_grad[i], sizes[i]);
        bool zero = s.T == 1 && i < 2;
        for (size_t j = 0; j < sizes[i] && !zero; j++)
            got[j] -= start[i][j], other[j] -= start[i][j], grad[i][j] -= start[i][j];
        char label[64];
        snprintf(label, sizeof label, "backward %s vs CPU", names[i]);
        expect_close(got, grad[i], sizes[i], BF16_TOL, label);
        snprintf(label, sizeof label, "backward %s vs CUDA cores", names[i]);
        expect_close(got, other, sizes[i], REFERENCE_TOL, label);
        free(got);
        free(other);
        gpu->free(gpu, dev_grad[i]);
        gpu->free(gpu, ref_grad[i]);
        free(grad[i]);
        free(start[i]);
    }

    void *devs[] = {dev_q, dev_k, dev_v, dev_dout, dev_out, ref_out, dev_lse, ref_lse};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) gpu->free(gpu, devs[i]);
    float *hosts[] = {q, k, v, dout, out, lse};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
    if (dev_seq_start) gpu->free(gpu, dev_seq_start);
    free(seq_start);
    if (with_rope) rope_inputs_free(&rope_in);
}

static void check_flash(Shape s, const int *segments, int n_segments, bool with_rope) {
    check_attention(s, segments, n_segments, with_rope, true);
}

// Every head size, T off the 64-row tiles (1, 17, 70, 130), GQA ratios 1, 4 and 8, B > 1.
static void test_flash_shapes(void **state) {
    const Shape shapes[] = {
        {1, 1, 1, 1, 64},     // one token
        {2, 17, 4, 1, 80},    // GQA 4, B = 2, less than one tile
        {1, 70, 8, 1, 96},    // GQA 8, two tiles
        {1, 130, 2, 2, 128},  // MHA, three tiles
        {2, 70, 4, 4, 64},    // MHA, B = 2
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_flash(shapes[i], NULL, 0, false);
}

// Packed rows: segments across tiles, segments of one token, a row that is one segment, segments that leave
// whole tiles to skip.
static void test_flash_packed(void **state) {
    const int across_tiles[] = {10, 1, 1, 53, 5, 70};
    check_flash((Shape){2, 70, 4, 1, 64}, across_tiles, 6, false);
    const int skip_tiles[] = {60, 1, 5, 64};
    check_flash((Shape){1, 130, 8, 1, 128}, skip_tiles, 4, false);
    const int single_tokens[] = {3, 1, 1, 1, 11, 17};
    check_flash((Shape){2, 17, 4, 4, 96}, single_tokens, 6, false);
    const int mixed[] = {30, 40};
    check_flash((Shape){1, 70, 8, 2, 80}, mixed, 2, false);
}

// Fused RoPE: every head size, T off the tiles, GQA 1, 4 and 8, packed rows whose positions restart; against
// rope_forward rounded to bf16 + attention on the CPU, and the CUDA-core kernels with the same AttentionRope.
static void test_flash_rope(void **state) {
    check_flash((Shape){2, 70, 4, 4, 64}, NULL, 0, true);     // MHA, B = 2, two tiles
    check_flash((Shape){2, 17, 4, 1, 80}, NULL, 0, true);     // GQA 4, less than one tile
    const int mixed[] = {30, 40};
    check_flash((Shape){1, 70, 8, 1, 96}, mixed, 2, true);    // GQA 8, packed
    const int skip_tiles[] = {60, 1, 5, 64};
    check_flash((Shape){1, 130, 8, 2, 128}, skip_tiles, 4, true);  // GQA 4, packed, three tiles
}

// Bidirectional (the vision towers'): every head size, T off the tiles (1, 50, 130, 257) so the last key tile
// has keys >= T to mask and the last query tile queries >= T that dk, dv must not see, B > 1.
static void test_flash_full(void **state) {
    const Shape shapes[] = {
        {2, 1, 2, 2, 64},     // one token, B = 2
        {2, 50, 4, 4, 80},    // less than one tile, B = 2
        {1, 130, 2, 2, 96},   // three tiles
        {1, 257, 1, 1, 128},  // five tiles, one key in the last
        {3, 70, 2, 2, 64},    // B = 3, two tiles
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_attention(shapes[i], NULL, 0, false, false);
}

// q one element past 16-byte alignment: the op table takes the CUDA-core kernels (the flash kernels stage
// 16 bytes at a time), causal and bidirectional, and still matches the CPU backend.
static void test_flash_unaligned(void **state) {
    const Shape s = {1, 70, 2, 2, 64};
    size_t n = (size_t)s.B * s.T * s.n_head * s.head_dim, n_lse = (size_t)s.B * s.n_head * s.T;
    float *q = random_act(n + 1, -2, 2), *k = random_act(n, -2, 2), *v = random_act(n, -1, 1);
    float *out = host_alloc(n), *lse = host_alloc(n_lse);
    void *dev_q = gpu_act(q, n + 1), *dev_k = gpu_act(k, n), *dev_v = gpu_act(v, n), *dev_out = gpu_poisoned(n);
    float *dev_lse = gpu_alloc(n_lse * sizeof(float));
    const void *q_off = (const char *)dev_q + dtype_size(gpu->act_dtype);
    for (int causal = 0; causal < 2; causal++) {
        cpu_forward(s, causal, out, lse, q + 1, k, v, NULL, NULL);
        gpu_forward(s, causal, dev_out, dev_lse, q_off, dev_k, dev_v, NULL, NULL);
        expect_act(dev_out, out, n, BF16_TOL, causal ? "unaligned q, causal: out vs CPU" : "unaligned q: out vs CPU");
        expect_f32(dev_lse, lse, n_lse, STAT_TOL, "unaligned q: lse vs CPU");
    }
    void *devs[] = {dev_q, dev_k, dev_v, dev_out, dev_lse};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) gpu->free(gpu, devs[i]);
    float *hosts[] = {q, k, v, out, lse};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mma_fragments),
        cmocka_unit_test(test_flash_shapes),
        cmocka_unit_test(test_flash_packed),
        cmocka_unit_test(test_flash_rope),
        cmocka_unit_test(test_flash_full),
        cmocka_unit_test(test_flash_unaligned),
    };
    if (!gpu_tests_init("the flash attention tests")) return GPU_TESTS_SKIPPED;
    rng_seed(&test_rng, 20261205);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
