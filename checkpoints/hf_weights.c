// The tensors of a Hugging Face model folder, single-file or sharded, and the
// key layouts of the language model inside LlamaForCausalLM and LLaVA folders.
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INDEX_FILE "model.safetensors.index.json"
#define SINGLE_FILE "model.safetensors"

struct HfWeights {
    SafetensorsFile **files;
    char **paths;
    int n_files;
};

void hf_weights_close(HfWeights *weights) {
    if (!weights) return;
    for (int i = 0; i < weights->n_files; i++) {
        safetensors_close(weights->files[i]);
        free(weights->paths[i]);
    }
    free(weights->files);
    free(weights->paths);
    free(weights);
}

static int shard_index(const HfWeights *weights, const char *path) {
    for (int i = 0; i < weights->n_files; i++) {
        if (strcmp(weights->paths[i], path) == 0) return i;
    }
    return -1;
}

// Opens path unless already open; *index receives its slot.
static bool open_shard(HfWeights *weights, const char *path, int capacity, int *index, Error *err) {
    *index = shard_index(weights, path);
    if (*index >= 0) return true;
    if (weights->n_files == capacity) return fail(err, "too many shards");
    SafetensorsFile *file = safetensors_open(path, err);
    if (!file) return false;
    char *copy = checked_strdup(path, err);
    if (!copy) {
        safetensors_close(file);
        return false;
    }
    *index = weights->n_files++;
    weights->files[*index] = file;
    weights->paths[*index] = copy;
    return true;
}

// A shard name stays inside the folder: no '/' and no "..".
static bool check_shard_name(const char *index_path, const char *tensor, const char *shard, Error *err) {
    if (strchr(shard, '/') || strcmp(shard, "..") == 0 || shard[0] == '\0') {
        return fail(err, "%s: weight_map[\"%s\"] = \"%s\" is not a file name in the folder", index_path, tensor, shard);
    }
    return true;
}

// Opens every shard the weight_map names and checks each tensor is in its shard.
static bool open_shards(HfWeights *weights, const char *model_dir, const char *index_path, json_object *map, Error *err) {
    int capacity = json_object_object_length(map);
    weights->files = checked_calloc((size_t)capacity + 1, sizeof *weights->files, index_path, err);
    weights->paths = checked_calloc((size_t)capacity + 1, sizeof *weights->paths, index_path, err);
    if (!weights->files || !weights->paths) return false;
    json_object_object_foreach(map, tensor, shard_json) {
        const char *shard = json_object_is_type(shard_json, json_type_string) ? json_object_get_string(shard_json) : "";
        char path[CHECKPOINT_PATH_MAX];
        int index;
        Tensor view;
        if (!check_shard_name(index_path, tensor, shard, err) || !join_path(path, sizeof path, model_dir, shard, err) ||
            !open_shard(weights, path, capacity, &index, err)) {
            return false;
        }
        if (!safetensors_get(weights->files[index], tensor, &view, err)) {
            return fail(err, "%s: weight_map puts %s in %s, which does not hold it", index_path, tensor, shard);
        }
    }
    return true;
}

static bool open_index(HfWeights *weights, const char *model_dir, const char *index_path, Error *err) {
    json_object *index = read_json_object(index_path, err), *map;
    if (!index) return false;
    bool ok = json_object_object_get_ex(index, "weight_map", &map) && json_object_is_type(map, json_type_object);
    if (!ok) fail(err, "%s: weight_map must be an object of tensor name -> shard file", index_path);
    ok = ok && open_shards(weights, model_dir, index_path, map, err);
    json_object_put(index);
    return ok;
}

static bool open_single(HfWeights *weights, const char *path, Error *err) {
    weights->files = checked_calloc(1, sizeof *weights->files, path, err);
    weights->paths = checked_calloc(1, sizeof *weights->paths, path, err);
    int index;
    return weights->files && weights->paths && open_shard(weights, path, 1, &index, err);
}

static bool is_directory(const char *path) {
    struct stat info;
    return stat(path, &info) == 0 && S_ISDIR(info.st_mode);
}

HfWeights *hf_weights_open(const char *model_dir, Error *err) {
    char single[CHECKPOINT_PATH_MAX], index[CHECKPOINT_PATH_MAX];
    bool folder = !path_exists(model_dir) || is_directory(model_dir);
    if (!folder) snprintf(single, sizeof single, "%s", model_dir);
    if (folder && (!join_path(single, sizeof single, model_dir, SINGLE_FILE, err) ||
                   !join_path(index, sizeof index, model_dir, INDEX_FILE, err))) {
        return NULL;
    }
    HfWeights *weights = checked_calloc(1, sizeof *weights, model_dir, err);
    if (!weights) return NULL;
    bool sharded = folder && !path_exists(single) && path_exists(index);
    if (!(sharded ? open_index(weights, model_dir, index, err) : open_single(weights, single, err))) {
        hf_weights_close(weights);
        return NULL;
    }
    return weights;
}

int hf_weights_count(const HfWeights *weights) {
    int count = 0;
    for (int i = 0; i < weights->n_files; i++) count += safetensors_count(weights->files[i]);
    return count;
}

const char *hf_weights_name(const HfWeights *weights, int index) {
    for (int i = 0; i < weights->n_files; i++) {
        int count = safetensors_count(weights->files[i]);
        if (index < count) return safetensors_name(weights->files[i], index);
        index -= count;
    }
    return NULL;
}

bool hf_weights_find(const HfWeights *weights, const char *name, Tensor *out, const char **file_path) {
    for (int i = 0; i < weights->n_files; i++) {
        Error absent;
        if (safetensors_get(weights->files[i], name, out, &absent)) {
            if (file_path) *file_path = weights->paths[i];
            return true;
        }
    }
    return false;
}

// ----------------------------------------------------------------------------
// key layouts

const char *hf_layout_decoder_prefix(HfLayout layout) {
    switch (layout) {
    case HF_LAYOUT_LLAVA_LEGACY:
    case HF_LAYOUT_OPENVLA: return "language_model.model.";
    case HF_LAYOUT_LLAVA: return "model.language_model.";
    default: return "model.";
    }
}

// lm_head of a LLaVA folder: the layout's own place first, then the other one.
static const char *lm_head_key(HfLayout layout, bool alternative) {
    bool legacy_place = (layout == HF_LAYOUT_LLAVA_LEGACY || layout == HF_LAYOUT_OPENVLA) != alternative;
    return layout == HF_LAYOUT_LLAMA || !legacy_place ? "lm_head.weight" : "language_model.lm_head.weight";
}

bool hf_layout_key(HfLayout layout, const char *canonical, bool alternative, char *out, size_t size, Error *err) {
    int n;
    if (strcmp(canonical, "lm_head.weight") == 0) {
        n = snprintf(out, size, "%s", lm_head_key(layout, alternative));
    } else if (strncmp(canonical, "model.", 6) == 0) {
        n = snprintf(out, size, "%s%s", hf_layout_decoder_prefix(layout), canonical + 6);
    } else if (strncmp(canonical, "projector.", 10) == 0 || strncmp(canonical, "vision_backbone.", 16) == 0) {
        n = snprintf(out, size, "%s", canonical); // OpenVLA's projector and towers, at the top level
    } else {
        return fail(err, "tensor name %s is not under model., projector., vision_backbone. or lm_head", canonical);
    }
    if (n < 0 || (size_t)n >= size) return fail(err, "tensor name too long: %s", canonical);
    return true;
}

HfLayout hf_weights_layout(const HfWeights *weights) {
    static const HfLayout candidates[] = {HF_LAYOUT_LLAVA, HF_LAYOUT_LLAVA_LEGACY};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        char key[PARAM_NAME_MAX];
        Tensor view;
        snprintf(key, sizeof key, "%sembed_tokens.weight", hf_layout_decoder_prefix(candidates[i]));
        if (!hf_weights_find(weights, key, &view, NULL)) continue;
        bool openvla = candidates[i] == HF_LAYOUT_LLAVA_LEGACY &&
                       hf_weights_find(weights, "projector.fc1.weight", &view, NULL);
        return openvla ? HF_LAYOUT_OPENVLA : candidates[i];
    }
    return HF_LAYOUT_LLAMA;
}

bool hf_read_layout(const char *model_dir, HfLayout *out, Error *err) {
    HfWeights *weights = hf_weights_open(model_dir, err);
    if (!weights) return false;
    *out = hf_weights_layout(weights);
    hf_weights_close(weights);
    return true;
}
