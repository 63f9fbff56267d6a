// dist: rank variables, shards, the store and the CPU collectives between
// forked processes (including a rank that dies and one that hangs), the
// ranged reduce-scatter (blocking and in the background), ZeRO-2's
// per-micro-batch reduce-scatter against stage 0, its gradient buckets
// reduced while the backward of a many-layer model goes on (and a rank that
// dies with a bucket in flight), with the offload their copies to the host
// made during the backward and the steps equal to the unbucketed offload's,
// zero_step on the CPU backend against the host sequence it replaced (bit for
// bit, clipped and skipped steps), and the offloaded CPU AdamW against the
// CPU backend's op.
#include "test_util.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parallel/parallel.h"
#include "model/model.h"

static void clear_rank_env(void) {
    const char *names[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                           "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) unsetenv(names[i]);
}

static void test_rank_info_from_env(void **state) {
    clear_rank_env();
    RankInfo info;
    Error err;
    assert_true(rank_info_from_env(&info, &err));
    assert_int_equal(info.world_size, 1);
    assert_string_equal(info.master_addr, "127.0.0.1");

    setenv("RANK", "5", 1), setenv("WORLD_SIZE", "8", 1), setenv("LOCAL_RANK", "1", 1);
    setenv("LOCAL_WORLD_SIZE", "4", 1), setenv("MASTER_ADDR", "node0", 1), setenv("MASTER_PORT", "1234", 1);
    assert_true(rank_info_from_env(&info, &err));
    assert_int_equal(info.rank, 5);
    assert_int_equal(info.world_size, 8);
    assert_int_equal(info.local_rank, 1);
    assert_int_equal(info.local_world_size, 4);
    assert_string_equal(info.master_addr, "node0");
    assert_int_equal(info.master_port, 1234);

    clear_rank_env();
    setenv("SLURM_PROCID", "2", 1), setenv("SLURM_NTASKS", "3", 1), setenv("SLURM_LOCALID", "0", 1);
    assert_true(rank_info_from_env(&info, &err));
    assert_int_equal(info.rank, 2);
    assert_int_equal(info.world_size, 3);
    assert_int_equal(info.local_rank, 0);

    clear_rank_env();
    setenv("RANK", "x1", 1), setenv("WORLD_SIZE", "2", 1);
    assert_false(rank_info_from_env(&info, &err));
    assert_non_null(strstr(err.message, "RANK='x1'"));
    setenv("RANK", "2", 1);
    assert_false(rank_info_from_env(&info, &err));
    assert_non_null(strstr(err.message, "rank 2 is outside world size 2"));
    clear_rank_env();
}

static void test_shard_ranges_cover_the_buffer(void **state) {
    size_t expect[][2] = {{0, 4}, {4, 8}, {8, 10}};
    for (int r = 0; r < 3; r++) {
        size_t begin, end;
        dist_shard_range(10, 3, r, &begin, &end);
        assert_int_equal(begin, expect[r][0]);
        assert_int_equal(end, expect[r][1]);
    }
    size_t begin, end;
    dist_shard_range(4, 3, 2, &begin, &end); // shards of 2: the last is empty
    assert_int_equal(begin, 4);
    assert_int_equal(end, 4);
    size_t owned[][2] = {{3, 4}, {4, 7}, {8, 8}}; // [3, 7) of 10: rank 2's shard [8, 10) holds none of it
    for (int r = 0; r < 3; r++) {
        dist_owned_range(10, 3, r, 3, 7, &begin, &end);
        assert_int_equal(begin, owned[r][0]);
        assert_int_equal(end, owned[r][1]);
    }
}

// ----------------------------------------------------------------------------
// forked ranks: each runs a body and writes its error (or "ok") to a file

typedef bool (*RankBody)(Store *store, Collectives *coll, int rank, Error *err);


static void run_rank(const char *dir, int rank, int world, int port, double timeout_s, RankBody body) {
    RankInfo info = {.rank = rank, .world_size = world, .local_rank = rank, .local_world_size = world,
                     .master_addr = "127.0.0.1", .master_port = port};
    Error err = {{0}};
    Store *store = store_create(&info, timeout_s, &err);
    Collectives *coll = store ? collectives_cpu(store, &info, timeout_s, &err) : NULL;
    bool ok = coll && body(store, coll, rank, &err);
    char path[512];
    snprintf(path, sizeof path, "%s/rank%d.txt", dir, rank);
    FILE *f = fopen(path, "w");
    if (f) fprintf(f, "%s", ok ? "ok" : err.message), fclose(f);
    collectives_destroy(coll);
    store_destroy(store);
    _exit(ok ? 0 : 1);
}

// Runs body on `world` forked ranks; messages[r] receives each rank's outcome.
static void run_ranks(int world, int port, double timeout_s, RankBody body, char messages[][ERROR_MESSAGE_MAX]) {
    const char *dir = make_temp_dir("dist");
    pid_t pids[8];
    for (int r = 0; r < world; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0) run_rank(dir, r, world, port, timeout_s, body);
    }
    for (int r = 0; r < world; r++) {
        int status;
        assert_int_equal(waitpid(pids[r], &status, 0), pids[r]);
        char path[512];
        snprintf(path, sizeof path, "%s/rank%d.txt", dir, r);
        FILE *f = fopen(path, "r");
        size_t got = f ? fread(messages[r], 1, ERROR_MESSAGE_MAX - 1, f) : 0;
        messages[r][got] = '\0';
        if (f) fclose(f);
        if (!f) snprintf(messages[r], ERROR_MESSAGE_MAX, "(no outcome: status %d)", status);
    }
}

#define CHECK(cond) \
    if (!(cond)) return (fail)(err, "check failed at line %d: %s", __LINE__, #cond)

// x[i] = (rank + 1) + i / 8: exact in fp32, so sums are exact.
static void fill_rank_values(float *x, size_t n, int rank) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(rank + 1) + (float)i / 8.0f;
}

static bool every_collective(Store *store, Collectives *c, int rank, Error *err) {
    enum { N = 1003 };
    int world = c->world_size;
    float x[N];
    float rank_sum = (float)(world * (world + 1) / 2);
    fill_rank_values(x, N, rank);
    if (!c->all_reduce_sum(c, x, N, DTYPE_F32, err)) return false;
    for (size_t i = 0; i < N; i++) CHECK(x[i] == rank_sum + (float)world * (float)i / 8.0f);

    fill_rank_values(x, N, rank);
    if (!c->reduce_scatter_sum(c, x, N, err)) return false;
    size_t begin, end;
    dist_shard_range(N, world, rank, &begin, &end);
    for (size_t i = begin; i < end; i++) CHECK(x[i] == rank_sum + (float)world * (float)i / 8.0f);

    for (size_t i = 0; i < N; i++) x[i] = -1.0f;
    for (size_t i = begin; i < end; i++) x[i] = (float)i;
    if (!c->all_gather(c, x, N, err)) return false;
    for (size_t i = 0; i < N; i++) CHECK(x[i] == (float)i);

    double d[2] = {rank + 0.25, 1e12};
    if (!c->all_reduce_sum(c, d, 2, DTYPE_F64, err)) return false;
    CHECK(d[0] == rank_sum - world + 0.25 * world && d[1] == 1e12 * world);

    char text[32] = "";
    if (rank == world - 1) snprintf(text, sizeof text, "from rank %d", rank);
    if (!c->broadcast(c, text, sizeof text, world - 1, err)) return false;
    char expect[32];
    snprintf(expect, sizeof expect, "from rank %d", world - 1);
    CHECK(strcmp(text, expect) == 0);

    if (rank == 1 && !store_set(store, "greeting", "hello", 6, err)) return false;
    void *value = NULL;
    if (!store_get(store, "greeting", &value, NULL, err)) return false;
    bool same = strcmp(value, "hello") == 0;
    free(value);
    CHECK(same);
    return c->barrier(c, err);
}

static void test_collectives_between_processes(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    for (int world = 2; world <= 3; world++) {
        run_ranks(world, free_tcp_port(), 20, every_collective, messages);
        for (int r = 0; r < world; r++) {
            if (strcmp(messages[r], "ok") != 0) fail_msg("world %d rank %d: %s", world, r, messages[r]);
        }
    }
}

// ----------------------------------------------------------------------------
// the ranged reduce-scatter

// (n, begin, end): odd sizes, ranges across shard boundaries, an empty range,
// and n = 4 or 5 over 3 ranks (shards of 2: the last one empty or short).
static const size_t RANGES[][3] = {{1003, 0, 1003}, {1003, 1, 1002}, {1003, 330, 672}, {1003, 499, 505},
                                   {1003, 7, 7},    {1003, 900, 1003}, {4, 0, 4},      {4, 1, 4},
                                   {4, 3, 4},       {5, 2, 5}};
#define N_RANGES (sizeof RANGES / sizeof RANGES[0])

// x's owned part of [begin, end) holds the sum over ranks of fill_rank_values;
// every element outside [begin, end) is this rank's own value.
static bool check_range_sums(const float *x, size_t n, size_t begin, size_t end, int rank, int world, Error *err) {
    size_t owned_begin, owned_end;
    dist_owned_range(n, world, rank, begin, end, &owned_begin, &owned_end);
    float rank_sum = (float)(world * (world + 1) / 2);
    for (size_t i = 0; i < n; i++) {
        bool inside = i >= begin && i < end, owned = i >= owned_begin && i < owned_end;
        float expect = owned ? rank_sum + (float)world * (float)i / 8.0f : (float)(rank + 1) + (float)i / 8.0f;
        if ((owned || !inside) && x[i] != expect)
            return (fail)(err, "n %zu, range [%zu, %zu): x[%zu] = %g, expected %g", n, begin, end, i, x[i], expect);
    }
    return true;
}

static bool ranged_reduce_scatter(Store *store, Collectives *c, int rank, Error *err) {
    static float x[N_RANGES][1003];
    for (size_t k = 0; k < N_RANGES; k++) { // one at a time
        size_t n = RANGES[k][0], begin = RANGES[k][1], end = RANGES[k][2];
        fill_rank_values(x[k], n, rank);
        if (!c->reduce_scatter_range_sum(c, x[k], n, begin, end, err) ||
            !check_range_sums(x[k], n, begin, end, rank, c->world_size, err))
            return false;
    }
    size_t finished = c->reductions_finished(c);
    for (size_t k = 0; k < N_RANGES; k++) { // all of them in flight at once
        fill_rank_values(x[k], RANGES[k][0], rank);
        if (!c->reduce_scatter_range_start(c, x[k], RANGES[k][0], RANGES[k][1], RANGES[k][2], err)) return false;
    }
    if (!c->wait(c, err)) return false;
    CHECK(c->reductions_finished(c) == finished + N_RANGES);
    for (size_t k = 0; k < N_RANGES; k++)
        if (!check_range_sums(x[k], RANGES[k][0], RANGES[k][1], RANGES[k][2], rank, c->world_size, err)) return false;
    // a collective right after background reductions waits for them
    fill_rank_values(x[0], 1003, rank);
    if (!c->reduce_scatter_range_start(c, x[0], 1003, 10, 990, err) || !c->barrier(c, err)) return false;
    CHECK(c->reductions_finished(c) == finished + N_RANGES + 1);
    return check_range_sums(x[0], 1003, 10, 990, rank, c->world_size, err);
}

static void test_ranged_reduce_scatter(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    for (int world = 2; world <= 3; world++) {
        run_ranks(world, free_tcp_port(), 20, ranged_reduce_scatter, messages);
        for (int r = 0; r < world; r++)
            if (strcmp(messages[r], "ok") != 0) fail_msg("world %d rank %d: %s", world, r, messages[r]);
    }
}

// ZeRO-2 with a reduce-scatter after every micro-batch: the shard holds the
// exact sum over ranks and micro-batches (values exact in fp32), zeros
// elsewhere, and the step gives the parameters of stage 0 on the whole sums.
static bool micro_batch_reduction(Store *store, Collectives *c, int rank, Error *err) {
    enum { N = 1003, MICRO = 3 };
    static float params[N], params_stage0[N], grads[N], grads_stage0[N];
    for (size_t i = 0; i < N; i++) params[i] = params_stage0[i] = 0.01f * (float)(i % 17), grads[i] = grads_stage0[i] = 0;
    ZeroOptions options = {.stage = 2, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f,
                           .max_grad_norm = 100.0f};
    Zero *stage2 = zero_create(ops_cpu(), c, params, grads, N, &options, err);
    options.stage = 0;
    Zero *stage0 = stage2 ? zero_create(ops_cpu(), c, params_stage0, grads_stage0, N, &options, err) : NULL;
    if (!stage0) return zero_destroy(stage2), false;
    bool ok = true;
    for (int micro = 0; micro < MICRO && ok; micro++) {
        for (size_t i = 0; i < N; i++) {
            float g = (float)((rank + 1) * (micro + 1)) + (float)i / 8.0f;
            grads[i] += g, grads_stage0[i] += g;
        }
        ok = zero_reduce_micro_batch(stage2, grads, err) && zero_reduce_micro_batch(stage0, grads_stage0, err);
    }
    int world = c->world_size;
    size_t begin, end;
    dist_shard_range(N, world, rank, &begin, &end);
    for (size_t i = 0; i < N && ok; i++) {
        float expect = i >= begin && i < end ? (float)(6 * world * (world + 1) / 2) + (float)(MICRO * world) * i / 8.0f : 0;
        ok = grads[i] == expect || (fail)(err, "grads[%zu] = %g, expected %g", i, grads[i], expect);
    }
    float norm2, norm0;
    ok = ok && zero_step(stage2, params, grads, 1e-2f, &norm2, err) &&
         zero_step(stage0, params_stage0, grads_stage0, 1e-2f, &norm0, err);
    for (size_t i = 0; i < N && ok; i++)
        ok = fabsf(params[i] - params_stage0[i]) <= 1e-6f * fabsf(params_stage0[i]) + 1e-9f ||
             (fail)(err, "params[%zu] = %.9g at stage 2, %.9g at stage 0", i, params[i], params_stage0[i]);
    ok = ok && (fabsf(norm2 - norm0) <= 1e-6f * norm0 || (fail)(err, "grad norm %g at stage 2, %g at stage 0", norm2, norm0));
    zero_destroy(stage2), zero_destroy(stage0);
    return ok;
}

static void test_zero2_reduces_every_micro_batch(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    for (int world = 2; world <= 3; world++) {
        run_ranks(world, free_tcp_port(), 20, micro_batch_reduction, messages);
        for (int r = 0; r < world; r++)
            if (strcmp(messages[r], "ok") != 0) fail_msg("world %d rank %d: %s", world, r, messages[r]);
    }
}

// ----------------------------------------------------------------------------
// ZeRO-2 buckets during the backward of a many-layer model

enum { OVERLAP_LAYERS = 8, OVERLAP_B = 2, OVERLAP_T = 16 };

// The same tiny model on every rank (LoRA B nonzero, so every gradient is).
static Model *many_layer_model(Error *err) {
    ModelOptions options = {.ops = ops_cpu(), .max_batch = OVERLAP_B, .max_seq_len = OVERLAP_T, .seed = 7,
                            .lora = {.r = 4, .alpha = 8}};
    if (!llama_config_preset("tiny", &options.config, err)) return NULL;
    options.config.n_layers = OVERLAP_LAYERS;
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    Model *model = model_create(&options, err);
    if (!model) return NULL;
    if (!model_init_random_base(model, 1234, err)) {
        model_destroy(model);
        return NULL;
    }
    size_t n = model_params(model)->total;
    float *params = malloc(n * sizeof *params);
    if (!params) return model_destroy(model), (fail)(err, "out of memory"), NULL;
    for (size_t i = 0; i < n; i++) params[i] = 0.05f * sinf((float)i);
    memcpy(model_param_data(model), params, n * sizeof *params);
    model_sync_params(model);
    free(params);
    return model;
}

// Watches rank 0's buckets: rank 1 is late with its first one, so rank 0's
// first reduction cannot finish before the hook returns; then, in the hook
// of layer 0 (the backward's last layer, before the backward returns), rank
// 0 waits for a reduction to finish, which only a background one can.
typedef struct OverlapProbe {
    Zero *zero;
    Collectives *coll;
    Store *store;                     // rank 1 holds its first bucket until rank 0 has looked at its own
    int rank, calls;
    size_t finished_before, next_end; // reductions finished before the micro-batch; the next range's end
    bool in_order;                    // ranges from the last layer down, adjacent, ending at 0
    bool first_returned_first;        // the first bucket's hook returned before its reduction finished
    bool finished_during_backward;    // a reduction finished before layer 0's hook returned
} OverlapProbe;

static bool reductions_finish_within(Collectives *c, size_t before, double seconds) {
    for (double deadline = time_seconds() + seconds; time_seconds() < deadline; usleep(1000))
        if (c->reductions_finished(c) > before) return true;
    return false;
}

// Rank 1 sends its first bucket only once rank 0 has checked that its own
// first reduction was still in flight when zero_grads_ready returned.
static void hold_first_bucket(OverlapProbe *p) {
    void *value;
    size_t size;
    Error err;
    if (store_get(p->store, "overlap/first_checked", &value, &size, &err)) free(value);
}

static void probe_grads_ready(void *context, size_t begin, size_t end) {
    OverlapProbe *p = context;
    if (p->rank == 1 && p->calls == 0) hold_first_bucket(p);
    p->in_order = p->in_order && end == p->next_end;
    p->next_end = begin;
    zero_grads_ready(p->zero, begin, end);
    if (p->rank == 0 && p->calls == 0) {
        Error err;
        p->first_returned_first = p->coll->reductions_finished(p->coll) == p->finished_before;
        p->first_returned_first = store_set(p->store, "overlap/first_checked", "1", 1, &err) && p->first_returned_first;
    }
    if (p->rank == 0 && begin == 0) p->finished_during_backward = reductions_finish_within(p->coll, p->finished_before, 10);
    p->calls++;
}

// Micro-batch `micro` of this rank added into the gradients (the hook, when
// given, sees each layer's range), then its reduction.
static bool micro_batch_backward(Model *model, Zero *zero, void (*hook)(void *, size_t, size_t), void *context,
                                 int rank, int micro, Error *err) {
    int32_t tokens[OVERLAP_B * OVERLAP_T], targets[OVERLAP_B * OVERLAP_T];
    for (int i = 0; i < OVERLAP_B * OVERLAP_T; i++)
        tokens[i] = (i * 7 + rank * 13 + micro * 29) % 200, targets[i] = (i * 5 + rank + micro * 3) % 200;
    Batch batch = {.B = OVERLAP_B, .T = OVERLAP_T, .tokens = tokens, .targets = targets};
    StepOptions options = {.grad_scale = 1.0f / (OVERLAP_B * OVERLAP_T), .train = true, .grads_ready = hook,
                           .grads_ready_context = context};
    return model_step(model, &batch, &options, err) && zero_reduce_micro_batch(zero, model_grad_data(model), err);
}

static bool micro_batch_gradient(Model *model, Zero *zero, OverlapProbe *probe, int rank, Error *err) {
    model_zero_grads(model);
    return micro_batch_backward(model, zero, probe ? probe_grads_ready : NULL, probe, rank, 0, err);
}

// One bucket per layer (bucket_elements 0) against the whole buffer reduced
// after the backward: the same bits (rank-order sums either way).
static bool buckets_overlap_the_backward(Store *store, Collectives *c, int rank, Error *err) {
    Model *model = many_layer_model(err);
    if (!model) return false;
    size_t n = model_params(model)->total;
    ZeroOptions options = {.stage = 2, .overlap_comm = true, .bucket_elements = 0, .beta1 = 0.9f, .beta2 = 0.999f};
    Zero *overlapped = zero_create(ops_cpu(), c, model_param_data(model), model_grad_data(model), n, &options, err);
    options.overlap_comm = false;
    Zero *after = overlapped ? zero_create(ops_cpu(), c, model_param_data(model), model_grad_data(model), n, &options, err)
                             : NULL;
    float *reference = malloc(n * sizeof *reference);
    OverlapProbe probe = {.zero = overlapped, .coll = c, .store = store, .rank = rank, .next_end = n, .in_order = true,
                          .finished_before = c->reductions_finished(c)};
    bool ok = after && reference && micro_batch_gradient(model, after, NULL, rank, err);
    if (ok) memcpy(reference, model_grad_data(model), n * sizeof *reference);
    ok = ok && micro_batch_gradient(model, overlapped, &probe, rank, err);
    if (ok) {
        CHECK(probe.calls == OVERLAP_LAYERS && probe.in_order && probe.next_end == 0);
        CHECK(rank != 0 || probe.first_returned_first);
        CHECK(rank != 0 || probe.finished_during_backward);
        CHECK(c->reductions_finished(c) == probe.finished_before + OVERLAP_LAYERS);
        CHECK(memcmp(reference, model_grad_data(model), n * sizeof *reference) == 0);
    }
    free(reference), zero_destroy(overlapped), zero_destroy(after), model_destroy(model);
    return ok;
}

static void test_zero2_buckets_overlap_the_backward(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    for (int world = 2; world <= 3; world++) {
        run_ranks(world, free_tcp_port(), 20, buckets_overlap_the_backward, messages);
        for (int r = 0; r < world; r++)
            if (strcmp(messages[r], "ok") != 0) fail_msg("world %d rank %d: %s", world, r, messages[r]);
    }
}

// ----------------------------------------------------------------------------
// the offload's gradient copies per bucket

enum { OFFLOAD_MICRO_BATCHES = 2, OFFLOAD_STEPS = 3 };

static ZeroOptions offload_options(bool buckets, bool delayed) {
    return (ZeroOptions){.stage = 2, .overlap_comm = buckets, .bucket_elements = 0, .offload_cpu = true,
                         .delayed_update = delayed, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                         .weight_decay = 0.01f, .max_grad_norm = 0.05f};
}

// Watches the last micro-batch's buckets: in the hook of layer 0 (the last
// range of the backward) it waits until the other layers' reductions have
// finished, reports layer 0 (which copies what finished), and compares the
// host buffer's piece of layers 1.. with the reference.
typedef struct CopyProbe {
    Zero *zero;
    Collectives *coll;
    const float *reference;            // the step's reduced gradient (n), from the unbucketed path
    size_t n, finished_before, ranges; // ranges reported in this micro-batch
    bool filled_during_backward;
} CopyProbe;

static void copy_probe_grads_ready(void *context, size_t begin, size_t end) {
    CopyProbe *p = context;
    bool others_done = begin == 0 && reductions_finish_within(p->coll, p->finished_before + p->ranges - 1, 10);
    zero_grads_ready(p->zero, begin, end);
    p->ranges++;
    if (!others_done) return;
    size_t shard_begin, shard_end;
    dist_shard_range(p->n, p->coll->world_size, p->coll->rank, &shard_begin, &shard_end);
    size_t from = end > shard_begin ? end : shard_begin; // the shard's part of layers 1..
    const float *host = zero_offloaded_grads(p->zero);
    p->filled_during_backward = from < shard_end && memcmp(host + (from - shard_begin), p->reference + from,
                                                           (shard_end - from) * sizeof(float)) == 0;
}

// A step's micro-batches, the last one flagged; with buckets each layer is
// reported (through probe in the last micro-batch, when given).
static bool accumulate(Model *model, Zero *zero, bool buckets, CopyProbe *probe, int rank, Error *err) {
    model_zero_grads(model);
    for (int micro = 0; micro < OFFLOAD_MICRO_BATCHES; micro++) {
        bool last = micro + 1 == OFFLOAD_MICRO_BATCHES;
        zero_begin_micro_batch(zero, last);
        void (*hook)(void *, size_t, size_t) = buckets ? zero_grads_ready : NULL;
        void *context = zero;
        if (probe && last) {
            hook = copy_probe_grads_ready, context = probe;
            probe->finished_before = probe->coll->reductions_finished(probe->coll);
        }
        if (!micro_batch_backward(model, zero, hook, context, rank, micro, err)) return false;
    }
    return true;
}

static Zero *offload_zero(Collectives *c, Model *model, bool buckets, bool delayed, Error *err) {
    ZeroOptions options = offload_options(buckets, delayed);
    return zero_create(ops_cpu(), c, model_param_data(model), model_grad_data(model), model_params(model)->total,
                       &options, err);
}

// Per-layer buckets with the offload over two micro-batches: during the last
// one's backward the host buffer already holds the reduced pieces of the
// layers whose reductions finished; after it, the whole shard, the same bits
// as the unbucketed path's.
static bool offload_copies_fill_the_host_during_the_backward(Store *store, Collectives *c, int rank, Error *err) {
    Model *model = many_layer_model(err);
    if (!model) return false;
    size_t n = model_params(model)->total;
    Zero *bucketed = offload_zero(c, model, true, false, err);
    Zero *plain = bucketed ? offload_zero(c, model, false, false, err) : NULL;
    float *reference = malloc(n * sizeof *reference);
    CopyProbe probe = {.zero = bucketed, .coll = c, .reference = reference, .n = n};
    bool ok = plain && reference && accumulate(model, plain, false, NULL, rank, err);
    if (ok) memcpy(reference, model_grad_data(model), n * sizeof *reference);
    ok = ok && accumulate(model, bucketed, true, &probe, rank, err);
    if (ok) {
        size_t begin, end;
        dist_shard_range(n, c->world_size, rank, &begin, &end);
        CHECK(probe.ranges == OVERLAP_LAYERS && probe.filled_during_backward);
        CHECK(memcmp(zero_offloaded_grads(bucketed), reference + begin, (end - begin) * sizeof(float)) == 0);
        CHECK(memcmp(model_grad_data(model), reference, n * sizeof(float)) == 0);
    }
    free(reference), zero_destroy(bucketed), zero_destroy(plain), model_destroy(model);
    return ok;
}

static void test_offload_copies_fill_the_host_during_the_backward(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    for (int world = 2; world <= 3; world++) {
        run_ranks(world, free_tcp_port(), 20, offload_copies_fill_the_host_during_the_backward, messages);
        for (int r = 0; r < world; r++)
            if (strcmp(messages[r], "ok") != 0) fail_msg("world %d rank %d: %s", world, r, messages[r]);
    }
}

static bool offloaded_step(Model *model, Zero *zero, bool buckets, int rank, Error *err) {
    float norm;
    if (!accumulate(model, zero, buckets, NULL, rank, err) ||
        !zero_step(zero, model_param_data(model), model_grad_data(model), 1e-2f, &norm, err))
        return false;
    model_sync_params(model);
    return true;
}

// Per-layer buckets copied to the host against the unbucketed offload (the
// shard downloaded at the step), with and without the delayed update:
// OFFLOAD_STEPS steps of OFFLOAD_MICRO_BATCHES micro-batches (clipped) leave
// the same parameter bits, and they moved.
static bool offload_buckets_step_as_unbucketed(Store *store, Collectives *c, int rank, Error *err) {
    omp_set_num_threads(1); // this rank's process: the ranks share the machine's cores
    for (int delayed = 0; delayed <= 1; delayed++) {
        Model *bucketed = many_layer_model(err), *plain = bucketed ? many_layer_model(err) : NULL;
        if (!plain) return false;
        size_t n = model_params(plain)->total;
        float *initial = malloc(n * sizeof *initial);
        Zero *zb = offload_zero(c, bucketed, true, delayed, err);
        Zero *zp = zb ? offload_zero(c, plain, false, delayed, err) : NULL;
        bool ok = zp && initial;
        if (ok) memcpy(initial, model_param_data(plain), n * sizeof *initial);
        for (int step = 0; ok && step < OFFLOAD_STEPS; step++) {
            ok = offloaded_step(bucketed, zb, true, rank, err) && offloaded_step(plain, zp, false, rank, err);
            CHECK(!ok || memcmp(model_param_data(bucketed), model_param_data(plain), n * sizeof(float)) == 0);
        }
        ok = ok && zero_flush(zb, model_param_data(bucketed), err) && zero_flush(zp, model_param_data(plain), err);
        if (ok) {
            CHECK(memcmp(model_param_data(bucketed), model_param_data(plain), n * sizeof(float)) == 0);
            CHECK(memcmp(model_param_data(plain), initial, n * sizeof(float)) != 0);
        }
        free(initial), zero_destroy(zb), zero_destroy(zp), model_destroy(bucketed), model_destroy(plain);
        if (!ok) return false;
    }
    return true;
}

static void test_offload_buckets_step_as_unbucketed(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    for (int world = 2; world <= 3; world++) {
        run_ranks(world, free_tcp_port(), 20, offload_buckets_step_as_unbucketed, messages);
        for (int r = 0; r < world; r++)
            if (strcmp(messages[r], "ok") != 0) fail_msg("world %d rank %d: %s", world, r, messages[r]);
    }
}


// Rank 2 dies (as if killed) with its first bucket in flight.
static bool rank2_dies_mid_bucket(Store *store, Collectives *c, int rank, Error *err) {
    enum { N = 3000 };
    static float params[N], grads[N];
    ZeroOptions options = {.stage = 2, .overlap_comm = true, .bucket_elements = 1000, .beta1 = 0.9f, .beta2 = 0.999f};
    Zero *zero = zero_create(ops_cpu(), c, params, grads, N, &options, err);
    if (!zero) return false;
    zero_grads_ready(zero, 2000, 3000);
    if (rank == 2) _exit(3);
    zero_grads_ready(zero, 1000, 2000);
    zero_grads_ready(zero, 0, 1000);
    bool ok = zero_reduce_micro_batch(zero, grads, err);
    zero_destroy(zero);
    return ok;
}

// Rank 2 leaves (as if killed) after joining; rank 1 sleeps past the timeout.
static bool rank2_exits(Store *store, Collectives *c, int rank, Error *err) {
    if (rank == 2) _exit(3);
    float x[4] = {0};
    return c->all_reduce_sum(c, x, 4, DTYPE_F32, err);
}

static bool rank1_hangs(Store *store, Collectives *c, int rank, Error *err) {
    if (rank == 1) sleep(4);
    float x[4] = {0};
    return c->all_reduce_sum(c, x, 4, DTYPE_F32, err);
}

static void assert_contains(const char *text, const char *part) {
    if (!strstr(text, part)) fail_msg("'%s' does not contain '%s'", text, part);
}

static void test_dead_rank_is_named(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    run_ranks(3, free_tcp_port(), 20, rank2_exits, messages);
    print_message("rank 0: %s\nrank 1: %s\n", messages[0], messages[1]);
    assert_contains(messages[0], "rank 2 closed its connection");
    assert_contains(messages[1], "rank 2 closed its connection");
}

static void test_hung_rank_is_named_after_the_timeout(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    run_ranks(3, free_tcp_port(), 1, rank1_hangs, messages);
    print_message("rank 0: %s\nrank 2: %s\n", messages[0], messages[2]);
    assert_contains(messages[0], "rank 1 sent nothing before the timeout");
    assert_contains(messages[2], "rank 1 sent nothing before the timeout");
}

static void test_rank_dead_mid_bucket_is_named(void **state) {
    char messages[3][ERROR_MESSAGE_MAX];
    double start = time_seconds();
    run_ranks(3, free_tcp_port(), 5, rank2_dies_mid_bucket, messages);
    print_message("after %.1f s\nrank 0: %s\nrank 1: %s\n", time_seconds() - start, messages[0], messages[1]);
    for (int r = 0; r < 2; r++) { // the closed socket, a failed send to it or a reset on receive: rank 2 named
        assert_contains(messages[r], "in the background");
        assert_contains(messages[r], "rank 2");
    }
    assert_true(time_seconds() - start < 5); // noticed at once, not after the timeout
}

static void test_store_get_times_out_naming_the_key(void **state) {
    RankInfo info = {.rank = 0, .world_size = 1, .local_world_size = 1, .master_addr = "127.0.0.1",
                     .master_port = free_tcp_port()};
    Error err;
    Store *store = store_create(&info, 0.3, &err);
    if (!store) fail_msg("%s", err.message);
    assert_true(store_set(store, "a", "1", 1, &err));
    const char *keys[] = {"a", "missing/key"};
    assert_false(store_wait(store, keys, 2, &err));
    assert_contains(err.message, "'missing/key' was not set within");
    store_destroy(store);
}

// ----------------------------------------------------------------------------
// the offloaded optimizer

// zero_step on the CPU backend (the step issued with the device's clip and
// skip, the norm read after) is the host sequence it replaced, bit for bit:
// norm = sqrt(sum_squares), skip when not finite or above the limit, else
// clip_grads by that norm and AdamW with the step counted, for clipped,
// unclipped, non-finite and outlier steps.
static void test_zero_step_is_the_host_sequence(void **state) {
    enum { N = 20011, STEPS = 6, NAN_STEP = 2 };
    const Ops *ops = ops_cpu();
    const float scales[STEPS] = {1, 1e-3f, 1, 1, 1, 2}, limits[STEPS] = {INFINITY, 1, INFINITY, 30, 1e3f, 1e3f};
    ZeroOptions options = {.stage = 0, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f,
                           .max_grad_norm = 0.5f};
    float *p = malloc(N * sizeof *p), *g = malloc(N * sizeof *g), *p2 = malloc(N * sizeof *p2);
    float *g2 = malloc(N * sizeof *g2), *m = calloc(N, sizeof *m), *v = calloc(N, sizeof *v);
    Rng rng;
    rng_seed(&rng, 11);
    fill_uniform(p, N, -1, 1, &rng);
    memcpy(p2, p, N * sizeof *p);
    Error err;
    Collectives *single = collectives_single(&err);
    Zero *zero = single ? zero_create(ops, single, p, g, N, &options, &err) : NULL;
    if (!zero) fail_msg("%s", err.message);
    int taken = 0;
    for (int step = 0; step < STEPS; step++) {
        fill_uniform(g, N, -1, 1, &rng);
        for (size_t i = 0; i < N; i++) g[i] *= scales[step];
        if (step == NAN_STEP) g[N / 2] = NAN;
        memcpy(g2, g, N * sizeof *g);
        zero_set_norm_limit(zero, limits[step]);
        float norm, sum = 0;
        if (!zero_step(zero, p, g, 1e-2f, &norm, &err)) fail_msg("zero_step: %s", err.message);
        ops->sum_squares(ops, &sum, g2, N);
        float want = sqrtf(sum);
        assert_memory_equal(&norm, &want, sizeof norm);
        if (isfinite(want) && want <= limits[step]) {
            clip_grads(ops, g2, N, want, options.max_grad_norm);
            ops->adamw(ops, p2, g2, m, v, N, 1e-2f, options.beta1, options.beta2, options.eps, options.weight_decay,
                       ++taken, NULL, INFINITY);
        }
        ZeroState z = zero_state(zero);
        assert_int_equal(z.step, taken);
        assert_memory_equal(p, p2, N * sizeof *p);
        assert_memory_equal(z.m, m, N * sizeof *m);
        assert_memory_equal(z.v, v, N * sizeof *v);
    }
    assert_int_equal(taken, 4); // 2 (NaN) and 3 (norm about 82, above 30) skipped; 1 not clipped
    zero_destroy(zero);
    collectives_destroy(single);
    free(p), free(g), free(p2), free(g2), free(m), free(v);
}

static void test_cpu_adamw_matches_the_cpu_backend(void **state) {
    enum { N = 100003 };
    float *p = malloc(N * sizeof *p), *g = malloc(N * sizeof *g), *m = calloc(N, sizeof *m), *v = calloc(N, sizeof *v);
    float *p2 = malloc(N * sizeof *p2), *m2 = calloc(N, sizeof *m2), *v2 = calloc(N, sizeof *v2);
    Rng rng;
    rng_seed(&rng, 7);
    fill_uniform(p, N, -1, 1, &rng);
    memcpy(p2, p, N * sizeof *p);
    AdamWHyper hyper = {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    for (int step = 1; step <= 3; step++) {
        fill_uniform(g, N, -0.1f, 0.1f, &rng);
        cpu_adamw(p, g, m, v, N, 1e-3f, &hyper, step);
        ops_cpu()->adamw(ops_cpu(), p2, g, m2, v2, N, 1e-3f, hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay,
                         step, NULL, INFINITY);
    }
    double *reference = malloc(N * sizeof *reference);
    for (size_t i = 0; i < N; i++) reference[i] = p2[i];
    double error = max_rel_error(p, reference, N, 1e-3);
    print_message("cpu_adamw vs the CPU backend's adamw: max relative error %.3g\n", error);
    assert_true(error < 1e-6);
    free(reference), free(p), free(g), free(m), free(v), free(p2), free(m2), free(v2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank_info_from_env),
        cmocka_unit_test(test_shard_ranges_cover_the_buffer),
        cmocka_unit_test(test_collectives_between_processes),
        cmocka_unit_test(test_ranged_reduce_scatter),
        cmocka_unit_test(test_zero2_reduces_every_micro_batch),
        cmocka_unit_test(test_zero2_buckets_overlap_the_backward),
        cmocka_unit_test(test_offload_copies_fill_the_host_during_the_backward),
        cmocka_unit_test(test_offload_buckets_step_as_unbucketed),
        cmocka_unit_test(test_dead_rank_is_named),
        cmocka_unit_test(test_hung_rank_is_named_after_the_timeout),
        cmocka_unit_test(test_rank_dead_mid_bucket_is_named),
        cmocka_unit_test(test_store_get_times_out_naming_the_key),
        cmocka_unit_test(test_zero_step_is_the_host_sequence),
        cmocka_unit_test(test_cpu_adamw_matches_the_cpu_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
