// LLaVA records: a JSON array of {id, image, conversations: [{from, value}]}
// (llava_v1_5_mix665k.json, ~1 GB) or the same records one per line (JSONL).
//
// Opening streams the file once through a fixed buffer and keeps only each
// record's byte range (16 bytes a record); records are parsed one at a time
// with json-c when asked for, so the parsed document never exists whole.
//
//   array: '[' ws (record ws (',' ws record ws)*)? ']' ws    record = {...}, braces
//          and brackets matched outside strings (escapes honoured)
//   JSONL: every non-blank line is one record (a bad line is one bad record)
#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCAN_CHUNK (1 << 20)

typedef struct RecordRange {
    int64_t offset, length;
} RecordRange;

struct LlavaIndex {
    char *path;
    int fd;
    bool is_jsonl;
    RecordRange *records;
    int64_t n_records, capacity;
};

// The array scanner's state between chunks.
typedef enum ArrayState { BEFORE_ARRAY, BEFORE_RECORD, IN_RECORD, AFTER_RECORD, AFTER_ARRAY } ArrayState;

typedef struct Scanner {
    bool is_jsonl, format_known;
    ArrayState state;
    int depth;             // brace/bracket nesting inside the current record
    bool in_string, escape;
    bool line_blank;       // JSONL: the current line has only whitespace so far
    int64_t record_start;  // -1 when no record is open
} Scanner;

static bool add_record(LlavaIndex *index, int64_t start, int64_t end, Error *err) {
    if (index->n_records == index->capacity) {
        int64_t capacity = index->capacity ? 2 * index->capacity : 4096;
        RecordRange *bigger = realloc(index->records, (size_t)capacity * sizeof *bigger);
        if (!bigger) return fail(err, "out of memory for %lld record offsets", (long long)capacity);
        index->records = bigger;
        index->capacity = capacity;
    }
    index->records[index->n_records++] = (RecordRange){.offset = start, .length = end - start};
    return true;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// ----------------------------------------------------------------------------
// JSONL: records are lines

static bool scan_jsonl_byte(Scanner *s, LlavaIndex *index, char c, int64_t at, Error *err) {
    if (c == '\n') {
        bool ok = s->line_blank || add_record(index, s->record_start, at, err);
        s->line_blank = true;
        return ok;
    }
    if (s->line_blank && !is_space(c)) {
        s->line_blank = false;
        s->record_start = at;
    }
    return true;
}

// ----------------------------------------------------------------------------
// JSON array: records are the top-level objects

// Tracks strings and nesting inside a record; closes it when depth returns to 0.
static bool scan_in_record(Scanner *s, LlavaIndex *index, char c, int64_t at, Error *err) {
    if (s->in_string) {
        if (s->escape) s->escape = false;
        else if (c == '\\') s->escape = true;
        else if (c == '"') s->in_string = false;
        return true;
    }
    if (c == '"') s->in_string = true;
    else if (c == '{' || c == '[') s->depth++;
    else if (c == '}' || c == ']') s->depth--;
    if (s->depth > 0) return true;
    s->state = AFTER_RECORD;
    return add_record(index, s->record_start, at + 1, err);
}

static bool scan_array_byte(Scanner *s, LlavaIndex *index, char c, int64_t at, Error *err) {
    if (s->state == IN_RECORD) return scan_in_record(s, index, c, at, err);
    if (is_space(c)) return true;
    switch (s->state) {
    case BEFORE_RECORD:
        if (c == ']' && index->n_records == 0) return s->state = AFTER_ARRAY, true;
        if (c != '{') return fail(err, "byte %lld: record %lld is not a JSON object", (long long)at,
                                  (long long)index->n_records);
        *s = (Scanner){.format_known = true, .state = IN_RECORD, .depth = 1, .record_start = at};
        return true;
    case AFTER_RECORD:
        if (c == ',') return s->state = BEFORE_RECORD, true;
        if (c == ']') return s->state = AFTER_ARRAY, true;
        return fail(err, "byte %lld: expected ',' or ']' after record %lld", (long long)at,
                    (long long)index->n_records - 1);
    default:
        return fail(err, "byte %lld: text after the closing ']'", (long long)at);
    }
}

// ----------------------------------------------------------------------------
// the scan

static bool scan_byte(Scanner *s, LlavaIndex *index, char c, int64_t at, Error *err) {
    if (!s->format_known) {
        if (is_space(c)) return true;
        if (c != '[' && c != '{') return fail(err, "byte %lld: neither a JSON array nor JSONL records", (long long)at);
        s->format_known = true;
        s->is_jsonl = c == '{';
        s->state = BEFORE_RECORD;
        if (!s->is_jsonl) return true;
        s->line_blank = true;
    }
    return s->is_jsonl ? scan_jsonl_byte(s, index, c, at, err) : scan_array_byte(s, index, c, at, err);
}

static bool finish_scan(const Scanner *s, LlavaIndex *index, int64_t end, Error *err) {
    if (!s->format_known) return fail(err, "the file is empty");
    if (s->is_jsonl) return s->line_blank || add_record(index, s->record_start, end, err);
    if (s->state == AFTER_ARRAY) return true;
    if (s->state == IN_RECORD) return fail(err, "record %lld (byte %lld) is not closed at the end of the file",
                                           (long long)index->n_records, (long long)s->record_start);
    return fail(err, "the array is not closed at the end of the file");
}

static bool scan_file(LlavaIndex *index, Error *err) {
    char *chunk = checked_malloc(SCAN_CHUNK, "the scan buffer", err);
    if (!chunk) return false;
    Scanner scanner = {.record_start = -1};
    int64_t position = 0;
    bool ok = true;
    ssize_t got;
    struct stat st;
    char what[1024];
    snprintf(what, sizeof what, "indexing %s", index->path);
    Progress progress;
    progress_begin(&progress, what, fstat(index->fd, &st) == 0 ? (double)st.st_size : 0, true);
    while (ok && (got = read(index->fd, chunk, SCAN_CHUNK)) != 0) {
        progress_update(&progress, (double)position);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            ok = fail(err, "read: %s", strerror(errno));
            break;
        }
        for (ssize_t i = 0; ok && i < got; i++) ok = scan_byte(&scanner, index, chunk[i], position + i, err);
        position += got;
    }
    free(chunk);
    if (ok) progress_end(&progress);
    index->is_jsonl = scanner.is_jsonl;
    return ok && finish_scan(&scanner, index, position, err);
}

LlavaIndex *llava_index_open(const char *path, Error *err) {
    LlavaIndex *index = checked_calloc(1, sizeof *index, "a LLaVA index", err);
    if (!index) return NULL;
    index->fd = open(path, O_RDONLY | O_CLOEXEC);
    index->path = checked_strdup(path, err);
    bool ok = index->path != NULL;
    if (ok && index->fd < 0) ok = fail(err, "%s: %s", path, strerror(errno));
    if (ok && !scan_file(index, err)) ok = fail_context(err, "%s: ", path);
    if (!ok) {
        llava_index_destroy(index);
        return NULL;
    }
    return index;
}

void llava_index_destroy(LlavaIndex *index) {
    if (!index) return;
    if (index->fd >= 0) close(index->fd);
    free(index->records);
    free(index->path);
    free(index);
}

int64_t llava_index_count(const LlavaIndex *index) { return index->n_records; }
bool llava_index_is_jsonl(const LlavaIndex *index) { return index->is_jsonl; }
const char *llava_index_path(const LlavaIndex *index) { return index->path; }

void llava_index_range(const LlavaIndex *index, int64_t i, int64_t *offset, int64_t *length) {
    *offset = index->records[i].offset;
    *length = index->records[i].length;
}

// ----------------------------------------------------------------------------
// one record

static bool read_range(const LlavaIndex *index, int64_t i, char **text, Error *err) {
    RecordRange range = index->records[i];
    if (range.length > INT_MAX) return fail(err, "the record is %lld bytes long", (long long)range.length);
    *text = checked_malloc((size_t)range.length + 1, "a record", err);
    if (!*text) return false;
    int64_t done = 0;
    while (done < range.length) {
        ssize_t got = pread(index->fd, *text + done, (size_t)(range.length - done), (off_t)(range.offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            free(*text);
            return fail(err, "read: %s", got < 0 ? strerror(errno) : "the file shrank");
        }
        done += got;
    }
    (*text)[range.length] = '\0';
    return true;
}

static json_object *parse_record_text(const char *text, int length, Error *err) {
    json_tokener *tokener = json_tokener_new();
    if (!tokener) return fail(err, "out of memory for the JSON parser"), NULL;
    json_object *record = json_tokener_parse_ex(tokener, text, length);
    enum json_tokener_error status = json_tokener_get_error(tokener);
    size_t end = json_tokener_get_parse_end(tokener);
    json_tokener_free(tokener);
    if (!record) return fail(err, "invalid JSON: %s", json_tokener_error_desc(status)), NULL;
    for (size_t i = end; i < (size_t)length; i++) {
        if (is_space(text[i])) continue;
        json_object_put(record);
        return fail(err, "invalid JSON: text after the record at byte %zu", i), NULL;
    }
    return record;
}

static bool copy_string_field(json_object *object, const char *key, bool number_ok, char **out, Error *err) {
    json_object *field;
    *out = NULL;
    if (!json_object_object_get_ex(object, key, &field) || json_object_is_type(field, json_type_null)) return true;
    bool usable = json_object_is_type(field, json_type_string) || (number_ok && json_object_is_type(field, json_type_int));
    if (!usable) return fail(err, "\"%s\" is not a string", key);
    *out = checked_strdup(json_object_get_string(field), err);
    return *out != NULL;
}

// "human"/"user" -> user, "gpt"/"assistant" -> assistant, "system" -> system.
static bool role_of(const char *from, LlavaRole *role) {
    static const struct { const char *from; LlavaRole role; } names[] = {
        {"human", LLAVA_USER}, {"user", LLAVA_USER}, {"gpt", LLAVA_ASSISTANT},
        {"assistant", LLAVA_ASSISTANT}, {"system", LLAVA_SYSTEM},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(from, names[i].from) == 0) return *role = names[i].role, true;
    }
    return false;
}

static bool read_turn(json_object *turn_json, int turn, LlavaRecord *out, Error *err) {
    json_object *from, *value;
    if (!json_object_is_type(turn_json, json_type_object)) return fail(err, "conversations[%d] is not an object", turn);
    if (!json_object_object_get_ex(turn_json, "from", &from) || !json_object_is_type(from, json_type_string))
        return fail(err, "conversations[%d]: \"from\" is missing or not a string", turn);
    if (!json_object_object_get_ex(turn_json, "value", &value) || !json_object_is_type(value, json_type_string))
        return fail(err, "conversations[%d]: \"value\" is missing or not a string", turn);
    if (!role_of(json_object_get_string(from), &out->roles[turn]))
        return fail(err, "conversations[%d]: unknown \"from\": \"%s\" (expected human or gpt)", turn,
                    json_object_get_string(from));
    out->values[turn] = checked_strdup(json_object_get_string(value), err);
    return out->values[turn] != NULL;
}

static bool read_conversations(json_object *record, LlavaRecord *out, Error *err) {
    json_object *turns;
    if (!json_object_object_get_ex(record, "conversations", &turns)) return fail(err, "no \"conversations\"");
    if (!json_object_is_type(turns, json_type_array)) return fail(err, "\"conversations\" is not an array");
    int n_turns = (int)json_object_array_length(turns);
    out->roles = checked_calloc((size_t)n_turns + 1, sizeof *out->roles, "conversation roles", err);
    out->values = checked_calloc((size_t)n_turns + 1, sizeof *out->values, "conversation values", err);
    if (!out->roles || !out->values) return false;
    for (int turn = 0; turn < n_turns; turn++) {
        if (!read_turn(json_object_array_get_idx(turns, (size_t)turn), turn, out, err)) return false;
        out->n_turns = turn + 1;
    }
    return true;
}

static bool read_fields(json_object *record, LlavaRecord *out, Error *err) {
    if (!json_object_is_type(record, json_type_object)) return fail(err, "the record is not a JSON object");
    json_object *image;
    if (json_object_object_get_ex(record, "image", &image) && json_object_is_type(image, json_type_array))
        return fail(err, "\"image\" is a list (one image per record is supported)");
    return copy_string_field(record, "id", true, &out->id, err) &&
           copy_string_field(record, "image", false, &out->image, err) && read_conversations(record, out, err);
}

bool llava_record_read(const LlavaIndex *index, int64_t i, LlavaRecord *out, Error *err) {
    *out = (LlavaRecord){0};
    if (i < 0 || i >= index->n_records) return fail(err, "%s: no record %lld", index->path, (long long)i);
    char *text = NULL;
    if (!read_range(index, i, &text, err)) return false;
    json_object *record = parse_record_text(text, (int)index->records[i].length, err);
    free(text);
    bool ok = record && read_fields(record, out, err);
    json_object_put(record);
    if (!ok) {
        char *id = out->id; // kept, so that a skipped record can be named
        out->id = NULL;
        llava_record_free(out);
        out->id = id;
    }
    return ok;
}

void llava_record_free(LlavaRecord *record) {
    for (int turn = 0; record->values && turn < record->n_turns; turn++) free(record->values[turn]);
    free(record->roles);
    free(record->values);
    free(record->id);
    free(record->image);
    *record = (LlavaRecord){0};
}
