// The lora-train binary: configuration errors exit non-zero with a message
// naming the key or file, and write nothing; an image-text config trains; a
// SIGTERM during set-up saves a checkpoint, one after the run exits 0.
#include "test_util.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "trainer/trainer.h"

typedef struct Outcome {
    int status;
    char output[8192];
} Outcome;

// Runs lora-train with args inside dir, capturing stdout and stderr.
static Outcome run_lora_train(const char *dir, const char *args) {
    const char *bin = getenv("LORA_TRAIN_BIN");
    if (!bin) fail_msg("LORA_TRAIN_BIN is not set (run through ctest)");
    char command[4096];
    snprintf(command, sizeof command, "cd '%s' && '%s' %s > out.txt 2>&1", dir, bin, args);
    Outcome outcome = {.status = run_command(command)};
    char path[1024];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(outcome.output, 1, sizeof outcome.output - 1, f);
    outcome.output[n] = '\0';
    fclose(f);
    remove(path);
    return outcome;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static const char *VALID_PREFIX = "model:\n  path: model\n  create_if_missing: tiny\n"
                                  "data:\n  path: data.jsonl\n  create_if_missing: demo\n"
                                  "checkpoint:\n  dir: out\n";

// The run failed before touching the disk: only the config file (and nothing
// the trainer would create) is in dir.
static void assert_nothing_written(const char *dir) {
    const char *created[] = {"model", "data.jsonl", "out"};
    for (int i = 0; i < 3; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, created[i]);
        if (path_exists(path)) fail_msg("%s was written by a failing run", path);
    }
}

static void expect_failure(const char *yaml, const char *args, const char *const *must_contain) {
    const char *dir = make_temp_dir("cli");
    write_text(dir, "run.yaml", yaml);
    Outcome outcome = run_lora_train(dir, args);
    print_message("exit %d: %s", outcome.status, outcome.output);
    assert_int_not_equal(outcome.status, 0);
    for (int i = 0; must_contain[i]; i++) {
        if (!strstr(outcome.output, must_contain[i]))
            fail_msg("message lacks '%s': %s", must_contain[i], outcome.output);
    }
    assert_nothing_written(dir);
}

static void test_unknown_key(void **state) {
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "%strain:\n  lrr: 0.001\n", VALID_PREFIX);
    expect_failure(yaml, "--config run.yaml", (const char *[]){"run.yaml", "train.lrr", "train.lr", NULL});
}

static void test_wrong_type(void **state) {
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "%strain:\n  micro_batch: four\n", VALID_PREFIX);
    expect_failure(yaml, "--config run.yaml", (const char *[]){"train.micro_batch", "four", NULL});
}

static void test_bad_override(void **state) {
    expect_failure(VALID_PREFIX, "--config run.yaml --set lora.rank=8", (const char *[]){"lora.rank", "lora.r", NULL});
}

static void test_missing_config_file(void **state) {
    expect_failure("", "--config nowhere.yaml", (const char *[]){"nowhere.yaml", NULL});
}

static void test_missing_data_file(void **state) {
    expect_failure("model:\n  path: model\n  create_if_missing: tiny\ndata:\n  path: absent.jsonl\ncheckpoint:\n  dir: out\n",
                   "--config run.yaml", (const char *[]){"data.path", "absent.jsonl", NULL});
}

// Packing is text-only: an image-text config with data.pack is refused before anything is written.
static void test_pack_refused_for_image_text(void **state) {
    expect_failure(VALID_PREFIX, "--config run.yaml --set data.pack=true --set vision.tower=tower.safetensors",
                   (const char *[]){"data.pack", "text data only", NULL});
}

static void test_unknown_flag(void **state) {
    expect_failure(VALID_PREFIX, "--config run.yaml --learning-rate 3", (const char *[]){"--learning-rate", NULL});
    expect_failure(VALID_PREFIX, "--config run.yaml --allow-config-change",
                   (const char *[]){"--allow-config-change needs --resume", NULL});
}

static void assert_file(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!path_exists(path)) fail_msg("%s is missing", path);
}

// LLaVA records over the shared JPEG fixtures, a random tiny tower and model:
// trains, with the projector in the checkpoint and beside the final adapter.
static void test_image_text_config_trains(void **state) {
    const char *fixture = shared_fixture("images/jpeg");
    if (!fixture) skip();
    char images[4096];
    assert_non_null(realpath(fixture, images)); // the run's working directory is dir
    const char *dir = make_temp_dir("cli_vlm");
    static const char *const files[] = {"video-001.jpeg", "video-001.progressive.jpeg", "video-001.q50.420.jpeg",
                                        "video-001.q50.422.jpeg"};
    char records[4096] = "[\n", yaml[8192];
    for (int i = 0; i < 8; i++) {
        size_t used = strlen(records);
        snprintf(records + used, sizeof records - used,
                 "%s{\"id\": \"%d\", \"image\": \"%s\", \"conversations\": [{\"from\": \"human\", "
                 "\"value\": \"<image>\\nWhat is it?\"}, {\"from\": \"gpt\", \"value\": \"a frame\"}]}\n",
                 i ? "," : "", i, files[i % 4]);
    }
    strcat(records, "]\n");
    write_text(dir, "records.json", records);
    snprintf(yaml, sizeof yaml,
             "model:\n  path: model\n  create_if_missing: tiny\ndata:\n  path: records.json\n  images: %s\n"
             "  image_tokens: 16\n  max_seq_len: 48\nvision:\n  tower: tower.safetensors\n  tower_preset: tiny\n"
             "train:\n  micro_batch: 2\n  max_steps: 3\n  backend: cpu\ncheckpoint:\n  dir: out\n  every_steps: 2\n",
             images);
    write_text(dir, "run.yaml", yaml);
    Outcome outcome = run_lora_train(dir, "--config run.yaml");
    print_message("exit %d: %s", outcome.status, outcome.output);
    assert_int_equal(outcome.status, 0);
    assert_non_null(strstr(outcome.output, "done: 3 steps"));
    assert_non_null(strstr(outcome.output, "| peak cpu memory "));
    assert_file(dir, "tower.safetensors");
    assert_file(dir, "out/step-000002/adapter_model.safetensors");
    assert_file(dir, "out/adapter/adapter_model.safetensors");
}

// SIGTERM while lora-train is still setting up (its model folder just
// created): the handlers are already there, so the run stops at its first
// step with a checkpoint and exits 0 (it was killed, 143, with nothing saved).
static void test_signal_during_setup_saves(void **state) {
    const char *dir = make_temp_dir("cli_early_signal");
    char yaml[1024], command[4096];
    snprintf(yaml, sizeof yaml, "%strain:\n  max_steps: 100000\n  backend: cpu\n", VALID_PREFIX);
    write_text(dir, "run.yaml", yaml);
    snprintf(command, sizeof command,
             "cd '%s' && { timeout -s KILL 120 '%s' --config run.yaml > out.txt 2>&1 & P=$!; "
             "i=0; while [ ! -d model ] && [ $i -lt 5000000 ]; do i=$((i + 1)); done; kill -TERM $P; wait $P; }",
             dir, getenv("LORA_TRAIN_BIN"));
    int status = run_command(command);
    char path[1024], *output;
    size_t size;
    snprintf(path, sizeof path, "%s/out.txt", dir);
    Error err;
    if (!read_file(path, &output, &size, &err)) fail_msg("%s", err.message);
    print_message("exit %d: %s", status, output);
    assert_int_equal(status, 0);
    assert_non_null(strstr(output, "checkpoint saved to"));
    free(output);
}

// A signal once the run's outputs are complete (here: as lora_train_main
// returns) leaves the exit status 0; it was killed by the restored default.
static void test_signal_after_done_exits_0(void **state) {
    const char *dir = make_temp_dir("cli_late_signal");
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "%strain:\n  max_steps: 2\n  backend: cpu\n", VALID_PREFIX);
    write_text(dir, "run.yaml", yaml);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        char *argv[] = {"lora-train", "--config", "run.yaml", NULL};
        if (chdir(dir) != 0 || !freopen("out.txt", "w", stdout)) _exit(3);
        int status = lora_train_main(3, argv);
        fflush(stdout);
        raise(SIGTERM);
        _exit(status);
    }
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    if (WIFSIGNALED(status)) fail_msg("killed by signal %d after the run", WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_file(dir, "out/adapter/adapter_model.safetensors");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_key),         cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_bad_override),        cmocka_unit_test(test_missing_config_file),
        cmocka_unit_test(test_missing_data_file),   cmocka_unit_test(test_unknown_flag),
        cmocka_unit_test(test_pack_refused_for_image_text),
        cmocka_unit_test(test_image_text_config_trains),
        cmocka_unit_test(test_signal_during_setup_saves),
        cmocka_unit_test(test_signal_after_done_exits_0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
