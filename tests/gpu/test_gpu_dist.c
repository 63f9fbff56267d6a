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
// Two ranks (this program started twice with RANK 0 and 1, each its own
// process and communicator, as lora-launch starts them): every collective on
// an odd-sized buffer (equal padded shards) gives the exact sums; ZeRO-2 over
// the two, plain, bucketed and offloaded, gives the parameters of one rank
// stepping on the summed gradient; a peer that dies is an error, not a hang.
// No host stalls in a step (one rank and two): a tiny model's ZeRO-2 steps of
// three micro-batches, their gradients reduced in buckets during the backward
// or after it, then the grad-norm all-reduce and the parameters' all-gather,
// are issued without one host wait (on the emulation, which counts every wait
// and poll that finds work pending); zero_step_norm's read is the step's
// wait; both runs train the same bits. A peer that dies, or hangs, fails that
// wait (and Collectives.wait) within the timeout with a message; a hung one
// also while rank 0 does not wait (NCCL's watchdog thread aborts the
// communicator, the next wait fails at once), and a slow one whose
// collectives keep completing is not aborted past the timeout.
// On a GPU the two ranks need two devices (LORA_TEST_TWO_GPUS=1); the
// emulated backend always runs them.
// Without a usable CUDA device the program prints why and exits 77 (skipped).
#include "gpu_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/model.h"
#include "parallel/parallel.h"
#ifdef LORA_TRAIN_CUDA_EMU
#include <cuda_runtime.h> // cuda_emu_host_waits
#endif

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
    gpu->download(gpu, sum_back, sum, sizeof sum_back);
    gpu->synchronize(gpu);
    assert_memory_equal(sum_back, sum_host, sizeof sum_host);
    gpu->free(gpu, sum), gpu->free(gpu, x), free(back), free(values);
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
    gpu->scale_f32(gpu, x, 2.0f, N); // compute the reductions must wait for
    for (int k = 0; k < N_RANGES; k++)
        if (!nccl->reduce_scatter_range_start(nccl, x, N, ranges[k][0], ranges[k][1], &err)) fail_msg("%s", err.message);
    if (!nccl->wait(nccl, &err)) fail_msg("wait: %s", err.message);
    assert_int_equal(nccl->reductions_finished(nccl), N_RANGES);
    float *back = gpu_f32_result(x, N);
    for (size_t i = 0; i < N; i++) assert_true(back[i] == 2.0f * values[i]);
    assert_false(nccl->reduce_scatter_range_sum(nccl, x, N, 10, N + 1, &err));
    print_message("range outside the buffer: %s\n", err.message);
    gpu->free(gpu, x), free(back), free(values);
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
    gpu->upload(gpu, run->grads, grads_host, N * sizeof(float));
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
    gpu->zero(gpu, run->grads, N * sizeof(float));
    for (size_t end = N; end > 0;) {
        size_t begin = end > LAYER ? end - LAYER : 0;
        gpu->upload_async(gpu, run->grads + begin, grads_host + begin, (end - begin) * sizeof(float));
        gpu->scale_f32(gpu, run->grads + begin, 0.5f, end - begin);
        zero_grads_ready(run->zero, begin, end);
        end = begin;
    }
    if (!zero_reduce_micro_batch(run->zero, run->grads, &err)) fail_msg("zero_reduce_micro_batch: %s", err.message);
    float norm;
    if (!zero_step(run->zero, run->params, run->grads, lr, &norm, &err)) fail_msg("zero_step: %s", err.message);
}

static void zero_run_destroy(ZeroRun *run) {
    zero_destroy(run->zero);
    gpu->free(gpu, run->params), gpu->free(gpu, run->grads);
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
            gpu->upload(gpu, unbucketed[r]->grads, halved, N * sizeof(float));
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

// ----------------------------------------------------------------------------
// no host stalls in a ZeRO-2 step

enum { MODEL_B = 2, MODEL_T = 8, MICRO = 3, MODEL_STEPS = 3 };

static uint64_t host_waits(void) {
#ifdef LORA_TRAIN_CUDA_EMU
    return cuda_emu_host_waits();
#else
    return 0; // a GPU cannot count them
#endif
}

// The tiny preset with LoRA everywhere and non-zero adapters (B too), padded for world ranks.
static Model *tiny_model(int world, Error *err) {
    ModelOptions options = {.ops = gpu, .max_batch = MODEL_B, .max_seq_len = MODEL_T, .seed = 7,
                            .lora = {.r = 4, .alpha = 8}, .flat_shards = world};
    if (!llama_config_preset("tiny", &options.config, err)) return NULL;
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    Model *model = model_create(&options, err);
    if (!model || !model_init_random_base(model, 1234, err)) return model_destroy(model), NULL;
    size_t n = model_params(model)->total, padded = dist_padded_size(n, world);
    float *params = calloc(padded, sizeof *params);
    assert_non_null(params);
    for (size_t i = 0; i < n; i++) params[i] = 0.05f * sinf((float)i);
    gpu->upload(gpu, model_param_data(model), params, padded * sizeof(float));
    model_sync_params(model);
    free(params);
    return model;
}

// Micro-batch `micro` of a step of this rank's tokens: the backward, its gradient reduced.
static bool tiny_micro_batch(Model *model, Zero *zero, int rank, int step, int micro, Error *err) {
    int32_t tokens[MODEL_B * MODEL_T], targets[MODEL_B * MODEL_T];
    int salt = (step * MICRO + micro) * 29 + rank * 13;
    for (int i = 0; i < MODEL_B * MODEL_T; i++) tokens[i] = (i * 7 + salt) % 200, targets[i] = (i * 5 + salt) % 200;
    Batch batch = {.B = MODEL_B, .T = MODEL_T, .tokens = tokens, .targets = targets};
    StepOptions options = {.grad_scale = 1.0f / (MODEL_B * MODEL_T * MICRO), .train = true,
                           .accumulate_loss = micro > 0, .grads_ready = zero_grads_ready, .grads_ready_context = zero};
    zero_begin_micro_batch(zero, micro + 1 == MICRO);
    return model_step(model, &batch, &options, err) && zero_reduce_micro_batch(zero, model_grad_data(model), err);
}

// One step of MICRO micro-batches, as train.c runs it; *waits: the host
// waits from the first micro-batch until the step is issued.
static bool tiny_model_step(Model *model, Zero *zero, int rank, int step, uint64_t *waits, float *norm, Error *err) {
    uint64_t before = host_waits();
    model_zero_grads(model);
    for (int micro = 0; micro < MICRO; micro++)
        if (!tiny_micro_batch(model, zero, rank, step, micro, err)) return false;
    if (!zero_step_issue(zero, model_param_data(model), model_grad_data(model), 1e-2f, err)) return false;
    *waits = host_waits() - before;
    if (!zero_step_norm(zero, norm, err)) return false;
    model_sync_params(model);
    return true;
}

static Zero *tiny_model_zero(Model *model, Collectives *c, bool overlap, Error *err) {
    ZeroOptions options = {.stage = 2, .overlap_comm = overlap, .bucket_elements = 2 * LAYER, .beta1 = 0.9f,
                           .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f, .max_grad_norm = 1.0f};
    return zero_create(gpu, c, model_param_data(model), model_grad_data(model), model_params(model)->total, &options,
                       err);
}

// ZeRO-2 steps with buckets during the backward and with one reduce-scatter
// per micro-batch: no host wait until the norm is read, the same parameters.
static bool steps_without_host_waits(Collectives *c, Error *err) {
    int rank = c->rank;
    Model *models[2] = {tiny_model(c->world_size, err), NULL};
    models[1] = models[0] ? tiny_model(c->world_size, err) : NULL;
    Zero *zeros[2] = {NULL, NULL};
    bool ok = models[1] && (zeros[0] = tiny_model_zero(models[0], c, true, err)) &&
              (zeros[1] = tiny_model_zero(models[1], c, false, err));
    for (int step = 0; ok && step < MODEL_STEPS; step++) {
        for (int k = 0; ok && k < 2; k++) {
            uint64_t waits;
            float norm;
            ok = tiny_model_step(models[k], zeros[k], rank, step, &waits, &norm, err);
            if (ok) printf("rank %d, step %d, %s: %llu host waits until issued, norm %.6g\n", rank, step + 1,
                           k == 0 ? "buckets" : "reduce-scatter", (unsigned long long)waits, norm);
            ok = ok && (waits == 0 || (fail)(err, "rank %d: %llu host waits in a step", rank, (unsigned long long)waits));
        }
    }
    size_t n = ok ? model_params(models[0])->total : 0;
    float *a = ok ? gpu_f32_result(model_param_data(models[0]), n) : NULL;
    float *b = ok ? gpu_f32_result(model_param_data(models[1]), n) : NULL;
    ok = ok && (memcmp(a, b, n * sizeof(float)) == 0 || (fail)(err, "rank %d: the two runs' parameters differ", rank));
    free(a), free(b);
    for (int k = 0; k < 2; k++) zero_destroy(zeros[k]), model_destroy(models[k]);
    return ok;
}

static void test_nccl_step_issues_without_host_waits(void **state) {
    NcclWorld world = nccl_world_of_one();
    Error err;
    if (!steps_without_host_waits(world.nccl, &err)) fail_msg("%s", err.message);
    nccl_world_destroy(&world);
}

// ----------------------------------------------------------------------------
// two ranks, each this program in its own process: `test_gpu_dist --rank SCENARIO`

#define CHECK(cond) \
    if (!(cond)) return (fail)(err, "rank %d: check failed at line %d: %s", rank, __LINE__, #cond)

// x[i] = (rank + 1) + i / 8 for i < n, zeros in the padding: exact in fp32, so sums are exact.
static float *rank_values(size_t n, size_t padded, int rank) {
    float *x = calloc(padded, sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(rank + 1) + (float)i / 8.0f;
    return x;
}

static float sum_over_ranks(size_t i, int world) {
    return (float)(world * (world + 1) / 2) + (float)world * (float)i / 8.0f;
}

// x[begin, end)'s part in this rank's shard holds factor * the sum over
// ranks, the rest of x outside [begin, end) factor * this rank's own values.
static bool check_range(const float *x, size_t begin, size_t end, float factor, int rank, int world, Error *err) {
    size_t owned_begin, owned_end;
    dist_owned_range(N, world, rank, begin, end, &owned_begin, &owned_end);
    for (size_t i = owned_begin; i < owned_end; i++) CHECK(x[i] == factor * sum_over_ranks(i, world));
    for (size_t i = 0; i < N; i++)
        if (i < begin || i >= end) CHECK(x[i] == factor * ((float)(rank + 1) + (float)i / 8.0f));
    return true;
}

// x (device, padded) refilled with this rank's values.
static void refill(float *x, size_t padded, int rank) {
    float *values = rank_values(N, padded, rank);
    gpu->upload(gpu, x, values, padded * sizeof(float));
    free(values);
}

static bool two_rank_collectives(Collectives *c, Error *err) {
    int rank = c->rank, world = c->world_size;
    size_t padded = dist_padded_size(N, world);
    float *x = gpu_alloc(padded * sizeof(float)), *back = host_alloc(padded);
    refill(x, padded, rank);
    if (!c->all_reduce_sum(c, x, N, DTYPE_F32, err)) return false;
    gpu->download(gpu, back, x, N * sizeof(float));
    for (size_t i = 0; i < N; i++) CHECK(back[i] == sum_over_ranks(i, world));

    refill(x, padded, rank);
    if (!c->reduce_scatter_sum(c, x, N, err)) return false;
    gpu->download(gpu, back, x, padded * sizeof(float));
    size_t begin, end;
    dist_shard_range(N, world, rank, &begin, &end);
    for (size_t i = begin; i < end; i++) CHECK(back[i] == sum_over_ranks(i, world));

    for (size_t i = 0; i < padded; i++) back[i] = i >= begin && i < end ? (float)i : -1.0f;
    gpu->upload(gpu, x, back, padded * sizeof(float));
    if (!c->all_gather(c, x, N, err)) return false;
    gpu->download(gpu, back, x, N * sizeof(float));
    for (size_t i = 0; i < N; i++) CHECK(back[i] == (float)i);

    // Buckets: blocking, one at a time, across the shard boundary and empty.
    static const size_t ranges[][2] = {{0, N}, {1, N - 1}, {N / 2 - 3, N / 2 + 7}, {7, 7}, {N - 10, N}};
    for (size_t k = 0; k < sizeof ranges / sizeof ranges[0]; k++) {
        refill(x, padded, rank);
        if (!c->reduce_scatter_range_sum(c, x, N, ranges[k][0], ranges[k][1], err)) return false;
        gpu->download(gpu, back, x, N * sizeof(float));
        if (!check_range(back, ranges[k][0], ranges[k][1], 1.0f, rank, world, err)) return false;
    }
    // ... and disjoint ones all in flight together, behind a kernel on the compute stream.
    static const size_t cuts[] = {0, 3000, N / 2 - 2, N / 2 + 9, N};
    refill(x, padded, rank);
    gpu->scale_f32(gpu, x, 2.0f, N);
    for (size_t k = 0; k + 1 < sizeof cuts / sizeof cuts[0]; k++)
        if (!c->reduce_scatter_range_start(c, x, N, cuts[k], cuts[k + 1], err)) return false;
    if (!c->wait(c, err)) return false;
    gpu->download(gpu, back, x, N * sizeof(float));
    if (!check_range(back, 0, N, 2.0f, rank, world, err)) return false;

    double d[2] = {rank + 0.25, 1e12}, *dev = gpu_copy(d, sizeof d);
    if (!c->all_reduce_sum(c, dev, 2, DTYPE_F64, err)) return false;
    gpu->download(gpu, d, dev, sizeof d);
    CHECK(d[0] == 1.0 + 0.5 && d[1] == 2e12);

    char text[32] = "", expect[32] = "from rank 1";
    if (rank == 1) snprintf(text, sizeof text, "%s", expect);
    void *bytes = gpu_copy(text, sizeof text);
    if (!c->broadcast(c, bytes, sizeof text, 1, err)) return false;
    gpu->download(gpu, text, bytes, sizeof text);
    CHECK(strcmp(text, expect) == 0);
    gpu->free(gpu, bytes), gpu->free(gpu, dev), gpu->free(gpu, x), free(back);
    return c->barrier(c, err);
}

// Rank r's gradient of a step: its own draw, so the two ranks differ.
static void rank_gradient(float *g, int step, int rank) {
    Rng rng;
    rng_seed(&rng, 1000 + 10 * (uint64_t)step + (uint64_t)rank);
    fill_uniform(g, N, -0.005f, 0.005f, &rng);
}

typedef struct ZeroCase {
    const char *name;
    bool offload, overlap;
    float max_grad_norm;
    double tolerance;  // of the parameters against one rank on the summed gradient
} ZeroCase;

// ZeRO-2 over the two ranks against ZeRO on one (collectives_single) stepping
// on the sum of both ranks' gradients (a + b: NCCL's sum of two, the same
// rounding). Without clipping the device AdamW sees the same numbers: the
// same bits; clipping takes the norm from the shards' sums (another order):
// within fp32 rounding; the CPU AdamW of the offload within 1e-5.
static bool two_rank_zero_case(Collectives *c, const ZeroCase *zc, Error *err) {
    int rank = c->rank;
    Collectives *single = collectives_single(err);
    if (!single) return false;
    size_t padded = dist_padded_size(N, c->world_size);
    float *initial = host_alloc(padded), *mine = host_alloc(padded), *other = host_alloc(padded), *sum = host_alloc(N);
    Rng rng;
    rng_seed(&rng, 77);
    memset(initial, 0, padded * sizeof(float));
    fill_uniform(initial, N, -0.5f, 0.5f, &rng);
    ZeroOptions options = {.stage = 2, .offload_cpu = zc->offload, .overlap_comm = zc->overlap,
                           .bucket_elements = 2 * LAYER, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                           .weight_decay = 0.01f, .max_grad_norm = zc->max_grad_norm};
    ZeroOptions one_rank = options;
    one_rank.offload_cpu = false, one_rank.overlap_comm = false;
    ZeroRun ranks = {.params = gpu_copy(initial, padded * sizeof(float)), .grads = gpu_alloc(padded * sizeof(float))};
    ZeroRun reference = {.params = gpu_copy(initial, N * sizeof(float)), .grads = gpu_alloc(N * sizeof(float))};
    gpu->zero(gpu, ranks.grads, padded * sizeof(float));
    ranks.zero = zero_create(gpu, c, ranks.params, ranks.grads, N, &options, err);
    reference.zero = ranks.zero ? zero_create(gpu, single, reference.params, reference.grads, N, &one_rank, err) : NULL;
    bool ok = reference.zero != NULL;
    for (int step = 0; ok && step < STEPS; step++) {
        rank_gradient(mine, step, rank);
        rank_gradient(other, step, 1 - rank);
        for (size_t i = 0; i < N; i++) sum[i] = mine[i] + other[i];
        for (size_t i = 0; i < N; i++) mine[i] *= 2; // the stand-in backward halves it exactly
        if (zc->overlap) zero_run_bucketed_step(&ranks, mine, 1e-2f);
        else {
            for (size_t i = 0; i < N; i++) mine[i] *= 0.5f;
            zero_run_step(&ranks, mine, 1e-2f);
        }
        zero_run_step(&reference, sum, 1e-2f);
    }
    double error = ok ? params_difference(ranks.params, reference.params) : 0;
    print_message("rank %d: %s: parameters after %d steps against one rank on the summed gradient: max relative "
                  "error %.3g (bound %.3g)\n", rank, zc->name, STEPS, error, zc->tolerance);
    ok = ok && (error <= zc->tolerance ||
                (fail)(err, "rank %d: %s: parameters differ from one rank's by %.3g", rank, zc->name, error));
    if (ranks.zero) zero_run_destroy(&ranks);
    else
        gpu->free(gpu, ranks.params), gpu->free(gpu, ranks.grads);
    if (reference.zero) zero_run_destroy(&reference);
    else
        gpu->free(gpu, reference.params), gpu->free(gpu, reference.grads);
    free(initial), free(mine), free(other), free(sum);
    collectives_destroy(single);
    return ok;
}

static bool two_rank_zero(Collectives *c, Error *err) {
    static const ZeroCase cases[] = {
        {"ZeRO-2, one reduce-scatter per step", false, false, 0, 0},
        {"ZeRO-2, buckets during the backward", false, true, 1.0f, 0},
        {"ZeRO-2, clipped", false, false, 0.1f, 1e-6},
        {"ZeRO-2 --offload cpu, buckets copied to the host", true, true, 1.0f, F32_TOL},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        if (!two_rank_zero_case(c, &cases[k], err)) return false;
    return true;
}

// Rank 1 leaves right after joining; rank 0's next collective is enqueued
// without a host wait, and the host's wait for it must fail within the
// timeout, naming what it waited for, and not hang.
static bool two_rank_dead_peer(Collectives *c, Error *err) {
    int rank = c->rank;
    if (rank == 1) _exit(0);
    float *x = gpu_alloc(N * sizeof(float));
    gpu->zero(gpu, x, N * sizeof(float));
    double start = time_seconds();
    uint64_t waits = host_waits();
    CHECK(c->all_reduce_sum(c, x, N, DTYPE_F32, err) && host_waits() == waits);
    bool reduced = c->wait(c, err);
    double waited = time_seconds() - start;
    printf("rank 0, peer gone: all_reduce waited for: %s after %.1f s: %s\n", reduced ? "returned" : "failed", waited,
           reduced ? "" : err->message);
    gpu->free(gpu, x);
    CHECK(!reduced && waited < 30);
    return true;
}

enum { HUNG_TIMEOUT_S = 5 };

// Rank 0's part with a silent peer: `steps` a step issued and its norm read,
// else a micro-batch and then three halves of the upload staging through
// upload_async, whose wait for the staging sits behind the hung reduction
// until NCCL's watchdog aborts the communicator. Either must fail
// with the timeout's message within a few timeouts, not block forever.
static bool hung_peer_fails(Collectives *c, bool steps, Error *err) {
    int rank = c->rank;
    Model *model = tiny_model(c->world_size, err);
    Zero *zero = model ? tiny_model_zero(model, c, true, err) : NULL;
    size_t bytes = CUDA_UPLOAD_STAGING_BYTES / 2 * 3;
    unsigned char *host = calloc(bytes, 1), *device = gpu_alloc(bytes);
    double start = time_seconds();
    uint64_t waits;
    float norm;
    bool done = zero && steps && tiny_model_step(model, zero, rank, 0, &waits, &norm, err);
    if (zero && !steps) {
        model_zero_grads(model);
        done = tiny_micro_batch(model, zero, rank, 0, 0, err);
        if (done) gpu->upload_async(gpu, device, host, bytes);
        done = done && zero_wait(zero, err);
    }
    double waited = time_seconds() - start;
    printf("rank 0, peer hung: %s %s after %.1f s: %s\n", steps ? "the step" : "an upload past the staging",
           done ? "returned" : "failed", waited, done ? "" : err->message);
    bool ok = zero && !done && waited < 3 * HUNG_TIMEOUT_S && strstr(err->message, "did not finish within");
    gpu->free(gpu, device), free(host);
    zero_destroy(zero), model_destroy(model);
    CHECK(ok);
    return true;
}

// Rank 1 joins and then stays silent past the timeout; rank 0's ZeRO-2 step
// is issued without a host wait, and reading its norm fails within the
// timeout (the communicator aborted), not blocks forever.
static bool two_rank_hung_peer(Collectives *c, Error *err) {
    if (c->rank == 1) {
        sleep(HUNG_TIMEOUT_S + 3);
        _exit(0);
    }
    return hung_peer_fails(c, true, err);
}

// The same with the upload staging's wait in the way.
static bool two_rank_hung_peer_upload(Collectives *c, Error *err) {
    if (c->rank == 1) {
        sleep(HUNG_TIMEOUT_S + 3);
        _exit(0);
    }
    return hung_peer_fails(c, false, err);
}

// Rank 1 stays silent; rank 0 issues an all-reduce and then sleeps past the
// timeout without waiting (as a host blocked in a kernel launch behind the
// hung collective would): the watchdog aborts the communicator meanwhile, so
// the next wait fails at once with the timeout's message, and so does the next collective.
static bool two_rank_hung_peer_unwaited(Collectives *c, Error *err) {
    int rank = c->rank;
    if (rank == 1) {
        sleep(HUNG_TIMEOUT_S + 3);
        _exit(0);
    }
    float *x = gpu_alloc(N * sizeof(float));
    gpu->zero(gpu, x, N * sizeof(float));
    CHECK(c->all_reduce_sum(c, x, N, DTYPE_F32, err));
    sleep(HUNG_TIMEOUT_S + 2);
    double start = time_seconds();
    bool reduced = c->wait(c, err);
    double waited = time_seconds() - start;
    printf("rank 0, peer hung, no wait until %d s: the wait %s after %.2f s: %s\n", HUNG_TIMEOUT_S + 2,
           reduced ? "returned" : "failed", waited, reduced ? "" : err->message);
    bool ok = !reduced && waited < 0.5 && strstr(err->message, "did not finish within");
    Error again;
    ok = ok && !c->all_reduce_sum(c, x, N, DTYPE_F32, &again) && strcmp(again.message, err->message) == 0;
    gpu->free(gpu, x);
    CHECK(ok);
    return true;
}

enum { SLOW_TIMEOUT_S = 2, SLOW_COLLECTIVES = 4 };

// Rank 1 issues each of SLOW_COLLECTIVES all-reduces 1 s after the one
// before (a long step, but its collectives keep completing); rank 0 issues
// them all at once and waits past the 2 s timeout: the watchdog measures each
// collective's wait on its peer, so nothing is aborted, and the sums are right.
static bool two_rank_slow_peer(Collectives *c, Error *err) {
    int rank = c->rank;
    float ones[SLOW_COLLECTIVES], sums[SLOW_COLLECTIVES];
    for (int i = 0; i < SLOW_COLLECTIVES; i++) ones[i] = 1;
    float *x = gpu_copy(ones, sizeof ones);
    double start = time_seconds();
    for (int i = 0; i < SLOW_COLLECTIVES; i++) {
        if (rank == 1) sleep(1);
        CHECK(c->all_reduce_sum(c, x + i, 1, DTYPE_F32, err));
    }
    bool reduced = c->wait(c, err);
    double waited = time_seconds() - start;
    if (reduced) gpu->download(gpu, sums, x, sizeof sums);
    printf("rank %d, slow peer: %d all-reduces over %.1f s (timeout %d s): %s%s\n", rank, SLOW_COLLECTIVES, waited,
           SLOW_TIMEOUT_S, reduced ? "reduced" : "failed: ", reduced ? "" : err->message);
    gpu->free(gpu, x);
    CHECK(reduced && waited > SLOW_TIMEOUT_S);
    for (int i = 0; i < SLOW_COLLECTIVES; i++) CHECK(sums[i] == 2);
    return true;
}

typedef bool (*RankScenario)(Collectives *c, Error *err);

static RankScenario scenario_named(const char *name) {
    if (strcmp(name, "collectives") == 0) return two_rank_collectives;
    if (strcmp(name, "zero") == 0) return two_rank_zero;
    if (strcmp(name, "dead-peer") == 0) return two_rank_dead_peer;
    if (strcmp(name, "hung-peer") == 0) return two_rank_hung_peer;
    if (strcmp(name, "hung-peer-upload") == 0) return two_rank_hung_peer_upload;
    if (strcmp(name, "hung-peer-unwaited") == 0) return two_rank_hung_peer_unwaited;
    if (strcmp(name, "slow-peer") == 0) return two_rank_slow_peer;
    if (strcmp(name, "no-host-wait") == 0) return steps_without_host_waits;
    return NULL;
}

// The body of one rank process: joins the job the environment describes
// (RANK, WORLD_SIZE, MASTER_PORT, ...) and runs the scenario.
static int run_rank(const char *scenario_name) {
    RankScenario scenario = scenario_named(scenario_name);
    Error err = {0};
    RankInfo info;
    if (!scenario || !gpu_tests_init("NCCL, two ranks") || !rank_info_from_env(&info, &err)) {
        fprintf(stderr, "rank: cannot run scenario %s: %s\n", scenario_name, err.message);
        return 1;
    }
    double timeout_s = strcmp(scenario_name, "dead-peer") == 0       ? 10
                       : strncmp(scenario_name, "hung-peer", 9) == 0 ? HUNG_TIMEOUT_S
                       : strcmp(scenario_name, "slow-peer") == 0       ? SLOW_TIMEOUT_S
                                                                     : 60;
    Store *store = store_create(&info, timeout_s, &err);
    Collectives *nccl = store ? collectives_nccl(store, &info, timeout_s, &err) : NULL;
    bool ok = nccl && scenario(nccl, &err);
    if (!ok) fprintf(stderr, "rank %d, %s: %s\n", info.rank, scenario_name, err.message);
    if (nccl) collectives_destroy(nccl);
    if (store) store_destroy(store);
    return ok ? 0 : 1;
}

// Starts this program twice as ranks 0 and 1 of a job on a free port and
// returns how many of them failed.
static int run_two_ranks(const char *scenario) {
    int port = free_tcp_port(), failed = 0;
    pid_t pids[2];
    for (int r = 0; r < 2; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] > 0) continue;
        char rank[8], port_text[16];
        snprintf(rank, sizeof rank, "%d", r), snprintf(port_text, sizeof port_text, "%d", port);
        setenv("RANK", rank, 1), setenv("LOCAL_RANK", rank, 1), setenv("WORLD_SIZE", "2", 1);
        setenv("LOCAL_WORLD_SIZE", "2", 1), setenv("MASTER_ADDR", "127.0.0.1", 1), setenv("MASTER_PORT", port_text, 1);
        execl("/proc/self/exe", "test_gpu_dist", "--rank", scenario, (char *)NULL);
        _exit(127);
    }
    for (int r = 0; r < 2; r++) {
        int status;
        assert_int_equal(waitpid(pids[r], &status, 0), pids[r]);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
    }
    return failed;
}

static bool two_devices_or_skip(void) {
#ifndef LORA_TRAIN_CUDA_EMU
    if (!getenv("LORA_TEST_TWO_GPUS")) {  // NCCL refuses two ranks on one device
        print_message("two ranks need two GPUs: set LORA_TEST_TWO_GPUS=1 where there are\n");
        return false;
    }
#endif
    return true;
}

static void test_nccl_two_ranks_collectives(void **state) {
    if (!two_devices_or_skip()) skip();
    assert_int_equal(run_two_ranks("collectives"), 0);
}

static void test_nccl_two_ranks_zero_follows_one_rank(void **state) {
    if (!two_devices_or_skip()) skip();
    assert_int_equal(run_two_ranks("zero"), 0);
}

static void test_nccl_two_ranks_dead_peer_is_an_error(void **state) {
    if (!two_devices_or_skip()) skip();
    assert_int_equal(run_two_ranks("dead-peer"), 0);
}

static void test_nccl_two_ranks_hung_peer_is_an_error(void **state) {
    if (!two_devices_or_skip()) skip();
    assert_int_equal(run_two_ranks("hung-peer"), 0);
}

static void test_nccl_two_ranks_hung_peer_behind_the_upload_staging_is_an_error(void **state) {
    if (!two_devices_or_skip()) skip();
    assert_int_equal(run_two_ranks("hung-peer-upload"), 0);
}

static void test_nccl_two_ranks_hung_peer_is_aborted_without_a_wait(void **state) {
    if (!two_devices_or_skip()) skip();
    assert_int_equal(run_two_ranks("hung-peer-unwaited"), 0);
}

static void test_nccl_two_ranks_slow_peer_is_not_aborted(void **state) {
    if (!two_devices_or_skip()) skip();
    assert_int_equal(run_two_ranks("slow-peer"), 0);
}

static void test_nccl_two_ranks_step_issues_without_host_waits(void **state) {
    if (!two_devices_or_skip()) skip();
    assert_int_equal(run_two_ranks("no-host-wait"), 0);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--rank") == 0) return run_rank(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nccl_world_size_one),
        cmocka_unit_test(test_nccl_ranged_reduce_scatter),
        cmocka_unit_test(test_nccl_buckets_give_the_unbucketed_parameters),
        cmocka_unit_test(test_nccl_join_times_out_without_the_peer),
        cmocka_unit_test(test_offload_gives_the_parameters_of_no_offload),
        cmocka_unit_test(test_nccl_two_ranks_collectives),
        cmocka_unit_test(test_nccl_two_ranks_zero_follows_one_rank),
        cmocka_unit_test(test_nccl_two_ranks_dead_peer_is_an_error),
        cmocka_unit_test(test_nccl_two_ranks_hung_peer_is_an_error),
        cmocka_unit_test(test_nccl_two_ranks_hung_peer_behind_the_upload_staging_is_an_error),
        cmocka_unit_test(test_nccl_two_ranks_hung_peer_is_aborted_without_a_wait),
        cmocka_unit_test(test_nccl_two_ranks_slow_peer_is_not_aborted),
        cmocka_unit_test(test_nccl_step_issues_without_host_waits),
        cmocka_unit_test(test_nccl_two_ranks_step_issues_without_host_waits),
    };
    if (!gpu_tests_init("NCCL and offload GPU tests")) return GPU_TESTS_SKIPPED;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
