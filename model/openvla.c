// model: OpenVLA's fused featurizer (PrismaticVisionBackbone with use_fused_vision_backbone):
//   pixels (n, 6, S, S) = [DINOv2's normalisation | SigLIP's] of each image
//   features (n P, D0 + D1) = [featurizer(pixels[:, 0:3]) | fused_featurizer(pixels[:, 3:6])]
// each tower's features from its second-to-last block without prefix tokens (the presets' choice).
// Trained (lora.target_towers): each tower's adapters, bound from the model's ParamTable under its
// PEFT prefix, and the backward splitting dL/d(features) (n P, D0 + D1) into the towers' columns.
#include <stdlib.h>
#include <string.h>

#include "model.h"

struct FusedFeaturizer {
    ClipTower *towers[2];   // featurizer (DINOv2), fused_featurizer (SigLIP)
    void *features[2];      // (max_images P, Dk) backend memory
    float *half;            // (max_images, 3, S, S) host: one tower's channels
    int max_images;
};

const char *const OPENVLA_TOWER_PREFIXES[2] = {"vision_backbone.featurizer.", "vision_backbone.fused_featurizer."};

int openvla_tower_lora_n_params(const ClipVisionConfig configs[2]) {
    return clip_lora_n_params(&configs[0]) + clip_lora_n_params(&configs[1]);
}

void openvla_tower_lora_add_params(const ClipVisionConfig configs[2], int r, ParamTable *table) {
    for (int k = 0; k < 2; k++) clip_lora_add_params(&configs[k], r, OPENVLA_TOWER_PREFIXES[k], table);
}

void openvla_tower_lora_range(const ParamTable *table, size_t *begin, size_t *end) {
    *begin = *end = 0;
    if (table->n_tower_lora < 1) return;
    const ParamEntry *first = &table->entries[table->n_lora - table->n_tower_lora];
    const ParamEntry *last = &table->entries[table->n_lora - 1];
    *begin = first->offset;
    *end = last->offset + last->numel;
}

FusedFeaturizer *fused_featurizer_create(const Ops *ops, const ClipVisionConfig configs[2], int max_images,
                                         Error *err) {
    return fused_featurizer_create_with(ops, configs, max_images, NULL, err);
}

FusedFeaturizer *fused_featurizer_create_with(const Ops *ops, const ClipVisionConfig configs[2], int max_images,
                                              const ClipTowerOptions *options, Error *err) {
    const ClipVisionConfig *a = &configs[0], *b = &configs[1];
    if (a->channels != 3 || b->channels != 3 || a->image_size != b->image_size)
        return fail(err, "fused towers take 3 channels each at one size (have %d at %d and %d at %d)", a->channels,
                    a->image_size, b->channels, b->image_size), NULL;
    if (clip_n_features(a) != clip_n_features(b))
        return fail(err, "fused towers give %d and %d features per image; they must agree", clip_n_features(a),
                    clip_n_features(b)), NULL;
    FusedFeaturizer *f = checked_calloc(1, sizeof *f, "fused featurizer", err);
    if (!f) return NULL;
    f->max_images = max_images;
    size_t pixels = (size_t)max_images * 3 * a->image_size * a->image_size;
    f->half = checked_malloc(pixels * sizeof(float), "one tower's pixels", err);
    bool ok = f->half != NULL;
    for (int k = 0; ok && k < 2; k++) {
        const ClipVisionConfig *c = &configs[k];
        size_t bytes = (size_t)max_images * clip_n_features(c) * c->hidden_size * dtype_size(ops->act_dtype);
        ok = (f->towers[k] = clip_tower_create_with(ops, c, max_images, options, err)) &&
             (f->features[k] = ops->alloc(ops, bytes, err));
    }
    if (ok) return f;
    fused_featurizer_destroy(f);
    return NULL;
}

void fused_featurizer_destroy(FusedFeaturizer *f) {
    if (!f) return;
    for (int k = 0; k < 2; k++) {
        if (f->towers[k]) clip_tower_ops(f->towers[k])->free(clip_tower_ops(f->towers[k]), f->features[k]);
        clip_tower_destroy(f->towers[k]);
    }
    free(f->half);
    free(f);
}

ClipTower *fused_featurizer_tower(FusedFeaturizer *f, int which) { return f->towers[which]; }

int fused_featurizer_width(const FusedFeaturizer *f) {
    return clip_tower_config(f->towers[0])->hidden_size + clip_tower_config(f->towers[1])->hidden_size;
}

int fused_featurizer_n_features(const FusedFeaturizer *f) { return clip_n_features(clip_tower_config(f->towers[0])); }

bool fused_featurizer_forward(FusedFeaturizer *f, const float *pixels, int n_images, void *features, Error *err) {
    return fused_featurizer_forward_lora(f, NULL, pixels, n_images, features, err);
}

bool fused_featurizer_bind_lora(FusedFeaturizer *f, const ParamTable *table, float scale, Error *err) {
    for (int k = 0; k < 2; k++) {
        if (!clip_tower_bind_lora(f->towers[k], table, OPENVLA_TOWER_PREFIXES[k], scale, err))
            return fail_context(err, "%s: ", OPENVLA_TOWER_PREFIXES[k]);
    }
    return true;
}

bool fused_featurizer_forward_lora(FusedFeaturizer *f, const void *param_act, const float *pixels, int n_images,
                                   void *features, Error *err) {
    if (n_images < 0 || n_images > f->max_images)
        return fail(err, "fused featurizer: %d images, sized for %d", n_images, f->max_images);
    const Ops *ops = clip_tower_ops(f->towers[0]);
    int S = clip_tower_config(f->towers[0])->image_size, rows = n_images * fused_featurizer_n_features(f);
    int width = fused_featurizer_width(f), col0 = 0;
    size_t plane = (size_t)3 * S * S;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < n_images; i++)
            memcpy(f->half + i * plane, pixels + (2 * i + k) * plane, plane * sizeof(float));
        if (!clip_tower_forward_lora(f->towers[k], param_act, f->half, n_images, f->features[k], err))
            return fail_context(err, "%s: ", k ? "fused_featurizer" : "featurizer");
        int D = clip_tower_config(f->towers[k])->hidden_size;
        ops->copy_columns(ops, features, width, col0, f->features[k], D, 0, D, rows);
        col0 += D;
    }
    return true;
}

// d_features (n P, D0 + D1): each tower's columns into its features buffer (no longer read once the
// forward copied it out), then that tower's backward.
bool fused_featurizer_backward(FusedFeaturizer *f, const void *param_act, float *grads, const void *d_features,
                               int n_images, Error *err) {
    const Ops *ops = clip_tower_ops(f->towers[0]);
    int rows = n_images * fused_featurizer_n_features(f), width = fused_featurizer_width(f), col0 = 0;
    for (int k = 0; k < 2; k++) {
        int D = clip_tower_config(f->towers[k])->hidden_size;
        ops->copy_columns(ops, f->features[k], D, 0, d_features, width, col0, D, rows);
        if (!clip_tower_backward(f->towers[k], param_act, grads, f->features[k], n_images, err))
            return fail_context(err, "%s: ", k ? "fused_featurizer" : "featurizer");
        col0 += D;
    }
    return true;
}
