// checkpoints: helpers shared by the folder's files (not part of the public API).
#pragma once
#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"
#include "checkpoints.h"

#define CHECKPOINT_PATH_MAX 4096

// dir + "/" + file into buf; false (with err) when it does not fit.
bool join_path(char *buf, size_t size, const char *dir, const char *file, Error *err);
// Parses a JSON file whose top level must be an object; NULL with err naming the file.
json_object *read_json_object(const char *path, Error *err);
// Writes obj pretty-printed (2 spaces, no escaped slashes) to path.
bool write_json_file(const char *path, json_object *obj, Error *err);
// A Llama's config.json object as transformers writes it (hf_model.c); OpenVLA's text_config.
json_object *llama_config_json(const LlamaConfig *config);
// model.safetensors of an OpenVLA folder: the model's frozen tensors in OpenVLA's names and both towers' (vlm.c).
bool hf_save_openvla_weights(Model *model, FusedFeaturizer *featurizer, const char *path, Error *err);

// The tensors of a Hugging Face model folder: model.safetensors, or every shard
// that model.safetensors.index.json's weight_map lists, each mapped once; or of
// one safetensors file when model_dir is a file.
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

#define ADAPTER_CONFIG_FILE "adapter_config.json"
#define PEFT_KEY_PREFIX "base_model.model." // PeftModel's path to the base model's modules
#define ADAPTER_WEIGHTS_FILE "adapter_model.safetensors"

// A file's whole contents in memory (bytes malloc'd).
typedef struct FileImage {
    uint8_t *bytes;
    size_t size;
} FileImage;

void file_image_free(FileImage *image);
// obj as write_json_file writes it, into image.
bool json_to_text(const char *name, json_object *obj, FileImage *image, Error *err);
// Writes image to path and fsyncs it (every write(2) goes through the
// failure-injection hook); a failure removes the partial file and names path.
bool write_file_durable(const char *path, const FileImage *image, Error *err);
// fsync of a directory, so the names created or renamed in it are durable.
bool sync_dir(const char *dir, Error *err);
// rename(2) naming both paths on failure.
bool rename_path(const char *from, const char *to, Error *err);
// rm -r (no error if absent), each removal a crash point.
bool remove_folder(const char *path, Error *err);
// Re-reads path and checks its size and FNV-1a checksum.
bool verify_file(const char *path, uint64_t size, uint64_t checksum, Error *err);

// The adapter's adapter_config.json and adapter_model.safetensors, in memory.
bool adapter_serialize(Model *model, const AdapterInfo *info, FileImage *config, FileImage *weights, Error *err);

// The fp32 masters of every trainable parameter onto the host (ParamTable
// layout, malloc'd), and back onto the backend with the compute copy refreshed.
float *download_params(Model *model, Error *err);
void upload_params(Model *model, const float *host);
