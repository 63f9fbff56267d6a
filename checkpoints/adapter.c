// PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors with keys
// "base_model.model." + module path in the base's layout (the ParamTable name
// for Llama bases), A (r, in) and B (out, r), fp32; a trained projector as
// PEFT saves modules_to_save: "base_model.model." + its module path + ".linear_1.weight", ...
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADAPTER_KEY_MAX (PARAM_NAME_MAX + 64)

static int compare_strings(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static int compare_json_strings(const void *a, const void *b) {
    return strcmp(json_object_get_string(*(json_object *const *)a), json_object_get_string(*(json_object *const *)b));
}

// The layout of an adapter's module paths for a base checkpoint in `base`.
// LLaVA's are renamed by PEFT on transformers >= 4.52; OpenVLA's remote code keeps its names.
static HfLayout module_layout(HfLayout base) {
    return base == HF_LAYOUT_LLAMA || base == HF_LAYOUT_OPENVLA ? base : HF_LAYOUT_LLAVA;
}

#define PROJECTOR_MODULE "multi_modal_projector"

static bool is_projector(const char *param_name) { return strncmp(param_name, PROJECTOR_MODULE ".", strlen(PROJECTOR_MODULE) + 1) == 0; }

// Adapter key of a ParamTable name under layout: "model.layers.0.self_attn.q_proj.lora_A.weight"
// -> "base_model.model.model.language_model.layers.0...", "multi_modal_projector.linear_1.weight"
// -> "base_model.model.model.multi_modal_projector.linear_1.weight" (LlavaForConditionalGeneration's
// module path; a Llama base with a separate tower keeps the bare name).
static bool module_key(HfLayout layout, const char *param_name, char *out, size_t size, Error *err) {
    char key[PARAM_NAME_MAX + 32];
    if (is_projector(param_name)) snprintf(key, sizeof key, "%s%s", layout == HF_LAYOUT_LLAMA ? "" : "model.", param_name);
    else if (!hf_layout_key(layout, param_name, false, key, sizeof key, err)) return false;
    int n = snprintf(out, size, PEFT_KEY_PREFIX "%s", key);
    if (n < 0 || (size_t)n >= size) return fail(err, "adapter key too long: %s", key);
    return true;
}

// Every LoRA module's full path in the LLaVA or OpenVLA layout, sorted: the language model's
// linears (and OpenVLA's projector's) only (a short name would also match the vision tower's q_proj).
static json_object *module_paths_json(const ParamTable *table, HfLayout layout) {
    json_object *list = json_object_new_array();
    for (int i = 0; i < table->count; i++) {
        const char *name = table->entries[i].name;
        const char *suffix = strstr(name, ".lora_A.weight");
        if (!suffix) continue;
        char path[PARAM_NAME_MAX + 32];
        Error unused;
        if (!hf_layout_key(layout, name, false, path, sizeof path, &unused)) continue; // names are the model's own
        path[strlen(path) - strlen(suffix)] = '\0';
        json_object_array_add(list, json_object_new_string(path));
    }
    json_object_array_sort(list, compare_json_strings);
    return list;
}

// Explicit sorted list of targeted module names, as PEFT writes a set: ["q_proj", "v_proj"].
static json_object *target_modules_json(const LoraConfig *lora) {
    const char *names[LORA_TARGET_COUNT];
    int n = 0;
    for (int t = 0; t < LORA_TARGET_COUNT; t++) {
        if (lora->targets[t]) names[n++] = LORA_TARGET_NAMES[t];
    }
    qsort(names, (size_t)n, sizeof *names, compare_strings);
    json_object *list = json_object_new_array();
    for (int i = 0; i < n; i++) json_object_array_add(list, json_object_new_string(names[i]));
    return list;
}

// A float as Python writes the config's value: the shortest decimal that reads
// back as it (0.05, not 0.05000000074505806).
static json_object *float_json(float value) {
    char text[32];
    format_float_shortest(value, text, sizeof text);
    return json_object_new_double_s((double)value, text);
}

// lora_alpha as PEFT writes it: an integer when integral (16, not 16.0).
static json_object *alpha_json(float alpha) {
    if (alpha == floorf(alpha) && fabsf(alpha) < 1e9f) return json_object_new_int((int)alpha);
    return float_json(alpha);
}

// The LoraConfig fields PEFT has written since 0.10 (newer PEFT adds more,
// all optional when reading).
// ["multi_modal_projector"] when the projector is trained, else null.
static json_object *modules_to_save_json(const ParamTable *table) {
    if (table->n_lora == table->count) return NULL;
    json_object *list = json_object_new_array();
    json_object_array_add(list, json_object_new_string(PROJECTOR_MODULE));
    return list;
}

static json_object *adapter_config_json(Model *model, const AdapterInfo *info) {
    const LoraConfig *lora = model_lora(model);
    HfLayout layout = module_layout(info ? info->layout : HF_LAYOUT_LLAMA);
    json_object *obj = json_object_new_object();
    const char *base = info && info->base_model_name_or_path ? info->base_model_name_or_path : NULL;
    json_object_object_add(obj, "alpha_pattern", json_object_new_object());
    json_object_object_add(obj, "auto_mapping", NULL);
    json_object_object_add(obj, "base_model_name_or_path", base ? json_object_new_string(base) : NULL);
    json_object_object_add(obj, "bias", json_object_new_string("none"));
    json_object_object_add(obj, "fan_in_fan_out", json_object_new_boolean(false));
    json_object_object_add(obj, "inference_mode", json_object_new_boolean(true));
    json_object_object_add(obj, "init_lora_weights",
                           lora->init == LORA_INIT_GAUSSIAN ? json_object_new_string("gaussian") : json_object_new_boolean(true));
    json_object_object_add(obj, "layer_replication", NULL);
    json_object_object_add(obj, "layers_pattern", NULL);
    json_object_object_add(obj, "layers_to_transform", NULL);
    json_object_object_add(obj, "loftq_config", json_object_new_object());
    json_object_object_add(obj, "lora_alpha", alpha_json(lora->alpha));
    json_object_object_add(obj, "lora_dropout", float_json(lora->dropout));
    json_object_object_add(obj, "megatron_config", NULL);
    json_object_object_add(obj, "megatron_core", json_object_new_string("megatron.core"));
    json_object_object_add(obj, "modules_to_save", modules_to_save_json(model_params(model)));
    json_object_object_add(obj, "peft_type", json_object_new_string("LORA"));
    json_object_object_add(obj, "r", json_object_new_int(lora->r));
    json_object_object_add(obj, "rank_pattern", json_object_new_object());
    json_object_object_add(obj, "revision", NULL);
    json_object_object_add(obj, "target_modules", layout == HF_LAYOUT_LLAMA ? target_modules_json(lora)
                                                                            : module_paths_json(model_params(model), layout));
    json_object_object_add(obj, "task_type", json_object_new_string("CAUSAL_LM"));
    json_object_object_add(obj, "use_dora", json_object_new_boolean(false));
    json_object_object_add(obj, "use_rslora", json_object_new_boolean(lora->rslora));
    return obj;
}

void upload_params(Model *model, const float *host) {
    const Ops *ops = model_ops(model);
    ops->upload(ops, model_param_data(model), host, model_params(model)->total * sizeof(float));
    model_sync_params(model);
    ops->synchronize(ops);
}

float *download_params(Model *model, Error *err) {
    const ParamTable *table = model_params(model);
    float *host = checked_malloc(table->total * sizeof(float) + 1, "trainable parameters", err);
    if (!host) return NULL;
    const Ops *ops = model_ops(model);
    ops->download(ops, host, model_param_data(model), table->total * sizeof(float));
    ops->synchronize(ops);
    return host;
}

// Every trainable tensor: the LoRA pairs, then the projector (biases 1-D).
static bool serialize_adapter_weights(Model *model, HfLayout layout, uint8_t **bytes, size_t *size, Error *err) {
    const ParamTable *table = model_params(model);
    float *host = download_params(model, err);
    SafetensorsEntry *entries = host ? checked_calloc((size_t)table->count + 1, sizeof *entries, "adapter tensors", err) : NULL;
    char (*keys)[ADAPTER_KEY_MAX] =
        entries ? checked_calloc((size_t)table->count + 1, sizeof *keys, "adapter tensor names", err) : NULL;
    bool ok = keys != NULL;
    for (int i = 0; ok && i < table->count; i++) {
        const ParamEntry *e = &table->entries[i];
        ok = module_key(layout, e->name, keys[i], sizeof keys[i], err);
        int ndim = is_projector(e->name) && e->shape[1] == 1 && strstr(e->name, ".bias") ? 1 : 2;
        entries[i] = (SafetensorsEntry){keys[i], {DTYPE_F32, ndim, {e->shape[0], e->shape[1]}, host + e->offset}};
    }
    const char *metadata[] = {"format", "pt"};
    ok = ok && safetensors_serialize(ADAPTER_WEIGHTS_FILE, entries, table->count, metadata, 1, bytes, size, err);
    free(keys);
    free(entries);
    free(host);
    return ok;
}

bool adapter_serialize(Model *model, const AdapterInfo *info, FileImage *config, FileImage *weights, Error *err) {
    json_object *json = adapter_config_json(model, info);
    bool ok = json_to_text(ADAPTER_CONFIG_FILE, json, config, err);
    json_object_put(json);
    if (!ok) return false;
    HfLayout layout = module_layout(info ? info->layout : HF_LAYOUT_LLAMA);
    if (serialize_adapter_weights(model, layout, &weights->bytes, &weights->size, err)) return true;
    file_image_free(config);
    return false;
}

bool adapter_save(Model *model, const AdapterInfo *info, const char *dir, Error *err) {
    char config_path[CHECKPOINT_PATH_MAX], weights_path[CHECKPOINT_PATH_MAX];
    if (!make_dirs(dir, err) || !join_path(config_path, sizeof config_path, dir, ADAPTER_CONFIG_FILE, err) ||
        !join_path(weights_path, sizeof weights_path, dir, ADAPTER_WEIGHTS_FILE, err)) {
        return false;
    }
    FileImage config = {0}, weights = {0};
    if (!adapter_serialize(model, info, &config, &weights, err)) return false;
    bool ok = write_file_durable(config_path, &config, err) && write_file_durable(weights_path, &weights, err) &&
              sync_dir(dir, err);
    file_image_free(&config);
    file_image_free(&weights);
    return ok;
}

// ----------------------------------------------------------------------------
// loading

// r, lora_alpha and use_rslora set the scale: they must be the model's.
static bool check_adapter_config(const char *path, const LoraConfig *lora, Error *err) {
    json_object *config = read_json_object(path, err);
    if (!config) return false;
    json_object *peft_type = NULL, *r, *alpha, *rslora = NULL;
    json_object_object_get_ex(config, "peft_type", &peft_type);
    const char *type_name = peft_type ? json_object_get_string(peft_type) : NULL;
    bool ok = false;
    if (!type_name || strcmp(type_name, "LORA") != 0) {
        fail(err, "%s: peft_type is not \"LORA\"", path);
    } else if (!json_object_object_get_ex(config, "r", &r) || !json_object_object_get_ex(config, "lora_alpha", &alpha)) {
        fail(err, "%s: r and lora_alpha are required", path);
    } else if (json_object_get_int(r) != lora->r || (float)json_object_get_double(alpha) != lora->alpha) {
        fail(err, "%s: r = %d, lora_alpha = %g but the model has r = %d, lora_alpha = %g", path, json_object_get_int(r),
             json_object_get_double(alpha), lora->r, (double)lora->alpha);
    } else if (json_object_object_get_ex(config, "use_rslora", &rslora) && json_object_get_boolean(rslora) != lora->rslora) {
        fail(err, "%s: use_rslora = %s but the model has %s", path, json_object_get_boolean(rslora) ? "true" : "false",
             lora->rslora ? "true" : "false");
    } else {
        ok = true;
    }
    json_object_put(config);
    return ok;
}

// Copies the tensor for entry e from the file into host (ParamTable layout).
static bool read_param(const SafetensorsFile *file, HfLayout layout, const char *path, const ParamEntry *e, float *host,
                       Error *err) {
    char key[ADAPTER_KEY_MAX];
    if (!module_key(layout, e->name, key, sizeof key, err)) return false;
    Tensor t;
    if (!safetensors_get(file, key, &t, err)) return fail(err, "%s: missing tensor %s", path, key);
    if (t.ndim != 2 || t.shape[0] != e->shape[0] || t.shape[1] != e->shape[1]) {
        char found[128], want[128];
        return fail(err, "%s: tensor %s has shape %s, expected %s", path, key, shape_string(t.shape, t.ndim, found, sizeof found),
                    shape_string(e->shape, 2, want, sizeof want));
    }
    if (!convert_to_f32(host + e->offset, t.data, t.dtype, e->numel, err)) return fail_context(err, "%s: tensor %s: ", path, key);
    return true;
}

// The layout whose decoder prefix the file's first LoRA key uses (Llama when none).
HfLayout adapter_file_layout(const SafetensorsFile *file) {
    static const HfLayout layouts[] = {HF_LAYOUT_LLAVA, HF_LAYOUT_LLAVA_LEGACY};
    const char *key = "";
    for (int i = 0; i < safetensors_count(file) && !key[0]; i++) {
        if (strstr(safetensors_name(file, i), ".lora_")) key = safetensors_name(file, i);
    }
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, PEFT_KEY_PREFIX "%s", hf_layout_decoder_prefix(layouts[i]));
        if (strncmp(key, prefix, strlen(prefix)) == 0) return layouts[i];
    }
    return HF_LAYOUT_LLAMA;
}

// Every tensor of the file must be one of the model's parameters (the projector
// is optional: folders written before it moved into the file keep it beside).
static bool check_no_extra_tensors(const SafetensorsFile *file, HfLayout layout, const char *path,
                                   const ParamTable *table, Error *err) {
    for (int i = 0; i < safetensors_count(file); i++) {
        const char *key = safetensors_name(file, i);
        bool known = false;
        for (int p = 0; !known && p < table->count; p++) {
            char expected[ADAPTER_KEY_MAX];
            if (!module_key(layout, table->entries[p].name, expected, sizeof expected, err)) return false;
            known = strcmp(expected, key) == 0;
        }
        if (!known) {
            return fail(err, "%s: tensor %s is not a LoRA parameter of this model (targets or layers differ?)", path, key);
        }
    }
    return true;
}

static bool read_adapter_weights(Model *model, const char *path, Error *err) {
    SafetensorsFile *file = safetensors_open(path, err);
    if (!file) return false;
    const ParamTable *table = model_params(model);
    float *host = download_params(model, err);
    HfLayout layout = adapter_file_layout(file);
    bool ok = host && check_no_extra_tensors(file, layout, path, table, err);
    for (int i = 0; ok && i < table->n_lora; i++) ok = read_param(file, layout, path, &table->entries[i], host, err);
    if (ok) upload_params(model, host);
    free(host);
    safetensors_close(file);
    return ok;
}

bool adapter_load(Model *model, const char *dir, Error *err) {
    char config_path[CHECKPOINT_PATH_MAX], weights_path[CHECKPOINT_PATH_MAX];
    if (!join_path(config_path, sizeof config_path, dir, ADAPTER_CONFIG_FILE, err) ||
        !join_path(weights_path, sizeof weights_path, dir, ADAPTER_WEIGHTS_FILE, err)) {
        return false;
    }
    if (!check_adapter_config(config_path, model_lora(model), err) || !read_adapter_weights(model, weights_path, err))
        return false;
    if (model_params(model)->n_lora == model_params(model)->count) return true;
    char projector_path[CHECKPOINT_PATH_MAX];
    if (!join_path(projector_path, sizeof projector_path, dir, PROJECTOR_FILE, err)) return false;
    return projector_load(model, path_exists(projector_path) ? projector_path : weights_path, err);
}
