// The vision side of a llava-hf folder: config.json's vision_config and the
// LlavaConfig keys around it, and the image processor's settings
// (preprocessor_config.json, or processor_config.json's image_processor as
// transformers 5 saves it). Keys absent from a file take transformers' defaults.
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static json_object *member(json_object *obj, const char *key) {
    json_object *value = NULL;
    return obj && json_object_object_get_ex(obj, key, &value) ? value : NULL;
}

static const char *string_or(json_object *obj, const char *key, const char *fallback) {
    json_object *value = member(obj, key);
    return value && json_object_is_type(value, json_type_string) ? json_object_get_string(value) : fallback;
}

// An integer key, or fallback when absent; a present key of another type is an error.
static bool int_or(json_object *obj, const char *path, const char *key, int fallback, int *out, Error *err) {
    json_object *value = member(obj, key);
    if (!value || json_object_is_type(value, json_type_null)) return *out = fallback, true;
    if (!json_object_is_type(value, json_type_int)) return fail(err, "%s: %s must be an integer", path, key);
    *out = json_object_get_int(value);
    return true;
}

static bool float_or(json_object *obj, const char *path, const char *key, float fallback, float *out, Error *err) {
    json_object *value = member(obj, key);
    if (!value || json_object_is_type(value, json_type_null)) return *out = fallback, true;
    if (!json_object_is_type(value, json_type_double) && !json_object_is_type(value, json_type_int))
        return fail(err, "%s: %s must be a number", path, key);
    *out = (float)json_object_get_double(value);
    return true;
}

// vision_config.hidden_act: the activations the tower implements, by transformers' ACT2FN names
// (gelu_new is the same tanh formula as gelu_pytorch_tanh).
static bool read_activation(json_object *vision, const char *path, const char *fallback, VitActivation *out,
                            Error *err) {
    const char *act = string_or(vision, "hidden_act", fallback);
    if (strcmp(act, "quick_gelu") == 0) *out = VIT_QUICK_GELU;
    else if (strcmp(act, "gelu_pytorch_tanh") == 0 || strcmp(act, "gelu_new") == 0) *out = VIT_GELU_TANH;
    else if (strcmp(act, "gelu") == 0) *out = VIT_GELU;
    else
        return fail(err, "%s: vision_config.hidden_act is '%s'; the vision tower implements quick_gelu, gelu, "
                         "gelu_pytorch_tanh and gelu_new", path, act);
    return true;
}

// CLIPVisionConfig's or SiglipVisionConfig's fields, absent ones at their
// defaults; without a vision_config LlavaConfig builds CLIP ViT-L/14-336's.
static bool read_tower_config(json_object *vision, const char *path, ClipVisionConfig *c, Error *err) {
    if (!vision) return clip_config_preset("clip-vit-large-patch14-336", c, err);
    const char *type = string_or(vision, "model_type", "clip_vision_model");
    bool siglip = strcmp(type, "siglip_vision_model") == 0;
    if (!siglip && strcmp(type, "clip_vision_model") != 0)
        return fail(err, "%s: vision_config.model_type is '%s'; lora-train's towers are CLIP (clip_vision_model) and "
                         "SigLIP (siglip_vision_model)", path, type);
    *c = (ClipVisionConfig){.layout = VIT_LAYOUT_HF, .class_token = !siglip, .pos_embed_prefix = true,
                            .pre_norm = !siglip, .patch_bias = siglip};
    return read_activation(vision, path, siglip ? "gelu_pytorch_tanh" : "quick_gelu", &c->activation, err) &&
           int_or(vision, path, "hidden_size", 768, &c->hidden_size, err) &&
           int_or(vision, path, "intermediate_size", 3072, &c->intermediate_size, err) &&
           int_or(vision, path, "num_hidden_layers", 12, &c->n_layers, err) &&
           int_or(vision, path, "num_attention_heads", 12, &c->n_heads, err) &&
           int_or(vision, path, "image_size", 224, &c->image_size, err) &&
           int_or(vision, path, "patch_size", siglip ? 16 : 32, &c->patch_size, err) &&
           int_or(vision, path, "num_channels", 3, &c->channels, err) &&
           float_or(vision, path, "layer_norm_eps", siglip ? 1e-6f : 1e-5f, &c->layer_norm_eps, err);
}

// vision_feature_layer (one layer; a list of layers is refused),
// vision_feature_select_strategy, and the projector the model code builds.
static bool read_feature_choice(json_object *config, const char *path, ClipVisionConfig *c, Error *err) {
    json_object *layer = member(config, "vision_feature_layer");
    if (layer && json_object_is_type(layer, json_type_array))
        return fail(err, "%s: vision_feature_layer is a list; features of several layers are not implemented", path);
    const char *strategy = string_or(config, "vision_feature_select_strategy", "default");
    if (strcmp(strategy, "default") != 0 && strcmp(strategy, "full") != 0)
        return fail(err, "%s: vision_feature_select_strategy '%s' (known: default, full)", path, strategy);
    c->skip_tokens = strcmp(strategy, "full") == 0 ? 0 : 1; // Llava's 'default': hidden_states[layer][:, 1:]
    const char *act = string_or(config, "projector_hidden_act", "gelu");
    if (strcmp(act, "gelu") != 0)
        return fail(err, "%s: projector_hidden_act is '%s'; the projector implements gelu only", path, act);
    json_object *bias = member(config, "multimodal_projector_bias");
    if (bias && !json_object_get_boolean(bias))
        return fail(err, "%s: multimodal_projector_bias is false; the projector has biases", path);
    if (!int_or(config, path, "vision_feature_layer", -2, &c->feature_layer, err)) return false;
    return clip_config_validate(c, err) || fail_context(err, "%s: ", path);
}

static bool read_mean_std(json_object *obj, const char *path, const char *key, float out[3], Error *err) {
    json_object *list = member(obj, key);
    if (!list) return true;
    if (!json_object_is_type(list, json_type_array) || json_object_array_length(list) != 3)
        return fail(err, "%s: %s must be a list of 3 numbers", path, key);
    for (int c = 0; c < 3; c++) out[c] = (float)json_object_get_double(json_object_array_get_idx(list, (size_t)c));
    return true;
}

// size {"shortest_edge": S} (CLIP) or {"height": S, "width": S} (SigLIP: a resize
// straight to S x S, *square true); crop_size {"height": S, "width": S}.
static bool read_square(json_object *obj, const char *path, const char *key, int *out, bool *square, Error *err) {
    json_object *size = member(obj, key);
    if (!size) return true;
    if (json_object_is_type(size, json_type_int)) return *out = json_object_get_int(size), true;
    int edge = 0, height = 0, width = 0;
    if (!int_or(size, path, "shortest_edge", 0, &edge, err) || !int_or(size, path, "height", 0, &height, err) ||
        !int_or(size, path, "width", 0, &width, err))
        return false;
    if (edge > 0) return *out = edge, true;
    if (height > 0 && height == width) return *out = height, *square = true, true;
    return fail(err, "%s: %s must be {\"shortest_edge\": S} or a square {\"height\": S, \"width\": S}", path, key);
}

// An image processor's settings over p (CLIP's until then): resample must be
// bicubic (3), rescale 1/255, and the crop the resize's size. The fit is the
// processor's: CROP after a shortest-edge resize, SQUASH for a square size.
static bool read_image_processor(json_object *proc, const char *path, ImagePreprocess *p, Error *err) {
    int resample = 3, resize = p->size, crop = p->size;
    bool square = false, square_crop = false;
    float rescale = 1.0f / 255.0f;
    if (!int_or(proc, path, "resample", 3, &resample, err) || !float_or(proc, path, "rescale_factor", rescale, &rescale, err) ||
        !read_square(proc, path, "size", &resize, &square, err) ||
        !read_square(proc, path, "crop_size", &crop, &square_crop, err) ||
        !read_mean_std(proc, path, "image_mean", p->mean, err) || !read_mean_std(proc, path, "image_std", p->std, err))
        return false;
    if (resample != 3) return fail(err, "%s: resample %d; lora-train resizes with Pillow's BICUBIC (3) only", path, resample);
    if (fabsf(rescale * 255.0f - 1.0f) > 1e-6f) return fail(err, "%s: rescale_factor %g is not 1/255", path, (double)rescale);
    json_object *do_crop = member(proc, "do_center_crop");
    if (resize != crop && (!do_crop || json_object_get_boolean(do_crop)))
        return fail(err, "%s: resize to %d then crop to %d; lora-train resizes and crops to one size", path, resize, crop);
    p->size = crop;
    p->fit = square ? IMAGE_FIT_SQUASH : IMAGE_FIT_CROP;
    for (int c = 0; c < 3; c++) p->pad_color[c] = (uint8_t)(int)(p->mean[c] * 255.0f);
    return true;
}

// preprocessor_config.json, else processor_config.json's "image_processor"; *found false when neither.
static bool read_preprocessing(const char *model_dir, LlavaVision *out, Error *err) {
    static const char *const files[] = {"preprocessor_config.json", "processor_config.json"};
    for (int i = 0; i < 2; i++) {
        char path[CHECKPOINT_PATH_MAX];
        if (!join_path(path, sizeof path, model_dir, files[i], err)) return false;
        if (!path_exists(path)) continue;
        json_object *root = read_json_object(path, err);
        if (!root) return false;
        json_object *proc = i == 0 ? root : member(root, "image_processor");
        bool ok = !proc || read_image_processor(proc, path, &out->preprocess, err);
        out->has_preprocess = ok && proc;
        json_object_put(root);
        if (!ok || out->has_preprocess) return ok;
    }
    return true;
}

bool hf_read_llava_vision(const char *model_dir, bool *is_llava, LlavaVision *out, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    *is_llava = false;
    if (!join_path(path, sizeof path, model_dir, "config.json", err)) return false;
    if (!path_exists(path)) return true;
    json_object *config = read_json_object(path, err);
    if (!config) return false;
    *is_llava = strcmp(string_or(config, "model_type", ""), "llava") == 0;
    *out = (LlavaVision){.preprocess = image_preprocess_clip336(IMAGE_FIT_CROP)};
    bool ok = !*is_llava || (read_tower_config(member(config, "vision_config"), path, &out->clip, err) &&
                             read_feature_choice(config, path, &out->clip, err) &&
                             int_or(config, path, "image_token_index", 32000, &out->image_token_id, err));
    json_object_put(config);
    if (ok && *is_llava) {
        out->preprocess.size = out->clip.image_size;
        ok = read_preprocessing(model_dir, out, err);
    }
    return ok;
}
