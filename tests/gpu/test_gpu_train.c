// Training end to end on the CUDA backend (on a GPU, or on tools/cuda_emu in
// CI): plan's device total is the high-water mark of device allocations; the
// text recipe (activation checkpointing, dropout), NF4 and the image-text
// path log per-step losses within bf16 tolerance of the CPU backend's;
// resuming is bit-identical; two runs under different thread and stream
// schedules leave bit-identical adapters; 2 ranks (NCCL, ZeRO-2, --offload
// cpu, buckets reduced during the backward) log the losses of 1 rank.
// The loss per step is the sharp check. Adapters are compared loosely: Adam
// magnifies bf16 noise on LoRA tensors that start near zero.
#include "gpu_test_util.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../run_util.h"
#include "checkpoints/checkpoints.h"
#include "trainer/trainer.h"

#ifdef LORA_TRAIN_CUDA_EMU
#include <cuda_runtime.h>
#endif

enum { STEPS = 4 };
#define LOSS_TOL 5e-3     // relative, per step: bf16 activations against fp32
#define RANKS_LOSS_TOL 2e-4     // the log's 4 decimals
#define RANKS_ADAPTER_TOL 1e-5  // fp32 sums in another order

// The text recipe both backends run: the tiny preset, the demo's chats, short rows.
static const char *const TEXT_RECIPE[] = {
    "data.create_if_missing=demo", "data.max_seq_len=32",   "lora.target=all",   "lora.r=8",
    "lora.alpha=16",               "lora.dropout=0.05",     "train.micro_batch=2", "train.grad_accum=2",
    "train.max_steps=4",           "train.lr=5e-3",         "train.warmup=0",    "train.log_every=1",
    "checkpoint.every_steps=2"};
#define TEXT_RECIPE_N (sizeof TEXT_RECIPE / sizeof TEXT_RECIPE[0])

static Config text_config(const char *dir, const char *backend, const char *extra) {
    Config config = tiny_run_config(dir, TEXT_RECIPE, TEXT_RECIPE_N);
    config_set_or_fail(&config, "train.backend=%s", backend);
    if (extra) config_set_or_fail(&config, "%s", extra);
    Error err;
    if (!config_validate(&config, &err)) fail_msg("%s", err.message);
    return config;
}

static void train_recording(const Config *config, const TrainControl *base, LossRecorder *losses,
                            TrainSummary *summary) {
    TrainControl control = base ? *base : (TrainControl){0};
    control.on_step = record_loss, control.context = losses;
    Error err;
    if (!train_run_with(config, &control, summary, &err)) fail_msg("train_run_with: %s", err.message);
}

static void expect_losses_close(const LossRecorder *got, const LossRecorder *want, int steps, double tol,
                                const char *what) {
    for (int step = 1; step <= steps; step++) {
        double error = fabs(got->losses[step] - want->losses[step]) / fabs(want->losses[step]);
        print_message("%s step %d: loss %.6f against %.6f (relative %.2g)\n", what, step, got->losses[step],
                      want->losses[step], error);
        if (!(error < tol)) fail_msg("%s step %d: loss relative error %.3g, bound %.3g", what, step, error, tol);
    }
}

// The same recipe on the CUDA backend and on the CPU backend, in two folders.
static void expect_cuda_follows_cpu(const char *name, const char *extra) {
    char cuda_dir[PATH_MAX], cpu_dir[PATH_MAX];
    snprintf(cuda_dir, sizeof cuda_dir, "%s", make_temp_dir(name));
    snprintf(cpu_dir, sizeof cpu_dir, "%s", make_temp_dir(name));
    Config cuda_config = text_config(cuda_dir, "cuda", extra), cpu_config = text_config(cpu_dir, "cpu", extra);
    LossRecorder cuda_losses = {0}, cpu_losses = {0};
    TrainSummary summary;
    train_recording(&cuda_config, NULL, &cuda_losses, &summary);
    assert_int_equal(summary.steps, STEPS);
    train_recording(&cpu_config, NULL, &cpu_losses, &summary);
    char what[96];
    snprintf(what, sizeof what, "%s, cuda against cpu", name);
    expect_losses_close(&cuda_losses, &cpu_losses, STEPS, LOSS_TOL, what);
}

// ----------------------------------------------------------------------------
// memory: first in the program, so the device's high-water mark is this run's
// (with the CUDA context's fixed buffers, which plan counts)

static size_t device_peak_bytes(void) {
#ifdef LORA_TRAIN_CUDA_EMU
    return cuda_emu_peak_device_bytes();  // every cudaMalloc of the process, not only the backend's
#else
    return gpu->peak_bytes(gpu);
#endif
}

static void test_plan_is_the_device_peak(void **state) {
    const char *dir = make_temp_dir("gpu-plan");
    Config config = text_config(dir, "cuda", NULL);
    RunPlan plan;
    Error err;
    if (!run_plan(&config, 1, &plan, &err)) fail_msg("run_plan: %s", err.message);
    LossRecorder losses = {0};
    TrainSummary summary;
    train_recording(&config, NULL, &losses, &summary);
    size_t peak = device_peak_bytes();
    double difference = (double)plan.device_total_bytes - (double)peak;
    print_message("plan: device total %zu bytes, measured peak %zu (%+.0f bytes)\n", plan.device_total_bytes, peak,
                  difference);
    assert_true(difference == 0);
}

// ----------------------------------------------------------------------------
// single process: against the CPU backend, resume, schedules

static void test_text_follows_cpu(void **state) { expect_cuda_follows_cpu("gpu-text", NULL); }

static void test_text_checkpointing_follows_cpu(void **state) {
    expect_cuda_follows_cpu("gpu-ckpt", "train.activation_checkpointing=true");
}

static void test_nf4_follows_cpu(void **state) { expect_cuda_follows_cpu("gpu-nf4", "model.quantize=nf4"); }

// 4 LLaVA records over the shared JPEG fixtures, a tiny random CLIP tower.
static bool vlm_config(const char *dir, const char *backend, Config *config) {
    char backend_key[64];
    snprintf(backend_key, sizeof backend_key, "train.backend=%s", backend);
    const char *recipe[] = {"vision.tower_preset=tiny", "data.image_tokens=16", "data.max_seq_len=48",
                            "lora.target=all", "lora.dropout=0.1", "train.micro_batch=2", "train.max_steps=4",
                            "train.lr=3e-3", "train.warmup=0", "train.log_every=1", "checkpoint.every_steps=100",
                            backend_key};
    return vlm_run_config(dir, 4, recipe, sizeof recipe / sizeof recipe[0], config);
}

static void test_image_text_follows_cpu(void **state) {
    char cuda_dir[PATH_MAX], cpu_dir[PATH_MAX];
    snprintf(cuda_dir, sizeof cuda_dir, "%s", make_temp_dir("gpu-vlm"));
    snprintf(cpu_dir, sizeof cpu_dir, "%s", make_temp_dir("gpu-vlm"));
    Config cuda_config, cpu_config;
    if (!vlm_config(cuda_dir, "cuda", &cuda_config) || !vlm_config(cpu_dir, "cpu", &cpu_config)) {
        print_message("../shared/fixtures/images/jpeg is missing\n");
        skip();
    }
    LossRecorder cuda_losses = {0}, cpu_losses = {0};
    TrainSummary summary;
    train_recording(&cuda_config, NULL, &cuda_losses, &summary);
    assert_int_equal(summary.steps, STEPS);
    train_recording(&cpu_config, NULL, &cpu_losses, &summary);
    expect_losses_close(&cuda_losses, &cpu_losses, STEPS, LOSS_TOL, "image-text, cuda against cpu");
}

static void expect_same_adapter(const char *dir_a, const char *dir_b, const char *what) {
    size_t size_a, size_b;
    char *a = adapter_file_bytes(dir_a, &size_a), *b = adapter_file_bytes(dir_b, &size_b);
    assert_int_equal(size_a, size_b);
    if (memcmp(a, b, size_a) != 0) fail_msg("%s: %s and %s differ", what, dir_a, dir_b);
    print_message("%s: adapters byte-identical (%zu bytes)\n", what, size_a);
    free(a), free(b);
}

// Stopped after 2 steps and resumed: the same losses and the same adapter bits.
static void test_resume_is_bit_identical(void **state) {
    char whole_dir[PATH_MAX], split_dir[PATH_MAX];
    snprintf(whole_dir, sizeof whole_dir, "%s", make_temp_dir("gpu-whole"));
    snprintf(split_dir, sizeof split_dir, "%s", make_temp_dir("gpu-split"));
    Config whole = text_config(whole_dir, "cuda", NULL), split = text_config(split_dir, "cuda", NULL);
    LossRecorder whole_losses = {0}, split_losses = {0};
    TrainSummary whole_summary, split_summary;
    train_recording(&whole, NULL, &whole_losses, &whole_summary);
    train_recording(&split, &(TrainControl){.stop_after_steps = 3}, &split_losses, &split_summary);
    assert_true(split_summary.interrupted);
    train_recording(&split, &(TrainControl){.resume = "latest"}, &split_losses, &split_summary);
    for (int step = 1; step <= STEPS; step++) assert_true(whole_losses.losses[step] == split_losses.losses[step]);
    expect_same_adapter(whole_summary.adapter_dir, split_summary.adapter_dir, "resumed on cuda");
}

static const char *binary(const char *env) {
    const char *path = getenv(env);
    return path && access(path, X_OK) == 0 ? path : NULL;
}

// The text recipe through the lora-train binary, under `environment` (a
// schedule of the emulation), with `launcher` in front ("" for one process).
static void train_binary(const char *dir, const char *out, const char *environment, const char *launcher,
                         const char *extra) {
    char command[4096];
    snprintf(command, sizeof command,
             "%s timeout 600 %s%s --config configs/demo.yaml --set model.path=%s/model --set model.create_if_missing=tiny "
             "--set data.path=%s/data.jsonl --set data.create_if_missing=demo --set data.max_seq_len=32 "
             "--set lora.target=all --set lora.dropout=0.05 --set train.micro_batch=2 --set train.max_steps=4 "
             "--set train.lr=5e-3 --set train.warmup=0 --set train.backend=cuda --set train.log_every=1 "
             "--set dist.timeout_s=120 --set checkpoint.dir=%s/%s %s > %s/%s.log 2>&1",
             environment, launcher, binary("LORA_TRAIN_BIN"), dir, dir, dir, out, extra, dir, out);
    int status = run_command(command);
    if (status != 0) fail_msg("exit %d from: %s (see %s/%s.log)", status, command, dir, out);
}

// Two runs, under different thread orders and stream interleavings where the
// emulation runs them: the same adapter bits (no float atomics, no races).
static void test_schedules_give_identical_adapters(void **state) {
    if (!binary("LORA_TRAIN_BIN")) skip();
    const char *dir = strdup(make_temp_dir("gpu-schedules"));
    train_binary(dir, "forward", "CUDA_EMU_SCHEDULE=forward", "", "--set train.grad_accum=2");
    train_binary(dir, "random", "CUDA_EMU_SCHEDULE=random:11", "", "--set train.grad_accum=2");
    char a[PATH_MAX], b[PATH_MAX];
    snprintf(a, sizeof a, "%s/forward/adapter", dir);
    snprintf(b, sizeof b, "%s/random/adapter", dir);
    expect_same_adapter(a, b, "schedules forward and random:11");
    free((void *)dir);
}

// "step N/M | loss X" lines of a log.
static void losses_of_log(const char *path, LossRecorder *losses) {
    char *log;
    size_t size;
    Error err;
    if (!read_file(path, &log, &size, &err)) fail_msg("%s", err.message);
    int found = 0;
    for (const char *line = log; (line = strstr(line, "step ")); line++) {
        int step, total;
        double loss;
        if (sscanf(line, "step %d/%d | loss %lf", &step, &total, &loss) == 3 && step >= 1 && step <= STEPS)
            losses->losses[step] = loss, found++;
    }
    free(log);
    if (found < STEPS) fail_msg("%s has %d step lines, expected %d", path, found, STEPS);
}

// 2 ranks, each 1 micro-batch per step, against 1 rank with 2: NCCL
// reduce-scatter of per-layer buckets during the backward, the optimizer
// state sharded and in pinned host memory. Without dropout (whose masks are
// drawn per rank's micro-batch) the two see the same numbers.
static void test_two_ranks_follow_one(void **state) {
    if (!binary("LORA_TRAIN_BIN") || !binary("LORA_LAUNCH_BIN")) skip();
#ifndef LORA_TRAIN_CUDA_EMU
    if (!getenv("LORA_TEST_TWO_GPUS")) {  // NCCL refuses two ranks on one device
        print_message("two ranks need two GPUs: set LORA_TEST_TWO_GPUS=1 where there are\n");
        skip();
    }
#endif
    const char *dir = strdup(make_temp_dir("gpu-ranks"));
    train_binary(dir, "one", "", "", "--set lora.dropout=0 --set train.grad_accum=2 --set zero.stage=2 --set zero.offload=cpu");
    char launcher[512];
    snprintf(launcher, sizeof launcher, "%s --nproc-per-node 2 --master-port %d ", binary("LORA_LAUNCH_BIN"),
             free_tcp_port());
    train_binary(dir, "two", "", launcher,
                 "--set lora.dropout=0 --set train.grad_accum=1 --set zero.stage=2 --set zero.offload=cpu --set zero.bucket_mb=0 "
                 "--set zero.overlap_comm=true");
    char path[PATH_MAX];
    LossRecorder one = {0}, two = {0};
    snprintf(path, sizeof path, "%s/one.log", dir);
    losses_of_log(path, &one);
    snprintf(path, sizeof path, "%s/two.log", dir);
    losses_of_log(path, &two);
    expect_losses_close(&two, &one, STEPS, RANKS_LOSS_TOL, "2 ranks vs 1");
    char one_adapter[PATH_MAX], two_adapter[PATH_MAX];
    snprintf(one_adapter, sizeof one_adapter, "%s/one/adapter", dir);
    snprintf(two_adapter, sizeof two_adapter, "%s/two/adapter", dir);
    double max_abs, difference = adapter_difference(two_adapter, one_adapter, &max_abs);
    print_message("2 ranks vs 1: adapters' relative difference %.3g (L2), %.3g (max |a - b| / max |b|)\n", difference,
                  max_abs);
    assert_true(difference < RANKS_ADAPTER_TOL);
    free((void *)dir);
}

int main(void) {
    if (!gpu_tests_init("every training run on the CUDA backend")) return GPU_TESTS_SKIPPED;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_is_the_device_peak),
        cmocka_unit_test(test_text_follows_cpu),
        cmocka_unit_test(test_text_checkpointing_follows_cpu),
        cmocka_unit_test(test_nf4_follows_cpu),
        cmocka_unit_test(test_image_text_follows_cpu),
        cmocka_unit_test(test_resume_is_bit_identical),
        cmocka_unit_test(test_schedules_give_identical_adapters),
        cmocka_unit_test(test_two_ranks_follow_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
