// Hugging Face LlamaForCausalLM and LLaVA folders: config.json (read as
// transformers' LlamaConfig, legacy rope_theta/rope_scaling or v5
// rope_parameters; LLaVA's text_config) and the frozen weights from
// model.safetensors or its shards, in any HfLayout.
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// config.json

typedef struct ConfigReader {
    const char *path;
    json_object *root;
} ConfigReader;

// Integer field of obj, or fallback when absent or null.
static bool read_int(const ConfigReader *r, json_object *obj, const char *key, int fallback, int *out, Error *err) {
    json_object *value;
    if (!json_object_object_get_ex(obj, key, &value) || !value) {
        *out = fallback;
        return true;
    }
    if (!json_object_is_type(value, json_type_int)) return fail(err, "%s: %s must be an integer", r->path, key);
    int64_t v = json_object_get_int64(value);
    if (v < INT32_MIN || v > INT32_MAX) return fail(err, "%s: %s = %lld is out of range", r->path, key, (long long)v);
    *out = (int)v;
    return true;
}

static bool read_float(const ConfigReader *r, json_object *obj, const char *key, float fallback, float *out, Error *err) {
    json_object *value;
    if (!json_object_object_get_ex(obj, key, &value) || !value) {
        *out = fallback;
        return true;
    }
    if (!json_object_is_type(value, json_type_double) && !json_object_is_type(value, json_type_int)) {
        return fail(err, "%s: %s must be a number", r->path, key);
    }
    *out = (float)json_object_get_double(value);
    return true;
}

static bool read_bool(const ConfigReader *r, const char *key, bool fallback, bool *out, Error *err) {
    json_object *value;
    if (!json_object_object_get_ex(r->root, key, &value) || !value) {
        *out = fallback;
        return true;
    }
    if (!json_object_is_type(value, json_type_boolean)) return fail(err, "%s: %s must be true or false", r->path, key);
    *out = json_object_get_boolean(value);
    return true;
}

// eos_token_id may be a list (Llama 3 instruct): the first entry is taken.
static bool read_token_id(const ConfigReader *r, const char *key, int fallback, int *out, Error *err) {
    json_object *value;
    if (json_object_object_get_ex(r->root, key, &value) && json_object_is_type(value, json_type_array)) {
        if (json_object_array_length(value) == 0) return fail(err, "%s: %s is an empty list", r->path, key);
        json_object *first = json_object_array_get_idx(value, 0);
        if (!json_object_is_type(first, json_type_int)) return fail(err, "%s: %s[0] must be an integer", r->path, key);
        *out = (int)json_object_get_int64(first);
        return true;
    }
    return read_int(r, r->root, key, fallback, out, err);
}

// rope_scaling {"rope_type" or "type": "llama3", factor, ...}; "default" or null is none.
static bool read_rope_scaling(const ConfigReader *r, json_object *scaling, RopeScaling *out, Error *err) {
    *out = (RopeScaling){0};
    if (!scaling) return true;
    if (!json_object_is_type(scaling, json_type_object)) return fail(err, "%s: rope_scaling must be an object", r->path);
    json_object *type = NULL;
    if (!json_object_object_get_ex(scaling, "rope_type", &type) || !type) json_object_object_get_ex(scaling, "type", &type);
    const char *name = type ? json_object_get_string(type) : "default";
    if (strcmp(name, "default") == 0) return true;
    if (strcmp(name, "llama3") != 0) {
        return fail(err, "%s: rope_scaling type \"%s\" is not supported (only \"llama3\")", r->path, name);
    }
    out->llama3 = true;
    return read_float(r, scaling, "factor", 0, &out->factor, err) &&
           read_float(r, scaling, "low_freq_factor", 1, &out->low_freq_factor, err) &&
           read_float(r, scaling, "high_freq_factor", 4, &out->high_freq_factor, err) &&
           read_int(r, scaling, "original_max_position_embeddings", 8192, &out->original_max_position, err);
}

// transformers >= 5 keeps theta and scaling in rope_parameters; older files at the top level.
static bool read_rope(const ConfigReader *r, LlamaConfig *c, Error *err) {
    json_object *params = NULL, *scaling = NULL;
    if (json_object_object_get_ex(r->root, "rope_parameters", &params) && params) {
        if (!json_object_is_type(params, json_type_object)) return fail(err, "%s: rope_parameters must be an object", r->path);
        return read_float(r, params, "rope_theta", 10000, &c->rope_theta, err) &&
               read_rope_scaling(r, params, &c->rope_scaling, err);
    }
    json_object_object_get_ex(r->root, "rope_scaling", &scaling);
    return read_float(r, r->root, "rope_theta", 10000, &c->rope_theta, err) &&
           read_rope_scaling(r, scaling, &c->rope_scaling, err);
}

// String field of the top level, or NULL when absent or null.
static const char *string_field(const ConfigReader *r, const char *key) {
    json_object *value;
    return json_object_object_get_ex(r->root, key, &value) && value ? json_object_get_string(value) : NULL;
}

// What the model cannot run: biases in attention or MLP, another activation, another model type.
static bool check_supported(const ConfigReader *r, Error *err) {
    const char *model_type = string_field(r, "model_type"), *hidden_act = string_field(r, "hidden_act");
    if (model_type && strcmp(model_type, "llama") != 0) {
        if (strcmp(model_type, "llava") == 0) return fail(err, "%s: model_type \"llava\" needs a text_config object", r->path);
        return fail(err, "%s: model_type \"%s\" is not \"llama\"", r->path, model_type);
    }
    if (hidden_act && strcmp(hidden_act, "silu") != 0) {
        return fail(err, "%s: hidden_act \"%s\" is not supported (only \"silu\")", r->path, hidden_act);
    }
    bool attention_bias, mlp_bias;
    if (!read_bool(r, "attention_bias", false, &attention_bias, err) || !read_bool(r, "mlp_bias", false, &mlp_bias, err)) {
        return false;
    }
    if (attention_bias || mlp_bias) return fail(err, "%s: attention_bias / mlp_bias are not supported", r->path);
    return true;
}

// Fields and defaults of transformers' LlamaConfig.
static bool read_llama_fields(const ConfigReader *r, LlamaConfig *c, Error *err) {
    json_object *root = r->root;
    bool ok = read_int(r, root, "vocab_size", 32000, &c->vocab_size, err) &&
              read_int(r, root, "hidden_size", 4096, &c->hidden_size, err) &&
              read_int(r, root, "intermediate_size", 11008, &c->intermediate_size, err) &&
              read_int(r, root, "num_hidden_layers", 32, &c->n_layers, err) &&
              read_int(r, root, "num_attention_heads", 32, &c->n_heads, err) &&
              read_int(r, root, "num_key_value_heads", c->n_heads, &c->n_kv_heads, err) &&
              read_int(r, root, "max_position_embeddings", 2048, &c->max_position, err) &&
              read_float(r, root, "rms_norm_eps", 1e-6f, &c->rms_eps, err) &&
              read_float(r, root, "initializer_range", 0.02f, &c->initializer_range, err) &&
              read_bool(r, "tie_word_embeddings", false, &c->tie_embeddings, err) &&
              read_token_id(r, "bos_token_id", 1, &c->bos_token_id, err) &&
              read_token_id(r, "eos_token_id", 2, &c->eos_token_id, err) && read_rope(r, c, err);
    if (!ok) return false;
    if (c->n_heads < 1) return fail(err, "%s: num_attention_heads must be positive", r->path);
    return read_int(r, root, "head_dim", c->hidden_size / c->n_heads, &c->head_dim, err);
}

// LlavaForConditionalGeneration keeps the language model's LlamaConfig in
// text_config (model_type "llama" when absent, as transformers' LlavaConfig).
static bool read_config_fields(ConfigReader *r, LlamaConfig *config, Error *err) {
    json_object *text_config;
    if (!json_object_object_get_ex(r->root, "text_config", &text_config) || !text_config) {
        return check_supported(r, err) && read_llama_fields(r, config, err);
    }
    char text_path[CHECKPOINT_PATH_MAX + 16];
    snprintf(text_path, sizeof text_path, "%s: text_config", r->path);
    if (!json_object_is_type(text_config, json_type_object)) return fail(err, "%s must be an object", text_path);
    ConfigReader text = {text_path, text_config};
    return check_supported(&text, err) && read_llama_fields(&text, config, err);
}

bool hf_read_llama_config(const char *model_dir, LlamaConfig *out, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    if (!join_path(path, sizeof path, model_dir, "config.json", err)) return false;
    ConfigReader reader = {path, read_json_object(path, err)};
    if (!reader.root) return false;
    LlamaConfig config = {0};
    bool ok = read_config_fields(&reader, &config, err);
    json_object_put(reader.root);
    if (!ok) return false;
    if (!llama_config_validate(&config, err)) return fail_context(err, "%s: ", path);
    *out = config;
    return true;
}

// ----------------------------------------------------------------------------
// saving

static void add_int(json_object *obj, const char *key, int value) { json_object_object_add(obj, key, json_object_new_int(value)); }

// Shortest decimal that reads back as the same float (1e-05, not 9.99999974e-06);
// integral values as transformers writes them (10000.0).
static json_object *float_json(float value) {
    char text[32];
    if (value == floorf(value) && fabsf(value) < 1e15f) {
        snprintf(text, sizeof text, "%.1f", (double)value);
        return json_object_new_double_s((double)value, text);
    }
    format_float_shortest(value, text, sizeof text);
    return json_object_new_double_s((double)value, text);
}

static json_object *rope_scaling_json(const RopeScaling *s) {
    if (!s->llama3) return NULL;
    json_object *obj = json_object_new_object();
    json_object_object_add(obj, "rope_type", json_object_new_string("llama3"));
    json_object_object_add(obj, "factor", float_json(s->factor));
    json_object_object_add(obj, "low_freq_factor", float_json(s->low_freq_factor));
    json_object_object_add(obj, "high_freq_factor", float_json(s->high_freq_factor));
    add_int(obj, "original_max_position_embeddings", s->original_max_position);
    return obj;
}

// config.json as transformers writes it, with the legacy rope keys every version reads.
json_object *llama_config_json(const LlamaConfig *c) {
    json_object *obj = json_object_new_object(), *architectures = json_object_new_array();
    json_object_array_add(architectures, json_object_new_string("LlamaForCausalLM"));
    json_object_object_add(obj, "architectures", architectures);
    json_object_object_add(obj, "model_type", json_object_new_string("llama"));
    json_object_object_add(obj, "torch_dtype", json_object_new_string("float32"));
    json_object_object_add(obj, "hidden_act", json_object_new_string("silu"));
    add_int(obj, "vocab_size", c->vocab_size);
    add_int(obj, "hidden_size", c->hidden_size);
    add_int(obj, "intermediate_size", c->intermediate_size);
    add_int(obj, "num_hidden_layers", c->n_layers);
    add_int(obj, "num_attention_heads", c->n_heads);
    add_int(obj, "num_key_value_heads", c->n_kv_heads);
    add_int(obj, "head_dim", c->head_dim);
    add_int(obj, "max_position_embeddings", c->max_position);
    json_object_object_add(obj, "rms_norm_eps", float_json(c->rms_eps));
    json_object_object_add(obj, "initializer_range",
                           float_json(c->initializer_range > 0 ? c->initializer_range : 0.02f));
    json_object_object_add(obj, "rope_theta", float_json(c->rope_theta));
    json_object_object_add(obj, "rope_scaling", rope_scaling_json(&c->rope_scaling));
    json_object_object_add(obj, "tie_word_embeddings", json_object_new_boolean(c->tie_embeddings));
    add_int(obj, "bos_token_id", c->bos_token_id);
    add_int(obj, "eos_token_id", c->eos_token_id);
    return obj;
}

// The frozen tensors in the model's order, as the file stores them (dtype),
// each entry's data still the backend's: save_tensor downloads one at a time.
typedef struct FrozenList {
    const Ops *ops;
    DType dtype;
    SafetensorsEntry *entries;
    int count, capacity;
    float *scratch;    // one tensor in fp32, for conversion
    size_t scratch_n;
} FrozenList;

static bool list_frozen_tensor(void *context, const char *name, const Tensor *tensor, Error *err) {
    FrozenList *list = context;
    if (list->count == list->capacity) {
        int capacity = list->capacity ? 2 * list->capacity : 64;
        SafetensorsEntry *grown = realloc(list->entries, (size_t)capacity * sizeof *grown);
        if (!grown) return fail(err, "out of memory listing frozen tensors at %s", name);
        list->entries = grown;
        list->capacity = capacity;
    }
    SafetensorsEntry *entry = &list->entries[list->count++];
    entry->name = name;
    entry->tensor = *tensor;
    entry->tensor.dtype = list->dtype;
    return true;
}

// Tensor index downloaded in fp32 and converted to the file's dtype into bytes.
static bool save_tensor(void *context, int index, void *bytes, size_t size, Error *err) {
    FrozenList *list = context;
    const Tensor *t = &list->entries[index].tensor;
    size_t n = (size_t)tensor_numel(t);
    if (list->dtype == DTYPE_F32) {
        list->ops->download_f32(list->ops, bytes, t->data, n);
        return true;
    }
    if (n > list->scratch_n) {
        free(list->scratch);
        list->scratch_n = n;
        list->scratch = checked_malloc(n * sizeof(float), list->entries[index].name, err);
        if (!list->scratch) return list->scratch_n = 0, false;
    }
    list->ops->download_f32(list->ops, list->scratch, t->data, n);
    uint16_t *half = bytes;
    for (size_t i = 0; i < n; i++)
        half[i] = list->dtype == DTYPE_BF16 ? f32_to_bf16(list->scratch[i]) : f32_to_f16(list->scratch[i]);
    return size == n * sizeof(uint16_t) || fail(err, "%s: size mismatch", list->entries[index].name);
}

static const char *torch_dtype_name(DType dtype) {
    return dtype == DTYPE_BF16 ? "bfloat16" : dtype == DTYPE_F16 ? "float16" : "float32";
}

// The frozen list has no lm_head when embeddings are tied, so none is written.
bool hf_save_model_as(Model *model, const char *model_dir, DType dtype, Error *err) {
    char config_path[CHECKPOINT_PATH_MAX], weights_path[CHECKPOINT_PATH_MAX];
    if (model_is_nf4(model)) return fail(err, "%s: an NF4 model's base weights are not saved (load them from the "
                                              "original checkpoint)", model_dir);
    if (dtype != DTYPE_F32 && dtype != DTYPE_BF16 && dtype != DTYPE_F16)
        return fail(err, "%s: weights are saved as F32, BF16 or F16, not %s", model_dir, dtype_name(dtype));
    if (!make_dirs(model_dir, err) || !join_path(config_path, sizeof config_path, model_dir, "config.json", err) ||
        !join_path(weights_path, sizeof weights_path, model_dir, "model.safetensors", err)) {
        return false;
    }
    json_object *config = llama_config_json(model_config(model));
    json_object_object_add(config, "torch_dtype", json_object_new_string(torch_dtype_name(dtype)));
    bool ok = write_json_file(config_path, config, err);
    json_object_put(config);
    FrozenList list = {.ops = model_ops(model), .dtype = dtype};
    ok = ok && model_visit_frozen(model, list_frozen_tensor, &list, err);
    const Ops *ops = model_ops(model);
    ops->synchronize(ops);
    const char *metadata[] = {"format", "pt"};
    ok = ok && safetensors_write_streamed(weights_path, list.entries, list.count, metadata, 1, save_tensor, &list, err);
    free(list.scratch);
    free(list.entries);
    return ok;
}

bool hf_save_model(Model *model, const char *model_dir, Error *err) {
    return hf_save_model_as(model, model_dir, DTYPE_F32, err);
}

// ----------------------------------------------------------------------------
// loading

typedef struct WeightLoader {
    const HfWeights *weights;
    const char *model_dir;
    HfLayout layout;
    const Ops *ops;
    Progress progress;  // tensors loaded (and quantized) of the model's
    int loaded;
} WeightLoader;

static void count_loaded(WeightLoader *loader) { progress_update(&loader->progress, ++loader->loaded); }

static bool shapes_equal(const Tensor *a, const Tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++) {
        if (a->shape[d] != b->shape[d]) return false;
    }
    return true;
}

// The checkpoint's tensor for the model's tensor `name` (lm_head: either LLaVA place).
static bool find_source(const WeightLoader *loader, const char *name, Tensor *src, const char **file, char *key,
                        Error *err) {
    for (int alternative = 0; alternative < 2; alternative++) {
        if (!hf_layout_key(loader->layout, name, alternative, key, PARAM_NAME_MAX, err)) return false;
        if (hf_weights_find(loader->weights, key, src, file)) return true;
    }
    if (!hf_layout_key(loader->layout, name, false, key, PARAM_NAME_MAX, err)) return false;
    return fail(err, "%s: missing tensor %s", loader->model_dir, key);
}

static bool check_frozen_tensor(void *context, const char *name, const Tensor *dst, Error *err) {
    const WeightLoader *loader = context;
    Tensor src;
    const char *file;
    char key[PARAM_NAME_MAX], want[128], found[128];
    if (!find_source(loader, name, &src, &file, key, err)) return false;
    shape_string(dst->shape, dst->ndim, want, sizeof want);
    shape_string(src.shape, src.ndim, found, sizeof found);
    if (!shapes_equal(dst, &src)) return fail(err, "%s: tensor %s has shape %s, expected %s", file, key, found, want);
    if (src.dtype != DTYPE_F32 && src.dtype != DTYPE_BF16 && src.dtype != DTYPE_F16) {
        return fail(err, "%s: tensor %s is %s %s, expected F32, BF16 or F16 %s", file, key, dtype_name(src.dtype),
                    found, want);
    }
    return true;
}

static bool load_frozen_tensor(void *context, const char *name, const Tensor *dst, Error *err) {
    WeightLoader *loader = context;
    Tensor src;
    const char *file;
    char key[PARAM_NAME_MAX];
    if (!find_source(loader, name, &src, &file, key, err)) return false;
    size_t n = (size_t)tensor_numel(dst);
    float *host = checked_malloc(n * sizeof(float) + 1, name, err);
    if (!host) return false;
    bool ok = convert_to_f32(host, src.data, src.dtype, n, err);
    safetensors_release(&src);
    if (ok) {
        loader->ops->upload_f32(loader->ops, dst->data, host, n);
        loader->ops->synchronize(loader->ops);
    }
    free(host);
    count_loaded(loader);
    return ok;
}

// A linear in bitsandbytes' format: `key` packed U8 and its quant-state
// tensors `key.absmax`, `.quant_map`, `.nested_absmax`, `.nested_quant_map`,
// `.quant_state.bitsandbytes__nf4` (JSON bytes), in any shard.
static bool get_part(const WeightLoader *loader, const char *key, const char *part, DType dtype, Tensor *out,
                     Error *err) {
    char part_key[PARAM_NAME_MAX + 64];
    const char *file;
    snprintf(part_key, sizeof part_key, "%s%s", key, part);
    if (!hf_weights_find(loader->weights, part_key, out, &file))
        return fail(err, "%s: missing tensor %s", loader->model_dir, part_key);
    if (out->dtype != dtype)
        return fail(err, "%s: tensor %s is %s, expected %s", file, part_key, dtype_name(out->dtype), dtype_name(dtype));
    return true;
}

static bool load_serialized_nf4(const WeightLoader *loader, const char *key, const char *file, const Tensor *packed,
                                Nf4Weight *w, Error *err) {
    Tensor absmax, quant_map, state, nested = {0}, nested_map = {0};
    bool ok = get_part(loader, key, ".absmax", w->double_quant ? DTYPE_U8 : DTYPE_F32, &absmax, err) &&
              get_part(loader, key, ".quant_map", DTYPE_F32, &quant_map, err) &&
              get_part(loader, key, ".quant_state.bitsandbytes__nf4", DTYPE_U8, &state, err);
    if (ok && w->double_quant) {
        ok = get_part(loader, key, ".nested_absmax", DTYPE_F32, &nested, err) &&
             get_part(loader, key, ".nested_quant_map", DTYPE_F32, &nested_map, err);
    }
    if (!ok) return false;
    if (tensor_numel(&quant_map) != 16 || (w->double_quant && tensor_numel(&nested_map) != NF4_DYNAMIC_MAP_SIZE))
        return fail(err, "%s: %s.quant_map must have 16 and .nested_quant_map %d values", file, key,
                    NF4_DYNAMIC_MAP_SIZE);
    Nf4Serialized src = {.packed = packed->data, .packed_bytes = (size_t)tensor_numel(packed),
                         .absmax = absmax.data, .n_absmax = (size_t)tensor_numel(&absmax),
                         .quant_map = quant_map.data, .nested_absmax = nested.data,
                         .n_nested_absmax = (size_t)tensor_numel(&nested), .nested_map = nested_map.data,
                         .quant_state_json = state.data, .quant_state_len = (size_t)tensor_numel(&state)};
    if (!nf4_weight_upload_serialized(w, loader->ops, &src, key, err)) return fail_context(err, "%s: ", file);
    return true;
}

// An NF4 linear: loaded as bitsandbytes stored it, or quantized from F32/BF16/F16.
static bool load_nf4_tensor(void *context, const char *name, Nf4Weight *w, Error *err) {
    WeightLoader *loader = context;
    count_loaded(loader);
    Tensor src;
    const char *file;
    char key[PARAM_NAME_MAX];
    if (!find_source(loader, name, &src, &file, key, err)) return false;
    if (src.dtype == DTYPE_U8) return load_serialized_nf4(loader, key, file, &src, w, err);
    Tensor want = {.ndim = 2, .shape = {w->rows, w->cols}};
    char want_text[128], found[128];
    shape_string(want.shape, 2, want_text, sizeof want_text);
    shape_string(src.shape, src.ndim, found, sizeof found);
    if (!shapes_equal(&want, &src))
        return fail(err, "%s: tensor %s has shape %s, expected %s", file, key, found, want_text);
    size_t n = (size_t)tensor_numel(&src);
    float *host = checked_malloc(n * sizeof(float), name, err);
    bool ok = host && convert_to_f32(host, src.data, src.dtype, n, err);
    safetensors_release(&src);
    ok = ok && nf4_weight_quantize_from(w, loader->ops, host, err);
    free(host);
    return ok ? true : fail_context(err, "%s: %s: ", file, key);
}

static bool count_frozen(void *context, const char *name, const Tensor *dst, Error *err) {
    return ++*(int *)context > 0;
}

static bool count_nf4(void *context, const char *name, Nf4Weight *w, Error *err) { return ++*(int *)context > 0; }

bool hf_load_weights(Model *model, const char *model_dir, Error *err) {
    HfWeights *weights = hf_weights_open(model_dir, err);
    if (!weights) return false;
    WeightLoader loader = {.weights = weights, .model_dir = model_dir, .layout = hf_weights_layout(weights),
                           .ops = model_ops(model)};
    int n_tensors = 0;
    char what[1024];
    snprintf(what, sizeof what, "loading %s%s (tensors)", model_dir, model_is_nf4(model) ? ", quantizing to NF4" : "");
    bool ok = model_visit_frozen(model, check_frozen_tensor, &loader, err) &&
              model_visit_frozen(model, count_frozen, &n_tensors, err) &&
              (!model_is_nf4(model) || model_visit_nf4(model, count_nf4, &n_tensors, err));
    progress_begin(&loader.progress, what, n_tensors, false);
    ok = ok && model_visit_frozen(model, load_frozen_tensor, &loader, err) &&
         (!model_is_nf4(model) || model_visit_nf4(model, load_nf4_tensor, &loader, err));
    if (ok) progress_end(&loader.progress);
    hf_weights_close(weights);
    return ok;
}
