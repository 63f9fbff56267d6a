// RobotLoader against tests/fixtures/rlds/ (scripts/ref_rlds.py, tensorflow-datasets):
// each step's row is RLDSBatchTransform's input_ids / labels (transformers'
// tokenizer, committed in expected.json) with the image placeholders right
// after BOS, its image the step's image preprocessed; the shuffle buffer
// visits every step once per epoch; seek reproduces the batch sequence. A
// lora-train run on the fixture writes dataset_statistics.json equal to
// OpenVLA's and resumes to a byte-identical adapter.
#include "test_util.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/rlds.h"

#define FIXTURES "tests/fixtures/rlds"
#define DATASET FIXTURES "/tiny_rlds/1.0.0"
#define N_STEPS 16
#define IMAGE_TOKENS 4
#define IMAGE_TOKEN_ID 32000
#define IMAGE_SIZE 16
#define T 96

typedef struct Fixture {
    Tokenizer *tok;
    RobotDataset *dataset;
    RobotSampleOptions robot;
} Fixture;

static int setup(void **state) {
    const char *folder = shared_fixture("tokenizers/mistral");
    *state = NULL;
    if (!folder) {
        print_message("../shared/fixtures/tokenizers/mistral is missing: the cases are skipped\n");
        return 0;
    }
    Fixture *f = calloc(1, sizeof *f);
    Error err = {{0}};
    RobotDataOptions options = {.path = DATASET};
    f->tok = tokenizer_load(folder, &err);
    f->dataset = f->tok ? robot_dataset_open(&options, &err) : NULL;
    if (!f->dataset || !robot_dataset_action_stats(f->dataset, NULL, &f->robot.stats, &err)) {
        print_message("%s\n", err.message);
        return -1;
    }
    const float mean[3] = {0.5f, 0.5f, 0.5f}, std[3] = {0.5f, 0.5f, 0.5f};
    f->robot.tok = f->tok;
    f->robot.action_vocab_size = tokenizer_base_vocab_size(f->tok);
    assert_int_equal(f->robot.action_vocab_size, 32000); // Llama 2's tokenizer.vocab_size, as OpenVLA's
    f->robot.n_image_tokens = IMAGE_TOKENS;
    f->robot.image_token_id = IMAGE_TOKEN_ID;
    f->robot.preprocess = image_preprocess_square(IMAGE_SIZE, mean, std);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    Fixture *f = *state;
    if (!f) return 0;
    robot_dataset_destroy(f->dataset);
    tokenizer_destroy(f->tok);
    free(f);
    return 0;
}

static Fixture *fixture_or_skip(void **state) {
    if (!*state) skip();
    return *state;
}

static StepLoader *open_loader(const Fixture *f, int shuffle_buffer, int micro_batch, int grad_accum) {
    RobotSampleOptions robot = f->robot;
    robot.shuffle_buffer = shuffle_buffer;
    DataLoaderOptions options = {.micro_batch = micro_batch, .grad_accum = grad_accum, .max_seq_len = T,
                                 .seed = 7, .shuffle = true, .rank = 0, .world_size = 1};
    Error err = {{0}};
    StepLoader *loader = step_loader_robot(f->dataset, &robot, &options, 0, &err);
    if (!loader) fail_msg("step_loader_robot: %s", err.message);
    return loader;
}

static json_object *get(json_object *object, const char *key) {
    json_object *value;
    if (!json_object_object_get_ex(object, key, &value)) fail_msg("no key '%s'", key);
    return value;
}

// Step i's image as the loader must preprocess it.
static void expected_image(const Fixture *f, int64_t i, float *out) {
    Image image;
    Error err = {{0}};
    if (!robot_dataset_image(f->dataset, i, &image, &err) || !image_preprocess(&image, &f->robot.preprocess, out, &err))
        fail_msg("%s", err.message);
    image_free(&image);
}

// The step a one-row batch holds, told by its image (every step's differs).
static int step_of(const Fixture *f, const StepBatch *batch) {
    size_t floats = 3 * IMAGE_SIZE * IMAGE_SIZE;
    float *image = malloc(floats * sizeof *image);
    int found = -1;
    for (int i = 0; i < N_STEPS && found < 0; i++) {
        expected_image(f, i, image);
        if (memcmp(image, batch->images, floats * sizeof *image) == 0) found = i;
    }
    free(image);
    if (found < 0) fail_msg("a batch's image is no step's");
    return found;
}

// In data order, step i's row is BOS, the image positions, then transformers' ids after BOS;
// targets are the labels shifted left (IGNORE_INDEX on the image positions).
static void test_rows_as_openvla(void **state) {
    Fixture *f = fixture_or_skip(state);
    json_object *expected = json_object_from_file(FIXTURES "/expected.json");
    json_object *samples = get(expected, "samples_mistral_tokenizer");
    StepLoader *loader = open_loader(f, 0, 1, 1);
    assert_int_equal(step_loader_steps_per_epoch(loader), N_STEPS);
    assert_int_equal(step_loader_samples(loader), N_STEPS);
    assert_int_equal(step_loader_truncated(loader), 0);
    float image[3 * IMAGE_SIZE * IMAGE_SIZE];
    Error err = {{0}};
    for (int i = 0; i < N_STEPS; i++) {
        const StepBatch *batch = step_loader_next(loader, &err);
        if (!batch) fail_msg("%s", err.message);
        json_object *sample = json_object_array_get_idx(samples, (size_t)i);
        json_object *ids = get(sample, "ids"), *labels = get(sample, "labels");
        int n = (int)json_object_array_length(ids), length = n + IMAGE_TOKENS;
        int32_t want_ids[T], want_labels[T];
        want_ids[0] = json_object_get_int(json_object_array_get_idx(ids, 0));
        want_labels[0] = IGNORE_INDEX;
        for (int t = 1; t <= IMAGE_TOKENS; t++) want_ids[t] = IMAGE_TOKEN_ID, want_labels[t] = IGNORE_INDEX;
        for (int t = 1; t < n; t++) {
            want_ids[IMAGE_TOKENS + t] = json_object_get_int(json_object_array_get_idx(ids, (size_t)t));
            want_labels[IMAGE_TOKENS + t] = json_object_get_int(json_object_array_get_idx(labels, (size_t)t));
        }
        int64_t label_tokens = 0;
        for (int t = 0; t < length; t++) {
            assert_int_equal(batch->tokens[t], want_ids[t]);
            int32_t target = t + 1 < length ? want_labels[t + 1] : IGNORE_INDEX;
            assert_int_equal(batch->targets[t], target);
            label_tokens += target != IGNORE_INDEX;
        }
        for (int t = length; t < T; t++) assert_int_equal(batch->targets[t], IGNORE_INDEX);
        assert_int_equal(batch->n_label_tokens, label_tokens);
        assert_int_equal(label_tokens, 8); // 7 action tokens and </s>
        assert_true(batch->has_image[0]);
        assert_int_equal(batch->image_size, IMAGE_SIZE);
        expected_image(f, i, image);
        assert_memory_equal(batch->images, image, sizeof image);
        // robot_training_sample gives the same row.
        Sample alone;
        if (!robot_training_sample(f->dataset, &f->robot, i, &alone, &err)) fail_msg("%s", err.message);
        assert_int_equal(alone.length, length);
        assert_memory_equal(alone.ids, want_ids, (size_t)length * sizeof *want_ids);
        sample_free(&alone);
    }
    step_loader_destroy(loader);
    json_object_put(expected);
}

// With a buffer smaller than the data, every step once per epoch, in orders
// that differ from data order and from epoch to epoch.
static void test_shuffle_buffer_visits_every_step(void **state) {
    Fixture *f = fixture_or_skip(state);
    StepLoader *loader = open_loader(f, 5, 1, 1);
    int orders[3][N_STEPS];
    Error err = {{0}};
    for (int epoch = 0; epoch < 3; epoch++) {
        int seen[N_STEPS] = {0};
        for (int s = 0; s < N_STEPS; s++) {
            const StepBatch *batch = step_loader_next(loader, &err);
            if (!batch) fail_msg("%s", err.message);
            assert_int_equal(batch->epoch, epoch);
            orders[epoch][s] = step_of(f, batch);
            seen[orders[epoch][s]]++;
        }
        for (int i = 0; i < N_STEPS; i++) assert_int_equal(seen[i], 1);
        int in_data_order = 0;
        for (int s = 0; s < N_STEPS; s++) in_data_order += orders[epoch][s] == s;
        assert_true(in_data_order < N_STEPS);
    }
    assert_memory_not_equal(orders[0], orders[1], sizeof orders[0]);
    step_loader_destroy(loader);
}

// Positions recorded over three epochs of 2 x 2-row steps; a second loader
// sought to each position gives the same step, images included.
static void test_seek_reproduces_batches(void **state) {
    Fixture *f = fixture_or_skip(state);
    StepLoader *loader = open_loader(f, 6, 2, 2), *resumed = open_loader(f, 6, 2, 2);
    enum { STEPS = 3 * N_STEPS / 4 };
    assert_int_equal(step_loader_steps_for_epochs(loader, 3), STEPS);
    static int32_t tokens[STEPS][4 * T];
    static float images[STEPS][4 * 3 * IMAGE_SIZE * IMAGE_SIZE];
    int epochs[STEPS];
    int64_t steps_in_epoch[STEPS];
    Error err = {{0}};
    for (int s = 0; s < STEPS; s++) {
        step_loader_position(loader, &epochs[s], &steps_in_epoch[s]);
        const StepBatch *batch = step_loader_next(loader, &err);
        if (!batch) fail_msg("%s", err.message);
        memcpy(tokens[s], batch->tokens, sizeof tokens[s]);
        memcpy(images[s], batch->images, sizeof images[s]);
    }
    assert_int_equal(epochs[STEPS - 1], 2);
    for (int s = STEPS - 1; s >= 0; s -= 2) {
        step_loader_seek(resumed, epochs[s], steps_in_epoch[s]);
        for (int k = s; k < STEPS && k < s + 2; k++) {
            const StepBatch *batch = step_loader_next(resumed, &err);
            if (!batch) fail_msg("%s", err.message);
            assert_memory_equal(batch->tokens, tokens[k], sizeof tokens[k]);
            assert_memory_equal(batch->images, images[k], sizeof images[k]);
        }
    }
    step_loader_destroy(loader);
    step_loader_destroy(resumed);
}

static void test_bad_options_refused(void **state) {
    Fixture *f = fixture_or_skip(state);
    RobotSampleOptions robot = f->robot;
    DataLoaderOptions options = {.micro_batch = 4, .grad_accum = 4, .max_seq_len = T, .world_size = 2};
    Error err = {{0}};
    assert_null(step_loader_robot(f->dataset, &robot, &options, 0, &err));
    assert_non_null(strstr(err.message, "16 usable steps are fewer than one optimizer step's 32"));
    options.world_size = 1;
    robot.shuffle_buffer = -1;
    assert_null(step_loader_robot(f->dataset, &robot, &options, 0, &err));
    assert_non_null(strstr(err.message, "shuffle_buffer (-1)"));
}

// The bad fixture opened without decoding: a step whose image is corrupt is
// recorded as a bad image and replaced by the next step that loads; with
// data.max_skip_fraction 0 the step fails naming the skips.
static void test_bad_image_skipped(void **state) {
    Fixture *f = fixture_or_skip(state);
    RobotDataOptions data = {.path = FIXTURES "/bad"};
    Error err = {{0}};
    RobotDataset *dataset = robot_dataset_open(&data, &err);
    if (!dataset) fail_msg("%s", err.message);
    assert_int_equal(robot_dataset_stats(dataset)->skipped[SKIP_BAD_IMAGE], 0);
    DataLoaderOptions options = {.micro_batch = 1, .grad_accum = 1, .max_seq_len = T, .world_size = 1};
    StepLoader *loader = step_loader_robot(dataset, &f->robot, &options, 1.0, &err);
    if (!loader) fail_msg("%s", err.message);
    float image[3 * IMAGE_SIZE * IMAGE_SIZE];
    for (int64_t s = 0; s < step_loader_steps_per_epoch(loader); s++) {
        const StepBatch *batch = step_loader_next(loader, &err);
        if (!batch) fail_msg("%s", err.message);
        Image decoded;
        bool skipped_step = true;
        for (int64_t i = 0; i < robot_dataset_size(dataset) && skipped_step; i++) {
            if (!robot_dataset_image(dataset, i, &decoded, &err)) continue;
            if (!image_preprocess(&decoded, &f->robot.preprocess, image, &err)) fail_msg("%s", err.message);
            image_free(&decoded);
            skipped_step = memcmp(image, batch->images, sizeof image) != 0;
        }
        assert_false(skipped_step); // every row holds an image that loads
    }
    const RobotDatasetStats *stats = robot_dataset_stats(dataset);
    assert_true(stats->skipped[SKIP_BAD_IMAGE] >= 1);
    const SkippedRecord *last = robot_dataset_skipped(dataset, robot_dataset_skipped_count(dataset) - 1);
    assert_int_equal(last->reason, SKIP_BAD_IMAGE);
    assert_non_null(strstr(last->message, "episode"));
    step_loader_destroy(loader);
    robot_dataset_destroy(dataset);

    dataset = robot_dataset_open(&data, &err);
    loader = dataset ? step_loader_robot(dataset, &f->robot, &options, 0, &err) : NULL;
    if (!loader) fail_msg("%s", err.message);
    bool failed = false;
    for (int64_t s = 0; s < step_loader_steps_per_epoch(loader) && !failed; s++) failed = !step_loader_next(loader, &err);
    assert_true(failed);
    assert_non_null(strstr(err.message, "over data.max_skip_fraction"));
    step_loader_destroy(loader);
    robot_dataset_destroy(dataset);
}

// The action tokens count from tokenizer.vocab_size, added tokens excluded:
// openvla-7b's tokenizer adds <PAD> at 32000 and still bins into 31744 .. 31999.
static void test_action_vocab_excludes_added_tokens(void **state) {
    fixture_or_skip(state);
    char from[1024], dir[600], to[1100];
    snprintf(from, sizeof from, "%s/tokenizer.json", shared_fixture("tokenizers/mistral"));
    snprintf(dir, sizeof dir, "%s", make_temp_dir("robot_pad"));
    snprintf(to, sizeof to, "%s/tokenizer.json", dir);
    json_object *root = json_object_from_file(from), *added = get(root, "added_tokens"), *pad = json_object_new_object();
    json_object_object_add(pad, "id", json_object_new_int(32000));
    json_object_object_add(pad, "content", json_object_new_string("<PAD>"));
    json_object_object_add(pad, "special", json_object_new_boolean(1));
    json_object_array_add(added, pad);
    assert_int_equal(json_object_to_file(to, root), 0);
    json_object_put(root);
    Error err = {{0}};
    Tokenizer *tok = tokenizer_load(dir, &err);
    if (!tok) fail_msg("%s", err.message);
    assert_int_equal(tokenizer_vocab_size(tok), 32001);
    assert_int_equal(tokenizer_base_vocab_size(tok), 32000);
    tokenizer_destroy(tok);
}

// ----------------------------------------------------------------------------
// training through lora-train: a random Llama with Mistral's tokenizer and a tiny tower

// A Llama of tiny shape whose vocabulary holds Mistral's 32000 tokens and the image token.
static const char *MODEL_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 32064, "
    "\"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 4, \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, "
    "\"bos_token_id\": 1, \"eos_token_id\": 2, \"tie_word_embeddings\": false, \"torch_dtype\": \"float32\"}";

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) fail_msg("cannot write %s", path);
}

static void lora_train(const char *bin, const char *arguments, const char *log) {
    char command[8192];
    snprintf(command, sizeof command, "%s %s > %s 2>&1", bin, arguments, log);
    if (run_command(command) != 0) fail_msg("lora-train %s failed: see %s", arguments, log);
}

static void assert_same_stats(const ActionStats *a, const ActionStats *b) {
    assert_int_equal(a->dim, b->dim);
    assert_int_equal(a->num_transitions, b->num_transitions);
    assert_int_equal(a->num_trajectories, b->num_trajectories);
    for (int i = 0; i < a->dim; i++) {
        assert_true(fabs(a->mean[i] - b->mean[i]) <= 1e-6 && fabs(a->std[i] - b->std[i]) <= 1e-6);
        assert_true(a->min[i] == b->min[i] && a->max[i] == b->max[i]);
        assert_true(fabs(a->q01[i] - b->q01[i]) <= 1e-7 && fabs(a->q99[i] - b->q99[i]) <= 1e-7);
        assert_int_equal(a->mask[i], b->mask[i]);
    }
}

static bool same_file(const char *a, const char *b) {
    char *x, *y;
    size_t nx, ny;
    Error err = {{0}};
    if (!read_file(a, &x, &nx, &err) || !read_file(b, &y, &ny, &err)) fail_msg("%s", err.message);
    bool same = nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static void test_training_run(void **state) {
    fixture_or_skip(state);
    const char *bin = getenv("LORA_TRAIN_BIN");
    if (!bin) {
        print_message("LORA_TRAIN_BIN is not set (run through ctest)\n");
        skip();
    }
    char dir[512], cwd[1024], path[1024], args[4096], log[1024];
    snprintf(dir, sizeof dir, "%s", make_temp_dir("robot_train"));
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(log, sizeof log, "%s/log.txt", dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, MODEL_CONFIG);
    snprintf(args, sizeof args, "init-model --arch llama --config-json %s --tokenizer %s/tokenizer.json --out %s/model",
             path, shared_fixture("tokenizers/mistral"), dir);
    lora_train(bin, args, log);
    char yaml[8192];
    snprintf(yaml, sizeof yaml,
             "model:\n  path: %s/model\n  create_if_missing: tiny\n"
             "data:\n  path: %s/" FIXTURES "/tiny_rlds\n  max_seq_len: 96\n  shuffle_buffer: 6\n"
             "vision:\n  tower: %s/tower.safetensors\n  tower_preset: tiny\n"
             "lora:\n  target: all\n"
             "train:\n  micro_batch: 2\n  max_steps: 4\n  backend: cpu\n"
             "checkpoint:\n  dir: %s/out\n  every_steps: 2\n",
             dir, cwd, dir, dir);
    snprintf(path, sizeof path, "%s/train.yaml", dir);
    write_text(path, yaml);
    snprintf(args, sizeof args, "--config %s", path);
    lora_train(bin, args, log);

    ActionStats written, reference;
    Error err = {{0}};
    char stats_path[1100];
    snprintf(stats_path, sizeof stats_path, "%s/out/dataset_statistics.json", dir);
    if (!action_stats_read_json(stats_path, "tiny_rlds", &written, &err) ||
        !action_stats_read_json(FIXTURES "/dataset_statistics.json", "tiny_rlds", &reference, &err))
        fail_msg("%s", err.message);
    assert_same_stats(&written, &reference);
    // The adapter folder carries them too, and so does its PEFT export: inference un-normalises with them.
    snprintf(stats_path, sizeof stats_path, "%s/out/adapter/dataset_statistics.json", dir);
    char exported[1100];
    snprintf(exported, sizeof exported, "%s/exported/dataset_statistics.json", dir);
    snprintf(args, sizeof args, "export --checkpoint %s/out/adapter --format peft --out %s/exported", dir, dir);
    lora_train(bin, args, log);
    for (int i = 0; i < 2; i++) {
        if (!action_stats_read_json(i == 0 ? stats_path : exported, "tiny_rlds", &written, &err))
            fail_msg("%s", err.message);
        assert_same_stats(&written, &reference);
    }

    // plan counts the epochs' steps as RobotLoader deals them: 16 steps / 2 per step x 3 epochs.
    snprintf(args, sizeof args, "%s plan --config %s --set train.max_steps=0 --set train.epochs=3 2>&1 | "
             "grep -q 'plan for 1 rank, 24 steps'", bin, path);
    assert_int_equal(run_command(args), 0);

    // Resumed from the step-2 checkpoint in a folder of its own: the same adapter, byte for byte.
    snprintf(args, sizeof args, "mkdir -p %s/again && cp -r %s/out/step-000002 %s/again/", dir, dir, dir);
    assert_int_equal(run_command(args), 0);
    snprintf(args, sizeof args, "--config %s --set checkpoint.dir=%s/again --resume %s/again/step-000002", path, dir, dir);
    lora_train(bin, args, log);
    char first[1100], again[1100];
    snprintf(first, sizeof first, "%s/out/adapter/adapter_model.safetensors", dir);
    snprintf(again, sizeof again, "%s/again/adapter/adapter_model.safetensors", dir);
    assert_true(same_file(first, again));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_as_openvla),
        cmocka_unit_test(test_shuffle_buffer_visits_every_step),
        cmocka_unit_test(test_seek_reproduces_batches),
        cmocka_unit_test(test_bad_options_refused),
        cmocka_unit_test(test_bad_image_skipped),
        cmocka_unit_test(test_action_vocab_excludes_added_tokens),
        cmocka_unit_test(test_training_run),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
