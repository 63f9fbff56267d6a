// JSON files and paths for the checkpoint formats.
#include "checkpoints_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool join_path(char *buf, size_t size, const char *dir, const char *file, Error *err) {
    int n = snprintf(buf, size, "%s/%s", dir, file);
    if (n < 0 || (size_t)n >= size) return fail(err, "path too long: %s/%s", dir, file);
    return true;
}

json_object *read_json_object(const char *path, Error *err) {
    char *text;
    size_t size;
    if (!read_file(path, &text, &size, err)) return NULL;
    json_tokener *tokener = json_tokener_new();
    if (!tokener) {
        free(text);
        fail(err, "%s: out of memory for the JSON parser", path);
        return NULL;
    }
    json_object *obj = json_tokener_parse_ex(tokener, text, (int)size);
    enum json_tokener_error status = json_tokener_get_error(tokener);
    json_tokener_free(tokener);
    free(text);
    if (!obj || status != json_tokener_success) {
        json_object_put(obj);
        fail(err, "%s: not valid JSON (%s)", path, json_tokener_error_desc(status));
        return NULL;
    }
    if (!json_object_is_type(obj, json_type_object)) {
        json_object_put(obj);
        fail(err, "%s: top level is not a JSON object", path);
        return NULL;
    }
    return obj;
}

bool write_json_file(const char *path, json_object *obj, Error *err) {
    int flags = JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE;
    const char *text = json_object_to_json_string_ext(obj, flags);
    if (!text) return fail(err, "%s: out of memory serialising JSON", path);
    FILE *f = fopen(path, "w");
    if (!f) return fail(err, "%s: %s", path, strerror(errno));
    bool written = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    bool closed = fclose(f) == 0;
    if (!written || !closed) return fail(err, "%s: write failed: %s", path, strerror(errno));
    return true;
}

bool copy_file(const char *src, const char *dst, Error *err) {
    char *data;
    size_t size;
    if (!read_file(src, &data, &size, err)) return false;
    FILE *f = fopen(dst, "wb");
    bool ok = f && fwrite(data, 1, size, f) == size;
    bool closed = f && fclose(f) == 0;
    free(data);
    if (!ok || !closed) return fail(err, "%s: write failed: %s", dst, strerror(errno));
    return true;
}
