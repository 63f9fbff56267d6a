// safetensors reader (memory-mapped, every offset checked) and writer.
//
// Layout: u64 little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
// then the data section; a tensor's bytes are data[b, e).
#include "checkpoints.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_MAX_BYTES 100000000ull // the reference implementation's cap

typedef struct TensorInfo {
    const char *name; // owned by the parsed header
    Tensor tensor;    // data points into the mapping
    uint64_t begin, end;
} TensorInfo;

struct SafetensorsFile {
    char *path;
    uint8_t *map;
    size_t map_size;
    json_object *header;
    json_object *metadata; // borrowed from header, or NULL
    TensorInfo *tensors;   // sorted by data offset
    int count;
};

// ----------------------------------------------------------------------------
// header checks

// Top-level keys as they appear in the raw JSON: json-c keeps only the last of
// duplicated keys, so duplicates are found on the text. The JSON is already
// known valid; a key is the last string before a ':' at depth 1.
typedef struct RawKey {
    const char *start;
    size_t length;
} RawKey;

static int count_raw_keys(const char *json, size_t n, RawKey *keys) {
    int depth = 0, count = 0;
    RawKey last = {0};
    for (size_t i = 0; i < n; i++) {
        char c = json[i];
        if (c == '"') {
            size_t start = ++i;
            while (i < n && json[i] != '"') i += json[i] == '\\' ? 2 : 1;
            last = (RawKey){json + start, i - start};
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ':' && depth == 1) {
            if (keys) keys[count] = last;
            count++;
        }
    }
    return count;
}

static int compare_raw_keys(const void *a, const void *b) {
    const RawKey *x = a, *y = b;
    size_t n = x->length < y->length ? x->length : y->length;
    int c = memcmp(x->start, y->start, n);
    return c ? c : (x->length > y->length) - (x->length < y->length);
}

static bool check_unique_keys(const char *path, const char *json, size_t n, int n_parsed, Error *err) {
    int n_raw = count_raw_keys(json, n, NULL);
    if (n_raw == n_parsed) return true;
    RawKey *keys = checked_malloc((size_t)n_raw * sizeof *keys, path, err);
    if (!keys) return false;
    count_raw_keys(json, n, keys);
    qsort(keys, (size_t)n_raw, sizeof *keys, compare_raw_keys);
    int dup = 0;
    while (dup + 1 < n_raw && compare_raw_keys(&keys[dup], &keys[dup + 1]) != 0) dup++;
    fail(err, "%s: tensor \"%.*s\" appears more than once in the header", path,
         (int)keys[dup].length, keys[dup].start);
    free(keys);
    return false;
}

// Non-negative integer JSON value into *out.
static bool json_to_u64(json_object *value, uint64_t *out) {
    if (!json_object_is_type(value, json_type_int)) return false;
    errno = 0;
    int64_t v = json_object_get_int64(value);
    if (v < 0 || errno == EINVAL) return false;
    *out = (uint64_t)v;
    return true;
}

static bool parse_shape(const char *path, const char *name, json_object *shape, Tensor *t, Error *err) {
    if (!json_object_is_type(shape, json_type_array)) return fail(err, "%s: tensor %s: shape is not a list", path, name);
    size_t ndim = json_object_array_length(shape);
    if (ndim > TENSOR_MAX_DIMS) return fail(err, "%s: tensor %s: %zu dimensions (max %d)", path, name, ndim, TENSOR_MAX_DIMS);
    t->ndim = (int)ndim;
    for (size_t d = 0; d < ndim; d++) {
        uint64_t extent;
        if (!json_to_u64(json_object_array_get_idx(shape, d), &extent) || extent > INT64_MAX) {
            return fail(err, "%s: tensor %s: shape entry %zu is not a non-negative integer", path, name, d);
        }
        t->shape[d] = (int64_t)extent;
    }
    return true;
}

// numel * dtype size, false on overflow.
static bool tensor_bytes_checked(const Tensor *t, uint64_t *bytes) {
    uint64_t total = dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++) {
        uint64_t extent = (uint64_t)t->shape[d];
        if (extent != 0 && total > UINT64_MAX / extent) return false;
        total *= extent;
    }
    *bytes = total;
    return true;
}

static bool parse_tensor_info(const char *path, const char *name, json_object *info, uint64_t data_size,
                              TensorInfo *out, Error *err) {
    json_object *dtype, *shape, *offsets;
    if (!json_object_is_type(info, json_type_object) || !json_object_object_get_ex(info, "dtype", &dtype) ||
        !json_object_object_get_ex(info, "shape", &shape) || !json_object_object_get_ex(info, "data_offsets", &offsets)) {
        return fail(err, "%s: tensor %s: needs an object with dtype, shape and data_offsets", path, name);
    }
    *out = (TensorInfo){.name = name};
    const char *dtype_str = json_object_get_string(dtype);
    if (!json_object_is_type(dtype, json_type_string) || !dtype_from_name(dtype_str, &out->tensor.dtype)) {
        return fail(err, "%s: tensor %s: unknown dtype %s", path, name, json_object_to_json_string(dtype));
    }
    if (!parse_shape(path, name, shape, &out->tensor, err)) return false;
    if (!json_object_is_type(offsets, json_type_array) || json_object_array_length(offsets) != 2 ||
        !json_to_u64(json_object_array_get_idx(offsets, 0), &out->begin) ||
        !json_to_u64(json_object_array_get_idx(offsets, 1), &out->end)) {
        return fail(err, "%s: tensor %s: data_offsets must be two non-negative integers", path, name);
    }
    if (out->begin > out->end || out->end > data_size) {
        return fail(err, "%s: tensor %s: data_offsets [%llu, %llu] outside the %llu data bytes", path, name,
                    (unsigned long long)out->begin, (unsigned long long)out->end, (unsigned long long)data_size);
    }
    uint64_t bytes;
    char shape_buf[256];
    shape_string(out->tensor.shape, out->tensor.ndim, shape_buf, sizeof shape_buf);
    if (!tensor_bytes_checked(&out->tensor, &bytes)) {
        return fail(err, "%s: tensor %s: shape %s overflows", path, name, shape_buf);
    }
    if (bytes != out->end - out->begin) {
        return fail(err, "%s: tensor %s: %s %s needs %llu bytes but data_offsets span %llu", path, name,
                    dtype_str, shape_buf, (unsigned long long)bytes, (unsigned long long)(out->end - out->begin));
    }
    return true;
}

static int compare_by_offset(const void *a, const void *b) {
    const TensorInfo *x = a, *y = b;
    if (x->begin != y->begin) return (x->begin > y->begin) - (x->begin < y->begin);
    return (x->end > y->end) - (x->end < y->end);
}

// Sorted by offset, each tensor must start at or after the previous one's end.
static bool check_no_overlap(const char *path, TensorInfo *tensors, int count, Error *err) {
    qsort(tensors, (size_t)count, sizeof *tensors, compare_by_offset);
    for (int i = 1; i < count; i++) {
        const TensorInfo *prev = &tensors[i - 1], *cur = &tensors[i];
        if (cur->begin < prev->end) {
            return fail(err, "%s: tensor %s (bytes %llu..%llu) overlaps tensor %s (bytes %llu..%llu)", path, cur->name,
                        (unsigned long long)cur->begin, (unsigned long long)cur->end, prev->name,
                        (unsigned long long)prev->begin, (unsigned long long)prev->end);
        }
    }
    return true;
}

static bool check_metadata(const char *path, json_object *metadata, Error *err) {
    if (!json_object_is_type(metadata, json_type_object)) return fail(err, "%s: __metadata__ is not an object", path);
    json_object_object_foreach(metadata, key, value) {
        if (!json_object_is_type(value, json_type_string)) {
            return fail(err, "%s: __metadata__ value of %s is not a string", path, key);
        }
    }
    return true;
}

// ----------------------------------------------------------------------------
// reader

static bool parse_header(SafetensorsFile *file, const char *json, size_t n, uint64_t data_size, Error *err) {
    json_tokener *tokener = json_tokener_new();
    if (!tokener) return fail(err, "%s: out of memory for the JSON parser", file->path);
    file->header = json_tokener_parse_ex(tokener, json, (int)n);
    size_t parsed = json_tokener_get_parse_end(tokener);
    enum json_tokener_error status = json_tokener_get_error(tokener);
    json_tokener_free(tokener);
    if (!file->header || status != json_tokener_success) {
        return fail(err, "%s: header is not valid JSON (%s)", file->path, json_tokener_error_desc(status));
    }
    for (size_t i = parsed; i < n; i++) {
        if (json[i] != ' ') return fail(err, "%s: bytes after the header's JSON at offset %zu", file->path, 8 + i);
    }
    if (!json_object_is_type(file->header, json_type_object)) return fail(err, "%s: header is not a JSON object", file->path);
    int n_keys = json_object_object_length(file->header);
    if (!check_unique_keys(file->path, json, n, n_keys, err)) return false;
    file->tensors = checked_calloc((size_t)n_keys + 1, sizeof *file->tensors, file->path, err);
    if (!file->tensors) return false;
    json_object_object_foreach(file->header, name, info) {
        if (strcmp(name, "__metadata__") == 0) {
            if (!check_metadata(file->path, info, err)) return false;
            file->metadata = info;
            continue;
        }
        if (!parse_tensor_info(file->path, name, info, data_size, &file->tensors[file->count], err)) return false;
        file->count++;
    }
    return check_no_overlap(file->path, file->tensors, file->count, err);
}

static bool map_file(SafetensorsFile *file, Error *err) {
    int fd = open(file->path, O_RDONLY);
    if (fd < 0) return fail(err, "%s: %s", file->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fail(err, "%s: stat: %s", file->path, strerror(errno));
        close(fd);
        return false;
    }
    if (st.st_size < 8) {
        close(fd);
        return fail(err, "%s: %lld bytes, too short for a safetensors header", file->path, (long long)st.st_size);
    }
    file->map_size = (size_t)st.st_size;
    void *map = mmap(NULL, file->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int mmap_errno = errno;
    close(fd);
    if (map == MAP_FAILED) return fail(err, "%s: mmap: %s", file->path, strerror(mmap_errno));
    file->map = map;
    return true;
}

void safetensors_release(const Tensor *view) {
    size_t page = (size_t)sysconf(_SC_PAGE_SIZE);
    uintptr_t begin = (uintptr_t)view->data / page * page;
    uintptr_t end = (uintptr_t)view->data + tensor_nbytes(view);
    if (end > begin) madvise((void *)begin, end - begin, MADV_DONTNEED); // advice: nothing to check
}

static uint64_t read_u64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static bool open_checked(SafetensorsFile *file, Error *err) {
    if (!map_file(file, err)) return false;
    uint64_t header_bytes = read_u64_le(file->map);
    uint64_t available = file->map_size - 8;
    if (header_bytes > HEADER_MAX_BYTES) {
        return fail(err, "%s: header length %llu exceeds the %llu byte limit", file->path,
                    (unsigned long long)header_bytes, HEADER_MAX_BYTES);
    }
    if (header_bytes > available) {
        return fail(err, "%s: header length %llu but only %llu bytes follow (truncated file?)", file->path,
                    (unsigned long long)header_bytes, (unsigned long long)available);
    }
    const char *json = (const char *)file->map + 8;
    if (!parse_header(file, json, header_bytes, available - header_bytes, err)) return false;
    uint8_t *data = file->map + 8 + header_bytes;
    for (int i = 0; i < file->count; i++) file->tensors[i].tensor.data = data + file->tensors[i].begin;
    return true;
}

SafetensorsFile *safetensors_open(const char *path, Error *err) {
    SafetensorsFile *file = checked_calloc(1, sizeof *file, path, err);
    if (!file) return NULL;
    file->path = checked_strdup(path, err);
    if (file->path && open_checked(file, err)) return file;
    safetensors_close(file);
    return NULL;
}

void safetensors_close(SafetensorsFile *file) {
    if (!file) return;
    if (file->map) munmap(file->map, file->map_size);
    json_object_put(file->header);
    free(file->tensors);
    free(file->path);
    free(file);
}

int safetensors_count(const SafetensorsFile *file) { return file->count; }

const char *safetensors_name(const SafetensorsFile *file, int index) {
    return index >= 0 && index < file->count ? file->tensors[index].name : NULL;
}

bool safetensors_get(const SafetensorsFile *file, const char *name, Tensor *out, Error *err) {
    for (int i = 0; i < file->count; i++) {
        if (strcmp(file->tensors[i].name, name) == 0) {
            *out = file->tensors[i].tensor;
            return true;
        }
    }
    return fail(err, "%s: no tensor named %s", file->path, name);
}

const char *safetensors_metadata(const SafetensorsFile *file, const char *key) {
    json_object *value;
    if (!file->metadata || !json_object_object_get_ex(file->metadata, key, &value)) return NULL;
    return json_object_get_string(value);
}

// ----------------------------------------------------------------------------
// writer

static json_object *shape_json(const Tensor *t) {
    json_object *shape = json_object_new_array();
    for (int d = 0; shape && d < t->ndim; d++) json_object_array_add(shape, json_object_new_int64(t->shape[d]));
    return shape;
}

static json_object *tensor_info_json(const Tensor *t, uint64_t begin, uint64_t end) {
    json_object *info = json_object_new_object(), *offsets = json_object_new_array();
    if (!info || !offsets) {
        json_object_put(info);
        json_object_put(offsets);
        return NULL;
    }
    json_object_array_add(offsets, json_object_new_int64((int64_t)begin));
    json_object_array_add(offsets, json_object_new_int64((int64_t)end));
    json_object_object_add(info, "dtype", json_object_new_string(dtype_name(t->dtype)));
    json_object_object_add(info, "shape", shape_json(t));
    json_object_object_add(info, "data_offsets", offsets);
    return info;
}

// Header object: __metadata__ first (as the reference writer), then tensors in order.
static json_object *build_header(const char *path, const SafetensorsEntry *entries, int n_entries,
                                 const char *const *metadata_kv, int n_metadata, Error *err) {
    json_object *header = json_object_new_object();
    if (!header) {
        fail(err, "%s: out of memory building the header", path);
        return NULL;
    }
    if (n_metadata > 0) {
        json_object *metadata = json_object_new_object();
        for (int i = 0; metadata && i < n_metadata; i++) {
            json_object_object_add(metadata, metadata_kv[2 * i], json_object_new_string(metadata_kv[2 * i + 1]));
        }
        json_object_object_add(header, "__metadata__", metadata);
    }
    uint64_t offset = 0;
    for (int i = 0; i < n_entries; i++) {
        uint64_t bytes = tensor_nbytes(&entries[i].tensor);
        if (json_object_object_get_ex(header, entries[i].name, NULL)) {
            json_object_put(header);
            fail(err, "%s: tensor %s given twice", path, entries[i].name);
            return NULL;
        }
        json_object_object_add(header, entries[i].name, tensor_info_json(&entries[i].tensor, offset, offset + bytes));
        offset += bytes;
    }
    return header;
}

static bool write_all(FILE *f, const void *data, size_t bytes) { return bytes == 0 || fwrite(data, 1, bytes, f) == bytes; }

// Length, then the JSON padded with spaces so the data starts at a multiple of 8.
static bool write_header(FILE *f, const char *json) {
    size_t json_bytes = strlen(json);
    size_t padded = (json_bytes + 7) / 8 * 8;
    uint8_t length_le[8];
    for (int i = 0; i < 8; i++) length_le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    const char spaces[8] = "        ";
    return write_all(f, length_le, 8) && write_all(f, json, json_bytes) && write_all(f, spaces, padded - json_bytes);
}

// The header, then the tensors' data in order.
static bool write_contents(FILE *f, const char *json, const SafetensorsEntry *entries, int n_entries) {
    bool ok = write_header(f, json);
    for (int i = 0; ok && i < n_entries; i++) ok = write_all(f, entries[i].tensor.data, tensor_nbytes(&entries[i].tensor));
    return ok;
}

bool safetensors_write_streamed(const char *path, const SafetensorsEntry *entries, int n_entries,
                                const char *const *metadata_kv, int n_metadata, SafetensorsFill fill, void *context,
                                Error *err) {
    json_object *header = build_header(path, entries, n_entries, metadata_kv, n_metadata, err);
    if (!header) return false;
    const char *json = json_object_to_json_string_ext(header, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    FILE *f = fopen(path, "wb");
    bool ok = f ? json && write_header(f, json) : fail(err, "%s: %s", path, strerror(errno));
    bool write_failed = f && !ok;
    json_object_put(header);
    void *buffer = NULL;
    for (int i = 0; ok && i < n_entries; i++) {
        size_t bytes = tensor_nbytes(&entries[i].tensor);
        void *bigger = realloc(buffer, bytes + 1);
        ok = bigger ? (buffer = bigger, fill(context, i, buffer, bytes, err))
                    : fail(err, "%s: out of memory for tensor %s", path, entries[i].name);
        if (ok && !write_all(f, buffer, bytes)) ok = false, write_failed = true;
    }
    free(buffer);
    bool closed = !f || fclose(f) == 0;
    if (write_failed || !closed) return fail(err, "%s: write failed: %s", path, strerror(errno));
    return ok;
}

bool safetensors_write(const char *path, const SafetensorsEntry *entries, int n_entries,
                       const char *const *metadata_kv, int n_metadata, Error *err) {
    json_object *header = build_header(path, entries, n_entries, metadata_kv, n_metadata, err);
    if (!header) return false;
    const char *json = json_object_to_json_string_ext(header, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    FILE *f = fopen(path, "wb");
    if (!f) {
        json_object_put(header);
        return fail(err, "%s: %s", path, strerror(errno));
    }
    bool written = json && write_contents(f, json, entries, n_entries);
    int write_errno = errno;
    json_object_put(header);
    bool closed = fclose(f) == 0;
    if (!written || !closed) return fail(err, "%s: write failed: %s", path, strerror(written ? errno : write_errno));
    return true;
}

bool safetensors_serialize(const char *name, const SafetensorsEntry *entries, int n_entries,
                           const char *const *metadata_kv, int n_metadata, uint8_t **bytes, size_t *size,
                           Error *err) {
    json_object *header = build_header(name, entries, n_entries, metadata_kv, n_metadata, err);
    if (!header) return false;
    const char *json = json_object_to_json_string_ext(header, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *buffer = NULL;
    FILE *f = open_memstream(&buffer, size);
    bool written = f && json && write_contents(f, json, entries, n_entries);
    bool closed = f && fclose(f) == 0;
    json_object_put(header);
    if (!written || !closed) {
        free(buffer);
        return fail(err, "%s: out of memory serialising %d tensors", name, n_entries);
    }
    *bytes = (uint8_t *)buffer;
    return true;
}
