// model: the ViT vision tower: CLIP and SigLIP in Hugging Face's
// CLIPVisionModel / SiglipVisionModel layouts, DINOv2 and SigLIP in timm's;
// frozen, or with LoRA on every linear of its layers and a backward from the
// features to those adapters. N = n_images * T tokens, T = prefix + P: the
// class token and the registers first (prefix, when the tower has them), then
// the P patches.
//
// Layer l, x_in -> x_out (the residual stream xs[l] -> xs[l + 1] when training):
//   ln1 = layernorm1(x_in); q, k, v = linears(ln1); att = attention(q, k, v)
//   x_mid = x_in + [ls1 *] out_proj(att); ln2 = layernorm2(x_mid)
//   x_out = x_mid + [ls2 *] fc2(act(fc1(ln2)))
// Every linear is a lora_linear; timm's fused qkv (3D, D) is ONE LoRA module
// (A (r, D), B (3D, r)) as PEFT wraps attn.qkv: q, k, v run as three
// lora_linears sharing A, each with its third of B (a view entry), which sums
// to the fused module's gradients. The backward, per layer from dL/dx_out (in
// place in grad_x) to dL/dx_in, with g the residual gradient:
//   dy = [ls2 *] g; d(act) = dy fc2; d(fc1 out) = act'(.) d(act); g += layernorm2'(d(fc1 out) fc1)
//   dy = [ls1 *] g; d(att) = dy out_proj; dq, dk, dv = attention'(d(att)); g += layernorm1'(sum dq W_q ...)
// LayerScale gammas, norms and biases are frozen: only the adapters get gradients.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_linear.h"
#include "model.h"

#define CLIP_NAME_MAX 128

// A layer's linears; timm's fused qkv is LIN_Q, LIN_K and LIN_V, thirds of one tensor.
enum { LIN_Q, LIN_K, LIN_V, LIN_OUT, LIN_FC1, LIN_FC2, LIN_COUNT };

// The module paths under a layer, in each layout: the weights' names (+ ".weight", ".bias") and
// PEFT's LoRA modules (+ ".lora_A.weight", ...); NULL where timm's qkv covers k and v.
static const char *const HF_LINEARS[LIN_COUNT] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                  "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};
static const char *const TIMM_LINEARS[LIN_COUNT] = {"attn.qkv", NULL, NULL, "attn.proj", "mlp.fc1", "mlp.fc2"};

typedef struct ClipLayer {
    void *ln1_w, *ln1_b, *ln2_w, *ln2_b;     // (D)
    void *w[LIN_COUNT], *b[LIN_COUNT];        // q, k, v, out_proj (D, D), (D); fc1 (I, D), (I); fc2 (D, I), (D)
    void *ls1, *ls2;                          // (D) layer scale gammas, with layer_scale
    const ParamEntry *lora_A[LIN_COUNT], *lora_B[LIN_COUNT]; // bound adapters (NULL: none)
    ParamEntry qkv_B[3];                      // timm: the thirds (D, r) of the fused qkv's lora_B (3D, r)
} ClipLayer;

// One layer's activations: what its backward reads (training), or the frozen
// forward's buffers, aliased where the forward no longer needs them.
typedef struct ClipLayerActs {
    void *ln1, *q, *k, *v, *att, *x_mid, *ln2; // (N, D)
    void *mlp_pre;                              // (N, I) fc1's output, before the activation
    float *mean1, *rstd1, *mean2, *rstd2;       // (N) the two norms' statistics
    float *lse;                                 // (n_images, n_heads, T) attention's log-sum-exp
    void *lora_h[LIN_COUNT];                    // (N, r) each adapter's x A^T
} ClipLayerActs;

typedef struct ClipWeight {
    char name[CLIP_NAME_MAX];
    Tensor tensor;
} ClipWeight;

struct ClipTower {
    const Ops *ops;
    ClipVisionConfig config;
    ClipTowerOptions options;
    int max_images, n_layers_used;
    void *weight_block;
    ClipWeight *weights;
    int n_weights;
    void *patch_w, *patch_b, *class_emb, *registers; // (D, C, p, p), (D), (D), (R, D); all but patch_w per config
    void *pos_emb;                                    // (T, D), or (P, D) without pos_embed_prefix
    void *pre_ln_w, *pre_ln_b;                        // (D), (D) with pre_norm
    ClipLayer *layers;
    // adapters: bound by clip_tower_bind_lora; param_act is the forward's or backward's compute copy
    bool lora_bound;
    float lora_scale;
    const void *param_act;
    // activations for max_images
    void *act_block;
    void *images;            // (n, channels, S, S)
    void *patches;           // (n, P, D)
    void *mlp_act;           // (N, I) fc2's input
    // frozen: one layer's buffers, reused
    void *x, *ln;            // (N, D) residual stream and normalised input
    void *q, *k, *v, *att;   // (N, D)
    float *mean, *rstd;      // (N)
    float *lse;              // (n, H, T) attention's log-sum-exp
    void *lora_h;            // (N, r) with lora_r
    // training: the residual stream before each layer and after the last, each layer's activations
    // (one, recomputed from xs[l], with activation_checkpointing), and the backward's buffers
    void **xs;               // n_layers_used + 1 of (N, D)
    ClipLayerActs *acts;     // n_layers_used, or 1
    void *grad_x, *d_y, *d_att, *d_q, *d_k, *d_v; // (N, D)
    void *d_mlp_act, *d_mlp_pre;                   // (N, I)
    void *lora_dh;                                 // (N, r)
    int n_images_forward;    // images of the last training forward, for the backward
    int32_t *class_rows;     // (max_images): b * T, with a class token
    int32_t *register_rows;  // (max_images * R): b * T + class_token + r
    int32_t *patch_rows;     // (max_images * P): b * T + prefix + p
    int32_t *feature_rows;   // (max_images * F): b * T + skip_tokens + f, F features
};

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

// in (columns) and out (rows) of one linear of a layer
static void linear_shape(const ClipVisionConfig *c, int which, int *in, int *out) {
    *in = which == LIN_FC2 ? c->intermediate_size : c->hidden_size;
    *out = which == LIN_FC1 ? c->intermediate_size : c->hidden_size;
}

// Hugging Face: encoder.layers.l.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}
static void layout_layer_hf(ClipTower *t, Carver *carver, int l) {
    ClipLayer *layer = &t->layers[l];
    int D = t->config.hidden_size;
    const char *layer_prefix = "encoder.layers";
    char name[CLIP_NAME_MAX];
    for (int p = 0; p < LIN_COUNT; p++) {
        char suffix[64];
        int in, out;
        linear_shape(&t->config, p, &in, &out);
        snprintf(suffix, sizeof suffix, "%s.weight", HF_LINEARS[p]);
        LAYER_WEIGHT(&layer->w[p], suffix, 2, out, in);
        snprintf(suffix, sizeof suffix, "%s.bias", HF_LINEARS[p]);
        LAYER_WEIGHT(&layer->b[p], suffix, 1, out, 0);
    }
    LAYER_WEIGHT(&layer->ln1_w, "layer_norm1.weight", 1, D, 0);
    LAYER_WEIGHT(&layer->ln1_b, "layer_norm1.bias", 1, D, 0);
    LAYER_WEIGHT(&layer->ln2_w, "layer_norm2.weight", 1, D, 0);
    LAYER_WEIGHT(&layer->ln2_b, "layer_norm2.bias", 1, D, 0);
}

// timm: blocks.l.{norm1, attn.qkv (3D, D) = [q; k; v], attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}
static void layout_layer_timm(ClipTower *t, Carver *carver, int l) {
    ClipLayer *layer = &t->layers[l];
    int D = t->config.hidden_size;
    const char *layer_prefix = "blocks";
    char name[CLIP_NAME_MAX];
    for (int p = 0; p < LIN_COUNT; p++) {
        if (!TIMM_LINEARS[p]) continue;
        char suffix[64];
        int in, out;
        linear_shape(&t->config, p, &in, &out);
        if (p == LIN_Q) out = 3 * D;
        snprintf(suffix, sizeof suffix, "%s.weight", TIMM_LINEARS[p]);
        LAYER_WEIGHT(&layer->w[p], suffix, 2, out, in);
        snprintf(suffix, sizeof suffix, "%s.bias", TIMM_LINEARS[p]);
        LAYER_WEIGHT(&layer->b[p], suffix, 1, out, 0);
    }
    for (int p = LIN_K; carver->base && p <= LIN_V; p++) { // k and v: the fused tensor's second and third thirds
        layer->w[p] = (uint8_t *)layer->w[LIN_Q] + (size_t)p * D * D * dtype_size(t->ops->act_dtype);
        layer->b[p] = (uint8_t *)layer->b[LIN_Q] + (size_t)p * D * dtype_size(t->ops->act_dtype);
    }
    LAYER_WEIGHT(&layer->ln1_w, "norm1.weight", 1, D, 0);
    LAYER_WEIGHT(&layer->ln1_b, "norm1.bias", 1, D, 0);
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

static int n_layer_acts(const ClipTower *t) {
    return t->options.activation_checkpointing ? 1 : t->n_layers_used;
}

// Every layer's saved activations (one set with checkpointing) and the residual stream before each layer.
static void layout_training(ClipTower *t, Carver *carver) {
    const ClipVisionConfig *c = &t->config;
    size_t s = dtype_size(t->ops->act_dtype), n = (size_t)t->max_images, N = n * clip_n_tokens(c);
    size_t D = (size_t)c->hidden_size, I = (size_t)c->intermediate_size, r = (size_t)t->options.lora_r;
    for (int l = 0; l <= t->n_layers_used; l++) t->xs[l] = carve(carver, N * D * s);
    for (int l = 0; l < n_layer_acts(t); l++) {
        ClipLayerActs *a = &t->acts[l];
        void **nd[] = {&a->ln1, &a->q, &a->k, &a->v, &a->att, &a->x_mid, &a->ln2};
        for (size_t i = 0; i < sizeof nd / sizeof *nd; i++) *nd[i] = carve(carver, N * D * s);
        a->mlp_pre = carve(carver, N * I * s);
        float **stats[] = {&a->mean1, &a->rstd1, &a->mean2, &a->rstd2};
        for (size_t i = 0; i < sizeof stats / sizeof *stats; i++) *stats[i] = carve(carver, N * sizeof(float));
        a->lse = carve(carver, N * c->n_heads * sizeof(float));
        for (int p = 0; p < LIN_COUNT; p++) a->lora_h[p] = r ? carve(carver, N * r * s) : NULL;
    }
    void **backward[] = {&t->grad_x, &t->d_y, &t->d_att, &t->d_q, &t->d_k, &t->d_v};
    for (size_t i = 0; i < sizeof backward / sizeof *backward; i++) *backward[i] = carve(carver, N * D * s);
    t->d_mlp_act = carve(carver, N * I * s);
    t->d_mlp_pre = carve(carver, N * I * s);
    t->lora_dh = r ? carve(carver, N * r * s) : NULL;
}

// One layer's buffers, reused by every layer.
static void layout_frozen(ClipTower *t, Carver *carver) {
    const ClipVisionConfig *c = &t->config;
    size_t s = dtype_size(t->ops->act_dtype), N = (size_t)t->max_images * clip_n_tokens(c);
    size_t D = (size_t)c->hidden_size, r = (size_t)t->options.lora_r;
    void **nd[] = {&t->x, &t->ln, &t->q, &t->k, &t->v, &t->att};
    for (size_t i = 0; i < sizeof nd / sizeof *nd; i++) *nd[i] = carve(carver, N * D * s);
    t->mean = carve(carver, N * sizeof(float));
    t->rstd = carve(carver, N * sizeof(float));
    t->lse = carve(carver, N * c->n_heads * sizeof(float));
    t->lora_h = r ? carve(carver, N * r * s) : NULL;
}

static size_t layout_activations(ClipTower *t, uint8_t *base) {
    const ClipVisionConfig *c = &t->config;
    size_t s = dtype_size(t->ops->act_dtype), n = (size_t)t->max_images, P = (size_t)clip_n_patches(c);
    size_t N = n * clip_n_tokens(c), F = (size_t)clip_n_features(c), D = (size_t)c->hidden_size;
    Carver carver = {base, 0};
    t->images = carve(&carver, n * c->channels * c->image_size * c->image_size * s);
    t->patches = carve(&carver, n * P * D * s);
    t->mlp_act = carve(&carver, N * c->intermediate_size * s);
    if (t->options.train) layout_training(t, &carver);
    else layout_frozen(t, &carver);
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

// The host tables a layout fills: layers, the residual stream's and the layers' activations.
static bool alloc_tables(ClipTower *t, Error *err) {
    t->layers = checked_calloc((size_t)t->n_layers_used + 1, sizeof(ClipLayer), "CLIP layers", err);
    t->xs = checked_calloc((size_t)t->n_layers_used + 1, sizeof(void *), "vision tower residual streams", err);
    t->acts = checked_calloc((size_t)t->n_layers_used + 1, sizeof(ClipLayerActs), "vision tower activations", err);
    return t->layers && t->xs && t->acts;
}

static void free_tables(ClipTower *t) {
    free(t->layers);
    free(t->xs);
    free(t->acts);
}

static bool options_validate(const ClipTowerOptions *o, Error *err) {
    if (o->lora_r < 0) return fail(err, "vision tower: LoRA rank %d is negative", o->lora_r);
    if (o->activation_checkpointing && !o->train)
        return fail(err, "vision tower: activation checkpointing needs a training tower");
    return true;
}

ClipTower *clip_tower_create_with(const Ops *ops, const ClipVisionConfig *config, int max_images,
                                  const ClipTowerOptions *options, Error *err) {
    ClipTowerOptions frozen = {0};
    if (!options) options = &frozen;
    if (!clip_config_validate(config, err) || !options_validate(options, err)) return NULL;
    if (max_images < 1) return fail(err, "vision tower: max_images must be at least 1"), NULL;
    ClipTower *t = checked_calloc(1, sizeof *t, "vision tower", err);
    if (!t) return NULL;
    t->ops = ops;
    t->config = *config;
    t->options = *options;
    t->max_images = max_images;
    t->n_layers_used = clip_layers_used(config);
    t->weights = checked_calloc((size_t)t->n_layers_used * 16 + 8, sizeof(ClipWeight), "vision tower weight table", err);
    bool ok = alloc_tables(t, err) && t->weights;
    if (ok) {
        size_t weight_bytes = layout_weights(t, NULL), act_bytes = layout_activations(t, NULL);
        ok = (t->weight_block = ops->alloc(ops, weight_bytes, err)) && (t->act_block = ops->alloc(ops, act_bytes, err));
    }
    if (ok) {
        layout_weights(t, t->weight_block);
        layout_activations(t, t->act_block);
        ok = upload_row_indices(t, err);
    }
    if (ok && options->train) // attention_full_backward's row statistics, so that no backward allocates
        ok = ops->reserve_scratch(ops, attention_backward_scratch_bytes(max_images, clip_n_tokens(config),
                                                                        config->n_heads), err);
    if (!ok) {
        clip_tower_destroy(t);
        return NULL;
    }
    return t;
}

ClipTower *clip_tower_create(const Ops *ops, const ClipVisionConfig *config, int max_images, Error *err) {
    return clip_tower_create_with(ops, config, max_images, NULL, err);
}

bool clip_tower_bytes(DType act_dtype, const ClipVisionConfig *config, int max_images, const ClipTowerOptions *options,
                      size_t *bytes, Error *err) {
    ClipTowerOptions frozen = {0};
    if (!options) options = &frozen;
    if (!clip_config_validate(config, err) || !options_validate(options, err)) return false;
    Ops ops = {.act_dtype = act_dtype};  // the layout reads only the storage type
    ClipTower t = {.ops = &ops, .config = *config, .options = *options, .max_images = max_images,
                   .n_layers_used = clip_layers_used(config)};
    bool ok = alloc_tables(&t, err);
    if (ok) *bytes = layout_weights(&t, NULL) + layout_activations(&t, NULL);
    free_tables(&t);
    return ok;
}

void clip_tower_destroy(ClipTower *t) {
    if (!t) return;
    if (t->weight_block) t->ops->free(t->ops, t->weight_block);
    if (t->act_block) t->ops->free(t->ops, t->act_block);
    free_tables(t);
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
// LoRA adapters: PEFT's module names, the parameter entries, binding

static const char *lora_module(const ClipVisionConfig *c, int which) {
    return c->layout == VIT_LAYOUT_HF ? HF_LINEARS[which] : TIMM_LINEARS[which];
}

// The adapted module's in and out: timm's qkv is one (3D, D) module.
static void lora_module_shape(const ClipVisionConfig *c, int which, int *in, int *out) {
    linear_shape(c, which, in, out);
    if (c->layout == VIT_LAYOUT_TIMM && which == LIN_Q) *out *= 3;
}

// "<prefix>[vision_model.encoder.layers | blocks].<l>.<module>.lora_<A|B>.weight"
static void lora_name(char *name, size_t size, const ClipVisionConfig *c, const char *prefix, int l, int which,
                      char A_or_B) {
    const char *layers = c->layout == VIT_LAYOUT_HF ? "vision_model.encoder.layers" : "blocks";
    snprintf(name, size, "%s%s.%d.%s.lora_%c.weight", prefix ? prefix : "", layers, l, lora_module(c, which), A_or_B);
}

int clip_lora_n_params(const ClipVisionConfig *c) {
    int modules = 0;
    for (int p = 0; p < LIN_COUNT; p++) modules += lora_module(c, p) ? 1 : 0;
    return 2 * modules * clip_layers_used(c);
}

void clip_lora_add_params(const ClipVisionConfig *c, int r, const char *prefix, ParamTable *table) {
    for (int l = 0; l < clip_layers_used(c); l++) {
        for (int p = 0; p < LIN_COUNT; p++) {
            if (!lora_module(c, p)) continue;
            int in, out;
            lora_module_shape(c, p, &in, &out);
            for (int which = 0; which < 2; which++) { // lora_A (r, in), then lora_B (out, r)
                ParamEntry *e = param_table_append(table, which ? out : r, which ? r : in);
                lora_name(e->name, sizeof e->name, c, prefix, l, p, which ? 'B' : 'A');
            }
        }
    }
}

static const ParamEntry *find_lora(const ClipTower *t, const ParamTable *table, const char *prefix, int l, int which,
                                   char A_or_B, int rows, int cols, Error *err) {
    char name[PARAM_NAME_MAX];
    lora_name(name, sizeof name, &t->config, prefix, l, which, A_or_B);
    const ParamEntry *e = param_table_find(table, name);
    if (!e) return fail(err, "vision tower LoRA: no parameter '%s'", name), NULL;
    if (e->shape[0] != rows || e->shape[1] != cols)
        return fail(err, "vision tower LoRA: '%s' is (%lld, %lld), expected (%d, %d)", name, (long long)e->shape[0],
                    (long long)e->shape[1], rows, cols), NULL;
    return e;
}

// timm's fused qkv: q, k and v share A and read their thirds of B (3D, r), rows [p D, (p + 1) D).
static void split_qkv_adapter(ClipLayer *layer, int D, int r) {
    for (int p = 0; p < 3; p++) {
        ParamEntry *third = &layer->qkv_B[p];
        *third = *layer->lora_B[LIN_Q];
        third->shape[0] = D;
        third->numel = (size_t)D * r;
        third->offset += (size_t)p * D * r;
    }
    for (int p = LIN_Q; p <= LIN_V; p++) {
        layer->lora_A[p] = layer->lora_A[LIN_Q];
        layer->lora_B[p] = &layer->qkv_B[p];
    }
}

bool clip_tower_bind_lora(ClipTower *t, const ParamTable *table, const char *prefix, float scale, Error *err) {
    const ClipVisionConfig *c = &t->config;
    int r = t->options.lora_r;
    if (r < 1) return fail(err, "vision tower LoRA: the tower was created without adapters (lora_r 0)");
    for (int l = 0; l < t->n_layers_used; l++) {
        ClipLayer *layer = &t->layers[l];
        for (int p = 0; p < LIN_COUNT; p++) {
            if (!lora_module(c, p)) continue;
            int in, out;
            lora_module_shape(c, p, &in, &out);
            layer->lora_A[p] = find_lora(t, table, prefix, l, p, 'A', r, in, err);
            layer->lora_B[p] = layer->lora_A[p] ? find_lora(t, table, prefix, l, p, 'B', out, r, err) : NULL;
            if (!layer->lora_B[p]) return false;
        }
        if (c->layout == VIT_LAYOUT_TIMM) split_qkv_adapter(layer, c->hidden_size, r);
    }
    t->lora_bound = true;
    t->lora_scale = scale;
    return true;
}

// ----------------------------------------------------------------------------
// forward

static void *act_at(const ClipTower *t, void *base, size_t elements) {
    return (uint8_t *)base + elements * dtype_size(t->ops->act_dtype);
}

// x (n * T, D) = [class;] [registers;] (patches + patch bias) + positions, the
// positions over every token, or added to the patches alone without pos_embed_prefix
static void embed(ClipTower *t, void *x, int n_images) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    int D = c->hidden_size, P = clip_n_patches(c), T = clip_n_tokens(c), R = c->n_registers;
    ops->patch_embed_forward(ops, t->patches, t->images, t->patch_w, n_images, c->channels, c->image_size,
                             c->patch_size, D);
    if (c->patch_bias) ops->bias_add(ops, t->patches, t->patch_b, n_images * P, D);
    for (int b = 0; b < n_images && !c->pos_embed_prefix; b++)
        ops->add_inplace(ops, act_at(t, t->patches, (size_t)b * P * D), t->pos_emb, (size_t)P * D);
    ops->scatter_rows(ops, x, t->patch_rows, t->patches, n_images * P, D);
    for (int b = 0; b < n_images; b++) {
        if (c->class_token) ops->scatter_rows(ops, x, t->class_rows + b, t->class_emb, 1, D);
        if (R) ops->scatter_rows(ops, x, t->register_rows + (size_t)b * R, t->registers, R, D);
        if (c->pos_embed_prefix) ops->add_inplace(ops, act_at(t, x, (size_t)b * T * D), t->pos_emb, (size_t)T * D);
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

// dinp += act'(inp) dout
static void activation_backward(const ClipTower *t, void *dinp, const void *dout, const void *inp, size_t n) {
    switch (t->config.activation) {
    case VIT_QUICK_GELU: t->ops->quick_gelu_backward(t->ops, dinp, dout, inp, n); break;
    case VIT_GELU_TANH: t->ops->gelu_tanh_backward(t->ops, dinp, dout, inp, n); break;
    case VIT_GELU: t->ops->gelu_backward(t->ops, dinp, dout, inp, n); break;
    }
}

// Linear `which` of a layer, with its adapter when bound and a compute copy is given.
static LoraLinear layer_linear(const ClipTower *t, const ClipLayer *w, int which) {
    LoraLinear l = {.W = w->w[which], .b = w->b[which], .scale = t->lora_scale};
    linear_shape(&t->config, which, &l.in, &l.out);
    if (t->lora_bound && t->param_act) {
        l.A = w->lora_A[which], l.B = w->lora_B[which];
        l.r = (int)l.A->shape[0];
    }
    return l;
}

// y (N, out) = linear(x); h (N, r) keeps x A^T
static void linear_forward(const ClipTower *t, const ClipLayer *w, int which, void *y, const void *x, void *h, int N) {
    LoraLinear l = layer_linear(t, w, which);
    lora_linear_forward(t->ops, &l, t->param_act, &(LoraScratch){0}, y, x, h, N);
}

// x_out = layer(x_in), the activations in a; x_out may be x_in (the frozen tower runs in place).
static void layer_forward(ClipTower *t, const ClipLayer *w, const ClipLayerActs *a, const void *x_in, void *x_out,
                          int n_images) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    int D = c->hidden_size, I = c->intermediate_size, T = clip_n_tokens(c), N = n_images * T;
    ops->layernorm_forward(ops, a->ln1, a->mean1, a->rstd1, x_in, w->ln1_w, w->ln1_b, N, D, c->layer_norm_eps);
    void *qkv[3] = {a->q, a->k, a->v};
    for (int p = 0; p < 3; p++) linear_forward(t, w, LIN_Q + p, qkv[p], a->ln1, a->lora_h[LIN_Q + p], N);
    ops->attention_full_forward(ops, a->att, a->lse, a->q, a->k, a->v, n_images, T, c->n_heads, D / c->n_heads);
    linear_forward(t, w, LIN_OUT, a->x_mid, a->att, a->lora_h[LIN_OUT], N);
    if (c->layer_scale) ops->scale_columns(ops, a->x_mid, w->ls1, N, D);
    ops->add_inplace(ops, a->x_mid, x_in, (size_t)N * D);
    ops->layernorm_forward(ops, a->ln2, a->mean2, a->rstd2, a->x_mid, w->ln2_w, w->ln2_b, N, D, c->layer_norm_eps);
    linear_forward(t, w, LIN_FC1, a->mlp_pre, a->ln2, a->lora_h[LIN_FC1], N);
    activation_forward(t, t->mlp_act, a->mlp_pre, (size_t)N * I);
    linear_forward(t, w, LIN_FC2, x_out, t->mlp_act, a->lora_h[LIN_FC2], N);
    if (c->layer_scale) ops->scale_columns(ops, x_out, w->ls2, N, D);
    ops->add_inplace(ops, x_out, a->x_mid, (size_t)N * D);
}

// The frozen tower's one set: x_mid in q (free once attention read it), both norms in ln,
// the MLP in place in mlp_act, every adapter's h in lora_h.
static ClipLayerActs frozen_acts(const ClipTower *t) {
    ClipLayerActs a = {.ln1 = t->ln, .q = t->q, .k = t->k, .v = t->v, .att = t->att, .x_mid = t->q, .ln2 = t->ln,
                       .mlp_pre = t->mlp_act, .mean1 = t->mean, .rstd1 = t->rstd, .mean2 = t->mean,
                       .rstd2 = t->rstd, .lse = t->lse};
    for (int p = 0; p < LIN_COUNT; p++) a.lora_h[p] = t->lora_h;
    return a;
}

static ClipLayerActs *layer_acts(const ClipTower *t, int l) {
    return &t->acts[t->options.activation_checkpointing ? 0 : l];
}

// The residual stream after the last used layer: in place in x (frozen), or xs[l] before layer l (training).
static const void *forward_layers(ClipTower *t, int n_images) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    int D = c->hidden_size, N = n_images * clip_n_tokens(c);
    if (!t->options.train) {
        embed(t, t->x, n_images);
        if (c->pre_norm) {
            ops->layernorm_forward(ops, t->ln, t->mean, t->rstd, t->x, t->pre_ln_w, t->pre_ln_b, N, D,
                                   c->layer_norm_eps);
            void *embedded = t->x; // the residual stream continues in the normalised buffer
            t->x = t->ln;
            t->ln = embedded;
        }
        ClipLayerActs a = frozen_acts(t);
        for (int l = 0; l < t->n_layers_used; l++) layer_forward(t, &t->layers[l], &a, t->x, t->x, n_images);
        return t->x;
    }
    void *embedded = c->pre_norm ? t->d_y : t->xs[0]; // no gradient reaches the embeddings: no statistics kept
    embed(t, embedded, n_images);
    if (c->pre_norm)
        ops->layernorm_forward(ops, t->xs[0], t->acts[0].mean1, t->acts[0].rstd1, embedded, t->pre_ln_w,
                               t->pre_ln_b, N, D, c->layer_norm_eps);
    for (int l = 0; l < t->n_layers_used; l++)
        layer_forward(t, &t->layers[l], layer_acts(t, l), t->xs[l], t->xs[l + 1], n_images);
    t->n_images_forward = n_images;
    return t->xs[t->n_layers_used];
}

bool clip_tower_forward_lora(ClipTower *t, const void *param_act, const float *images, int n_images, void *features,
                             Error *err) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    if (n_images < 1 || n_images > t->max_images)
        return fail(err, "vision tower: %d images in one forward; the tower was sized for 1 to %d", n_images,
                    t->max_images);
    if (t->lora_bound && !param_act)
        return fail(err, "vision tower: adapters are bound, so the forward needs their compute copy");
    t->param_act = param_act;
    ops->upload_f32(ops, t->images, images, (size_t)n_images * c->channels * c->image_size * c->image_size);
    const void *x = forward_layers(t, n_images);
    ops->embedding_forward(ops, features, t->feature_rows, x, n_images * clip_n_features(c), c->hidden_size);
    return ops->check(ops, err);
}

bool clip_tower_forward(ClipTower *t, const float *images, int n_images, void *features, Error *err) {
    return clip_tower_forward_lora(t, NULL, images, n_images, features, err);
}

// ----------------------------------------------------------------------------
// backward

// dx += dy W + s dy B A (dx NULL: not needed); dA, dB added into grads
static void linear_backward(const ClipTower *t, const ClipLayer *w, int which, float *grads, void *dx, const void *dy,
                            const void *x, const void *h, int N) {
    LoraLinear l = layer_linear(t, w, which);
    lora_linear_backward(t->ops, &l, t->param_act, grads, &(LoraScratch){.dh = t->lora_dh}, dx, dy, x, h, N);
}

static void zero_act(const ClipTower *t, void *x, size_t n) {
    t->ops->zero(t->ops, x, n * dtype_size(t->ops->act_dtype));
}

// dst (n elements) = src
static void copy_act(const ClipTower *t, void *dst, const void *src, size_t n) {
    zero_act(t, dst, n);
    t->ops->add_inplace(t->ops, dst, src, n);
}

// grad_x: dL/dx_out in, dL/dx_in out (left as dL/dx_mid's share when first: nothing below needs it).
static void layer_backward(ClipTower *t, const ClipLayer *w, const ClipLayerActs *a, const void *x_in, float *grads,
                           int n_images, bool first) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    int D = c->hidden_size, I = c->intermediate_size, T = clip_n_tokens(c), N = n_images * T;
    size_t ND = (size_t)N * D, NI = (size_t)N * I;
    void *g = t->grad_x;
    // x_out = x_mid + ls2 fc2(act(fc1(ln2)))
    copy_act(t, t->d_y, g, ND);
    if (c->layer_scale) ops->scale_columns(ops, t->d_y, w->ls2, N, D);
    activation_forward(t, t->mlp_act, a->mlp_pre, NI);
    zero_act(t, t->d_mlp_act, NI);
    linear_backward(t, w, LIN_FC2, grads, t->d_mlp_act, t->d_y, t->mlp_act, a->lora_h[LIN_FC2], N);
    zero_act(t, t->d_mlp_pre, NI);
    activation_backward(t, t->d_mlp_pre, t->d_mlp_act, a->mlp_pre, NI);
    void *d_ln2 = t->d_att;
    zero_act(t, d_ln2, ND);
    linear_backward(t, w, LIN_FC1, grads, d_ln2, t->d_mlp_pre, a->ln2, a->lora_h[LIN_FC1], N);
    ops->layernorm_backward(ops, g, NULL, NULL, d_ln2, a->x_mid, w->ln2_w, a->mean2, a->rstd2, N, D);
    // x_mid = x_in + ls1 out_proj(attention(q, k, v)), q, k, v = linears(ln1)
    copy_act(t, t->d_y, g, ND);
    if (c->layer_scale) ops->scale_columns(ops, t->d_y, w->ls1, N, D);
    zero_act(t, t->d_att, ND);
    linear_backward(t, w, LIN_OUT, grads, t->d_att, t->d_y, a->att, a->lora_h[LIN_OUT], N);
    void *d_qkv[3] = {t->d_q, t->d_k, t->d_v};
    for (int p = 0; p < 3; p++) zero_act(t, d_qkv[p], ND);
    ops->attention_full_backward(ops, t->d_q, t->d_k, t->d_v, t->d_att, a->att, a->lse, a->q, a->k, a->v, n_images,
                                 T, c->n_heads, D / c->n_heads);
    void *d_ln1 = first ? NULL : t->d_y;
    if (d_ln1) zero_act(t, d_ln1, ND);
    for (int p = 0; p < 3; p++)
        linear_backward(t, w, LIN_Q + p, grads, d_ln1, d_qkv[p], a->ln1, a->lora_h[LIN_Q + p], N);
    if (d_ln1) ops->layernorm_backward(ops, g, NULL, NULL, d_ln1, x_in, w->ln1_w, a->mean1, a->rstd1, N, D);
}

bool clip_tower_backward(ClipTower *t, const void *param_act, float *grads, const void *d_features, int n_images,
                         Error *err) {
    const Ops *ops = t->ops;
    const ClipVisionConfig *c = &t->config;
    if (!t->options.train) return fail(err, "vision tower: the backward needs a tower created for training");
    if (n_images != t->n_images_forward)
        return fail(err, "vision tower: a backward of %d images after a forward of %d", n_images,
                    t->n_images_forward);
    if (t->lora_bound && !param_act)
        return fail(err, "vision tower: adapters are bound, so the backward needs their compute copy");
    t->param_act = param_act;
    int D = c->hidden_size, N = n_images * clip_n_tokens(c);
    zero_act(t, t->grad_x, (size_t)N * D); // rows outside the features get no gradient
    ops->scatter_rows(ops, t->grad_x, t->feature_rows, d_features, n_images * clip_n_features(c), D);
    for (int l = t->n_layers_used - 1; l >= 0; l--) {
        ClipLayerActs *a = layer_acts(t, l);
        if (t->options.activation_checkpointing) layer_forward(t, &t->layers[l], a, t->xs[l], t->xs[l + 1], n_images);
        layer_backward(t, &t->layers[l], a, t->xs[l], grads, n_images, l == 0);
    }
    return ops->check(ops, err);
}
