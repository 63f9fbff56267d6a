// OpenVLA (OpenVLAForActionPrediction) against a tiny PyTorch model built from timm's towers,
// transformers' Llama and PEFT all-linear LoRA (scripts/ref_openvla.py): the folder read by
// lora-train's loaders (config.json, two shards, OpenVLA's names), the fused towers' features,
// the projector's output, logits, loss, dL/d(features) and the decoder's and projector's LoRA
// gradients on the CPU backend; the loader's errors.
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "model/model.h"

#define FIXTURES "tests/fixtures/openvla/"
#define MODEL_DIR FIXTURES "model"
#define ADAPTER_DIR FIXTURES "adapter"
enum { B = 2, TEXT_T = 13, P = 16, T = TEXT_T + P, D0 = 32, D1 = 24, D = D0 + D1, C = 48, V = 256 };
enum { PLACEHOLDER = 3 }; // an id the reference's prompts (4 .. 199) and actions (200 .. 255) never use
#define TOLERANCE 1e-5    // relative L2, fp32 against fp32

static SafetensorsFile *open_reference(void) {
    if (!path_exists(FIXTURES "reference.safetensors")) {
        print_message("missing fixture " FIXTURES "reference.safetensors (run scripts/ref_openvla.py)\n");
        skip();
    }
    Error err;
    SafetensorsFile *file = safetensors_open(FIXTURES "reference.safetensors", &err);
    if (!file) fail_msg("%s", err.message);
    return file;
}

// The named reference tensor as fp32 (malloc'd), which must hold n values.
static float *reference_floats(SafetensorsFile *file, const char *name, size_t n) {
    Tensor t;
    Error err;
    if (!safetensors_get(file, name, &t, &err)) fail_msg("%s", err.message);
    assert_int_equal(tensor_numel(&t), n);
    float *x = malloc(n * sizeof(float) + 1);
    assert_non_null(x);
    if (t.dtype == DTYPE_I32) {
        for (size_t i = 0; i < n; i++) x[i] = (float)((const int32_t *)t.data)[i];
    } else if (!convert_to_f32(x, t.data, t.dtype, n, &err)) {
        fail_msg("%s", err.message);
    }
    return x;
}

// ||got - want|| / ||want||
static double relative_l2(const float *got, const float *want, size_t n) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        norm += (double)want[i] * want[i];
    }
    return sqrt(diff / (norm > 0 ? norm : 1));
}

static void expect_close(const float *got, const float *want, size_t n, const char *what) {
    double error = relative_l2(got, want, n);
    print_message("%-58s relative L2 %.3g\n", what, error);
    assert_all_finite(got, n);
    assert_true(error < TOLERANCE);
}

// The tiny towers' shapes: config.json's presets (flags, image size) with the reference's widths and depths.
static void tiny_towers(OpenVlaVision *vision) {
    static const int widths[2] = {D0, D1}, mlp[2] = {4 * D0, 89}, depths[2] = {3, 4}; // so400m: int(24 * 3.7362)
    for (int k = 0; k < 2; k++) {
        ClipVisionConfig *c = &vision->towers[k];
        c->hidden_size = widths[k], c->intermediate_size = mlp[k], c->n_layers = depths[k], c->n_heads = 4;
        c->patch_size = 4;
        assert_int_equal(clip_n_features(c), P);
    }
}

static OpenVlaVision read_vision(void) {
    OpenVlaVision vision;
    bool is_openvla = false;
    Error err;
    if (!hf_read_openvla(MODEL_DIR, &is_openvla, &vision, &err)) fail_msg("%s", err.message);
    assert_true(is_openvla);
    return vision;
}

// config.json: the towers from timm_model_ids and image_sizes, the action bins, the language model.
static void test_reads_the_config(void **state) {
    OpenVlaVision vision = read_vision();
    ClipVisionConfig dinov2, siglip;
    Error err;
    assert_true(clip_config_preset("dinov2-vit-l14-reg4", &dinov2, &err));
    assert_true(clip_config_preset("siglip-so400m-14", &siglip, &err));
    assert_int_equal(vision.towers[0].n_registers, 4);
    assert_true(vision.towers[0].layer_scale && vision.towers[0].class_token);
    assert_false(vision.towers[1].class_token);
    assert_int_equal(vision.towers[0].hidden_size, dinov2.hidden_size);
    assert_int_equal(vision.towers[1].hidden_size, siglip.hidden_size);
    assert_int_equal(vision.towers[0].image_size, 16);
    assert_int_equal(vision.towers[1].image_size, 16);
    assert_int_equal(vision.n_action_bins, 256);
    assert_int_equal(vision.pad_to_multiple_of, 64);
    LlamaConfig llama;
    if (!hf_read_llama_config(MODEL_DIR, &llama, &err)) fail_msg("%s", err.message);
    assert_int_equal(llama.vocab_size, V);
    assert_int_equal(llama.hidden_size, C);
    assert_int_equal(llama.n_layers, 2);
    HfLayout layout;
    if (!hf_read_layout(MODEL_DIR, &layout, &err)) fail_msg("%s", err.message);
    assert_int_equal(layout, HF_LAYOUT_OPENVLA);
    bool is_openvla = true;
    if (!hf_read_openvla("tests/fixtures/llava_hf/clip", &is_openvla, &vision, &err)) fail_msg("%s", err.message);
    assert_false(is_openvla);
}

// towers: the two towers' shapes for their adapters in the flat buffer (lora.target_towers), or NULL.
static Model *openvla_model_with(int projector_in, const ClipVisionConfig *towers, Error *err) {
    ModelOptions options = {.ops = ops_cpu(), .max_batch = B, .max_seq_len = T, .seed = 1,
                            .projector_in = projector_in, .projector_kind = PROJECTOR_OPENVLA,
                            .image_feature_grads = true, .image_token_id = PLACEHOLDER, .max_image_rows = B * P,
                            .lora = {.r = 4, .alpha = 8, .target_projector = true, .target_towers = towers != NULL},
                            .lora_towers = towers};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    if (!hf_read_llama_config(MODEL_DIR, &options.config, err)) return NULL;
    return model_create(&options, err);
}

static Model *openvla_model(int projector_in, Error *err) { return openvla_model_with(projector_in, NULL, err); }

// OpenVLA's sequence with the image's placeholders right after BOS, as RobotLoader makes it;
// targets: the reference's labels with the patches' IGNORE_INDEX, shifted by one.
static void robot_batch(SafetensorsFile *ref, int32_t *tokens, int32_t *targets) {
    float *ids = reference_floats(ref, "input_ids", B * TEXT_T), *labels = reference_floats(ref, "labels", B * TEXT_T);
    for (int b = 0; b < B; b++) {
        int32_t label[T];
        for (int t = 0; t < T; t++) {
            int text = t == 0 ? 0 : t <= P ? -1 : t - P; // the text token at t, or -1 for a patch
            tokens[b * T + t] = text < 0 ? PLACEHOLDER : (int32_t)ids[b * TEXT_T + text];
            label[t] = text < 0 ? -100 : (int32_t)labels[b * TEXT_T + text];
        }
        for (int t = 0; t < T; t++) targets[b * T + t] = t + 1 < T ? label[t + 1] : -100;
    }
    free(ids), free(labels);
}

// The adapter key PEFT gives a parameter of OpenVLA: base_model.model. + its module path there.
static void peft_key(const char *name, char *key, size_t size) {
    bool decoder = strncmp(name, "model.", 6) == 0;
    snprintf(key, size, "grad.base_model.model.%s%s", decoder ? "language_model." : "", name);
}

static void test_matches_the_reference(void **state) {
    SafetensorsFile *ref = open_reference();
    OpenVlaVision vision = read_vision();
    tiny_towers(&vision);
    Error err;
    FusedFeaturizer *featurizer = fused_featurizer_create(ops_cpu(), vision.towers, B, &err);
    if (!featurizer || !openvla_load_towers(featurizer, MODEL_DIR, &err)) fail_msg("%s", err.message);
    assert_int_equal(fused_featurizer_width(featurizer), D);
    assert_int_equal(fused_featurizer_n_features(featurizer), P);

    // towers: each tower's features in its columns, DINOv2's first
    float *pixels = reference_floats(ref, "pixel_values", B * 6 * 16 * 16);
    float *features = malloc(B * P * D * sizeof(float)), *column = malloc(B * P * D0 * sizeof(float));
    poison(features, B * P * D);
    if (!fused_featurizer_forward(featurizer, pixels, B, features, &err)) fail_msg("%s", err.message);
    const char *keys[2] = {"dinov2_features", "siglip_features"};
    const int widths[2] = {D0, D1}, col0[2] = {0, D0};
    for (int k = 0; k < 2; k++) {
        for (int r = 0; r < B * P; r++)
            memcpy(column + r * widths[k], features + r * D + col0[k], widths[k] * sizeof(float));
        float *want = reference_floats(ref, keys[k], (size_t)B * P * widths[k]);
        expect_close(column, want, (size_t)B * P * widths[k], keys[k]);
        free(want);
    }

    // the whole model: the folder's language model and projector, the PEFT adapter
    Model *model = openvla_model(D, &err);
    if (!model || !hf_load_weights(model, MODEL_DIR, &err) || !adapter_load(model, ADAPTER_DIR, &err))
        fail_msg("%s", err.message);
    const ParamTable *params = model_params(model);
    assert_int_equal(params->n_decoder_lora, 2 * 7 * 2);
    assert_int_equal(params->n_lora, params->count); // the projector's six adapters; no trainable projector
    int32_t tokens[B * T], targets[B * T];
    robot_batch(ref, tokens, targets);
    Batch batch = {.B = B, .T = T, .tokens = tokens, .targets = targets, .n_image_rows = B * P,
                   .image_features = features};
    float *logits = malloc((size_t)B * T * V * sizeof(float)), *projected = malloc(B * P * C * sizeof(float));
    if (!model_logits(model, &batch, logits, &err) || !model_image_embeddings(model, projected, &err))
        fail_msg("%s", err.message);
    float *want = reference_floats(ref, "projector_out", B * P * C);
    expect_close(projected, want, B * P * C, "projector_out");
    free(want);
    want = reference_floats(ref, "logits", (size_t)B * T * V);
    expect_close(logits, want, (size_t)B * T * V, "logits");
    float *other = reference_floats(ref, "towers_b.logits", (size_t)B * T * V); // the towers' adapters change them
    assert_true(relative_l2(logits, other, (size_t)B * T * V) > 100 * TOLERANCE);
    free(want), free(other);

    // loss and gradients: the mean over the label tokens, as transformers' loss
    int n_labels = 0;
    for (int i = 0; i < B * T; i++) n_labels += targets[i] != -100;
    assert_int_equal(n_labels, B * 8);
    StepOptions step = {.grad_scale = 1.0f / n_labels, .train = true};
    double loss_sum;
    if (!model_step(model, &batch, &step, &err) || !model_loss_sum(model, &loss_sum, &err)) fail_msg("%s", err.message);
    float loss = (float)(loss_sum / n_labels);
    want = reference_floats(ref, "loss", 1);
    expect_close(&loss, want, 1, "loss");
    free(want);
    float *d_features = malloc(B * P * D * sizeof(float));
    ops_cpu()->download_f32(ops_cpu(), d_features, model_image_feature_grads(model), B * P * D);
    want = reference_floats(ref, "feature_grads", B * P * D);
    expect_close(d_features, want, B * P * D, "dL/d(features)");
    free(want);
    const float *grads = model_grad_data(model);
    for (int i = 0; i < params->count; i++) {
        const ParamEntry *e = &params->entries[i];
        char key[PARAM_NAME_MAX + 64];
        peft_key(e->name, key, sizeof key);
        want = reference_floats(ref, key, e->numel);
        double norm = 0;
        for (size_t j = 0; j < e->numel; j++) norm += (double)want[j] * want[j];
        assert_true(norm > 0); // lora_B random: every gradient is non-trivial
        expect_close(grads + e->offset, want, e->numel, key + 5);
        free(want);
    }
    model_destroy(model);
    fused_featurizer_destroy(featurizer);
    free(pixels), free(features), free(column), free(logits), free(projected), free(d_features);
    safetensors_close(ref);
}

static float *reference_features(SafetensorsFile *ref);

// The model's fp32 masters onto the host (malloc'd).
static float *download_params(Model *model) {
    size_t n = model_params(model)->total;
    float *host = malloc(n * sizeof(float));
    assert_non_null(host);
    model_ops(model)->download(model_ops(model), host, model_param_data(model), n * sizeof(float));
    return host;
}

// The towers_b pass: the towers' adapters (random lora_B) as entries of the model's ParamTable after the
// decoder's and the projector's; one step (the featurizer's forward with adapters, model_step, the towers'
// backward from dL/d(features)) gives the loss and every LoRA gradient, decoder, projector and both towers.
static void test_trains_the_towers(void **state) {
    SafetensorsFile *ref = open_reference();
    OpenVlaVision vision = read_vision();
    tiny_towers(&vision);
    Error err;
    ClipTowerOptions tower_options = {.lora_r = 4, .train = true};
    FusedFeaturizer *featurizer = fused_featurizer_create_with(ops_cpu(), vision.towers, B, &tower_options, &err);
    if (!featurizer || !openvla_load_towers(featurizer, MODEL_DIR, &err)) fail_msg("%s", err.message);

    // the decoder's and projector's adapters from the fixture (through a model without the towers'), the
    // towers' from the reference
    Model *plain = openvla_model(D, &err), *model = openvla_model_with(D, vision.towers, &err);
    if (!plain || !model || !hf_load_weights(plain, MODEL_DIR, &err) || !adapter_load(plain, ADAPTER_DIR, &err) ||
        !hf_load_weights(model, MODEL_DIR, &err))
        fail_msg("%s", err.message);
    const ParamTable *params = model_params(model), *plain_params = model_params(plain);
    assert_int_equal(params->n_tower_lora, openvla_tower_lora_n_params(vision.towers));
    assert_int_equal(params->n_tower_lora, 2 * 4 * (2 + 3)); // qkv, proj, fc1, fc2 of the used blocks: 2 + 3
    assert_int_equal(params->n_lora, params->count);
    assert_int_equal(params->count, plain_params->count + params->n_tower_lora);
    const ParamEntry *first_tower = &params->entries[params->n_lora - params->n_tower_lora];
    assert_string_equal(first_tower->name, "vision_backbone.featurizer.blocks.0.attn.qkv.lora_A.weight");
    assert_int_equal(first_tower->offset, plain_params->total);
    float *host = download_params(model), *plain_host = download_params(plain);
    memcpy(host, plain_host, plain_params->total * sizeof(float));
    for (int i = params->n_lora - params->n_tower_lora; i < params->n_lora; i++) {
        const ParamEntry *e = &params->entries[i];
        char key[PARAM_NAME_MAX + 64];
        snprintf(key, sizeof key, "towers_b.base_model.model.%s", e->name);
        float *value = reference_floats(ref, key, e->numel);
        memcpy(host + e->offset, value, e->numel * sizeof(float));
        free(value);
    }
    model_ops(model)->upload(model_ops(model), model_param_data(model), host, params->total * sizeof(float));
    model_sync_params(model);
    if (!fused_featurizer_bind_lora(featurizer, params, lora_scale(model_lora(model)), &err))
        fail_msg("%s", err.message);

    float *pixels = reference_floats(ref, "pixel_values", B * 6 * 16 * 16);
    float *features = malloc(B * P * D * sizeof(float));
    if (!fused_featurizer_forward_lora(featurizer, model_param_act(model), pixels, B, features, &err))
        fail_msg("%s", err.message);
    float *want = reference_features(ref), *dinov2 = reference_floats(ref, "towers_b.dinov2_features", B * P * D0);
    assert_true(relative_l2(features, want, B * P * D) > 100 * TOLERANCE); // the adapters change the features
    free(want);
    float *column = malloc(B * P * D0 * sizeof(float));
    for (int r = 0; r < B * P; r++) memcpy(column + r * D0, features + r * D, D0 * sizeof(float));
    expect_close(column, dinov2, B * P * D0, "towers_b.dinov2_features");
    free(dinov2), free(column);

    int32_t tokens[B * T], targets[B * T];
    robot_batch(ref, tokens, targets);
    Batch batch = {.B = B, .T = T, .tokens = tokens, .targets = targets, .n_image_rows = B * P,
                   .image_features = features};
    int n_labels = 0;
    for (int i = 0; i < B * T; i++) n_labels += targets[i] != -100;
    StepOptions step = {.grad_scale = 1.0f / n_labels, .train = true};
    double loss_sum;
    model_zero_grads(model);
    if (!model_step(model, &batch, &step, &err) || !model_loss_sum(model, &loss_sum, &err) ||
        !fused_featurizer_backward(featurizer, model_param_act(model), model_grad_data(model),
                                   model_image_feature_grads(model), B, &err))
        fail_msg("%s", err.message);
    float loss = (float)(loss_sum / n_labels);
    want = reference_floats(ref, "towers_b.loss", 1);
    expect_close(&loss, want, 1, "towers_b.loss");
    free(want);
    float *grads = malloc(params->total * sizeof(float));
    ops_cpu()->download(ops_cpu(), grads, model_grad_data(model), params->total * sizeof(float));
    int n_towers_checked = 0;
    for (int i = 0; i < params->count; i++) {
        const ParamEntry *e = &params->entries[i];
        char key[PARAM_NAME_MAX + 64];
        snprintf(key, sizeof key, "towers_b.");
        peft_key(e->name, key + 9, sizeof key - 9);
        want = reference_floats(ref, key, e->numel);
        double norm = 0;
        for (size_t j = 0; j < e->numel; j++) norm += (double)want[j] * want[j];
        assert_true(norm > 0);
        expect_close(grads + e->offset, want, e->numel, key + 14);
        n_towers_checked += strncmp(e->name, "vision_backbone.", 16) == 0;
        free(want);
    }
    assert_int_equal(n_towers_checked, params->n_tower_lora);
    model_destroy(model), model_destroy(plain);
    fused_featurizer_destroy(featurizer);
    free(host), free(plain_host), free(pixels), free(features), free(grads);
    safetensors_close(ref);
}

static bool python_ready(void) {
    // scripts/check_openvla_adapter.py builds on scripts/ref_openvla.py's modules, which import timm
    if (run_command("python3 -c 'import timm, peft, transformers, safetensors' 2>/dev/null") == 0) return true;
    print_message("python3 with timm, transformers, peft and safetensors is not available\n");
    return false;
}

// The reference's towers' features side by side (B P, D), DINOv2's first.
static float *reference_features(SafetensorsFile *ref) {
    float *dinov2 = reference_floats(ref, "dinov2_features", B * P * D0);
    float *siglip = reference_floats(ref, "siglip_features", B * P * D1);
    float *features = malloc(B * P * D * sizeof(float));
    assert_non_null(features);
    for (int r = 0; r < B * P; r++) {
        memcpy(features + r * D, dinov2 + r * D0, D0 * sizeof(float));
        memcpy(features + r * D + D0, siglip + r * D1, D1 * sizeof(float));
    }
    free(dinov2), free(siglip);
    return features;
}

// The features and the input ids (without placeholders) for scripts/check_openvla_adapter.py.
static void write_peft_inputs(SafetensorsFile *ref, const float *features, const char *path) {
    float *ids = reference_floats(ref, "input_ids", B * TEXT_T);
    int32_t input_ids[B * TEXT_T];
    for (int i = 0; i < B * TEXT_T; i++) input_ids[i] = (int32_t)ids[i];
    SafetensorsEntry entries[2] = {
        {"features", {DTYPE_F32, 3, {B, P, D}, (void *)features}},
        {"input_ids", {DTYPE_I32, 2, {B, TEXT_T}, input_ids}},
    };
    Error err;
    if (!safetensors_write(path, entries, 2, NULL, 0, &err)) fail_msg("%s", err.message);
    free(ids);
}

// The adapter lora-train saves for an OpenVLA base is one PEFT puts into OpenVLA's modules
// (every tensor a module's, every LoRA module given its tensor) and gives lora-train's logits; the
// towers' features go in (the fixture's folder has no tower_shapes: test_openvla_train checks an adapter
// with the towers' adapters through timm's towers).
static void test_saved_adapter_loads_in_peft(void **state) {
    if (!python_ready()) skip();
    SafetensorsFile *ref = open_reference();
    Error err;
    Model *model = openvla_model(D, &err);
    if (!model || !hf_load_weights(model, MODEL_DIR, &err) || !adapter_load(model, ADAPTER_DIR, &err))
        fail_msg("%s", err.message);
    const Ops *ops = model_ops(model);
    size_t n = model_params(model)->total;
    float *host = malloc(n * sizeof(float));
    ops->download(ops, host, model_param_data(model), n * sizeof(float));
    for (size_t i = 0; i < n; i++) host[i] *= 1.5f; // away from the fixture's adapter: the file checked is ours
    ops->upload(ops, model_param_data(model), host, n * sizeof(float));
    model_sync_params(model);
    float *features = reference_features(ref), *logits = malloc((size_t)B * T * V * sizeof(float));
    int32_t tokens[B * T], targets[B * T];
    robot_batch(ref, tokens, targets);
    Batch batch = {.B = B, .T = T, .tokens = tokens, .targets = targets, .n_image_rows = B * P,
                   .image_features = features};
    if (!model_logits(model, &batch, logits, &err)) fail_msg("%s", err.message);

    char dir[512], adapter[600], inputs[600], out[600], command[4096];
    snprintf(dir, sizeof dir, "%s", make_temp_dir("openvla_peft"));
    snprintf(adapter, sizeof adapter, "%s/adapter", dir);
    snprintf(inputs, sizeof inputs, "%s/inputs.safetensors", dir);
    snprintf(out, sizeof out, "%s/logits.safetensors", dir);
    AdapterInfo info = {.base_model_name_or_path = "openvla/openvla-7b", .layout = HF_LAYOUT_OPENVLA};
    if (!adapter_save(model, &info, adapter, &err)) fail_msg("%s", err.message);
    write_peft_inputs(ref, features, inputs);
    snprintf(command, sizeof command, "python3 scripts/check_openvla_adapter.py %s %s %s %s > %s/peft.log 2>&1",
             MODEL_DIR, adapter, inputs, out, dir);
    if (run_command(command) != 0) fail_msg("%s failed (see %s/peft.log)", command, dir);
    SafetensorsFile *peft = safetensors_open(out, &err);
    if (!peft) fail_msg("%s", err.message);
    float *peft_logits = reference_floats(peft, "logits", (size_t)B * T * V);
    float *fixture_logits = reference_floats(ref, "logits", (size_t)B * T * V);
    assert_true(relative_l2(logits, fixture_logits, (size_t)B * T * V) > 100 * TOLERANCE);
    expect_close(logits, peft_logits, (size_t)B * T * V, "logits vs PEFT with the saved adapter");

    // merged: W + s B A rounded to the base's bf16, the projector's linears too; loaded with no-op adapters (B = 0)
    char merged[600];
    snprintf(merged, sizeof merged, "%s/merged", dir);
    if (!export_merged(MODEL_DIR, adapter, merged, &err)) fail_msg("%s", err.message);
    Model *plain = openvla_model(D, &err);
    float *plain_logits = malloc((size_t)B * T * V * sizeof(float));
    if (!plain || !hf_load_weights(plain, MODEL_DIR, &err) || !model_logits(plain, &batch, plain_logits, &err))
        fail_msg("%s", err.message);
    double base_error = relative_l2(plain_logits, logits, (size_t)B * T * V);
    if (!hf_load_weights(plain, merged, &err) || !model_logits(plain, &batch, plain_logits, &err))
        fail_msg("%s", err.message);
    double merged_error = relative_l2(plain_logits, logits, (size_t)B * T * V);
    print_message("merged export: logits %.3g from the adapter's (the base alone: %.3g)\n", merged_error, base_error);
    assert_true(merged_error < 0.02 * base_error);
    model_destroy(plain);
    free(plain_logits);
    free(host), free(features), free(logits), free(peft_logits), free(fixture_logits);
    safetensors_close(peft);
    safetensors_close(ref);
    model_destroy(model);
}

// Errors name the file and the tensor: a projector of another width, a folder without one.
static void test_load_errors_name_the_tensor(void **state) {
    Error err;
    Model *model = openvla_model(D + 1, &err);
    if (!model) fail_msg("%s", err.message);
    assert_false(hf_load_weights(model, MODEL_DIR, &err));
    print_message("expected: %s\n", err.message);
    assert_non_null(strstr(err.message, "model-0000"));
    assert_non_null(strstr(err.message, "projector.fc1.weight has shape [224, 56], expected [228, 57]"));
    model_destroy(model);

    ModelOptions options = {.ops = ops_cpu(), .max_batch = 1, .max_seq_len = 8, .projector_in = 8,
                            .projector_kind = PROJECTOR_OPENVLA, .image_token_id = 0, .max_image_rows = 4,
                            .lora = {.r = 2, .alpha = 4, .targets = {[LORA_Q] = true}}};
    if (!hf_read_llama_config("tests/fixtures/llava_hf/clip", &options.config, &err)) fail_msg("%s", err.message);
    model = model_create(&options, &err);
    if (!model) fail_msg("%s", err.message);
    assert_false(hf_load_weights(model, "tests/fixtures/llava_hf/clip", &err));
    print_message("expected: %s\n", err.message);
    assert_non_null(strstr(err.message, "missing tensor projector.fc1.weight"));
    model_destroy(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_the_config),
        cmocka_unit_test(test_matches_the_reference),
        cmocka_unit_test(test_trains_the_towers),
        cmocka_unit_test(test_saved_adapter_loads_in_peft),
        cmocka_unit_test(test_load_errors_name_the_tensor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
