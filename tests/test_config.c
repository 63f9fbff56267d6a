// The YAML config: defaults, loading every key, errors, --set, validation, round trip.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "trainer/trainer.h"

#define FIXTURES "tests/fixtures/config/"

static void assert_contains(const char *message, const char *expected) {
    if (!strstr(message, expected)) fail_msg("expected '%s' in the message: %s", expected, message);
}

static void assert_targets(const Config *config, const char *expected) {
    static const char *const names[LORA_TARGET_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) {
        char word[16];
        snprintf(word, sizeof word, " %s ", names[t]);
        char padded[64];
        snprintf(padded, sizeof padded, " %s ", expected);
        bool want = strstr(padded, word) != NULL;
        if (config->lora.targets[t] != want) fail_msg("lora target %s: got %d, expected %d", names[t],
                                                      config->lora.targets[t], want);
    }
}

// Field-by-field equality (no memcmp: padding and float bits are not the contract).
static void assert_configs_equal(const Config *a, const Config *b) {
    assert_string_equal(a->model.path, b->model.path);
    assert_string_equal(a->model.create_if_missing, b->model.create_if_missing);
    assert_string_equal(a->model.quantize, b->model.quantize);
    assert_int_equal(a->lora.r, b->lora.r);
    assert_true(a->lora.alpha == b->lora.alpha);
    assert_true(a->lora.dropout == b->lora.dropout);
    for (int t = 0; t < LORA_TARGET_COUNT; t++) assert_int_equal(a->lora.targets[t], b->lora.targets[t]);
    assert_int_equal(a->lora.all_linear, b->lora.all_linear);
    assert_int_equal(a->lora.rslora, b->lora.rslora);
    assert_string_equal(a->lora.init, b->lora.init);
    assert_string_equal(a->data.path, b->data.path);
    assert_string_equal(a->data.images, b->data.images);
    assert_string_equal(a->data.create_if_missing, b->data.create_if_missing);
    assert_int_equal(a->data.max_seq_len, b->data.max_seq_len);
    assert_int_equal(a->data.shuffle, b->data.shuffle);
    assert_int_equal(a->data.pack, b->data.pack);
    assert_int_equal(a->train.micro_batch, b->train.micro_batch);
    assert_int_equal(a->train.grad_accum, b->train.grad_accum);
    assert_int_equal(a->train.max_steps, b->train.max_steps);
    assert_int_equal(a->train.epochs, b->train.epochs);
    assert_true(a->train.lr == b->train.lr);
    assert_int_equal(a->train.schedule, b->train.schedule);
    assert_true(a->train.warmup == b->train.warmup);
    assert_true(a->train.min_lr_ratio == b->train.min_lr_ratio);
    assert_true(a->train.weight_decay == b->train.weight_decay);
    assert_true(a->train.beta1 == b->train.beta1);
    assert_true(a->train.beta2 == b->train.beta2);
    assert_true(a->train.eps == b->train.eps);
    assert_true(a->train.max_grad_norm == b->train.max_grad_norm);
    assert_true(a->train.seed == b->train.seed);
    assert_int_equal(a->train.log_every, b->train.log_every);
    assert_int_equal(a->train.activation_checkpointing, b->train.activation_checkpointing);
    assert_string_equal(a->train.backend, b->train.backend);
    assert_string_equal(a->checkpoint.dir, b->checkpoint.dir);
    assert_int_equal(a->checkpoint.every_steps, b->checkpoint.every_steps);
    assert_int_equal(a->checkpoint.keep_last, b->checkpoint.keep_last);
    assert_int_equal(a->zero.stage, b->zero.stage);
    assert_string_equal(a->zero.offload, b->zero.offload);
}

// Loads path over the defaults and returns the error message (the test fails if it loads).
static const char *load_error(const char *path) {
    static Error err;
    Config config;
    config_defaults(&config);
    if (config_load_yaml(&config, path, &err)) fail_msg("%s loaded without error", path);
    return err.message;
}

static const char *set_error(const char *assignment) {
    static Error err;
    Config config;
    config_defaults(&config);
    if (config_set(&config, assignment, &err)) fail_msg("--set %s succeeded", assignment);
    return err.message;
}

static void set_ok(Config *config, const char *assignment) {
    Error err = {{0}};
    if (!config_set(config, assignment, &err)) fail_msg("--set %s: %s", assignment, err.message);
}

static void load_ok(Config *config, const char *path) {
    Error err = {{0}};
    if (!config_load_yaml(config, path, &err)) fail_msg("%s", err.message);
}

// ----------------------------------------------------------------------------
// defaults and loading

static void test_defaults(void **state) {
    Config c;
    config_defaults(&c);
    assert_string_equal(c.model.path, "");
    assert_string_equal(c.model.create_if_missing, "");
    assert_string_equal(c.model.quantize, "none");
    assert_int_equal(c.lora.r, 8);
    assert_true(c.lora.alpha == 8.0f && c.lora.dropout == 0.0f);
    assert_targets(&c, "q v");
    assert_false(c.lora.rslora);
    assert_string_equal(c.lora.init, "kaiming");
    assert_int_equal(c.data.max_seq_len, 2048);
    assert_true(c.data.shuffle);
    assert_false(c.data.pack);
    assert_int_equal(c.train.micro_batch, 1);
    assert_int_equal(c.train.grad_accum, 1);
    assert_int_equal(c.train.max_steps, 0);
    assert_int_equal(c.train.epochs, 1);
    assert_true(c.train.lr == 2e-4f);
    assert_int_equal(c.train.schedule, SCHEDULE_LINEAR);
    assert_true(c.train.warmup == 0.0f && c.train.min_lr_ratio == 0.0f && c.train.weight_decay == 0.0f);
    assert_true(c.train.beta1 == 0.9f && c.train.beta2 == 0.999f && c.train.eps == 1e-8f);
    assert_true(c.train.max_grad_norm == 1.0f);
    assert_true(c.train.seed == 42);
    assert_int_equal(c.train.log_every, 1);
    assert_false(c.train.activation_checkpointing);
    assert_string_equal(c.train.backend, "auto");
    assert_string_equal(c.checkpoint.dir, "runs/lora-train");
    assert_int_equal(c.checkpoint.every_steps, 0);
    assert_int_equal(c.checkpoint.keep_last, 0);
    assert_int_equal(c.zero.stage, 0);
    assert_string_equal(c.zero.offload, "none");
}

// reference_defaults.yaml holds PEFT's and transformers' defaults (scripts/ref_config.py):
// loading it over ours must change nothing.
static void test_defaults_match_peft_and_transformers(void **state) {
    const char *path = FIXTURES "reference_defaults.yaml";
    if (!path_exists(path)) skip();
    Config defaults, loaded;
    config_defaults(&defaults);
    config_defaults(&loaded);
    load_ok(&loaded, path);
    assert_configs_equal(&loaded, &defaults);
}

static void test_full_file_loads_every_key(void **state) {
    Config c;
    config_defaults(&c);
    load_ok(&c, FIXTURES "full.yaml");
    assert_string_equal(c.model.path, "tests/fixtures/config");
    assert_string_equal(c.model.create_if_missing, "tiny-llama");
    assert_string_equal(c.model.quantize, "nf4");
    assert_int_equal(c.lora.r, 16);
    assert_true(c.lora.alpha == 32.0f);
    assert_true(c.lora.dropout == 0.05f);
    assert_targets(&c, "q k o gate down");
    assert_true(c.lora.rslora);
    assert_string_equal(c.lora.init, "gaussian");
    assert_string_equal(c.data.path, "tests/fixtures/config/full.yaml");
    assert_string_equal(c.data.images, "data/images.tar");
    assert_string_equal(c.data.create_if_missing, "llava-synthetic");
    assert_int_equal(c.data.max_seq_len, 512);
    assert_false(c.data.shuffle);
    assert_true(c.data.pack);
    assert_int_equal(c.train.micro_batch, 4);
    assert_int_equal(c.train.grad_accum, 8);
    assert_int_equal(c.train.max_steps, 1000);
    assert_int_equal(c.train.epochs, 3);
    assert_true(c.train.lr == 1e-4f);
    assert_int_equal(c.train.schedule, SCHEDULE_COSINE);
    assert_true(c.train.warmup == 0.03f);
    assert_true(c.train.min_lr_ratio == 0.1f);
    assert_true(c.train.weight_decay == 0.01f);
    assert_true(c.train.beta1 == 0.85f && c.train.beta2 == 0.95f && c.train.eps == 1e-6f);
    assert_true(c.train.max_grad_norm == 0.5f);
    assert_true(c.train.seed == UINT64_MAX);
    assert_int_equal(c.train.log_every, 10);
    assert_true(c.train.activation_checkpointing);
    assert_string_equal(c.train.backend, "cuda");
    assert_string_equal(c.checkpoint.dir, "runs/quoted \"name\" # not a comment");
    assert_int_equal(c.checkpoint.every_steps, 500);
    assert_int_equal(c.checkpoint.keep_last, 3);
    assert_int_equal(c.zero.stage, 2);
    assert_string_equal(c.zero.offload, "cpu");
}

static void test_empty_section_keeps_defaults(void **state) {
    Config c;
    config_defaults(&c);
    load_ok(&c, FIXTURES "empty_section.yaml");
    assert_string_equal(c.model.path, "models/tiny");
    assert_int_equal(c.zero.stage, 0);
    assert_string_equal(c.zero.offload, "none");
}

// ----------------------------------------------------------------------------
// errors from files

static void test_unknown_key_suggests_nearest(void **state) {
    const char *message = load_error(FIXTURES "unknown_key.yaml");
    assert_contains(message, FIXTURES "unknown_key.yaml:5:");
    assert_contains(message, "unknown key 'train.lrr' (did you mean 'train.lr'?)");
}

static void test_key_in_wrong_section_suggests_its_section(void **state) {
    const char *message = load_error(FIXTURES "misplaced_key.yaml");
    assert_contains(message, FIXTURES "misplaced_key.yaml:3:");
    assert_contains(message, "unknown key 'model.lr' (did you mean 'train.lr'?)");
}

static void test_unknown_section(void **state) {
    const char *message = load_error(FIXTURES "unknown_section.yaml");
    assert_contains(message, FIXTURES "unknown_section.yaml:3:");
    assert_contains(message, "unknown section 'trian' (did you mean 'train'?)");
}

static void test_wrong_type(void **state) {
    const char *message = load_error(FIXTURES "wrong_type.yaml");
    assert_contains(message, FIXTURES "wrong_type.yaml:2:");
    assert_contains(message, "train.micro_batch: expected an integer, got 'four'");
}

static void test_enum_lists_allowed_values(void **state) {
    const char *message = load_error(FIXTURES "bad_enum.yaml");
    assert_contains(message, FIXTURES "bad_enum.yaml:3:");
    assert_contains(message, "zero.offload: 'gpu' is not one of: none, cpu");
}

// Line and column as PyYAML reports them (tests/fixtures/config/syntax_error.position).
static void test_syntax_error_has_line_and_column(void **state) {
    char *position;
    size_t size;
    Error err = {{0}};
    if (!read_file(FIXTURES "syntax_error.position", &position, &size, &err)) skip();
    position[strcspn(position, "\n")] = '\0';
    char expected[256];
    snprintf(expected, sizeof expected, FIXTURES "syntax_error.yaml:%s: YAML syntax error", position);
    free(position);
    assert_contains(load_error(FIXTURES "syntax_error.yaml"), expected);
}

static void test_duplicate_key(void **state) {
    assert_contains(load_error(FIXTURES "duplicate_key.yaml"), "duplicate_key.yaml:3:3: train.lr: given more than once");
}

static void test_missing_file(void **state) {
    const char *message = load_error(FIXTURES "no_such_config.yaml");
    assert_contains(message, FIXTURES "no_such_config.yaml");
    assert_contains(message, "No such file or directory");
}

static void test_failed_load_leaves_config_unchanged(void **state) {
    Config before, after;
    config_defaults(&before);
    config_defaults(&after);
    Error err = {{0}};
    assert_false(config_load_yaml(&after, FIXTURES "unknown_key.yaml", &err)); // sets micro_batch before failing
    assert_configs_equal(&after, &before);
}

// ----------------------------------------------------------------------------
// --set

static void test_set_each_type(void **state) {
    Config c;
    config_defaults(&c);
    set_ok(&c, "lora.r=32");
    set_ok(&c, "train.lr=1e-4");
    set_ok(&c, "lora.alpha=0.0002");
    set_ok(&c, "data.shuffle=false");
    set_ok(&c, "model.path=models/llama 3");
    set_ok(&c, "model.quantize=nf4");
    set_ok(&c, "train.schedule=constant");
    set_ok(&c, "train.seed=12345678901234");
    set_ok(&c, "lora.target=[k_proj, up, down_proj]");
    set_ok(&c, "data.create_if_missing=");
    assert_int_equal(c.lora.r, 32);
    assert_true(c.train.lr == 1e-4f);
    assert_true(c.lora.alpha == 2e-4f);
    assert_false(c.data.shuffle);
    assert_string_equal(c.model.path, "models/llama 3");
    assert_string_equal(c.model.quantize, "nf4");
    assert_int_equal(c.train.schedule, SCHEDULE_CONSTANT);
    assert_true(c.train.seed == 12345678901234ULL);
    assert_targets(&c, "k up down");
    assert_string_equal(c.data.create_if_missing, "");
}

static void test_set_errors(void **state) {
    assert_contains(set_error("train.micro_batch=1.5"), "train.micro_batch: expected an integer, got '1.5'");
    assert_contains(set_error("train.lr=fast"), "train.lr: expected a number, got 'fast'");
    assert_contains(set_error("train.lr=0"), "train.lr: 0 is out of range (must be > 0)");
    assert_contains(set_error("lora.dropout=1"), "lora.dropout: 1 is out of range (must be in [0, 1))");
    assert_contains(set_error("lora.r=99999999999"), "lora.r: 99999999999 is out of range");
    assert_contains(set_error("data.shuffle=yes"), "data.shuffle: expected true or false, got 'yes'");
    assert_contains(set_error("train.schedule=step"), "train.schedule: 'step' is not one of: constant, linear, cosine");
    assert_contains(set_error("zero.stage=1"), "zero.stage: '1' is not one of: 0, 2");
    assert_contains(set_error("train.seed=-1"), "train.seed: expected a non-negative integer, got '-1'");
    assert_contains(set_error("lora.target=[q_proj, qq_proj]"), "lora.target: unknown module 'qq_proj'");
    assert_contains(set_error("lora.target=[]"), "lora.target: the list of modules is empty");
    assert_contains(set_error("lora.target=q_proj"), "lora.target: expected 'all', 'all-linear' or a list");
    assert_contains(set_error("train.lr=[1, 2]"), "train.lr: expected a single value, got a list");
    assert_contains(set_error("train.lr=[1,"), "train.lr: value '[1,': YAML syntax error");
    assert_contains(set_error("train.lrr=1"), "unknown key 'train.lrr' (did you mean 'train.lr'?)");
    assert_contains(set_error("train.lr"), "'train.lr': expected key.path=value");
    assert_contains(set_error("zero=2"), "'zero' is a section");
}

static void test_target_all(void **state) {
    Config c;
    config_defaults(&c);
    set_ok(&c, "lora.target=all");
    assert_targets(&c, "q k v o gate up down");
    config_defaults(&c);
    assert_false(c.lora.all_linear);
    set_ok(&c, "lora.target=all-linear");
    assert_targets(&c, "q k v o gate up down");
    assert_true(c.lora.all_linear); // PEFT's: OpenVLA's projector and towers too
    Error err;
    char *yaml = config_to_yaml(&c, &err);
    assert_non_null(strstr(yaml, "all-linear"));
    free(yaml);
    set_ok(&c, "lora.target=[q, v]");
    assert_false(c.lora.all_linear);
    config_defaults(&c);
    set_ok(&c, "lora.target=[q, k, v, o, gate, up, down]");
    assert_targets(&c, "q k v o gate up down");
}

// ----------------------------------------------------------------------------
// validation

static void valid_config(Config *c) {
    config_defaults(c);
    set_ok(c, "model.path=" FIXTURES);
    set_ok(c, "data.path=" FIXTURES "full.yaml");
}

static const char *validate_error(Config *c) {
    static Error err;
    if (config_validate(c, &err)) fail_msg("config validated");
    return err.message;
}

static void test_validate_accepts_existing_paths(void **state) {
    Config c;
    valid_config(&c);
    Error err = {{0}};
    if (!config_validate(&c, &err)) fail_msg("%s", err.message);
}

static void test_validate_names_key_and_path(void **state) {
    Config c;
    valid_config(&c);
    set_ok(&c, "data.path=/nonexistent/train.jsonl");
    assert_contains(validate_error(&c), "data.path: '/nonexistent/train.jsonl' does not exist");
    set_ok(&c, "data.create_if_missing=llava-synthetic");
    Error err = {{0}};
    if (!config_validate(&c, &err)) fail_msg("create_if_missing should allow a missing path: %s", err.message);
    set_ok(&c, "model.path=");
    assert_contains(validate_error(&c), "model.path: must be set");
}

static void test_validate_cross_field_rules(void **state) {
    Config c;
    valid_config(&c);
    set_ok(&c, "train.epochs=0");
    assert_contains(validate_error(&c), "train.epochs: must be >= 1 when train.max_steps is 0");
    set_ok(&c, "train.max_steps=10");
    Error err = {{0}};
    if (!config_validate(&c, &err)) fail_msg("epochs 0 with max_steps 10: %s", err.message);
    c.lora.r = 0;
    assert_contains(validate_error(&c), "lora.r: 0 is out of range (must be >= 1)");
    valid_config(&c);
    snprintf(c.zero.offload, sizeof c.zero.offload, "disk");
    assert_contains(validate_error(&c), "zero.offload: 'disk' is not one of: none, cpu");
    valid_config(&c);
    set_ok(&c, "data.pack=true");
    if (!config_validate(&c, &err)) fail_msg("data.pack with text data: %s", err.message);
    set_ok(&c, "vision.tower=" FIXTURES);
    assert_contains(validate_error(&c), "data.pack: packing is for text data only");
    valid_config(&c);
    memset(c.lora.targets, 0, sizeof c.lora.targets);
    assert_contains(validate_error(&c), "lora.target: no module selected");
}

// data.format and the robot keys: misspellings get did-you-mean, values are
// checked, and the keys must suit the data.
static void test_robot_data_keys(void **state) {
    (void)state;
    assert_contains(set_error("data.fromat=rlds"), "unknown key 'data.fromat' (did you mean 'data.format'?)");
    assert_contains(set_error("data.image_kye=image"), "did you mean 'data.image_key'?");
    assert_contains(set_error("data.format=tfrecord"), "data.format: 'tfrecord' is not one of: auto, jsonl, llava, rlds, robot_jsonl");
    assert_contains(set_error("data.shuffle_buffer=-1"), "data.shuffle_buffer: -1 is out of range (must be >= 0)");
    Config c;
    valid_config(&c);
    assert_string_equal(config_data_format(&c), "jsonl");
    set_ok(&c, "data.action_key=actions");
    assert_contains(validate_error(&c), "data.action_key: only robot data has step keys, and data.format is jsonl");
    valid_config(&c);
    set_ok(&c, "data.format=llava");
    assert_contains(validate_error(&c), "data.format: llava needs data.images or vision.tower");
    valid_config(&c);
    set_ok(&c, "data.path=tests/fixtures/rlds/tiny_rlds");
    assert_string_equal(config_data_format(&c), "rlds");
    set_ok(&c, "data.path=tests/fixtures/rlds/steps.jsonl");
    assert_string_equal(config_data_format(&c), "robot_jsonl");
    set_ok(&c, "data.image_key=image");
    Error err = {{0}};
    if (!config_validate(&c, &err)) fail_msg("robot JSONL with data.image_key: %s", err.message);
    set_ok(&c, "data.pack=true");
    assert_contains(validate_error(&c), "data.pack: packing is for text data only");
}

// ----------------------------------------------------------------------------
// config_to_yaml

static void assert_round_trip(const Config *original) {
    Error err = {{0}};
    char *text = config_to_yaml(original, &err);
    if (!text) fail_msg("%s", err.message);
    char path[512];
    snprintf(path, sizeof path, "%s/config.yaml", make_temp_dir("config"));
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    free(text);
    Config reloaded;
    config_defaults(&reloaded);
    set_ok(&reloaded, "lora.target=all");
    load_ok(&reloaded, path);
    assert_configs_equal(&reloaded, original);
}

static void test_round_trip_full(void **state) {
    Config c;
    config_defaults(&c);
    load_ok(&c, FIXTURES "full.yaml");
    assert_round_trip(&c);
}

static void test_round_trip_defaults_and_awkward_values(void **state) {
    Config c;
    config_defaults(&c);
    assert_round_trip(&c);
    set_ok(&c, "model.path='C:\\models\\tab\there: #x'");
    set_ok(&c, "train.lr=3.3333333e-5");
    set_ok(&c, "train.eps=1.17549435e-38");
    set_ok(&c, "train.seed=0");
    assert_round_trip(&c);
}

// ----------------------------------------------------------------------------
// a checkpoint's config against this run's (--resume)

// text with the line that starts with `line` removed, or (after) a line inserted after it.
static char *edited(const char *text, const char *line, const char *inserted_after) {
    const char *at = strstr(text, line);
    assert_non_null(at);
    const char *end = strchr(at, '\n') + 1;
    size_t n = strlen(text) + (inserted_after ? strlen(inserted_after) : 0) + 1;
    char *out = malloc(n);
    if (inserted_after) snprintf(out, n, "%.*s%s%s", (int)(end - text), text, inserted_after, end);
    else snprintf(out, n, "%.*s%s", (int)(at - text), text, end);
    return out;
}

static char *dump(const Config *c) {
    Error err = {{0}};
    char *text = config_to_yaml(c, &err);
    if (!text) fail_msg("%s", err.message);
    return text;
}

// A checkpoint of an older version lacks a key added since (it had the
// default) and has one removed since, and its help comments differ: it
// resumes, the dropped key noted. A changed value is still refused; a new key
// this run sets away from its default is a change like any other.
static void test_removed_key_says_what_replaced_it(void **state) {
    Config c;
    config_defaults(&c);
    Error err = {{0}};
    assert_false(config_set(&c, "vision.chat_template=llama3", &err));
    assert_contains(err.message, "'vision.chat_template' is no longer a setting: the chat template is data.template");
}

static void test_config_changes_across_versions(void **state) {
    Config c;
    config_defaults(&c);
    char *now = dump(&c);
    char *lacking = edited(now, "  eval_every:", NULL);
    char *older = edited(lacking, "vision:\n", "  retired_key: 1  # a key of an older version\n");
    ConfigChanges changes;
    Error err = {{0}};
    if (!config_changes(older, now, false, &changes, &err)) fail_msg("%s", err.message);
    print_message("older checkpoint: %s\n", changes.operational);
    assert_string_equal(changes.mathematical, "");
    assert_contains(changes.operational, "vision.retired_key (no longer a setting)");
    assert_null(strstr(changes.operational, "eval_every"));

    Config other = c;
    set_ok(&other, "train.lr=1e-3");
    char *other_lr = dump(&other);
    assert_false(config_changes(other_lr, now, false, &changes, &err));
    assert_contains(err.message, "add --allow-config-change if changing train.lr is intended");
    assert_true(config_changes(other_lr, now, true, &changes, &err));
    assert_contains(changes.mathematical, "train.lr");

    Config evaluating = c;
    set_ok(&evaluating, "train.eval_every=10");
    char *now_evaluating = dump(&evaluating);
    if (!config_changes(lacking, now_evaluating, false, &changes, &err)) fail_msg("%s", err.message);
    assert_contains(changes.operational, "train.eval_every 0 -> 10");
    free(now), free(lacking), free(older), free(other_lr), free(now_evaluating);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_defaults_match_peft_and_transformers),
        cmocka_unit_test(test_full_file_loads_every_key),
        cmocka_unit_test(test_empty_section_keeps_defaults),
        cmocka_unit_test(test_unknown_key_suggests_nearest),
        cmocka_unit_test(test_key_in_wrong_section_suggests_its_section),
        cmocka_unit_test(test_unknown_section),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_enum_lists_allowed_values),
        cmocka_unit_test(test_syntax_error_has_line_and_column),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_failed_load_leaves_config_unchanged),
        cmocka_unit_test(test_set_each_type),
        cmocka_unit_test(test_set_errors),
        cmocka_unit_test(test_target_all),
        cmocka_unit_test(test_validate_accepts_existing_paths),
        cmocka_unit_test(test_validate_names_key_and_path),
        cmocka_unit_test(test_validate_cross_field_rules),
        cmocka_unit_test(test_robot_data_keys),
        cmocka_unit_test(test_round_trip_full),
        cmocka_unit_test(test_round_trip_defaults_and_awkward_values),
        cmocka_unit_test(test_config_changes_across_versions),
        cmocka_unit_test(test_removed_key_says_what_replaced_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
