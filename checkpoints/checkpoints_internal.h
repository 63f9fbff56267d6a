// checkpoints: helpers shared by the folder's files (not part of the public API).
#pragma once
#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "../core/core.h"

#define CHECKPOINT_PATH_MAX 4096

// dir + "/" + file into buf; false (with err) when it does not fit.
bool join_path(char *buf, size_t size, const char *dir, const char *file, Error *err);
// Parses a JSON file whose top level must be an object; NULL with err naming the file.
json_object *read_json_object(const char *path, Error *err);
// Writes obj pretty-printed (2 spaces, no escaped slashes) to path.
bool write_json_file(const char *path, json_object *obj, Error *err);
