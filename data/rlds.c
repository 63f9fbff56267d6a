// Robot datasets: RLDS / TFDS folders read episode by episode (one
// tf.train.Example per episode, step fields under "steps/"), and the JSONL form
// (robot_jsonl.c). Instructions and actions stay in memory; a step's image is
// read again from its record (or file) when asked for.
#include <dirent.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data_private.h"

#define DEFAULT_ACTION_DIM 7

static const char *const DEFAULT_IMAGE_KEYS[] = {"observation/image", "observation/image_0", "observation/rgb", "image",
                                                 NULL};
static const char *const DEFAULT_INSTRUCTION_KEYS[] = {"language_instruction", "observation/natural_language_instruction",
                                                       "natural_language_instruction", NULL};
static const char *const DEFAULT_ACTION_KEYS[] = {"action", NULL};

// ----------------------------------------------------------------------------
// the dataset's growing arrays (shared with robot_jsonl.c)

bool robot_grow(void **array, int64_t *capacity, int64_t needed, size_t elem, Error *err) {
    if (needed <= *capacity) return true;
    int64_t grown_capacity = *capacity ? *capacity : 16;
    while (grown_capacity < needed) grown_capacity *= 2;
    void *grown = realloc(*array, (size_t)grown_capacity * elem);
    if (!grown) return fail(err, "out of memory for %lld robot data entries", (long long)needed);
    *array = grown;
    *capacity = grown_capacity;
    return true;
}

// The instruction, shared with the previous step when equal (episodes repeat theirs).
static bool intern_instruction(RobotDataset *d, const char *text, size_t size, const char **out, Error *err) {
    if (d->n_strings && strlen(d->strings[d->n_strings - 1]) == size &&
        memcmp(d->strings[d->n_strings - 1], text, size) == 0) {
        *out = d->strings[d->n_strings - 1];
        return true;
    }
    if (!robot_grow((void **)&d->strings, &d->strings_capacity, d->n_strings + 1, sizeof *d->strings, err))
        return false;
    char *copy = checked_malloc(size + 1, "instruction", err);
    if (!copy) return false;
    memcpy(copy, text, size);
    copy[size] = '\0';
    d->strings[d->n_strings++] = copy;
    *out = copy;
    return true;
}

bool robot_add_step(RobotDataset *d, const char *instruction, size_t instruction_size, const float *action,
                    int step_in_episode, Error *err) {
    int64_t n = d->n_steps;
    if (!robot_grow((void **)&d->steps, &d->steps_capacity, n + 1, sizeof *d->steps, err) ||
        !robot_grow((void **)&d->actions, &d->actions_capacity, (n + 1) * d->action_dim, sizeof *d->actions, err))
        return false;
    RobotStepEntry *entry = &d->steps[n];
    entry->episode = d->stats.episodes;
    entry->step = step_in_episode;
    if (!intern_instruction(d, instruction, instruction_size, &entry->instruction, err)) return false;
    memcpy(d->actions + n * d->action_dim, action, (size_t)d->action_dim * sizeof *action);
    d->n_steps++;
    d->stats.steps++;
    return true;
}

bool robot_skip(RobotDataset *d, int64_t record, SkipReason reason, Error *err, const char *fmt, ...) {
    if (!robot_grow((void **)&d->skipped, &d->skipped_capacity, d->n_skipped + 1, sizeof *d->skipped, err))
        return false;
    SkippedRecord *skip = &d->skipped[d->n_skipped++];
    memset(skip, 0, sizeof *skip);
    skip->record = record;
    skip->reason = reason;
    va_list args;
    va_start(args, fmt);
    vsnprintf(skip->message, sizeof skip->message, fmt, args);
    va_end(args);
    d->stats.skipped[reason]++;
    d->stats.skipped_total++;
    return true;
}

bool robot_action_finite(const float *action, int dim, int *bad_dim) {
    for (int i = 0; i < dim; i++) {
        if (!isfinite(action[i])) {
            *bad_dim = i;
            return false;
        }
    }
    return true;
}

// ----------------------------------------------------------------------------
// RLDS / TFDS folders

static char *join_path(const char *dir, const char *name) {
    char *path;
    return asprintf(&path, "%s/%s", dir, name) < 0 ? NULL : path;
}

static bool has_dataset_info(const char *dir) {
    char *probe = join_path(dir, "dataset_info.json");
    bool found = probe && path_exists(probe);
    free(probe);
    return found;
}

// The folder holding dataset_info.json (malloc'd): path itself, else its
// newest version folder (TFDS lays out <name>/<version>/); NULL when none.
static char *rlds_resolve_dir(const char *path) {
    if (has_dataset_info(path)) return strdup(path);
    struct dirent **entries;
    int n = scandir(path, &entries, NULL, versionsort); // 1.0.0 < 1.0.2 < 10.0.0
    char *found = NULL;
    for (int i = n - 1; i >= 0; i--) {
        char *dir = found || entries[i]->d_name[0] == '.' ? NULL : join_path(path, entries[i]->d_name);
        if (dir && has_dataset_info(dir)) found = dir;
        else free(dir);
        free(entries[i]);
    }
    if (n >= 0) free(entries);
    return found;
}

static bool is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

// dataset_info.json's "name".
static bool rlds_read_name(RobotDataset *d, const char *dir, Error *err) {
    char *path = join_path(dir, "dataset_info.json");
    json_object *info = path ? json_object_from_file(path) : NULL, *name;
    bool ok = info && json_object_object_get_ex(info, "name", &name) && json_object_is_type(name, json_type_string);
    if (ok) d->name = checked_strdup(json_object_get_string(name), err);
    else if (!info) fail(err, "%s/dataset_info.json: not readable JSON: %s", dir, json_util_get_last_err());
    else fail(err, "%s: no \"name\" string", path);
    json_object_put(info);
    free(path);
    return ok && d->name;
}

// features.json's step features: featuresDict.features.steps.sequence.feature.featuresDict.features.
static json_object *step_features(json_object *root) {
    static const char *const PATH[] = {"featuresDict", "features", "steps", "sequence", "feature", "featuresDict",
                                       "features", NULL};
    json_object *node = root;
    for (int i = 0; node && PATH[i]; i++)
        if (!json_object_object_get_ex(node, PATH[i], &node)) node = NULL;
    return node;
}

// The action's length from features.json's shape of it (a step key, nested
// ones through featuresDict.features): 0 when the file, the key or a 1-D shape is absent.
static int features_action_dim(const char *dir, const char *action_key) {
    char *path = join_path(dir, "features.json"), key[256], *save = NULL;
    json_object *root = path ? json_object_from_file(path) : NULL, *node = step_features(root), *dims;
    free(path);
    snprintf(key, sizeof key, "%s", strncmp(action_key, "steps/", 6) == 0 ? action_key + 6 : action_key);
    for (char *part = strtok_r(key, "/", &save); node && part; part = strtok_r(NULL, "/", &save)) {
        if (!json_object_object_get_ex(node, part, &node)) node = NULL;
        else if (*save && (!json_object_object_get_ex(node, "featuresDict", &node) ||
                           !json_object_object_get_ex(node, "features", &node)))
            node = NULL;
    }
    json_object *tensor, *shape;
    int dim = 0;
    if (node && json_object_object_get_ex(node, "tensor", &tensor) && json_object_object_get_ex(tensor, "shape", &shape) &&
        json_object_object_get_ex(shape, "dimensions", &dims) && json_object_array_length(dims) == 1)
        dim = atoi(json_object_get_string(json_object_array_get_idx(dims, 0)));
    json_object_put(root);
    return dim;
}

// "<anything>-<split>.tfrecord-NNNNN-of-NNNNN"
static bool is_split_shard(const char *file, const char *split) {
    char marker[256];
    snprintf(marker, sizeof marker, "-%s.tfrecord-", split);
    const char *at = strstr(file, marker);
    unsigned shard, total;
    int end = 0;
    return at && sscanf(at + strlen(marker), "%5u-of-%5u%n", &shard, &total, &end) == 2 &&
           at[strlen(marker) + (size_t)end] == '\0';
}

static bool rlds_open_shards(RobotDataset *d, const char *dir, Error *err) {
    struct dirent **entries;
    int n = scandir(dir, &entries, NULL, alphasort);
    if (n < 0) return fail(err, "%s: cannot list the folder", dir);
    bool ok = true;
    for (int i = 0; i < n; i++) {
        if (ok && is_split_shard(entries[i]->d_name, d->split)) {
            char *path = join_path(dir, entries[i]->d_name);
            ok = path && robot_grow((void **)&d->shards, &d->shards_capacity, d->n_shards + 1, sizeof *d->shards, err) &&
                 (d->shards[d->n_shards] = tfrecord_open(path, err)) != NULL;
            if (!path) fail(err, "out of memory for a path");
            if (ok) d->n_shards++;
            free(path);
        }
        free(entries[i]);
    }
    free(entries);
    if (ok && d->n_shards == 0)
        return fail(err, "%s: no %s split files (*-%s.tfrecord-NNNNN-of-NNNNN)", dir, d->split, d->split);
    return ok;
}

// "steps/" + key, unless key already starts so.
static void step_key(const char *key, char *out, size_t size) {
    snprintf(out, size, "%s%s", strncmp(key, "steps/", 6) == 0 ? "" : "steps/", key);
}

// The configured key, or the first default present in the example.
static bool resolve_key(const Example *ex, const char *configured, const char *const *defaults, char *out,
                        size_t size) {
    if (configured) {
        step_key(configured, out, size);
        return true;
    }
    for (int i = 0; defaults[i]; i++) {
        step_key(defaults[i], out, size);
        if (example_feature(ex, out)) return true;
    }
    return false;
}

static void list_defaults(const char *const *defaults, char *out, size_t size) {
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; defaults[i] && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%ssteps/%s", i ? ", " : "", defaults[i]);
}

static bool rlds_resolve_keys(RobotDataset *d, const Example *ex, char *why, size_t why_size) {
    if (d->image_key[0]) return true;
    const char *missing = NULL;
    const char *const *defaults = NULL;
    if (!resolve_key(ex, d->options.image_key, DEFAULT_IMAGE_KEYS, d->image_key, sizeof d->image_key))
        missing = "image", defaults = DEFAULT_IMAGE_KEYS;
    else if (!resolve_key(ex, d->options.instruction_key, DEFAULT_INSTRUCTION_KEYS, d->instruction_key,
                          sizeof d->instruction_key))
        missing = "instruction", defaults = DEFAULT_INSTRUCTION_KEYS;
    else if (!resolve_key(ex, d->options.action_key, DEFAULT_ACTION_KEYS, d->action_key, sizeof d->action_key))
        missing = "action", defaults = DEFAULT_ACTION_KEYS;
    if (!missing) return true;
    char tried[512];
    list_defaults(defaults, tried, sizeof tried);
    snprintf(why, why_size, "no %s key (tried %s; set it in the options)", missing, tried);
    d->image_key[0] = d->instruction_key[0] = d->action_key[0] = '\0';
    return false;
}

// The feature under key, of kind, or why not.
static const Feature *typed_feature(const Example *ex, const char *key, FeatureKind kind, char *why, size_t why_size) {
    const Feature *f = example_feature(ex, key);
    if (!f) snprintf(why, why_size, "no feature '%s'", key);
    else if (f->kind != kind)
        snprintf(why, why_size, "feature '%s' is %s, expected %s", key, feature_kind_name(f->kind),
                 feature_kind_name(kind));
    return f && f->kind == kind ? f : NULL;
}

// Checks an episode's features against each other: why is set and the reason
// returned when it is unusable, SKIP_REASON_COUNT when usable.
static SkipReason rlds_check_episode(const RobotDataset *d, const Example *ex, int64_t *n_steps, char *why,
                                     size_t why_size) {
    const Feature *action = typed_feature(ex, d->action_key, FEATURE_FLOATS, why, why_size);
    const Feature *image = action ? typed_feature(ex, d->image_key, FEATURE_BYTES, why, why_size) : NULL;
    const Feature *instruction = image ? typed_feature(ex, d->instruction_key, FEATURE_BYTES, why, why_size) : NULL;
    if (!instruction) return SKIP_BAD_RECORD;
    int dim = d->action_dim, bad_dim;
    if (action->count == 0 || action->count % dim) {
        snprintf(why, why_size, "'%s' holds %lld floats: not steps x %d", d->action_key, (long long)action->count, dim);
        return SKIP_BAD_RECORD;
    }
    *n_steps = action->count / dim;
    if (image->count != *n_steps || (instruction->count != *n_steps && instruction->count != 1)) {
        snprintf(why, why_size, "%lld steps of '%s' but %lld images in '%s' and %lld instructions in '%s'",
                 (long long)*n_steps, d->action_key, (long long)image->count, d->image_key,
                 (long long)instruction->count, d->instruction_key);
        return SKIP_BAD_RECORD;
    }
    for (int64_t t = 0; t < *n_steps; t++) {
        if (!robot_action_finite(action->floats + t * dim, dim, &bad_dim)) {
            snprintf(why, why_size, "step %lld: action[%d] is %g", (long long)t, bad_dim,
                     action->floats[t * dim + bad_dim]);
            return SKIP_BAD_RECORD;
        }
        const ByteView *text = &instruction->bytes[instruction->count == 1 ? 0 : t];
        if (memchr(text->data, 0, text->size)) {
            snprintf(why, why_size, "step %lld: instruction in '%s' holds a NUL byte", (long long)t, d->instruction_key);
            return SKIP_BAD_RECORD;
        }
        if (image->bytes[t].size == 0) {
            snprintf(why, why_size, "step %lld: empty image in '%s'", (long long)t, d->image_key);
            return SKIP_MISSING_IMAGE;
        }
    }
    return SKIP_REASON_COUNT;
}

// With decode_images: every step's image decodes (SKIP_REASON_COUNT), else SKIP_BAD_IMAGE and why.
static SkipReason rlds_decode_images(const RobotDataset *d, const Example *ex, char *why, size_t why_size) {
    const Feature *image = example_feature(ex, d->image_key);
    for (int64_t t = 0; d->options.decode_images && t < image->count; t++) {
        Image decoded = {0};
        Error decode_err;
        char name[32];
        snprintf(name, sizeof name, "step %lld", (long long)t);
        bool ok = image_decode_memory(image->bytes[t].data, image->bytes[t].size, name, &decoded, &decode_err);
        free(decoded.pixels);
        if (!ok) {
            snprintf(why, why_size, "%s", decode_err.message);
            return SKIP_BAD_IMAGE;
        }
    }
    return SKIP_REASON_COUNT;
}

static bool rlds_add_steps(RobotDataset *d, const Example *ex, int64_t n_steps, Error *err) {
    const Feature *action = example_feature(ex, d->action_key);
    const Feature *instruction = example_feature(ex, d->instruction_key);
    for (int64_t t = 0; t < n_steps; t++) {
        const ByteView *text = &instruction->bytes[instruction->count == 1 ? 0 : t];
        if (!robot_add_step(d, (const char *)text->data, text->size, action->floats + t * d->action_dim, (int)t, err))
            return false;
    }
    return true;
}

// One record: parsed, checked, its steps kept, or skipped with the reason.
static bool rlds_add_record(RobotDataset *d, int shard, const uint8_t *data, size_t size, Error *err) {
    TfRecordReader *reader = d->shards[shard];
    int64_t record = d->stats.records++, index = tfrecord_last_index(reader);
    char label[ERROR_MESSAGE_MAX], why[ERROR_MESSAGE_MAX + 32];
    snprintf(label, sizeof label, "%s: record %lld", tfrecord_path(reader), (long long)index);
    Example ex;
    Error parse_err;
    SkipReason reason = SKIP_BAD_RECORD;
    int64_t n_steps = 0;
    if (!example_parse(data, size, &ex, &parse_err)) snprintf(why, sizeof why, "tf.train.Example: %s", parse_err.message);
    else if (!rlds_resolve_keys(d, &ex, why, sizeof why)) reason = SKIP_BAD_RECORD;
    else if ((reason = rlds_check_episode(d, &ex, &n_steps, why, sizeof why)) == SKIP_REASON_COUNT)
        reason = rlds_decode_images(d, &ex, why, sizeof why);
    int64_t first_step = d->n_steps;
    bool added = reason == SKIP_REASON_COUNT && rlds_add_steps(d, &ex, n_steps, err);
    example_free(&ex);
    if (reason != SKIP_REASON_COUNT) {
        return robot_skip(d, record, reason, err, "%s: %s", label, why);
    }
    if (!added) return false;
    if (!robot_grow((void **)&d->episodes, &d->episodes_capacity, d->stats.episodes + 1, sizeof *d->episodes, err))
        return false;
    d->episodes[d->stats.episodes++] = (RobotEpisode){.shard = shard, .offset = tfrecord_last_offset(reader),
                                                      .record_index = index, .first_step = first_step};
    return true;
}

static bool rlds_read_shard(RobotDataset *d, int shard, Error *err) {
    TfRecordReader *reader = d->shards[shard];
    for (;;) {
        const uint8_t *data;
        size_t size;
        Error record_err;
        TfRecordStatus status = tfrecord_next(reader, &data, &size, &record_err);
        if (status == TFRECORD_END) return true;
        if (status == TFRECORD_OK && !rlds_add_record(d, shard, data, size, err)) return false;
        if (status != TFRECORD_OK && !robot_skip(d, d->stats.records++, SKIP_CORRUPT_RECORD, err, "%s", record_err.message))
            return false;
        if (status == TFRECORD_BROKEN) return true;
    }
}

static bool rlds_open(RobotDataset *d, Error *err) {
    char *dir = rlds_resolve_dir(d->options.path);
    if (!dir) return fail(err, "%s: no dataset_info.json (an RLDS / TFDS folder holds it)", d->options.path);
    int dim = d->options.action_dim ? 0 : features_action_dim(dir, d->options.action_key ? d->options.action_key : "action");
    bool ok = dim <= ROBOT_ACTION_DIM_MAX ||
              fail(err, "%s/features.json: actions of %d dimensions (at most %d)", dir, dim, ROBOT_ACTION_DIM_MAX);
    if (dim > 0) d->action_dim = dim;
    ok = ok && rlds_read_name(d, dir, err) && rlds_open_shards(d, dir, err);
    free(dir);
    for (int shard = 0; ok && shard < d->n_shards; shard++) ok = rlds_read_shard(d, shard, err);
    return ok;
}

// ----------------------------------------------------------------------------
// the dataset

bool robot_data_detect(const char *path) {
    if (!is_directory(path)) return robot_jsonl_detect(path);
    char *dir = rlds_resolve_dir(path);
    free(dir);
    return dir != NULL;
}

static bool copy_options(RobotDataset *d, const RobotDataOptions *options, Error *err) {
    d->options = *options;
    d->split = options->split ? options->split : "train";
    d->action_dim = options->action_dim ? options->action_dim : DEFAULT_ACTION_DIM;
    if (d->action_dim < 1 || d->action_dim > ROBOT_ACTION_DIM_MAX)
        return fail(err, "action dimension %d: expected 1 .. %d", d->action_dim, ROBOT_ACTION_DIM_MAX);
    if (!options->path || !options->path[0]) return fail(err, "no robot data path");
    return true;
}

RobotDataset *robot_dataset_open(const RobotDataOptions *options, Error *err) {
    RobotDataset *d = checked_calloc(1, sizeof *d, "robot dataset", err);
    if (!d) return NULL;
    bool ok = copy_options(d, options, err);
    if (ok) {
        d->is_rlds = is_directory(options->path);
        ok = d->is_rlds ? rlds_open(d, err) : robot_jsonl_open(d, err);
    }
    if (ok && d->n_steps == 0) {
        ok = fail(err, "%s: no usable step in %lld records%s%s", options->path, (long long)d->stats.records,
                  d->n_skipped ? "; first problem: " : "", d->n_skipped ? d->skipped[0].message : "");
    }
    if (!ok) {
        robot_dataset_destroy(d);
        return NULL;
    }
    return d;
}

void robot_dataset_destroy(RobotDataset *d) {
    if (!d) return;
    for (int i = 0; i < d->n_shards; i++) tfrecord_close(d->shards[i]);
    for (int64_t i = 0; i < d->n_strings; i++) free(d->strings[i]);
    for (int64_t i = 0; i < d->n_image_paths; i++) free(d->image_paths[i]);
    free(d->image_root);
    image_store_destroy(d->images);
    free(d->image_paths);
    free(d->shards);
    free(d->strings);
    free(d->steps);
    free(d->actions);
    free(d->episodes);
    free(d->skipped);
    free(d->name);
    free(d);
}

const char *robot_dataset_name(const RobotDataset *d) { return d->name; }
bool robot_dataset_is_rlds(const RobotDataset *d) { return d->is_rlds; }
int robot_dataset_action_dim(const RobotDataset *d) { return d->action_dim; }
int64_t robot_dataset_size(const RobotDataset *d) { return d->n_steps; }
const RobotDatasetStats *robot_dataset_stats(const RobotDataset *d) { return &d->stats; }
int64_t robot_dataset_skipped_count(const RobotDataset *d) { return d->n_skipped; }
const SkippedRecord *robot_dataset_skipped(const RobotDataset *d, int64_t i) { return &d->skipped[i]; }

void robot_dataset_keys(const RobotDataset *d, const char **image, const char **instruction, const char **action) {
    *image = d->image_key;
    *instruction = d->instruction_key;
    *action = d->action_key;
}

RobotStep robot_dataset_step(const RobotDataset *d, int64_t i) {
    const RobotStepEntry *entry = &d->steps[i];
    return (RobotStep){.episode = entry->episode, .step = entry->step, .instruction = entry->instruction,
                       .action = d->actions + i * d->action_dim};
}

static bool rlds_image(const RobotDataset *d, int64_t i, Image *out, Error *err) {
    const RobotStepEntry *entry = &d->steps[i];
    const RobotEpisode *episode = &d->episodes[entry->episode];
    const TfRecordReader *reader = d->shards[episode->shard];
    const uint8_t *data;
    size_t size;
    if (!tfrecord_read_at(reader, episode->offset, episode->record_index, &data, &size, err)) return false;
    Example ex;
    char label[ERROR_MESSAGE_MAX];
    snprintf(label, sizeof label, "%s: record %lld step %d", tfrecord_path(reader), (long long)episode->record_index,
             entry->step);
    if (!example_parse(data, size, &ex, err)) return fail_context(err, "%s: tf.train.Example: ", label);
    const Feature *image = example_feature(&ex, d->image_key);
    bool ok = image && image->kind == FEATURE_BYTES && entry->step < image->count;
    if (ok) ok = image_decode_memory(image->bytes[entry->step].data, image->bytes[entry->step].size, label, out, err);
    else fail(err, "%s: the image in '%s' is gone (the file changed since it was opened)", label, d->image_key);
    example_free(&ex);
    return ok;
}

bool robot_dataset_image(const RobotDataset *d, int64_t i, Image *out, Error *err) {
    memset(out, 0, sizeof *out);
    if (i < 0 || i >= d->n_steps) return fail(err, "robot step %lld of %lld", (long long)i, (long long)d->n_steps);
    return d->is_rlds ? rlds_image(d, i, out, err) : robot_jsonl_image(d, i, out, err);
}

bool robot_dataset_check_skips(const RobotDataset *d, double max_fraction, Error *err) {
    const RobotDatasetStats *s = &d->stats;
    if (s->records == 0 || (double)s->skipped_total / (double)s->records <= max_fraction) return true;
    char counts[1024];
    size_t used = 0;
    counts[0] = '\0';
    for (int reason = 0; reason < SKIP_REASON_COUNT && used < sizeof counts; reason++) {
        if (s->skipped[reason])
            used += (size_t)snprintf(counts + used, sizeof counts - used, "%s%s: %lld", used ? ", " : "",
                                     skip_reason_name((SkipReason)reason), (long long)s->skipped[reason]);
    }
    return fail(err, "%s: %lld of %lld records skipped (%.2f%%), over data.max_skip_fraction %.2f%% (%s); first: %s",
                d->options.path, (long long)s->skipped_total, (long long)s->records,
                100.0 * (double)s->skipped_total / (double)s->records, 100.0 * max_fraction, counts,
                d->skipped[0].message);
}
