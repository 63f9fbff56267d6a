// The demo's synthetic data: questions about numbered shapes whose answer
// follows one fixed rule a tiny byte-level model can pick up quickly:
//   colour of (shape s, number k) = colours[(s + k) % N_COLOURS]
// Three records in four are chats ("What colour is the circle number 3?" ->
// "red."), the rest are {"text": "The circle number 3 is red."}. Every record
// fits in 64 byte tokens.
#include "data.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

static const char *const shapes[] = {"circle", "square", "star", "heart"};
static const char *const colours[] = {"red", "green", "blue", "yellow"};
#define N_SHAPES 4
#define N_COLOURS 4
#define N_NUMBERS 10

// Appends {"role": role, "content": content} to messages.
static bool add_message(json_object *messages, const char *role, const char *content) {
    json_object *message = json_object_new_object();
    json_object *role_json = json_object_new_string(role), *content_json = json_object_new_string(content);
    bool ok = message && role_json && content_json;
    if (ok) ok = json_object_object_add(message, "role", role_json) == 0;
    if (!ok) json_object_put(role_json);
    if (ok) ok = json_object_object_add(message, "content", content_json) == 0;
    if (!ok) json_object_put(content_json);
    if (ok) ok = json_object_array_add(messages, message) == 0;
    if (!ok) json_object_put(message);
    return ok;
}

static json_object *demo_chat(const char *shape, int number, const char *colour, bool with_system) {
    char question[96], answer[32];
    snprintf(question, sizeof question, "What colour is the %s number %d?", shape, number);
    snprintf(answer, sizeof answer, "%s.", colour);
    json_object *record = json_object_new_object(), *messages = json_object_new_array();
    bool ok = record && messages && json_object_object_add(record, "messages", messages) == 0;
    if (!ok) json_object_put(messages);
    if (ok && with_system) ok = add_message(messages, "system", "One colour.");
    ok = ok && add_message(messages, "user", question) && add_message(messages, "assistant", answer);
    if (ok) return record;
    json_object_put(record);
    return NULL;
}

static json_object *demo_text(const char *shape, int number, const char *colour) {
    char text[96];
    snprintf(text, sizeof text, "The %s number %d is %s.", shape, number, colour);
    json_object *record = json_object_new_object(), *text_json = json_object_new_string(text);
    if (record && text_json && json_object_object_add(record, "text", text_json) == 0) return record;
    json_object_put(text_json);
    json_object_put(record);
    return NULL;
}

static json_object *demo_record(Rng *rng) {
    int shape = (int)rng_below(rng, N_SHAPES);
    int number = (int)rng_below(rng, N_NUMBERS);
    const char *colour = colours[(shape + number) % N_COLOURS];
    int kind = (int)rng_below(rng, 8); // 0-1 text, 2 chat with a system turn, 3-7 plain chat
    if (kind < 2) return demo_text(shapes[shape], number, colour);
    return demo_chat(shapes[shape], number, colour, kind == 2);
}

static bool write_records(FILE *file, const char *path, int n_records, uint64_t seed, Error *err) {
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < n_records; i++) {
        json_object *record = demo_record(&rng);
        if (!record) return fail(err, "%s: out of memory building demo record %d", path, i);
        const char *line = json_object_to_json_string_ext(record, JSON_C_TO_STRING_PLAIN);
        bool written = line && fprintf(file, "%s\n", line) >= 0;
        json_object_put(record);
        if (!written) return fail(err, "%s: writing demo record %d: %s", path, i, strerror(errno));
    }
    return true;
}

bool dataset_write_demo_jsonl(const char *path, int n_records, uint64_t seed, Error *err) {
    if (n_records < 1) return fail(err, "%s: the demo needs at least one record (got %d)", path, n_records);
    FILE *file = fopen(path, "wb");
    if (!file) return fail(err, "%s: %s", path, strerror(errno));
    bool ok = write_records(file, path, n_records, seed, err);
    if (fclose(file) != 0 && ok) ok = fail(err, "%s: closing: %s", path, strerror(errno));
    return ok;
}
