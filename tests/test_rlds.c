// Robot data against tests/fixtures/rlds/, written by scripts/ref_rlds.py with
// tensorflow-datasets: the genuine RLDS folder reads back as
// tfds.builder_from_directory reads it (steps, instructions, actions, decoded
// image pixels); the JSONL form gives the same steps; statistics,
// normalisation (TensorFlow's arithmetic), action tokens (numpy's digitize and
// OpenVLA's class) and prompts equal the references; corrupt TFRecords and
// malformed episodes are skipped with reasons, never a crash.
#include "test_util.h"

#include <json-c/json.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/rlds.h"

#define FIXTURES "tests/fixtures/rlds"
#define DATASET FIXTURES "/tiny_rlds/1.0.0"
#define SHARD0 "tiny_rlds-train.tfrecord-00000-of-00002"
#define SHARD1 "tiny_rlds-train.tfrecord-00001-of-00002"

// ----------------------------------------------------------------------------
// helpers

static json_object *load_json(const char *path) {
    json_object *root = json_object_from_file(path);
    if (!root) fail_msg("%s: %s", path, json_util_get_last_err());
    return root;
}

static json_object *get(json_object *object, const char *key) {
    json_object *value;
    if (!json_object_object_get_ex(object, key, &value)) fail_msg("no key '%s'", key);
    return value;
}

static json_object *at(json_object *array, size_t i) { return json_object_array_get_idx(array, i); }

static uint64_t pixels_fnv(const Image *image) {
    return fnv1a64(image->pixels, (size_t)image->width * image->height * 3, FNV1A64_INIT);
}

static RobotDataset *open_dataset(const char *path, const char *image_key, bool decode_images) {
    RobotDataOptions options = {.path = path, .image_key = image_key, .decode_images = decode_images};
    Error err = {{0}};
    RobotDataset *dataset = robot_dataset_open(&options, &err);
    if (!dataset) fail_msg("%s", err.message);
    return dataset;
}

// The expected steps in order: (episode, step) pairs flattened from expected.json.
typedef struct ExpectedStep {
    int episode, step;
    json_object *json;
} ExpectedStep;

static int expected_steps(json_object *expected, ExpectedStep *out, int max) {
    json_object *episodes = get(expected, "episodes");
    int n = 0;
    for (size_t e = 0; e < json_object_array_length(episodes); e++) {
        json_object *steps = get(at(episodes, e), "steps");
        for (size_t t = 0; t < json_object_array_length(steps) && n < max; t++)
            out[n++] = (ExpectedStep){(int)e, (int)t, at(steps, t)};
    }
    return n;
}

// Every step's instruction, action (bit-exact float32), position and image pixels as the reference read them.
static void assert_steps_match(const RobotDataset *dataset, json_object *expected, const char *fnv_key) {
    ExpectedStep steps[64];
    int n = expected_steps(expected, steps, 64);
    assert_int_equal(robot_dataset_size(dataset), n);
    for (int i = 0; i < n; i++) {
        RobotStep step = robot_dataset_step(dataset, i);
        assert_int_equal(step.episode, steps[i].episode);
        assert_int_equal(step.step, steps[i].step);
        assert_int_equal(step.step == 0, json_object_get_boolean(get(steps[i].json, "is_first")));
        assert_string_equal(step.instruction, json_object_get_string(get(steps[i].json, "instruction")));
        json_object *action = get(steps[i].json, "action");
        for (int j = 0; j < 7; j++) assert_true(step.action[j] == (float)json_object_get_double(at(action, j)));
        Image image;
        Error err = {{0}};
        if (!robot_dataset_image(dataset, i, &image, &err)) fail_msg("%s", err.message);
        assert_int_equal(image.width, 32);
        assert_int_equal(image.height, 32);
        char fnv[17];
        snprintf(fnv, sizeof fnv, "%016llx", (unsigned long long)pixels_fnv(&image));
        assert_string_equal(fnv, json_object_get_string(get(steps[i].json, fnv_key)));
        free(image.pixels);
    }
}

static void copy_file(const char *from, const char *to) {
    char *data;
    size_t size;
    Error err = {{0}};
    if (!read_file(from, &data, &size, &err)) fail_msg("%s", err.message);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    fclose(f);
    free(data);
}

// A scratch copy of the genuine dataset whose shard file can then be spoiled.
static const char *copy_dataset(const char *tag) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s", make_temp_dir(tag));
    const char *files[] = {"dataset_info.json", "features.json", SHARD0, SHARD1};
    for (int i = 0; i < 4; i++) {
        char from[600], to[600];
        snprintf(from, sizeof from, "%s/%s", DATASET, files[i]);
        snprintf(to, sizeof to, "%s/%s", dir, files[i]);
        copy_file(from, to);
    }
    return dir;
}

static void remove_dir(const char *dir) {
    Error err = {{0}};
    if (!remove_tree(dir, &err)) fail_msg("%s", err.message);
}

static void patch_file(const char *path, long offset, uint8_t xor_mask) {
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, offset, SEEK_SET), 0);
    int byte = fgetc(f);
    assert_int_not_equal(byte, EOF);
    assert_int_equal(fseek(f, offset, SEEK_SET), 0);
    fputc(byte ^ xor_mask, f);
    fclose(f);
}

static long file_size(const char *path) {
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (long)st.st_size;
}

// Byte offsets of the records of a genuine file (framing read here by hand: uint64 length + 4 + data + 4).
static int record_offsets(const char *path, long *offsets, int max) {
    char *data;
    size_t size;
    Error err = {{0}};
    if (!read_file(path, &data, &size, &err)) fail_msg("%s", err.message);
    int n = 0;
    for (size_t at_byte = 0; at_byte < size && n < max; n++) {
        uint64_t length;
        memcpy(&length, data + at_byte, 8);
        offsets[n] = (long)at_byte;
        at_byte += 16 + length;
    }
    free(data);
    return n;
}

// ----------------------------------------------------------------------------
// TFRecord framing and tf.train.Example

static void test_tfrecord_genuine_shards(void **state) {
    (void)state;
    const char *shards[2] = {DATASET "/" SHARD0, DATASET "/" SHARD1};
    for (int s = 0; s < 2; s++) {
        Error err = {{0}};
        TfRecordReader *reader = tfrecord_open(shards[s], &err);
        if (!reader) fail_msg("%s", err.message);
        const uint8_t *data;
        size_t size;
        int records = 0;
        TfRecordStatus status;
        while ((status = tfrecord_next(reader, &data, &size, &err)) == TFRECORD_OK) {
            Example ex;
            if (!example_parse(data, size, &ex, &err)) fail_msg("%s", err.message);
            const Feature *action = example_feature(&ex, "steps/action");
            const Feature *first = example_feature(&ex, "steps/is_first");
            assert_non_null(action);
            assert_int_equal(action->kind, FEATURE_FLOATS);
            assert_non_null(first);
            assert_int_equal(first->kind, FEATURE_INT64S);
            assert_int_equal(first->count * 7, action->count);
            assert_int_equal(first->int64s[0], 1);
            assert_non_null(example_feature(&ex, "episode_metadata/file_path"));
            assert_null(example_feature(&ex, "steps/nothing"));
            example_free(&ex);
            records++;
        }
        assert_int_equal(status, TFRECORD_END);
        assert_int_equal(records, 2); // dataset_info.json's shardLengths
        tfrecord_close(reader);
    }
}

// Encodings tfds never writes but other writers may: unpacked repeated floats
// and varints, negative int64s, merged lists, a oneof switched, a repeated key.
static void test_example_wire_forms(void **state) {
    (void)state;
    // (protobuf's own Example.FromString reads these bytes to the values asserted below)
    // Example{features{feature{"f": float_list{1.5 unpacked, [2, -0.25] packed}},
    //                  feature{"i": int64_list{-1 unpacked, [300] packed}},
    //                  feature{"k": bytes_list{"x"}}, feature{"k": float_list{}} (repeated key: the last wins),
    //                  feature{"s": bytes_list{"ab"} then int64_list{7} (oneof: the last member wins)}}}
    static const uint8_t bytes[] = {
        0x0a, 0x5a,                                                  // Example.features, 90 bytes
        0x0a, 0x19, 0x0a, 0x01, 'f', 0x12, 0x14, 0x12, 0x12,         // entry "f": Feature.float_list (18)
        0x0d, 0x00, 0x00, 0xc0, 0x3f,                                // value 1.5 (fixed32)
        0x0a, 0x08, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x80, 0xbe,  // packed [2, -0.25]
        0x98, 0x01, 0x01,                                            // unknown field 19 (varint): skipped
        0x0a, 0x16, 0x0a, 0x01, 'i', 0x12, 0x11, 0x1a, 0x0f,         // entry "i": Feature.int64_list (15)
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // -1, unpacked
        0x0a, 0x02, 0xac, 0x02,                                      // packed [300]
        0x0a, 0x0a, 0x0a, 0x01, 'k', 0x12, 0x05, 0x0a, 0x03, 0x0a, 0x01, 'x', // entry "k": bytes_list{"x"}
        0x0a, 0x07, 0x0a, 0x01, 'k', 0x12, 0x02, 0x12, 0x00,         // entry "k" again: float_list{}
        0x0a, 0x10, 0x0a, 0x01, 's', 0x12, 0x0b, 0x0a, 0x04, 0x0a, 0x02, 'a', 'b', 0x1a, 0x03, 0x0a, 0x01, 0x07,
    };
    Example ex;
    Error err = {{0}};
    if (!example_parse(bytes, sizeof bytes, &ex, &err)) fail_msg("%s", err.message);
    assert_int_equal(ex.n_features, 4);
    const Feature *f = example_feature(&ex, "f"), *i = example_feature(&ex, "i"), *k = example_feature(&ex, "k"),
                  *s = example_feature(&ex, "s");
    assert_int_equal(f->kind, FEATURE_FLOATS);
    assert_int_equal(f->count, 3);
    assert_true(f->floats[0] == 1.5f && f->floats[1] == 2.0f && f->floats[2] == -0.25f);
    assert_int_equal(i->kind, FEATURE_INT64S);
    assert_int_equal(i->count, 2);
    assert_true(i->int64s[0] == -1 && i->int64s[1] == 300);
    assert_int_equal(k->kind, FEATURE_FLOATS);
    assert_int_equal(k->count, 0);
    assert_int_equal(s->kind, FEATURE_INT64S);
    assert_int_equal(s->count, 1);
    assert_int_equal(s->int64s[0], 7);
    example_free(&ex);

    // Every strict prefix is malformed (a length or varint runs past its message) or an empty message.
    for (size_t n = 1; n < sizeof bytes; n++) {
        Error prefix_err = {{0}};
        bool ok = example_parse(bytes, n, &ex, &prefix_err);
        assert_false(ok);
        assert_non_null(strstr(prefix_err.message, "byte"));
        example_free(&ex);
    }
    static const uint8_t packed_floats_of_1_byte[] = {0x0a, 0x0c, 0x0a, 0x0a, 0x0a, 0x01, 'f', 0x12,
                                                       0x05, 0x12, 0x03, 0x0a, 0x01, 0x00};
    assert_false(example_parse(packed_floats_of_1_byte, sizeof packed_floats_of_1_byte, &ex, &err));
    assert_non_null(strstr(err.message, "not a multiple of 4"));
    example_free(&ex);
}

// ----------------------------------------------------------------------------
// the genuine dataset

static void test_rlds_reads_as_tfds(void **state) {
    (void)state;
    json_object *expected = load_json(FIXTURES "/expected.json");
    RobotDataset *dataset = open_dataset(DATASET, NULL, true);
    assert_string_equal(robot_dataset_name(dataset), "tiny_rlds");
    assert_true(robot_dataset_is_rlds(dataset));
    const char *image, *instruction, *action;
    robot_dataset_keys(dataset, &image, &instruction, &action);
    assert_string_equal(image, "steps/observation/image"); // the default, found in the records
    assert_string_equal(instruction, "steps/language_instruction");
    assert_string_equal(action, "steps/action");
    const RobotDatasetStats *s = robot_dataset_stats(dataset);
    assert_int_equal(s->records, 4);
    assert_int_equal(s->episodes, 4);
    assert_int_equal(s->skipped_total, 0);
    assert_steps_match(dataset, expected, "image_fnv");
    robot_dataset_destroy(dataset);

    // The dataset's folder above its version folder, the JPEG wrist camera by key (Pillow's pixels).
    dataset = open_dataset(FIXTURES "/tiny_rlds", "observation/wrist_image", true);
    assert_steps_match(dataset, expected, "wrist_image_fnv");
    robot_dataset_destroy(dataset);
    json_object_put(expected);
}

static void test_jsonl_steps_match(void **state) {
    (void)state;
    json_object *expected = load_json(FIXTURES "/expected.json");
    assert_true(robot_data_detect(FIXTURES "/steps.jsonl"));
    assert_true(robot_data_detect(DATASET));
    assert_false(robot_data_detect(FIXTURES "/expected.json"));
    RobotDataset *dataset = open_dataset(FIXTURES "/steps.jsonl", NULL, true);
    assert_false(robot_dataset_is_rlds(dataset));
    assert_string_equal(robot_dataset_name(dataset), "steps");
    assert_int_equal(robot_dataset_stats(dataset)->episodes, 4);
    assert_steps_match(dataset, expected, "image_fnv");
    robot_dataset_destroy(dataset);
    json_object_put(expected);
}

static void test_bad_jsonl_lines(void **state) {
    (void)state;
    const char *dir = make_temp_dir("rlds_jsonl");
    char path[600], image[600];
    snprintf(image, sizeof image, "%s/a.png", dir);
    copy_file(FIXTURES "/images/ep0_step0.png", image);
    snprintf(path, sizeof path, "%s/own.jsonl", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"image\": \"a.png\", \"instruction\": \"go\", \"action\": [0, 1, 2, 3, 4, 5, 6]}\n"
          "{\"image\": \"a.png\", \"instruction\": \"go\", \"action\": [0, 1, 2]}\n"
          "{\"image\": \"gone.png\", \"instruction\": \"go\", \"action\": [0, 1, 2, 3, 4, 5, 6]}\n"
          "not json\n"
          "\n"
          "{\"image\": \"a.png\", \"action\": [0, 1, 2, 3, 4, 5, 6]}\n"
          "{\"image\": \"a.png\", \"instruction\": \"go\", \"action\": [0, 1, 2, 3, 4, 5, \"x\"]}\n",
          f);
    fclose(f);
    RobotDataset *dataset = open_dataset(path, NULL, false);
    const RobotDatasetStats *s = robot_dataset_stats(dataset);
    assert_int_equal(s->records, 6);
    assert_int_equal(s->steps, 1);
    assert_int_equal(s->skipped[SKIP_BAD_RECORD], 4);
    assert_int_equal(s->skipped[SKIP_MISSING_IMAGE], 1);
    char line2[700];
    snprintf(line2, sizeof line2, "%s:2: \"action\" is not an array of 7 numbers", path);
    assert_string_equal(robot_dataset_skipped(dataset, 0)->message, line2);
    Error err = {{0}};
    assert_false(robot_dataset_check_skips(dataset, 0.5, &err));
    assert_non_null(strstr(err.message, "5 of 6 records skipped (83.33%), over data.max_skip_fraction 50.00%"));
    robot_dataset_destroy(dataset);
    remove_dir(dir);
}

// ----------------------------------------------------------------------------
// statistics, normalisation, tokens, prompts

static void assert_close_array(json_object *expected, const double *values, int n, double tolerance) {
    assert_int_equal(json_object_array_length(expected), n);
    for (int i = 0; i < n; i++) {
        double want = json_object_get_double(at(expected, (size_t)i));
        if (fabs(values[i] - want) > tolerance * fmax(1.0, fabs(want)))
            fail_msg("[%d]: %.9g, reference %.9g", i, values[i], want);
    }
}

static void test_statistics_as_openvla(void **state) {
    (void)state;
    json_object *reference = load_json(FIXTURES "/dataset_statistics.json");
    json_object *entry = get(reference, "tiny_rlds"), *action = get(entry, "action");
    RobotDataset *dataset = open_dataset(DATASET, NULL, false);
    ActionStats stats;
    Error err = {{0}};
    if (!robot_dataset_action_stats(dataset, NULL, &stats, &err)) fail_msg("%s", err.message);
    assert_int_equal(stats.dim, 7);
    assert_int_equal(stats.num_transitions, json_object_get_int64(get(entry, "num_transitions")));
    assert_int_equal(stats.num_trajectories, json_object_get_int64(get(entry, "num_trajectories")));
    // numpy sums float32 pairwise in float32; these are summed in double, then rounded.
    assert_close_array(get(action, "mean"), stats.mean, 7, 1e-6);
    assert_close_array(get(action, "std"), stats.std, 7, 1e-6);
    assert_close_array(get(action, "min"), stats.min, 7, 0);
    assert_close_array(get(action, "max"), stats.max, 7, 0);
    assert_close_array(get(action, "q01"), stats.q01, 7, 1e-7);
    assert_close_array(get(action, "q99"), stats.q99, 7, 1e-7);
    for (int i = 0; i < 7; i++) assert_int_equal(stats.mask[i], json_object_get_boolean(at(get(action, "mask"), i)));

    // Written in OpenVLA's layout and read back; the proprio block is that of zeros, as OpenVLA's.
    char path[600];
    snprintf(path, sizeof path, "%s/dataset_statistics.json", make_temp_dir("rlds_stats"));
    if (!action_stats_write_json(&stats, robot_dataset_name(dataset), path, &err)) fail_msg("%s", err.message);
    json_object *written = load_json(path), *ours = get(written, "tiny_rlds");
    json_object_object_foreach(get(entry, "proprio"), key, values) {
        double zeros[7];
        for (int i = 0; i < 7; i++) zeros[i] = json_object_get_double(at(get(get(ours, "proprio"), key), i));
        assert_close_array(values, zeros, 7, 0);
    }
    ActionStats reread;
    if (!action_stats_read_json(path, NULL, &reread, &err)) fail_msg("%s", err.message);
    assert_memory_equal(reread.q99, stats.q99, sizeof stats.q99);
    assert_memory_equal(reread.mask, stats.mask, sizeof stats.mask);
    assert_false(action_stats_read_json(path, "other", &reread, &err));
    assert_non_null(strstr(err.message, "no statistics of dataset 'other'"));
    json_object_put(written);
    robot_dataset_destroy(dataset);
    remove_dir(dirname(path));
    json_object_put(reference);
}

static void test_normalized_tokens_as_openvla(void **state) {
    (void)state;
    json_object *expected = load_json(FIXTURES "/expected.json");
    ActionStats stats;
    Error err = {{0}};
    if (!action_stats_read_json(FIXTURES "/dataset_statistics.json", "tiny_rlds", &stats, &err))
        fail_msg("%s", err.message);
    RobotDataset *dataset = open_dataset(DATASET, NULL, false);
    ActionTokenizer tokenizer;
    action_tokenizer_init(&tokenizer, 32000);
    json_object *normalized = get(expected, "normalized"), *tokens = get(expected, "tokens");
    for (int64_t i = 0; i < robot_dataset_size(dataset); i++) {
        float out[7];
        action_normalize(&stats, robot_dataset_step(dataset, i).action, out);
        for (int j = 0; j < 7; j++) {
            float want = (float)json_object_get_double(at(at(normalized, (size_t)i), (size_t)j));
            if (out[j] != want) fail_msg("step %lld dim %d: %.9g, TensorFlow %.9g", (long long)i, j, out[j], want);
            assert_int_equal(action_token_id(&tokenizer, out[j]), json_object_get_int(at(at(tokens, (size_t)i), (size_t)j)));
        }
    }
    robot_dataset_destroy(dataset);
    json_object_put(expected);
}

static void test_action_tokenizer_as_openvla(void **state) {
    (void)state;
    json_object *reference = load_json(FIXTURES "/action_tokens.json");
    ActionTokenizer tokenizer;
    action_tokenizer_init(&tokenizer, json_object_get_int(get(reference, "vocab_size")));
    json_object *actions = get(reference, "actions"), *ids = get(reference, "ids");
    size_t n = json_object_array_length(actions);
    assert_true(n > 2500);
    for (size_t i = 0; i < n; i++) {
        float value = (float)json_object_get_double(at(actions, i));
        int32_t id = action_token_id(&tokenizer, value);
        if (id != json_object_get_int(at(ids, i)))
            fail_msg("action %.9g: id %d, OpenVLA %d", value, id, json_object_get_int(at(ids, i)));
    }
    json_object *decode_ids = get(reference, "decode_ids"), *values = get(reference, "decode_values");
    for (size_t i = 0; i < json_object_array_length(decode_ids); i++) {
        double value = action_token_value(&tokenizer, json_object_get_int(at(decode_ids, i)));
        assert_true(value == json_object_get_double(at(values, i)));
    }
    assert_int_equal(action_token_id(&tokenizer, NAN), 32000 - 256); // np.digitize puts NaN past the last edge
    json_object_put(reference);
}

static void test_prompt_as_openvla(void **state) {
    (void)state;
    json_object *expected = load_json(FIXTURES "/expected.json"), *prompts = get(expected, "prompts");
    for (size_t i = 0; i < json_object_array_length(prompts); i++) {
        Error err = {{0}};
        char *prompt = openvla_prompt(json_object_get_string(at(at(prompts, i), 0)), &err);
        if (!prompt) fail_msg("%s", err.message);
        assert_string_equal(prompt, json_object_get_string(at(at(prompts, i), 1)));
        free(prompt);
    }
    json_object_put(expected);
    Error err = {{0}};
    assert_null(openvla_prompt("open the \xff drawer", &err)); // Python's bytes.decode() refuses it too
    assert_non_null(strstr(err.message, "not valid UTF-8"));
}

// RLDSBatchTransform's input_ids and labels, with Mistral-7B's Llama-2-style tokenizer from the shared fixtures.
static void test_training_sample_as_openvla(void **state) {
    (void)state;
    const char *folder = shared_fixture("tokenizers/mistral");
    if (!folder) {
        print_message("../shared/fixtures/tokenizers/mistral is missing\n");
        skip();
    }
    Error err = {{0}};
    Tokenizer *tok = tokenizer_load(folder, &err);
    if (!tok) fail_msg("%s", err.message);
    ActionTokenizer action_tokenizer;
    action_tokenizer_init(&action_tokenizer, 32000); // tokenizer.vocab_size, as OpenVLA's
    json_object *expected = load_json(FIXTURES "/expected.json"), *samples = get(expected, "samples_mistral_tokenizer");
    assert_int_equal(json_object_array_length(samples), 20);
    for (size_t i = 0; i < json_object_array_length(samples); i++) {
        json_object *want = at(samples, i), *ids = get(want, "ids"), *labels = get(want, "labels");
        float action[7];
        for (int j = 0; j < 7; j++) action[j] = (float)json_object_get_double(at(get(want, "normalized"), (size_t)j));
        Sample sample;
        const char *instruction = json_object_get_string(get(want, "instruction"));
        if (!openvla_sample(tok, &action_tokenizer, instruction, action, 7, &sample, &err)) fail_msg("%s", err.message);
        if ((size_t)sample.length != json_object_array_length(ids))
            fail_msg("'%s': %d tokens, transformers %zu", instruction, sample.length, json_object_array_length(ids));
        for (int t = 0; t < sample.length; t++) {
            assert_int_equal(sample.ids[t], json_object_get_int(at(ids, (size_t)t)));
            assert_int_equal(sample.labels[t], json_object_get_int(at(labels, (size_t)t)));
        }
        sample_free(&sample);
    }
    json_object_put(expected);
    tokenizer_destroy(tok);
}

// ----------------------------------------------------------------------------
// bad data

static void test_bad_episodes_skipped(void **state) {
    (void)state;
    json_object *expected = load_json(FIXTURES "/bad/expected.json"), *records = get(expected, "records");
    int good_steps = json_object_get_int(get(expected, "good_steps"));
    for (int decode = 0; decode < 2; decode++) {
        RobotDataset *dataset = open_dataset(FIXTURES "/bad", NULL, decode);
        const RobotDatasetStats *s = robot_dataset_stats(dataset);
        assert_int_equal(s->records, json_object_array_length(records));
        int64_t skipped = 0;
        for (size_t r = 0; r < json_object_array_length(records); r++) {
            json_object *reason = get(at(records, r), "skip");
            const char *name = json_object_get_string(reason);
            if (!name || (!decode && strcmp(name, "corrupt image") == 0)) continue; // found only by decoding
            const SkippedRecord *skip = robot_dataset_skipped(dataset, skipped++);
            char where[64];
            snprintf(where, sizeof where, "tfrecord-00000-of-00001: record %zu: ", r);
            if (!strstr(skip->message, where)) fail_msg("%s: %s", json_object_get_string(get(at(records, r), "case")),
                                                        skip->message);
            assert_int_equal(skip->record, (int64_t)r);
            assert_string_equal(skip_reason_name(skip->reason), name);
        }
        assert_int_equal(s->skipped_total, skipped);
        assert_int_equal(s->steps, decode ? good_steps : 2 * good_steps);
        robot_dataset_destroy(dataset);
    }
    json_object_put(expected);
}

static void test_corrupt_tfrecords(void **state) {
    (void)state;
    char shard0[700], shard1[700];
    long offsets[4];
    assert_int_equal(record_offsets(DATASET "/" SHARD0, offsets, 4), 2);

    // A flipped data byte: that record alone is lost.
    const char *dir = copy_dataset("rlds_bad_crc");
    snprintf(shard0, sizeof shard0, "%s/%s", dir, SHARD0);
    patch_file(shard0, offsets[1] + 12 + 40, 0x01);
    RobotDataset *dataset = open_dataset(dir, NULL, false);
    const RobotDatasetStats *s = robot_dataset_stats(dataset);
    assert_int_equal(s->records, 4);
    assert_int_equal(s->episodes, 3);
    assert_int_equal(s->skipped[SKIP_CORRUPT_RECORD], 1);
    assert_non_null(strstr(robot_dataset_skipped(dataset, 0)->message, ": record 1 at byte "));
    assert_non_null(strstr(robot_dataset_skipped(dataset, 0)->message, "data CRC mismatch"));
    robot_dataset_destroy(dataset);
    remove_dir(dir);

    // A flipped length byte: the rest of that file cannot be framed; the other shard still reads.
    dir = copy_dataset("rlds_bad_length");
    snprintf(shard0, sizeof shard0, "%s/%s", dir, SHARD0);
    patch_file(shard0, 0, 0x10);
    dataset = open_dataset(dir, NULL, false);
    s = robot_dataset_stats(dataset);
    assert_int_equal(s->episodes, 2);
    assert_int_equal(s->skipped[SKIP_CORRUPT_RECORD], 1);
    assert_non_null(strstr(robot_dataset_skipped(dataset, 0)->message, "length CRC mismatch"));
    robot_dataset_destroy(dataset);
    remove_dir(dir);

    // Every truncation of the second shard: whole records before the cut read, the cut one skipped.
    dir = copy_dataset("rlds_truncated");
    snprintf(shard1, sizeof shard1, "%s/%s", dir, SHARD1);
    long size = file_size(DATASET "/" SHARD1), offsets1[4];
    assert_int_equal(record_offsets(DATASET "/" SHARD1, offsets1, 4), 2);
    for (long cut = 1; cut < size; cut += cut < 64 ? 1 : 97) {
        assert_int_equal(truncate(shard1, cut), 0);
        dataset = open_dataset(dir, NULL, false);
        s = robot_dataset_stats(dataset);
        int whole = cut >= offsets1[1] ? 1 : 0;
        assert_int_equal(s->episodes, 2 + whole);
        assert_int_equal(s->skipped[SKIP_CORRUPT_RECORD], 1);
        assert_non_null(strstr(robot_dataset_skipped(dataset, 0)->message, cut - (whole ? offsets1[1] : 0) < 12
                                                                              ? "inside the record's header"
                                                                              : "truncated"));
        robot_dataset_destroy(dataset);
        copy_file(DATASET "/" SHARD1, shard1);
    }
    remove_dir(dir);
}

static void test_open_errors(void **state) {
    (void)state;
    Error err = {{0}};
    RobotDataOptions options = {.path = FIXTURES "/images"};
    assert_null(robot_dataset_open(&options, &err));
    assert_non_null(strstr(err.message, "no dataset_info.json"));
    options = (RobotDataOptions){.path = DATASET, .split = "test"};
    assert_null(robot_dataset_open(&options, &err));
    assert_non_null(strstr(err.message, "no test split files"));
    options = (RobotDataOptions){.path = DATASET, .image_key = "observation/depth"};
    assert_null(robot_dataset_open(&options, &err));
    assert_non_null(strstr(err.message, "no usable step in 4 records"));
    assert_non_null(strstr(err.message, "no feature 'steps/observation/depth'"));
    options = (RobotDataOptions){.path = DATASET, .action_dim = 8};
    assert_null(robot_dataset_open(&options, &err));
    assert_non_null(strstr(err.message, "not steps x 8"));

    // Without action_dim, features.json's shape of the action says it.
    const char *dir = copy_dataset("rlds_features");
    char features[700], *text;
    size_t size;
    snprintf(features, sizeof features, "%s/features.json", dir);
    if (!read_file(features, &text, &size, &err)) fail_msg("%s", err.message);
    char *seven = strstr(text, "\"7\"");
    assert_non_null(seven);
    seven[1] = '6';
    FILE *f = fopen(features, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, size, f), size);
    fclose(f);
    free(text);
    options = (RobotDataOptions){.path = dir};
    assert_null(robot_dataset_open(&options, &err));
    assert_non_null(strstr(err.message, "not steps x 6"));
    remove_dir(dir);
}

// ----------------------------------------------------------------------------
// lora-train data check

static int data_check(const char *dir, const char *data_path, const char *max_skip, const char *log) {
    const char *bin = getenv("LORA_TRAIN_BIN");
    if (!bin) {
        print_message("LORA_TRAIN_BIN is not set (run through ctest)\n");
        skip();
    }
    char config[600], command[4096], cwd[1024];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(config, sizeof config, "%s/check.yaml", dir);
    FILE *f = fopen(config, "wb");
    assert_non_null(f);
    fprintf(f, "model:\n  path: %s/no-model\n  create_if_missing: tiny\ndata:\n  path: %s/%s\n", dir, cwd, data_path);
    assert_int_equal(fclose(f), 0);
    snprintf(command, sizeof command, "%s data check --config %s --set data.max_skip_fraction=%s > %s 2>&1", bin,
             config, max_skip, log);
    return run_command(command);
}

static void assert_log_holds(const char *log, const char *const *lines, size_t n) {
    char *text;
    size_t size;
    Error err = {{0}};
    if (!read_file(log, &text, &size, &err)) fail_msg("%s", err.message);
    for (size_t i = 0; i < n; i++)
        if (!strstr(text, lines[i])) fail_msg("data check output lacks \"%s\":\n%s", lines[i], text);
    free(text);
}

static void test_data_check_cli(void **state) {
    (void)state;
    char dir[300], log[600];
    snprintf(dir, sizeof dir, "%s", make_temp_dir("rlds_check"));
    snprintf(log, sizeof log, "%s/check.log", dir);
    assert_int_equal(data_check(dir, FIXTURES "/bad", "0.9", log), 0);
    const char *bad[] = {"RLDS dataset 'tiny_rlds', 9 episode records", "usable episodes  1", "skipped          8",
                         "    bad record: 7", "record 0: feature 'steps/action' is bytes_list, expected float_list",
                         "    corrupt image: 1", "record 7: step 1: invalid PNG"};
    assert_log_holds(log, bad, sizeof bad / sizeof bad[0]);
    assert_int_equal(data_check(dir, FIXTURES "/bad", "0.5", log), 1);
    const char *over[] = {"8 of 9 records skipped (88.89%), over data.max_skip_fraction 50.00%"};
    assert_log_holds(log, over, 1);
    assert_int_equal(data_check(dir, FIXTURES "/steps.jsonl", "0", log), 0);
    const char *jsonl[] = {"JSONL robot steps 'steps', 16 lines", "usable episodes  4", "usable steps     16",
                           "normalised             yes      yes      yes      yes      yes      yes       no"};
    assert_log_holds(log, jsonl, sizeof jsonl / sizeof jsonl[0]);
    remove_dir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tfrecord_genuine_shards),
        cmocka_unit_test(test_example_wire_forms),
        cmocka_unit_test(test_rlds_reads_as_tfds),
        cmocka_unit_test(test_jsonl_steps_match),
        cmocka_unit_test(test_bad_jsonl_lines),
        cmocka_unit_test(test_statistics_as_openvla),
        cmocka_unit_test(test_normalized_tokens_as_openvla),
        cmocka_unit_test(test_action_tokenizer_as_openvla),
        cmocka_unit_test(test_prompt_as_openvla),
        cmocka_unit_test(test_training_sample_as_openvla),
        cmocka_unit_test(test_bad_episodes_skipped),
        cmocka_unit_test(test_corrupt_tfrecords),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_data_check_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
