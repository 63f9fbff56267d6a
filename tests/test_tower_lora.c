// LoRA on OpenVLA's two vision towers (timm's DINOv2-reg4 and SigLIP, tiny) against PEFT and
// torch autograd (scripts/ref_tower_lora.py): the features of the adapted towers and the
// gradient of every lora_A and lora_B the features reach, for loss = sum(features * G), on the
// CPU backend, with all activations kept and with activation checkpointing. The reference is
// float64; the bound is a relative L2 error ||got - want|| / ||want|| < 1e-5 per tensor (fp32
// sums). Also the frozen tower's forward with the same adapters, Hugging Face's layout (CLIP)
// against a central difference, the PEFT names and shapes of the parameter entries, the
// binding's errors and the plan's byte counts.
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "model/model.h"

#define FIXTURES "tests/fixtures/vlm/"
#define REL_L2_TOL 1e-5
enum { IMAGES = 2, RANK = 4 };
static const float LORA_SCALE = 8.0f / RANK; // alpha / r

static SafetensorsFile *open_fixture(const char *name) {
    char path[256];
    snprintf(path, sizeof path, FIXTURES "%s", name);
    if (!path_exists(path)) {
        print_message("missing fixture %s (run scripts/ref_tower_lora.py)\n", path);
        skip();
    }
    Error err;
    SafetensorsFile *file = safetensors_open(path, &err);
    if (!file) fail_msg("%s", err.message);
    return file;
}

// The named tensor as fp32 (malloc'd) of exactly n elements.
static float *fixture_floats(SafetensorsFile *file, const char *name, size_t n) {
    Tensor t;
    Error err;
    if (!safetensors_get(file, name, &t, &err)) fail_msg("%s", err.message);
    assert_int_equal(tensor_numel(&t), n);
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    if (!convert_to_f32(x, t.data, t.dtype, n, &err)) fail_msg("%s", err.message);
    return x;
}

static double rel_l2(const float *got, const float *want, size_t n) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        norm += (double)want[i] * want[i];
    }
    return sqrt(diff / norm);
}

// One of OpenVLA's towers at the fixtures' tiny shape, its module prefix in OpenVLA's model.
typedef struct TowerCase {
    const char *key, *preset, *prefix;
    int mlp_width;
} TowerCase;

static const TowerCase DINOV2 = {"dinov2", "dinov2-vit-l14-reg4", "vision_backbone.featurizer.", 128};
static const TowerCase SIGLIP = {"siglip", "siglip-so400m-14", "vision_backbone.fused_featurizer.", 119};

static ClipVisionConfig tiny_config(const TowerCase *tc) {
    ClipVisionConfig config;
    Error err;
    if (!clip_config_preset(tc->preset, &config, &err)) fail_msg("%s", err.message);
    config.hidden_size = 32, config.intermediate_size = tc->mlp_width, config.n_layers = 3, config.n_heads = 4;
    config.image_size = 16, config.patch_size = 4;
    return config;
}

// The tower's adapters under tc's prefix, their values from the fixture.
typedef struct Adapters {
    ParamTable table;
    float *values;
} Adapters;

// The fixture's key of an entry: "<key>.<what>.<name less the prefix>".
static void fixture_key(char *key, size_t size, const TowerCase *tc, const char *what, const ParamEntry *e) {
    snprintf(key, size, "%s.%s.%s", tc->key, what, e->name + strlen(tc->prefix));
}

static Adapters load_adapters(const TowerCase *tc, const ClipVisionConfig *config, SafetensorsFile *fixture) {
    Adapters a = {0};
    a.table.entries = calloc((size_t)clip_lora_n_params(config), sizeof(ParamEntry));
    assert_non_null(a.table.entries);
    clip_lora_add_params(config, RANK, tc->prefix, &a.table);
    a.table.n_lora = a.table.count;
    assert_int_equal(a.table.count, clip_lora_n_params(config));
    a.values = malloc(a.table.total * sizeof(float));
    assert_non_null(a.values);
    for (int i = 0; i < a.table.count; i++) {
        const ParamEntry *e = &a.table.entries[i];
        char key[PARAM_NAME_MAX + 32];
        fixture_key(key, sizeof key, tc, "lora", e);
        float *x = fixture_floats(fixture, key, e->numel);
        memcpy(a.values + e->offset, x, e->numel * sizeof(float));
        free(x);
    }
    return a;
}

static ClipTower *loaded_tower(const TowerCase *tc, const ClipVisionConfig *config, const ClipTowerOptions *options,
                               const Adapters *a) {
    Error err;
    char weights[128];
    snprintf(weights, sizeof weights, FIXTURES "timm_%s.safetensors", tc->key);
    ClipTower *tower = clip_tower_create_with(ops_cpu(), config, IMAGES, options, &err);
    if (!tower || !clip_load_weights(tower, weights, &err) ||
        !clip_tower_bind_lora(tower, &a->table, tc->prefix, LORA_SCALE, &err))
        fail_msg("%s", err.message);
    return tower;
}

// Features and every adapter gradient against PEFT, with the errors and timings printed.
static void check_tower(const TowerCase *tc, bool checkpointing) {
    SafetensorsFile *fixture = open_fixture("tower_lora.safetensors"), *io = open_fixture("timm_io.safetensors");
    ClipVisionConfig config = tiny_config(tc);
    size_t n_features = (size_t)IMAGES * clip_n_features(&config) * config.hidden_size;
    Adapters a = load_adapters(tc, &config, fixture);
    ClipTowerOptions options = {.lora_r = RANK, .train = true, .activation_checkpointing = checkpointing};
    ClipTower *tower = loaded_tower(tc, &config, &options, &a);
    char key[PARAM_NAME_MAX + 32];
    snprintf(key, sizeof key, "%s.features", tc->key);
    float *want = fixture_floats(fixture, key, n_features);
    snprintf(key, sizeof key, "%s.G", tc->key);
    float *G = fixture_floats(fixture, key, n_features);
    float *pixels = fixture_floats(io, "pixel_values", (size_t)IMAGES * 3 * 16 * 16);
    float *features = malloc(n_features * sizeof(float)), *grads = calloc(a.table.total, sizeof(float));
    assert_non_null(features), assert_non_null(grads);
    poison(features, n_features);
    Error err;
    double t0 = time_seconds();
    if (!clip_tower_forward_lora(tower, a.values, pixels, IMAGES, features, &err)) fail_msg("%s", err.message);
    double t1 = time_seconds();
    if (!clip_tower_backward(tower, a.values, grads, G, IMAGES, &err)) fail_msg("%s", err.message);
    double t2 = time_seconds(), feature_error = rel_l2(features, want, n_features), grad_error = 0;
    for (int i = 0; i < a.table.count; i++) {
        const ParamEntry *e = &a.table.entries[i];
        fixture_key(key, sizeof key, tc, "grad", e);
        float *want_grad = fixture_floats(fixture, key, e->numel);
        double error = rel_l2(grads + e->offset, want_grad, e->numel);
        if (error >= REL_L2_TOL) print_message("%s: relative L2 error %.3g\n", e->name, error);
        grad_error = fmax(grad_error, error);
        free(want_grad);
    }
    print_message("%s%s: features %.3g, %d LoRA gradients at most %.3g (relative L2); forward %.1f ms, backward "
                  "%.1f ms\n", tc->key, checkpointing ? " (checkpointing)" : "", feature_error, a.table.count,
                  grad_error, 1e3 * (t1 - t0), 1e3 * (t2 - t1));
    assert_true(feature_error < REL_L2_TOL);
    assert_true(grad_error < REL_L2_TOL);
    clip_tower_destroy(tower);
    free(a.table.entries), free(a.values), free(want), free(G), free(pixels), free(features), free(grads);
    safetensors_close(fixture), safetensors_close(io);
}

static void test_dinov2_lora_matches_peft(void **state) { check_tower(&DINOV2, false); }
static void test_siglip_lora_matches_peft(void **state) { check_tower(&SIGLIP, false); }
static void test_dinov2_lora_checkpointing(void **state) { check_tower(&DINOV2, true); }
static void test_siglip_lora_checkpointing(void **state) { check_tower(&SIGLIP, true); }

// A frozen tower (no training activations) with the same adapters gives the same features.
static void test_frozen_tower_applies_adapters(void **state) {
    SafetensorsFile *fixture = open_fixture("tower_lora.safetensors"), *io = open_fixture("timm_io.safetensors");
    ClipVisionConfig config = tiny_config(&DINOV2);
    size_t n_features = (size_t)IMAGES * clip_n_features(&config) * config.hidden_size;
    Adapters a = load_adapters(&DINOV2, &config, fixture);
    ClipTowerOptions options = {.lora_r = RANK};
    ClipTower *tower = loaded_tower(&DINOV2, &config, &options, &a);
    float *want = fixture_floats(fixture, "dinov2.features", n_features);
    float *pixels = fixture_floats(io, "pixel_values", (size_t)IMAGES * 3 * 16 * 16);
    float *features = malloc(n_features * sizeof(float));
    assert_non_null(features);
    Error err;
    assert_false(clip_tower_forward(tower, pixels, IMAGES, features, &err)); // adapters bound: their values needed
    if (!clip_tower_forward_lora(tower, a.values, pixels, IMAGES, features, &err)) fail_msg("%s", err.message);
    assert_true(rel_l2(features, want, n_features) < REL_L2_TOL);
    assert_false(clip_tower_backward(tower, a.values, a.values, features, IMAGES, &err)); // not a training tower
    clip_tower_destroy(tower);
    free(a.table.entries), free(a.values), free(want), free(pixels), free(features);
    safetensors_close(fixture), safetensors_close(io);
}

// sum(features * G) of a frozen tower with adapters params, in double.
static double tower_loss(ClipTower *tower, const float *params, const float *pixels, const float *G, float *features,
                         size_t n_features) {
    Error err;
    if (!clip_tower_forward_lora(tower, params, pixels, 1, features, &err)) fail_msg("%s", err.message);
    double loss = 0;
    for (size_t i = 0; i < n_features; i++) loss += (double)features[i] * G[i];
    return loss;
}

// Hugging Face's layout (CLIP "tiny": pre-norm, quick_gelu, q, k, v, out_proj apart), random
// weights and adapters: the training forward's features equal the frozen one's, and the
// gradient along a random direction d of every adapter, grad . d, equals the central
// difference (L(p + eps d) - L(p - eps d)) / 2 eps of the fp32 loss within 1e-3.
static void test_hf_layout_gradient(void **state) {
    ClipVisionConfig config;
    Error err;
    assert_true(clip_config_preset("tiny", &config, &err));
    size_t n_features = (size_t)clip_n_features(&config) * config.hidden_size;
    ParamTable table = {.entries = calloc((size_t)clip_lora_n_params(&config), sizeof(ParamEntry))};
    assert_non_null(table.entries);
    clip_lora_add_params(&config, RANK, "vision_tower.", &table);
    Rng rng;
    rng_seed(&rng, 7);
    float *params = malloc(table.total * sizeof(float)), *direction = malloc(table.total * sizeof(float));
    float *pixels = malloc(3 * 16 * 16 * sizeof(float)), *G = malloc(n_features * sizeof(float));
    float *features = malloc(n_features * sizeof(float)), *trained = malloc(n_features * sizeof(float));
    float *grads = calloc(table.total, sizeof(float)), *shifted = malloc(table.total * sizeof(float));
    assert_true(params && direction && pixels && G && features && trained && grads && shifted);
    fill_uniform(params, table.total, -0.1f, 0.1f, &rng);
    fill_uniform(direction, table.total, -1.0f, 1.0f, &rng);
    fill_uniform(pixels, 3 * 16 * 16, -1.5f, 1.5f, &rng);
    fill_uniform(G, n_features, -1.0f, 1.0f, &rng);
    ClipTowerOptions frozen_options = {.lora_r = RANK}, train_options = {.lora_r = RANK, .train = true};
    ClipTower *frozen = clip_tower_create_with(ops_cpu(), &config, 1, &frozen_options, &err);
    ClipTower *training = clip_tower_create_with(ops_cpu(), &config, 1, &train_options, &err);
    assert_true(frozen && training);
    clip_tower_init_random(frozen, 3), clip_tower_init_random(training, 3);
    assert_true(clip_tower_bind_lora(frozen, &table, "vision_tower.", LORA_SCALE, &err));
    assert_true(clip_tower_bind_lora(training, &table, "vision_tower.", LORA_SCALE, &err));
    double loss = tower_loss(frozen, params, pixels, G, features, n_features);
    if (!clip_tower_forward_lora(training, params, pixels, 1, trained, &err) ||
        !clip_tower_backward(training, params, grads, G, 1, &err))
        fail_msg("%s", err.message);
    assert_true(rel_l2(trained, features, n_features) < 1e-6);
    double analytic = 0, eps = 1e-3;
    for (size_t i = 0; i < table.total; i++) analytic += (double)grads[i] * direction[i];
    for (size_t i = 0; i < table.total; i++) shifted[i] = params[i] + (float)eps * direction[i];
    double plus = tower_loss(frozen, shifted, pixels, G, features, n_features);
    for (size_t i = 0; i < table.total; i++) shifted[i] = params[i] - (float)eps * direction[i];
    double minus = tower_loss(frozen, shifted, pixels, G, features, n_features);
    double numeric = (plus - minus) / (2 * eps);
    print_message("tiny CLIP: loss %.4g, grad . d %.6g, central difference %.6g\n", loss, analytic, numeric);
    assert_true(fabs(analytic - numeric) < 1e-3 * fabs(numeric));
    clip_tower_destroy(frozen), clip_tower_destroy(training);
    free(table.entries), free(params), free(direction), free(pixels), free(G), free(features), free(trained);
    free(grads), free(shifted);
}

// PEFT's names and shapes: timm's fused qkv is one module; Hugging Face's layout has q, k, v, out_proj.
static void test_lora_names(void **state) {
    ClipVisionConfig timm = tiny_config(&DINOV2), hf;
    Error err;
    assert_true(clip_config_preset("tiny", &hf, &err));
    assert_int_equal(clip_lora_n_params(&timm), 2 * 4 * 2);
    assert_int_equal(clip_lora_n_params(&hf), 2 * 6 * 2);
    ParamEntry entries[2 * 6 * 2];
    ParamTable table = {.entries = entries};
    clip_lora_add_params(&timm, RANK, "vision_backbone.featurizer.", &table);
    assert_string_equal(entries[0].name, "vision_backbone.featurizer.blocks.0.attn.qkv.lora_A.weight");
    assert_int_equal(entries[0].shape[0], RANK), assert_int_equal(entries[0].shape[1], 32);
    assert_string_equal(entries[1].name, "vision_backbone.featurizer.blocks.0.attn.qkv.lora_B.weight");
    assert_int_equal(entries[1].shape[0], 96), assert_int_equal(entries[1].shape[1], RANK);
    assert_string_equal(entries[15].name, "vision_backbone.featurizer.blocks.1.mlp.fc2.lora_B.weight");
    assert_int_equal(entries[1].offset, entries[0].numel);
    table = (ParamTable){.entries = entries};
    clip_lora_add_params(&hf, RANK, "vision_tower.", &table);
    assert_string_equal(entries[4].name, "vision_tower.vision_model.encoder.layers.0.self_attn.v_proj.lora_A.weight");
    assert_string_equal(entries[23].name, "vision_tower.vision_model.encoder.layers.1.mlp.fc2.lora_B.weight");
    assert_int_equal(entries[22].shape[1], 64); // fc2's A: (r, intermediate)
    assert_int_equal(table.total, 2 * (4 * 2 * RANK * 32 + 2 * (RANK * 32 + RANK * 64))); // two layers
}

// Binding fails on a missing entry, a wrong rank, and a tower made without adapters.
static void test_bind_errors(void **state) {
    ClipVisionConfig config = tiny_config(&DINOV2);
    ParamEntry entries[2 * 4 * 2];
    ParamTable table = {.entries = entries};
    clip_lora_add_params(&config, RANK, "a.", &table);
    Error err;
    ClipTowerOptions options = {.lora_r = RANK};
    ClipTower *tower = clip_tower_create_with(ops_cpu(), &config, 1, &options, &err);
    assert_non_null(tower);
    assert_false(clip_tower_bind_lora(tower, &table, "b.", LORA_SCALE, &err));
    assert_non_null(strstr(err.message, "b.blocks.0.attn.qkv.lora_A.weight"));
    clip_tower_destroy(tower);
    options.lora_r = RANK + 1;
    tower = clip_tower_create_with(ops_cpu(), &config, 1, &options, &err);
    assert_false(clip_tower_bind_lora(tower, &table, "a.", LORA_SCALE, &err));
    clip_tower_destroy(tower);
    tower = clip_tower_create(ops_cpu(), &config, 1, &err);
    assert_false(clip_tower_bind_lora(tower, &table, "a.", LORA_SCALE, &err));
    clip_tower_destroy(tower);
    options = (ClipTowerOptions){.activation_checkpointing = true};
    assert_null(clip_tower_create_with(ops_cpu(), &config, 1, &options, &err)); // checkpointing without training
}

// The training activations are counted only when asked for: a frozen tower costs what it did.
static void test_bytes(void **state) {
    ClipVisionConfig config = tiny_config(&DINOV2);
    ClipTowerOptions train = {.lora_r = RANK, .train = true}, checkpointing = train;
    checkpointing.activation_checkpointing = true;
    size_t frozen, trained, checkpointed;
    Error err;
    assert_true(clip_tower_bytes(DTYPE_F32, &config, IMAGES, NULL, &frozen, &err));
    assert_true(clip_tower_bytes(DTYPE_F32, &config, IMAGES, &train, &trained, &err));
    assert_true(clip_tower_bytes(DTYPE_F32, &config, IMAGES, &checkpointing, &checkpointed, &err));
    assert_true(frozen < checkpointed && checkpointed < trained);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dinov2_lora_matches_peft),
        cmocka_unit_test(test_siglip_lora_matches_peft),
        cmocka_unit_test(test_dinov2_lora_checkpointing),
        cmocka_unit_test(test_siglip_lora_checkpointing),
        cmocka_unit_test(test_frozen_tower_applies_adapters),
        cmocka_unit_test(test_hf_layout_gradient),
        cmocka_unit_test(test_lora_names),
        cmocka_unit_test(test_bind_errors),
        cmocka_unit_test(test_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
