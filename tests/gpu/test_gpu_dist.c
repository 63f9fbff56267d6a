// Distributed and offload paths on the CUDA backend: a world-size-1 NCCL
// communicator (bootstrapped through the store) runs every collective, the
// ranged reduce-scatter blocking and in the background included, and leaves
// the data as it was (the sum over one rank); ZeRO-2 with gradient buckets
// reduced on the communication stream during a stand-in backward gives the
// parameters of the unbucketed reduction; ZeRO with --offload cpu
// (immediate, and the delayed update against the immediate one a step
// later) gives the parameters of ZeRO without offload on the same gradient
// sequence: the CPU AdamW against the CUDA op, < 1e-5 relative; with buckets
// copied to the host on the copy stream during the stand-in backward (after
// the compute stream with one rank, after NCCL's event on a communicator)
// the same bits as the shard downloaded at the step.
// Without a usable CUDA device the program prints why and exits 77 (skipped).
#include "gpu_test_util.h"

#include <stdlib.h>
#include <string.h>

#include "parallel/parallel.h"

#define F32_TOL 1e-5

enum { N = 10007, STEPS = 5 };

// ----------------------------------------------------------------------------
// NCCL, world size 1

typedef struct NcclWorld {
    Store *store;
    Collectives *nccl;
} NcclWorld;

static NcclWorld nccl_world_of_one(void) {
    RankInfo info = {.rank = 0, .world_size = 1, .local_rank = 0, .local_world_size = 1,
                     .master_addr = "127.0.0.1", .master_port = free_tcp_port()};
    Error err;
    NcclWorld world = {.store = store_create(&info, 30, &err)};
    if (!world.store) fail_msg("store_create: %s", err.message);
    world.nccl = collectives_nccl(world.store, &info, 30, &err);
    if (!world.nccl) fail_msg("collectives_nccl: %s", err.message);
    return world;
}

static void nccl_world_destroy(NcclWorld *world) {
    collectives_destroy(world->nccl);
    store_destroy(world->store);
}

static void test_nccl_world_size_one(void **state) {
    NcclWorld world = nccl_world_of_one();
    Collectives *nccl = world.nccl;
    Error err;
    assert_string_equal(nccl->name, "nccl");
    Rng rng;
    rng_seed(&rng, 5);
    float *values = malloc(N * sizeof(float));
    fill_uniform(values, N, -1, 1, &rng);
    float *x = gpu_copy(values, N * sizeof(float));
    assert_true(nccl->all_reduce_sum(nccl, x, N, DTYPE_F32, &err));
    assert_true(nccl->reduce_scatter_sum(nccl, x, N, &err));
    assert_true(nccl->all_gather(nccl, x, N, &err));
    assert_true(nccl->broadcast(nccl, x, N * sizeof(float), 0, &err));
    assert_true(nccl->barrier(nccl, &err));
    float *back = gpu_f32_result(x, N);
    assert_memory_equal(back, values, N * sizeof(float));
    double sum_host[2] = {1.5, -2.25}, sum_back[2];
    double *sum = gpu_copy(sum_host, sizeof sum_host);
    assert_true(nccl->all_reduce_sum(nccl, sum, 2, DTYPE_F64, &err));
    gpu->download(sum_back, sum, sizeof sum_back);
    gpu->synchronize();
    assert_memory_equal(sum_back, sum_host, sizeof sum_host);
    gpu->free(sum), gpu->free(x), free(back), free(values);
    nccl_world_destroy(&world);
}

// Ranges across the buffer, an empty one, blocking and then all in flight
// together behind a kernel on the compute stream: x is unchanged.
static void test_nccl_ranged_reduce_scatter(void **state) {
    NcclWorld world = nccl_world_of_one();
    Collectives *nccl = world.nccl;
    static const size_t ranges[][2] = {{0, N}, {1, N - 1}, {5000, 5003}, {7, 7}, {N - 10, N}};
    enum { N_RANGES = sizeof ranges / sizeof ranges[0] };
    Rng rng;
    rng_seed(&rng, 6);
    float *values = malloc(N * sizeof(float));
    fill_uniform(values, N, -1, 1, &rng);
    float *x = gpu_copy(values, N * sizeof(float));
    Error err;
    for (int k = 0; k < N_RANGES; k++)
        if (!nccl->reduce_scatter_range_sum(nccl, x, N, ranges[k][0], ranges[k][1], &err)) fail_msg("%s", err.message);
    gpu->scale_f32(x, 2.0f, N); // compute the reductions must wait for
    for (int k = 0; k < N_RANGES; k++)
        if (!nccl->reduce_scatter_range_start(nccl, x, N, ranges[k][0], ranges[k][1], &err)) fail_msg("%s", err.message);
    if (!nccl->wait(nccl, &err)) fail_msg("wait: %s", err.message);
    assert_int_equal(nccl->reductions_finished(nccl), N_RANGES);
    float *back = gpu_f32_result(x, N);
    for (size_t i = 0; i < N; i++) assert_true(back[i] == 2.0f * values[i]);
    assert_false(nccl->reduce_scatter_range_sum(nccl, x, N, 10, N + 1, &err));
    print_message("range outside the buffer: %s\n", err.message);
    gpu->free(x), free(back), free(values);
    nccl_world_destroy(&world);
}

// Rank 0 of two whose peer never joins: joining the communicator must fail
// within the timeout with a message, not block forever (as the blocking
// ncclCommInitRank did).
static void test_nccl_join_times_out_without_the_peer(void **state) {
    RankInfo info = {.rank = 0, .world_size = 2, .local_rank = 0, .local_world_size = 2,
                     .master_addr = "127.0.0.1", .master_port = free_tcp_port()};
    Error err;
    Store *store = store_create(&info, 3, &err);
    if (!store) fail_msg("store_create: %s", err.message);
    double start = time_seconds();
    Collectives *nccl = collectives_nccl(store, &info, 3, &err);
    double waited = time_seconds() - start;
    print_message("collectives_nccl without the peer: %.1f s: %s\n", waited, nccl ? "joined?" : err.message);
    assert_null(nccl);
    assert_non_null(strstr(err.message, "did not finish within"));
    assert_true(waited < 30);
    store_destroy(store);
}

// ----------------------------------------------------------------------------
// offload against no offload

typedef struct ZeroRun {
    Zero *zero;
    float *params, *grads; // device (N)
} ZeroRun;

enum { LAYER = 1000 }; // gradient elements per layer of the stand-in backward

static ZeroRun zero_run(Collectives *coll, const float *initial, bool offload, bool delayed, bool overlap) {
    ZeroOptions options = {.stage = 2, .offload_cpu = offload, .delayed_update = delayed, .beta1 = 0.9f,
                           .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f, .max_grad_norm = 1.0f,
                           .overlap_comm = overlap, .bucket_elements = 2 * LAYER};
    Error err;
    ZeroRun run = {.params = gpu_copy(initial, N * sizeof(float)), .grads = gpu_alloc(N * sizeof(float))};
    run.zero = zero_create(gpu, coll, run.params, run.grads, N, &options, &err);
    if (!run.zero) fail_msg("zero_create: %s", err.message);
    return run;
}

static void zero_run_step(ZeroRun *run, const float *grads_host, float lr) {
    gpu->upload(run->grads, grads_host, N * sizeof(float));
    float norm;
    Error err;
    if (!zero_step(run->zero, run->params, run->grads, lr, &norm, &err)) fail_msg("zero_step: %s", err.message);
}

// As a backward would: each "layer" of LAYER elements of the gradient written
// (uploaded, then scaled on the compute stream) and reported from the last
// down, buckets of two layers, then the micro-batch's reduction and the step.
// The one micro-batch is the step's last: with offload its buckets go to the host.
static void zero_run_bucketed_step(ZeroRun *run, const float *grads_host, float lr) {
    Error err;
    zero_begin_micro_batch(run->zero, true);
    gpu->zero(run->grads, N * sizeof(float));
    for (size_t end = N; end > 0;) {
        size_t begin = end > LAYER ? end - LAYER : 0;
        gpu->upload(run->grads + begin, grads_host + begin, (end - begin) * sizeof(float));
        gpu->scale_f32(run->grads + begin, 0.5f, end - begin);
        zero_grads_ready(run->zero, begin, end);
        end = begin;
    }
    if (!zero_reduce_micro_batch(run->zero, run->grads, &err)) fail_msg("zero_reduce_micro_batch: %s", err.message);
    float norm;
    if (!zero_step(run->zero, run->params, run->grads, lr, &norm, &err)) fail_msg("zero_step: %s", err.message);
}

static void zero_run_destroy(ZeroRun *run) {
    zero_destroy(run->zero);
    gpu->free(run->params), gpu->free(run->grads);
}

// Max |a - b| / max(|b|, floor) over the buffer, on the host.
static double params_difference(const float *a_device, const float *b_device) {
    float *a = gpu_f32_result(a_device, N), *b = gpu_f32_result(b_device, N);
    double *reference = malloc(N * sizeof(double));
    assert_non_null(reference);
    for (size_t i = 0; i < N; i++) reference[i] = b[i];
    double error = max_rel_error(a, reference, N, 1e-3);
    free(a), free(b), free(reference);
    return error;
}

static void test_offload_gives_the_parameters_of_no_offload(void **state) {
    Error err;
    Collectives *coll = collectives_single(&err);
    assert_non_null(coll);
    Rng rng;
    rng_seed(&rng, 11);
    float *initial = malloc(N * sizeof(float)), *grads[STEPS], *doubled = malloc(N * sizeof(float));
    fill_uniform(initial, N, -0.5f, 0.5f, &rng);
    for (int step = 0; step < STEPS; step++) {
        grads[step] = malloc(N * sizeof(float));
        fill_uniform(grads[step], N, -0.02f, 0.02f, &rng);
    }
    ZeroRun plain = zero_run(coll, initial, false, false, false), offload = zero_run(coll, initial, true, false, false);
    ZeroRun delayed = zero_run(coll, initial, true, true, false);
    ZeroRun offload_buckets = zero_run(coll, initial, true, false, true), delayed_buckets = zero_run(coll, initial, true, true, true);
    for (int step = 0; step < STEPS; step++) {
        float lr = 1e-2f / (float)(step + 1);
        for (size_t i = 0; i < N; i++) doubled[i] = 2 * grads[step][i]; // the stand-in backward halves it exactly
        zero_run_step(&plain, grads[step], lr);
        zero_run_step(&offload, grads[step], lr);
        zero_run_step(&delayed, grads[step], lr);
        zero_run_bucketed_step(&offload_buckets, doubled, lr);
        zero_run_bucketed_step(&delayed_buckets, doubled, lr);
        double error = params_difference(offload.params, plain.params);
        double buckets_error = params_difference(offload_buckets.params, offload.params);
        print_message("step %d: offload vs no offload, max relative error %.3g; copied per bucket vs downloaded %.3g\n",
                      step + 1, error, buckets_error);
        assert_true(error < F32_TOL);
        assert_true(buckets_error == 0);
    }
    // The delayed run, flushed, has applied the same updates (its gradients did not depend on its parameters).
    assert_true(zero_flush(delayed.zero, delayed.params, &err));
    assert_true(zero_flush(delayed_buckets.zero, delayed_buckets.params, &err));
    double error = params_difference(delayed.params, plain.params);
    double buckets_error = params_difference(delayed_buckets.params, delayed.params);
    print_message("delayed update, flushed, vs no offload: max relative error %.3g; copied per bucket vs downloaded %.3g\n",
                  error, buckets_error);
    assert_true(error < F32_TOL);
    assert_true(buckets_error == 0);
    zero_run_destroy(&plain), zero_run_destroy(&offload), zero_run_destroy(&delayed);
    zero_run_destroy(&offload_buckets), zero_run_destroy(&delayed_buckets);
    for (int step = 0; step < STEPS; step++) free(grads[step]);
    free(initial), free(doubled);
    collectives_destroy(coll);
}

static void test_nccl_buckets_give_the_unbucketed_parameters(void **state) {
    NcclWorld world = nccl_world_of_one();
    Rng rng;
    rng_seed(&rng, 12);
    float *initial = malloc(N * sizeof(float)), *grads = malloc(N * sizeof(float)), *halved = malloc(N * sizeof(float));
    fill_uniform(initial, N, -0.5f, 0.5f, &rng);
    ZeroRun bucketed = zero_run(world.nccl, initial, false, false, true);
    ZeroRun plain = zero_run(world.nccl, initial, false, false, false);
    ZeroRun offload_bucketed = zero_run(world.nccl, initial, true, false, true); // copies after NCCL's event
    ZeroRun offload_plain = zero_run(world.nccl, initial, true, false, false);
    Error err;
    for (int step = 0; step < STEPS; step++) {
        fill_uniform(grads, N, -0.02f, 0.02f, &rng);
        for (size_t i = 0; i < N; i++) halved[i] = 0.5f * grads[i];
        zero_run_bucketed_step(&bucketed, grads, 1e-2f);
        zero_run_bucketed_step(&offload_bucketed, grads, 1e-2f);
        ZeroRun *unbucketed[] = {&plain, &offload_plain};
        for (int r = 0; r < 2; r++) {
            gpu->upload(unbucketed[r]->grads, halved, N * sizeof(float));
            if (!zero_reduce_micro_batch(unbucketed[r]->zero, unbucketed[r]->grads, &err)) fail_msg("%s", err.message);
            float norm;
            if (!zero_step(unbucketed[r]->zero, unbucketed[r]->params, unbucketed[r]->grads, 1e-2f, &norm, &err))
                fail_msg("%s", err.message);
        }
    }
    double error = params_difference(bucketed.params, plain.params);
    double offload_error = params_difference(offload_bucketed.params, offload_plain.params);
    print_message("buckets of %d during the stand-in backward vs one reduction: max relative error %.3g, %.3g with "
                  "offload (copied per bucket vs downloaded)\n", 2 * LAYER, error, offload_error);
    assert_true(error == 0 && offload_error == 0);
    zero_run_destroy(&bucketed), zero_run_destroy(&plain), zero_run_destroy(&offload_bucketed), zero_run_destroy(&offload_plain);
    free(initial), free(grads), free(halved);
    nccl_world_destroy(&world);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nccl_world_size_one),
        cmocka_unit_test(test_nccl_ranged_reduce_scatter),
        cmocka_unit_test(test_nccl_buckets_give_the_unbucketed_parameters),
        cmocka_unit_test(test_nccl_join_times_out_without_the_peer),
        cmocka_unit_test(test_offload_gives_the_parameters_of_no_offload),
    };
    if (!gpu_tests_init("NCCL and offload GPU tests")) return GPU_TESTS_SKIPPED;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
