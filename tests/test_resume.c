// Never lose a run, end to end through train_run_with on the CPU backend:
// a run stopped by SIGTERM and resumed from an older checkpoint logs
// bit-identical losses and leaves a byte-identical adapter, with gradient
// accumulation, shuffling across epochs and dropout on; a finished run
// continued for more steps (from `latest`, its last step's checkpoint, with
// operational keys changed) too, while a changed learning rate is refused
// unless --allow-config-change says it is intended; non-finite
// steps leave the optimizer untouched, and so do outlier steps skipped by the
// z-score guard, with the same decisions after a resume; the disk guard stops before step 1 or
// before a save that does not fit a real tmpfs, pruning nothing to make room;
// an unwritable checkpoint.dir is found before step 1.
#include "run_util.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "checkpoints/checkpoints_testing.h"
#include "trainer/trainer.h"

#define TOTAL_STEPS 14 // 10 steps per epoch: the run crosses an epoch boundary

static Config resume_config(const char *dir) {
    const char *recipe[] = {"data.max_seq_len=32", "data.shuffle=true", "lora.target=all", "lora.r=8",
                            "lora.dropout=0.1", "train.micro_batch=2", "train.grad_accum=2", "train.max_steps=14",
                            "train.lr=3e-3", "train.schedule=cosine", "train.warmup=3", "train.log_every=100",
                            "checkpoint.every_steps=4", "checkpoint.keep_last=2", "train.backend=cpu"};
    return tiny_run_config(dir, recipe, sizeof recipe / sizeof recipe[0]);
}

static void run(const Config *config, const TrainControl *control, TrainSummary *summary) {
    Error err;
    if (!train_run_with(config, control, summary, &err)) fail_msg("train_run_with: %s", err.message);
}

static void assert_losses_equal(const LossRecorder *a, const LossRecorder *b, int from, int to) {
    for (int step = from; step <= to; step++) {
        if (memcmp(&a->losses[step], &b->losses[step], sizeof(double)) != 0)
            fail_msg("step %d: loss %.17g straight, %.17g resumed", step, a->losses[step], b->losses[step]);
    }
}

static void test_resume_is_bit_identical(void **state) {
    const char *dir = make_temp_dir("resume");
    char path[2048], straight_out[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Config config = resume_config(dir);
    LossRecorder straight = {.signal_at_step = 0}, stopped = {.signal_at_step = 6}, resumed = {.signal_at_step = 0},
             resumed_latest = {.signal_at_step = 0};
    TrainSummary summary;
    run(&config, &(TrainControl){.on_step = record_loss, .context = &straight}, &summary);
    size_t straight_size;
    char *straight_adapter = adapter_file_bytes(summary.adapter_dir, &straight_size);
    snprintf(straight_out, sizeof straight_out, "%s/out", dir);
    Error err;
    assert_true(remove_tree(straight_out, &err));

    run(&config, &(TrainControl){.on_step = record_loss, .context = &stopped}, &summary);
    assert_true(summary.interrupted);
    assert_non_null(strstr(summary.checkpoint_dir, "step-000006"));
    assert_losses_equal(&straight, &stopped, 1, 6);

    // From an older checkpoint by name: re-saves step-000008 and -000012 over nothing stale.
    snprintf(path, sizeof path, "%s/out/step-000004", dir);
    run(&config, &(TrainControl){.resume = path, .on_step = record_loss, .context = &resumed}, &summary);
    assert_false(summary.interrupted);
    assert_int_equal(summary.steps, TOTAL_STEPS);
    assert_losses_equal(&straight, &resumed, 5, TOTAL_STEPS);
    size_t resumed_size;
    char *resumed_adapter = adapter_file_bytes(summary.adapter_dir, &resumed_size);
    assert_int_equal(resumed_size, straight_size);
    assert_memory_equal(resumed_adapter, straight_adapter, straight_size);
    assert_true(summary.first_loss == straight.losses[1]);

    // latest is the last step's full checkpoint: nothing is left to train.
    run(&config, &(TrainControl){.resume = "latest", .on_step = record_loss, .context = &resumed_latest}, &summary);
    snprintf(path, sizeof path, "%s/out/step-%06d/optimizer/rank-00000.safetensors", dir, TOTAL_STEPS);
    assert_true(path_exists(path));
    for (int step = 1; step <= TOTAL_STEPS; step++) assert_true(resumed_latest.losses[step] == 0);
    free(resumed_adapter);
    resumed_adapter = adapter_file_bytes(summary.adapter_dir, &resumed_size);
    assert_memory_equal(resumed_adapter, straight_adapter, straight_size);
    free(resumed_adapter);
    free(straight_adapter);
}

// A changed lr is refused, naming the key and --allow-config-change; with
// the flag the run continues from the checkpoint at the new lr: step 4's loss
// (computed before step 4's update) equals the old-lr resume's, later ones differ.
static void test_resume_refuses_another_config(void **state) {
    const char *dir = make_temp_dir("resume-config");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Config config = resume_config(dir);
    config_set_or_fail(&config, "%s", "checkpoint.keep_last=0"); // step-000003 stays for both resumes
    TrainSummary summary;
    run(&config, &(TrainControl){.stop_after_steps = 3}, &summary);
    assert_true(summary.interrupted);
    snprintf(path, sizeof path, "%s/out/step-000003", dir);
    LossRecorder old_lr = {0}, new_lr = {0};
    run(&config, &(TrainControl){.resume = path, .on_step = record_loss, .context = &old_lr}, &summary);
    config_set_or_fail(&config, "%s", "train.lr=1e-3");
    Error err;
    assert_false(train_run_with(&config, &(TrainControl){.resume = path}, &summary, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "different config"));
    assert_non_null(strstr(err.message, "train.lr: 0.003 in the checkpoint, 0.001 now"));
    assert_non_null(strstr(err.message, "may change on resume"));
    assert_non_null(strstr(err.message, "add --allow-config-change if changing train.lr is intended"));

    TrainControl allowed = {.resume = path, .allow_config_change = true, .on_step = record_loss, .context = &new_lr};
    run(&config, &allowed, &summary);
    assert_int_equal(summary.steps, TOTAL_STEPS);
    assert_true(new_lr.losses[4] == old_lr.losses[4]);
    for (int step = 5; step <= TOTAL_STEPS; step++) assert_true(new_lr.losses[step] != old_lr.losses[step]);
}

// A finished 4-step run continued to 8 steps (constant LR, so the schedule's
// extension changes nothing) with keep_last and log_every changed too: the
// last step was saved as a full checkpoint, the resumed run trains steps 5-8
// and leaves the adapter of an uninterrupted 8-step run, byte for byte.
static void test_finished_run_continues_for_more_steps(void **state) {
    const char *dir = make_temp_dir("resume-longer");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Config config = resume_config(dir);
    const char *settings[] = {"train.schedule=constant", "train.warmup=0", "train.max_steps=8"};
    for (int i = 0; i < 3; i++) config_set_or_fail(&config, "%s", settings[i]);
    LossRecorder straight = {0}, continued = {0};
    TrainSummary summary;
    run(&config, &(TrainControl){.on_step = record_loss, .context = &straight}, &summary);
    size_t straight_size, continued_size;
    char *straight_adapter = adapter_file_bytes(summary.adapter_dir, &straight_size);
    snprintf(path, sizeof path, "%s/out", dir);
    Error err;
    assert_true(remove_tree(path, &err));

    config_set_or_fail(&config, "%s", "train.max_steps=4");
    run(&config, NULL, &summary);
    assert_int_equal(summary.steps, 4);
    snprintf(path, sizeof path, "%s/out/step-000004/optimizer/rank-00000.safetensors", dir);
    assert_true(path_exists(path));
    const char *longer[] = {"train.max_steps=8", "checkpoint.keep_last=3", "train.log_every=1"};
    for (int i = 0; i < 3; i++) config_set_or_fail(&config, "%s", longer[i]);
    run(&config, &(TrainControl){.resume = "latest", .on_step = record_loss, .context = &continued}, &summary);
    assert_int_equal(summary.steps, 8);
    assert_true(continued.losses[4] == 0);
    assert_losses_equal(&straight, &continued, 5, 8);
    char *continued_adapter = adapter_file_bytes(summary.adapter_dir, &continued_size);
    assert_int_equal(continued_size, straight_size);
    assert_memory_equal(continued_adapter, straight_adapter, straight_size);
    free(continued_adapter);
    free(straight_adapter);
}

// The final norm's weight is NaN: every loss is, so every step is skipped and
// after max_bad_steps the run stops with a checkpoint of the untouched state.
static void test_non_finite_steps_leave_optimizer_untouched(void **state) {
    const char *dir = make_temp_dir("resume-nan");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Config config = resume_config(dir);
    config_set_or_fail(&config, "%s", "train.max_bad_steps=3");
    LlamaConfig llama;
    Error err;
    assert_true(llama_config_preset("tiny", &llama, &err));
    ModelOptions options = {.ops = ops_cpu(), .config = llama, .max_batch = 1, .max_seq_len = 8,
                            .lora = {.r = 8, .alpha = 8, .targets = {[LORA_Q] = true}}};
    Model *base = model_create(&options, &err);
    assert_non_null(base);
    assert_true(model_init_random_base(base, 1, &err));
    Tensor norm;
    assert_true(model_frozen_tensor(base, "model.norm.weight", &norm, &err));
    poison(norm.data, (size_t)tensor_numel(&norm));
    snprintf(path, sizeof path, "%s/model", dir);
    assert_true(make_dirs(path, &err) && hf_save_model(base, path, &err));
    model_destroy(base);

    TrainSummary summary;
    assert_false(train_run_with(&config, NULL, &summary, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "3 bad steps in a row"));
    assert_int_equal(summary.bad_steps, 3);
    assert_int_equal(summary.steps, 0);

    Model *model = NULL;
    options.lora = (LoraConfig){.r = 8, .alpha = config.lora.alpha, .targets = {true, true, true, true, true, true, true}};
    options.seed = config.train.seed;
    model = model_create(&options, &err);
    assert_non_null(model);
    size_t n = model_params(model)->total;
    float *initial = malloc(n * sizeof(float)), *m = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
    memcpy(initial, model_param_data(model), n * sizeof(float));
    TrainerState loaded;
    if (!checkpoint_load(summary.checkpoint_dir, model, m, v, false, &loaded, &err)) fail_msg("%s", err.message);
    assert_int_equal(loaded.step, 3);
    assert_int_equal(loaded.optimizer_steps, 0);
    assert_int_equal(loaded.bad_steps, 3);
    assert_memory_equal(model_param_data(model), initial, n * sizeof(float));
    for (size_t i = 0; i < n; i++) assert_true(m[i] == 0.0f && v[i] == 0.0f);
    trainer_state_free(&loaded);
    free(initial);
    free(m);
    free(v);
    model_destroy(model);
}

// 40 copies of one sentence (20 steps of 2 with data.shuffle false: the model
// memorises it), 2 records of random printable bytes (step 21: an outlier
// batch), 4 more of the sentence (steps 22-23).
#define OUTLIER_STEP 21
static Config outlier_config(const char *dir) {
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    uint64_t x = 12345;
    for (int i = 0; i < 46; i++) {
        if (i != 40 && i != 41) {
            fputs("{\"text\": \"the cat sat on the mat and the dog sat on the log\"}\n", f);
            continue;
        }
        fputs("{\"text\": \"", f);
        for (int c = 0; c < 48; c++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            char byte = (char)('#' + (x >> 33) % 90); // '#'..'|': no quote or backslash
            fputc(byte, f);
        }
        fputs("\"}\n", f);
    }
    assert_int_equal(fclose(f), 0);
    const char *recipe[] = {"data.max_seq_len=32", "data.shuffle=false", "lora.target=all", "train.micro_batch=2",
                            "train.max_steps=23", "train.lr=1e-2", "train.schedule=constant", "train.log_every=1",
                            "checkpoint.every_steps=1", "train.backend=cpu", "train.skip_window=10"};
    return tiny_run_config(dir, recipe, sizeof recipe / sizeof recipe[0]);
}

static char *checkpoint_file(const char *dir, int step, const char *name, size_t *size) {
    char path[2048], *data;
    snprintf(path, sizeof path, "%s/out/step-%06d/%s", dir, step, name);
    Error err;
    if (!read_file(path, &data, size, &err)) fail_msg("%s", err.message);
    return data;
}

// The checkpoints before and after step are byte-identical in adapter and AdamW moments (or, !same, differ).
static void assert_step_changed_nothing(const char *dir, int step, bool same) {
    const char *files[] = {"adapter_model.safetensors", "optimizer/rank-00000.safetensors"};
    for (int i = 0; i < 2; i++) {
        size_t before_size, after_size;
        char *before = checkpoint_file(dir, step - 1, files[i], &before_size);
        char *after = checkpoint_file(dir, step, files[i], &after_size);
        bool equal = before_size == after_size && memcmp(before, after, before_size) == 0;
        if (equal != same) fail_msg("step %d %s %s", step, same ? "changed" : "did not change", files[i]);
        free(before);
        free(after);
    }
}

static char *run_outliers(const char *dir, const Config *config, const TrainControl *control, TrainSummary *summary,
                          size_t *size) {
    char out[2048];
    snprintf(out, sizeof out, "%s/out", dir);
    Error err;
    if (!control->resume && path_exists(out) && !remove_tree(out, &err)) fail_msg("%s", err.message);
    run(config, control, summary);
    return summary->interrupted ? NULL : adapter_file_bytes(summary->adapter_dir, size);
}

// Off by default, the outlier batch is trained on; with train.skip_loss_zscore
// it is skipped before the update (adapter and moments of step 21 equal step
// 20's), counted in bad_steps, and training goes on; so with
// train.skip_grad_zscore (at lr 3e-2), by its gradient norm; a z-score no step reaches
// leaves the run byte-identical to the default; a run stopped before the
// outlier and resumed makes the same decisions (its window comes from the
// checkpoint) and leaves the same adapter.
static void test_outlier_step_is_skipped(void **state) {
    const char *dir = make_temp_dir("resume-outlier");
    Config config = outlier_config(dir);
    LossRecorder plain = {0}, guarded = {0}, resumed = {0};
    TrainSummary summary;
    size_t plain_size, size;
    char *plain_adapter = run_outliers(dir, &config, &(TrainControl){.on_step = record_loss, .context = &plain},
                                       &summary, &plain_size);
    assert_int_equal(summary.bad_steps, 0);
    assert_step_changed_nothing(dir, OUTLIER_STEP, false);
    print_message("loss at step 20 %.4f, at the outlier step %.4f\n", plain.losses[20], plain.losses[OUTLIER_STEP]);

    Config never = config;
    config_set_or_fail(&never, "%s", "train.skip_loss_zscore=1000");
    config_set_or_fail(&never, "%s", "train.skip_grad_zscore=1000");
    char *never_adapter = run_outliers(dir, &never, &(TrainControl){0}, &summary, &size);
    assert_int_equal(summary.bad_steps, 0);
    assert_int_equal(size, plain_size);
    assert_memory_equal(never_adapter, plain_adapter, plain_size);

    config_set_or_fail(&config, "%s", "train.skip_loss_zscore=3");
    char *guarded_adapter = run_outliers(dir, &config, &(TrainControl){.on_step = record_loss, .context = &guarded},
                                         &summary, &size);
    assert_int_equal(summary.bad_steps, 1);
    assert_int_equal(summary.steps, 22);
    assert_true(guarded.losses[OUTLIER_STEP] == 0); // on_step sees accepted steps only
    assert_losses_equal(&plain, &guarded, 1, OUTLIER_STEP - 1);
    assert_step_changed_nothing(dir, OUTLIER_STEP, true);
    assert_step_changed_nothing(dir, OUTLIER_STEP + 1, false);

    Config by_norm = outlier_config(dir);
    config_set_or_fail(&by_norm, "%s", "train.skip_grad_zscore=3");
    config_set_or_fail(&by_norm, "%s", "train.lr=3e-2");
    free(run_outliers(dir, &by_norm, &(TrainControl){0}, &summary, &size));
    assert_int_equal(summary.bad_steps, 1);
    assert_step_changed_nothing(dir, OUTLIER_STEP, true);

    run_outliers(dir, &config, &(TrainControl){.stop_after_steps = 15}, &summary, &size);
    assert_true(summary.interrupted);
    char *resumed_adapter = run_outliers(dir, &config, &(TrainControl){.resume = "latest", .on_step = record_loss,
                                                                       .context = &resumed}, &summary, &size);
    assert_int_equal(summary.bad_steps, 1);
    assert_losses_equal(&guarded, &resumed, 16, 23);
    assert_memory_equal(resumed_adapter, guarded_adapter, size);
    free(resumed_adapter);
    free(guarded_adapter);
    free(never_adapter);
    free(plain_adapter);
}

// Bytes of the first checkpoint a run of config writes.
static uint64_t checkpoint_size(const char *dir) {
    char path[2048];
    snprintf(path, sizeof path, "%s/out/step-000001", dir);
    char command[4200];
    snprintf(command, sizeof command, "du -sb --apparent-size '%s' > '%s/du.txt'", path, dir);
    assert_int_equal(run_command(command), 0);
    snprintf(path, sizeof path, "%s/du.txt", dir);
    char *text;
    size_t size;
    Error err;
    assert_true(read_file(path, &text, &size, &err));
    uint64_t bytes = strtoull(text, NULL, 10);
    free(text);
    return bytes;
}

static void test_disk_guard_on_a_small_tmpfs(void **state) {
    const char *dir = make_temp_dir("resume-disk");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Config config = resume_config(dir);
    const char *settings[] = {"lora.r=32", "checkpoint.every_steps=1", "checkpoint.keep_last=0",
                              "train.max_steps=6", "checkpoint.on_low_disk=abort"};
    for (int i = 0; i < 5; i++) config_set_or_fail(&config, "%s", settings[i]);
    TrainSummary summary;
    run(&config, &(TrainControl){.stop_after_steps = 2}, &summary);
    uint64_t checkpoint_bytes = checkpoint_size(dir);
    char out[2048], options[64];
    snprintf(out, sizeof out, "%s/out", dir);
    Error err;
    assert_true(remove_tree(out, &err) && make_dirs(out, &err));
    // Room for two checkpoints with their margins, not three.
    snprintf(options, sizeof options, "size=%llu", (unsigned long long)(checkpoint_bytes * 5 / 2 + 3 * 65536));
    if (mount("tmpfs", out, "tmpfs", 0, options) != 0) {
        print_message("skipped: mounting a tmpfs needs root: %s\n", strerror(errno));
        skip();
    }
    print_message("checkpoints of %llu bytes into a %s tmpfs\n", (unsigned long long)checkpoint_bytes, options);
    assert_false(train_run_with(&config, NULL, &summary, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "--allow-low-disk"));
    assert_int_equal(summary.steps, 0);

    assert_false(train_run_with(&config, &(TrainControl){.allow_low_disk = true}, &summary, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "on_low_disk: abort"));
    char latest[2048];
    if (!checkpoint_find_latest(out, latest, sizeof latest, &err)) fail_msg("%s", err.message);
    print_message("newest complete checkpoint: %s\n", latest);
    assert_non_null(strstr(latest, "step-000002"));

    // keep_last 1: the old checkpoint and the new one, at once, fit.
    config_set_or_fail(&config, "%s", "checkpoint.keep_last=1");
    assert_int_equal(umount(out), 0);
    assert_true(remove_tree(out, &err) && make_dirs(out, &err));
    assert_int_equal(mount("tmpfs", out, "tmpfs", 0, options), 0);
    run(&config, NULL, &summary);
    assert_int_equal(summary.steps, 6);
    assert_int_equal(umount(out), 0);
}

// After step 3 something else fills the disk: step 3's save cannot fit and
// on_low_disk abort stops the run with both older checkpoints (keep_last 2)
// still there; nothing was pruned to make room.
static void fill_disk_at_step_3(void *context, int step, double loss) {
    (void)loss;
    if (step != 3) return;
    char path[4200];
    snprintf(path, sizeof path, "%s/filler", (const char *)context);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    static char block[4096];
    while (fwrite(block, 1, sizeof block, f) == sizeof block) {}
    fclose(f); // ENOSPC: the disk is full
}

static void test_full_disk_keeps_old_checkpoints(void **state) {
    const char *dir = make_temp_dir("resume-full");
    char path[4200], out[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Config config = resume_config(dir);
    const char *settings[] = {"checkpoint.every_steps=1", "checkpoint.keep_last=2", "train.max_steps=6",
                              "checkpoint.on_low_disk=abort"};
    for (int i = 0; i < 4; i++) config_set_or_fail(&config, "%s", settings[i]);
    snprintf(out, sizeof out, "%s/out", dir);
    Error err;
    assert_true(make_dirs(out, &err));
    if (mount("tmpfs", out, "tmpfs", 0, "size=16m") != 0) {
        print_message("skipped: mounting a tmpfs needs root: %s\n", strerror(errno));
        skip();
    }
    TrainSummary summary;
    assert_false(train_run_with(&config, &(TrainControl){.on_step = fill_disk_at_step_3, .context = out}, &summary,
                                &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "on_low_disk: abort"));
    snprintf(path, sizeof path, "%s/filler", out);
    assert_int_equal(unlink(path), 0);
    for (int step = 1; step <= 2; step++) {
        snprintf(path, sizeof path, "%s/step-%06d", out, step);
        if (!checkpoint_verify(path, &err)) fail_msg("keep_last 2, yet: %s", err.message);
    }
    run(&config, &(TrainControl){.resume = "latest"}, &summary);
    assert_int_equal(summary.steps, 6);
    assert_int_equal(umount(out), 0);
}

// checkpoint.dir a regular file, or on a read-only file system: the run
// stops before step 1 naming the folder and the problem, not at its first save.
static void expect_unwritable_dir(const Config *config, const char *dir, const char *problem) {
    TrainSummary summary;
    Error err;
    assert_false(train_run_with(config, NULL, &summary, &err));
    print_message("%s\n", err.message);
    assert_int_equal(summary.steps, 0);
    assert_non_null(strstr(err.message, dir));
    assert_non_null(strstr(err.message, problem));
}

static void test_unwritable_checkpoint_dir_found_before_step_1(void **state) {
    const char *dir = make_temp_dir("resume-unwritable");
    char path[2048], out[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    Config config = resume_config(dir);
    snprintf(out, sizeof out, "%s/out", dir);
    FILE *f = fopen(out, "w");
    assert_non_null(f);
    assert_int_equal(fclose(f), 0);
    expect_unwritable_dir(&config, out, strerror(ENOTDIR));
    assert_int_equal(unlink(out), 0);
    Error err;
    assert_true(make_dirs(out, &err));
    if (mount("tmpfs", out, "tmpfs", MS_RDONLY, "size=1m") != 0) {
        print_message("skipped: mounting a tmpfs needs root: %s\n", strerror(errno));
        skip();
    }
    expect_unwritable_dir(&config, out, strerror(EROFS));
    assert_int_equal(umount(out), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resume_is_bit_identical),
        cmocka_unit_test(test_resume_refuses_another_config),
        cmocka_unit_test(test_finished_run_continues_for_more_steps),
        cmocka_unit_test(test_non_finite_steps_leave_optimizer_untouched),
        cmocka_unit_test(test_outlier_step_is_skipped),
        cmocka_unit_test(test_disk_guard_on_a_small_tmpfs),
        cmocka_unit_test(test_full_disk_keeps_old_checkpoints),
        cmocka_unit_test(test_unwritable_checkpoint_dir_found_before_step_1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
