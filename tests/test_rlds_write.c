// The RLDS writer (data/rlds_write.c) against the reader (rlds.c, example.c,
// tfrecord.c): tf.train.Examples decode to what was encoded, a written folder
// reads back step for step (instructions, actions, decoded pixels, episode
// boundaries, the action's dimension from features.json), both CRCs are the
// masked CRC-32Cs the reader checks, and a corrupted record is still skipped.
// scripts/check_rlds_folder.py reads such a folder with tensorflow-datasets.
#include "test_util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/rlds.h"

#define SIZE 12
#define DIM 7
static const int EPISODE_STEPS[] = {3, 1, 4, 2, 5};
#define N_EPISODES 5
static const char *const INSTRUCTIONS[] = {"move to the red circle", "Öffne die Schublade", "", "stack the blocks",
                                           "push the green square"};

static void test_example_round_trip(void **state) {
    (void)state;
    ExampleEncoder encoder = {0};
    Error err = {{0}};
    const float floats[] = {1.5f, -0.0f, 3e-38f, -7.25f};
    const int64_t ints[] = {0, 1, -1, 300, INT64_MAX, INT64_MIN};
    ByteView bytes[] = {{(const uint8_t *)"abc", 3}, {(const uint8_t *)"", 0}, {(const uint8_t *)"\0x\xff", 3}};
    char long_key[300];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    assert_true(example_add_floats(&encoder, "f", floats, 4, &err));
    assert_true(example_add_int64s(&encoder, "i", ints, 6, &err));
    assert_true(example_add_bytes(&encoder, "b", bytes, 3, &err));
    assert_true(example_add_floats(&encoder, "empty", NULL, 0, &err));
    assert_true(example_add_bytes(&encoder, long_key, bytes, 1, &err));
    uint8_t *data;
    size_t size;
    assert_true(example_encoder_finish(&encoder, &data, &size, &err));
    Example ex;
    if (!example_parse(data, size, &ex, &err)) fail_msg("%s", err.message);
    assert_int_equal(ex.n_features, 5);
    const Feature *f = example_feature(&ex, "f"), *i = example_feature(&ex, "i"), *b = example_feature(&ex, "b");
    assert_int_equal(f->kind, FEATURE_FLOATS);
    assert_int_equal(f->count, 4);
    assert_memory_equal(f->floats, floats, sizeof floats);
    assert_int_equal(i->kind, FEATURE_INT64S);
    assert_int_equal(i->count, 6);
    assert_memory_equal(i->int64s, ints, sizeof ints);
    assert_int_equal(b->kind, FEATURE_BYTES);
    assert_int_equal(b->count, 3);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(b->bytes[k].size, bytes[k].size);
        if (bytes[k].size) assert_memory_equal(b->bytes[k].data, bytes[k].data, bytes[k].size);
    }
    assert_int_equal(example_feature(&ex, "empty")->count, 0);
    assert_int_equal(example_feature(&ex, long_key)->count, 1);
    example_free(&ex);
    free(data);
    example_encoder_free(&encoder);
}

// Step t of episode e: a picture of its own, an action from (e, t).
static void make_step(int e, int t, Image *picture, float *action) {
    for (int k = 0; k < SIZE * SIZE * 3; k++) picture->pixels[k] = (uint8_t)(k * 7 + e * 31 + t * 13);
    for (int d = 0; d < DIM; d++) action[d] = (float)(e - 2) * 0.25f + (float)t * 0.125f - (float)d * 0.0625f;
    action[DIM - 1] = t % 2 ? 1.0f : -1.0f;
}

// Writes the episodes into dir, 2 per shard (3 shards).
static void write_dataset(const char *dir) {
    RldsWriterOptions options = {.dir = dir, .name = "written", .image_width = SIZE, .image_height = SIZE,
                                 .action_dim = DIM, .episodes_per_shard = 2};
    Error err = {{0}};
    RldsWriter *writer = rlds_writer_open(&options, &err);
    if (!writer) fail_msg("%s", err.message);
    Image picture;
    assert_true(image_alloc(&picture, SIZE, SIZE, &err));
    for (int e = 0; e < N_EPISODES; e++) {
        RldsStep steps[8] = {{0}};
        uint8_t *encoded[8];
        for (int t = 0; t < EPISODE_STEPS[e]; t++) {
            make_step(e, t, &picture, steps[t].action);
            if (!image_encode_png(&picture, &encoded[t], &steps[t].image_size, &err)) fail_msg("%s", err.message);
            steps[t].image = encoded[t];
            steps[t].instruction = INSTRUCTIONS[e];
            steps[t].discount = 1;
            steps[t].reward = t == EPISODE_STEPS[e] - 1;
            steps[t].is_first = t == 0;
            steps[t].is_last = steps[t].is_terminal = t == EPISODE_STEPS[e] - 1;
        }
        if (!rlds_write_episode(writer, steps, EPISODE_STEPS[e], &err)) fail_msg("%s", err.message);
        for (int t = 0; t < EPISODE_STEPS[e]; t++) free(encoded[t]);
    }
    image_free(&picture);
    if (!rlds_writer_close(writer, &err)) fail_msg("%s", err.message);
}

static void test_folder_reads_back(void **state) {
    (void)state;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/written/1.0.0", make_temp_dir("rlds_write"));
    write_dataset(dir);
    char path[700];
    snprintf(path, sizeof path, "%s/written-train.tfrecord-00002-of-00003", dir);
    assert_true(path_exists(path));
    snprintf(path, sizeof path, "%s/dataset_info.json", dir);
    json_object *info = json_object_from_file(path), *splits, *lengths;
    assert_non_null(info);
    assert_true(json_object_object_get_ex(info, "splits", &splits));
    assert_true(json_object_object_get_ex(json_object_array_get_idx(splits, 0), "shardLengths", &lengths));
    assert_string_equal(json_object_to_json_string(lengths), "[ \"2\", \"2\", \"1\" ]");
    json_object_put(info);

    RobotDataOptions options = {.path = dir};
    Error err = {{0}};
    RobotDataset *dataset = robot_dataset_open(&options, &err);
    if (!dataset) fail_msg("%s", err.message);
    assert_string_equal(robot_dataset_name(dataset), "written");
    assert_int_equal(robot_dataset_action_dim(dataset), DIM);
    assert_int_equal(robot_dataset_stats(dataset)->episodes, N_EPISODES);
    assert_int_equal(robot_dataset_skipped_count(dataset), 0);
    Image want, got;
    assert_true(image_alloc(&want, SIZE, SIZE, &err));
    int64_t i = 0;
    for (int e = 0; e < N_EPISODES; e++) {
        for (int t = 0; t < EPISODE_STEPS[e]; t++, i++) {
            float action[DIM];
            make_step(e, t, &want, action);
            RobotStep step = robot_dataset_step(dataset, i);
            assert_int_equal(step.episode, e);
            assert_int_equal(step.step, t);
            assert_string_equal(step.instruction, INSTRUCTIONS[e]);
            assert_memory_equal(step.action, action, sizeof action);
            if (!robot_dataset_image(dataset, i, &got, &err)) fail_msg("%s", err.message);
            assert_int_equal(got.width, SIZE);
            assert_memory_equal(got.pixels, want.pixels, SIZE * SIZE * 3);
            image_free(&got);
        }
    }
    assert_int_equal(robot_dataset_size(dataset), i);
    image_free(&want);
    robot_dataset_destroy(dataset);
}

// A flipped byte inside a record's data fails its CRC: that episode is
// skipped as a corrupt record, the rest of the shard still reads.
static void test_corrupt_record_skipped(void **state) {
    (void)state;
    char dir[600], path[700];
    snprintf(dir, sizeof dir, "%s", make_temp_dir("rlds_write_corrupt"));
    write_dataset(dir);
    snprintf(path, sizeof path, "%s/written-train.tfrecord-00000-of-00003", dir);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, 40, SEEK_SET), 0); // inside the first record's data
    int byte = fgetc(f);
    assert_int_equal(fseek(f, 40, SEEK_SET), 0);
    assert_int_not_equal(fputc(byte ^ 0x20, f), EOF);
    assert_int_equal(fclose(f), 0);
    RobotDataOptions options = {.path = dir};
    Error err = {{0}};
    RobotDataset *dataset = robot_dataset_open(&options, &err);
    if (!dataset) fail_msg("%s", err.message);
    const RobotDatasetStats *stats = robot_dataset_stats(dataset);
    assert_int_equal(stats->skipped[SKIP_CORRUPT_RECORD], 1);
    assert_int_equal(stats->episodes, N_EPISODES - 1);
    assert_non_null(strstr(robot_dataset_skipped(dataset, 0)->message, "data CRC mismatch"));
    assert_string_equal(robot_dataset_step(dataset, 0).instruction, INSTRUCTIONS[1]);
    robot_dataset_destroy(dataset);
}

// The framing is TensorFlow's: length, masked CRC-32C of its 8 bytes, data, masked CRC-32C of the data.
static void test_record_framing(void **state) {
    (void)state;
    char path[700];
    snprintf(path, sizeof path, "%s/one.tfrecord", make_temp_dir("rlds_write_frame"));
    Error err = {{0}};
    TfRecordWriter *writer = tfrecord_writer_open(path, &err);
    assert_non_null(writer);
    assert_true(tfrecord_write(writer, (const uint8_t *)"hello", 5, &err));
    assert_true(tfrecord_write(writer, (const uint8_t *)"", 0, &err));
    assert_int_equal(tfrecord_writer_bytes(writer), 21 + 16);
    assert_true(tfrecord_writer_close(writer, &err));
    char *data;
    size_t size;
    assert_true(read_file(path, &data, &size, &err));
    assert_int_equal(size, 37);
    const uint8_t *p = (const uint8_t *)data;
    uint32_t length_crc = (uint32_t)p[8] | (uint32_t)p[9] << 8 | (uint32_t)p[10] << 16 | (uint32_t)p[11] << 24;
    uint32_t data_crc = (uint32_t)p[17] | (uint32_t)p[18] << 8 | (uint32_t)p[19] << 16 | (uint32_t)p[20] << 24;
    assert_int_equal(p[0], 5);
    assert_int_equal(length_crc, crc32c_masked(p, 8));
    assert_int_equal(data_crc, crc32c_masked("hello", 5));
    free(data);
    TfRecordReader *reader = tfrecord_open(path, &err);
    const uint8_t *record;
    assert_int_equal(tfrecord_next(reader, &record, &size, &err), TFRECORD_OK);
    assert_int_equal(size, 5);
    assert_int_equal(tfrecord_next(reader, &record, &size, &err), TFRECORD_OK);
    assert_int_equal(size, 0);
    assert_int_equal(tfrecord_next(reader, &record, &size, &err), TFRECORD_END);
    tfrecord_close(reader);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_round_trip),
        cmocka_unit_test(test_folder_reads_back),
        cmocka_unit_test(test_corrupt_record_skipped),
        cmocka_unit_test(test_record_framing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
