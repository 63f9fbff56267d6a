// The optimizer step on the device: clip_by_norm gives the CPU backend's bits
// from the same sum of squares; the adamw op's skip rule leaves params, m and
// v untouched for a non-finite norm or one above the limit; a whole ZeRO step
// on one rank (clipping on, a norm limit) is issued without the host waiting
// (cuda_emu_host_waits, on the emulated backend) until zero_step_norm reads
// the norm, follows the CPU backend's step, and a skipped step (a NaN
// gradient, an outlier norm) changes nothing on the device and is not counted.
// Without a usable CUDA device the program prints why and exits 77 (skipped).
#include "gpu_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/parallel.h"

#ifdef LORA_TRAIN_CUDA_EMU
#include <cuda_runtime.h> // cuda_emu_host_waits
#endif

#define F32_TOL 1e-5
#define MAX_GRAD_NORM 0.5f

enum { N = 10007 };

static void expect_bits(const void *dev, const float *want, size_t n, const char *what) {
    float *got = gpu_f32_result(dev, n);
    if (memcmp(got, want, n * sizeof(float)) != 0) fail_msg("%s: the device's bits differ from the CPU's", what);
    free(got);
}

// clipped (norm 2 max_norm), not clipped (norm max_norm / 2), NaN norm (left as it is)
static void test_clip_by_norm_matches_cpu(void **state) {
    float *g = random_f32(N, -1, 1), sum = 0;
    cpu->sum_squares(cpu, &sum, g, N);
    const float max_norms[] = {sqrtf(sum) / 2, 2 * sqrtf(sum), 1.0f};
    const float sums[] = {sum, sum, NAN};
    for (int c = 0; c < 3; c++) {
        float *x = malloc(N * sizeof(float));
        memcpy(x, g, N * sizeof(float));
        float *dev_x = gpu_copy(x, N * sizeof(float)), *dev_sum = gpu_copy(&sums[c], sizeof(float));
        cpu->clip_by_norm(cpu, x, N, &sums[c], max_norms[c]);
        gpu->clip_by_norm(gpu, dev_x, N, dev_sum, max_norms[c]);
        expect_bits(dev_x, x, N, "clip_by_norm");
        if (c == 0) assert_true(x[0] != g[0]);
        if (c > 0) assert_memory_equal(x, g, N * sizeof(float));
        gpu->free(gpu, dev_x);
        gpu->free(gpu, dev_sum);
        free(x);
    }
    free(g);
}

// sum 4 (norm 2) with limits INFINITY and 3 is applied; NaN, inf, and norm 2 above limit 1 are skipped.
static void test_adamw_skips_on_the_device(void **state) {
    const float sums[] = {4, 4, NAN, INFINITY, 4};
    const float limits[] = {INFINITY, 3, INFINITY, INFINITY, 1};
    for (int c = 0; c < 5; c++) {
        bool applied = c < 2;
        float *params = random_f32(N, -1, 1), *m = random_f32(N, -0.1f, 0.1f), *v = random_f32(N, 0, 0.01f);
        float *grads = random_f32(N, -1, 1);
        float *dev_params = gpu_copy(params, N * sizeof(float)), *dev_m = gpu_copy(m, N * sizeof(float));
        float *dev_v = gpu_copy(v, N * sizeof(float)), *dev_grads = gpu_copy(grads, N * sizeof(float));
        float *dev_sum = gpu_copy(&sums[c], sizeof(float)), *before = malloc(N * sizeof(float));
        memcpy(before, params, N * sizeof(float));
        cpu->adamw(cpu, params, grads, m, v, N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1, &sums[c], limits[c]);
        gpu->adamw(gpu, dev_params, dev_grads, dev_m, dev_v, N, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1, dev_sum,
                   limits[c]);
        assert_true(applied == (memcmp(params, before, N * sizeof(float)) != 0));
        if (applied) {
            expect_f32(dev_params, params, N, F32_TOL, "adamw params");
            expect_f32(dev_m, m, N, F32_TOL, "adamw m");
            expect_f32(dev_v, v, N, F32_TOL, "adamw v");
        } else {
            expect_bits(dev_params, params, N, "skipped adamw params");
            expect_bits(dev_m, m, N, "skipped adamw m");
            expect_bits(dev_v, v, N, "skipped adamw v");
        }
        float *buffers[] = {dev_params, dev_m, dev_v, dev_grads, dev_sum};
        for (int b = 0; b < 5; b++) gpu->free(gpu, buffers[b]);
        free(params), free(m), free(v), free(grads), free(before);
    }
}

// ----------------------------------------------------------------------------
// a whole step through ZeRO, one rank

typedef struct StepRun {
    const Ops *ops;
    Collectives *coll;
    Zero *zero;
    float *params, *grads;  // backend memory (N)
} StepRun;

static StepRun step_run(const Ops *ops, const float *initial, int stage) {
    ZeroOptions options = {.stage = stage, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f,
                           .max_grad_norm = MAX_GRAD_NORM};
    Error err;
    StepRun run = {.ops = ops, .coll = collectives_single(&err)};
    if (!run.coll) fail_msg("collectives_single: %s", err.message);
    run.params = ops->alloc(ops, N * sizeof(float), &err);
    run.grads = ops->alloc(ops, N * sizeof(float), &err);
    assert_true(run.params && run.grads);
    ops->upload(ops, run.params, initial, N * sizeof(float));
    run.zero = zero_create(ops, run.coll, run.params, run.grads, N, &options, &err);
    if (!run.zero) fail_msg("zero_create: %s", err.message);
    return run;
}

static void step_run_free(StepRun *run) {
    zero_destroy(run->zero);
    run->ops->free(run->ops, run->params);
    run->ops->free(run->ops, run->grads);
    collectives_destroy(run->coll);
}

static float step(StepRun *run, const float *grads, float limit) {
    run->ops->upload(run->ops, run->grads, grads, N * sizeof(float));
    zero_set_norm_limit(run->zero, limit);
    Error err;
    float norm;
    if (!zero_step_issue(run->zero, run->params, run->grads, 1e-2f, &err) || !zero_step_norm(run->zero, &norm, &err))
        fail_msg("zero step: %s", err.message);
    return norm;
}

// params, m and v of a run on the host, in one array of 3 N
static float *step_state(const StepRun *run) {
    float *state = host_alloc(3 * N);
    ZeroState z = zero_state(run->zero);
    const float *sources[] = {run->params, z.m, z.v};
    for (int i = 0; i < 3; i++) run->ops->download(run->ops, state + i * N, sources[i], N * sizeof(float));
    return state;
}

static void expect_step_follows_cpu(int stage) {
    float *initial = random_f32(N, -1, 1), *grads = random_f32(N, -1, 1), *nan_grads = random_f32(N, -1, 1);
    nan_grads[N / 2] = NAN;
    StepRun dev = step_run(gpu, initial, stage), host = step_run(cpu, initial, stage);
    gpu_ok();

#ifdef LORA_TRAIN_CUDA_EMU
    dev.ops->upload(dev.ops, dev.grads, grads, N * sizeof(float));
    zero_set_norm_limit(dev.zero, 1e3f);
    uint64_t waits = cuda_emu_host_waits();
    Error err;
    if (!zero_step_issue(dev.zero, dev.params, dev.grads, 1e-2f, &err)) fail_msg("zero_step_issue: %s", err.message);
    print_message("host waits while issuing a clipped ZeRO-%d step: %llu\n", stage,
                  (unsigned long long)(cuda_emu_host_waits() - waits));
    assert_true(cuda_emu_host_waits() == waits);
    assert_false(zero_step_issue(dev.zero, dev.params, dev.grads, 1e-2f, &err)); // the norm is read first
    float dev_norm;
    assert_true(zero_step_norm(dev.zero, &dev_norm, &err));
    assert_true(cuda_emu_host_waits() > waits); // reading the norm is the step's wait, and is counted
#else
    float dev_norm = step(&dev, grads, 1e3f);
#endif
    float host_norm = step(&host, grads, 1e3f);
    assert_true(host_norm > 4 * MAX_GRAD_NORM); // clipping was active
    assert_true(fabsf(dev_norm - host_norm) <= F32_TOL * host_norm);
    assert_int_equal(zero_state(dev.zero).step, 1);
    assert_int_equal(zero_state(host.zero).step, 1);
    float *want = step_state(&host), *got = step_state(&dev);
    expect_close(got, want, 3 * N, F32_TOL, "params, m, v after a clipped step");

    // skipped: a NaN gradient, then a norm above the limit; nothing changes and the step is not counted
    assert_true(isnan(step(&dev, nan_grads, INFINITY)));
    assert_true(step(&dev, grads, 0.5f * host_norm) > 0.5f * host_norm);
    float *after = step_state(&dev);
    assert_memory_equal(after, got, 3 * N * sizeof(float));
    assert_int_equal(zero_state(dev.zero).step, 1);

    // the next applied step is step 2 on both (the same bias correction)
    assert_true(fabsf(step(&dev, grads, INFINITY) - step(&host, grads, INFINITY)) <= F32_TOL * host_norm);
    assert_int_equal(zero_state(dev.zero).step, 2);
    free(want), free(got), free(after);
    want = step_state(&host), got = step_state(&dev);
    expect_close(got, want, 3 * N, F32_TOL, "params, m, v after the second applied step");
    free(want), free(got);
    step_run_free(&dev), step_run_free(&host);
    free(initial), free(grads), free(nan_grads);
}

static void test_step_stage0(void **state) { expect_step_follows_cpu(0); }
static void test_step_stage2(void **state) { expect_step_follows_cpu(2); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip_by_norm_matches_cpu),
        cmocka_unit_test(test_adamw_skips_on_the_device),
        cmocka_unit_test(test_step_stage0),
        cmocka_unit_test(test_step_stage2),
    };
    if (!gpu_tests_init("every optimizer step test")) return GPU_TESTS_SKIPPED;
    rng_seed(&test_rng, 20261205);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
