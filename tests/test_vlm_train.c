// Image-text training through train_run_with on the CPU backend: LLaVA records
// over the shared JPEG fixtures, a random tiny CLIP tower and Llama. The loss
// falls; a run stopped by SIGTERM and resumed logs bit-identical losses and
// leaves a byte-identical adapter file (the projector is in every
// checkpoint's adapter file and restored from it).
#include "run_util.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "trainer/trainer.h"

#define TOTAL_STEPS 6 // 4 steps per epoch: the run crosses an epoch boundary

// 8 LLaVA records, two questions about four JPEG fixtures; false when the
// shared image fixtures are absent.
static bool vlm_config(const char *dir, Config *config) {
    const char *recipe[] = {"vision.tower_preset=tiny", "data.image_tokens=16", "data.max_seq_len=64",
                            "data.shuffle=true", "lora.target=all", "lora.dropout=0.1", "train.micro_batch=2",
                            "train.max_steps=6", "train.lr=3e-3", "train.warmup=1", "train.log_every=100",
                            "checkpoint.every_steps=2", "train.backend=cpu"};
    return vlm_run_config(dir, 8, recipe, sizeof recipe / sizeof recipe[0], config);
}

static void run(const Config *config, const TrainControl *control, TrainSummary *summary) {
    Error err;
    if (!train_run_with(config, control, summary, &err)) fail_msg("train_run_with: %s", err.message);
}

static char *file_bytes(const char *dir, const char *name, size_t *size) {
    char path[PATH_MAX], *data;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    Error err;
    if (!read_file(path, &data, size, &err)) fail_msg("%s", err.message);
    return data;
}

static void assert_same_file(const char *dir_a, const char *dir_b, const char *name) {
    size_t size_a, size_b;
    char *a = file_bytes(dir_a, name, &size_a), *b = file_bytes(dir_b, name, &size_b);
    assert_int_equal(size_a, size_b);
    assert_memory_equal(a, b, size_a);
    free(a);
    free(b);
}

static void test_image_text_resume_is_bit_identical(void **state) {
    const char *dir = make_temp_dir("vlm_resume");
    Config config;
    if (!vlm_config(dir, &config)) skip();
    LossRecorder straight = {0}, stopped = {.signal_at_step = 3}, resumed = {0};
    TrainSummary summary;
    run(&config, &(TrainControl){.on_step = record_loss, .context = &straight}, &summary);
    assert_true(summary.last_loss < summary.first_loss);
    char straight_dir[PATH_MAX - 64], out[PATH_MAX - 64];
    snprintf(straight_dir, sizeof straight_dir, "%s/straight", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    assert_int_equal(rename(out, straight_dir), 0);

    run(&config, &(TrainControl){.on_step = record_loss, .context = &stopped}, &summary);
    assert_true(summary.interrupted);
    char checkpoint[PATH_MAX];
    snprintf(checkpoint, sizeof checkpoint, "%s/step-000003", out);
    char checkpoint_adapter[PATH_MAX + 32];
    snprintf(checkpoint_adapter, sizeof checkpoint_adapter, "%s/adapter_model.safetensors", checkpoint);
    Error err;
    SafetensorsFile *adapter = safetensors_open(checkpoint_adapter, &err);
    if (!adapter) fail_msg("%s", err.message);
    Tensor projector;
    assert_true(safetensors_get(adapter, "base_model.model.multi_modal_projector.linear_1.weight", &projector, &err));
    safetensors_close(adapter);

    run(&config, &(TrainControl){.resume = "latest", .on_step = record_loss, .context = &resumed}, &summary);
    assert_int_equal(summary.steps, TOTAL_STEPS);
    for (int step = 4; step <= TOTAL_STEPS; step++) {
        if (memcmp(&straight.losses[step], &resumed.losses[step], sizeof(double)) != 0)
            fail_msg("step %d: loss %.17g straight, %.17g resumed", step, straight.losses[step], resumed.losses[step]);
    }
    char straight_adapter[PATH_MAX];
    snprintf(straight_adapter, sizeof straight_adapter, "%s/adapter", straight_dir);
    assert_same_file(straight_adapter, summary.adapter_dir, "adapter_model.safetensors");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_image_text_resume_is_bit_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
