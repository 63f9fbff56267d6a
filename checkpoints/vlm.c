// Vision-language weights: the trainable projector and the frozen CLIP tower
// from Hugging Face safetensors (a file, or a folder single or sharded).
#include "checkpoints.h"
#include "checkpoints_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// projector: the ParamTable entries after the LoRA ones

// The four projector entries in linear_1.weight, linear_1.bias, linear_2.weight,
// linear_2.bias order, or false when the model has none.
static bool projector_entries(Model *model, const ParamEntry *entries[4], Error *err) {
    const ParamTable *table = model_params(model);
    if (table->count - table->n_lora != 4) return fail(err, "the model has no projector");
    for (int i = 0; i < 4; i++) entries[i] = &table->entries[table->n_lora + i];
    return true;
}

static bool is_bias(const ParamEntry *e) { return e->shape[1] == 1 && strstr(e->name, ".bias") != NULL; }

// Where the projector's tensors may sit: llava-hf's two layouts, a PEFT
// adapter's modules_to_save keys over either, LLaVA pretraining's mm_projector.
static const char *const PROJECTOR_PREFIXES[] = {"", "model.", PEFT_KEY_PREFIX, PEFT_KEY_PREFIX "model."};
#define N_PROJECTOR_PREFIXES (int)(sizeof PROJECTOR_PREFIXES / sizeof PROJECTOR_PREFIXES[0])

// The name of entry i (0..3) in weights under one of the accepted layouts, or NULL.
static const char *find_projector_key(const HfWeights *weights, const ParamEntry *e, int i, char *key, size_t size) {
    static const char *const llava_names[4] = {"0.weight", "0.bias", "2.weight", "2.bias"};
    Tensor view;
    for (int c = 0; c <= N_PROJECTOR_PREFIXES; c++) {
        if (c < N_PROJECTOR_PREFIXES) snprintf(key, size, "%s%s", PROJECTOR_PREFIXES[c], e->name);
        else snprintf(key, size, "model.mm_projector.%s", llava_names[i]);
        if (hf_weights_find(weights, key, &view, NULL)) return key;
    }
    return NULL;
}

static bool read_projector_tensor(const HfWeights *weights, const char *path, const ParamEntry *e, int i,
                                  float *host, Error *err) {
    char key[PARAM_NAME_MAX + 64];
    Tensor t;
    if (!find_projector_key(weights, e, i, key, sizeof key) || !hf_weights_find(weights, key, &t, NULL))
        return fail(err, "%s: no projector tensor %s (nor model.%s, nor LLaVA's model.mm_projector.%d.%s)", path, e->name,
                    e->name, i < 2 ? 0 : 2, i % 2 ? "bias" : "weight");
    bool shape_ok = is_bias(e) ? t.ndim == 1 && t.shape[0] == e->shape[0]
                               : t.ndim == 2 && t.shape[0] == e->shape[0] && t.shape[1] == e->shape[1];
    if (!shape_ok) {
        char found[128], want[128];
        return fail(err, "%s: tensor %s has shape %s, expected %s", path, key, shape_string(t.shape, t.ndim, found, sizeof found),
                    shape_string(e->shape, is_bias(e) ? 1 : 2, want, sizeof want));
    }
    if (!convert_to_f32(host + e->offset, t.data, t.dtype, e->numel, err)) return fail_context(err, "%s: tensor %s: ", path, key);
    return true;
}

bool projector_load(Model *model, const char *path, Error *err) {
    const ParamEntry *entries[4];
    if (!projector_entries(model, entries, err)) return fail_context(err, "%s: ", path);
    HfWeights *weights = hf_weights_open(path, err);
    if (!weights) return false;
    float *host = download_params(model, err);
    bool ok = host != NULL;
    for (int i = 0; ok && i < 4; i++) ok = read_projector_tensor(weights, path, entries[i], i, host, err);
    if (ok) upload_params(model, host);
    free(host);
    hf_weights_close(weights);
    return ok;
}

// ----------------------------------------------------------------------------
// CLIP tower

typedef struct ClipLoader {
    const HfWeights *weights;
    const char *path;
    const char *prefix; // prepended to the tower's names in this file
    bool bare;          // the file's names lack "vision_model." (transformers 5's own saves)
    const Ops *ops;
} ClipLoader;

static const char *const CLIP_PREFIXES[] = {"", "vision_tower.", "model.vision_tower."};
#define CLIP_MODEL_PREFIX "vision_model."

static bool has_tensor(const HfWeights *weights, const char *name) {
    Tensor view;
    return hf_weights_find(weights, name, &view, NULL);
}

// The file's tensor of a tower weight: its name under the loader's prefix, or for
// timm's LayerScale "ls1.gamma" OpenVLA's "ls1.scale_factor" (its checkpoints rename
// the gammas, which transformers would otherwise rename on load).
static bool find_tower_tensor(const ClipLoader *loader, const char *name, char *key, size_t size, Tensor *src) {
    snprintf(key, size, "%s%s", loader->prefix, loader->bare ? name + strlen(CLIP_MODEL_PREFIX) : name);
    if (hf_weights_find(loader->weights, key, src, NULL)) return true;
    size_t n = strlen(key);
    if (n < 6 || strcmp(key + n - 6, ".gamma") != 0 || n - 6 + sizeof ".scale_factor" > size) return false;
    memcpy(key + n - 6, ".scale_factor", sizeof ".scale_factor");
    if (hf_weights_find(loader->weights, key, src, NULL)) return true;
    memcpy(key + n - 6, ".gamma", sizeof ".gamma");
    return false;
}

static bool load_clip_tensor(void *context, const char *name, const Tensor *dst, Error *err) {
    const ClipLoader *loader = context;
    char key[256];
    Tensor src;
    if (!find_tower_tensor(loader, name, key, sizeof key, &src))
        return fail(err, "%s: missing tensor %s", loader->path, key);
    bool same = src.ndim == dst->ndim;
    for (int d = 0; same && d < dst->ndim; d++) same = src.shape[d] == dst->shape[d];
    if (!same) {
        char found[128], want[128];
        return fail(err, "%s: tensor %s has shape %s, expected %s", loader->path, key,
                    shape_string(src.shape, src.ndim, found, sizeof found), shape_string(dst->shape, dst->ndim, want, sizeof want));
    }
    size_t n = (size_t)tensor_numel(dst);
    float *host = checked_malloc(n * sizeof(float) + 1, key, err);
    if (!host) return false;
    bool ok = convert_to_f32(host, src.data, src.dtype, n, err);
    if (ok) {
        loader->ops->upload_f32(loader->ops, dst->data, host, n);
        loader->ops->synchronize(loader->ops);
    } else {
        fail_context(err, "%s: tensor %s: ", loader->path, key);
    }
    free(host);
    return ok;
}

// Every tower weight from weights under the loader's prefix.
static bool load_tower(ClipTower *tower, ClipLoader *loader, Error *err) {
    loader->ops = clip_tower_ops(tower);
    return clip_tower_visit(tower, load_clip_tensor, loader, err);
}

bool clip_load_weights_under(ClipTower *tower, const char *path, const char *prefix, Error *err) {
    HfWeights *weights = hf_weights_open(path, err);
    if (!weights) return false;
    ClipLoader loader = {weights, path, prefix, false, NULL};
    bool ok = load_tower(tower, &loader, err);
    hf_weights_close(weights);
    return ok;
}

bool clip_load_weights(ClipTower *tower, const char *path, Error *err) {
    HfWeights *weights = hf_weights_open(path, err);
    if (!weights) return false;
    ClipLoader loader = {weights, path, NULL, false, NULL};
    bool hf = clip_tower_config(tower)->layout == VIT_LAYOUT_HF; // timm's names have no "vision_model."
    const char *probe_name = hf ? "embeddings.patch_embedding.weight" : "patch_embed.proj.weight";
    for (int i = 0; i < 6 && !loader.prefix; i++) {
        char probe[128];
        if (!hf && i % 2 == 0) continue;
        snprintf(probe, sizeof probe, "%s%s%s", CLIP_PREFIXES[i / 2], i % 2 ? "" : CLIP_MODEL_PREFIX, probe_name);
        if (has_tensor(weights, probe)) {
            loader.prefix = CLIP_PREFIXES[i / 2];
            loader.bare = hf && i % 2;
        }
    }
    bool ok = loader.prefix != NULL;
    if (!ok) fail(err, "%s: no vision tower (no %s%s, with or without a vision_tower. / model.vision_tower. prefix)",
                  path, hf ? "[vision_model.]" : "", probe_name);
    ok = ok && load_tower(tower, &loader, err);
    hf_weights_close(weights);
    return ok;
}

// ----------------------------------------------------------------------------
// saving a tower (random towers of the demo and tests)

typedef struct ClipSaver {
    const Ops *ops;
    const char *prefix; // before every name (OpenVLA's towers), or ""
    HfLayout layout;    // the model's frozen tensors' names (hf_save_openvla)
    SafetensorsEntry *entries;
    char (*names)[128];
    int count, capacity;
} ClipSaver;

static bool save_clip_tensor(void *context, const char *name, const Tensor *tensor, Error *err) {
    ClipSaver *saver = context;
    if (saver->count == saver->capacity) {
        int capacity = saver->capacity ? 2 * saver->capacity : 64;
        SafetensorsEntry *entries = realloc(saver->entries, (size_t)capacity * sizeof *entries);
        if (entries) saver->entries = entries;
        char(*names)[128] = entries ? realloc(saver->names, (size_t)capacity * sizeof *names) : NULL;
        if (!names) return fail(err, "out of memory listing the CLIP tower's tensors");
        saver->names = names;
        saver->capacity = capacity;
    }
    size_t bytes = (size_t)tensor_numel(tensor) * dtype_size(tensor->dtype);
    void *host = checked_malloc(bytes + 1, name, err);
    if (!host) return false;
    saver->ops->download(saver->ops, host, tensor->data, bytes);
    snprintf(saver->names[saver->count], sizeof saver->names[0], "%s%s", saver->prefix, name);
    saver->entries[saver->count] = (SafetensorsEntry){NULL, *tensor}; // named once the list stops growing
    saver->entries[saver->count].tensor.data = host;
    saver->count++;
    return true;
}

static bool save_model_tensor(void *context, const char *name, const Tensor *tensor, Error *err) {
    ClipSaver *saver = context;
    char key[PARAM_NAME_MAX + 32];
    return hf_layout_key(saver->layout, name, false, key, sizeof key, err) && save_clip_tensor(saver, key, tensor, err);
}

// The collected tensors into path (safetensors), freed.
static bool write_saved(ClipSaver *saver, const char *path, bool ok, Error *err) {
    saver->ops->synchronize(saver->ops);
    for (int i = 0; i < saver->count; i++) saver->entries[i].name = saver->names[i];
    const char *metadata[] = {"format", "pt"};
    ok = ok && safetensors_write(path, saver->entries, saver->count, metadata, 1, err);
    for (int i = 0; i < saver->count; i++) free(saver->entries[i].tensor.data);
    free(saver->entries);
    free(saver->names);
    return ok;
}

bool hf_save_openvla_weights(Model *model, FusedFeaturizer *featurizer, const char *path, Error *err) {
    static const char *const prefixes[2] = {"vision_backbone.featurizer.", "vision_backbone.fused_featurizer."};
    ClipSaver saver = {.ops = model_ops(model), .prefix = "", .layout = HF_LAYOUT_OPENVLA};
    bool ok = model_visit_frozen(model, save_model_tensor, &saver, err);
    for (int k = 0; ok && k < 2; k++) {
        saver.prefix = prefixes[k];
        ok = clip_tower_visit(fused_featurizer_tower(featurizer, k), save_clip_tensor, &saver, err);
    }
    return write_saved(&saver, path, ok, err);
}

bool clip_save_weights(ClipTower *tower, const char *path, Error *err) {
    ClipSaver saver = {.ops = clip_tower_ops(tower), .prefix = ""};
    bool ok = clip_tower_visit(tower, save_clip_tensor, &saver, err);
    return write_saved(&saver, path, ok, err);
}
