// Hugging Face checkpoints in, against transformers + PEFT's own numbers
// (scripts/ref_hf.py -> tests/fixtures/hf): logits, loss and LoRA gradients of
// tiny Llama and LLaVA models with an adapter on all seven targets; sharded,
// BF16/F16 and both LLaVA key layouts load to the same weights; LLaVA
// adapters keep the base's module paths.
#include "test_util.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "data/data.h"

#define FIXTURES "tests/fixtures/hf"
#define MAX_T 16

// A model shaped by dir's config.json, r = 4, alpha = 8, every target, no dropout.
static Model *load_model(const char *dir, int T) {
    Error err = {0};
    LlamaConfig config;
    if (!hf_read_llama_config(dir, &config, &err)) fail_msg("%s", err.message);
    ModelOptions options = {.ops = ops_cpu(), .config = config, .max_batch = 1, .max_seq_len = T, .seed = 1};
    options.lora = (LoraConfig){.r = 4, .alpha = 8};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    Model *model = model_create(&options, &err);
    if (!model || !hf_load_weights(model, dir, &err)) fail_msg("%s", err.message);
    return model;
}

typedef struct Reference {
    SafetensorsFile *file;
    int T, V;
    int32_t tokens[MAX_T], targets[MAX_T];
} Reference;

static Tensor reference_tensor(const Reference *ref, const char *name) {
    Tensor t;
    Error err = {0};
    if (!safetensors_get(ref->file, name, &t, &err)) fail_msg("%s", err.message);
    return t;
}

// input_ids and labels (1, T), I64; targets are labels shifted left as transformers' loss does.
static Reference open_reference(const char *path) {
    Error err = {0};
    Reference ref = {.file = safetensors_open(path, &err)};
    if (!ref.file) fail_msg("%s", err.message);
    Tensor ids = reference_tensor(&ref, "input_ids"), labels = reference_tensor(&ref, "labels");
    Tensor logits = reference_tensor(&ref, "logits");
    ref.T = (int)ids.shape[1];
    ref.V = (int)logits.shape[2];
    assert_true(ref.T <= MAX_T);
    for (int t = 0; t < ref.T; t++) {
        ref.tokens[t] = (int32_t)((const int64_t *)ids.data)[t];
        ref.targets[t] = t + 1 < ref.T ? (int32_t)((const int64_t *)labels.data)[t + 1] : IGNORE_INDEX;
    }
    return ref;
}

// max |ours - theirs| / max |theirs|
static double relative_error(const float *ours, const Tensor *theirs) {
    assert_int_equal(theirs->dtype, DTYPE_F32);
    const float *b = theirs->data;
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < tensor_numel(theirs); i++) {
        worst = fmax(worst, fabs((double)ours[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return worst / scale;
}

static void check_logits(Model *model, const Reference *ref, const Batch *batch) {
    Error err = {0};
    float *logits = malloc((size_t)ref->T * ref->V * sizeof(float));
    if (!model_logits(model, batch, logits, &err)) fail_msg("%s", err.message);
    Tensor theirs = reference_tensor(ref, "logits");
    double error = relative_error(logits, &theirs);
    print_message("logits: relative error %.3g\n", error);
    assert_true(error < 1e-4);
    free(logits);
}

// Mean loss over label tokens and d loss / d (every LoRA tensor), keyed as the adapter.
static void check_loss_and_grads(Model *model, const Reference *ref, const Batch *batch, HfLayout layout) {
    int n_labels = 0;
    for (int t = 0; t < ref->T; t++) n_labels += ref->targets[t] != IGNORE_INDEX;
    StepOptions options = {.grad_scale = 1.0f / n_labels, .train = true};
    double loss_sum = 0;
    Error err = {0};
    model_zero_grads(model);
    if (!model_step(model, batch, &options, &err) || !model_loss_sum(model, &loss_sum, &err))
        fail_msg("%s", err.message);
    float their_loss = *(const float *)reference_tensor(ref, "loss").data;
    double loss_error = fabs(loss_sum / n_labels - their_loss) / their_loss;
    print_message("loss %.6f vs %.6f: relative error %.3g\n", loss_sum / n_labels, (double)their_loss, loss_error);
    assert_true(loss_error < 1e-4);

    const ParamTable *table = model_params(model);
    float *grads = malloc(table->total * sizeof(float));
    const Ops *ops = model_ops(model);
    ops->download(ops, grads, model_grad_data(model), table->total * sizeof(float));
    double worst = 0;
    for (int i = 0; i < table->count; i++) {
        const ParamEntry *e = &table->entries[i];
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s%s.grad", hf_layout_decoder_prefix(layout), e->name + 6);
        Tensor theirs = reference_tensor(ref, key);
        assert_int_equal(tensor_numel(&theirs), e->numel);
        worst = fmax(worst, relative_error(grads + e->offset, &theirs));
    }
    print_message("LoRA gradients (%d tensors): worst relative error %.3g\n", table->count, worst);
    assert_true(worst < 1e-4);
    free(grads);
}

static void check_against_reference(const char *name, HfLayout layout) {
    char dir[256], path[256];
    snprintf(path, sizeof path, FIXTURES "/%s/reference.safetensors", name);
    Reference ref = open_reference(path);
    snprintf(dir, sizeof dir, FIXTURES "/%s/model", name);
    Model *model = load_model(dir, ref.T);
    Error err = {0};
    snprintf(dir, sizeof dir, FIXTURES "/%s/adapter", name);
    if (!adapter_load(model, dir, &err)) fail_msg("%s", err.message);
    Batch batch = {.B = 1, .T = ref.T, .tokens = ref.tokens, .targets = ref.targets};
    check_logits(model, &ref, &batch);
    check_loss_and_grads(model, &ref, &batch, layout);
    safetensors_close(ref.file);
    model_destroy(model);
}

static void test_llama_matches_peft(void **state) { check_against_reference("llama", HF_LAYOUT_LLAMA); }

// LlavaForConditionalGeneration: text_config, language_model.model.* weights
// (what save_pretrained writes), adapter keys under model.language_model.*.
static void test_llava_matches_peft(void **state) { check_against_reference("llava", HF_LAYOUT_LLAVA); }

// ----------------------------------------------------------------------------
// layouts, shards and dtypes

static float *frozen_on_host(Model *model, const char *name, size_t *n) {
    Tensor t;
    Error err = {0};
    if (!model_frozen_tensor(model, name, &t, &err)) fail_msg("%s", err.message);
    *n = (size_t)tensor_numel(&t);
    float *host = malloc(*n * sizeof(float));
    const Ops *ops = model_ops(model);
    ops->download_f32(ops, host, t.data, *n);
    return host;
}

typedef struct Comparison {
    Model *other;
    const char *shard_dir;  // when set: other's tensors were stored rounded to their shard's dtype
} Comparison;

// dtype of the tensor `name` in the folder's shards.
static DType stored_dtype(const char *dir, const char *name) {
    Error err = {0};
    for (int shard = 1; shard <= 2; shard++) {
        char path[256];
        snprintf(path, sizeof path, "%s/model-%05d-of-00002.safetensors", dir, shard);
        SafetensorsFile *file = safetensors_open(path, &err);
        if (!file) fail_msg("%s", err.message);
        Tensor t;
        bool found = safetensors_get(file, name, &t, &err);
        safetensors_close(file);
        if (found) return t.dtype;
    }
    fail_msg("%s holds no %s", dir, name);
    return DTYPE_COUNT;
}

static float rounded(float x, DType dtype) {
    if (dtype == DTYPE_BF16) return bf16_to_f32(f32_to_bf16(x));
    if (dtype == DTYPE_F16) return f16_to_f32(f32_to_f16(x));
    return x;
}

static bool compare_frozen(void *context, const char *name, const Tensor *tensor, Error *err) {
    const Comparison *c = context;
    size_t n = (size_t)tensor_numel(tensor), n_other;
    float *ours = malloc(n * sizeof(float));
    const Ops *ops = model_ops(c->other);
    ops->download_f32(ops, ours, tensor->data, n);
    float *theirs = frozen_on_host(c->other, name, &n_other);
    assert_int_equal(n, n_other);
    DType dtype = DTYPE_F32;
    if (c->shard_dir) {
        char key[PARAM_NAME_MAX];
        snprintf(key, sizeof key, "%s", name);
        dtype = stored_dtype(c->shard_dir, key);
    }
    for (size_t i = 0; i < n; i++) {
        if (rounded(ours[i], dtype) != theirs[i]) fail_msg("%s[%zu]: %g vs %g (%s)", name, i, ours[i], theirs[i], dtype_name(dtype));
    }
    free(ours);
    free(theirs);
    return true;
}

static void assert_same_weights(Model *reference, Model *other, const char *shard_dir) {
    Comparison comparison = {other, shard_dir};
    Error err = {0};
    assert_true(model_visit_frozen(reference, compare_frozen, &comparison, &err));
}

// Two shards, BF16 then F16 (model.safetensors.index.json): each tensor is the
// fp32 original rounded to its shard's dtype.
static void test_llama_sharded_bf16_f16(void **state) {
    Model *single = load_model(FIXTURES "/llama/model", 4), *sharded = load_model(FIXTURES "/llama/sharded", 4);
    assert_same_weights(single, sharded, FIXTURES "/llama/sharded");
    assert_int_equal(stored_dtype(FIXTURES "/llama/sharded", "model.embed_tokens.weight"), DTYPE_BF16);
    assert_int_equal(stored_dtype(FIXTURES "/llama/sharded", "model.norm.weight"), DTYPE_F16);
    model_destroy(single);
    model_destroy(sharded);
}

// language_model.model.* (single file) and model.language_model.* (sharded) give the same model.
static void test_llava_both_layouts(void **state) {
    HfLayout legacy, current;
    Error err = {0};
    assert_true(hf_read_layout(FIXTURES "/llava/model", &legacy, &err));
    assert_true(hf_read_layout(FIXTURES "/llava/new_layout", &current, &err));
    assert_int_equal(legacy, HF_LAYOUT_LLAVA_LEGACY);
    assert_int_equal(current, HF_LAYOUT_LLAVA);
    Model *a = load_model(FIXTURES "/llava/model", 4), *b = load_model(FIXTURES "/llava/new_layout", 4);
    assert_same_weights(a, b, NULL);
    model_destroy(a);
    model_destroy(b);
}

static void assert_error(bool ok, const Error *err, const char *needle) {
    assert_false(ok);
    if (!strstr(err->message, needle)) fail_msg("error '%s' lacks '%s'", err->message, needle);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

// A copy of the sharded Llama folder with index.json replaced by index_text.
static const char *sharded_copy(const char *index_text) {
    const char *dir = make_temp_dir("hf-shards");
    char command[1024], path[1024];
    snprintf(command, sizeof command, "cp " FIXTURES "/llama/sharded/* %s/", dir);
    assert_int_equal(run_command(command), 0);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (index_text) write_text(path, index_text);
    return dir;
}

static void test_load_errors(void **state) {
    Error err = {0};
    LlamaConfig config;
    assert_true(hf_read_llama_config(FIXTURES "/llama/sharded", &config, &err));
    config.intermediate_size = 48;
    ModelOptions options = {.ops = ops_cpu(), .config = config, .max_batch = 1, .max_seq_len = 4,
                            .lora = {.r = 4, .alpha = 8, .targets = {[LORA_Q] = true}}};
    Model *narrow = model_create(&options, &err);
    assert_non_null(narrow);
    assert_error(hf_load_weights(narrow, FIXTURES "/llama/sharded", &err), &err,
                 "model-00001-of-00002.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape [64, 32], "
                 "expected [48, 32]");
    Model *model = load_model(FIXTURES "/llama/model", 4);
    const char *dir = sharded_copy(NULL);
    char path[1024];
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    assert_int_equal(remove(path), 0);
    assert_error(hf_load_weights(model, dir, &err), &err, "model-00002-of-00002.safetensors");
    assert_error(hf_load_weights(model, sharded_copy("{\"weight_map\": {\"lm_head.weight\": \"../x\"}}"), &err), &err,
                 "weight_map[\"lm_head.weight\"] = \"../x\" is not a file name in the folder");
    assert_error(hf_load_weights(model, sharded_copy("{\"weight_map\": {\"lm_head.weight\": "
                                                     "\"model-00002-of-00002.safetensors\"}}"), &err), &err,
                 "weight_map puts lm_head.weight in model-00002-of-00002.safetensors, which does not hold it");
    assert_error(hf_load_weights(model, sharded_copy("{\"weight_map\": {\"lm_head.weight\": "
                                                     "\"model-00001-of-00002.safetensors\"}}"), &err), &err,
                 "missing tensor model.layers.1.input_layernorm.weight");
    assert_error(hf_load_weights(model, sharded_copy("{\"weight_map\": []}"), &err), &err, "weight_map must be an object");
    dir = make_temp_dir("hf-llava-config");
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, "{\"model_type\": \"llava\"}");
    assert_error(hf_read_llama_config(dir, &config, &err), &err, "model_type \"llava\" needs a text_config object");
    write_text(path, "{\"model_type\": \"llava\", \"text_config\": {\"model_type\": \"mistral\"}}");
    assert_error(hf_read_llama_config(dir, &config, &err), &err, "config.json: text_config: model_type \"mistral\"");
    model_destroy(narrow);
    model_destroy(model);
}

// ----------------------------------------------------------------------------
// adapters for LLaVA bases: a language_model.model.* checkpoint gets the
// model.language_model.* module paths, as PEFT itself writes for it

static void test_llava_adapter_paths(void **state) {
    Model *model = load_model(FIXTURES "/llava/model", 4);
    Error err = {0};
    if (!adapter_load(model, FIXTURES "/llava/adapter", &err)) fail_msg("%s", err.message);
    const char *dir = make_temp_dir("llava-adapter");
    AdapterInfo info = {.base_model_name_or_path = "llava-base", .layout = HF_LAYOUT_LLAVA_LEGACY};
    if (!adapter_save(model, &info, dir, &err)) fail_msg("%s", err.message);
    char path[1024];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    SafetensorsFile *file = safetensors_open(path, &err);
    assert_non_null(file);
    Tensor t;
    assert_true(safetensors_get(file, "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_B.weight", &t, &err));
    safetensors_close(file);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_object *json = json_object_from_file(path), *targets = json_object_object_get(json, "target_modules");
    assert_int_equal(json_object_array_length(targets), 2 * LORA_TARGET_COUNT);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(targets, 0)),
                        "model.language_model.layers.0.mlp.down_proj");
    json_object_put(json);
    Model *reloaded = load_model(FIXTURES "/llava/model", 4);
    if (!adapter_load(reloaded, dir, &err)) fail_msg("%s", err.message);
    size_t n = model_params(model)->total;
    assert_memory_equal(model_param_data(model), model_param_data(reloaded), n * sizeof(float));
    model_destroy(model);
    model_destroy(reloaded);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_matches_peft),
        cmocka_unit_test(test_llava_matches_peft),
        cmocka_unit_test(test_llama_sharded_bf16_f16),
        cmocka_unit_test(test_llava_both_layouts),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_llava_adapter_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
