// End to end through train_run: a tiny model learns the demo data, and the
// adapter folder it leaves loads back into the model; with data.pack as well;
// bad text records are skipped, up to data.max_skip_fraction.
#include "run_util.h"

#include <stdio.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "trainer/trainer.h"

// Trains the recipe in dir: it must run `steps` steps and at least halve the loss.
static TrainSummary train_and_expect_learning(const char *dir, const char *const *recipe, size_t n, int steps,
                                              const char *what) {
    Config config = tiny_run_config(dir, recipe, n);
    Error err;
    TrainSummary summary;
    if (!train_run(&config, &summary, &err)) fail_msg("train_run: %s", err.message);
    print_message("%s: loss %.4f -> %.4f over %d steps\n", what, summary.first_loss, summary.last_loss, summary.steps);
    assert_int_equal(summary.steps, steps);
    assert_true(summary.last_loss < 0.5 * summary.first_loss);
    return summary;
}

static void test_tiny_model_learns(void **state) {
    const char *dir = make_temp_dir("learn");
    const char *recipe[] = {"data.create_if_missing=demo", "data.max_seq_len=64", "lora.target=all", "lora.r=8",
                            "lora.alpha=16", "train.micro_batch=8", "train.max_steps=80", "train.lr=5e-3", "train.schedule=cosine",
                            "train.log_every=20", "checkpoint.every_steps=40", "train.backend=cpu"};
    TrainSummary summary = train_and_expect_learning(dir, recipe, sizeof recipe / sizeof recipe[0], 80, "one chat a row");

    char path[2048];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", summary.adapter_dir);
    assert_true(path_exists(path));
    snprintf(path, sizeof path, "%s/out/step-000040/adapter_config.json", dir);
    assert_true(path_exists(path));
}

// Packed rows of the demo's short chats (several per row of 128): the model learns.
static void test_tiny_model_learns_packed(void **state) {
    const char *dir = make_temp_dir("learn-packed");
    const char *recipe[] = {"data.create_if_missing=demo", "data.max_seq_len=128", "data.pack=true",
                            "lora.target=all", "lora.r=8", "lora.alpha=16", "train.micro_batch=4",
                            "train.max_steps=60", "train.lr=5e-3", "train.schedule=cosine", "train.log_every=20",
                            "train.backend=cpu"};
    train_and_expect_learning(dir, recipe, sizeof recipe / sizeof recipe[0], 60, "packed");
}

// 40 good text records and two bad ones ({"foo": 1}, truncated JSON): the
// bad ones are skipped (5%), so the run trains with data.max_skip_fraction
// 0.1 and stops before training, naming the file and a bad line, at 0.01.
static void test_bad_text_records_are_skipped(void **state) {
    const char *dir = make_temp_dir("train-skip");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 40);
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    fputs("{\"foo\": 1}\n{\"text\": \"cut short\n", f);
    assert_int_equal(fclose(f), 0);
    const char *recipe[] = {"data.max_seq_len=32", "train.max_steps=2", "train.backend=cpu",
                            "data.max_skip_fraction=0.1"};
    Config config = tiny_run_config(dir, recipe, 4);
    TrainSummary summary;
    Error err;
    if (!train_run(&config, &summary, &err)) fail_msg("train_run: %s", err.message);
    assert_int_equal(summary.steps, 2);
    config_set_or_fail(&config, "%s", "data.max_skip_fraction=0.01");
    assert_false(train_run(&config, &summary, &err));
    print_message("%s\n", err.message);
    assert_non_null(strstr(err.message, "data.jsonl: 2 of 42 records skipped"));
    assert_non_null(strstr(err.message, "data.jsonl:41: "));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_model_learns),
        cmocka_unit_test(test_tiny_model_learns_packed),
        cmocka_unit_test(test_bad_text_records_are_skipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
