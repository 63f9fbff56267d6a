// model: the ViT vision tower, frozen and forward only: CLIP and SigLIP in
// Hugging Face's CLIPVisionModel / SiglipVisionModel layouts, DINOv2 and SigLIP
// in timm's. N = n_images * T tokens, T = prefix + P: the class token and the
// registers first (prefix, when the tower has them), then the P patches.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#define CLIP_NAME_MAX 128

typedef struct ClipLayer {
    void *ln1_w, *ln1_b, *ln2_w, *ln2_b;     // (D)
    void *w[4], *b[4];                        // q, k, v, out_proj: (D, D), (D)
    void *fc1_w, *fc1_b, *fc2_w, *fc2_b;      // (I, D), (I), (D, I), (D)
    void *ls1, *ls2;                          // (D) layer scale gammas, with layer_scale
} ClipLayer;

typedef struct ClipWeight {
    char name[CLIP_NAME_MAX];
    Tensor tensor;
} ClipWeight;

struct ClipTower {
    const Ops *ops;
    ClipVisionConfig config;
    int max_images, n_layers_used;
    void *weight_block;
    ClipWeight *weights;
    int n_weights;
    void *patch_w, *patch_b, *class_emb, *registers; // (D, C, p, p), (D), (D), (R, D); all but patch_w per config
    void *pos_emb;                                    // (T, D), or (P, D) without pos_embed_prefix
    void *pre_ln_w, *pre_ln_b;                        // (D), (D) with pre_norm
    ClipLayer *layers;
    // activations for max_images
    void *act_block;
    void *images;            // (n, channels, S, S)
    void *patches;           // (n, P, D)
    void *x, *ln;            // (N, D) residual stream and normalised input
    void *q, *k, *v, *att;   // (N, D)
    void *mlp;               // (N, I)
    float *mean, *rstd;      // (N)
    float *lse;              // (n, H, T) attention's log-sum-exp
    int32_t *class_rows;     // (max_images): b * T, with a class token
    int32_t *register_rows;  // (max_images * R): b * T + class_token + r
    int32_t *patch_rows;     // (max_images * P): b * T + prefix + p
    int32_t *feature_rows;   // (max_images * F): b * T + skip_tokens + f, F features
};

static const char *const PROJ_NAMES[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};

// ----------------------------------------------------------------------------
// configuration

bool clip_config_preset(const char *name, ClipVisionConfig *out, Error *err) {
    ClipVisionConfig clip = {.channels = 3, .layer_norm_eps = 1e-5f, .feature_layer = -2, .skip_tokens = 1,
                             .layout = VIT_LAYOUT_HF, .class_token = true, .pos_embed_prefix = true,
                             .pre_norm = true, .activation = VIT_QUICK_GELU};
    // timm's VisionTransformer as OpenVLA creates it (img_size 224): LayerNorm eps 1e-6, nn.GELU, patch bias
    ClipVisionConfig timm = {.channels = 3, .layer_norm_eps = 1e-6f, .feature_layer = -2, .layout = VIT_LAYOUT_TIMM,
                             .patch_bias = true, .activation = VIT_GELU, .image_size = 224, .patch_size = 14};
    if (strcmp(name, "clip-vit-large-patch14-336") == 0) {
        clip.hidden_size = 1024, clip.intermediate_size = 4096, clip.n_layers = 24, clip.n_heads = 16;
        clip.image_size = 336, clip.patch_size = 14;
    } else if (strcmp(name, "tiny") == 0) {
        clip.hidden_size = 32, clip.intermediate_size = 64, clip.n_layers = 3, clip.n_heads = 4;
        clip.image_size = 16, clip.patch_size = 4;
    } else if (strcmp(name, "dinov2-vit-l14-reg4") == 0) { // no_embed_class: positions of the patches alone
        timm.hidden_size = 1024, timm.intermediate_size = 4096, timm.n_layers = 24, timm.n_heads = 16;
        timm.class_token = true, timm.n_registers = 4, timm.skip_tokens = 5, timm.layer_scale = true;
        clip = timm;
    } else if (strcmp(name, "siglip-so400m-14") == 0) { // mlp_ratio 3.7362: int(1152 * 3.7362) = 4304
        timm.hidden_size = 1152, timm.intermediate_size = 4304, timm.n_layers = 27, timm.n_heads = 16;
        clip = timm;
    } else {
        return fail(err, "unknown vision tower preset '%s' (known: clip-vit-large-patch14-336, tiny, "
                         "dinov2-vit-l14-reg4, siglip-so400m-14)", name);
    }
    *out = clip;
    return true;
}

int clip_n_patches(const ClipVisionConfig *c) {
    int grid = c->image_size / c->patch_size;
    return grid * grid;
}

// class token and registers
static int n_prefix_tokens(const ClipVisionConfig *c) { return (c->class_token ? 1 : 0) + c->n_registers; }

int clip_n_tokens(const ClipVisionConfig *c) { return n_prefix_tokens(c) + clip_n_patches(c); }

int clip_n_features(const ClipVisionConfig *c) { return clip_n_tokens(c) - c->skip_tokens; }

int clip_layers_used(const ClipVisionConfig *c) {
    return c->feature_layer < 0 ? c->n_layers + 1 + c->feature_layer : c->feature_layer;
}

bool clip_config_validate(const ClipVisionConfig *c, Error *err) {
    if (c->hidden_size < 1 || c->intermediate_size < 1 || c->n_layers < 1 || c->n_heads < 1 || c->channels < 1 ||
        c->n_registers < 0 || c->skip_tokens < 0)
        return fail(err, "vision tower config: sizes must be positive");
    if (c->hidden_size % c->n_heads != 0)
        return fail(err, "vision tower config: hidden_size %d is not a multiple of num_attention_heads %d", c->hidden_size,
                    c->n_heads);
    // a remainder (SigLIP so400m/14 at 384: 27 patches and 6 pixels) is left out, as Conv2d's 'valid' padding does
    if (c->patch_size < 1 || c->image_size < c->patch_size)
        return fail(err, "vision tower config: image_size %d is smaller than patch_size %d", c->image_size, c->patch_size);
    if (c->layout == VIT_LAYOUT_HF && (c->n_registers || c->layer_scale))
        return fail(err, "vision tower config: registers and layer scale exist in timm's layout only");
    int used = clip_layers_used(c);
    if (used < 0 || used > c->n_layers)
        return fail(err, "vision tower config: vision_feature_layer %d is outside the %d hidden states", c->feature_layer,
                    c->n_layers + 1);
    if (clip_n_features(c) < 1)
        return fail(err, "vision tower config: the features skip %d of the %d tokens of a %d x %d image, leaving none",
                    c->skip_tokens, clip_n_tokens(c), c->image_size, c->image_size);
    return true;
}

const ClipVisionConfig *clip_tower_config(const ClipTower *t) { return &t->config; }
const Ops *clip_tower_ops(const ClipTower *t) { return t->ops; }

// ----------------------------------------------------------------------------
// memory: a first pass with base = NULL measures, a second assigns

typedef struct Carver {
    uint8_t *base;
    size_t used;
} Carver;

static void *carve(Carver *carver, size_t bytes) {
    size_t start = (carver->used + 255) / 256 * 256;
    carver->used = start + bytes;
    return carver->base ? carver->base + start : NULL;
}

// One weight (shape up to 4-D) under its name in the layout (Hugging Face's under "vision_model.").
static void add_weight(ClipTower *t, Carver *carver, void **slot, const char *name, int ndim, int64_t d0,
                       int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= (size_t)shape[i];
    *slot = carve(carver, numel * dtype_size(t->ops->act_dtype));
    if (!carver->base) return;
    ClipWeight *w = &t->weights[t->n_weights++];
    snprintf(w->name, sizeof w->name, "%s%s", t->config.layout == VIT_LAYOUT_HF ? "vision_model." : "", name);
    w->tensor = (Tensor){.dtype = t->ops->act_dtype, .ndim = ndim, .data = *slot};
    memcpy(w->tensor.shape, shape, sizeof shape);
}

#define LAYER_WEIGHT(slot, suffix, ndim, d0, d1)                                    \
    snprintf(name, sizeof name, "%s.%d.%s", layer_prefix, l, suffix);               \
    add_weight(t, carver, slot, name, ndim, d0, d1, 0, 0)

// Hugging Face: encoder.layers.l.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}
static void layout_layer_hf(ClipTower *t, Carver *carver, int l) {
    ClipLayer *layer = &t->layers[l];
    int D = t->config.hidden_size, I = t->config.intermediate_size;
    const char *layer_prefix = "encoder.layers";
    char name[CLIP_NAME_MAX];
    for (int p = 0; p < 4; p++) {
        char suffix[64];
        snprintf(suffix, sizeof suffix, "self_attn.%s.weight", PROJ_NAMES[p]);
        LAYER_WEIGHT(&layer->w[p], suffix, 2, D, D);
        snprintf(suffix, sizeof suffix, "self_attn.%s.bias", PROJ_NAMES[p]);
        LAYER_WEIGHT(&layer->b[p], suffix, 1, D, 0);
    }
    LAYER_WEIGHT(&layer->ln1_w, "layer_norm1.weight", 1, D, 0);
    LAYER_WEIGHT(&layer->ln1_b, "layer_norm1.bias", 1, D, 0);
    LAYER_WEIGHT(&layer->fc1_w, "mlp.fc1.weight", 2, I, D);
    LAYER_WEIGHT(&layer->fc1_b, "mlp.fc1.bias", 1, I, 0);
    LAYER_WEIGHT(&layer->fc2_w, "mlp.fc2.weight", 2, D, I);
    LAYER_WEIGHT(&layer->fc2_b, "mlp.fc2.bias", 1, D, 0);
    LAYER_WEIGHT(&layer->ln2_w, "layer_norm2.weight", 1, D, 0);
    LAYER_WEIGHT(&layer->ln2_b, "layer_norm2.bias", 1, D, 0);
}

// timm: blocks.l.{norm1, attn.qkv (3D, D) = [q; k; v], attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}
static void layout_layer_timm(ClipTower *t, Carver *carver, int l) {
    ClipLayer *layer = &t->layers[l];
    int D = t->config.hidden_size, I = t->config.intermediate_size;
    const char *layer_prefix = "blocks";
    char name[CLIP_NAME_MAX];
    LAYER_WEIGHT(&layer->w[0], "attn.qkv.weight", 2, 3 * D, D);
    LAYER_WEIGHT(&layer->b[0], "attn.qkv.bias", 1, 3 * D, 0);
    for (int p = 1; carver->base && p < 3; p++) { // k and v: the fused tensor's second and third thirds
        layer->w[p] = (uint8_t *)layer->w[0] + (size_t)p * D * D * dtype_size(t->ops->act_dtype);
        layer->b[p] = (uint8_t *)layer->b[0] + (size_t)p * D * dtype_size(t->ops->act_dtype);
    }
    LAYER_WEIGHT(&layer->w[3], "attn.proj.weight", 2, D, D);
    LAYER_WEIGHT(&layer->b[3], "attn.proj.bias", 1, D, 0);
    LAYER_WEIGHT(&layer->ln1_w, "norm1.weight", 1, D, 0);
    LAYER_WEIGHT(&layer->ln1_b, "norm1.bias", 1, D, 0);
    LAYER_WEIGHT(&layer->fc1_w, "mlp.fc1.weight", 2, I, D);
    LAYER_WEIGHT(&layer->fc1_b, "mlp.fc1.bias", 1, I, 0);
    LAYER_WEIGHT(&layer->fc2_w, "mlp.fc2.weight", 2, D, I);
    LAYER_WEIGHT(&layer->fc2_b, "mlp.fc2.bias", 1, D, 0);
    LAYER_WEIGHT(&layer->ln2_w, "norm2.weight", 1, D, 0);
    LAYER_WEIGHT(&layer->ln2_b, "norm2.bias", 1, D, 0);
    if (t->config.layer_scale) {
        LAYER_WEIGHT(&layer->ls1, "ls1.gamma", 1, D, 0);
        LAYER_WEIGHT(&layer->ls2, "ls2.gamma", 1, D, 0);
    }
}
#undef LAYER_WEIGHT

// Hugging Face: embeddings.{patch_embedding, class_embedding, position_embedding}, pre_layrnorm
static void layout_embeddings_hf(ClipTower *t, Carver *carver) {
    const ClipVisionConfig *c = &t->config;
    int D = c->hidden_size, p = c->patch_size, positions = c->pos_embed_prefix ? clip_n_tokens(c) : clip_n_patches(c);
    add_weight(t, carver, &t->patch_w, "embeddings.patch_embedding.weight", 4, D, c->channels, p, p);
    if (c->patch_bias) add_weight(t, carver, &t->patch_b, "embeddings.patch_embedding.bias", 1, D, 0, 0, 0);
    if (c->class_token) add_weight(t, carver, &t->class_emb, "embeddings.class_embedding", 1, D, 0, 0, 0);
    add_weight(t, carver, &t->pos_emb, "embeddings.position_embedding.weight", 2, positions, D, 0, 0);
    if (c->pre_norm) {
        add_weight(t, carver, &t->pre_ln_w, "pre_layrnorm.weight", 1, D, 0, 0, 0);
        add_weight(t, carver, &t->pre_ln_b, "pre_layrnorm.bias", 1, D, 0, 0, 0);
    }
}

// timm: patch_embed.proj, cls_token (1, 1, D), reg_token (1, R, D), pos_embed (1, positions, D), norm_pre
static void layout_embeddings_timm(ClipTower *t, Carver *carver) {
    const ClipVisionConfig *c = &t->config;
    int D = c->hidden_size, p = c->patch_size, positions = c->pos_embed_prefix ? clip_n_tokens(c) : clip_n_patches(c);
    add_weight(t, carver, &t->patch_w, "patch_embed.proj.weight", 4, D, c->channels, p, p);
    if (c->patch_bias) add_weight(t, carver, &t->patch_b, "patch_embed.proj.bias", 1, D, 0, 0, 0);
    if (c->class_token) add_weight(t, carver, &t->class_emb, "cls_token", 3, 1, 1, D, 0);
    if (c->n_registers) add_weight(t, carver, &t->registers, "reg_token", 3, 1, c->n_registers, D, 0);
    add_weight(t, carver, &t->pos_emb, "pos_embed", 3, 1, positions, D, 0);
    if (c->pre_norm) {
        add_weight(t, carver, &t->pre_ln_w, "norm_pre.weight", 1, D, 0, 0, 0);
        add_weight(t, carver, &t->pre_ln_b, "norm_pre.bias", 1, D, 0, 0, 0);
    }
}

static size_t layout_weights(ClipTower *t, uint8_t *base) {
    bool hf = t->config.layout == VIT_LAYOUT_HF;
    Carver carver = {base, 0};
    t->n_weights = 0;
    if (hf) layout_embeddings_hf(t, &carver);
    else layout_embeddings_timm(t, &carver);
    for (int l = 0; l < t->n_layers_used; l++) {
        if (hf) layout_layer_hf(t, &carver, l);
        else layout_layer_timm(t, &carver, l);
    }
    return carver.used;
}

static size_t layout_activations(ClipTower *t, uint8_t *base) {
    const ClipVisionConfig *c = &t->config;
    size_t s = dtype_size(t->ops->act_dtype), n = (size_t)t->max_images, P = (size_t)clip_n_patches(c);
    size_t N = n * clip_n_tokens(c), F = (size_t)clip_n_features(c), D = (size_t)c->hidden_size;
    Carver carver = {base, 0};
    t->images = carve(&carver, n * c->channels * c->image_size * c->image_size * s);
    t->patches = carve(&carver, n * P * D * s);
    t->x = carve(&carver, N * D * s);
    t->ln = carve(&carver, N * D * s);
    t->q = carve(&carver, N * D * s);
    t->k = carve(&carver, N * D * s);
    t->v = carve(&carver, N * D * s);
    t->att = carve(&carver, N * D * s);
    t->mlp = carve(&carver, N * c->intermediate_size * s);
    t->mean = carve(&carver, N * sizeof(float));
    t->rstd = carve(&carver, N * sizeof(float));
    t->lse = carve(&carver, N * c->n_heads * sizeof(float));
    t->class_rows = carve(&carver, n * sizeof(int32_t));
    t->register_rows = carve(&carver, n * c->n_registers * sizeof(int32_t));
    t->patch_rows = carve(&carver, n * P * sizeof(int32_t));
    t->feature_rows = carve(&carver, n * F * sizeof(int32_t));
    return carver.used;
}

// class_rows[b] = b * T, register_rows[b * R + r] = b * T + class + r,
// patch_rows[b * P + p] = b * T + prefix + p, feature_rows[b * F + f] = b * T + skip_tokens + f
static bool upload_row_indices(ClipTower *t, Error *err) {
    const ClipVisionConfig *c = &t->config;
    int P = clip_n_patches(c), T = clip_n_tokens(c), F = clip_n_features(c), R = c->n_registers, n = t->max_images;
    int prefix = n_prefix_tokens(c), first_register = c->class_token ? 1 : 0;
    int32_t *class_rows = checked_malloc((size_t)n * (1 + R + P + F) * sizeof(int32_t), "vision tower row indices", err);
    if (!class_rows) return false;
    int32_t *register_rows = class_rows + n, *patch_rows = register_rows + (size_t)n * R;
    int32_t *feature_rows = patch_rows + (size_t)n * P;
    for (int b = 0; b < n; b++) {
        class_rows[b] = b * T;
        for (int r = 0; r < R; r++) register_rows[b * R + r] = b * T + first_register + r;
        for (int p = 0; p < P; p++) patch_rows[b * P + p] = b * T + prefix + p;
        for (int f = 0; f < F; f++) feature_rows[b * F + f] = b * T + c->skip_tokens + f;
    }
    t->ops->upload(t->ops, t->class_rows, class_rows, (size_t)n * sizeof(int32_t));
    if (R) t->ops->upload(t->ops, t->register_rows, register_rows, (size_t)n * R * sizeof(int32_t));
    t->ops->upload(t->ops, t->patch_rows, patch_rows, (size_t)n * P * sizeof(int32_t));
    t->ops->upload(t->ops, t->feature_rows, feature_rows, (size_t)n * F * sizeof(int32_t));
    free(class_rows);
    return true;
}

ClipTower *clip_tower_create(const Ops *ops, const ClipVisionConfig *config, int max_images, Error *err) {
    if (!clip_config_validate(config, err)) return NULL;
    if (max_images < 1) return fail(err, "vision tower: max_images must be at least 1"), NULL;
    ClipTower *t = checked_calloc(1, sizeof *t, "vision tower", err);
    if (!t) return NULL;
    t->ops = ops;
    t->config = *config;
    t->max_images = max_images;
    t->n_layers_used = clip_layers_used(config);
    t->layers = checked_calloc((size_t)t->n_layers_used + 1, sizeof(ClipLayer), "CLIP layers", err);
    t->weights = checked_calloc((size_t)t->n_layers_used * 16 + 8, sizeof(ClipWeight), "vision tower weight table", err);
    bool ok = t->layers && t->weights;
    if (ok) {
        size_t weight_bytes = layout_weights(t, NULL), act_bytes = layout_activations(t, NULL);
        ok = (t->weight_block = ops->alloc(ops, weight_bytes, err)) && (t->act_block = ops->alloc(ops, act_bytes, err));
    }
    if (ok) {
        layout_weights(t, t->weight_block);
        layout_activations(t, t->act_block);
        ok = upload_row_indices(t, err);
    }
    if (!ok) {
        clip_tower_destroy(t);
        return NULL;
    }
    return t;
}

bool clip_tower_bytes(DType act_dtype, const ClipVisionConfig *config, int max_images, size_t *bytes, Error *err) {
    if (!clip_config_validate(config, err)) return false;
    Ops ops = {.act_dtype = act_dtype};  // the layout reads only the storage type
    ClipTower t = {.ops = &ops, .config = *config, .max_images = max_images,
                   .n_layers_used = clip_layers_used(config)};
    t.layers = checked_calloc((size_t)t.n_layers_used + 1, sizeof(ClipLayer), "CLIP layers", err);
    if (!t.layers) return false;
    *bytes = layout_weights(&t, NULL) + layout_activations(&t, NULL);
    free(t.layers);
    return true;
}

void clip_tower_destroy(ClipTower *t) {
    if (!t) return;
    if (t->weight_block) t->ops->free(t->ops, t->weight_block);
    if (t->act_block) t->ops->free(t->ops, t->act_block);
    free(t->layers);
    free(t->weights);
    free(t);
}

bool clip_tower_visit(ClipTower *t, ClipTensorVisitor visit, void *context, Error *err) {
    for (int i = 0; i < t->n_weights; i++) {
        if (!visit(context, t->weights[i].name, &t->weights[i].tensor, err)) return false;
    }
    return true;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

void clip_tower_init_random(ClipTower *t, uint64_t seed) {
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < t->n_weights; i++) {
        const ClipWeight *w = &t->weights[i];
        size_t n = (size_t)tensor_numel(&w->tensor);
        float *host = malloc(n * sizeof(float));
        if (!host) return;
        bool is_norm = strstr(w->name, "norm") != NULL; // layer_norm1, pre_layrnorm, norm1, norm_pre
        for (size_t j = 0; j < n; j++) {
            if (ends_with(w->name, ".bias")) host[j] = 0.0f;
            else if (is_norm) host[j] = 1.0f;
            else host[j] = 0.02f * rng_normal(&rng);
        }
        t->ops->upload_f32(t->ops, w->tensor.data, host, n);
        free(host);
    }
}

// ----------------------------------------------------------------------------
// forward

static void *act_at(const ClipTower *t, void *base, size_t elements) {
    return (uint8_t *)base + elements * dtype_size(t->ops->act_dtype);
}

// y (N, out) = x (N, in) W^T + b
static void linear(const ClipTower *t, void *y, const void *x, const void *W, const void *b, int N, int in, int out) {
    t->ops->matmul(t->ops, y, x, W, N, out, in, false, true, 1.0f, 0.0f);
    t->ops->bias_add(t->ops, y, b, N, out);
}

// x (n * T, D) = [class;] [registers;] (patches + patch bias) + positions, the
// positions over every token, or added to the patches alone without pos_embed_prefix
static void embed(ClipTower *t, int n_images) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    int D = c->hidden_size, P = clip_n_patches(c), T = clip_n_tokens(c), R = c->n_registers;
    ops->patch_embed_forward(ops, t->patches, t->images, t->patch_w, n_images, c->channels, c->image_size,
                             c->patch_size, D);
    if (c->patch_bias) ops->bias_add(ops, t->patches, t->patch_b, n_images * P, D);
    for (int b = 0; b < n_images && !c->pos_embed_prefix; b++)
        ops->add_inplace(ops, act_at(t, t->patches, (size_t)b * P * D), t->pos_emb, (size_t)P * D);
    ops->scatter_rows(ops, t->x, t->patch_rows, t->patches, n_images * P, D);
    for (int b = 0; b < n_images; b++) {
        if (c->class_token) ops->scatter_rows(ops, t->x, t->class_rows + b, t->class_emb, 1, D);
        if (R) ops->scatter_rows(ops, t->x, t->register_rows + (size_t)b * R, t->registers, R, D);
        if (c->pos_embed_prefix) ops->add_inplace(ops, act_at(t, t->x, (size_t)b * T * D), t->pos_emb, (size_t)T * D);
    }
}

// out = act(inp), n elements
static void activation_forward(const ClipTower *t, void *out, const void *inp, size_t n) {
    switch (t->config.activation) {
    case VIT_QUICK_GELU: t->ops->quick_gelu_forward(t->ops, out, inp, n); break;
    case VIT_GELU_TANH: t->ops->gelu_tanh_forward(t->ops, out, inp, n); break;
    case VIT_GELU: t->ops->gelu_forward(t->ops, out, inp, n); break;
    }
}

static void layer_forward(ClipTower *t, const ClipLayer *w, int n_images) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    int D = c->hidden_size, I = c->intermediate_size, T = clip_n_tokens(c), N = n_images * T;
    ops->layernorm_forward(ops, t->ln, t->mean, t->rstd, t->x, w->ln1_w, w->ln1_b, N, D, c->layer_norm_eps);
    linear(t, t->q, t->ln, w->w[0], w->b[0], N, D, D);
    linear(t, t->k, t->ln, w->w[1], w->b[1], N, D, D);
    linear(t, t->v, t->ln, w->w[2], w->b[2], N, D, D);
    ops->attention_full_forward(ops, t->att, t->lse, t->q, t->k, t->v, n_images, T, c->n_heads, D / c->n_heads);
    linear(t, t->q, t->att, w->w[3], w->b[3], N, D, D);
    if (c->layer_scale) ops->scale_columns(ops, t->q, w->ls1, N, D);
    ops->add_inplace(ops, t->x, t->q, (size_t)N * D);
    ops->layernorm_forward(ops, t->ln, t->mean, t->rstd, t->x, w->ln2_w, w->ln2_b, N, D, c->layer_norm_eps);
    linear(t, t->mlp, t->ln, w->fc1_w, w->fc1_b, N, D, I);
    activation_forward(t, t->mlp, t->mlp, (size_t)N * I);
    linear(t, t->q, t->mlp, w->fc2_w, w->fc2_b, N, I, D);
    if (c->layer_scale) ops->scale_columns(ops, t->q, w->ls2, N, D);
    ops->add_inplace(ops, t->x, t->q, (size_t)N * D);
}

bool clip_tower_forward(ClipTower *t, const float *images, int n_images, void *features, Error *err) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    if (n_images < 1 || n_images > t->max_images)
        return fail(err, "vision tower: %d images in one forward; the tower was sized for 1 to %d", n_images,
                    t->max_images);
    int D = c->hidden_size, N = n_images * clip_n_tokens(c);
    ops->upload_f32(ops, t->images, images, (size_t)n_images * c->channels * c->image_size * c->image_size);
    embed(t, n_images);
    if (c->pre_norm) {
        ops->layernorm_forward(ops, t->ln, t->mean, t->rstd, t->x, t->pre_ln_w, t->pre_ln_b, N, D, c->layer_norm_eps);
        void *embedded = t->x; // the residual stream continues in the normalised buffer
        t->x = t->ln;
        t->ln = embedded;
    }
    for (int l = 0; l < t->n_layers_used; l++) layer_forward(t, &t->layers[l], n_images);
    ops->embedding_forward(ops, features, t->feature_rows, t->x, n_images * clip_n_features(c), D);
    return ops->check(ops, err);
}
