// Training checkpoints: every file serialised in memory first (so the size is
// exact), written under .partial-step-NNNNNN/, fsynced, re-read and verified,
// a COMPLETE marker with every file's size and checksum written last, then
// renamed to step-NNNNNN/ and named in `latest`.
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#define MARKER_FILE "COMPLETE"
#define MARKER_FORMAT "lora-train checkpoint 1"
#define LATEST_FILE "latest"
#define OPTIMIZER_DIR "optimizer"
#define OPTIMIZER_FILE OPTIMIZER_DIR "/rank-00000.safetensors"
#define STATE_FILE "trainer_state.json"
#define PARTIAL_PREFIX ".partial-"
#define REPLACED_PREFIX ".replaced-"
#define STEP_NAME_MAX 32

// FILE_PROJECTOR only for a model with a projector (empty, unwritten and unlisted otherwise).
enum { FILE_ADAPTER_CONFIG, FILE_ADAPTER_WEIGHTS, FILE_PROJECTOR, FILE_OPTIMIZER, FILE_STATE, FILE_MARKER, N_FILES };
static const char *const FILE_NAMES[N_FILES] = {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PROJECTOR_FILE,
                                                OPTIMIZER_FILE, STATE_FILE, MARKER_FILE};

struct CheckpointImage {
    int step;
    FileImage files[N_FILES];
    FileImage latest; // "step-NNNNNN\n"
};

static void step_name(int step, char *name) { snprintf(name, STEP_NAME_MAX, "step-%06d", step); }

static bool has_projector(Model *model) { return model_params(model)->n_lora < model_params(model)->count; }

static bool in_image(const CheckpointImage *image, int file) { return file != FILE_PROJECTOR || image->files[file].bytes; }

static void hex64(uint64_t value, char *text) { snprintf(text, 17, "%016" PRIx64, value); }

// ----------------------------------------------------------------------------
// serialising

// AdamW moments as two (n,) fp32 tensors, the step count in the metadata.
static bool serialize_optimizer(const CheckpointSource *source, FileImage *out, Error *err) {
    const Ops *ops = model_ops(source->model);
    size_t n = model_params(source->model)->total;
    float *host = checked_malloc(2 * n * sizeof(float) + 1, "AdamW moments", err);
    if (!host) return false;
    if (source->moments_on_host) {
        memcpy(host, source->adam_m, n * sizeof(float));
        memcpy(host + n, source->adam_v, n * sizeof(float));
    } else {
        ops->download(host, source->adam_m, n * sizeof(float));
        ops->download(host + n, source->adam_v, n * sizeof(float));
        ops->synchronize();
    }
    char step_text[24];
    snprintf(step_text, sizeof step_text, "%d", source->state->optimizer_steps);
    const char *metadata[] = {"optimizer", "adamw", "step", step_text, "rank", "0", "world_size", "1"};
    SafetensorsEntry entries[2] = {{"exp_avg", {DTYPE_F32, 1, {(int64_t)n}, host}},
                                   {"exp_avg_sq", {DTYPE_F32, 1, {(int64_t)n}, host + n}}};
    bool ok = safetensors_serialize(OPTIMIZER_FILE, entries, 2, metadata, 4, &out->bytes, &out->size, err);
    free(host);
    return ok;
}

static bool serialize_state(const TrainerState *state, FileImage *out, Error *err) {
    const char *yaml = state->config_yaml ? state->config_yaml : "";
    char seed[24], config_hash[17];
    snprintf(seed, sizeof seed, "%" PRIu64, state->seed);
    hex64(fnv1a64(yaml, strlen(yaml), FNV1A64_INIT), config_hash);
    json_object *obj = json_object_new_object();
    json_object_object_add(obj, "step", json_object_new_int(state->step));
    json_object_object_add(obj, "optimizer_steps", json_object_new_int(state->optimizer_steps));
    json_object_object_add(obj, "epoch", json_object_new_int(state->epoch));
    json_object_object_add(obj, "step_in_epoch", json_object_new_int64(state->step_in_epoch));
    json_object_object_add(obj, "seed", json_object_new_string(seed));
    json_object_object_add(obj, "skipped_steps", json_object_new_int(state->skipped_steps));
    json_object_object_add(obj, "bad_steps", json_object_new_int(state->bad_steps));
    json_object_object_add(obj, "first_loss", json_object_new_double(state->first_loss));
    json_object_object_add(obj, "last_loss", json_object_new_double(state->last_loss));
    json_object_object_add(obj, "config_fnv1a64", json_object_new_string(config_hash));
    json_object_object_add(obj, "config_yaml", json_object_new_string(yaml));
    bool ok = json_to_text(STATE_FILE, obj, out, err);
    json_object_put(obj);
    return ok;
}

// {"format", "step", "files": {name: {"bytes", "fnv1a64"}}} over every other file.
static bool serialize_marker(CheckpointImage *image, Error *err) {
    json_object *obj = json_object_new_object(), *files = json_object_new_object();
    json_object_object_add(obj, "format", json_object_new_string(MARKER_FORMAT));
    json_object_object_add(obj, "step", json_object_new_int(image->step));
    for (int i = 0; i < FILE_MARKER; i++) {
        if (!in_image(image, i)) continue;
        const FileImage *file = &image->files[i];
        char checksum[17];
        hex64(fnv1a64(file->bytes, file->size, FNV1A64_INIT), checksum);
        json_object *entry = json_object_new_object();
        json_object_object_add(entry, "bytes", json_object_new_int64((int64_t)file->size));
        json_object_object_add(entry, "fnv1a64", json_object_new_string(checksum));
        json_object_object_add(files, FILE_NAMES[i], entry);
    }
    json_object_object_add(obj, "files", files);
    bool ok = json_to_text(MARKER_FILE, obj, &image->files[FILE_MARKER], err);
    json_object_put(obj);
    return ok;
}

static bool serialize_latest(CheckpointImage *image, Error *err) {
    char text[STEP_NAME_MAX + 1];
    step_name(image->step, text);
    size_t length = strlen(text);
    text[length++] = '\n';
    image->latest.bytes = checked_malloc(length, LATEST_FILE, err);
    if (!image->latest.bytes) return false;
    memcpy(image->latest.bytes, text, length);
    image->latest.size = length;
    return true;
}

CheckpointImage *checkpoint_image_create(const CheckpointSource *source, Error *err) {
    CheckpointImage *image = checked_calloc(1, sizeof *image, "a checkpoint image", err);
    if (!image) return NULL;
    image->step = source->state->step;
    bool ok = adapter_serialize(source->model, source->adapter, &image->files[FILE_ADAPTER_CONFIG],
                                &image->files[FILE_ADAPTER_WEIGHTS], err) &&
              (!has_projector(source->model) || projector_serialize(source->model, &image->files[FILE_PROJECTOR].bytes,
                                                                    &image->files[FILE_PROJECTOR].size, err)) &&
              serialize_optimizer(source, &image->files[FILE_OPTIMIZER], err) &&
              serialize_state(source->state, &image->files[FILE_STATE], err) && serialize_marker(image, err) &&
              serialize_latest(image, err);
    if (ok) return image;
    checkpoint_image_destroy(image);
    return NULL;
}

void checkpoint_image_destroy(CheckpointImage *image) {
    if (!image) return;
    for (int i = 0; i < N_FILES; i++) file_image_free(&image->files[i]);
    file_image_free(&image->latest);
    free(image);
}

uint64_t checkpoint_image_bytes(const CheckpointImage *image) {
    uint64_t total = image->latest.size;
    for (int i = 0; i < N_FILES; i++) total += image->files[i].size;
    return total;
}

// ----------------------------------------------------------------------------
// writing

static bool write_and_verify(const char *dir, const FileImage *file, const char *name, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    return join_path(path, sizeof path, dir, name, err) && write_file_durable(path, file, err) &&
           verify_file(path, file->size, fnv1a64(file->bytes, file->size, FNV1A64_INIT), err);
}

// Every file, then (once they all verify) the marker.
static bool write_partial(const char *partial, const CheckpointImage *image, Error *err) {
    char optimizer_dir[CHECKPOINT_PATH_MAX];
    if (!join_path(optimizer_dir, sizeof optimizer_dir, partial, OPTIMIZER_DIR, err) || !make_dirs(optimizer_dir, err))
        return false;
    for (int i = 0; i < FILE_MARKER; i++) {
        if (in_image(image, i) && !write_and_verify(partial, &image->files[i], FILE_NAMES[i], err)) return false;
    }
    return sync_dir(optimizer_dir, err) && sync_dir(partial, err) &&
           write_and_verify(partial, &image->files[FILE_MARKER], MARKER_FILE, err) && sync_dir(partial, err);
}

static bool rename_path(const char *from, const char *to, Error *err) {
    if (rename(from, to) != 0) return fail(err, "renaming %s to %s: %s", from, to, strerror(errno));
    return true;
}

// partial -> run_dir/name; an existing folder of that name (a run resumed
// from an older checkpoint) is moved aside first and removed last.
static bool move_into_place(const char *run_dir, const char *partial, const char *name, Error *err) {
    char final[CHECKPOINT_PATH_MAX], replaced[CHECKPOINT_PATH_MAX], replaced_name[64];
    snprintf(replaced_name, sizeof replaced_name, REPLACED_PREFIX "%s", name);
    if (!join_path(final, sizeof final, run_dir, name, err) ||
        !join_path(replaced, sizeof replaced, run_dir, replaced_name, err))
        return false;
    bool exists = path_exists(final);
    if (exists && !(remove_tree(replaced, err) && rename_path(final, replaced, err))) return false;
    if (!rename_path(partial, final, err) || !sync_dir(run_dir, err)) return false;
    return !exists || remove_tree(replaced, err);
}

static bool write_latest(const char *run_dir, const FileImage *latest, Error *err) {
    char temporary[CHECKPOINT_PATH_MAX], path[CHECKPOINT_PATH_MAX];
    return join_path(temporary, sizeof temporary, run_dir, PARTIAL_PREFIX LATEST_FILE, err) &&
           join_path(path, sizeof path, run_dir, LATEST_FILE, err) && write_file_durable(temporary, latest, err) &&
           rename_path(temporary, path, err) && sync_dir(run_dir, err);
}

bool checkpoint_write(const char *run_dir, const CheckpointImage *image, char *path, size_t path_size, Error *err) {
    char name[STEP_NAME_MAX], partial_name[64], partial[CHECKPOINT_PATH_MAX];
    step_name(image->step, name);
    snprintf(partial_name, sizeof partial_name, PARTIAL_PREFIX "%s", name);
    if (!join_path(path, path_size, run_dir, name, err) ||
        !join_path(partial, sizeof partial, run_dir, partial_name, err))
        return false;
    bool ok = make_dirs(run_dir, err) && remove_tree(partial, err) && write_partial(partial, image, err) &&
              move_into_place(run_dir, partial, name, err) && write_latest(run_dir, &image->latest, err);
    if (ok) return true;
    Error ignored;
    remove_tree(partial, &ignored);
    return fail_context(err, "saving checkpoint %s: ", path);
}

bool checkpoint_save(const char *run_dir, const CheckpointSource *source, char *path, size_t path_size, Error *err) {
    CheckpointImage *image = checkpoint_image_create(source, err);
    if (!image) return false;
    bool ok = checkpoint_write(run_dir, image, path, path_size, err);
    checkpoint_image_destroy(image);
    return ok;
}

// ----------------------------------------------------------------------------
// verifying and finding

static bool verify_listed_file(const char *dir, json_object *files, const char *name, Error *err) {
    json_object *entry, *bytes, *checksum;
    char path[CHECKPOINT_PATH_MAX];
    if (!json_object_object_get_ex(files, name, &entry) || !json_object_object_get_ex(entry, "bytes", &bytes) ||
        !json_object_object_get_ex(entry, "fnv1a64", &checksum))
        return fail(err, "%s/" MARKER_FILE ": no size and checksum for %s", dir, name);
    return join_path(path, sizeof path, dir, name, err) &&
           verify_file(path, (uint64_t)json_object_get_int64(bytes),
                       strtoull(json_object_get_string(checksum), NULL, 16), err);
}

bool checkpoint_verify(const char *dir, Error *err) {
    char marker_path[CHECKPOINT_PATH_MAX];
    if (!join_path(marker_path, sizeof marker_path, dir, MARKER_FILE, err)) return false;
    if (!path_exists(marker_path)) return fail(err, "%s: no " MARKER_FILE " marker (an interrupted save?)", dir);
    json_object *marker = read_json_object(marker_path, err), *format, *files;
    if (!marker) return false;
    bool ok = json_object_object_get_ex(marker, "format", &format) &&
              strcmp(json_object_get_string(format), MARKER_FORMAT) == 0 &&
              json_object_object_get_ex(marker, "files", &files);
    if (!ok) fail(err, "%s: not a \"" MARKER_FORMAT "\" marker", marker_path);
    for (int i = 0; ok && i < FILE_MARKER; i++) {
        bool optional_absent = i == FILE_PROJECTOR && !json_object_object_get_ex(files, FILE_NAMES[i], NULL);
        ok = optional_absent || verify_listed_file(dir, files, FILE_NAMES[i], err);
    }
    json_object_put(marker);
    return ok;
}

static int is_step_dir(const struct dirent *entry) { return strncmp(entry->d_name, "step-", 5) == 0; }

// step-* names of run_dir, oldest first (names sort as steps: zero-padded).
static int list_step_dirs(const char *run_dir, struct dirent ***names) {
    return scandir(run_dir, names, is_step_dir, alphasort);
}

static void free_names(struct dirent **names, int count) {
    for (int i = 0; i < count; i++) free(names[i]);
    free(names);
}

static bool latest_named(const char *run_dir, char *path, size_t path_size, Error *err) {
    char latest_path[CHECKPOINT_PATH_MAX], *text;
    size_t size;
    if (!join_path(latest_path, sizeof latest_path, run_dir, LATEST_FILE, err) || !read_file(latest_path, &text, &size, err))
        return false;
    text[strcspn(text, "\n")] = '\0';
    bool ok = strncmp(text, "step-", 5) == 0 && strchr(text, '/') == NULL;
    if (!ok) fail(err, "%s: names no step-NNNNNN folder", latest_path);
    ok = ok && join_path(path, path_size, run_dir, text, err) && checkpoint_verify(path, err);
    free(text);
    return ok;
}

bool checkpoint_find_latest(const char *run_dir, char *path, size_t path_size, Error *err) {
    if (latest_named(run_dir, path, path_size, err)) return true;
    struct dirent **names;
    int count = list_step_dirs(run_dir, &names);
    if (count < 0) return fail(err, "%s: %s", run_dir, strerror(errno));
    bool found = false;
    for (int i = count - 1; !found && i >= 0; i--) {
        Error why;
        found = join_path(path, path_size, run_dir, names[i]->d_name, err) && checkpoint_verify(path, &why);
    }
    free_names(names, count);
    if (!found) return fail(err, "%s: no complete checkpoint", run_dir);
    return true;
}

// ----------------------------------------------------------------------------
// loading

// One moment into dst (backend memory, or host memory when ops is NULL).
static bool load_moment(const SafetensorsFile *file, const char *path, const char *name, size_t n, float *dst,
                        const Ops *ops, Error *err) {
    Tensor t;
    if (!safetensors_get(file, name, &t, err)) return fail_context(err, "%s: ", path);
    if (t.dtype != DTYPE_F32 || t.ndim != 1 || (size_t)t.shape[0] != n)
        return fail(err, "%s: %s must be F32 of shape [%zu] (this model's trainable parameters)", path, name, n);
    if (ops) ops->upload(dst, t.data, n * sizeof(float));
    else memcpy(dst, t.data, n * sizeof(float));
    return true;
}

static bool load_optimizer(const char *dir, Model *model, float *adam_m, float *adam_v, bool on_host,
                           int *optimizer_steps, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    if (!join_path(path, sizeof path, dir, OPTIMIZER_FILE, err)) return false;
    SafetensorsFile *file = safetensors_open(path, err);
    if (!file) return false;
    size_t n = model_params(model)->total;
    const char *step = safetensors_metadata(file, "step"), *world_size = safetensors_metadata(file, "world_size");
    bool ok = step && world_size;
    if (!ok) fail(err, "%s: metadata lacks step or world_size", path);
    else if (strcmp(world_size, "1") != 0) ok = fail(err, "%s: written by %s ranks; one is supported", path, world_size);
    const Ops *ops = on_host ? NULL : model_ops(model);
    ok = ok && load_moment(file, path, "exp_avg", n, adam_m, ops, err) &&
         load_moment(file, path, "exp_avg_sq", n, adam_v, ops, err);
    if (ok) {
        model_ops(model)->synchronize();
        *optimizer_steps = atoi(step);
    }
    safetensors_close(file);
    return ok;
}

static bool get_number(json_object *obj, const char *path, const char *key, double *out, Error *err) {
    json_object *value;
    if (!json_object_object_get_ex(obj, key, &value) ||
        !(json_object_is_type(value, json_type_int) || json_object_is_type(value, json_type_double)))
        return fail(err, "%s: %s is missing or not a number", path, key);
    *out = json_object_get_double(value);
    return true;
}

static bool get_string(json_object *obj, const char *path, const char *key, const char **out, Error *err) {
    json_object *value;
    if (!json_object_object_get_ex(obj, key, &value) || !json_object_is_type(value, json_type_string))
        return fail(err, "%s: %s is missing or not a string", path, key);
    *out = json_object_get_string(value);
    return true;
}

static bool parse_state(json_object *obj, const char *path, TrainerState *state, Error *err) {
    double step, optimizer_steps, epoch, step_in_epoch, skipped, bad;
    const char *seed, *yaml, *config_hash;
    if (!get_number(obj, path, "step", &step, err) || !get_number(obj, path, "optimizer_steps", &optimizer_steps, err) ||
        !get_number(obj, path, "epoch", &epoch, err) || !get_number(obj, path, "step_in_epoch", &step_in_epoch, err) ||
        !get_number(obj, path, "skipped_steps", &skipped, err) || !get_number(obj, path, "bad_steps", &bad, err) ||
        !get_number(obj, path, "first_loss", &state->first_loss, err) ||
        !get_number(obj, path, "last_loss", &state->last_loss, err) || !get_string(obj, path, "seed", &seed, err) ||
        !get_string(obj, path, "config_yaml", &yaml, err) || !get_string(obj, path, "config_fnv1a64", &config_hash, err))
        return false;
    char expected_hash[17];
    hex64(fnv1a64(yaml, strlen(yaml), FNV1A64_INIT), expected_hash);
    if (strcmp(expected_hash, config_hash) != 0)
        return fail(err, "%s: config_yaml does not match its hash %s", path, config_hash);
    *state = (TrainerState){.step = (int)step, .optimizer_steps = (int)optimizer_steps, .epoch = (int)epoch,
                            .step_in_epoch = (int64_t)step_in_epoch, .seed = strtoull(seed, NULL, 10),
                            .skipped_steps = (int)skipped, .bad_steps = (int)bad, .first_loss = state->first_loss,
                            .last_loss = state->last_loss};
    state->config_yaml = checked_strdup(yaml, err);
    return state->config_yaml != NULL;
}

static bool load_state(const char *dir, TrainerState *state, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    if (!join_path(path, sizeof path, dir, STATE_FILE, err)) return false;
    json_object *obj = read_json_object(path, err);
    if (!obj) return false;
    bool ok = parse_state(obj, path, state, err);
    json_object_put(obj);
    return ok;
}

bool checkpoint_load(const char *dir, Model *model, float *adam_m, float *adam_v, bool moments_on_host,
                     TrainerState *state, Error *err) {
    *state = (TrainerState){0};
    int optimizer_steps = 0;
    bool ok = checkpoint_verify(dir, err) && adapter_load(model, dir, err) &&
              load_optimizer(dir, model, adam_m, adam_v, moments_on_host, &optimizer_steps, err) && load_state(dir, state, err);
    if (!ok) return fail_context(err, "loading checkpoint %s: ", dir);
    if (state->optimizer_steps != optimizer_steps)
        return fail(err, "loading checkpoint %s: " STATE_FILE " says %d AdamW steps, " OPTIMIZER_FILE " %d", dir,
                    state->optimizer_steps, optimizer_steps);
    return true;
}

void trainer_state_free(TrainerState *state) {
    free(state->config_yaml);
    state->config_yaml = NULL;
}

// ----------------------------------------------------------------------------
// pruning and free space

static int is_leftover(const struct dirent *entry) {
    return strncmp(entry->d_name, PARTIAL_PREFIX, strlen(PARTIAL_PREFIX)) == 0 ||
           strncmp(entry->d_name, REPLACED_PREFIX, strlen(REPLACED_PREFIX)) == 0;
}

static bool remove_named(const char *run_dir, struct dirent **names, int count, Error *err) {
    bool ok = true;
    for (int i = 0; ok && i < count; i++) {
        char path[CHECKPOINT_PATH_MAX];
        ok = join_path(path, sizeof path, run_dir, names[i]->d_name, err) && remove_tree(path, err);
    }
    return ok;
}

static bool is_complete(const char *run_dir, const char *name) {
    char path[CHECKPOINT_PATH_MAX];
    return snprintf(path, sizeof path, "%s/%s/" MARKER_FILE, run_dir, name) < (int)sizeof path && path_exists(path);
}

bool checkpoint_prune(const char *run_dir, int keep, Error *err) {
    if (keep < 1) keep = 1;
    struct dirent **leftovers, **steps;
    int n_leftovers = scandir(run_dir, &leftovers, is_leftover, alphasort);
    if (n_leftovers < 0) return fail(err, "%s: %s", run_dir, strerror(errno));
    bool ok = remove_named(run_dir, leftovers, n_leftovers, err);
    free_names(leftovers, n_leftovers);
    if (!ok) return false;
    int count = list_step_dirs(run_dir, &steps);
    if (count < 0) return fail(err, "%s: %s", run_dir, strerror(errno));
    int n_complete = 0;
    for (int i = 0; i < count; i++) {
        if (is_complete(run_dir, steps[i]->d_name)) steps[n_complete++] = steps[i];
        else free(steps[i]);
    }
    ok = remove_named(run_dir, steps, n_complete > keep ? n_complete - keep : 0, err);
    free_names(steps, n_complete);
    return ok && sync_dir(run_dir, err);
}

bool disk_free_bytes(const char *path, uint64_t *free_bytes, Error *err) {
    char existing[CHECKPOINT_PATH_MAX];
    if (snprintf(existing, sizeof existing, "%s", path) >= (int)sizeof existing) return fail(err, "path too long: %s", path);
    while (!path_exists(existing)) {
        char *slash = strrchr(existing, '/');
        if (!slash) {
            snprintf(existing, sizeof existing, ".");
            break;
        }
        *(slash == existing ? slash + 1 : slash) = '\0';
    }
    struct statvfs fs;
    if (statvfs(existing, &fs) != 0) return fail(err, "%s: statvfs: %s", existing, strerror(errno));
    *free_bytes = (uint64_t)fs.f_bavail * fs.f_frsize;
    return true;
}
