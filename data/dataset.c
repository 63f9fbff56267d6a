// JSONL text datasets: one record per line, {"messages": [{"role", "content"}...]}
// or {"text": ...}, tokenized at open time. All samples' ids and labels live in
// two growing pools; a Sample points into them. A malformed record is skipped
// with its line number and reason.
#include "data.h"
#include "data_private.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct Dataset {
    Sample *samples;          // (n_samples,) views into the pools
    int64_t *offsets;         // (n_samples,) start of each sample in the pools
    int64_t n_samples, samples_capacity;
    int32_t *id_pool, *label_pool;
    int64_t pool_length, pool_capacity;
    int64_t n_truncated;
    int32_t pad_id;
    char *path;
    DatasetSkip *skips;       // (n_skipped,) in file order
    int64_t n_skipped, skips_capacity;
};

// Per-file parsing state, reused from line to line.
typedef struct JsonlReader {
    const Tokenizer *tok;
    json_tokener *tokener;
    TokenSequence seq;
    const char **roles, **contents;
    int turns_capacity;
    bool empty_conversation; // the record failed for having no assistant turn
    bool no_chat_template; // a chat record met a tokenizer without a usable template: the whole file stops
} JsonlReader;

// ----------------------------------------------------------------------------
// one record -> reader->seq

static bool reserve_turns(JsonlReader *reader, int n_turns, Error *err) {
    if (n_turns <= reader->turns_capacity) return true;
    const char **roles = realloc(reader->roles, (size_t)n_turns * sizeof *roles);
    if (roles) reader->roles = roles;
    const char **contents = roles ? realloc(reader->contents, (size_t)n_turns * sizeof *contents) : NULL;
    if (!contents) return fail(err, "out of memory for %d messages", n_turns);
    reader->contents = contents;
    reader->turns_capacity = n_turns;
    return true;
}

// messages[turn] -> role and content strings (owned by the JSON tree).
static bool read_message(json_object *message, int turn, const char **role, const char **content,
                         Error *err) {
    if (!json_object_is_type(message, json_type_object)) return fail(err, "message %d is not an object", turn);
    json_object *role_json, *content_json;
    if (!json_object_object_get_ex(message, "role", &role_json) ||
        !json_object_is_type(role_json, json_type_string)) {
        return fail(err, "message %d: \"role\" is missing or not a string", turn);
    }
    if (!json_object_object_get_ex(message, "content", &content_json) ||
        !json_object_is_type(content_json, json_type_string)) {
        return fail(err, "message %d: \"content\" is missing or not a string", turn);
    }
    *role = json_object_get_string(role_json);
    *content = json_object_get_string(content_json);
    return true;
}

static bool render_messages_record(JsonlReader *reader, json_object *messages, Error *err) {
    if (!tokenizer_check_chat_template(reader->tok, err)) return reader->no_chat_template = true, false;
    if (!json_object_is_type(messages, json_type_array)) return fail(err, "\"messages\" is not an array");
    int n_turns = (int)json_object_array_length(messages);
    if (!reserve_turns(reader, n_turns, err)) return false;
    bool has_assistant = false;
    for (int turn = 0; turn < n_turns; turn++) {
        json_object *message = json_object_array_get_idx(messages, (size_t)turn);
        if (!read_message(message, turn, &reader->roles[turn], &reader->contents[turn], err)) return false;
        has_assistant = has_assistant || strcmp(reader->roles[turn], "assistant") == 0;
    }
    reader->empty_conversation = !has_assistant;
    if (!has_assistant) return fail(err, "\"messages\" has no assistant turn (nothing to train on)");
    return render_messages(reader->tok, reader->roles, reader->contents, n_turns, &reader->seq, err);
}

static bool render_record(JsonlReader *reader, json_object *record, Error *err) {
    if (!json_object_is_type(record, json_type_object)) return fail(err, "the record is not a JSON object");
    json_object *field;
    if (json_object_object_get_ex(record, "messages", &field)) return render_messages_record(reader, field, err);
    if (json_object_object_get_ex(record, "text", &field)) {
        if (!json_object_is_type(field, json_type_string)) return fail(err, "\"text\" is not a string");
        return render_text(reader->tok, json_object_get_string(field), &reader->seq, err);
    }
    return fail(err, "the record has neither \"messages\" nor \"text\"");
}

static bool is_blank(const char *line, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (!isspace((unsigned char)line[i])) return false;
    }
    return true;
}

// Parses exactly one JSON value from the line (trailing whitespace allowed).
static json_object *parse_line(json_tokener *tokener, const char *line, size_t len, Error *err) {
    if (len > INT_MAX) {
        fail(err, "the line is longer than %d bytes", INT_MAX);
        return NULL;
    }
    json_tokener_reset(tokener);
    json_object *record = json_tokener_parse_ex(tokener, line, (int)len);
    enum json_tokener_error status = json_tokener_get_error(tokener);
    if (!record && status == json_tokener_continue) {
        fail(err, "invalid JSON: the record ends early");
        return NULL;
    }
    if (!record) {
        fail(err, "invalid JSON: %s", json_tokener_error_desc(status));
        return NULL;
    }
    size_t end = json_tokener_get_parse_end(tokener);
    if (!is_blank(line + end, len - end)) {
        json_object_put(record);
        fail(err, "invalid JSON: unexpected text after the record at column %zu", end + 1);
        return NULL;
    }
    return record;
}

// ----------------------------------------------------------------------------
// the dataset's pools

static bool grow_samples(Dataset *dataset, Error *err) {
    if (dataset->n_samples < dataset->samples_capacity) return true;
    int64_t capacity = dataset->samples_capacity ? 2 * dataset->samples_capacity : 256;
    int64_t *offsets = realloc(dataset->offsets, (size_t)capacity * sizeof *offsets);
    if (offsets) dataset->offsets = offsets;
    Sample *samples = offsets ? realloc(dataset->samples, (size_t)capacity * sizeof *samples) : NULL;
    if (!samples) return fail(err, "out of memory for %lld samples", (long long)capacity);
    dataset->samples = samples;
    dataset->samples_capacity = capacity;
    return true;
}

static bool grow_pools(Dataset *dataset, int64_t needed, Error *err) {
    if (needed <= dataset->pool_capacity) return true;
    int64_t capacity = dataset->pool_capacity ? 2 * dataset->pool_capacity : 65536;
    if (capacity < needed) capacity = needed;
    int32_t *ids = realloc(dataset->id_pool, (size_t)capacity * sizeof *ids);
    if (ids) dataset->id_pool = ids;
    int32_t *labels = ids ? realloc(dataset->label_pool, (size_t)capacity * sizeof *labels) : NULL;
    if (!labels) return fail(err, "out of memory for %lld dataset tokens", (long long)capacity);
    dataset->label_pool = labels;
    dataset->pool_capacity = capacity;
    return true;
}

// Appends seq, truncated to max_seq_len, as the next sample.
static bool append_sample(Dataset *dataset, const TokenSequence *seq, int max_seq_len, Error *err) {
    int length = seq->length < max_seq_len ? seq->length : max_seq_len;
    if (!grow_samples(dataset, err) || !grow_pools(dataset, dataset->pool_length + length, err)) return false;
    memcpy(dataset->id_pool + dataset->pool_length, seq->ids, (size_t)length * sizeof *seq->ids);
    memcpy(dataset->label_pool + dataset->pool_length, seq->labels, (size_t)length * sizeof *seq->labels);
    bool truncated = seq->length > max_seq_len;
    dataset->samples[dataset->n_samples] = (Sample){.length = length, .truncated = truncated};
    dataset->offsets[dataset->n_samples] = dataset->pool_length;
    dataset->n_samples++;
    dataset->pool_length += length;
    dataset->n_truncated += truncated;
    return true;
}

// Points each sample into the pools, once they no longer move.
static void link_samples(Dataset *dataset) {
    for (int64_t i = 0; i < dataset->n_samples; i++) {
        dataset->samples[i].ids = dataset->id_pool + dataset->offsets[i];
        dataset->samples[i].labels = dataset->label_pool + dataset->offsets[i];
    }
}

static bool record_skip(Dataset *dataset, int64_t line_number, SkipReason reason, const Error *why, Error *err) {
    if (dataset->n_skipped == dataset->skips_capacity) {
        int64_t capacity = dataset->skips_capacity ? 2 * dataset->skips_capacity : 16;
        DatasetSkip *skips = realloc(dataset->skips, (size_t)capacity * sizeof *skips);
        if (!skips) return fail(err, "out of memory for %lld skipped records", (long long)capacity);
        dataset->skips = skips;
        dataset->skips_capacity = capacity;
    }
    DatasetSkip *skip = &dataset->skips[dataset->n_skipped++];
    skip->line = line_number;
    skip->reason = reason;
    snprintf(skip->message, sizeof skip->message, "%.*s", (int)sizeof skip->message - 1, why->message);
    return true;
}

// ----------------------------------------------------------------------------
// reading a file

static bool read_records(FILE *file, const char *path, JsonlReader *reader, Dataset *dataset,
                         int max_seq_len, Error *err) {
    char *line = NULL;
    size_t line_capacity = 0;
    ssize_t len;
    bool ok = true;
    struct stat st;
    char what[1024];
    snprintf(what, sizeof what, "reading %s", path);
    Progress progress;
    progress_begin(&progress, what, fstat(fileno(file), &st) == 0 ? (double)st.st_size : 0, true);
    for (int64_t line_number = 1; ok && (len = getline(&line, &line_capacity, file)) >= 0; line_number++) {
        progress_update(&progress, (double)ftell(file));
        if (is_blank(line, (size_t)len)) continue;
        Error why;
        reader->empty_conversation = false;
        json_object *record = parse_line(reader->tokener, line, (size_t)len, &why);
        if (record && render_record(reader, record, &why)) {
            ok = append_sample(dataset, &reader->seq, max_seq_len, err);
        } else if (reader->no_chat_template) {
            ok = fail(err, "%s:%lld: %s", path, (long long)line_number, why.message);
        } else {
            fail_context(&why, "%s:%lld: ", path, (long long)line_number);
            SkipReason reason = reader->empty_conversation ? SKIP_EMPTY_CONVERSATION : SKIP_BAD_RECORD;
            ok = record_skip(dataset, line_number, reason, &why, err);
        }
        json_object_put(record);
    }
    if (ok && ferror(file)) ok = fail(err, "%s: read error: %s", path, strerror(errno));
    if (ok) progress_end(&progress);
    free(line);
    return ok;
}

static bool load_jsonl(const char *path, const Tokenizer *tok, int max_seq_len, Dataset *dataset,
                       Error *err) {
    JsonlReader reader = {.tok = tok, .tokener = json_tokener_new()};
    if (!reader.tokener) return fail(err, "%s: out of memory for the JSON parser", path);
    FILE *file = fopen(path, "rb");
    bool ok = file ? read_records(file, path, &reader, dataset, max_seq_len, err)
                   : fail(err, "%s: %s", path, strerror(errno));
    if (file) fclose(file);
    json_tokener_free(reader.tokener);
    token_sequence_free(&reader.seq);
    free(reader.roles);
    free(reader.contents);
    return ok;
}

Dataset *dataset_open_jsonl(const char *path, const Tokenizer *tok, int max_seq_len, Error *err) {
    if (max_seq_len <= 0) {
        fail(err, "%s: max_seq_len must be positive (got %d)", path, max_seq_len);
        return NULL;
    }
    Dataset *dataset = checked_calloc(1, sizeof *dataset, "a dataset", err);
    if (!dataset) return NULL;
    dataset->pad_id = tokenizer_pad(tok);
    dataset->path = checked_strdup(path, err);
    bool ok = dataset->path && load_jsonl(path, tok, max_seq_len, dataset, err);
    if (ok && dataset->n_samples == 0 && dataset->n_skipped > 0)
        ok = fail(err, "no usable records: all %lld skipped, the first as %s", (long long)dataset->n_skipped,
                  dataset->skips[0].message);
    else if (ok && dataset->n_samples == 0) ok = fail(err, "%s: no records", path);
    if (!ok) {
        dataset_destroy(dataset);
        return NULL;
    }
    link_samples(dataset);
    return dataset;
}

void dataset_destroy(Dataset *dataset) {
    if (!dataset) return;
    free(dataset->samples);
    free(dataset->offsets);
    free(dataset->id_pool);
    free(dataset->label_pool);
    free(dataset->path);
    free(dataset->skips);
    free(dataset);
}

int64_t dataset_size(const Dataset *dataset) { return dataset->n_samples; }
int64_t dataset_truncated_count(const Dataset *dataset) { return dataset->n_truncated; }
int32_t dataset_pad_id(const Dataset *dataset) { return dataset->pad_id; }
int64_t dataset_skipped_count(const Dataset *dataset) { return dataset->n_skipped; }

const DatasetSkip *dataset_skipped(const Dataset *dataset, int64_t i) {
    return i >= 0 && i < dataset->n_skipped ? &dataset->skips[i] : NULL;
}

bool dataset_check_skips(const Dataset *dataset, double max_fraction, Error *err) {
    int64_t records = dataset->n_samples + dataset->n_skipped;
    double fraction = records ? (double)dataset->n_skipped / (double)records : 0.0;
    if (fraction <= max_fraction) return true;
    return fail(err, "%s: %lld of %lld records skipped (%.2f%%), over data.max_skip_fraction %.2f%% (the first: %s)",
                dataset->path, (long long)dataset->n_skipped, (long long)records, 100.0 * fraction,
                100.0 * max_fraction, dataset->skips[0].message);
}

const Sample *dataset_sample(const Dataset *dataset, int64_t index) {
    if (index < 0 || index >= dataset->n_samples) return NULL;
    return &dataset->samples[index];
}
