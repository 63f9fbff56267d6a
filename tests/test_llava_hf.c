// A llava-hf folder as users download it (tests/fixtures/llava_hf, written by
// transformers itself: scripts/ref_llava_hf.py; CLIP towers, single and
// sharded, and a SigLIP tower) is enough: training takes the
// tower's shape, feature layer and strategy, image token, preprocessing, tower
// and starting projector from it with no vision.* keys, and the chat template
// from its chat_template.jinja; its image processor's settings give
// AutoProcessor's pixels. Both exports serve the trained model: PeftModel
// on the adapter folder (LoRA + the projector as modules_to_save) and
// from_pretrained on the merged folder give lora-train's logits, and
// AutoProcessor loads the merged folder; at the trained adapter the loss and
// every LoRA and projector gradient are PeftModel's (scripts/check_llava_exports.py).
#include "run_util.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "model/model.h"
#include "vision/vision.h"

#define FIXTURES "tests/fixtures/llava_hf/"
enum { SEQ = 32, IMAGE_AT = 4 };

static LlavaVision read_vision(const char *folder) {
    LlavaVision vision;
    bool is_llava;
    Error err;
    if (!hf_read_llava_vision(folder, &is_llava, &vision, &err)) fail_msg("%s", err.message);
    assert_true(is_llava);
    return vision;
}

// The vision side read from the folders: what transformers wrote in them.
static void test_reads_folder_config(void **state) {
    LlavaVision clip = read_vision(FIXTURES "clip"), wide = read_vision(FIXTURES "sharded");
    LlavaVision siglip = read_vision(FIXTURES "siglip");
    assert_int_equal(clip.clip.hidden_size, 32);
    assert_int_equal(clip.clip.n_layers, 3);
    assert_int_equal(clip.clip.feature_layer, -2);
    assert_int_equal(clip.clip.skip_tokens, 1);
    assert_int_equal(clip_n_features(&clip.clip), 16);
    assert_int_equal(clip.image_token_id, 605); // <image>, added after the 605 tokens of the tokenizer
    assert_true(clip.has_preprocess);
    assert_int_equal(clip.preprocess.size, 16);
    assert_int_equal(clip.preprocess.fit, IMAGE_FIT_CROP); // CLIPImageProcessor: shortest edge, then center crop
    assert_true(clip.clip.class_token && clip.clip.pre_norm && !clip.clip.patch_bias);
    assert_int_equal(clip.clip.activation, VIT_QUICK_GELU);
    assert_memory_equal(clip.preprocess.pad_color, ((uint8_t[3]){122, 116, 104}), 3);
    assert_int_equal(wide.clip.hidden_size, 24);
    assert_int_equal(wide.clip.n_heads, 3);
    assert_int_equal(wide.clip.feature_layer, -1);
    assert_int_equal(wide.clip.skip_tokens, 0);
    assert_int_equal(clip_n_features(&wide.clip), 10); // 3 x 3 patches and the class token ("full")
    assert_true(wide.has_preprocess);
    assert_int_equal(wide.preprocess.size, 24);
    assert_float_equal(wide.preprocess.mean[1], 0.5f, 0.0f);
    assert_float_equal(wide.preprocess.std[2], 0.5f, 0.0f);
    assert_memory_equal(wide.preprocess.pad_color, ((uint8_t[3]){127, 127, 127}), 3);
    assert_false(siglip.clip.class_token || siglip.clip.pre_norm);
    assert_true(siglip.clip.patch_bias);
    assert_int_equal(siglip.clip.activation, VIT_GELU_TANH);
    assert_int_equal(siglip.clip.n_layers, 2);
    assert_int_equal(siglip.clip.feature_layer, -1);
    assert_float_equal(siglip.clip.layer_norm_eps, 1e-6f, 0.0f);
    assert_int_equal(siglip.clip.skip_tokens, 1);
    assert_int_equal(clip_n_features(&siglip.clip), 15); // 'default' drops the first of 4 x 4 patches, as Llava does
    assert_true(siglip.has_preprocess);
    assert_int_equal(siglip.preprocess.fit, IMAGE_FIT_SQUASH); // SiglipImageProcessor: straight to 16 x 16
    assert_int_equal(siglip.preprocess.size, 16);
    assert_float_equal(siglip.preprocess.std[0], 0.5f, 0.0f);
}

// A fresh folder holding config.json and, when not NULL, preprocessor_config.json.
static const char *write_folder(const char *config_json, const char *processor_json) {
    const char *dir = make_temp_dir("folder");
    const char *names[2] = {"config.json", "preprocessor_config.json"}, *texts[2] = {config_json, processor_json};
    for (int i = 0; i < 2 && texts[i]; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(texts[i], f);
        assert_int_equal(fclose(f), 0);
    }
    return dir;
}

// The error of reading a folder with these files.
static void assert_refused(const char *config_json, const char *processor_json, const char *message) {
    LlavaVision vision;
    bool is_llava;
    Error err;
    assert_false(hf_read_llava_vision(write_folder(config_json, processor_json), &is_llava, &vision, &err));
    if (!strstr(err.message, message)) fail_msg("'%s' lacks '%s'", err.message, message);
}

// SigLIP so400m/14 at 384 as llava-interleave has it: 'full', the last layer,
// SiglipVisionConfig's defaults for what config.json leaves out (so400m/14-384's shape given).
static void test_reads_siglip_full(void **state) {
    const char *dir = write_folder("{\"model_type\": \"llava\", \"vision_feature_select_strategy\": \"full\", "
                                   "\"vision_feature_layer\": -1, \"vision_config\": {\"model_type\": "
                                   "\"siglip_vision_model\", \"hidden_size\": 1152, \"intermediate_size\": 4304, "
                                   "\"num_hidden_layers\": 26, \"num_attention_heads\": 16, \"image_size\": 384, "
                                   "\"patch_size\": 14}}",
                                   NULL);
    LlavaVision vision = read_vision(dir);
    assert_int_equal(clip_n_features(&vision.clip), 27 * 27); // every patch, no class token
    assert_int_equal(clip_layers_used(&vision.clip), 26);
    assert_int_equal(vision.clip.activation, VIT_GELU_TANH);
    assert_float_equal(vision.clip.layer_norm_eps, 1e-6f, 0.0f);
    assert_int_equal(vision.clip.channels, 3);
}

// What the tower and projector code cannot do honestly is refused, naming the file and the key.
static void test_refuses_what_it_cannot_run(void **state) {
    assert_refused("{\"model_type\": \"llava\", \"vision_config\": {\"model_type\": \"pixtral\"}}", NULL,
                   "config.json: vision_config.model_type is 'pixtral'; lora-train's towers are CLIP");
    assert_refused("{\"model_type\": \"llava\", \"vision_config\": {\"model_type\": \"siglip_vision_model\", "
                   "\"hidden_act\": \"relu\"}}", NULL, "vision_config.hidden_act is 'relu'");
    assert_refused("{\"model_type\": \"llava\", \"vision_feature_select_strategy\": \"default\", \"vision_config\": "
                   "{\"model_type\": \"siglip_vision_model\", \"image_size\": 16, \"patch_size\": 16}}", NULL,
                   "the features skip 1 of the 1 tokens");
    assert_refused("{\"model_type\": \"llava\", \"vision_feature_layer\": [-2, -5]}", NULL,
                   "vision_feature_layer is a list");
    assert_refused("{\"model_type\": \"llava\", \"projector_hidden_act\": \"relu\"}", NULL,
                   "projector_hidden_act is 'relu'");
    assert_refused("{\"model_type\": \"llava\"}", "{\"resample\": 2}", "preprocessor_config.json: resample 2");
    LlavaVision vision;
    bool is_llava = true;
    Error err;
    assert_true(hf_read_llava_vision("tests/fixtures/hf/llama/model", &is_llava, &vision, &err));
    assert_false(is_llava);
}

static bool python_ready(void) {
    if (run_command("python3 -c 'import peft, transformers, safetensors' 2>/dev/null") == 0) return true;
    print_message("python3 with transformers, peft and safetensors is not available\n");
    return false;
}

// Training from the folder alone: model.path, data and checkpoints, nothing under vision.
static void train_from_folder(const char *dir, const char *folder, TrainSummary *summary) {
    const char *images = shared_fixture("images/jpeg");
    char images_path[PATH_MAX], records[PATH_MAX];
    if (!images || !realpath(images, images_path)) {
        print_message("missing ../shared/fixtures/images/jpeg\n");
        skip();
    }
    snprintf(records, sizeof records, "%s/records.json", dir);
    write_llava_records(records, 8);
    Config config;
    config_defaults(&config);
    config_set_or_fail(&config, "model.path=%s", folder);
    config_set_or_fail(&config, "data.path=%s", records);
    config_set_or_fail(&config, "data.images=%s", images_path);
    config_set_or_fail(&config, "checkpoint.dir=%s/out", dir);
    const char *recipe[] = {"data.max_seq_len=96", "lora.target=all", "train.micro_batch=2", "train.max_steps=4",
                            "train.lr=1e-2", "train.warmup=0", "train.log_every=100", "train.backend=cpu"};
    for (size_t i = 0; i < sizeof recipe / sizeof recipe[0]; i++) config_set_or_fail(&config, "%s", recipe[i]);
    Error err;
    if (!config_validate(&config, &err) || !train_run_with(&config, &(TrainControl){0}, summary, &err))
        fail_msg("%s", err.message);
    assert_true(summary->last_loss < summary->first_loss);
}

// The trained model as lora-train holds it: the folder's weights, the adapter (LoRA and projector).
static Model *trained_model(const char *folder, const char *adapter_dir, const LlavaVision *vision) {
    ModelOptions options = {.ops = ops_cpu(), .max_batch = 1, .max_seq_len = SEQ, .seed = 1,
                            .projector_in = vision->clip.hidden_size, .image_token_id = vision->image_token_id,
                            .max_image_rows = clip_n_features(&vision->clip)};
    options.lora = (LoraConfig){.r = 8, .alpha = 8}; // the defaults the run trained with
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    Error err;
    if (!hf_read_llama_config(folder, &options.config, &err)) fail_msg("%s", err.message);
    Model *model = model_create(&options, &err);
    if (!model || !hf_load_weights(model, folder, &err) || !adapter_load(model, adapter_dir, &err))
        fail_msg("%s", err.message);
    return model;
}

typedef struct Inputs {
    int32_t tokens[SEQ];
    int32_t labels[SEQ]; // transformers' labels: the token where trained, -100 elsewhere (images, the first two)
    float *pixels; // (1, 3, S, S)
    int n_pixels;
} Inputs;

// Random text ids around one image's tokens at IMAGE_AT, random pixels; written for Python too.
static Inputs make_inputs(const LlavaVision *vision, const char *path) {
    Inputs in = {.n_pixels = 3 * vision->clip.image_size * vision->clip.image_size};
    Rng rng;
    rng_seed(&rng, 17);
    int n_image = clip_n_features(&vision->clip);
    for (int t = 0; t < SEQ; t++) {
        bool image = t >= IMAGE_AT && t < IMAGE_AT + n_image;
        in.tokens[t] = image ? vision->image_token_id : 1 + (int32_t)rng_below(&rng, 590);
        in.labels[t] = image || t < 2 ? -100 : in.tokens[t];
    }
    in.pixels = malloc((size_t)in.n_pixels * sizeof(float));
    assert_non_null(in.pixels);
    fill_uniform(in.pixels, (size_t)in.n_pixels, -1.5f, 1.5f, &rng);
    int S = vision->clip.image_size;
    SafetensorsEntry entries[3] = {{"input_ids", {DTYPE_I32, 2, {1, SEQ}, in.tokens}},
                                   {"labels", {DTYPE_I32, 2, {1, SEQ}, in.labels}},
                                   {"pixel_values", {DTYPE_F32, 4, {1, 3, S, S}, in.pixels}}};
    Error err;
    if (!safetensors_write(path, entries, 3, NULL, 0, &err)) fail_msg("%s", err.message);
    return in;
}

// The folder's tower's features of the inputs' image (malloc'd).
static float *tower_features(const char *folder, const LlavaVision *vision, const Inputs *in) {
    Error err;
    ClipTower *tower = clip_tower_create(ops_cpu(), &vision->clip, 1, &err);
    if (!tower || !clip_load_weights(tower, folder, &err)) fail_msg("%s", err.message);
    float *features = malloc((size_t)clip_n_features(&vision->clip) * vision->clip.hidden_size * sizeof(float));
    assert_non_null(features);
    if (!clip_tower_forward(tower, in->pixels, 1, features, &err)) fail_msg("%s", err.message);
    clip_tower_destroy(tower);
    return features;
}

static float *our_logits(Model *model, const LlavaVision *vision, const Inputs *in, const float *features) {
    size_t n = (size_t)SEQ * model_config(model)->vocab_size;
    float *logits = malloc(n * sizeof(float));
    assert_non_null(logits);
    poison(logits, n);
    Batch batch = {.B = 1, .T = SEQ, .tokens = in->tokens, .n_image_rows = clip_n_features(&vision->clip),
                   .image_features = features};
    Error err;
    if (!model_logits(model, &batch, logits, &err)) fail_msg("%s", err.message);
    return logits;
}

// The adapter file's key of a ParamTable name in a LLaVA base (as adapter_save writes it).
static void adapter_key(const char *name, char *key, size_t size) {
    if (strncmp(name, "model.", 6) == 0) snprintf(key, size, "base_model.model.model.language_model.%s.grad", name + 6);
    else snprintf(key, size, "base_model.model.model.%s.grad", name);
}

// Loss and gradients of every trainable tensor (LoRA and projector) at the
// trained adapter against PeftModel's, on the inputs' labels.
static void check_loss_and_grads(Model *model, const char *dir, const char *folder, const char *adapter_dir,
                                 const LlavaVision *vision, const Inputs *in, const float *features) {
    int32_t targets[SEQ];
    int n_labels = 0;
    for (int t = 0; t < SEQ; t++) {
        targets[t] = t + 1 < SEQ ? in->labels[t + 1] : -100;
        n_labels += targets[t] != -100;
    }
    Batch batch = {.B = 1, .T = SEQ, .tokens = in->tokens, .targets = targets,
                   .n_image_rows = clip_n_features(&vision->clip), .image_features = features};
    StepOptions options = {.grad_scale = 1.0f / (float)n_labels, .train = true};
    double loss_sum;
    Error err;
    model_zero_grads(model);
    if (!model_step(model, &batch, &options, &err) || !model_loss_sum(model, &loss_sum, &err)) fail_msg("%s", err.message);
    char command[4 * PATH_MAX], out[PATH_MAX];
    snprintf(out, sizeof out, "%s/grads.safetensors", dir);
    snprintf(command, sizeof command,
             "python3 scripts/check_llava_exports.py %s/inputs.safetensors %s --base %s --adapter %s --grads > %s/grads.log 2>&1",
             dir, out, folder, adapter_dir, dir);
    if (run_command(command) != 0) fail_msg("%s failed (see %s/grads.log)", command, dir);
    SafetensorsFile *file = safetensors_open(out, &err);
    Tensor t;
    if (!file || !safetensors_get(file, "loss", &t, &err)) fail_msg("%s", err.message);
    double loss = loss_sum / n_labels, peft_loss = ((const float *)t.data)[0];
    const ParamTable *table = model_params(model);
    const float *grads = model_grad_data(model);
    double diff = 0, norm = 0, worst = 0; // all tensors together; the worst tensor alone
    for (int i = 0; i < table->count; i++) {
        const ParamEntry *e = &table->entries[i];
        char key[PARAM_NAME_MAX + 64];
        adapter_key(e->name, key, sizeof key);
        if (!safetensors_get(file, key, &t, &err)) fail_msg("%s", err.message);
        assert_int_equal(tensor_numel(&t), e->numel);
        double tensor_diff = 0, tensor_norm = 0;
        for (size_t k = 0; k < e->numel; k++) {
            double want = ((const float *)t.data)[k];
            tensor_diff += (grads[e->offset + k] - want) * (grads[e->offset + k] - want);
            tensor_norm += want * want;
        }
        diff += tensor_diff, norm += tensor_norm;
        worst = fmax(worst, sqrt(tensor_diff / tensor_norm));
    }
    assert_int_equal(safetensors_count(file), table->count + 1); // every trainable tensor and the loss
    print_message("loss %.7f vs PeftModel %.7f; gradients of %d tensors: relative L2 %.3g, worst tensor %.3g\n", loss,
                  peft_loss, table->count, sqrt(diff / norm), worst);
    assert_true(fabs(loss - peft_loss) < 1e-5 * fabs(peft_loss));
    assert_true(sqrt(diff / norm) < 1e-5);
    assert_true(worst < 1e-4);
    safetensors_close(file);
}

// scripts/check_llava_exports.py's logits (n of them) for the given model arguments.
static double *python_logits(const char *dir, const char *tag, const char *model_args, size_t n) {
    char command[4 * PATH_MAX + 128], out[PATH_MAX];
    snprintf(out, sizeof out, "%s/%s.safetensors", dir, tag);
    snprintf(command, sizeof command, "python3 scripts/check_llava_exports.py %s/inputs.safetensors %s %s > %s/%s.log 2>&1",
             dir, out, model_args, dir, tag);
    if (run_command(command) != 0) fail_msg("%s failed (see %s/%s.log)", command, dir, tag);
    Error err;
    SafetensorsFile *file = safetensors_open(out, &err);
    Tensor t;
    if (!file || !safetensors_get(file, "logits", &t, &err)) fail_msg("%s", err.message);
    assert_int_equal(tensor_numel(&t), n);
    double *logits = malloc(n * sizeof(double));
    assert_non_null(logits);
    for (size_t i = 0; i < n; i++) logits[i] = ((const float *)t.data)[i];
    safetensors_close(file);
    return logits;
}

// ||a - b|| / ||b||
static double relative_l2(const float *a, const double *b, size_t n) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < n; i++) {
        diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        norm += b[i] * b[i];
    }
    return sqrt(diff / norm);
}

static void check_exports(const char *name) {
    if (!python_ready()) skip();
    char folder[256], dir[PATH_MAX - 256], args[3 * PATH_MAX], merged[PATH_MAX];
    snprintf(folder, sizeof folder, FIXTURES "%s", name);
    snprintf(dir, sizeof dir, "%s", make_temp_dir(name));
    TrainSummary summary;
    train_from_folder(dir, folder, &summary);
    LlavaVision vision = read_vision(folder);
    char inputs_path[PATH_MAX];
    snprintf(inputs_path, sizeof inputs_path, "%s/inputs.safetensors", dir);
    Inputs in = make_inputs(&vision, inputs_path);
    Model *model = trained_model(folder, summary.adapter_dir, &vision);
    float *features = tower_features(folder, &vision, &in);
    float *ours = our_logits(model, &vision, &in, features);
    check_loss_and_grads(model, dir, folder, summary.adapter_dir, &vision, &in, features);
    LlamaConfig llama;
    Error err;
    if (!hf_read_llama_config(folder, &llama, &err)) fail_msg("%s", err.message);
    size_t n = (size_t)SEQ * llama.vocab_size;

    snprintf(args, sizeof args, "--base %s", folder);
    double *base = python_logits(dir, "base", args, n);
    snprintf(args, sizeof args, "--base %s --adapter %s", folder, summary.adapter_dir);
    double *peft = python_logits(dir, "peft", args, n);
    snprintf(merged, sizeof merged, "%s/merged", dir);
    if (!export_merged(folder, summary.adapter_dir, merged, &err)) fail_msg("%s", err.message);
    snprintf(args, sizeof args, "--merged %s", merged);
    double *merged_logits = python_logits(dir, "merged", args, n);

    double moved = relative_l2(ours, base, n), peft_error = relative_l2(ours, peft, n);
    double merged_error = relative_l2(ours, merged_logits, n);
    print_message("%s: training moved the logits by %.3g; ours vs PeftModel %.3g, vs the merged folder %.3g\n", name,
                  moved, peft_error, merged_error);
    assert_true(moved > 1e-2);
    assert_true(peft_error < 1e-5);
    assert_true(merged_error < 1e-5);
    free(ours), free(base), free(peft), free(merged_logits), free(in.pixels), free(features);
    model_destroy(model);
}

// The folder's image processor settings, its fit included, give the pixels
// AutoProcessor gives (CLIPImageProcessor's crop, SiglipImageProcessor's square resize).
static void check_preprocessing(const char *name) {
    if (!python_ready()) skip();
    const char *image_path = shared_fixture("images/jpeg/video-001.jpeg");
    if (!image_path) skip();
    char folder[256], out[PATH_MAX], command[3 * PATH_MAX];
    snprintf(folder, sizeof folder, FIXTURES "%s", name);
    const char *dir = make_temp_dir(name);
    snprintf(out, sizeof out, "%s/pixels.safetensors", dir);
    snprintf(command, sizeof command, "python3 scripts/check_llava_exports.py %s %s --processor %s > %s/pixels.log 2>&1",
             image_path, out, folder, dir);
    if (run_command(command) != 0) fail_msg("%s failed", command);
    LlavaVision vision = read_vision(folder);
    Image image;
    Error err;
    if (!image_decode_file(image_path, &image, &err)) fail_msg("%s", err.message);
    size_t n = (size_t)3 * vision.preprocess.size * vision.preprocess.size;
    float *ours = malloc(n * sizeof(float));
    assert_non_null(ours);
    if (!image_preprocess(&image, &vision.preprocess, ours, &err)) fail_msg("%s", err.message);
    SafetensorsFile *file = safetensors_open(out, &err);
    Tensor t;
    if (!file || !safetensors_get(file, "pixel_values", &t, &err)) fail_msg("%s", err.message);
    assert_int_equal(tensor_numel(&t), n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)ours[i] - ((const float *)t.data)[i]));
    print_message("%s: pixels vs AutoProcessor: max |diff| %.3g\n", name, worst);
    assert_true(worst < 1e-5);
    safetensors_close(file);
    image_free(&image);
    free(ours);
}

static void test_clip_folder_preprocessing(void **state) { check_preprocessing("clip"); }
static void test_sharded_folder_preprocessing(void **state) { check_preprocessing("sharded"); }
static void test_siglip_folder_preprocessing(void **state) { check_preprocessing("siglip"); }
static void test_clip_folder_exports(void **state) { check_exports("clip"); }
static void test_sharded_folder_exports(void **state) { check_exports("sharded"); }
static void test_siglip_folder_exports(void **state) { check_exports("siglip"); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_folder_config),
        cmocka_unit_test(test_reads_siglip_full),
        cmocka_unit_test(test_refuses_what_it_cannot_run),
        cmocka_unit_test(test_clip_folder_preprocessing),
        cmocka_unit_test(test_sharded_folder_preprocessing),
        cmocka_unit_test(test_clip_folder_exports),
        cmocka_unit_test(test_sharded_folder_exports),
        cmocka_unit_test(test_siglip_folder_preprocessing),
        cmocka_unit_test(test_siglip_folder_exports),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
