// OpenVLA folders (OpenVLAForActionPrediction, trust_remote_code's PrismaticConfig):
// config.json's vision keys and both towers' weights. The language model is
// text_config (hf_read_llama_config) under language_model. (HF_LAYOUT_OPENVLA),
// the projector projector.fc1..3 (the model's frozen tensors, hf_load_weights).
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <math.h>
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

// ----------------------------------------------------------------------------
// preprocessor_config.json (PrismaticImageProcessor)

// openvla/openvla-7b's tvf_normalize_params, what its apply_transform normalises with (and finetune.py
// trains with): DINOv2's ImageNet means / stds as they were saved, rounded to bfloat16, and SigLIP's 0.5.
static const double OPENVLA_MEAN[2][3] = {{0.484375, 0.455078125, 0.40625}, {0.5, 0.5, 0.5}};
static const double OPENVLA_STD[2][3] = {{0.228515625, 0.2236328125, 0.224609375}, {0.5, 0.5, 0.5}};
// Its means / stds, the constructor's (timm's data config for each tower).
static const double TIMM_MEAN[2][3] = {{0.485, 0.456, 0.406}, {0.5, 0.5, 0.5}};
static const double TIMM_STD[2][3] = {{0.229, 0.224, 0.225}, {0.5, 0.5, 0.5}};
enum { PIL_BICUBIC = 3 }; // torchvision's pil_modes_mapping of bicubic

static void default_preprocess(OpenVlaVision *out) {
    for (int k = 0; k < 2; k++) {
        float mean[3], std[3];
        for (int c = 0; c < 3; c++) mean[c] = (float)OPENVLA_MEAN[k][c], std[c] = (float)OPENVLA_STD[k][c];
        out->preprocess[k] = image_preprocess_square(out->towers[k].image_size, mean, std);
    }
}

static bool is_int(json_object *value, int n) {
    return value && json_object_is_type(value, json_type_int) && json_object_get_int(value) == n;
}

// [S, S] (or [3, S, S] with channels).
static bool is_square_size(json_object *size, int S, bool channels) {
    size_t n = channels ? 3 : 2;
    if (!size || !json_object_is_type(size, json_type_array) || json_object_array_length(size) != n) return false;
    if (channels && !is_int(json_object_array_get_idx(size, 0), 3)) return false;
    return is_int(json_object_array_get_idx(size, n - 2), S) && is_int(json_object_array_get_idx(size, n - 1), S);
}

// Entry k of key, a list of two when present; *item NULL when absent.
static bool tower_item(json_object *root, const char *path, const char *key, int k, json_object **item, Error *err) {
    *item = pair_item(root, key, k);
    if (!*item && member(root, key)) return fail(err, "%s: %s must be a list of two, one per tower", path, key);
    return true;
}

// Three numbers, the standard deviations positive.
static bool read_channels(json_object *list, bool positive, float out[3]) {
    if (!list || !json_object_is_type(list, json_type_array) || json_object_array_length(list) != 3) return false;
    for (int c = 0; c < 3; c++) {
        json_object *v = json_object_array_get_idx(list, (size_t)c);
        if (!v || !(json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int))) return false;
        out[c] = (float)json_object_get_double(v);
        if (!isfinite(out[c]) || (positive && !(out[c] > 0))) return false;
    }
    return true;
}

// Tower k's mean / std: tvf_normalize_params (what apply_transform uses), else means / stds.
static bool read_normalize(json_object *root, const char *path, int k, ImagePreprocess *p, Error *err) {
    json_object *params, *means, *stds;
    if (!tower_item(root, path, "tvf_normalize_params", k, &params, err) ||
        !tower_item(root, path, "means", k, &means, err) || !tower_item(root, path, "stds", k, &stds, err))
        return false;
    if (params) {
        if (!read_channels(member(params, "mean"), false, p->mean) ||
            !read_channels(member(params, "std"), true, p->std))
            return fail(err, "%s: tvf_normalize_params[%d] needs mean and std, three numbers each (std > 0)", path, k);
        return true;
    }
    if (!read_channels(means, false, p->mean) || !read_channels(stds, true, p->std))
        return fail(err,
                    "%s: neither tvf_normalize_params nor means and stds give tower %d's three means and "
                    "standard deviations (> 0)",
                    path, k);
    return true;
}

// Tower k's resize and crop: bicubic to S x S, a crop of S x S (none).
static bool check_resize(json_object *root, const char *path, int k, int S, Error *err) {
    json_object *interpolation, *resize, *crop;
    if (!tower_item(root, path, "interpolations", k, &interpolation, err) ||
        !tower_item(root, path, "tvf_resize_params", k, &resize, err) ||
        !tower_item(root, path, "tvf_crop_params", k, &crop, err))
        return false;
    if (interpolation && !is_string(interpolation, "bicubic"))
        return fail(err, "%s: interpolations[%d] is %s; lora-train implements bicubic", path, k,
                    json_object_to_json_string(interpolation));
    json_object *mode = member(resize, "interpolation"), *max_size = member(resize, "max_size");
    if (resize && (!is_square_size(member(resize, "size"), S, false) || (mode && !is_int(mode, PIL_BICUBIC)) ||
                   (max_size && !json_object_is_type(max_size, json_type_null))))
        return fail(err,
                    "%s: tvf_resize_params[%d] is %s; lora-train implements a bicubic (interpolation %d) resize "
                    "to size [%d, %d] without max_size",
                    path, k, json_object_to_json_string(resize), PIL_BICUBIC, S, S);
    json_object *crop_size = member(crop, "output_size");
    if (crop && !is_square_size(crop_size, S, false) && !is_int(crop_size, S))
        return fail(err, "%s: tvf_crop_params[%d] is %s; lora-train implements no crop (output_size [%d, %d])", path, k,
                    json_object_to_json_string(crop), S, S);
    return true;
}

// The strategy and the fused towers, before each tower's values.
static bool check_strategy(json_object *root, const char *path, Error *err) {
    json_object *strategy = member(root, "image_resize_strategy"), *fused = member(root, "use_fused_vision_backbone");
    json_object *letterbox = member(root, "tvf_do_letterbox");
    if (!is_string(strategy, "resize-naive"))
        return fail(err, "%s: image_resize_strategy is %s; lora-train implements resize-naive (OpenVLA's)", path,
                    strategy ? json_object_to_json_string(strategy) : "absent (PrismaticImageProcessor's letterbox)");
    if (fused && !json_object_get_boolean(fused))
        return fail(err, "%s: use_fused_vision_backbone is false; OpenVLA's towers are fused", path);
    if (letterbox && !json_object_is_type(letterbox, json_type_null) &&
        !(json_object_is_type(letterbox, json_type_boolean) && !json_object_get_boolean(letterbox)))
        return fail(err, "%s: tvf_do_letterbox is %s; lora-train implements no letterbox padding", path,
                    json_object_to_json_string(letterbox));
    return true;
}

static bool read_preprocessor(json_object *root, const char *path, OpenVlaVision *out, Error *err) {
    if (!check_strategy(root, path, err)) return false;
    for (int k = 0; k < 2; k++) {
        int S = out->towers[k].image_size;
        json_object *size;
        if (!tower_item(root, path, "input_sizes", k, &size, err)) return false;
        if (!is_square_size(size, S, true))
            return fail(err, "%s: input_sizes[%d] is %s; the tower takes [3, %d, %d] (config.json's image_sizes)", path,
                        k, size ? json_object_to_json_string(size) : "absent", S, S);
        if (!check_resize(root, path, k, S, err) || !read_normalize(root, path, k, &out->preprocess[k], err))
            return false;
    }
    return true;
}

// The folder's preprocessor_config.json over the defaults, when it has one.
static bool read_openvla_preprocessing(const char *model_dir, OpenVlaVision *out, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    default_preprocess(out);
    if (!join_path(path, sizeof path, model_dir, "preprocessor_config.json", err)) return false;
    if (!path_exists(path)) return true;
    json_object *root = read_json_object(path, err);
    bool ok = root && read_preprocessor(root, path, out, err);
    json_object_put(root);
    return ok;
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
    return ok && (!*is_openvla || read_openvla_preprocessing(model_dir, out, err));
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

// A number as its shortest decimal text (0.485, not 0.48499999999999999).
static json_object *number_json(double value) {
    char text[32];
    snprintf(text, sizeof text, "%.15g", value);
    return json_object_new_double_s(value, text);
}

static json_object *numbers_json(const double *values, int n) {
    json_object *list = json_object_new_array();
    for (int i = 0; i < n; i++) json_object_array_add(list, number_json(values[i]));
    return list;
}

// [S, S], or [3, S, S] with channels.
static json_object *square_json(bool channels, int S) {
    json_object *list = json_object_new_array();
    if (channels) json_object_array_add(list, json_object_new_int(3));
    for (int i = 0; i < 2; i++) json_object_array_add(list, json_object_new_int(S));
    return list;
}

// Tower k's tvf_*_params entry: resize, crop or normalize.
static json_object *tvf_json(const char *kind, int k, int S) {
    json_object *params = json_object_new_object();
    if (strcmp(kind, "resize") == 0) {
        json_object_object_add(params, "antialias", json_object_new_boolean(true));
        json_object_object_add(params, "interpolation", json_object_new_int(PIL_BICUBIC));
        json_object_object_add(params, "max_size", NULL);
        json_object_object_add(params, "size", square_json(false, S));
    } else if (strcmp(kind, "crop") == 0) {
        json_object_object_add(params, "output_size", square_json(false, S));
    } else {
        json_object_object_add(params, "inplace", json_object_new_boolean(false));
        json_object_object_add(params, "mean", numbers_json(OPENVLA_MEAN[k], 3));
        json_object_object_add(params, "std", numbers_json(OPENVLA_STD[k], 3));
    }
    return params;
}

// openvla/openvla-7b's preprocessor_config.json (keys sorted, as transformers saves it) at image size S.
static json_object *openvla_preprocessor_json(int S) {
    json_object *root = json_object_new_object(), *auto_map = json_object_new_object();
    json_object_object_add(auto_map, "AutoImageProcessor",
                           json_object_new_string("processing_prismatic.PrismaticImageProcessor"));
    json_object_object_add(auto_map, "AutoProcessor",
                           json_object_new_string("processing_prismatic.PrismaticProcessor"));
    json_object_object_add(root, "auto_map", auto_map);
    json_object_object_add(root, "image_processor_type", json_object_new_string("PrismaticImageProcessor"));
    json_object_object_add(root, "image_resize_strategy", json_object_new_string("resize-naive"));
    json_object_object_add(root, "input_sizes", pair_json(square_json(true, S), square_json(true, S)));
    json_object_object_add(root, "interpolations",
                           pair_json(json_object_new_string("bicubic"), json_object_new_string("bicubic")));
    json_object_object_add(root, "means", pair_json(numbers_json(TIMM_MEAN[0], 3), numbers_json(TIMM_MEAN[1], 3)));
    json_object_object_add(root, "processor_class", json_object_new_string("PrismaticProcessor"));
    json_object_object_add(root, "stds", pair_json(numbers_json(TIMM_STD[0], 3), numbers_json(TIMM_STD[1], 3)));
    json_object_object_add(root, "tvf_crop_params", pair_json(tvf_json("crop", 0, S), tvf_json("crop", 1, S)));
    json_object_object_add(root, "tvf_do_letterbox", json_object_new_boolean(false));
    json_object_object_add(root, "tvf_letterbox_fill", NULL);
    json_object_object_add(root, "tvf_normalize_params",
                           pair_json(tvf_json("normalize", 0, S), tvf_json("normalize", 1, S)));
    json_object_object_add(root, "tvf_resize_params", pair_json(tvf_json("resize", 0, S), tvf_json("resize", 1, S)));
    json_object_object_add(root, "use_fused_vision_backbone", json_object_new_boolean(true));
    return root;
}

// dir/name holding obj, which is released.
static bool write_json_in(const char *dir, const char *name, json_object *obj, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    bool ok = join_path(path, sizeof path, dir, name, err) && write_json_file(path, obj, err);
    json_object_put(obj);
    return ok;
}

bool hf_save_openvla(Model *model, FusedFeaturizer *featurizer, const char *model_dir, Error *err) {
    char weights_path[CHECKPOINT_PATH_MAX];
    if (!make_dirs(model_dir, err) ||
        !join_path(weights_path, sizeof weights_path, model_dir, "model.safetensors", err))
        return false;
    OpenVlaVision vision = {.n_action_bins = 256};
    for (int k = 0; k < 2; k++) vision.towers[k] = *clip_tower_config(fused_featurizer_tower(featurizer, k));
    return write_json_in(model_dir, "config.json", openvla_config_json(model, &vision), err) &&
           write_json_in(model_dir, "preprocessor_config.json", openvla_preprocessor_json(vision.towers[0].image_size),
                         err) &&
           hf_save_openvla_weights(model, featurizer, weights_path, err);
}
