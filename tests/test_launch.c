// lora-launch end to end on the CPU backend: 2 and 3 ranks with ZeRO stage 0
// and 2 (gradient buckets per layer, merged, or reduced after the backward;
// the CPU offload, also with the delayed update) and gradient accumulation
// leave the same adapter as 1 process with the same global
// batch; the offload's per-bucket copies the same bits as its download; ZeRO-2 checkpoints of 2 ranks resumed on 3, and of 3 resumed on 1, and stage-0 ones of 2 resumed on 3,
// re-shard the optimizer state and end where an uninterrupted run does; a
// checkpoint missing a rank's shard or with a corrupt one is not complete; a
// rank killed mid-run ends the job with a message naming it, and so do ranks
// that all fail at once; SIGTERM to lora-launch, or SIGINT to its process
// group, saves a checkpoint of every rank and exits 0; ranks die with their
// launcher; the outlier guard skips the same step on 2 ranks as on 1.
#include "run_util.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"

#define GLOBAL_MICRO_BATCHES 6 // per step: micro_batch 2 x 6 = 12 samples over all ranks

static const char *binary(const char *env) {
    const char *path = getenv(env);
    if (!path || access(path, X_OK) != 0) return NULL;
    return path;
}


// The shared part of every run's command line.
static void common_flags(const char *dir, char *buf, size_t size) {
    snprintf(buf, size,
             "--config configs/demo.yaml --set model.path=%s/model --set model.create_if_missing=tiny "
             "--set data.path=%s/data.jsonl --set data.create_if_missing=demo --set data.max_seq_len=64 "
             "--set lora.target=all --set lora.dropout=0 --set train.micro_batch=2 --set train.max_steps=5 "
             "--set train.lr=1e-2 --set train.warmup=0 --set train.weight_decay=0.01 --set train.max_grad_norm=0.5 "
             "--set train.backend=cpu --set train.log_every=1 --set dist.timeout_s=30",
             dir, dir);
}

#define DELAYED "--set zero.delayed_update=true"
#define PER_LAYER_BUCKETS "--set zero.bucket_mb=0"
#define NO_OVERLAP "--set zero.overlap_comm=false"

// Trains into dir/out_name with nproc ranks (0: no launcher, one process) and extra flags.
static void train_with(const char *dir, int nproc, int stage, const char *offload, const char *out_name,
                       const char *extra) {
    char flags[2048], command[4096];
    common_flags(dir, flags, sizeof flags);
    int grad_accum = GLOBAL_MICRO_BATCHES / (nproc > 0 ? nproc : 1);
    char launcher[512] = "";
    if (nproc > 0)
        snprintf(launcher, sizeof launcher, "%s --nproc-per-node %d --master-port %d ", binary("LORA_LAUNCH_BIN"), nproc,
                 free_tcp_port());
    snprintf(command, sizeof command,
             "OMP_NUM_THREADS=1 timeout 120 %s%s %s --set train.grad_accum=%d --set zero.stage=%d --set zero.offload=%s "
             "--set checkpoint.dir=%s/%s %s > %s/%s.log 2>&1",
             launcher, binary("LORA_TRAIN_BIN"), flags, grad_accum, stage, offload, dir, out_name, extra, dir, out_name);
    int status = run_command(command);
    if (status != 0) fail_msg("exit %d from: %s (see %s/%s.log)", status, command, dir, out_name);
    if (nproc == 0) return;
    char path[1024], expect[128], *log = NULL;
    size_t size;
    snprintf(path, sizeof path, "%s/%s.log", dir, out_name);
    snprintf(expect, sizeof expect, "%d ranks (cpu collectives) | ZeRO stage %d", nproc, stage);
    Error err;
    if (!read_file(path, &log, &size, &err)) fail_msg("%s", err.message);
    if (!strstr(log, expect)) fail_msg("%s does not say '%s'", path, expect);
    free(log);
}

static void train(const char *dir, int nproc, int stage, const char *offload, const char *out_name) {
    train_with(dir, nproc, stage, offload, out_name, "");
}

// The adapters of two runs in dir (see adapter_difference in run_util.h).
static double adapter_difference_of(const char *dir, const char *a_name, const char *b_name, double *max_abs) {
    char path_a[1024], path_b[1024];
    snprintf(path_a, sizeof path_a, "%s/%s/adapter", dir, a_name);
    snprintf(path_b, sizeof path_b, "%s/%s/adapter", dir, b_name);
    return adapter_difference(path_a, path_b, max_abs);
}

static void test_ranks_match_one_process(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = strdup(make_temp_dir("launch"));
    train(dir, 0, 0, "none", "single");
    train_with(dir, 0, 0, "cpu", "single-delayed", DELAYED);
    struct {
        int nproc, stage;
        const char *offload, *extra;
    } runs[] = {{2, 0, "none", ""},          {2, 2, "none", ""},      {2, 2, "none", NO_OVERLAP},
                {3, 0, "none", ""},          {3, 2, "none", ""},      {3, 2, "none", PER_LAYER_BUCKETS},
                {3, 2, "cpu", PER_LAYER_BUCKETS}, {3, 2, "cpu", DELAYED}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "run%zu-ranks%d-stage%d-offload-%s", i, runs[i].nproc, runs[i].stage,
                 runs[i].offload);
        train_with(dir, runs[i].nproc, runs[i].stage, runs[i].offload, name, runs[i].extra);
        const char *reference = strcmp(runs[i].extra, DELAYED) == 0 ? "single-delayed" : "single";
        double max_abs, difference = adapter_difference_of(dir, name, reference, &max_abs);
        print_message("%s %s vs %s: relative difference %.3g (L2), %.3g (max |a - b| / max |b|)\n", name,
                      runs[i].extra, reference, difference, max_abs);
        assert_true(difference < 1e-5);
    }
    free((void *)dir);
}

// --offload cpu with per-layer buckets (the last micro-batch's buckets copied
// to the host during the backward) against the shard downloaded at the step:
// 2 and 3 ranks, gradient accumulation, with and without the delayed update,
// the same adapter bits (the same sums in the same order, the same clipping).
static void test_offload_buckets_match_the_downloaded_shard(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = strdup(make_temp_dir("launch-offload"));
    for (int nproc = 2; nproc <= 3; nproc++)
        for (int delayed = 0; delayed <= 1; delayed++) {
            char bucketed[64], downloaded[64], bucketed_flags[128], downloaded_flags[128];
            snprintf(bucketed, sizeof bucketed, "ranks%d-delayed%d-buckets", nproc, delayed);
            snprintf(downloaded, sizeof downloaded, "ranks%d-delayed%d-downloaded", nproc, delayed);
            snprintf(bucketed_flags, sizeof bucketed_flags, "%s %s", PER_LAYER_BUCKETS, delayed ? DELAYED : "");
            snprintf(downloaded_flags, sizeof downloaded_flags, "%s %s", NO_OVERLAP, delayed ? DELAYED : "");
            train_with(dir, nproc, 2, "cpu", bucketed, bucketed_flags);
            train_with(dir, nproc, 2, "cpu", downloaded, downloaded_flags);
            double max_abs, difference = adapter_difference_of(dir, bucketed, downloaded, &max_abs);
            print_message("%s vs %s: relative difference %.3g (L2)\n", bucketed, downloaded, difference);
            assert_true(difference == 0 && max_abs == 0);
        }
    free((void *)dir);
}

static void assert_log_says(const char *dir, const char *name, const char *expect) {
    char path[1024], *log = NULL;
    size_t size;
    snprintf(path, sizeof path, "%s/%s.log", dir, name);
    Error err;
    if (!read_file(path, &log, &size, &err)) fail_msg("%s", err.message);
    if (!strstr(log, expect)) fail_msg("%s does not say '%s'", path, expect);
    free(log);
}

// A run of from_nproc ranks at ZeRO stage `stage` saving every 2 steps, then
// the same run resumed from its step-000002 on to_nproc ranks (0: one
// process, no launcher); the final adapter against the uninterrupted
// "straight" run's.
static void assert_resharded_resume(const char *dir, int stage, int from_nproc, int to_nproc) {
    char name[64], resume[1024], expect[128];
    snprintf(name, sizeof name, "stage%d-from%d-to%d", stage, from_nproc, to_nproc);
    train_with(dir, from_nproc, stage, "none", name, "--set checkpoint.every_steps=2 --set checkpoint.keep_last=0");
    assert_log_says(dir, name, "saved checkpoint");
    snprintf(resume, sizeof resume, "--set checkpoint.every_steps=2 --set checkpoint.keep_last=0 --resume %s/%s/step-000002",
             dir, name);
    train_with(dir, to_nproc, stage, "none", name, resume);
    snprintf(expect, sizeof expect, "(saved by %d ranks) at step 2", from_nproc);
    assert_log_says(dir, name, expect);
    double max_abs, difference = adapter_difference_of(dir, name, "straight", &max_abs);
    print_message("stage %d: %d ranks stopped at step 2, resumed on %d: relative difference to the uninterrupted run "
                  "%.3g (L2), %.3g (max |a - b| / max |b|)\n",
                  stage, from_nproc, to_nproc ? to_nproc : 1, difference, max_abs);
    // Other rank counts sum the micro-batches' gradients in another order: the
    // bound of the runs against one rank above (1e-5; measured 1.4e-6, the same
    // as 2 ranks straight through against one).
    assert_true(difference < 1e-5);
}

// dir/name/step-NNNNNN/optimizer/rank-NNNNN.safetensors
static void shard_path(const char *dir, const char *name, int step, int rank, char *path, size_t size) {
    snprintf(path, size, "%s/%s/step-%06d/optimizer/rank-%05d.safetensors", dir, name, step, rank);
}

// The newest complete checkpoint of dir/name is step-NNNNNN `step`.
static void assert_latest_step(const char *dir, const char *name, int step) {
    char run_dir[1024], found[2048], expect[32];
    snprintf(run_dir, sizeof run_dir, "%s/%s", dir, name);
    snprintf(expect, sizeof expect, "step-%06d", step);
    Error err;
    if (!checkpoint_find_latest(run_dir, found, sizeof found, &err)) fail_msg("%s", err.message);
    if (!strstr(found, expect)) fail_msg("the latest checkpoint is %s, not %s", found, expect);
}

// name: 2 ranks saved step-000002, 3 ranks (resumed) step-000004 and the
// last step's step-000005. A step folder with a byte of a shard file
// changed, or without one, is not complete: the previous checkpoint is the
// latest.
static void assert_damaged_shards_fall_back(const char *dir, const char *name) {
    char path[2048];
    assert_latest_step(dir, name, 5);
    for (int rank = 0; rank < 3; rank++) {
        shard_path(dir, name, 5, rank, path, sizeof path);
        assert_true(path_exists(path));
    }
    shard_path(dir, name, 5, 2, path, sizeof path);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, -1, SEEK_END), 0);
    int last = fgetc(f);
    assert_int_equal(fseek(f, -1, SEEK_END), 0);
    assert_int_equal(fputc(last ^ 0x01, f), last ^ 0x01);
    assert_int_equal(fclose(f), 0);
    snprintf(path, sizeof path, "%s/%s/step-000005", dir, name);
    Error err;
    assert_false(checkpoint_verify(path, &err));
    print_message("corrupt shard: %s\n", err.message);
    assert_non_null(strstr(err.message, "rank-00002.safetensors"));
    assert_latest_step(dir, name, 4);
    shard_path(dir, name, 4, 1, path, sizeof path);
    assert_int_equal(unlink(path), 0);
    assert_latest_step(dir, name, 2);
    shard_path(dir, name, 2, 1, path, sizeof path);
    assert_int_equal(unlink(path), 0);
    char run_dir[1024], found[2048];
    snprintf(run_dir, sizeof run_dir, "%s/%s", dir, name);
    assert_false(checkpoint_find_latest(run_dir, found, sizeof found, &err));
}

static void test_resume_reshards_zero2(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = strdup(make_temp_dir("launch-reshard"));
    train_with(dir, 0, 0, "none", "straight", "--set checkpoint.every_steps=2");
    assert_resharded_resume(dir, 2, 2, 3);
    assert_resharded_resume(dir, 2, 3, 0);
    assert_resharded_resume(dir, 0, 2, 3);
    assert_damaged_shards_fall_back(dir, "stage2-from2-to3");
    free((void *)dir);
}

static void test_killed_rank_ends_the_job(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = make_temp_dir("launch-kill");
    char flags[2048], command[8192];
    common_flags(dir, flags, sizeof flags);
    // Kill rank 1 (the launcher's second child) once step 2 is logged;
    // timeout bounds the run should the job hang (exit 137 instead of 1).
    snprintf(command, sizeof command,
             "OMP_NUM_THREADS=1 timeout -s KILL 90 %s --nproc-per-node 3 --master-port %d %s %s --set train.max_steps=100000 "
             "--set zero.stage=2 --set checkpoint.dir=%s/out > %s/out.log 2> %s/err.log & T=$!; "
             "for i in $(seq 600); do grep -q 'step 2/' %s/out.log && break; sleep 0.1; done; "
             "L=$(pgrep -P $T); kill -9 $(pgrep -P $L | sort -n | sed -n 2p); wait $T",
             binary("LORA_LAUNCH_BIN"), free_tcp_port(), binary("LORA_TRAIN_BIN"), flags, dir, dir, dir, dir);
    int status = run_command(command);
    char path[1024], *log = NULL;
    size_t size;
    snprintf(path, sizeof path, "%s/err.log", dir);
    Error err;
    if (!read_file(path, &log, &size, &err)) fail_msg("%s", err.message);
    print_message("exit %d; stderr ends: %s\n", status, size > 300 ? log + size - 300 : log);
    assert_int_equal(status, 1);
    assert_non_null(strstr(log, "lora-launch: rank 1 (pid "));
    assert_non_null(strstr(log, "was killed by signal 9"));
    free(log);
}

// Every rank failing at about the same moment (a program that exits 1 at
// once, or lora-train with a config error) fails the job and names a rank.
static void test_ranks_failing_together_fail_the_job(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = make_temp_dir("launch-all-fail");
    const char *programs[] = {"/bin/false", binary("LORA_TRAIN_BIN")};
    const char *args[] = {"", "--config configs/demo.yaml --set train.lr=fast"};
    const int trials[] = {20, 10}, expected_status[] = {1, 2};
    for (int p = 0; p < 2; p++)
        for (int trial = 0; trial < trials[p]; trial++) {
            char command[4096], path[1024], *log = NULL;
            size_t size;
            snprintf(command, sizeof command, "timeout -s KILL 60 %s --nproc-per-node 2 --master-port %d %s %s 2> %s/err.log",
                     binary("LORA_LAUNCH_BIN"), free_tcp_port(), programs[p], args[p], dir);
            int status = run_command(command);
            snprintf(path, sizeof path, "%s/err.log", dir);
            Error err;
            if (!read_file(path, &log, &size, &err)) fail_msg("%s", err.message);
            if (status != expected_status[p] || !strstr(log, " exited with status "))
                fail_msg("%s trial %d: exit %d (expected %d), stderr: %s", programs[p], trial, status,
                         expected_status[p], log);
            free(log);
        }
    print_message("%d + %d jobs whose ranks all failed: each exited non-zero naming a rank\n", trials[0], trials[1]);
}

// A 2-rank ZeRO-2 job with no end in sight, its launcher ($L) the leader of
// its own process group, as Slurm and a terminal see it: once a step is
// logged (in a fresh log: a resumed job's wait must not find the last run's
// steps and signal the new job before it has installed its handlers), `act` runs (signals it; $O is the job's log); returns the job's exit status (137 after
// 60 s if it has not ended by then: the whole group is killed).
static int act_on_job(const char *dir, const char *name, const char *extra, const char *act) {
    char flags[2048], command[8192];
    common_flags(dir, flags, sizeof flags);
    snprintf(command, sizeof command,
             "O=%s/%s.log; rm -f $O; OMP_NUM_THREADS=1 setsid %s --nproc-per-node 2 --master-port %d %s %s "
             "--set train.max_steps=100000 --set zero.stage=2 --set checkpoint.dir=%s/%s %s > $O 2>&1 & L=$!; "
             "for i in $(seq 600); do grep -q '^step [0-9]*/' $O && break; sleep 0.1; done; %s; "
             "(sleep 60; kill -KILL -$L) >/dev/null 2>&1 & W=$!; wait $L; S=$?; kill $W 2>/dev/null; exit $S",
             dir, name, binary("LORA_LAUNCH_BIN"), free_tcp_port(), binary("LORA_TRAIN_BIN"), flags, dir, name, extra,
             act);
    return run_command(command);
}

static void assert_saved_by_two_ranks(const char *dir, const char *name) {
    char run_dir[2100], found[2048];
    snprintf(run_dir, sizeof run_dir, "%s/%s", dir, name);
    Error err;
    if (!checkpoint_find_latest(run_dir, found, sizeof found, &err)) fail_msg("%s", err.message);
    print_message("%s: %s\n", name, found);
    snprintf(run_dir, sizeof run_dir, "%s/optimizer/rank-00001.safetensors", found);
    assert_true(path_exists(run_dir));
}

// Preemption of a multi-rank job saves like one rank: SIGTERM to lora-launch
// alone (forwarded), then SIGINT to the whole process group of the resumed
// job (every rank gets it twice: from the group and forwarded); each time
// the ranks agree on a step, save, and the job exits 0.
static void test_signals_save_with_several_ranks(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = make_temp_dir("launch-signal");
    int status = act_on_job(dir, "job", "", "kill -TERM $L");
    if (status != 0) fail_msg("SIGTERM to lora-launch: exit %d (see %s/job.log)", status, dir);
    assert_log_says(dir, "job", "checkpoint saved to");
    assert_saved_by_two_ranks(dir, "job");
    status = act_on_job(dir, "job", "--resume", "kill -INT -$L");
    if (status != 0) fail_msg("SIGINT to the job's process group: exit %d (see %s/job.log)", status, dir);
    assert_log_says(dir, "job", "(saved by 2 ranks)");
    assert_log_says(dir, "job", "checkpoint saved to");
    assert_saved_by_two_ranks(dir, "job");
}

// 20 steps of one sentence (the model memorises it), one of random printable
// bytes (step 21), 2 more of the sentence: 12 records a step.
static void write_outlier_data(const char *dir) {
    char path[1024];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    uint64_t x = 12345;
    for (int i = 0; i < 23 * 12; i++) {
        if (i / 12 != 20) {
            fputs("{\"text\": \"the cat sat on the mat and the dog sat on the log\"}\n", f);
            continue;
        }
        fputs("{\"text\": \"", f);
        for (int c = 0; c < 48; c++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            fputc('#' + (int)((x >> 33) % 90), f); // '#'..'|': no quote or backslash
        }
        fputs("\"}\n", f);
    }
    assert_int_equal(fclose(f), 0);
}

// The outlier guard with several ranks: they see the same reduced loss, so
// all skip step 21 together (a rank that stepped alone would hang ZeRO-2's
// collectives), and the adapter matches one process's, which skipped it too.
static void test_outlier_guard_with_ranks(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = strdup(make_temp_dir("launch-outlier"));
    write_outlier_data(dir);
    const char *guard = "--set data.shuffle=false --set data.max_seq_len=32 --set train.max_steps=23 "
                        "--set train.skip_loss_zscore=3 --set train.skip_window=10";
    train_with(dir, 0, 2, "none", "single", guard);
    train_with(dir, 2, 2, "none", "ranks", guard);
    const char *expect = "step 21/23 | skipped: loss ";
    assert_log_says(dir, "single", expect);
    assert_log_says(dir, "ranks", expect);
    double max_abs, difference = adapter_difference_of(dir, "ranks", "single", &max_abs);
    print_message("outlier skipped on 2 ranks and 1: relative difference %.3g (L2)\n", difference);
    assert_true(difference < 1e-5);
    free((void *)dir);
}

// The last row of dir/name/metrics.jsonl, an evaluation's: loss, token accuracy and label tokens.
static void last_eval(const char *dir, const char *name, double *loss, double *accuracy, long long *label_tokens) {
    char path[1024], *text;
    size_t size;
    Error err;
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", dir, name);
    if (!read_file(path, &text, &size, &err)) fail_msg("%s", err.message);
    char *last = text + size - 1;
    while (last > text && last[-1] != '\n') last--;
    json_object *row = json_tokener_parse(last), *value;
    if (!row || !json_object_object_get_ex(row, "eval_loss", &value))
        fail_msg("%s: the last row is not an evaluation: %s", path, last);
    *loss = json_object_get_double(value);
    assert_true(json_object_object_get_ex(row, "eval_token_accuracy", &value));
    *accuracy = json_object_get_double(value);
    assert_true(json_object_object_get_ex(row, "eval_label_tokens", &value));
    *label_tokens = json_object_get_int64(value);
    json_object_put(row);
    free(text);
}

// Evaluation on 2 and 3 ranks (each every world-size-th held-out sample, the
// sums all-reduced) gives one process's eval loss and accuracy over the same
// samples: 3 ranks do not divide the held-out samples, and none is left out.
static void test_evaluation_with_ranks(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = strdup(make_temp_dir("launch-eval"));
    const char *eval = "--set data.eval_fraction=0.02 --set train.eval_every=5";
    train_with(dir, 0, 2, "none", "single", eval);
    double loss_single, accuracy_single;
    long long labels_single;
    last_eval(dir, "single", &loss_single, &accuracy_single, &labels_single);
    for (int nproc = 2; nproc <= 3; nproc++) {
        char name[32];
        snprintf(name, sizeof name, "ranks%d", nproc);
        train_with(dir, nproc, 2, "none", name, eval);
        double loss_ranks, accuracy_ranks;
        long long labels_ranks;
        last_eval(dir, name, &loss_ranks, &accuracy_ranks, &labels_ranks);
        print_message("eval loss %.9f on 1 process, %.9f on %d ranks; token accuracy %.6f, %.6f; label tokens %lld, "
                      "%lld\n", loss_single, loss_ranks, nproc, accuracy_single, accuracy_ranks, labels_single,
                      labels_ranks);
        assert_true(labels_single > 0 && labels_ranks == labels_single);
        assert_true(fabs(loss_ranks - loss_single) < 1e-5 * loss_single);
        assert_true(fabs(accuracy_ranks - accuracy_single) <= 2.0 / (double)labels_single);
    }
    free((void *)dir);
}

// kill -9 of lora-launch: its ranks die with it (within 20 s; "alive" in the
// log otherwise, and the test kills them).
static void test_ranks_die_with_their_launcher(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
    const char *dir = make_temp_dir("launch-orphans");
    const char *act = "R=$(pgrep -P $L); kill -9 $L; for i in $(seq 200); do A=; for r in $R; do "
                      "ps -o stat= -p $r | grep -qv Z && A=$r; done; [ -z \"$A\" ] && break; sleep 0.1; done; "
                      "echo rank pids: $R >> $O; [ -z \"$A\" ] || { kill -9 $R; echo alive >> $O; }";
    int status = act_on_job(dir, "orphans", "--set checkpoint.every_steps=1", act);
    char path[1024], *log = NULL;
    size_t size;
    snprintf(path, sizeof path, "%s/orphans.log", dir);
    Error err;
    if (!read_file(path, &log, &size, &err)) fail_msg("%s", err.message);
    const char *pids = strstr(log, "rank pids: ");
    print_message("launcher exit %d; %s", status, pids ? pids : log);
    assert_int_equal(status, 137);
    assert_true(pids && pids[11] >= '1' && pids[11] <= '9');
    assert_null(strstr(log, "alive"));
    free(log);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ranks_match_one_process),
        cmocka_unit_test(test_offload_buckets_match_the_downloaded_shard),
        cmocka_unit_test(test_resume_reshards_zero2),
        cmocka_unit_test(test_killed_rank_ends_the_job),
        cmocka_unit_test(test_ranks_failing_together_fail_the_job),
        cmocka_unit_test(test_signals_save_with_several_ranks),
        cmocka_unit_test(test_ranks_die_with_their_launcher),
        cmocka_unit_test(test_outlier_guard_with_ranks),
        cmocka_unit_test(test_evaluation_with_ranks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
