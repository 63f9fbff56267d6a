// Writing robot data as tensorflow-datasets writes an RLDS dataset: TFRecord
// framing with both masked CRC-32Cs, tf.train.Examples encoded by hand (the
// inverse of example.c), and the folder's dataset_info.json and features.json.
// Shards are written under a temporary name and renamed once their total is
// known (<name>-<split>.tfrecord-NNNNN-of-NNNNN).
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rlds.h"

enum { WIRE_VARINT = 0, WIRE_LEN = 2 };

// ----------------------------------------------------------------------------
// TFRecord

struct TfRecordWriter {
    FILE *file;
    char *path;
    uint64_t bytes; // written so far
};

TfRecordWriter *tfrecord_writer_open(const char *path, Error *err) {
    TfRecordWriter *writer = checked_calloc(1, sizeof *writer, "TFRecord writer", err);
    if (!writer) return NULL;
    writer->path = checked_strdup(path, err);
    writer->file = writer->path ? fopen(path, "wb") : NULL;
    if (writer->file) return writer;
    if (writer->path) fail(err, "%s: %s", path, strerror(errno));
    free(writer->path);
    free(writer);
    return NULL;
}

static void put_u32_le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

bool tfrecord_write(TfRecordWriter *writer, const uint8_t *data, size_t size, Error *err) {
    uint8_t header[12], footer[4];
    for (int i = 0; i < 8; i++) header[i] = (uint8_t)((uint64_t)size >> (8 * i));
    put_u32_le(header + 8, crc32c_masked(header, 8));
    put_u32_le(footer, crc32c_masked(data, size));
    bool ok = fwrite(header, 1, sizeof header, writer->file) == sizeof header &&
              (size == 0 || fwrite(data, 1, size, writer->file) == size) &&
              fwrite(footer, 1, sizeof footer, writer->file) == sizeof footer;
    writer->bytes += sizeof header + size + sizeof footer;
    return ok || fail(err, "%s: writing a record: %s", writer->path, strerror(errno));
}

uint64_t tfrecord_writer_bytes(const TfRecordWriter *writer) { return writer->bytes; }

bool tfrecord_writer_close(TfRecordWriter *writer, Error *err) {
    if (!writer) return true;
    bool ok = fclose(writer->file) == 0 || fail(err, "%s: closing: %s", writer->path, strerror(errno));
    free(writer->path);
    free(writer);
    return ok;
}

// ----------------------------------------------------------------------------
// tf.train.Example: Features' map entries appended one by one, wrapped by example_encoder_finish

static bool reserve(ExampleEncoder *e, size_t more, Error *err) {
    if (e->size + more <= e->capacity) return true;
    size_t capacity = e->capacity ? e->capacity : 256;
    while (capacity < e->size + more) capacity *= 2;
    uint8_t *grown = realloc(e->data, capacity);
    if (!grown) return fail(err, "out of memory for a %zu-byte tf.train.Example", capacity);
    e->data = grown;
    e->capacity = capacity;
    return true;
}

static size_t varint_size(uint64_t v) {
    size_t n = 1;
    for (; v >= 0x80; v >>= 7) n++;
    return n;
}

// Callers reserve first.
static void put_varint(ExampleEncoder *e, uint64_t v) {
    for (; v >= 0x80; v >>= 7) e->data[e->size++] = (uint8_t)(v | 0x80);
    e->data[e->size++] = (uint8_t)v;
}

static void put_len_header(ExampleEncoder *e, uint32_t field, size_t length) {
    put_varint(e, field << 3 | WIRE_LEN);
    put_varint(e, length);
}

static size_t len_field_size(size_t length) { return 1 + varint_size(length) + length; } // fields 1 .. 15

// Appends the entry {key, Feature{kind: list}} whose list payload is list_size
// bytes; *list points where the caller writes them.
static bool begin_entry(ExampleEncoder *e, const char *key, int kind, size_t list_size, uint8_t **list, Error *err) {
    size_t key_size = strlen(key), feature = len_field_size(list_size);
    size_t entry = len_field_size(key_size) + len_field_size(feature);
    if (!reserve(e, len_field_size(entry), err)) return false;
    put_len_header(e, 1, entry);
    put_len_header(e, 1, key_size);
    memcpy(e->data + e->size, key, key_size);
    e->size += key_size;
    put_len_header(e, 2, feature);
    put_len_header(e, (uint32_t)kind, list_size);
    *list = e->data + e->size;
    e->size += list_size;
    return true;
}

bool example_add_bytes(ExampleEncoder *e, const char *key, const ByteView *values, int64_t n, Error *err) {
    size_t list_size = 0;
    for (int64_t i = 0; i < n; i++) list_size += len_field_size(values[i].size);
    uint8_t *list;
    if (!begin_entry(e, key, 1, list_size, &list, err)) return false;
    ExampleEncoder out = {.data = list};
    for (int64_t i = 0; i < n; i++) {
        put_len_header(&out, 1, values[i].size);
        if (values[i].size) memcpy(out.data + out.size, values[i].data, values[i].size);
        out.size += values[i].size;
    }
    return true;
}

// FloatList and Int64List: one packed field (as TensorFlow serializes them); an empty list has none.
bool example_add_floats(ExampleEncoder *e, const char *key, const float *values, int64_t n, Error *err) {
    size_t packed = 4 * (size_t)n;
    uint8_t *list;
    if (!begin_entry(e, key, 2, n ? len_field_size(packed) : 0, &list, err)) return false;
    if (!n) return true;
    ExampleEncoder out = {.data = list};
    put_len_header(&out, 1, packed);
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &values[i], 4);
        put_u32_le(out.data + out.size + 4 * i, bits);
    }
    return true;
}

bool example_add_int64s(ExampleEncoder *e, const char *key, const int64_t *values, int64_t n, Error *err) {
    size_t packed = 0;
    for (int64_t i = 0; i < n; i++) packed += varint_size((uint64_t)values[i]);
    uint8_t *list;
    if (!begin_entry(e, key, 3, n ? len_field_size(packed) : 0, &list, err)) return false;
    if (!n) return true;
    ExampleEncoder out = {.data = list};
    put_len_header(&out, 1, packed);
    for (int64_t i = 0; i < n; i++) put_varint(&out, (uint64_t)values[i]);
    return true;
}

bool example_encoder_finish(ExampleEncoder *e, uint8_t **data, size_t *size, Error *err) {
    size_t features = e->size, header = 1 + varint_size(features);
    uint8_t *out = checked_malloc(header + features, "a tf.train.Example", err);
    if (!out) return false;
    ExampleEncoder head = {.data = out};
    put_len_header(&head, 1, features); // Example.features
    if (features) memcpy(out + header, e->data, features);
    *data = out;
    *size = header + features;
    e->size = 0;
    return true;
}

void example_encoder_free(ExampleEncoder *e) {
    free(e->data);
    *e = (ExampleEncoder){0};
}

// ----------------------------------------------------------------------------
// RLDS episodes

#define MAX_SHARDS 99999

struct RldsWriter {
    RldsWriterOptions options;
    char *dir, *name, *split, *image_format;
    TfRecordWriter *shard;        // open, or NULL between shards
    int n_shards;
    int64_t *shard_lengths;       // (n_shards,) episodes per shard
    int64_t episodes_in_shard, total_episodes;
    uint64_t total_bytes;
    ExampleEncoder encoder;
};

static char *temporary_shard_path(const RldsWriter *w, int shard) {
    char *path;
    return asprintf(&path, "%s/%s-%s.tfrecord-%05d.partial", w->dir, w->name, w->split, shard) < 0 ? NULL : path;
}

RldsWriter *rlds_writer_open(const RldsWriterOptions *options, Error *err) {
    if (!options->dir || !options->name || !options->name[0] || options->action_dim < 1 ||
        options->action_dim > ROBOT_ACTION_DIM_MAX || options->image_width < 1 || options->image_height < 1) {
        fail(err, "RLDS writer: needs a folder, a name, an action dimension 1 .. %d and the image size",
             ROBOT_ACTION_DIM_MAX);
        return NULL;
    }
    const char *format = options->image_format ? options->image_format : "png";
    if (strcmp(format, "png") != 0 && strcmp(format, "jpeg") != 0) {
        fail(err, "RLDS writer: image format '%s' (png or jpeg)", format);
        return NULL;
    }
    RldsWriter *w = checked_calloc(1, sizeof *w, "RLDS writer", err);
    if (!w) return NULL;
    w->options = *options;
    w->dir = checked_strdup(options->dir, err);
    w->name = w->dir ? checked_strdup(options->name, err) : NULL;
    w->split = w->name ? checked_strdup(options->split ? options->split : "train", err) : NULL;
    w->image_format = w->split ? checked_strdup(format, err) : NULL;
    if (w->options.episodes_per_shard < 1) w->options.episodes_per_shard = 1000;
    if (w->image_format && make_dirs(options->dir, err)) return w;
    rlds_writer_abort(w);
    return NULL;
}

static bool close_shard(RldsWriter *w, Error *err) {
    if (!w->shard) return true;
    w->total_bytes += tfrecord_writer_bytes(w->shard);
    bool ok = tfrecord_writer_close(w->shard, err);
    w->shard = NULL;
    return ok;
}

static bool next_shard(RldsWriter *w, Error *err) {
    if (!close_shard(w, err)) return false;
    if (w->n_shards == MAX_SHARDS) return fail(err, "%s: more than %d shards", w->dir, MAX_SHARDS);
    int64_t *lengths = realloc(w->shard_lengths, (size_t)(w->n_shards + 1) * sizeof *lengths);
    if (!lengths) return fail(err, "out of memory for shard lengths");
    w->shard_lengths = lengths;
    char *path = temporary_shard_path(w, w->n_shards);
    if (!path) return fail(err, "out of memory for a path");
    w->shard = tfrecord_writer_open(path, err);
    free(path);
    if (!w->shard) return false;
    w->shard_lengths[w->n_shards++] = 0;
    w->episodes_in_shard = 0;
    return true;
}

// The episode's step features, flattened under "steps/" as tfds's Dataset feature stores them.
static bool encode_episode(RldsWriter *w, const RldsStep *steps, int n, float *floats, int64_t *ints, ByteView *views,
                           Error *err) {
    ExampleEncoder *e = &w->encoder;
    int dim = w->options.action_dim;
    for (int t = 0; t < n; t++) memcpy(floats + (size_t)t * dim, steps[t].action, (size_t)dim * sizeof *floats);
    bool ok = example_add_floats(e, "steps/action", floats, (int64_t)n * dim, err);
    for (int t = 0; t < n; t++) floats[t] = steps[t].discount;
    ok = ok && example_add_floats(e, "steps/discount", floats, n, err);
    for (int t = 0; t < n; t++) ints[t] = steps[t].is_first;
    ok = ok && example_add_int64s(e, "steps/is_first", ints, n, err);
    for (int t = 0; t < n; t++) ints[t] = steps[t].is_last;
    ok = ok && example_add_int64s(e, "steps/is_last", ints, n, err);
    for (int t = 0; t < n; t++) ints[t] = steps[t].is_terminal;
    ok = ok && example_add_int64s(e, "steps/is_terminal", ints, n, err);
    for (int t = 0; t < n; t++)
        views[t] = (ByteView){(const uint8_t *)steps[t].instruction, strlen(steps[t].instruction)};
    ok = ok && example_add_bytes(e, "steps/language_instruction", views, n, err);
    for (int t = 0; t < n; t++) views[t] = (ByteView){steps[t].image, steps[t].image_size};
    ok = ok && example_add_bytes(e, "steps/observation/image", views, n, err);
    for (int t = 0; t < n; t++) floats[t] = steps[t].reward;
    return ok && example_add_floats(e, "steps/reward", floats, n, err);
}

bool rlds_write_episode(RldsWriter *w, const RldsStep *steps, int n_steps, Error *err) {
    if (n_steps < 1) return fail(err, "%s: an episode of %d steps", w->dir, n_steps);
    if ((!w->shard || w->episodes_in_shard == w->options.episodes_per_shard) && !next_shard(w, err)) return false;
    int dim = w->options.action_dim;
    float *floats = checked_malloc((size_t)n_steps * (size_t)dim * sizeof *floats, "episode floats", err);
    int64_t *ints = floats ? checked_malloc((size_t)n_steps * sizeof *ints, "episode flags", err) : NULL;
    ByteView *views = ints ? checked_malloc((size_t)n_steps * sizeof *views, "episode bytes", err) : NULL;
    uint8_t *record = NULL;
    size_t size = 0;
    bool ok = views && encode_episode(w, steps, n_steps, floats, ints, views, err) &&
              example_encoder_finish(&w->encoder, &record, &size, err) &&
              tfrecord_write(w->shard, record, size, err);
    free(record);
    free(views);
    free(ints);
    free(floats);
    w->encoder.size = 0;
    if (!ok) return false;
    w->shard_lengths[w->n_shards - 1]++;
    w->episodes_in_shard++;
    w->total_episodes++;
    return true;
}

// ----------------------------------------------------------------------------
// dataset_info.json and features.json (proto3 JSON: int64 as strings, keys sorted as tfds writes them)

static json_object *string_of_int(int64_t v) {
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)v);
    return json_object_new_string(text);
}

static json_object *shape_of(const int *dims, int n) {
    json_object *shape = json_object_new_object(), *dimensions = json_object_new_array();
    for (int i = 0; i < n; i++) json_object_array_add(dimensions, string_of_int(dims[i]));
    if (n) json_object_object_add(shape, "dimensions", dimensions);
    else json_object_put(dimensions);
    return shape;
}

static json_object *tensor_feature(const char *class_name, const char *dtype, const int *dims, int n) {
    json_object *feature = json_object_new_object(), *tensor = json_object_new_object();
    json_object_object_add(feature, "pythonClassName", json_object_new_string(class_name));
    json_object_object_add(tensor, "dtype", json_object_new_string(dtype));
    json_object_object_add(tensor, "encoding", json_object_new_string("none"));
    json_object_object_add(tensor, "shape", shape_of(dims, n));
    json_object_object_add(feature, "tensor", tensor);
    return feature;
}

static json_object *scalar(const char *dtype) {
    return tensor_feature("tensorflow_datasets.core.features.scalar.Scalar", dtype, NULL, 0);
}

static json_object *features_dict(json_object *features) {
    json_object *dict = json_object_new_object(), *inner = json_object_new_object();
    json_object_object_add(inner, "features", features);
    json_object_object_add(dict, "featuresDict", inner);
    json_object_object_add(dict, "pythonClassName",
                           json_object_new_string("tensorflow_datasets.core.features.features_dict.FeaturesDict"));
    return dict;
}

static json_object *step_features(const RldsWriter *w) {
    int action_dim = w->options.action_dim, image_shape[3] = {w->options.image_height, w->options.image_width, 3};
    json_object *steps = json_object_new_object(), *observation = json_object_new_object();
    json_object *image = json_object_new_object(), *image_spec = json_object_new_object();
    json_object *text = json_object_new_object();
    json_object_object_add(text, "pythonClassName",
                           json_object_new_string("tensorflow_datasets.core.features.text_feature.Text"));
    json_object_object_add(text, "text", json_object_new_object());
    json_object_object_add(image_spec, "dtype", json_object_new_string("uint8"));
    json_object_object_add(image_spec, "encodingFormat", json_object_new_string(w->image_format));
    json_object_object_add(image_spec, "shape", shape_of(image_shape, 3));
    json_object_object_add(image, "image", image_spec);
    json_object_object_add(image, "pythonClassName",
                           json_object_new_string("tensorflow_datasets.core.features.image_feature.Image"));
    json_object_object_add(observation, "image", image);
    json_object_object_add(steps, "action", tensor_feature("tensorflow_datasets.core.features.tensor_feature.Tensor",
                                                           "float32", &action_dim, 1));
    json_object_object_add(steps, "discount", scalar("float32"));
    json_object_object_add(steps, "is_first", scalar("bool"));
    json_object_object_add(steps, "is_last", scalar("bool"));
    json_object_object_add(steps, "is_terminal", scalar("bool"));
    json_object_object_add(steps, "language_instruction", text);
    json_object_object_add(steps, "observation", features_dict(observation));
    json_object_object_add(steps, "reward", scalar("float32"));
    return features_dict(steps);
}

static bool write_features_json(const RldsWriter *w, const char *path, Error *err) {
    json_object *dataset = json_object_new_object(), *sequence = json_object_new_object();
    json_object *top = json_object_new_object();
    json_object_object_add(dataset, "pythonClassName",
                           json_object_new_string("tensorflow_datasets.core.features.dataset_feature.Dataset"));
    json_object_object_add(sequence, "feature", step_features(w));
    json_object_object_add(sequence, "length", json_object_new_string("-1"));
    json_object_object_add(dataset, "sequence", sequence);
    json_object_object_add(top, "steps", dataset);
    json_object *root = features_dict(top);
    bool ok = json_object_to_file_ext(path, root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED) == 0;
    json_object_put(root);
    return ok || fail(err, "%s: cannot write: %s", path, json_util_get_last_err());
}

static bool write_dataset_info(const RldsWriter *w, const char *path, Error *err) {
    json_object *info = json_object_new_object(), *splits = json_object_new_array(), *split = json_object_new_object();
    json_object *lengths = json_object_new_array();
    for (int i = 0; i < w->n_shards; i++) json_object_array_add(lengths, string_of_int(w->shard_lengths[i]));
    json_object_object_add(split, "filepathTemplate",
                           json_object_new_string("{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"));
    json_object_object_add(split, "name", json_object_new_string(w->split));
    json_object_object_add(split, "numBytes", string_of_int((int64_t)w->total_bytes));
    json_object_object_add(split, "shardLengths", lengths);
    json_object_array_add(splits, split);
    json_object_object_add(info, "fileFormat", json_object_new_string("tfrecord"));
    json_object_object_add(info, "moduleName", json_object_new_string("lora_train"));
    json_object_object_add(info, "name", json_object_new_string(w->name));
    json_object_object_add(info, "splits", splits);
    json_object_object_add(info, "version", json_object_new_string(w->options.version ? w->options.version : "1.0.0"));
    bool ok = json_object_to_file_ext(path, info, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED) == 0;
    json_object_put(info);
    return ok || fail(err, "%s: cannot write: %s", path, json_util_get_last_err());
}

// Every shard renamed to its final name, now that their count is known.
static bool rename_shards(const RldsWriter *w, Error *err) {
    for (int i = 0; i < w->n_shards; i++) {
        char *from = temporary_shard_path(w, i), *to = NULL;
        if (asprintf(&to, "%s/%s-%s.tfrecord-%05d-of-%05d", w->dir, w->name, w->split, i, w->n_shards) < 0) to = NULL;
        bool ok = from && to && rename(from, to) == 0;
        if (!ok) fail(err, "%s: renaming to %s: %s", from ? from : "shard", to ? to : "?", strerror(errno));
        free(from);
        free(to);
        if (!ok) return false;
    }
    return true;
}

static void writer_free(RldsWriter *w) {
    example_encoder_free(&w->encoder);
    free(w->shard_lengths);
    free(w->image_format);
    free(w->split);
    free(w->name);
    free(w->dir);
    free(w);
}

bool rlds_writer_close(RldsWriter *w, Error *err) {
    char path[1200];
    bool ok = close_shard(w, err);
    if (ok && w->total_episodes == 0) ok = fail(err, "%s: no episode written", w->dir);
    ok = ok && rename_shards(w, err);
    snprintf(path, sizeof path, "%s/features.json", w->dir);
    ok = ok && write_features_json(w, path, err);
    snprintf(path, sizeof path, "%s/dataset_info.json", w->dir); // last: the folder is a dataset once it exists
    ok = ok && write_dataset_info(w, path, err);
    writer_free(w);
    return ok;
}

void rlds_writer_abort(RldsWriter *w) {
    if (!w) return;
    Error ignored;
    close_shard(w, &ignored);
    for (int i = 0; i < w->n_shards; i++) {
        char *path = temporary_shard_path(w, i);
        if (path) remove(path);
        free(path);
    }
    writer_free(w);
}
