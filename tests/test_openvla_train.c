// An OpenVLA folder trained end to end through train_run_with on the CPU backend: demo --vla's random
// OpenVLA-shaped model (two timm towers, the 3-layer projector) and RLDS episodes, all-linear LoRA.
// The run trains, its adapter holds the towers' adapters in OpenVLA's PEFT names, and a run resumed
// from its step-2 checkpoint logs the same losses and saves the same adapter bytes.
#include "run_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "trainer/trainer.h"

#define TOTAL_STEPS 4

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

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_trains_and_resumes),
                                       cmocka_unit_test(test_offload_trains_the_same_adapter)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
