// Vision-language model: the CLIP tower and the whole LLaVA forward against
// transformers (scripts/ref_clip.py), OpenVLA's DINOv2 and SigLIP towers in
// timm's layout against timm (scripts/ref_timm_towers.py), projector loading in both namings and
// saving in the PEFT adapter file, the projector's gradients through the whole
// model against finite differences, and the splice's errors.
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "model/model.h"
#include "trainer/trainer.h"
#include "vision/vision.h"

#define FIXTURES "tests/fixtures/vlm/"
enum { IMAGE_TOKEN = 63, N_PATCHES = 16, VISION_HIDDEN = 32 };

static SafetensorsFile *open_fixture(const char *name) {
    char path[256];
    snprintf(path, sizeof path, FIXTURES "%s", name);
    if (!path_exists(path)) {
        print_message("missing fixture %s (run scripts/ref_clip.py)\n", path);
        skip();
    }
    Error err;
    SafetensorsFile *file = safetensors_open(path, &err);
    if (!file) fail_msg("%s", err.message);
    return file;
}

// The named tensor of a fixture as fp32 (malloc'd); *numel receives its size.
static float *fixture_floats(SafetensorsFile *file, const char *name, size_t *numel) {
    Tensor t;
    Error err;
    if (!safetensors_get(file, name, &t, &err)) fail_msg("%s", err.message);
    size_t n = (size_t)tensor_numel(&t);
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    if (!convert_to_f32(x, t.data, t.dtype, n, &err)) fail_msg("%s", err.message);
    if (numel) *numel = n;
    return x;
}

static double *to_double(const float *x, size_t n) {
    double *d = malloc(n * sizeof(double));
    assert_non_null(d);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static ClipTower *tiny_tower_unloaded(int max_images) {
    ClipVisionConfig config;
    Error err;
    assert_true(clip_config_preset("tiny", &config, &err));
    ClipTower *tower = clip_tower_create(ops_cpu(), &config, max_images, &err);
    if (!tower) fail_msg("%s", err.message);
    return tower;
}

static ClipTower *tiny_tower(int max_images) {
    ClipTower *tower = tiny_tower_unloaded(max_images);
    Error err;
    if (!clip_load_weights(tower, FIXTURES "clip.safetensors", &err)) fail_msg("%s", err.message);
    return tower;
}

// ----------------------------------------------------------------------------
// CLIP tower vs CLIPVisionModel's hidden_states[-2][:, 1:]

static void test_clip_features_match_transformers(void **state) {
    SafetensorsFile *io = open_fixture("clip_io.safetensors");
    size_t n_pixels, n_features;
    float *pixels = fixture_floats(io, "pixel_values", &n_pixels);
    float *want = fixture_floats(io, "features", &n_features);
    assert_int_equal(n_features, 2 * N_PATCHES * VISION_HIDDEN);
    ClipTower *tower = tiny_tower(2);
    float *got = malloc(n_features * sizeof(float));
    poison(got, n_features);
    Error err;
    if (!clip_tower_forward(tower, pixels, 2, got, &err)) fail_msg("%s", err.message);
    double *want_d = to_double(want, n_features);
    double error = max_rel_error(got, want_d, n_features, 1e-2);
    print_message("CLIP features vs transformers: max relative error %.3g\n", error);
    assert_true(error < 1e-4);
    free(pixels), free(want), free(got), free(want_d);
    clip_tower_destroy(tower);
    safetensors_close(io);
}

// ----------------------------------------------------------------------------
// OpenVLA's towers in timm's layout vs timm's get_intermediate_layers (scripts/ref_timm_towers.py)

// The preset shrunk to the fixtures' tiny shape (its flags kept), its weights
// (from path, under prefix when not NULL), its features of the two images.
static void check_timm_tower(const char *preset, const char *path, const char *prefix, const char *features_key,
                             int mlp_width) {
    SafetensorsFile *io = open_fixture("timm_io.safetensors");
    size_t n_features;
    float *pixels = fixture_floats(io, "pixel_values", NULL), *want = fixture_floats(io, features_key, &n_features);
    assert_int_equal(n_features, 2 * N_PATCHES * VISION_HIDDEN);
    ClipVisionConfig config;
    Error err;
    assert_true(clip_config_preset(preset, &config, &err));
    config.hidden_size = VISION_HIDDEN, config.intermediate_size = mlp_width, config.n_layers = 3, config.n_heads = 4;
    config.image_size = 16, config.patch_size = 4;
    assert_int_equal(clip_n_features(&config), N_PATCHES);
    ClipTower *tower = clip_tower_create(ops_cpu(), &config, 2, &err);
    bool loaded = tower && (prefix ? clip_load_weights_under(tower, path, prefix, &err) : clip_load_weights(tower, path, &err));
    if (!loaded) fail_msg("%s", err.message);
    float *got = malloc(n_features * sizeof(float));
    poison(got, n_features);
    if (!clip_tower_forward(tower, pixels, 2, got, &err)) fail_msg("%s", err.message);
    double *want_d = to_double(want, n_features);
    double error = max_rel_error(got, want_d, n_features, 1e-2);
    print_message("%s features (under '%s') vs timm: max relative error %.3g\n", preset, prefix ? prefix : "", error);
    assert_true(error < 1e-4);
    free(pixels), free(want), free(got), free(want_d);
    clip_tower_destroy(tower);
    safetensors_close(io);
}

// class token, 4 registers, layer scale, positions of the patches alone, exact GELU
static void test_dinov2_features_match_timm(void **state) {
    check_timm_tower("dinov2-vit-l14-reg4", FIXTURES "timm_dinov2.safetensors", NULL, "dinov2_features", 128);
}

// no class token, exact GELU, the attention-pool head and final norm unused
static void test_timm_siglip_features_match_timm(void **state) {
    check_timm_tower("siglip-so400m-14", FIXTURES "timm_siglip.safetensors", NULL, "siglip_features", 119);
}

// Appends file's tensors to entries under prefix, LayerScale's ".gamma" renamed ".scale_factor".
static int add_renamed(SafetensorsFile *file, const char *prefix, SafetensorsEntry *entries, char (*names)[160], int n) {
    for (int i = 0; i < safetensors_count(file); i++, n++) {
        const char *name = safetensors_name(file, i);
        size_t len = strlen(name);
        bool gamma = len > 6 && strcmp(name + len - 6, ".gamma") == 0;
        snprintf(names[n], sizeof names[n], "%s%.*s%s", prefix, (int)(gamma ? len - 6 : len), name, gamma ? ".scale_factor" : "");
        entries[n].name = names[n];
        Error err;
        if (!safetensors_get(file, name, &entries[n].tensor, &err)) fail_msg("%s", err.message);
    }
    return n;
}

// Both towers in one file as OpenVLA's checkpoints hold them: under
// vision_backbone.featurizer. (DINOv2) and .fused_featurizer. (SigLIP), the
// LayerScale gammas named scale_factor.
static void test_towers_under_openvla_names(void **state) {
    SafetensorsFile *dinov2 = open_fixture("timm_dinov2.safetensors"), *siglip = open_fixture("timm_siglip.safetensors");
    int count = safetensors_count(dinov2) + safetensors_count(siglip);
    SafetensorsEntry *entries = calloc((size_t)count, sizeof *entries);
    char(*names)[160] = calloc((size_t)count, sizeof *names);
    assert_non_null(entries), assert_non_null(names);
    int n = add_renamed(dinov2, "vision_backbone.featurizer.", entries, names, 0);
    assert_int_equal(add_renamed(siglip, "vision_backbone.fused_featurizer.", entries, names, n), count);
    char path[512];
    snprintf(path, sizeof path, "%s/openvla_towers.safetensors", make_temp_dir("openvla_towers"));
    Error err;
    if (!safetensors_write(path, entries, count, NULL, 0, &err)) fail_msg("%s", err.message);
    check_timm_tower("dinov2-vit-l14-reg4", path, "vision_backbone.featurizer.", "dinov2_features", 128);
    check_timm_tower("siglip-so400m-14", path, "vision_backbone.fused_featurizer.", "siglip_features", 119);
    free(entries), free(names);
    safetensors_close(dinov2), safetensors_close(siglip);
}

static void test_clip_load_errors(void **state) {
    ClipVisionConfig config;
    Error err;
    assert_true(clip_config_preset("tiny", &config, &err));
    config.hidden_size = 48; // 12 per head, but the file holds 32-wide weights
    if (!path_exists(FIXTURES "clip.safetensors")) skip();
    ClipTower *tower = clip_tower_create(ops_cpu(), &config, 1, &err);
    assert_non_null(tower);
    assert_false(clip_load_weights(tower, FIXTURES "clip.safetensors", &err));
    assert_non_null(strstr(err.message, "vision_model.embeddings.patch_embedding.weight has shape [32, 3, 4, 4]"));
    clip_tower_destroy(tower);
    assert_false(clip_load_weights(tower = tiny_tower_unloaded(1), FIXTURES "projector.safetensors", &err));
    assert_non_null(strstr(err.message, "no vision tower"));
    clip_tower_destroy(tower);
    config.feature_layer = -5;
    assert_null(clip_tower_create(ops_cpu(), &config, 1, &err));
    assert_non_null(strstr(err.message, "vision_feature_layer -5"));
}

// ----------------------------------------------------------------------------
// the whole vision-language model vs LlavaForConditionalGeneration

static Model *fixture_llava(void) {
    ModelOptions options = {.ops = ops_cpu(), .max_batch = 1, .max_seq_len = 24, .seed = 3,
                            .projector_in = VISION_HIDDEN, .image_token_id = IMAGE_TOKEN, .max_image_rows = N_PATCHES};
    options.lora = (LoraConfig){.r = 4, .alpha = 8, .targets = {[LORA_Q] = true, [LORA_V] = true}};
    Error err;
    if (!hf_read_llama_config(FIXTURES "lm", &options.config, &err)) fail_msg("%s", err.message);
    Model *model = model_create(&options, &err);
    if (!model || !hf_load_weights(model, FIXTURES "lm", &err)) fail_msg("%s", err.message);
    return model;
}

static float *projector_params(Model *model) {
    const ParamTable *table = model_params(model);
    const ParamEntry *first = &table->entries[table->n_lora];
    size_t n = table->total - first->offset;
    float *copy = malloc(n * sizeof(float));
    assert_non_null(copy);
    memcpy(copy, model_param_data(model) + first->offset, n * sizeof(float));
    return copy;
}

// The bound is thin by construction, not from a bug: against the same model
// run by torch in float64, these logits are off by at most 6.8e-7 (torch's own
// fp32 logits by 8.3e-7), and the two fp32 errors add up to 1.07e-6 at a logit
// of 0.0102, just above max_rel_error's 1e-2 floor: 7.7e-5 "relative". GELU
// (erf), LayerNorm eps 1e-5, RMSNorm eps 1e-6 and the feature layer match the
// reference; only fp32 summation order differs.
static void test_llava_logits_match_transformers(void **state) {
    SafetensorsFile *io = open_fixture("llava_io.safetensors");
    size_t n_ids, n_logits;
    Tensor ids;
    Error err;
    if (!safetensors_get(io, "input_ids", &ids, &err)) fail_msg("%s", err.message);
    assert_int_equal(ids.dtype, DTYPE_I32);
    n_ids = (size_t)tensor_numel(&ids);
    float *pixels = fixture_floats(io, "pixel_values", NULL);
    float *want = fixture_floats(io, "logits", &n_logits);
    Model *model = fixture_llava();
    if (!projector_load(model, FIXTURES "projector.safetensors", &err)) fail_msg("%s", err.message);
    ClipTower *tower = tiny_tower(1);
    float *features = malloc(N_PATCHES * VISION_HIDDEN * sizeof(float));
    if (!clip_tower_forward(tower, pixels, 1, features, &err)) fail_msg("%s", err.message);
    int32_t tokens[24];
    assert_int_equal(n_ids, 24);
    memcpy(tokens, ids.data, sizeof tokens);
    Batch batch = {.B = 1, .T = 24, .tokens = tokens, .n_image_rows = N_PATCHES, .image_features = features};
    float *got = malloc(n_logits * sizeof(float));
    poison(got, n_logits);
    if (!model_logits(model, &batch, got, &err)) fail_msg("%s", err.message);
    double *want_d = to_double(want, n_logits);
    double error = max_rel_error(got, want_d, n_logits, 1e-2);
    print_message("LLaVA logits vs transformers: max relative error %.3g\n", error);
    assert_true(error < 1e-4);
    free(pixels), free(want), free(features), free(got), free(want_d);
    clip_tower_destroy(tower);
    model_destroy(model);
    safetensors_close(io);
}

// LLaVA pretraining's model.mm_projector.0/2 names load the same tensors.
static void test_projector_llava_names(void **state) {
    if (!path_exists(FIXTURES "projector_llava.safetensors")) skip();
    Model *a = fixture_llava(), *b = fixture_llava();
    Error err;
    assert_true(projector_load(a, FIXTURES "projector.safetensors", &err));
    assert_true(projector_load(b, FIXTURES "projector_llava.safetensors", &err));
    const ParamTable *table = model_params(a);
    assert_int_equal(table->count - table->n_lora, 4);
    assert_string_equal(table->entries[table->n_lora].name, "multi_modal_projector.linear_1.weight");
    float *pa = projector_params(a), *pb = projector_params(b);
    size_t n = table->total - table->entries[table->n_lora].offset;
    assert_memory_equal(pa, pb, n * sizeof(float));
    assert_false(projector_load(a, FIXTURES "clip.safetensors", &err));
    assert_non_null(strstr(err.message, "no projector tensor multi_modal_projector.linear_1.weight"));
    free(pa), free(pb);
    model_destroy(a), model_destroy(b);
}

// adapter_save writes the projector into the PEFT file as PEFT saves
// modules_to_save; adapter_load reads it back, and still reads an older
// folder's projector.safetensors beside the adapter.
static void test_projector_saved_in_adapter(void **state) {
    if (!path_exists(FIXTURES "lm/model.safetensors")) skip();
    Model *a = fixture_llava(), *b = fixture_llava(), *c = fixture_llava();
    Rng rng;
    rng_seed(&rng, 8);
    fill_uniform(model_param_data(a), model_params(a)->total, -0.3f, 0.3f, &rng);
    model_sync_params(a);
    const char *dir = make_temp_dir("vlm_adapter");
    char adapter_dir[512], config_path[600], weights_path[600], projector_path[600];
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", dir);
    snprintf(config_path, sizeof config_path, "%s/adapter_config.json", adapter_dir);
    snprintf(weights_path, sizeof weights_path, "%s/adapter_model.safetensors", adapter_dir);
    snprintf(projector_path, sizeof projector_path, "%s/" PROJECTOR_FILE, adapter_dir);
    Error err;
    AdapterInfo info = {.base_model_name_or_path = "lm"};
    if (!adapter_save(a, &info, adapter_dir, &err) || !adapter_load(b, adapter_dir, &err)) fail_msg("%s", err.message);
    assert_memory_equal(model_param_data(a), model_param_data(b), model_params(a)->total * sizeof(float));
    assert_false(path_exists(projector_path));
    SafetensorsFile *peft = safetensors_open(weights_path, &err);
    assert_non_null(peft);
    assert_int_equal(safetensors_count(peft), model_params(a)->count); // LoRA and projector
    Tensor bias;
    assert_true(safetensors_get(peft, "base_model.model.multi_modal_projector.linear_2.bias", &bias, &err));
    assert_int_equal(bias.ndim, 1);
    assert_int_equal(bias.shape[0], 32);
    safetensors_close(peft);
    char *config_text;
    size_t size;
    assert_true(read_file(config_path, &config_text, &size, &err));
    const char *modules = strstr(config_text, "\"modules_to_save\": [");
    assert_non_null(modules);
    assert_non_null(strstr(modules, "\"multi_modal_projector\""));
    free(config_text);

    char command[1200];
    snprintf(command, sizeof command, "cp " FIXTURES "projector.safetensors %s", projector_path);
    assert_int_equal(run_command(command), 0);
    if (!adapter_load(b, adapter_dir, &err) || !projector_load(c, FIXTURES "projector.safetensors", &err))
        fail_msg("%s", err.message);
    float *pb = projector_params(b), *pc = projector_params(c);
    const ParamTable *table = model_params(b);
    assert_memory_equal(pb, pc, (table->total - table->entries[table->n_lora].offset) * sizeof(float));
    free(pb), free(pc);
    model_destroy(a), model_destroy(b), model_destroy(c);
}

// ----------------------------------------------------------------------------
// the projector's gradients through the whole model

enum { BATCH = 2, SEQ = 9, FEATURE_WIDTH = 8, TINY_IMAGE_TOKEN = 5 };

static Model *tiny_vlm(void) {
    ModelOptions options = {.ops = ops_cpu(), .max_batch = BATCH, .max_seq_len = SEQ, .seed = 11,
                            .projector_in = FEATURE_WIDTH, .image_token_id = TINY_IMAGE_TOKEN, .max_image_rows = 8,
                            .image_feature_grads = true};
    Error err;
    assert_true(llama_config_preset("tiny", &options.config, &err));
    options.lora = (LoraConfig){.r = 4, .alpha = 8, .targets = {[LORA_Q] = true, [LORA_V] = true, [LORA_DOWN] = true}};
    Model *model = model_create(&options, &err);
    if (!model) fail_msg("%s", err.message);
    if (!model_init_random_base(model, 21, &err)) fail_msg("%s", err.message);
    return model;
}

// Three image tokens per sequence, at different places; labels on the text.
static void vlm_batch(int32_t *tokens, int32_t *targets, float *features, int *n_rows) {
    Rng rng;
    rng_seed(&rng, 4);
    *n_rows = 0;
    for (int i = 0; i < BATCH * SEQ; i++) {
        bool image = i % SEQ >= 2 + i / SEQ && i % SEQ < 5 + i / SEQ;
        tokens[i] = image ? TINY_IMAGE_TOKEN : 10 + (int32_t)rng_below(&rng, 200);
        targets[i] = image ? -100 : 10 + (int32_t)rng_below(&rng, 200);
        *n_rows += image;
    }
    fill_uniform(features, (size_t)*n_rows * FEATURE_WIDTH, -1.0f, 1.0f, &rng);
}

static double loss_of(Model *model, const Batch *batch) {
    StepOptions options = {.grad_scale = 0.1f, .train = true};
    double loss;
    Error err;
    model_zero_grads(model);
    if (!model_step(model, batch, &options, &err) || !model_loss_sum(model, &loss, &err))
        fail_msg("model_step: %s", err.message);
    return loss * 0.1;
}

static void test_projector_gradients_finite_differences(void **state) {
    Model *model = tiny_vlm();
    Rng rng;
    rng_seed(&rng, 5);
    const ParamTable *table = model_params(model);
    fill_uniform(model_param_data(model), table->total, -0.3f, 0.3f, &rng);
    model_sync_params(model);
    int32_t tokens[BATCH * SEQ], targets[BATCH * SEQ];
    float features[8 * FEATURE_WIDTH];
    int n_rows;
    vlm_batch(tokens, targets, features, &n_rows);
    assert_int_equal(n_rows, 6);
    Batch batch = {.B = BATCH, .T = SEQ, .tokens = tokens, .targets = targets, .n_image_rows = n_rows,
                   .image_features = features};
    loss_of(model, &batch);
    size_t n = table->total;
    float *grads = malloc(n * sizeof(float));
    memcpy(grads, model_grad_data(model), n * sizeof(float));
    float *params = model_param_data(model);
    int checked[4] = {0};
    double worst = 0;
    for (int e = table->n_lora; e < table->count; e++) {
        const ParamEntry *entry = &table->entries[e];
        for (size_t j = 0; j < entry->numel; j += 3) {
            size_t i = entry->offset + j;
            if (fabsf(grads[i]) < 1e-3f) continue;
            float saved = params[i], eps = 3e-3f;
            params[i] = saved + eps;
            model_sync_params(model);
            double plus = loss_of(model, &batch);
            params[i] = saved - eps;
            model_sync_params(model);
            double minus = loss_of(model, &batch);
            params[i] = saved;
            model_sync_params(model);
            double numeric = (plus - minus) / (2.0 * eps);
            worst = fmax(worst, fabs(numeric - grads[i]) / (1e-2 * fabs(numeric) + 3e-4));
            checked[e - table->n_lora]++;
        }
    }
    print_message("projector gradients checked %d/%d/%d/%d, worst |fd - g| / (1e-2 |fd| + 3e-4) = %.3f\n",
                  checked[0], checked[1], checked[2], checked[3], worst);
    for (int k = 0; k < 4; k++) assert_true(checked[k] >= 5);
    assert_true(worst < 1.0);
    // dL/d(features), what a trainable tower's backward starts from (ModelOptions.image_feature_grads)
    loss_of(model, &batch);
    float d_features[8 * FEATURE_WIDTH];
    memcpy(d_features, model_image_feature_grads(model), (size_t)n_rows * FEATURE_WIDTH * sizeof(float));
    double worst_feature = 0;
    int large = 0;
    for (int i = 0; i < n_rows * FEATURE_WIDTH; i++) {
        large += fabsf(d_features[i]) > 1e-3f;
        float saved = features[i], eps = 3e-3f;
        features[i] = saved + eps;
        double plus = loss_of(model, &batch);
        features[i] = saved - eps;
        double minus = loss_of(model, &batch);
        features[i] = saved;
        double numeric = (plus - minus) / (2.0 * eps);
        worst_feature = fmax(worst_feature, fabs(numeric - d_features[i]) / (1e-2 * fabs(numeric) + 3e-4));
    }
    print_message("feature gradients, worst |fd - g| / (1e-2 |fd| + 3e-4) = %.3f\n", worst_feature);
    assert_true(large > n_rows * FEATURE_WIDTH / 2);
    assert_true(worst_feature < 1.0);
    free(grads);
    model_destroy(model);
}

static void test_splice_errors(void **state) {
    Model *model = tiny_vlm();
    int32_t tokens[BATCH * SEQ], targets[BATCH * SEQ];
    float features[8 * FEATURE_WIDTH];
    int n_rows;
    vlm_batch(tokens, targets, features, &n_rows);
    Batch batch = {.B = BATCH, .T = SEQ, .tokens = tokens, .targets = targets, .n_image_rows = n_rows - 1,
                   .image_features = features};
    Error err;
    StepOptions options = {.grad_scale = 1.0f, .train = true};
    assert_false(model_step(model, &batch, &options, &err));
    assert_non_null(strstr(err.message, "6 image tokens (id 5) but 5 image feature rows"));
    model_destroy(model);

    ModelOptions text_only = {.ops = ops_cpu(), .max_batch = BATCH, .max_seq_len = SEQ, .seed = 1};
    assert_true(llama_config_preset("tiny", &text_only.config, &err));
    text_only.lora = (LoraConfig){.r = 2, .alpha = 2, .targets = {[LORA_Q] = true}};
    model = model_create(&text_only, &err);
    batch.n_image_rows = n_rows;
    assert_false(model_step(model, &batch, &options, &err));
    assert_non_null(strstr(err.message, "has no projector"));
    model_destroy(model);
}

// ----------------------------------------------------------------------------
// the LLaVA-Llama-3-8B recipe

static void test_llava_llama3_recipe(void **state) {
    Config c;
    config_defaults(&c);
    Error err;
    if (!config_load_yaml(&c, "configs/llava_llama3.yaml", &err)) fail_msg("%s", err.message);
    assert_string_equal(c.vision.tower_preset, "clip-vit-large-patch14-336");
    assert_int_equal(c.vision.feature_layer, -2);
    assert_string_equal(c.vision.image_fit, "pad");
    assert_string_equal(c.vision.projector, "mlp2x_gelu");
    assert_true(c.vision.train_projector);
    assert_string_equal(c.data.chat_template, "llama3");
    assert_int_equal(c.data.max_seq_len, 2048);
    for (int t = 0; t < LORA_TARGET_COUNT; t++) assert_true(c.lora.targets[t]);
    ClipVisionConfig clip;
    assert_true(clip_config_preset(c.vision.tower_preset, &clip, &err));
    assert_int_equal(clip_n_patches(&clip), 576);
    assert_int_equal(clip_layers_used(&clip), 23);
    assert_false(config_set(&c, "vision.projector=linear", &err));
    assert_non_null(strstr(err.message, "vision.projector"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip_features_match_transformers),
        cmocka_unit_test(test_dinov2_features_match_timm),
        cmocka_unit_test(test_timm_siglip_features_match_timm),
        cmocka_unit_test(test_towers_under_openvla_names),
        cmocka_unit_test(test_clip_load_errors),
        cmocka_unit_test(test_llava_logits_match_transformers),
        cmocka_unit_test(test_projector_llava_names),
        cmocka_unit_test(test_projector_saved_in_adapter),
        cmocka_unit_test(test_projector_gradients_finite_differences),
        cmocka_unit_test(test_splice_errors),
        cmocka_unit_test(test_llava_llama3_recipe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
