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

// 1-based line and column of text[offset].
static void line_and_column(const char *text, size_t offset, int *line, int *column) {
    *line = 1, *column = 1;
    for (size_t i = 0; i < offset; i++) {
        bool newline = text[i] == '\n';
        *line += newline;
        *column = newline ? 1 : *column + 1;
    }
}

// NULL with err saying where the text stops being JSON and what was expected.
static json_object *parse_json(const char *path, const char *text, size_t size, Error *err) {
    json_tokener *tokener = json_tokener_new();
    if (!tokener) return fail(err, "%s: out of memory for the JSON parser", path), NULL;
    json_object *obj = json_tokener_parse_ex(tokener, text, (int)size);
    enum json_tokener_error status = json_tokener_get_error(tokener);
    size_t end = json_tokener_get_parse_end(tokener);
    json_tokener_free(tokener);
    while (obj && end < size && strchr(" \t\r\n", text[end])) end++;
    int line, column;
    line_and_column(text, end, &line, &column);
    if (obj && end == size) return obj;
    json_object_put(obj);
    if (obj) fail(err, "%s: not valid JSON: text after the object at line %d, column %d", path, line, column);
    else if (status == json_tokener_continue)
        fail(err, "%s: not valid JSON: the text ends at line %d, column %d inside an unfinished value (an object, "
                  "array or string not closed)", path, line, column);
    else fail(err, "%s: not valid JSON at line %d, column %d: %s", path, line, column, json_tokener_error_desc(status));
    return NULL;
}

json_object *read_json_object(const char *path, Error *err) {
    char *text;
    size_t size;
    if (!read_file(path, &text, &size, err)) return NULL;
    json_object *obj = parse_json(path, text, size, err);
    free(text);
    if (obj && !json_object_is_type(obj, json_type_object)) {
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
