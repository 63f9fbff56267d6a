// OpenVLA folders (OpenVLAForActionPrediction, trust_remote_code's PrismaticConfig):
// config.json's vision keys and both towers' weights. The language model is
// text_config (hf_read_llama_config) under language_model. (HF_LAYOUT_OPENVLA),
// the projector projector.fc1..3 (the model's frozen tensors, hf_load_weights).
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

static json_object *member(json_object *obj, const char *key) {
    json_object *value = NULL;
    return obj && json_object_object_get_ex(obj, key, &value) ? value : NULL;
}

static bool is_string(json_object *value, const char *text) {
    return value && json_object_is_type(value, json_type_string) && strcmp(json_object_get_string(value), text) == 0;
}

static bool is_openvla_config(json_object *root) {
    json_object *architectures = member(root, "architectures");
    bool listed = architectures && json_object_is_type(architectures, json_type_array) &&
                  json_object_array_length(architectures) > 0 &&
                  is_string(json_object_array_get_idx(architectures, 0), "OpenVLAForActionPrediction");
    return listed || is_string(member(root, "model_type"), "openvla");
}

// The preset of a timm model id (its pretrained tag, ".lvd142m", ignored).
static const char *tower_preset(const char *timm_id) {
    static const char *const ids[][2] = {{"vit_large_patch14_reg4_dinov2", "dinov2-vit-l14-reg4"},
                                         {"vit_so400m_patch14_siglip_224", "siglip-so400m-14"}};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        size_t n = strlen(ids[i][0]);
        if (strncmp(timm_id, ids[i][0], n) == 0 && (timm_id[n] == '\0' || timm_id[n] == '.')) return ids[i][1];
    }
    return NULL;
}

// Entry i of a list of two, or NULL.
static json_object *pair_item(json_object *root, const char *key, int i) {
    json_object *list = member(root, key);
    if (!list || !json_object_is_type(list, json_type_array) || json_object_array_length(list) != 2) return NULL;
    return json_object_array_get_idx(list, (size_t)i);
}

// lora-train's "tower_shapes" (tiny folders of tests and the demo; OpenVLA's own have none): the
// preset's sizes replaced by those given.
static const struct {
    const char *key;
    size_t offset;
} TOWER_SHAPE_KEYS[] = {{"hidden_size", offsetof(ClipVisionConfig, hidden_size)},
                        {"intermediate_size", offsetof(ClipVisionConfig, intermediate_size)},
                        {"num_hidden_layers", offsetof(ClipVisionConfig, n_layers)},
                        {"num_attention_heads", offsetof(ClipVisionConfig, n_heads)},
                        {"patch_size", offsetof(ClipVisionConfig, patch_size)}};
enum { N_TOWER_SHAPE_KEYS = sizeof TOWER_SHAPE_KEYS / sizeof TOWER_SHAPE_KEYS[0] };

static bool read_tower_shape(json_object *shape, const char *path, int i, ClipVisionConfig *tower, Error *err) {
    if (!shape) return true;
    if (!json_object_is_type(shape, json_type_object))
        return fail(err, "%s: tower_shapes[%d] must be an object", path, i);
    for (int k = 0; k < N_TOWER_SHAPE_KEYS; k++) {
        json_object *value = member(shape, TOWER_SHAPE_KEYS[k].key);
        if (value && !json_object_is_type(value, json_type_int))
            return fail(err, "%s: tower_shapes[%d].%s must be an integer", path, i, TOWER_SHAPE_KEYS[k].key);
        if (value) *(int *)((char *)tower + TOWER_SHAPE_KEYS[k].offset) = json_object_get_int(value);
    }
    return clip_config_validate(tower, err) || fail_context(err, "%s: tower_shapes[%d]: ", path, i);
}

static bool read_towers(json_object *root, const char *path, OpenVlaVision *out, Error *err) {
    json_object *fused = member(root, "use_fused_vision_backbone");
    if (!fused || !json_object_get_boolean(fused))
        return fail(err, "%s: use_fused_vision_backbone is not true; only OpenVLA's fused DINOv2 + SigLIP towers are "
                         "supported", path);
    for (int i = 0; i < 2; i++) {
        json_object *id = pair_item(root, "timm_model_ids", i), *size = pair_item(root, "image_sizes", i);
        json_object *act = pair_item(root, "timm_override_act_layers", i);
        if (!id || !json_object_is_type(id, json_type_string) || !size || !json_object_is_type(size, json_type_int))
            return fail(err, "%s: timm_model_ids and image_sizes must be lists of two strings / integers", path);
        const char *preset = tower_preset(json_object_get_string(id));
        if (!preset)
            return fail(err, "%s: timm_model_ids[%d] is '%s'; supported: vit_large_patch14_reg4_dinov2 (first) and "
                             "vit_so400m_patch14_siglip_224 (second)", path, i, json_object_get_string(id));
        if (act && !json_object_is_type(act, json_type_null))
            return fail(err, "%s: timm_override_act_layers[%d] is set; only the towers' own GELU is supported", path,
                        i);
        if (!clip_config_preset(preset, &out->towers[i], err)) return false;
        out->towers[i].image_size = json_object_get_int(size);
        if (!read_tower_shape(pair_item(root, "tower_shapes", i), path, i, &out->towers[i], err)) return false;
    }
    if (out->towers[0].image_size != out->towers[1].image_size)
        return fail(err, "%s: image_sizes %d and %d differ; the fused towers take one image size", path,
                    out->towers[0].image_size, out->towers[1].image_size);
    return true;
}

bool hf_read_openvla(const char *model_dir, bool *is_openvla, OpenVlaVision *out, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    *is_openvla = false;
    if (!join_path(path, sizeof path, model_dir, "config.json", err)) return false;
    if (!path_exists(path)) return true;
    json_object *root = read_json_object(path, err);
    if (!root) return false;
    *is_openvla = is_openvla_config(root);
    *out = (OpenVlaVision){.n_action_bins = 256};
    bool ok = !*is_openvla || read_towers(root, path, out, err);
    json_object *bins = member(root, "n_action_bins"), *pad = member(root, "pad_to_multiple_of");
    if (ok && bins && json_object_is_type(bins, json_type_int)) out->n_action_bins = json_object_get_int(bins);
    if (ok && pad && json_object_is_type(pad, json_type_int)) out->pad_to_multiple_of = json_object_get_int(pad);
    json_object_put(root);
    return ok;
}

bool openvla_load_towers(FusedFeaturizer *featurizer, const char *model_dir, Error *err) {
    static const char *const prefixes[2] = {"vision_backbone.featurizer.", "vision_backbone.fused_featurizer."};
    for (int k = 0; k < 2; k++) {
        if (!clip_load_weights_under(fused_featurizer_tower(featurizer, k), model_dir, prefixes[k], err)) return false;
    }
    return true;
}

// ----------------------------------------------------------------------------
// writing (tests and the demo: random OpenVLA-shaped folders)

static json_object *pair_json(json_object *a, json_object *b) {
    json_object *list = json_object_new_array();
    json_object_array_add(list, a);
    json_object_array_add(list, b);
    return list;
}

static json_object *tower_shape_json(const ClipVisionConfig *tower) {
    json_object *shape = json_object_new_object();
    for (int k = 0; k < N_TOWER_SHAPE_KEYS; k++)
        json_object_object_add(shape, TOWER_SHAPE_KEYS[k].key,
                               json_object_new_int(*(const int *)((const char *)tower + TOWER_SHAPE_KEYS[k].offset)));
    return shape;
}

static json_object *openvla_config_json(const Model *model, const OpenVlaVision *vision) {
    json_object *root = json_object_new_object(), *architectures = json_object_new_array();
    json_object_array_add(architectures, json_object_new_string("OpenVLAForActionPrediction"));
    json_object_object_add(root, "architectures", architectures);
    json_object_object_add(root, "model_type", json_object_new_string("openvla"));
    json_object_object_add(root, "use_fused_vision_backbone", json_object_new_boolean(true));
    json_object *dinov2 = json_object_new_string("vit_large_patch14_reg4_dinov2.lvd142m");
    json_object_object_add(root, "timm_model_ids", pair_json(dinov2, json_object_new_string("vit_so400m_patch14_siglip_224")));
    json_object_object_add(root, "timm_override_act_layers", pair_json(NULL, NULL));
    json_object_object_add(root, "image_sizes", pair_json(json_object_new_int(vision->towers[0].image_size),
                                                          json_object_new_int(vision->towers[1].image_size)));
    json_object_object_add(root, "image_resize_strategy", json_object_new_string("resize-naive"));
    json_object_object_add(root, "n_action_bins", json_object_new_int(vision->n_action_bins));
    json_object_object_add(root, "tower_shapes",
                           pair_json(tower_shape_json(&vision->towers[0]), tower_shape_json(&vision->towers[1])));
    json_object_object_add(root, "text_config", llama_config_json(model_config(model)));
    return root;
}

bool hf_save_openvla(Model *model, FusedFeaturizer *featurizer, const char *model_dir, Error *err) {
    char config_path[CHECKPOINT_PATH_MAX], weights_path[CHECKPOINT_PATH_MAX];
    if (!make_dirs(model_dir, err) || !join_path(config_path, sizeof config_path, model_dir, "config.json", err) ||
        !join_path(weights_path, sizeof weights_path, model_dir, "model.safetensors", err))
        return false;
    OpenVlaVision vision = {.n_action_bins = 256};
    for (int k = 0; k < 2; k++) vision.towers[k] = *clip_tower_config(fused_featurizer_tower(featurizer, k));
    json_object *config = openvla_config_json(model, &vision);
    bool ok = write_json_file(config_path, config, err);
    json_object_put(config);
    return ok && hf_save_openvla_weights(model, featurizer, weights_path, err);
}
