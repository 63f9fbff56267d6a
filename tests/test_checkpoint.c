// Training checkpoints: round trip bit-exactly; a failed write (injected
// ENOSPC/EIO at every write of a save, a real tmpfs that fills) or a SIGKILL
// at a random point of a save, or an injected failure or SIGKILL at every
// write, fsync, rename and removal of a save and a prune, leaves the
// previous checkpoint loadable and no broken folder that looks complete; corruption is detected; pruning keeps
// the newest; shard files a load would refuse fail the save.
#include "test_util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoints/checkpoints_testing.h"

#define WRITES_PER_SAVE 6 // adapter config + weights, optimizer, state, marker, latest

typedef struct Fixture {
    Model *model;
    float *adam_m, *adam_v; // host == backend memory on the CPU backend
    size_t n;
} Fixture;

static Fixture fixture_create(void) {
    LlamaConfig config;
    Error err;
    assert_true(llama_config_preset("tiny", &config, &err));
    ModelOptions options = {.ops = ops_cpu(), .config = config, .max_batch = 1, .max_seq_len = 8, .seed = 7};
    options.lora = (LoraConfig){.r = 4, .alpha = 8, .targets = {[LORA_Q] = true, [LORA_V] = true}};
    Fixture f = {.model = model_create(&options, &err)};
    if (!f.model) fail_msg("model_create: %s", err.message);
    f.n = model_params(f.model)->total;
    f.adam_m = calloc(f.n, sizeof(float));
    f.adam_v = calloc(f.n, sizeof(float));
    return f;
}

static void fixture_destroy(Fixture *f) {
    model_destroy(f->model);
    free(f->adam_m);
    free(f->adam_v);
}

// Parameters and moments that are a function of step, so a loaded
// checkpoint shows which save it came from.
static void fill_for_step(Fixture *f, int step) {
    Rng rng;
    rng_seed(&rng, 1000 + (uint64_t)step);
    fill_uniform(model_param_data(f->model), f->n, -1, 1, &rng);
    model_sync_params(f->model);
    fill_uniform(f->adam_m, f->n, -1, 1, &rng);
    fill_uniform(f->adam_v, f->n, 0, 1, &rng);
}

static TrainerState state_for_step(int step) {
    return (TrainerState){.step = step, .optimizer_steps = step - 1, .epoch = step / 3, .step_in_epoch = step % 3,
                          .seed = 0xfeedbeefcafe1234ULL, .skipped_steps = 1, .bad_steps = 2,
                          .first_loss = 5.5, .last_loss = 1.0 / step, .config_yaml = "train:\n  lr: 0.001\n"};
}

static void save_step(Fixture *f, const char *run_dir, int step) {
    fill_for_step(f, step);
    TrainerState state = state_for_step(step);
    AdapterInfo info = {.base_model_name_or_path = "base"};
    CheckpointSource source = {f->model, &info, f->adam_m, f->adam_v, false, &state, .world_size = 0};
    char path[4096];
    Error err;
    if (!checkpoint_save(run_dir, &source, path, sizeof path, &err)) fail_msg("%s", err.message);
}

// The newest complete checkpoint loads and holds exactly step's contents.
static void assert_latest_is(const char *run_dir, int step) {
    char path[4096];
    Error err;
    if (!checkpoint_find_latest(run_dir, path, sizeof path, &err)) fail_msg("%s", err.message);
    Fixture expected = fixture_create(), loaded = fixture_create();
    fill_for_step(&expected, step);
    TrainerState state;
    if (!checkpoint_load(path, loaded.model, loaded.adam_m, loaded.adam_v, false, &state, &err)) fail_msg("%s", err.message);
    assert_int_equal(state.step, step);
    TrainerState want = state_for_step(step);
    assert_int_equal(state.optimizer_steps, want.optimizer_steps);
    assert_int_equal(state.epoch, want.epoch);
    assert_int_equal(state.step_in_epoch, want.step_in_epoch);
    assert_true(state.seed == want.seed);
    assert_int_equal(state.bad_steps, 2);
    assert_true(state.last_loss == want.last_loss);
    assert_string_equal(state.config_yaml, want.config_yaml);
    assert_memory_equal(model_param_data(loaded.model), model_param_data(expected.model), expected.n * sizeof(float));
    assert_memory_equal(loaded.adam_m, expected.adam_m, expected.n * sizeof(float));
    assert_memory_equal(loaded.adam_v, expected.adam_v, expected.n * sizeof(float));
    trainer_state_free(&state);
    fixture_destroy(&expected);
    fixture_destroy(&loaded);
}

static void test_round_trip_and_peft_layout(void **state) {
    const char *run_dir = make_temp_dir("ckpt");
    Fixture f = fixture_create();
    save_step(&f, run_dir, 3);
    assert_latest_is(run_dir, 3);
    char path[4096];
    snprintf(path, sizeof path, "%s/step-000003", run_dir);
    Error err;
    if (!adapter_load(f.model, path, &err)) fail_msg("the checkpoint is not a PEFT adapter folder: %s", err.message);
    snprintf(path, sizeof path, "%s/step-000003/optimizer/rank-00000.safetensors", run_dir);
    assert_true(path_exists(path));
    fixture_destroy(&f);
}

static void test_injected_write_failures_keep_previous(void **state) {
    const char *run_dir = make_temp_dir("ckpt-fail");
    Fixture f = fixture_create();
    save_step(&f, run_dir, 1);
    const int errnos[2] = {ENOSPC, EIO};
    for (int nth = 1; nth <= WRITES_PER_SAVE; nth++) {
        int errno_value = errnos[nth % 2];
        fill_for_step(&f, 2);
        TrainerState s = state_for_step(2);
        CheckpointSource source = {f.model, NULL, f.adam_m, f.adam_v, false, &s, .world_size = 0};
        checkpoint_inject_write_failure(nth, errno_value);
        char path[4096];
        Error err;
        bool saved = checkpoint_save(run_dir, &source, path, sizeof path, &err);
        checkpoint_inject_write_failure(0, 0);
        print_message("write %d fails: %s\n", nth, saved ? "saved" : err.message);
        assert_false(saved);
        assert_non_null(strstr(err.message, "step-000002"));
        assert_non_null(strstr(err.message, strerror(errno_value)));
        // (The last write is `latest`: step-000002 is then complete, but latest still names step 1.)
        assert_latest_is(run_dir, 1);
        char partial[4096];
        snprintf(partial, sizeof partial, "%s/.partial-step-000002", run_dir);
        assert_false(path_exists(partial));
    }
    fixture_destroy(&f);
}

// A tmpfs with room for one and a half checkpoints (plus 32 KiB for the
// page-rounding of its 6 files): the second save hits a real ENOSPC and the
// first still loads.
static void test_tmpfs_that_fills(void **state) {
    const char *mount_dir = make_temp_dir("ckpt-tmpfs");
    Fixture f = fixture_create();
    fill_for_step(&f, 1);
    TrainerState s = state_for_step(1);
    CheckpointSource source = {f.model, NULL, f.adam_m, f.adam_v, false, &s, .world_size = 0};
    Error err;
    CheckpointImage *image = checkpoint_image_create(&source, &err);
    assert_non_null(image);
    uint64_t bytes = checkpoint_image_bytes(image);
    checkpoint_image_destroy(image);
    char options[64];
    snprintf(options, sizeof options, "size=%llu", (unsigned long long)(bytes * 3 / 2 + 32768));
    if (mount("tmpfs", mount_dir, "tmpfs", 0, options) != 0) {
        fixture_destroy(&f);
        print_message("skipped: mounting a tmpfs needs root: %s\n", strerror(errno));
        skip();
    }
    save_step(&f, mount_dir, 1);
    fill_for_step(&f, 2);
    s = state_for_step(2);
    char path[4096];
    bool saved = checkpoint_save(mount_dir, &source, path, sizeof path, &err);
    print_message("checkpoint of %llu bytes into a %s tmpfs: %s\n", (unsigned long long)bytes, options,
                  saved ? "saved" : err.message);
    assert_false(saved);
    assert_non_null(strstr(err.message, strerror(ENOSPC)));
    assert_latest_is(mount_dir, 1);
    assert_int_equal(umount(mount_dir), 0);
    fixture_destroy(&f);
}

// A child saves steps 2, 3, ... in a loop; it is SIGKILLed after a random
// delay. Whatever it left, the newest complete checkpoint loads intact.
static void test_sigkill_during_save(void **state) {
    const char *run_dir = make_temp_dir("ckpt-kill");
    Fixture f = fixture_create();
    save_step(&f, run_dir, 1);
    Rng rng;
    rng_seed(&rng, 99);
    for (int trial = 0; trial < 25; trial++) {
        pid_t child = fork();
        assert_true(child >= 0);
        if (child == 0) {
            for (int step = 2;; step++) save_step(&f, run_dir, step);
        }
        usleep((useconds_t)(500 + rng_below(&rng, 20000)));
        assert_int_equal(kill(child, SIGKILL), 0);
        int status;
        assert_int_equal(waitpid(child, &status, 0), child);
        char path[4096];
        Error err;
        if (!checkpoint_find_latest(run_dir, path, sizeof path, &err)) fail_msg("trial %d: %s", trial, err.message);
        int step = atoi(strrchr(path, '-') + 1);
        assert_latest_is(run_dir, step);
        // Resumed runs save again over whatever the killed one left.
        assert_true(checkpoint_prune(run_dir, 2, &err));
    }
    fixture_destroy(&f);
}

static void corrupt(const char *path, long offset, bool truncate_instead) {
    if (truncate_instead) {
        assert_int_equal(truncate(path, offset), 0);
        return;
    }
    FILE *file = fopen(path, "r+b");
    assert_non_null(file);
    assert_int_equal(fseek(file, offset, SEEK_SET), 0);
    int c = fgetc(file);
    assert_int_equal(fseek(file, offset, SEEK_SET), 0);
    fputc(c ^ 0x01, file);
    assert_int_equal(fclose(file), 0);
}

static void test_corruption_detected_and_skipped(void **state) {
    const char *run_dir = make_temp_dir("ckpt-corrupt");
    Fixture f = fixture_create();
    save_step(&f, run_dir, 1);
    save_step(&f, run_dir, 2);
    char weights[4200], dir[4096];
    snprintf(dir, sizeof dir, "%s/step-000002", run_dir);
    snprintf(weights, sizeof weights, "%s/adapter_model.safetensors", dir);
    corrupt(weights, 200, false);
    Error err;
    assert_false(checkpoint_verify(dir, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "adapter_model.safetensors: checksum"));
    assert_latest_is(run_dir, 1);
    save_step(&f, run_dir, 2);
    corrupt(weights, 100, true);
    assert_false(checkpoint_verify(dir, &err));
    assert_non_null(strstr(err.message, "100 bytes on disk"));
    assert_latest_is(run_dir, 1);
    fixture_destroy(&f);
}

static void test_prune_keeps_newest(void **state) {
    const char *run_dir = make_temp_dir("ckpt-prune");
    Fixture f = fixture_create();
    for (int step = 1; step <= 4; step++) save_step(&f, run_dir, step);
    char leftover[4096];
    snprintf(leftover, sizeof leftover, "%s/.partial-step-000005", run_dir);
    Error err;
    assert_true(make_dirs(leftover, &err));
    assert_true(checkpoint_prune(run_dir, 2, &err));
    const bool expect[5] = {false, false, false, true, true};
    for (int step = 1; step <= 4; step++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/step-%06d", run_dir, step);
        assert_int_equal(path_exists(path), expect[step]);
    }
    assert_false(path_exists(leftover));
    assert_true(checkpoint_prune(run_dir, 0, &err)); // 0 still keeps the newest
    assert_latest_is(run_dir, 4);
    fixture_destroy(&f);
}

// Two ranks' shard files whose ranges do not tile the buffer (both [0, n),
// as stage 0 once wrote): the save fails verification with resume's own
// message, and nothing is left that looks like a checkpoint.
static void test_shards_that_resume_would_refuse_fail_the_save(void **state) {
    const char *run_dir = make_temp_dir("ckpt-overlap");
    Fixture f = fixture_create();
    fill_for_step(&f, 2);
    TrainerState s = state_for_step(2);
    AdapterInfo info = {.base_model_name_or_path = "base"};
    CheckpointImage *images[2];
    FileDigest digests[2];
    Error err;
    for (int rank = 0; rank < 2; rank++) {
        CheckpointSource source = {f.model, &info, f.adam_m, f.adam_v, false, &s, rank, 2, 0, f.n};
        images[rank] = checkpoint_image_create(&source, &err);
        if (!images[rank]) fail_msg("%s", err.message);
    }
    assert_true(checkpoint_write_begin(run_dir, images[0], &err));
    for (int rank = 0; rank < 2; rank++) assert_true(checkpoint_write_shard(run_dir, images[rank], &digests[rank], &err));
    char path[4096];
    assert_false(checkpoint_write_finish(run_dir, images[0], digests, path, sizeof path, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "rank-00001.safetensors: range [0, "));
    assert_non_null(strstr(err.message, "does not continue the shards before it"));
    assert_false(checkpoint_find_latest(run_dir, path, sizeof path, &err));
    for (int rank = 0; rank < 2; rank++) checkpoint_image_destroy(images[rank]);
    fixture_destroy(&f);
}

// Every step-NNNNNN folder with a COMPLETE marker verifies (a folder that
// looks like a checkpoint is one); returns how many there are.
static int assert_step_folders_complete(const char *run_dir) {
    int complete = 0;
    for (int step = 1; step <= 9; step++) {
        char dir[4096], marker[4200];
        snprintf(dir, sizeof dir, "%s/step-%06d", run_dir, step);
        snprintf(marker, sizeof marker, "%s/COMPLETE", dir);
        if (!path_exists(marker)) continue;
        Error err;
        if (!checkpoint_verify(dir, &err)) fail_msg("has COMPLETE but does not verify: %s", err.message);
        complete++;
    }
    return complete;
}

// Steps 1-3 saved, then a child saves step 4 and prunes to keep_last 2,
// SIGKILLed at its 1st, 2nd, ... write, fsync, rename or removal until one
// runs to the end. After each kill every folder that looks like a checkpoint
// is one, the newest loads intact, and saving and pruning again succeed.
static void test_kill_at_every_operation_of_a_save_and_prune(void **state) {
    const char *run_dir = make_temp_dir("ckpt-kill-each");
    Fixture f = fixture_create();
    int trial = 1;
    for (;; trial++) {
        Error err;
        assert_true(remove_tree(run_dir, &err) && make_dirs(run_dir, &err));
        for (int step = 1; step <= 3; step++) save_step(&f, run_dir, step);
        pid_t child = fork();
        assert_true(child >= 0);
        if (child == 0) {
            checkpoint_inject_fault(trial, 0);
            save_step(&f, run_dir, 4);
            _exit(checkpoint_prune(run_dir, 2, &err) ? 0 : 1);
        }
        int status;
        assert_int_equal(waitpid(child, &status, 0), child);
        assert_true(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0));
        assert_true(assert_step_folders_complete(run_dir) >= 2);
        char path[4096];
        if (!checkpoint_find_latest(run_dir, path, sizeof path, &err)) fail_msg("trial %d: %s", trial, err.message);
        assert_latest_is(run_dir, atoi(strrchr(path, '-') + 1));
        if (WIFEXITED(status)) break;
        save_step(&f, run_dir, 5);
        assert_true(checkpoint_prune(run_dir, 2, &err));
        assert_int_equal(assert_step_folders_complete(run_dir), 2);
        assert_latest_is(run_dir, 5);
    }
    print_message("killed at each of %d operations of a save and a prune, then saved again\n", trial - 1);
    assert_true(trial > 20);
    fixture_destroy(&f);
}

// Steps 1-3 saved, then the 1st, 2nd, ... write, fsync, rename or removal
// of saving step 4 and pruning to keep_last 2 fails with ENOSPC or EIO
// until none is left to fail. The save either succeeds or reports the
// errno; every folder that looks like a checkpoint is one, the newest loads
// intact, and saving and pruning again succeed and clear the leftovers.
static void test_fail_at_every_operation_of_a_save_and_prune(void **state) {
    const char *run_dir = make_temp_dir("ckpt-fail-each");
    Fixture f = fixture_create();
    const int errnos[2] = {ENOSPC, EIO};
    int trial = 1;
    for (;; trial++) {
        Error err;
        assert_true(remove_tree(run_dir, &err) && make_dirs(run_dir, &err));
        for (int step = 1; step <= 3; step++) save_step(&f, run_dir, step);
        fill_for_step(&f, 4);
        TrainerState s = state_for_step(4);
        CheckpointSource source = {f.model, NULL, f.adam_m, f.adam_v, false, &s, .world_size = 0};
        char path[4096];
        checkpoint_inject_fault(trial, errnos[trial % 2]);
        bool saved = checkpoint_save(run_dir, &source, path, sizeof path, &err);
        if (!saved) assert_non_null(strstr(err.message, strerror(errnos[trial % 2])));
        bool pruned = checkpoint_prune(run_dir, 2, &err);
        checkpoint_inject_fault(0, 0);
        assert_true(assert_step_folders_complete(run_dir) >= 2);
        if (!checkpoint_find_latest(run_dir, path, sizeof path, &err)) fail_msg("trial %d: %s", trial, err.message);
        assert_latest_is(run_dir, atoi(strrchr(path, '-') + 1));
        if (saved && pruned) break;
        save_step(&f, run_dir, 5);
        assert_true(checkpoint_prune(run_dir, 2, &err));
        assert_int_equal(assert_step_folders_complete(run_dir), 2);
        assert_latest_is(run_dir, 5);
        snprintf(path, sizeof path, "ls -A '%s' | grep -q '^\\.'", run_dir);
        if (run_command(path) == 0) fail_msg("trial %d: a leftover is still in %s", trial, run_dir);
    }
    print_message("failed (ENOSPC, EIO) at each of %d operations of a save and a prune, then saved again\n",
                  trial - 1);
    assert_true(trial > 20);
    fixture_destroy(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_peft_layout),
        cmocka_unit_test(test_injected_write_failures_keep_previous),
        cmocka_unit_test(test_tmpfs_that_fills),
        cmocka_unit_test(test_sigkill_during_save),
        cmocka_unit_test(test_corruption_detected_and_skipped),
        cmocka_unit_test(test_prune_keeps_newest),
        cmocka_unit_test(test_kill_at_every_operation_of_a_save_and_prune),
        cmocka_unit_test(test_fail_at_every_operation_of_a_save_and_prune),
        cmocka_unit_test(test_shards_that_resume_would_refuse_fail_the_save),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
