// checkpoints: safetensors I/O, Hugging Face model folders, PEFT adapters.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"
#include "../model/model.h"
#include "../vision/vision.h"

// ----------------------------------------------------------------------------
// safetensors: 8-byte little-endian header length, JSON header, data.
// The reader memory-maps the file and checks every offset and shape against
// the file's size before handing out a view.

typedef struct SafetensorsFile SafetensorsFile;

SafetensorsFile *safetensors_open(const char *path, Error *err);
void safetensors_close(SafetensorsFile *file);
int safetensors_count(const SafetensorsFile *file);
const char *safetensors_name(const SafetensorsFile *file, int index);
// View of the named tensor (data points into the mapping); false if absent.
bool safetensors_get(const SafetensorsFile *file, const char *name, Tensor *out, Error *err);
// __metadata__ value for key, or NULL.
const char *safetensors_metadata(const SafetensorsFile *file, const char *key);

typedef struct SafetensorsEntry {
    const char *name;
    Tensor tensor;     // host memory
} SafetensorsEntry;

// Writes entries (in the given order) with optional string metadata pairs.
bool safetensors_write(const char *path, const SafetensorsEntry *entries, int n_entries,
                       const char *const *metadata_kv, int n_metadata, Error *err);

// ----------------------------------------------------------------------------
// Hugging Face model folders (LlamaForCausalLM): config.json + model.safetensors

bool hf_read_llama_config(const char *model_dir, LlamaConfig *out, Error *err);
// Writes config.json and model.safetensors (fp32) of the model's frozen weights.
bool hf_save_model(Model *model, const char *model_dir, Error *err);
// Loads every frozen tensor of model from model_dir, checking presence, dtype
// and shape; a mismatch names the tensor, expected and found shapes.
bool hf_load_weights(Model *model, const char *model_dir, Error *err);

// ----------------------------------------------------------------------------
// PEFT adapters

typedef struct AdapterInfo {
    const char *base_model_name_or_path;
} AdapterInfo;

// adapter_config.json + adapter_model.safetensors in dir (created if needed),
// keys base_model.model.<module>.lora_A.weight (r, in) / lora_B.weight (out, r);
// a model with a projector also writes it beside them as PROJECTOR_FILE.
bool adapter_save(Model *model, const AdapterInfo *info, const char *dir, Error *err);
// Loads LoRA tensors from a PEFT adapter folder into the model's parameters.
bool adapter_load(Model *model, const char *dir, Error *err);

// ----------------------------------------------------------------------------
// vision-language: projector and CLIP tower weights

#define PROJECTOR_FILE "projector.safetensors"

// The projector's four tensors, fp32, llava-hf names: multi_modal_projector.
// linear_1.weight (C, in), linear_1.bias (C), linear_2.weight (C, C), linear_2.bias (C).
bool projector_save(Model *model, const char *path, Error *err);
// From a safetensors file holding the projector under llava-hf names (with or
// without the "model." prefix of the new layout) or LLaVA pretraining's
// (model.mm_projector.0/2.{weight,bias}); shapes are checked.
bool projector_load(Model *model, const char *path, Error *err);
// Every tower weight from a safetensors file with CLIP keys ("vision_model....",
// as openai/clip-vit-large-patch14-336) or a llava-hf checkpoint's (under
// "vision_tower." or "model.vision_tower."), each with or without the
// "vision_model." part (transformers 5 saves without); other tensors are ignored.
bool clip_load_weights(ClipTower *tower, const char *path, Error *err);
