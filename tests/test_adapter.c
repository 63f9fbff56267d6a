// PEFT adapters and Hugging Face model folders: save, load back bit-exactly,
// clear errors on mismatches, and (when transformers + PEFT are installed)
// logits of the saved model + adapter through PEFT equal ours.
#include "test_util.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"

#define TINY_RANK 4

static Model *tiny_model(const LlamaConfig *config, int r, const bool targets[LORA_TARGET_COUNT], uint64_t seed) {
    ModelOptions options = {.ops = ops_cpu(), .config = *config, .max_batch = 1, .max_seq_len = 8, .seed = seed};
    options.lora = (LoraConfig){.r = r, .alpha = 8, .dropout = 0.05f};
    memcpy(options.lora.targets, targets, sizeof options.lora.targets);
    Error err = {0};
    Model *model = model_create(&options, &err);
    if (!model) fail_msg("model_create: %s", err.message);
    if (!model_init_random_base(model, seed, &err)) fail_msg("model_init_random_base: %s", err.message);
    return model;
}

static LlamaConfig tiny_config(void) {
    LlamaConfig config;
    Error err;
    assert_true(llama_config_preset("tiny", &config, &err));
    return config;
}

static const bool TARGETS_QV[LORA_TARGET_COUNT] = {[LORA_Q] = true, [LORA_V] = true};

// LoRA A and B filled with random values (B is 0 after init), so loads are observable.
static void randomize_params(Model *model, uint64_t seed) {
    size_t n = model_params(model)->total;
    float *host = malloc(n * sizeof(float));
    Rng rng;
    rng_seed(&rng, seed);
    fill_uniform(host, n, -0.5f, 0.5f, &rng);
    const Ops *ops = model_ops(model);
    ops->upload(ops, model_param_data(model), host, n * sizeof(float));
    model_sync_params(model);
    free(host);
}

static float *params_on_host(Model *model) {
    size_t n = model_params(model)->total;
    float *host = malloc(n * sizeof(float));
    const Ops *ops = model_ops(model);
    ops->download(ops, host, model_param_data(model), n * sizeof(float));
    return host;
}

static const char *path_in(const char *dir, const char *file) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    return path;
}

static void assert_error(bool ok, const Error *err, const char *needle) {
    assert_false(ok);
    if (!strstr(err->message, needle)) fail_msg("error '%s' lacks '%s'", err->message, needle);
}

// ----------------------------------------------------------------------------
// adapters

// The shortest decimal that reads back as the same float, as Python's repr.
static void test_float_shortest(void **state) {
    const struct { float value; const char *text; } cases[] = {
        {0.05f, "0.05"}, {0.1f, "0.1"}, {0.0f, "0.0"}, {16.0f, "16.0"}, {1e-5f, "1e-05"},
        {0.33333334f, "0.33333334"}, {3.4028235e38f, "3.4028235e+38"}, {1e-45f, "1e-45"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[32];
        format_float_shortest(cases[i].value, text, sizeof text);
        assert_string_equal(text, cases[i].text);
        assert_true(strtof(text, NULL) == cases[i].value);
    }
}

static void test_adapter_config_and_keys(void **state) {
    LlamaConfig config = tiny_config();
    Model *model = tiny_model(&config, TINY_RANK, TARGETS_QV, 1);
    const char *dir = make_temp_dir("adapter");
    Error err = {0};
    AdapterInfo info = {.base_model_name_or_path = "tiny-base"};
    if (!adapter_save(model, &info, dir, &err)) fail_msg("%s", err.message);

    json_object *json = json_object_from_file(path_in(dir, "adapter_config.json")), *v;
    assert_non_null(json);
    assert_string_equal(json_object_get_string(json_object_object_get(json, "peft_type")), "LORA");
    assert_string_equal(json_object_get_string(json_object_object_get(json, "task_type")), "CAUSAL_LM");
    assert_string_equal(json_object_get_string(json_object_object_get(json, "base_model_name_or_path")), "tiny-base");
    assert_string_equal(json_object_get_string(json_object_object_get(json, "bias")), "none");
    assert_int_equal(json_object_get_int(json_object_object_get(json, "r")), TINY_RANK);
    assert_true(json_object_is_type(json_object_object_get(json, "lora_alpha"), json_type_int));
    assert_int_equal(json_object_get_int(json_object_object_get(json, "lora_alpha")), 8);
    assert_float_equal(json_object_get_double(json_object_object_get(json, "lora_dropout")), 0.05, 1e-7);
    char *text;
    size_t size;
    if (!read_file(path_in(dir, "adapter_config.json"), &text, &size, &err)) fail_msg("%s", err.message);
    if (!strstr(text, "\"lora_dropout\": 0.05,")) fail_msg("lora_dropout not written as Python does: %s", text);
    free(text);
    assert_string_equal(json_object_to_json_string(json_object_object_get(json, "target_modules")), "[ \"q_proj\", \"v_proj\" ]");
    assert_true(json_object_object_get_ex(json, "modules_to_save", &v) && v == NULL);
    assert_false(json_object_get_boolean(json_object_object_get(json, "use_rslora")));
    assert_false(json_object_get_boolean(json_object_object_get(json, "use_dora")));
    assert_false(json_object_get_boolean(json_object_object_get(json, "fan_in_fan_out")));
    assert_true(json_object_get_boolean(json_object_object_get(json, "inference_mode")));
    assert_true(json_object_get_boolean(json_object_object_get(json, "init_lora_weights")));
    json_object_put(json);

    SafetensorsFile *file = safetensors_open(path_in(dir, "adapter_model.safetensors"), &err);
    assert_non_null(file);
    const ParamTable *table = model_params(model);
    assert_int_equal(table->count, config.n_layers * 2 * 2);
    assert_int_equal(safetensors_count(file), table->count);
    // q: A (r, C), B (n_heads * hd, r); v: B (n_kv_heads * hd, r)
    const struct { const char *key; int64_t rows, cols; } expected[] = {
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", TINY_RANK, config.hidden_size},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", config.n_heads * config.head_dim, TINY_RANK},
        {"base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight", TINY_RANK, config.hidden_size},
        {"base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight", config.n_kv_heads * config.head_dim, TINY_RANK},
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        Tensor t;
        if (!safetensors_get(file, expected[i].key, &t, &err)) fail_msg("%s", err.message);
        assert_int_equal(t.dtype, DTYPE_F32);
        assert_int_equal(t.ndim, 2);
        assert_int_equal(t.shape[0], expected[i].rows);
        assert_int_equal(t.shape[1], expected[i].cols);
    }
    for (int i = 0; i < table->count; i++) {
        char key[256];
        snprintf(key, sizeof key, "base_model.model.%s", table->entries[i].name);
        Tensor t;
        assert_true(safetensors_get(file, key, &t, &err));
        assert_int_equal(t.shape[0], table->entries[i].shape[0]);
        assert_int_equal(t.shape[1], table->entries[i].shape[1]);
    }
    assert_string_equal(safetensors_metadata(file, "format"), "pt");
    safetensors_close(file);
    model_destroy(model);
}

static void test_adapter_round_trip_bit_exact(void **state) {
    LlamaConfig config = tiny_config();
    Model *saved = tiny_model(&config, TINY_RANK, TARGETS_QV, 1);
    Model *loaded = tiny_model(&config, TINY_RANK, TARGETS_QV, 2);
    randomize_params(saved, 3);
    const char *dir = make_temp_dir("adapter-rt");
    Error err = {0};
    if (!adapter_save(saved, NULL, dir, &err)) fail_msg("%s", err.message);
    float *want = params_on_host(saved), *before = params_on_host(loaded);
    size_t bytes = model_params(saved)->total * sizeof(float);
    assert_true(memcmp(want, before, bytes) != 0);
    if (!adapter_load(loaded, dir, &err)) fail_msg("%s", err.message);
    float *got = params_on_host(loaded);
    assert_memory_equal(got, want, bytes);
    free(want);
    free(before);
    free(got);
    model_destroy(saved);
    model_destroy(loaded);
}

static void test_adapter_load_mismatches(void **state) {
    LlamaConfig config = tiny_config();
    Model *saved = tiny_model(&config, TINY_RANK, TARGETS_QV, 1);
    const char *dir = make_temp_dir("adapter-bad");
    Error err = {0};
    assert_true(adapter_save(saved, NULL, dir, &err));

    Model *other_rank = tiny_model(&config, 8, TARGETS_QV, 1);
    assert_error(adapter_load(other_rank, dir, &err), &err, "r = 4, lora_alpha = 8 but the model has r = 8");
    const bool qkv[LORA_TARGET_COUNT] = {[LORA_Q] = true, [LORA_K] = true, [LORA_V] = true};
    Model *more_targets = tiny_model(&config, TINY_RANK, qkv, 1);
    assert_error(adapter_load(more_targets, dir, &err), &err,
                 "missing tensor base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight");
    const bool q_only[LORA_TARGET_COUNT] = {[LORA_Q] = true};
    Model *fewer_targets = tiny_model(&config, TINY_RANK, q_only, 1);
    assert_error(adapter_load(fewer_targets, dir, &err), &err, "self_attn.v_proj.lora_");
    assert_non_null(strstr(err.message, "is not a LoRA parameter of this model"));
    assert_error(adapter_load(saved, "/nonexistent", &err), &err, "/nonexistent/adapter_config.json");
    model_destroy(other_rank);
    model_destroy(more_targets);
    model_destroy(fewer_targets);
    model_destroy(saved);
}

// ----------------------------------------------------------------------------
// Hugging Face model folders

typedef struct FrozenCompare {
    Model *other;
    int count;
} FrozenCompare;

static bool assert_same_frozen(void *context, const char *name, const Tensor *tensor, Error *err) {
    FrozenCompare *compare = context;
    Tensor other;
    assert_true(model_frozen_tensor(compare->other, name, &other, err));
    size_t n = (size_t)tensor_numel(tensor);
    assert_int_equal(n, tensor_numel(&other));
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    const Ops *ops = model_ops(compare->other);
    ops->download_f32(ops, a, tensor->data, n);
    ops->download_f32(ops, b, other.data, n);
    if (memcmp(a, b, n * sizeof(float)) != 0) fail_msg("frozen tensor %s differs after save + load", name);
    free(a);
    free(b);
    compare->count++;
    return true;
}

static void assert_configs_equal(const LlamaConfig *a, const LlamaConfig *b) {
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->hidden_size, b->hidden_size);
    assert_int_equal(a->intermediate_size, b->intermediate_size);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->n_heads, b->n_heads);
    assert_int_equal(a->n_kv_heads, b->n_kv_heads);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->max_position, b->max_position);
    assert_true(a->rms_eps == b->rms_eps && a->rope_theta == b->rope_theta);
    assert_int_equal(a->rope_scaling.llama3, b->rope_scaling.llama3);
    assert_true(a->rope_scaling.factor == b->rope_scaling.factor);
    assert_int_equal(a->rope_scaling.original_max_position, b->rope_scaling.original_max_position);
    assert_int_equal(a->tie_embeddings, b->tie_embeddings);
    assert_int_equal(a->bos_token_id, b->bos_token_id);
    assert_int_equal(a->eos_token_id, b->eos_token_id);
}

static void round_trip_model(const LlamaConfig *config, int expected_tensors) {
    Model *saved = tiny_model(config, TINY_RANK, TARGETS_QV, 1);
    Model *loaded = tiny_model(config, TINY_RANK, TARGETS_QV, 2);
    const char *dir = make_temp_dir("hf-model");
    Error err = {0};
    if (!hf_save_model(saved, dir, &err)) fail_msg("%s", err.message);
    LlamaConfig read_back;
    if (!hf_read_llama_config(dir, &read_back, &err)) fail_msg("%s", err.message);
    assert_configs_equal(&read_back, config);
    if (!hf_load_weights(loaded, dir, &err)) fail_msg("%s", err.message);
    FrozenCompare compare = {loaded, 0};
    assert_true(model_visit_frozen(saved, assert_same_frozen, &compare, &err));
    assert_int_equal(compare.count, expected_tensors);
    SafetensorsFile *file = safetensors_open(path_in(dir, "model.safetensors"), &err);
    assert_non_null(file);
    assert_int_equal(safetensors_count(file), expected_tensors);
    safetensors_close(file);
    model_destroy(saved);
    model_destroy(loaded);
}

static void test_hf_model_round_trip(void **state) {
    LlamaConfig config = tiny_config();
    int per_layer = 2 + LORA_TARGET_COUNT; // two norms and seven linears
    round_trip_model(&config, 3 + config.n_layers * per_layer);
    config.tie_embeddings = true;
    config.rope_scaling = (RopeScaling){.llama3 = true, .factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                                        .original_max_position = 256};
    round_trip_model(&config, 2 + config.n_layers * per_layer);
}

static void test_hf_load_mismatches(void **state) {
    LlamaConfig config = tiny_config();
    Model *saved = tiny_model(&config, TINY_RANK, TARGETS_QV, 1);
    const char *dir = make_temp_dir("hf-bad");
    Error err = {0};
    assert_true(hf_save_model(saved, dir, &err));
    LlamaConfig narrow = config;
    narrow.intermediate_size = 48;
    Model *other = tiny_model(&narrow, TINY_RANK, TARGETS_QV, 1);
    assert_error(hf_load_weights(other, dir, &err), &err,
                 "tensor model.layers.0.mlp.gate_proj.weight has shape [64, 32], expected [48, 32]");
    LlamaConfig untied = config;
    untied.tie_embeddings = true;
    Model *tied = tiny_model(&untied, TINY_RANK, TARGETS_QV, 1);
    assert_true(hf_save_model(tied, dir, &err));
    assert_error(hf_load_weights(saved, dir, &err), &err, "missing tensor lm_head.weight");
    assert_error(hf_load_weights(saved, "/nonexistent", &err), &err, "/nonexistent/model.safetensors");
    model_destroy(saved);
    model_destroy(other);
    model_destroy(tied);
}

// ----------------------------------------------------------------------------
// config.json variants

static bool read_config_text(const char *text, LlamaConfig *out, Error *err) {
    const char *dir = make_temp_dir("hf-config");
    FILE *f = fopen(path_in(dir, "config.json"), "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
    return hf_read_llama_config(dir, out, err);
}

// transformers 5 layout (rope_parameters), eos list, defaults for head_dim and kv heads.
static void test_hf_config_variants(void **state) {
    LlamaConfig c;
    Error err = {0};
    bool ok = read_config_text("{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, "
                               "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                               "\"eos_token_id\": [7, 9], \"rope_parameters\": {\"rope_type\": \"llama3\", "
                               "\"rope_theta\": 500000.0, \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                               "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}", &c, &err);
    if (!ok) fail_msg("%s", err.message);
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.eos_token_id, 7);
    assert_int_equal(c.bos_token_id, 1);
    assert_true(c.rope_theta == 500000.0f && c.rope_scaling.llama3 && c.rope_scaling.factor == 8.0f);
    assert_true(c.rms_eps == 1e-6f && !c.tie_embeddings);
    ok = read_config_text("{\"num_key_value_heads\": 8, \"rope_theta\": 10000, \"head_dim\": 64, "
                          "\"rope_scaling\": {\"type\": \"llama3\", \"factor\": 2, \"original_max_position_embeddings\": 4096}}",
                          &c, &err);
    if (!ok) fail_msg("%s", err.message);
    assert_true(c.rope_scaling.llama3 && c.rope_scaling.factor == 2.0f && c.rope_scaling.high_freq_factor == 4.0f);
    assert_int_equal(c.rope_scaling.original_max_position, 4096);
    assert_int_equal(c.head_dim, 64);
    assert_error(read_config_text("{\"hidden_size\": \"big\"}", &c, &err), &err, "config.json: hidden_size must be an integer");
    assert_error(read_config_text("{\"model_type\": \"mistral\"}", &c, &err), &err, "model_type \"mistral\" is not \"llama\"");
    assert_error(read_config_text("{\"rope_scaling\": {\"rope_type\": \"yarn\"}}", &c, &err), &err, "\"yarn\" is not supported");
    assert_error(read_config_text("{\"attention_bias\": true}", &c, &err), &err, "attention_bias");
    assert_error(read_config_text("{\"num_attention_heads\": 6, \"num_key_value_heads\": 4}", &c, &err), &err,
                 "num_attention_heads (6) must be a positive multiple");
    assert_error(read_config_text("{\"vocab_size\": ", &c, &err), &err,
                 "config.json: not valid JSON: the text ends at line 1, column 16 inside an unfinished value");
    assert_error(read_config_text("{\"vocab_size\": 32,\n \"hidden_size\" 64}", &c, &err), &err,
                 "config.json: not valid JSON at line 2, column 16: ");
    assert_error(read_config_text("{\"vocab_size\": 32} 64", &c, &err), &err,
                 "config.json: not valid JSON: text after the object at line 1, column 20");
}

// ----------------------------------------------------------------------------
// PEFT reads what we write: same logits as our forward

static double *read_peft_logits(const char *path, size_t n) {
    json_object *json = json_object_from_file(path);
    assert_non_null(json);
    json_object *values = json_object_object_get(json, "logits");
    assert_int_equal(json_object_array_length(values), n);
    double *logits = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) logits[i] = json_object_get_double(json_object_array_get_idx(values, i));
    json_object_put(json);
    return logits;
}

static void test_peft_logits_match(void **state) {
    if (run_command("python3 -c 'import peft, transformers' 2>/dev/null") != 0) {
        print_message("python3 with transformers and peft is not available\n");
        skip();
    }
    LlamaConfig config = tiny_config();
    Model *model = tiny_model(&config, TINY_RANK, TARGETS_QV, 1);
    randomize_params(model, 5);
    const char *dir = make_temp_dir("peft");
    char model_dir[512], adapter_dir[512], command[2048];
    snprintf(model_dir, sizeof model_dir, "%s/model", dir);
    snprintf(adapter_dir, sizeof adapter_dir, "%s/adapter", dir);
    Error err = {0};
    AdapterInfo info = {.base_model_name_or_path = model_dir};
    assert_true(hf_save_model(model, model_dir, &err) && adapter_save(model, &info, adapter_dir, &err));
    snprintf(command, sizeof command,
             "python3 scripts/check_adapter_peft.py %s %s --tokens 1,5,9,2,7,3,8,4 --out %s/logits.json > %s/peft.log 2>&1",
             model_dir, adapter_dir, dir, dir);
    if (run_command(command) != 0) fail_msg("PEFT could not load %s + %s (see %s/peft.log)", model_dir, adapter_dir, dir);
    int32_t tokens[8] = {1, 5, 9, 2, 7, 3, 8, 4}, targets[8] = {5, 9, 2, 7, 3, 8, 4, 1};
    Batch batch = {.B = 1, .T = 8, .tokens = tokens, .targets = targets};
    size_t n = (size_t)8 * config.vocab_size;
    float *ours = malloc(n * sizeof(float));
    if (!model_logits(model, &batch, ours, &err)) fail_msg("%s", err.message);
    double *peft = read_peft_logits(path_in(dir, "logits.json"), n);
    // normwise relative error ||ours - peft|| / ||peft||, fp32 against fp32
    double diff_squares = 0, ref_squares = 0, max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)ours[i] - peft[i];
        diff_squares += d * d;
        ref_squares += peft[i] * peft[i];
        max_abs = fmax(max_abs, fabs(d));
    }
    double error = sqrt(diff_squares / ref_squares);
    print_message("our logits vs PEFT: relative error %.3g, max |diff| %.3g\n", error, max_abs);
    assert_true(error < 1e-5);
    free(ours);
    free(peft);
    model_destroy(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_float_shortest), cmocka_unit_test(test_adapter_config_and_keys),
        cmocka_unit_test(test_adapter_round_trip_bit_exact),
        cmocka_unit_test(test_adapter_load_mismatches),
        cmocka_unit_test(test_hf_model_round_trip),
        cmocka_unit_test(test_hf_load_mismatches),
        cmocka_unit_test(test_hf_config_variants),
        cmocka_unit_test(test_peft_logits_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
