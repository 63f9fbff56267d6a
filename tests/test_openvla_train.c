// An OpenVLA folder trained end to end through train_run_with on the CPU backend: demo --vla's random
// OpenVLA-shaped model (two timm towers, the 3-layer projector) and RLDS episodes, all-linear LoRA.
// The run trains, its adapter holds the towers' adapters in OpenVLA's PEFT names, and a run resumed
// from its step-2 checkpoint logs the same losses and saves the same adapter bytes. lora-launch's 2 ranks
// at ZeRO stage 2 (CPU collectives) train the adapter, the towers' included, 1 process does.
#include "run_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "trainer/trainer.h"

#define TOTAL_STEPS 4
#define TWO_RANK_MICRO_BATCHES 2 // openvla_config's train.grad_accum: one micro-batch per rank

// offload: "zero.offload=cpu" (the optimizer state in host memory), or "zero.offload=none".
static Config openvla_config(const char *dir, const char *offload) {
    const char *settings[] = {"train.max_steps=4", "train.micro_batch=4", "train.grad_accum=2", "train.warmup=1",
                              "train.log_every=100", "checkpoint.every_steps=2", "checkpoint.keep_last=0",
                              "train.activation_checkpointing=true", "data.eval_path=", // evaluation: test_vla_demo
                              offload};
    Config config;
    Error err = {{0}};
    if (!vla_demo_prepare(dir, VLA_MODEL_OPENVLA, settings, sizeof settings / sizeof settings[0], &config, &err))
        fail_msg("%s", err.message);
    return config;
}

static char *adapter_bytes(const TrainSummary *summary, size_t *size) {
    char path[2048], *data;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", summary->adapter_dir);
    Error err;
    if (!read_file(path, &data, size, &err)) fail_msg("%s", err.message);
    return data;
}

static void test_trains_and_resumes(void **state) {
    (void)state;
    const char *dir = make_temp_dir("openvla_train");
    Config config = openvla_config(dir, "zero.offload=none");
    LossRecorder straight = {0}, resumed = {0};
    TrainSummary summary;
    Error err = {{0}};
    if (!train_run_with(&config, &(TrainControl){.on_step = record_loss, .context = &straight}, &summary, &err))
        fail_msg("%s", err.message);
    for (int step = 1; step <= TOTAL_STEPS; step++) print_message("step %d loss %.6f\n", step, straight.losses[step]);
    assert_true(straight.losses[TOTAL_STEPS] < straight.losses[1]);
    size_t size;
    char *straight_adapter = adapter_bytes(&summary, &size);

    // the adapter: every tower module's A and B in OpenVLA's names, besides the decoder's and the projector's
    char path[2048];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", summary.adapter_dir);
    SafetensorsFile *file = safetensors_open(path, &err);
    if (!file) fail_msg("%s", err.message);
    int towers[2] = {0, 0}, projector = 0;
    for (int i = 0; i < safetensors_count(file); i++) {
        const char *key = safetensors_name(file, i);
        towers[0] += strstr(key, "base_model.model.vision_backbone.featurizer.blocks.") == key;
        towers[1] += strstr(key, "base_model.model.vision_backbone.fused_featurizer.blocks.") == key;
        projector += strstr(key, "base_model.model.projector.fc") == key;
    }
    safetensors_close(file);
    assert_int_equal(towers[0], 2 * 4 * 2); // qkv, proj, fc1, fc2 of the 2 blocks the features need
    assert_int_equal(towers[1], 2 * 4 * 3);
    assert_int_equal(projector, 2 * 3);

    snprintf(path, sizeof path, "%s/step-000002", config.checkpoint.dir);
    if (!train_run_with(&config, &(TrainControl){.resume = path, .on_step = record_loss, .context = &resumed},
                        &summary, &err))
        fail_msg("%s", err.message);
    for (int step = 3; step <= TOTAL_STEPS; step++) {
        if (memcmp(&straight.losses[step], &resumed.losses[step], sizeof(double)) != 0)
            fail_msg("step %d: loss %.17g straight, %.17g resumed", step, straight.losses[step], resumed.losses[step]);
    }
    size_t resumed_size;
    char *resumed_adapter = adapter_bytes(&summary, &resumed_size);
    assert_int_equal(resumed_size, size);
    assert_memory_equal(resumed_adapter, straight_adapter, size);
    free(straight_adapter), free(resumed_adapter);
}

// configs/openvla.yaml keeps the optimizer state in host memory (--offload cpu) to fit a 16 GB card: the
// towers' gradients reach the host shard as the decoder's do, and the host AdamW gives the same adapter.
static void test_offload_trains_the_same_adapter(void **state) {
    (void)state;
    TrainSummary summary;
    Error err = {{0}};
    Config config = openvla_config(make_temp_dir("openvla_train"), "zero.offload=none");
    if (!train_run_with(&config, &(TrainControl){0}, &summary, &err)) fail_msg("%s", err.message);
    size_t size, offloaded_size;
    char *adapter = adapter_bytes(&summary, &size);
    config = openvla_config(make_temp_dir("openvla_train_offload"), "zero.offload=cpu");
    if (!train_run_with(&config, &(TrainControl){0}, &summary, &err)) fail_msg("%s", err.message);
    char *offloaded = adapter_bytes(&summary, &offloaded_size);
    assert_int_equal(offloaded_size, size);
    assert_memory_equal(offloaded, adapter, size);
    free(adapter), free(offloaded);
}

// The run of config's YAML (dir/config.yaml) into dir/name with the extra flags: one process (ranks 0) at
// ZeRO stage 0 with micro-batches grad_accum, or lora-launch's ranks splitting them at stage 2 on the CPU
// collectives.
static void train_ranks(const char *dir, int ranks, const char *name, const char *extra) {
    char launcher[1024] = "", command[4096], path[2048], expect[64], *log;
    if (ranks > 0)
        snprintf(launcher, sizeof launcher, "%s --nproc-per-node %d --master-port %d ", getenv("LORA_LAUNCH_BIN"),
                 ranks, free_tcp_port());
    snprintf(command, sizeof command,
             "OMP_NUM_THREADS=1 timeout 300 %s%s --config %s/config.yaml --set train.grad_accum=%d --set zero.stage=%d "
             "--set checkpoint.dir=%s/%s --set checkpoint.every_steps=0 --set dist.timeout_s=60 %s > %s/%s.log 2>&1",
             launcher, getenv("LORA_TRAIN_BIN"), dir, TWO_RANK_MICRO_BATCHES / (ranks > 0 ? ranks : 1),
             ranks > 0 ? 2 : 0, dir, name, extra, dir, name);
    int status = run_command(command);
    if (status != 0) fail_msg("exit %d from: %s (see %s/%s.log)", status, command, dir, name);
    snprintf(path, sizeof path, "%s/%s.log", dir, name);
    size_t size;
    Error err;
    if (!read_file(path, &log, &size, &err)) fail_msg("%s", err.message);
    snprintf(expect, sizeof expect, "%d ranks (cpu collectives) | ZeRO stage 2", ranks);
    if (ranks > 0 && !strstr(log, expect)) fail_msg("%s does not say '%s'", path, expect);
    free(log);
}

// Tensor name of both adapters: ||a - b|| / ||b||, with ||b|| > 0 (every tensor trained, B included).
static double tensor_difference(SafetensorsFile *a, SafetensorsFile *b, const char *name) {
    Tensor ta, tb;
    Error err;
    if (!safetensors_get(a, name, &ta, &err) || !safetensors_get(b, name, &tb, &err)) fail_msg("%s", err.message);
    assert_int_equal(ta.dtype, DTYPE_F32);
    assert_int_equal(tensor_numel(&ta), tensor_numel(&tb));
    const float *xa = ta.data, *xb = tb.data;
    double diff2 = 0, norm2 = 0;
    for (int64_t i = 0; i < tensor_numel(&tb); i++) {
        diff2 += ((double)xa[i] - xb[i]) * ((double)xa[i] - xb[i]);
        norm2 += (double)xb[i] * xb[i];
    }
    assert_true(norm2 > 0);
    return sqrt(diff2 / norm2);
}

// The adapters of dir/a and dir/b within test_launch's 1e-5 (relative L2), tensor by tensor, the towers'
// (vision_backbone.featurizer / .fused_featurizer) among them.
static void assert_same_adapter(const char *dir, const char *a, const char *b) {
    SafetensorsFile *files[2];
    char path[2048];
    Error err;
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s/adapter/adapter_model.safetensors", dir, i == 0 ? a : b);
        if (!(files[i] = safetensors_open(path, &err))) fail_msg("%s", err.message);
    }
    assert_int_equal(safetensors_count(files[0]), safetensors_count(files[1]));
    int n_tower = 0;
    double worst = 0, worst_tower = 0;
    for (int i = 0; i < safetensors_count(files[1]); i++) {
        const char *name = safetensors_name(files[1], i);
        double difference = tensor_difference(files[0], files[1], name);
        bool tower = strstr(name, "base_model.model.vision_backbone.") == name;
        n_tower += tower;
        worst = fmax(worst, difference);
        if (tower) worst_tower = fmax(worst_tower, difference);
    }
    safetensors_close(files[0]), safetensors_close(files[1]);
    print_message("%s vs %s: relative difference %.3g (L2, worst tensor), %.3g (worst of %d tower tensors)\n", a, b,
                  worst, worst_tower, n_tower);
    assert_int_equal(n_tower, 2 * 4 * 2 + 2 * 4 * 3);
    assert_true(worst < 1e-5 && worst_tower < 1e-5);
}

// 2 ranks at ZeRO stage 2 train the adapter 1 process does with the same global batch, the towers'
// gradients reduce-scattered as the rest: in the step's one bucket, in their own (per-layer buckets: the
// towers' range once their backward has run; with --offload cpu copied to the host shard), or after the
// backward (no overlap).
static void test_two_ranks_zero2_match_one_process(void **state) {
    (void)state;
    if (!getenv("LORA_TRAIN_BIN") || !getenv("LORA_LAUNCH_BIN")) skip();
    const char *dir = make_temp_dir("openvla_ranks");
    Config config = openvla_config(dir, "zero.offload=none");
    Error err = {{0}};
    char *yaml = config_to_yaml(&config, &err), path[2048];
    if (!yaml) fail_msg("%s", err.message);
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(yaml, f);
    assert_int_equal(fclose(f), 0);
    free(yaml);
    train_ranks(dir, 0, "one", "");
    static const char *const runs[][2] = {{"two", ""},
                                          {"two-per-layer-buckets", "--set zero.bucket_mb=0"},
                                          {"two-no-overlap", "--set zero.overlap_comm=false"},
                                          {"two-offload", "--set zero.offload=cpu --set zero.bucket_mb=0"}};
    for (int i = 0; i < 4; i++) {
        train_ranks(dir, 2, runs[i][0], runs[i][1]);
        assert_same_adapter(dir, runs[i][0], "one");
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_trains_and_resumes),
                                       cmocka_unit_test(test_offload_trains_the_same_adapter),
                                       cmocka_unit_test(test_two_ranks_zero2_match_one_process)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
