// Robot steps as JSONL, one step a line:
//   {"image": "images/ep0_step0.png", "instruction": "open the drawer", "action": [7 numbers], "episode": 0}
// "episode" (a number or a string, optional) groups consecutive lines into an
// episode; without it each line is an episode of its own. Image paths are
// names in the image store (options.images, by default the file's folder).
#include <ctype.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_private.h"

typedef struct StepLine {
    const char *image;
    const char *instruction;
    float action[ROBOT_ACTION_DIM_MAX];
    const char *episode; // its JSON text; NULL when absent
} StepLine;

static json_object *parse_record(const char *line, size_t len, char *why, size_t why_size) {
    if (len > INT_MAX) {
        snprintf(why, why_size, "a line longer than %d bytes", INT_MAX);
        return NULL;
    }
    json_tokener *tokener = json_tokener_new();
    json_object *record = tokener ? json_tokener_parse_ex(tokener, line, (int)len) : NULL;
    size_t end = tokener ? json_tokener_get_parse_end(tokener) : 0;
    if (!record) snprintf(why, why_size, "invalid JSON: %s",
                          tokener ? json_tokener_error_desc(json_tokener_get_error(tokener)) : "out of memory");
    while (record && end < len && isspace((unsigned char)line[end])) end++;
    if (record && end < len) {
        snprintf(why, why_size, "invalid JSON: unexpected text after the record at column %zu", end + 1);
        json_object_put(record);
        record = NULL;
    }
    if (tokener) json_tokener_free(tokener);
    return record;
}

static const char *string_field(json_object *record, const char *key) {
    json_object *value;
    return json_object_object_get_ex(record, key, &value) && json_object_is_type(value, json_type_string)
               ? json_object_get_string(value)
               : NULL;
}

// The fields of one line, or why they are unusable.
static bool read_step_line(json_object *record, int dim, StepLine *out, char *why, size_t why_size) {
    json_object *action, *episode;
    if (!json_object_is_type(record, json_type_object)) return snprintf(why, why_size, "not a JSON object"), false;
    out->image = string_field(record, "image");
    out->instruction = string_field(record, "instruction");
    if (!out->image || !out->image[0]) return snprintf(why, why_size, "no \"image\" path string"), false;
    if (!out->instruction) return snprintf(why, why_size, "no \"instruction\" string"), false;
    if (!json_object_object_get_ex(record, "action", &action) || !json_object_is_type(action, json_type_array) ||
        json_object_array_length(action) != (size_t)dim)
        return snprintf(why, why_size, "\"action\" is not an array of %d numbers", dim), false;
    for (int i = 0; i < dim; i++) {
        json_object *value = json_object_array_get_idx(action, (size_t)i);
        if (!json_object_is_type(value, json_type_double) && !json_object_is_type(value, json_type_int))
            return snprintf(why, why_size, "\"action\"[%d] is not a number", i), false;
        out->action[i] = (float)json_object_get_double(value);
    }
    int bad_dim;
    if (!robot_action_finite(out->action, dim, &bad_dim))
        return snprintf(why, why_size, "\"action\"[%d] is %g", bad_dim, out->action[bad_dim]), false;
    out->episode = NULL;
    if (json_object_object_get_ex(record, "episode", &episode)) {
        if (!json_object_is_type(episode, json_type_int) && !json_object_is_type(episode, json_type_string))
            return snprintf(why, why_size, "\"episode\" is neither a number nor a string"), false;
        out->episode = json_object_to_json_string_ext(episode, JSON_C_TO_STRING_PLAIN);
    }
    return true;
}

// Whether the step's image is present and (with decode_images) decodes.
static SkipReason check_image(const RobotDataset *d, const char *name, char *why, size_t why_size) {
    if (!image_store_has(d->images, name)) {
        snprintf(why, why_size, "image '%s' not found in %s", name, d->options.images);
        return SKIP_MISSING_IMAGE;
    }
    if (!d->options.decode_images) return SKIP_REASON_COUNT;
    uint8_t *bytes = NULL;
    size_t size = 0;
    Image image = {0};
    Error image_err;
    bool ok = image_store_read(d->images, name, &bytes, &size, &image_err) &&
              image_decode_memory(bytes, size, name, &image, &image_err);
    free(bytes);
    free(image.pixels);
    if (!ok) snprintf(why, why_size, "%s", image_err.message);
    return ok ? SKIP_REASON_COUNT : SKIP_BAD_IMAGE;
}

typedef struct EpisodeTracker {
    char previous[256]; // the last usable line's "episode" text ("" when absent)
    int steps;          // usable steps of the current episode
} EpisodeTracker;

// Starts a new episode unless this line continues the previous line's.
static void track_episode(RobotDataset *d, EpisodeTracker *tracker, const char *episode) {
    bool continues = episode && tracker->steps > 0 && strncmp(tracker->previous, episode, sizeof tracker->previous) == 0;
    if (!continues && tracker->steps > 0) {
        d->stats.episodes++;
        tracker->steps = 0;
    }
    snprintf(tracker->previous, sizeof tracker->previous, "%s", episode ? episode : "");
}

static bool add_line(RobotDataset *d, EpisodeTracker *tracker, int64_t line_number, const char *line, size_t len,
                     Error *err) {
    char why[ERROR_MESSAGE_MAX];
    StepLine step;
    SkipReason reason = SKIP_BAD_RECORD;
    json_object *record = parse_record(line, len, why, sizeof why);
    if (record && read_step_line(record, d->action_dim, &step, why, sizeof why))
        reason = check_image(d, step.image, why, sizeof why);
    bool ok = true;
    if (reason == SKIP_REASON_COUNT) {
        track_episode(d, tracker, step.episode);
        ok = robot_grow((void **)&d->image_paths, &d->image_paths_capacity, d->n_steps + 1, sizeof *d->image_paths,
                        err) &&
             (d->image_paths[d->n_image_paths] = checked_strdup(step.image, err)) != NULL &&
             ++d->n_image_paths &&
             robot_add_step(d, step.instruction, strlen(step.instruction), step.action, tracker->steps, err);
        if (ok) tracker->steps++;
    } else {
        ok = robot_skip(d, d->stats.records, reason, err, "%s:%lld: %s", d->options.path, (long long)line_number, why);
    }
    d->stats.records++;
    json_object_put(record);
    return ok;
}

// The file's stem names the dataset; its folder holds the images unless options.images says otherwise.
static bool jsonl_name_and_images(RobotDataset *d, Error *err) {
    char *copy = checked_strdup(d->options.path, err), *folder = copy ? checked_strdup(copy, err) : NULL;
    if (folder) d->name = checked_strdup(basename(copy), err);
    char *dot = d->name ? strrchr(d->name, '.') : NULL;
    if (dot && dot != d->name) *dot = '\0';
    if (d->name && (!d->options.images || !d->options.images[0]))
        d->options.images = d->image_root = checked_strdup(dirname(folder), err);
    free(copy);
    free(folder);
    d->images = d->name && d->options.images ? image_store_open(d->options.images, err) : NULL;
    return d->images != NULL;
}

bool robot_jsonl_open(RobotDataset *d, Error *err) {
    char *text;
    size_t size;
    if (!jsonl_name_and_images(d, err) || !read_file(d->options.path, &text, &size, err)) return false;
    snprintf(d->image_key, sizeof d->image_key, "image");
    snprintf(d->instruction_key, sizeof d->instruction_key, "instruction");
    snprintf(d->action_key, sizeof d->action_key, "action");
    EpisodeTracker tracker = {.steps = 0};
    bool ok = true;
    int64_t line_number = 1;
    for (size_t start = 0; ok && start < size; line_number++) {
        const char *end = memchr(text + start, '\n', size - start);
        size_t len = end ? (size_t)(end - (text + start)) : size - start;
        bool blank = true;
        for (size_t i = 0; i < len && blank; i++) blank = isspace((unsigned char)text[start + i]);
        if (!blank) ok = add_line(d, &tracker, line_number, text + start, len, err);
        start += len + 1;
    }
    if (tracker.steps > 0) d->stats.episodes++;
    free(text);
    return ok;
}

bool robot_jsonl_detect(const char *path) {
    size_t len = strlen(path);
    if (len < 6 || strcmp(path + len - 6, ".jsonl") != 0) return false;
    FILE *file = fopen(path, "r");
    if (!file) return false;
    char *line = NULL;
    size_t capacity = 0;
    ssize_t n;
    bool robot = false;
    while ((n = getline(&line, &capacity, file)) >= 0) {
        char why[256];
        json_object *record = parse_record(line, (size_t)n, why, sizeof why), *action;
        if (!record) continue; // a blank or bad first line: the next one tells
        robot = json_object_object_get_ex(record, "action", &action);
        json_object_put(record);
        break;
    }
    free(line);
    fclose(file);
    return robot;
}

bool robot_jsonl_image(const RobotDataset *d, int64_t i, Image *out, Error *err) {
    uint8_t *bytes = NULL;
    size_t size = 0;
    bool ok = image_store_read(d->images, d->image_paths[i], &bytes, &size, err) &&
              image_decode_memory(bytes, size, d->image_paths[i], out, err);
    free(bytes);
    return ok;
}
