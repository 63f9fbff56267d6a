// checkpoints: helpers shared by the folder's files (not part of the public API).
#pragma once
#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "../core/core.h"
#include "checkpoints.h"

#define CHECKPOINT_PATH_MAX 4096

// dir + "/" + file into buf; false (with err) when it does not fit.
bool join_path(char *buf, size_t size, const char *dir, const char *file, Error *err);
// Parses a JSON file whose top level must be an object; NULL with err naming the file.
json_object *read_json_object(const char *path, Error *err);
// Writes obj pretty-printed (2 spaces, no escaped slashes) to path.
bool write_json_file(const char *path, json_object *obj, Error *err);

// The tensors of a Hugging Face model folder: model.safetensors, or every shard
// that model.safetensors.index.json's weight_map lists, each mapped once.
typedef struct HfWeights HfWeights;

HfWeights *hf_weights_open(const char *model_dir, Error *err);
void hf_weights_close(HfWeights *weights);
int hf_weights_count(const HfWeights *weights);
const char *hf_weights_name(const HfWeights *weights, int index);
// View of a tensor and the path of the file holding it; false when absent.
bool hf_weights_find(const HfWeights *weights, const char *name, Tensor *out, const char **file_path);
// The key layout whose embed_tokens the folder holds (Llama when none matches).
HfLayout hf_weights_layout(const HfWeights *weights);
// Checkpoint key of a canonical (LlamaForCausalLM) name under layout; lm_head
// has a second candidate (alternative = true) for LLaVA folders.
bool hf_layout_key(HfLayout layout, const char *canonical, bool alternative, char *out, size_t size, Error *err);
// The layout of an adapter_model.safetensors' keys (from its first key).
HfLayout adapter_file_layout(const SafetensorsFile *file);
// Copies src to dst byte for byte.
bool copy_file(const char *src, const char *dst, Error *err);
