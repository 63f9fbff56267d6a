// Export: a PEFT adapter copied as is, or merged into its base model:
// W' = W + s * B A with A (r, in), B (out, r), s = lora_alpha / r
// (lora_alpha / sqrt(r) with use_rslora), as PEFT's merge_and_unload, and the
// trained projector (modules_to_save) in place of the base's.
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


// What from_pretrained, AutoTokenizer and AutoProcessor read besides the weights.
static const char *const COPIED_FILES[] = {
    "config.json",         "generation_config.json",   "tokenizer.json",        "tokenizer_config.json",
    "tokenizer.model",     "special_tokens_map.json",  "added_tokens.json",     "chat_template.jinja",
    "chat_template.json",  "preprocessor_config.json", "processor_config.json",
    "configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py", // OpenVLA's remote code
};

static bool copy_if_present(const char *src_dir, const char *dst_dir, const char *name, Error *err) {
    char src[CHECKPOINT_PATH_MAX], dst[CHECKPOINT_PATH_MAX];
    if (!join_path(src, sizeof src, src_dir, name, err) || !join_path(dst, sizeof dst, dst_dir, name, err)) return false;
    return !path_exists(src) || copy_file(src, dst, err);
}

// An OpenVLA run's action statistics: inference un-normalises the actions with them.
#define ACTION_STATISTICS_FILE "dataset_statistics.json"

bool export_peft(const char *adapter_dir, const char *out_dir, Error *err) {
    return make_dirs(out_dir, err) && copy_if_present(adapter_dir, out_dir, "adapter_config.json", err) &&
           copy_if_present(adapter_dir, out_dir, "adapter_model.safetensors", err) &&
           copy_if_present(adapter_dir, out_dir, PROJECTOR_FILE, err) &&
           copy_if_present(adapter_dir, out_dir, ACTION_STATISTICS_FILE, err);
}

// s from adapter_config.json's r, lora_alpha and use_rslora.
static bool read_lora_scale(const char *adapter_dir, float *scale, Error *err) {
    char path[CHECKPOINT_PATH_MAX];
    if (!join_path(path, sizeof path, adapter_dir, "adapter_config.json", err)) return false;
    json_object *config = read_json_object(path, err), *r, *alpha, *rslora = NULL;
    if (!config) return false;
    bool ok = json_object_object_get_ex(config, "r", &r) && json_object_object_get_ex(config, "lora_alpha", &alpha) &&
              json_object_get_int(r) > 0;
    if (ok) {
        json_object_object_get_ex(config, "use_rslora", &rslora);
        double rank = json_object_get_int(r);
        *scale = (float)(json_object_get_double(alpha) / (rslora && json_object_get_boolean(rslora) ? sqrt(rank) : rank));
    }
    json_object_put(config);
    return ok || fail(err, "%s: needs a positive r and lora_alpha", path);
}

typedef struct Merge {
    const SafetensorsFile *adapter;
    const char *adapter_path;
    const SafetensorsFile *projector; // the adapter file, or PROJECTOR_FILE beside it in older folders
    const char *projector_path;
    HfLayout base_layout, adapter_layout;
    float scale;
    int n_merged;      // LoRA pairs folded in
    int n_projector;   // projector tensors replaced
} Merge;

// Adapter key of base tensor `name` ("...q_proj.weight" -> "...q_proj.lora_A.weight"), or false when
// the tensor is outside the language model's decoder (and OpenVLA's projector and towers, whose keys keep
// their names).
static bool lora_key(const Merge *m, const char *name, char which, char *out, size_t size) {
    const char *prefix = hf_layout_decoder_prefix(m->base_layout);
    const char *adapter_prefix = hf_layout_decoder_prefix(m->adapter_layout);
    bool top_level = strncmp(name, "projector.", 10) == 0 || strncmp(name, "vision_backbone.", 16) == 0;
    if (m->base_layout == HF_LAYOUT_OPENVLA && top_level) prefix = adapter_prefix = ""; // timm's fused qkv: one module
    size_t prefix_len = strlen(prefix), len = strlen(name);
    if (strncmp(name, prefix, prefix_len) != 0 || len < prefix_len + 7 || strcmp(name + len - 7, ".weight") != 0) return false;
    int n = snprintf(out, size, PEFT_KEY_PREFIX "%s%.*s.lora_%c.weight", adapter_prefix, (int)(len - 7 - prefix_len),
                     name + prefix_len, which);
    return n > 0 && (size_t)n < size;
}

static float *tensor_as_f32(const Tensor *t, const char *what, Error *err) {
    size_t n = (size_t)tensor_numel(t);
    float *out = checked_malloc(n * sizeof(float) + 1, what, err);
    if (out && !convert_to_f32(out, t->data, t->dtype, n, err)) {
        free(out);
        return NULL;
    }
    return out;
}

// w (out, in) += scale * b (out, r) @ a (r, in)
static void add_lora_product(float *w, const float *a, const float *b, int64_t out, int64_t in, int64_t r, float scale) {
    for (int64_t o = 0; o < out; o++) {
        for (int64_t k = 0; k < r; k++) {
            float coefficient = scale * b[o * r + k];
            for (int64_t i = 0; i < in; i++) w[o * in + i] += coefficient * a[k * in + i];
        }
    }
}

// fp32 values back into dtype, in place over the same buffer (dtype no wider than fp32).
static void store_as(float *values, size_t n, DType dtype) {
    uint16_t *half = (uint16_t *)values;
    for (size_t i = 0; i < n; i++) half[i] = dtype == DTYPE_BF16 ? f32_to_bf16(values[i]) : f32_to_f16(values[i]);
}

static bool mergeable_dtype(DType dtype) { return dtype == DTYPE_F32 || dtype == DTYPE_BF16 || dtype == DTYPE_F16; }

// "linear_1.weight" of a base projector tensor (either llava-hf layout), or NULL.
static const char *projector_part(const char *name) {
    static const char *const prefixes[] = {"multi_modal_projector.", "model.multi_modal_projector."};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        if (strncmp(name, prefixes[i], strlen(prefixes[i])) == 0) return name + strlen(prefixes[i]);
    }
    return NULL;
}

// The trained tensor for projector part `part`: PEFT's modules_to_save key over
// either layout, or the bare llava-hf name of an older projector file.
static bool find_trained_projector(const Merge *m, const char *part, Tensor *out, char *key, size_t size) {
    static const char *const prefixes[] = {PEFT_KEY_PREFIX "model.multi_modal_projector.",
                                           PEFT_KEY_PREFIX "multi_modal_projector.", "multi_modal_projector."};
    for (size_t i = 0; m->projector && i < sizeof prefixes / sizeof prefixes[0]; i++) {
        Error absent;
        snprintf(key, size, "%s%s", prefixes[i], part);
        if (safetensors_get(m->projector, key, out, &absent)) return true;
    }
    return false;
}

// The trained projector tensor into entry (a fresh buffer in the base's dtype),
// or the base view when the adapter has none.
static bool replace_projector(Merge *m, const char *name, const Tensor *w, SafetensorsEntry *entry, Error *err) {
    char key[CHECKPOINT_PATH_MAX];
    Tensor trained;
    if (!find_trained_projector(m, projector_part(name), &trained, key, sizeof key)) return true;
    bool same = trained.ndim == w->ndim;
    for (int d = 0; same && d < w->ndim; d++) same = trained.shape[d] == w->shape[d];
    if (!same) {
        char ws[64], ts[64];
        return fail(err, "%s: %s %s does not fit the base's %s %s", m->projector_path, key,
                    shape_string(trained.shape, trained.ndim, ts, 64), name, shape_string(w->shape, w->ndim, ws, 64));
    }
    if (!mergeable_dtype(w->dtype)) return fail(err, "%s: cannot write the projector into %s weights", name, dtype_name(w->dtype));
    float *values = tensor_as_f32(&trained, key, err);
    if (!values) return false;
    if (w->dtype != DTYPE_F32) store_as(values, (size_t)tensor_numel(w), w->dtype);
    entry->tensor.data = values;
    m->n_projector++;
    return true;
}

// Tensors of a safetensors file whose key holds `part`.
static int count_keys_with(const SafetensorsFile *file, const char *part) {
    int n = 0;
    for (int i = 0; file && i < safetensors_count(file); i++) n += strstr(safetensors_name(file, i), part) != NULL;
    return n;
}

// The merged weight into entry (a fresh buffer in W's dtype), or the base view when not targeted.
static bool merge_tensor(Merge *m, const char *name, const Tensor *w, SafetensorsEntry *entry, Error *err) {
    char key_a[CHECKPOINT_PATH_MAX], key_b[CHECKPOINT_PATH_MAX];
    Tensor a, b;
    Error absent;
    *entry = (SafetensorsEntry){name, *w};
    if (projector_part(name)) return replace_projector(m, name, w, entry, err);
    if (!lora_key(m, name, 'A', key_a, sizeof key_a) || !safetensors_get(m->adapter, key_a, &a, &absent)) return true;
    lora_key(m, name, 'B', key_b, sizeof key_b);
    if (!safetensors_get(m->adapter, key_b, &b, err)) return fail_context(err, "%s: ", m->adapter_path);
    if (w->ndim != 2 || a.ndim != 2 || b.ndim != 2 || a.shape[1] != w->shape[1] || b.shape[0] != w->shape[0] ||
        b.shape[1] != a.shape[0]) {
        char ws[64], as[64], bs[64];
        return fail(err, "%s: %s %s and %s %s do not fit %s %s", m->adapter_path, key_a, shape_string(a.shape, a.ndim, as, 64),
                    key_b, shape_string(b.shape, b.ndim, bs, 64), name, shape_string(w->shape, w->ndim, ws, 64));
    }
    float *merged = tensor_as_f32(w, name, err), *fa = merged ? tensor_as_f32(&a, key_a, err) : NULL;
    float *fb = fa ? tensor_as_f32(&b, key_b, err) : NULL;
    bool ok = fb != NULL && mergeable_dtype(w->dtype);
    if (fb && !ok) fail(err, "%s: cannot merge into %s weights", name, dtype_name(w->dtype));
    if (ok) {
        add_lora_product(merged, fa, fb, w->shape[0], w->shape[1], a.shape[0], m->scale);
        if (w->dtype != DTYPE_F32) store_as(merged, (size_t)tensor_numel(w), w->dtype);
        entry->tensor.data = merged;
        m->n_merged++;
    } else {
        free(merged);
    }
    free(fa);
    free(fb);
    return ok;
}

static bool write_merged(HfWeights *base, Merge *m, const char *path, Error *err) {
    int count = hf_weights_count(base);
    SafetensorsEntry *entries = checked_calloc((size_t)count + 1, sizeof *entries, path, err);
    bool *owned = checked_calloc((size_t)count + 1, sizeof *owned, path, err);
    bool ok = entries && owned;
    for (int i = 0; ok && i < count; i++) {
        const char *name = hf_weights_name(base, i);
        Tensor w;
        hf_weights_find(base, name, &w, NULL);
        ok = merge_tensor(m, name, &w, &entries[i], err);
        owned[i] = ok && entries[i].tensor.data != w.data;
    }
    int n_pairs = count_keys_with(m->adapter, ".lora_A."), n_projector = count_keys_with(m->projector, "multi_modal_projector.");
    if (ok && m->n_merged != n_pairs) {
        ok = fail(err, "%s: %d of its %d LoRA pairs match no tensor of the base model", m->adapter_path,
                  n_pairs - m->n_merged, n_pairs);
    }
    if (ok && m->n_projector != n_projector) {
        ok = fail(err, "%s: %d of its %d trained projector tensors match no multi_modal_projector tensor of the base model "
                       "(a merged vision-language model needs a llava-hf base folder holding the tower and projector; "
                       "--format peft keeps the adapter as it is)",
                  m->projector_path, n_projector - m->n_projector, n_projector);
    }
    const char *metadata[] = {"format", "pt"};
    ok = ok && safetensors_write(path, entries, count, metadata, 1, err);
    for (int i = 0; owned && i < count; i++) {
        if (owned[i]) free(entries[i].tensor.data);
    }
    free(owned);
    free(entries);
    return ok;
}

// The projector's source: PROJECTOR_FILE where an older folder has one, else the adapter file.
static bool open_projector(Merge *m, const char *adapter_dir, char *path, size_t size, SafetensorsFile **file, Error *err) {
    if (!join_path(path, size, adapter_dir, PROJECTOR_FILE, err)) return false;
    m->projector = m->adapter;
    m->projector_path = m->adapter_path;
    if (!path_exists(path)) return true;
    *file = safetensors_open(path, err);
    m->projector = *file;
    m->projector_path = path;
    return *file != NULL;
}

bool export_merged(const char *base_dir, const char *adapter_dir, const char *out_dir, Error *err) {
    char adapter_path[CHECKPOINT_PATH_MAX], out_path[CHECKPOINT_PATH_MAX], projector_path[CHECKPOINT_PATH_MAX];
    Merge merge = {.adapter_path = adapter_path};
    if (!join_path(adapter_path, sizeof adapter_path, adapter_dir, "adapter_model.safetensors", err) ||
        !join_path(out_path, sizeof out_path, out_dir, "model.safetensors", err) ||
        !read_lora_scale(adapter_dir, &merge.scale, err) || !make_dirs(out_dir, err)) {
        return false;
    }
    for (size_t i = 0; i < sizeof COPIED_FILES / sizeof COPIED_FILES[0]; i++) {
        if (!copy_if_present(base_dir, out_dir, COPIED_FILES[i], err)) return false;
    }
    if (!copy_if_present(adapter_dir, out_dir, ACTION_STATISTICS_FILE, err)) return false;
    HfWeights *base = hf_weights_open(base_dir, err);
    SafetensorsFile *adapter = base ? safetensors_open(adapter_path, err) : NULL, *projector = NULL;
    merge.adapter = adapter;
    bool ok = adapter != NULL && open_projector(&merge, adapter_dir, projector_path, sizeof projector_path, &projector, err);
    if (ok) {
        merge.base_layout = hf_weights_layout(base);
        merge.adapter_layout = adapter_file_layout(adapter);
        ok = write_merged(base, &merge, out_path, err);
    }
    safetensors_close(projector);
    safetensors_close(adapter);
    hf_weights_close(base);
    return ok;
}
