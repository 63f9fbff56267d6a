// Training checkpoints: every file serialised in memory first (so the size is
// exact), written under .partial-step-NNNNNN/, fsynced, re-read and verified,
// a COMPLETE marker with every file's size and checksum written last, then
// renamed to step-NNNNNN/ and named in `latest`. With several ranks each
// writes its own optimizer shard file and rank 0 the rest; resume reads the
// shard files' ranges whatever the number of ranks that wrote them.
#include "checkpoints.h"
#include "checkpoints_internal.h"
#include "checkpoints_testing.h"

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
#define OPTIMIZER_FILE_FORMAT OPTIMIZER_DIR "/rank-%05d.safetensors"
#define OPTIMIZER_NAME_MAX 48
#define STATE_FILE "trainer_state.json"
#define PARTIAL_PREFIX ".partial-"
#define REPLACED_PREFIX ".replaced-"
#define PRUNED_PREFIX ".pruned-"
#define STEP_NAME_MAX 32

// Rank 0's files besides its optimizer shard, then the marker. FILE_PROJECTOR:
// checkpoints saved before the projector moved into the adapter file list it;
// new ones leave it empty, unwritten and unlisted.
enum { FILE_ADAPTER_CONFIG, FILE_ADAPTER_WEIGHTS, FILE_PROJECTOR, FILE_STATE, FILE_MARKER, N_FILES };
static const char *const FILE_NAMES[N_FILES] = {ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PROJECTOR_FILE, STATE_FILE,
                                                MARKER_FILE};

// One rank's part: every file on rank 0, the optimizer shard alone elsewhere.
struct CheckpointImage {
    int step, rank, world_size;
    size_t total;              // trainable parameters: the shards must tile [0, total)
    FileImage optimizer;       // optimizer/rank-NNNNN.safetensors
    FileImage files[N_FILES];  // rank 0 only; the marker lists this rank's shard alone
    FileImage latest;          // "step-NNNNNN\n", rank 0 only
};

static void step_name(int step, char *name) { snprintf(name, STEP_NAME_MAX, "step-%06d", step); }

static bool in_image(const CheckpointImage *image, int file) { return file != FILE_PROJECTOR || image->files[file].bytes; }

static void optimizer_name(int rank, char *name) { snprintf(name, OPTIMIZER_NAME_MAX, OPTIMIZER_FILE_FORMAT, rank); }

static FileDigest digest_of(const FileImage *file) {
    return (FileDigest){file->size, fnv1a64(file->bytes, file->size, FNV1A64_INIT)};
}

static void hex64(uint64_t value, char *text) { snprintf(text, 17, "%016" PRIx64, value); }

// ----------------------------------------------------------------------------
// serialising

// This rank's shard [begin, end) of the AdamW moments as two (end - begin,)
// fp32 tensors; the step, the range and the buffer's size in the metadata.
static bool serialize_optimizer(const CheckpointSource *source, CheckpointImage *image, Error *err) {
    const Ops *ops = model_ops(source->model);
    size_t total = model_params(source->model)->total;
    bool whole = source->world_size == 0;
    size_t begin = whole ? 0 : source->shard_begin, count = whole ? total : source->shard_count;
    if (begin + count > total)
        return fail(err, "optimizer shard [%zu, %zu) of rank %d is outside the %zu trainable parameters", begin,
                    begin + count, source->rank, total);
    float *host = checked_malloc(2 * count * sizeof(float) + 1, "AdamW moments", err);
    if (!host) return false;
    if (source->moments_on_host) {
        memcpy(host, source->adam_m, count * sizeof(float));
        memcpy(host + count, source->adam_v, count * sizeof(float));
    } else {
        ops->download(ops, host, source->adam_m, count * sizeof(float));
        ops->download(ops, host + count, source->adam_v, count * sizeof(float));
        ops->synchronize(ops);
    }
    char step[24], rank[24], world_size[24], begin_text[24], end_text[24], total_text[24], name[OPTIMIZER_NAME_MAX];
    snprintf(step, sizeof step, "%d", source->state->optimizer_steps);
    snprintf(rank, sizeof rank, "%d", image->rank);
    snprintf(world_size, sizeof world_size, "%d", image->world_size);
    snprintf(begin_text, sizeof begin_text, "%zu", begin);
    snprintf(end_text, sizeof end_text, "%zu", begin + count);
    snprintf(total_text, sizeof total_text, "%zu", total);
    optimizer_name(image->rank, name);
    const char *metadata[] = {"optimizer", "adamw", "step", step, "rank", rank, "world_size", world_size,
                              "begin", begin_text, "end", end_text, "total", total_text};
    SafetensorsEntry entries[2] = {{"exp_avg", {DTYPE_F32, 1, {(int64_t)count}, host}},
                                   {"exp_avg_sq", {DTYPE_F32, 1, {(int64_t)count}, host + count}}};
    bool ok = safetensors_serialize(name, entries, 2, metadata, 7, &image->optimizer.bytes, &image->optimizer.size, err);
    free(host);
    return ok;
}

static json_object *number_array(const double *values, int n) {
    json_object *array = json_object_new_array();
    for (int i = 0; i < n; i++) json_object_array_add(array, json_object_new_double(values[i]));
    return array;
}

static bool serialize_state(const TrainerState *state, int world_size, FileImage *out, Error *err) {
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
    json_object_object_add(obj, "world_size", json_object_new_int(world_size));
    json_object_object_add(obj, "first_loss", json_object_new_double(state->first_loss));
    json_object_object_add(obj, "last_loss", json_object_new_double(state->last_loss));
    json_object_object_add(obj, "best_eval_step", json_object_new_int(state->best_eval_step));
    if (state->best_eval_step > 0)
        json_object_object_add(obj, "best_eval_loss", json_object_new_double(state->best_eval_loss));
    json_object_object_add(obj, "recent_losses", number_array(state->recent_loss, state->n_recent));
    json_object_object_add(obj, "recent_grad_norms", number_array(state->recent_norm, state->n_recent));
    json_object_object_add(obj, "config_fnv1a64", json_object_new_string(config_hash));
    json_object_object_add(obj, "config_yaml", json_object_new_string(yaml));
    bool ok = json_to_text(STATE_FILE, obj, out, err);
    json_object_put(obj);
    return ok;
}

static void add_file_entry(json_object *files, const char *name, FileDigest digest) {
    char checksum[17];
    hex64(digest.fnv1a64, checksum);
    json_object *entry = json_object_new_object();
    json_object_object_add(entry, "bytes", json_object_new_int64((int64_t)digest.bytes));
    json_object_object_add(entry, "fnv1a64", json_object_new_string(checksum));
    json_object_object_add(files, name, entry);
}

// {"format", "step", "world_size", "files": {name: {"bytes", "fnv1a64"}}}
// over rank 0's files and every rank's optimizer shard (digests[world_size]).
static bool serialize_marker(const CheckpointImage *image, const FileDigest *digests, FileImage *out, Error *err) {
    json_object *obj = json_object_new_object(), *files = json_object_new_object();
    json_object_object_add(obj, "format", json_object_new_string(MARKER_FORMAT));
    json_object_object_add(obj, "step", json_object_new_int(image->step));
    json_object_object_add(obj, "world_size", json_object_new_int(image->world_size));
    for (int i = 0; i < FILE_MARKER; i++) {
        if (in_image(image, i)) add_file_entry(files, FILE_NAMES[i], digest_of(&image->files[i]));
    }
    for (int rank = 0; rank < image->world_size; rank++) {
        char name[OPTIMIZER_NAME_MAX];
        optimizer_name(rank, name);
        add_file_entry(files, name, digests[rank]);
    }
    json_object_object_add(obj, "files", files);
    bool ok = json_to_text(MARKER_FILE, obj, out, err);
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

// Rank 0's files; the marker sized as if every shard file were as large as its own.
static bool serialize_rank0_files(const CheckpointSource *source, CheckpointImage *image, Error *err) {
    if (!adapter_serialize(source->model, source->adapter, &image->files[FILE_ADAPTER_CONFIG],
                           &image->files[FILE_ADAPTER_WEIGHTS], err) ||
        !serialize_state(source->state, image->world_size, &image->files[FILE_STATE], err) || !serialize_latest(image, err))
        return false;
    FileDigest *digests = checked_malloc((size_t)image->world_size * sizeof *digests, "shard digests", err);
    if (!digests) return false;
    for (int rank = 0; rank < image->world_size; rank++) digests[rank] = digest_of(&image->optimizer);
    bool ok = serialize_marker(image, digests, &image->files[FILE_MARKER], err);
    free(digests);
    return ok;
}

CheckpointImage *checkpoint_image_create(const CheckpointSource *source, Error *err) {
    CheckpointImage *image = checked_calloc(1, sizeof *image, "a checkpoint image", err);
    if (!image) return NULL;
    *image = (CheckpointImage){.step = source->state->step, .rank = source->world_size ? source->rank : 0,
                               .world_size = source->world_size ? source->world_size : 1,
                               .total = model_params(source->model)->total};
    bool ok = serialize_optimizer(source, image, err) && (image->rank != 0 || serialize_rank0_files(source, image, err));
    if (ok) return image;
    checkpoint_image_destroy(image);
    return NULL;
}

void checkpoint_image_destroy(CheckpointImage *image) {
    if (!image) return;
    file_image_free(&image->optimizer);
    for (int i = 0; i < N_FILES; i++) file_image_free(&image->files[i]);
    file_image_free(&image->latest);
    free(image);
}

uint64_t checkpoint_image_bytes(const CheckpointImage *image) {
    uint64_t total = image->optimizer.size + image->latest.size;
    for (int i = 0; i < N_FILES; i++) total += image->files[i].size;
    return total;
}

uint64_t checkpoint_image_shard_bytes(const CheckpointImage *image) { return image->optimizer.size; }

// ----------------------------------------------------------------------------
// writing

static bool write_and_verify(const char *dir, const FileImage *file, const char *name, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    return join_path(path, sizeof path, dir, name, err) && write_file_durable(path, file, err) &&
           verify_file(path, file->size, digest_of(file).fnv1a64, err);
}

static bool partial_path(const char *run_dir, int step, char *partial, size_t size, Error *err) {
    char name[STEP_NAME_MAX], partial_name[64];
    step_name(step, name);
    snprintf(partial_name, sizeof partial_name, PARTIAL_PREFIX "%s", name);
    return join_path(partial, size, run_dir, partial_name, err);
}

// Each shard file, as its rank wrote it, re-read from the disk by rank 0.
static bool verify_shards(const char *partial, const FileDigest *digests, int world_size, Error *err) {
    for (int rank = 0; rank < world_size; rank++) {
        char name[OPTIMIZER_NAME_MAX], path[CHECKPOINT_PATH_MAX];
        optimizer_name(rank, name);
        if (!join_path(path, sizeof path, partial, name, err) ||
            !verify_file(path, digests[rank].bytes, digests[rank].fnv1a64, err))
            return false;
    }
    return true;
}

static bool shard_ranges_tile(const char *dir, size_t total, Error *err);

// Rank 0's files, then (once they and every shard verify, and the shards'
// ranges are what a load accepts) the marker.
static bool write_rank0_files(const char *partial, const CheckpointImage *image, const FileDigest *digests,
                              Error *err) {
    char optimizer_dir[CHECKPOINT_PATH_MAX];
    for (int i = 0; i < FILE_MARKER; i++) {
        if (in_image(image, i) && !write_and_verify(partial, &image->files[i], FILE_NAMES[i], err)) return false;
    }
    FileImage marker = {0};
    bool ok = join_path(optimizer_dir, sizeof optimizer_dir, partial, OPTIMIZER_DIR, err) &&
              verify_shards(partial, digests, image->world_size, err) &&
              shard_ranges_tile(partial, image->total, err) && sync_dir(optimizer_dir, err) &&
              sync_dir(partial, err) && serialize_marker(image, digests, &marker, err) &&
              write_and_verify(partial, &marker, MARKER_FILE, err) && sync_dir(partial, err);
    file_image_free(&marker);
    return ok;
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
    if (exists && !(remove_folder(replaced, err) && rename_path(final, replaced, err))) return false;
    if (!rename_path(partial, final, err) || !sync_dir(run_dir, err)) return false;
    return !exists || remove_folder(replaced, err);
}

static bool write_latest(const char *run_dir, const FileImage *latest, Error *err) {
    char temporary[CHECKPOINT_PATH_MAX], path[CHECKPOINT_PATH_MAX];
    return join_path(temporary, sizeof temporary, run_dir, PARTIAL_PREFIX LATEST_FILE, err) &&
           join_path(path, sizeof path, run_dir, LATEST_FILE, err) && write_file_durable(temporary, latest, err) &&
           rename_path(temporary, path, err) && sync_dir(run_dir, err);
}

bool checkpoint_write_begin(const char *run_dir, const CheckpointImage *image, Error *err) {
    char partial[CHECKPOINT_PATH_MAX], optimizer_dir[CHECKPOINT_PATH_MAX];
    bool ok = partial_path(run_dir, image->step, partial, sizeof partial, err) && make_dirs(run_dir, err) &&
              remove_folder(partial, err) && join_path(optimizer_dir, sizeof optimizer_dir, partial, OPTIMIZER_DIR, err) &&
              make_dirs(optimizer_dir, err);
    if (!ok) return fail_context(err, "saving checkpoint step %d in %s: ", image->step, run_dir);
    return true;
}

bool checkpoint_write_shard(const char *run_dir, const CheckpointImage *image, FileDigest *digest, Error *err) {
    char partial[CHECKPOINT_PATH_MAX], name[OPTIMIZER_NAME_MAX];
    optimizer_name(image->rank, name);
    *digest = digest_of(&image->optimizer);
    bool ok = partial_path(run_dir, image->step, partial, sizeof partial, err) &&
              write_and_verify(partial, &image->optimizer, name, err);
    if (!ok) return fail_context(err, "saving rank %d's optimizer shard of step %d: ", image->rank, image->step);
    return true;
}

bool checkpoint_write_finish(const char *run_dir, const CheckpointImage *image, const FileDigest *digests, char *path,
                             size_t path_size, Error *err) {
    char name[STEP_NAME_MAX], partial[CHECKPOINT_PATH_MAX];
    step_name(image->step, name);
    bool ok = join_path(path, path_size, run_dir, name, err) &&
              partial_path(run_dir, image->step, partial, sizeof partial, err) &&
              write_rank0_files(partial, image, digests, err) && move_into_place(run_dir, partial, name, err) &&
              write_latest(run_dir, &image->latest, err);
    if (ok) return true;
    checkpoint_write_abandon(run_dir, image);
    return fail_context(err, "saving checkpoint %s/%s: ", run_dir, name);
}

void checkpoint_write_abandon(const char *run_dir, const CheckpointImage *image) {
    char partial[CHECKPOINT_PATH_MAX];
    Error ignored;
    if (partial_path(run_dir, image->step, partial, sizeof partial, &ignored)) remove_folder(partial, &ignored);
}

bool checkpoint_write(const char *run_dir, const CheckpointImage *image, char *path, size_t path_size, Error *err) {
    if (image->world_size != 1) return fail(err, "checkpoint_write: the image is one of %d ranks' parts", image->world_size);
    FileDigest digest;
    if (!checkpoint_write_begin(run_dir, image, err)) return false;
    if (!checkpoint_write_shard(run_dir, image, &digest, err)) {
        checkpoint_write_abandon(run_dir, image);
        return false;
    }
    return checkpoint_write_finish(run_dir, image, &digest, path, path_size, err);
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
    json_object *world_size_value;
    int world_size = json_object_object_get_ex(marker, "world_size", &world_size_value)
                         ? json_object_get_int(world_size_value) : 1;
    if (ok && world_size < 1) ok = fail(err, "%s: world_size %d", marker_path, world_size);
    for (int rank = 0; ok && rank < world_size; rank++) {
        char name[OPTIMIZER_NAME_MAX];
        optimizer_name(rank, name);
        ok = verify_listed_file(dir, files, name, err);
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

// The elements [begin, begin + count) of the flat buffer, gathered from the
// shard files of however many ranks wrote the checkpoint, into dst_m / dst_v.
typedef struct ShardRequest {
    size_t total, begin, count;
    float *dst_m, *dst_v;  // backend memory, or host memory when ops is NULL
    const Ops *ops;
} ShardRequest;

static bool metadata_size(const SafetensorsFile *file, const char *path, const char *key, size_t *out, Error *err) {
    const char *text = safetensors_metadata(file, key);
    char *end;
    unsigned long long value = text ? strtoull(text, &end, 10) : 0;
    if (!text || end == text || *end) return fail(err, "%s: metadata %s is missing or not a count", path, key);
    *out = (size_t)value;
    return true;
}

// [*begin, *end) of a shard file; files of the single-rank format without a
// range hold the whole buffer.
static bool shard_range(const SafetensorsFile *file, const char *path, size_t total, size_t *begin, size_t *end,
                        Error *err) {
    if (!safetensors_metadata(file, "begin")) {
        *begin = 0, *end = total;
        return true;
    }
    return metadata_size(file, path, "begin", begin, err) && metadata_size(file, path, "end", end, err);
}

// dst[lo - request begin, hi - request begin) = the file's elements [lo, hi).
static bool copy_overlap(const SafetensorsFile *file, const char *path, const char *name, size_t file_begin,
                         size_t file_end, const ShardRequest *request, float *dst, Error *err) {
    Tensor t;
    if (!safetensors_get(file, name, &t, err)) return fail_context(err, "%s: ", path);
    if (t.dtype != DTYPE_F32 || t.ndim != 1 || (size_t)t.shape[0] != file_end - file_begin)
        return fail(err, "%s: %s must be F32 of shape [%zu] (its range [%zu, %zu))", path, name, file_end - file_begin,
                    file_begin, file_end);
    size_t lo = file_begin > request->begin ? file_begin : request->begin;
    size_t request_end = request->begin + request->count, hi = file_end < request_end ? file_end : request_end;
    if (lo >= hi) return true;
    const float *src = (const float *)t.data + (lo - file_begin);
    size_t bytes = (hi - lo) * sizeof(float);
    if (request->ops)
        request->ops->upload(request->ops, dst + (lo - request->begin), src, bytes);
    else memcpy(dst + (lo - request->begin), src, bytes);
    return true;
}

// One rank's file: its range must start where the previous one ended.
static bool load_shard_file(const char *dir, int rank, const ShardRequest *request, size_t *covered, int *step,
                            int *world_size, Error *err) {
    char name[OPTIMIZER_NAME_MAX], path[CHECKPOINT_PATH_MAX];
    optimizer_name(rank, name);
    if (!join_path(path, sizeof path, dir, name, err)) return false;
    SafetensorsFile *file = safetensors_open(path, err);
    if (!file) return false;
    const char *step_text = safetensors_metadata(file, "step"), *world_text = safetensors_metadata(file, "world_size");
    size_t begin, end;
    bool ok = step_text && world_text;
    if (!ok) fail(err, "%s: metadata lacks step or world_size", path);
    ok = ok && shard_range(file, path, request->total, &begin, &end, err);
    if (ok && (begin != *covered || end < begin || end > request->total))
        ok = fail(err, "%s: range [%zu, %zu) does not continue the shards before it at %zu of %zu parameters", path,
                  begin, end, *covered, request->total);
    if (ok && rank > 0 && (atoi(step_text) != *step || atoi(world_text) != *world_size))
        ok = fail(err, "%s: step %s of %s ranks, rank 0's file says step %d of %d", path, step_text, world_text, *step,
                  *world_size);
    if (ok && rank == 0) *step = atoi(step_text), *world_size = atoi(world_text);
    ok = ok && copy_overlap(file, path, "exp_avg", begin, end, request, request->dst_m, err) &&
         copy_overlap(file, path, "exp_avg_sq", begin, end, request, request->dst_v, err);
    if (ok) *covered = end;
    safetensors_close(file);
    return ok;
}

static bool load_optimizer(const char *dir, const ShardRequest *request, int *optimizer_steps, Error *err) {
    size_t covered = 0;
    int world_size = 1;
    for (int rank = 0; rank < world_size; rank++) {
        if (!load_shard_file(dir, rank, request, &covered, optimizer_steps, &world_size, err)) return false;
    }
    if (covered != request->total)
        return fail(err, "%s: the optimizer shards of %d ranks cover %zu of %zu trainable parameters", dir, world_size,
                    covered, request->total);
    return true;
}

// The shard files of dir tile [0, total) as load_optimizer requires (nothing copied).
static bool shard_ranges_tile(const char *dir, size_t total, Error *err) {
    ShardRequest ranges_only = {.total = total};
    int optimizer_steps;
    return load_optimizer(dir, &ranges_only, &optimizer_steps, err);
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

// values[n] from the array obj[key] (absent: n = 0, as in checkpoints older than the outlier window).
static bool get_numbers(json_object *obj, const char *path, const char *key, double *values, int *n, Error *err) {
    json_object *array;
    *n = 0;
    if (!json_object_object_get_ex(obj, key, &array)) return true;
    if (!json_object_is_type(array, json_type_array) || json_object_array_length(array) > RECENT_STEPS_MAX)
        return fail(err, "%s: %s is not an array of at most %d numbers", path, key, RECENT_STEPS_MAX);
    for (size_t i = 0; i < json_object_array_length(array); i++) {
        json_object *value = json_object_array_get_idx(array, i);
        if (!json_object_is_type(value, json_type_int) && !json_object_is_type(value, json_type_double))
            return fail(err, "%s: %s[%zu] is not a number", path, key, i);
        values[(*n)++] = json_object_get_double(value);
    }
    return true;
}

// The outlier window: as many gradient norms as losses.
static bool parse_recent(json_object *obj, const char *path, TrainerState *state, Error *err) {
    int n_norms;
    if (!get_numbers(obj, path, "recent_losses", state->recent_loss, &state->n_recent, err) ||
        !get_numbers(obj, path, "recent_grad_norms", state->recent_norm, &n_norms, err))
        return false;
    if (n_norms != state->n_recent)
        return fail(err, "%s: %d recent_losses but %d recent_grad_norms", path, state->n_recent, n_norms);
    return true;
}

// The best evaluation so far, absent from checkpoints of runs without one.
static bool parse_best_eval(json_object *obj, const char *path, TrainerState *state, Error *err) {
    json_object *step;
    if (!json_object_object_get_ex(obj, "best_eval_step", &step)) return true;
    if (!json_object_is_type(step, json_type_int) || json_object_get_int(step) < 0)
        return fail(err, "%s: best_eval_step is not a step number", path);
    state->best_eval_step = json_object_get_int(step);
    return state->best_eval_step == 0 || get_number(obj, path, "best_eval_loss", &state->best_eval_loss, err);
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
    json_object *world_size;
    state->world_size = json_object_object_get_ex(obj, "world_size", &world_size) ? json_object_get_int(world_size) : 1;
    if (!parse_recent(obj, path, state, err) || !parse_best_eval(obj, path, state, err)) return false;
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

bool checkpoint_load_shard(const char *dir, Model *model, float *adam_m, float *adam_v, bool moments_on_host,
                           size_t shard_begin, size_t shard_count, TrainerState *state, Error *err) {
    *state = (TrainerState){0};
    ShardRequest request = {.total = model_params(model)->total, .begin = shard_begin, .count = shard_count,
                            .dst_m = adam_m, .dst_v = adam_v, .ops = moments_on_host ? NULL : model_ops(model)};
    if (shard_begin + shard_count > request.total)
        return fail(err, "loading checkpoint %s: shard [%zu, %zu) is outside the %zu trainable parameters", dir,
                    shard_begin, shard_begin + shard_count, request.total);
    int optimizer_steps = 0;
    bool ok = checkpoint_verify(dir, err) && adapter_load(model, dir, err) &&
              load_optimizer(dir, &request, &optimizer_steps, err) && load_state(dir, state, err);
    const Ops *ops = model_ops(model);
    ops->synchronize(ops);
    if (!ok) return fail_context(err, "loading checkpoint %s: ", dir);
    if (state->optimizer_steps != optimizer_steps)
        return fail(err, "loading checkpoint %s: " STATE_FILE " says %d AdamW steps, the optimizer shards %d", dir,
                    state->optimizer_steps, optimizer_steps);
    return true;
}

bool checkpoint_load(const char *dir, Model *model, float *adam_m, float *adam_v, bool moments_on_host,
                     TrainerState *state, Error *err) {
    return checkpoint_load_shard(dir, model, adam_m, adam_v, moments_on_host, 0, model_params(model)->total, state,
                                 err);
}

void trainer_state_free(TrainerState *state) {
    free(state->config_yaml);
    state->config_yaml = NULL;
}

// ----------------------------------------------------------------------------
// pruning and free space

static bool has_prefix(const char *name, const char *prefix) { return strncmp(name, prefix, strlen(prefix)) == 0; }

static int is_leftover(const struct dirent *entry) {
    return has_prefix(entry->d_name, PARTIAL_PREFIX) || has_prefix(entry->d_name, REPLACED_PREFIX) ||
           has_prefix(entry->d_name, PRUNED_PREFIX);
}

static bool remove_named(const char *run_dir, struct dirent **names, int count, Error *err) {
    bool ok = true;
    for (int i = 0; ok && i < count; i++) {
        char path[CHECKPOINT_PATH_MAX];
        ok = join_path(path, sizeof path, run_dir, names[i]->d_name, err) && remove_folder(path, err);
    }
    return ok;
}

// Takes each checkpoint out of the step-* namespace in one durable rename
// (.pruned-step-NNNNNN, a leftover), then deletes it: a crash part-way
// never leaves a step folder that has COMPLETE but lacks files.
static bool prune_named(const char *run_dir, struct dirent **names, int count, Error *err) {
    bool ok = true;
    for (int i = 0; ok && i < count; i++) {
        char path[CHECKPOINT_PATH_MAX], pruned_name[64], pruned[CHECKPOINT_PATH_MAX];
        snprintf(pruned_name, sizeof pruned_name, PRUNED_PREFIX "%.40s", names[i]->d_name);
        ok = join_path(path, sizeof path, run_dir, names[i]->d_name, err) &&
             join_path(pruned, sizeof pruned, run_dir, pruned_name, err) && rename_path(path, pruned, err) &&
             sync_dir(run_dir, err) && remove_folder(pruned, err);
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
    ok = prune_named(run_dir, steps, n_complete > keep ? n_complete - keep : 0, err);
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
