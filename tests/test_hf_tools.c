// lora-train init-model, tokenize and export: the command line against
// Hugging Face references (tokenizers' ids in tests/fixtures/hf_tokenizer,
// transformers + PEFT logits in tests/fixtures/hf).
#include "test_util.h"

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"

#define FIXTURES "tests/fixtures/hf"

static const char *lora_train_bin(void) {
    const char *bin = getenv("LORA_TRAIN_BIN");
    return bin ? bin : "build/lora-train";
}

static int run_tool(const char *args) {
    char command[8192];
    snprintf(command, sizeof command, "%s %s", lora_train_bin(), args);
    return run_command(command);
}

// ----------------------------------------------------------------------------
// tokenize

// Every case of a reference.json made by tokenizers, with and without special tokens.
static void check_tokenize(const char *name, bool special) {
    char reference[256], input[1024], output[1024], args[4096];
    snprintf(reference, sizeof reference, "tests/fixtures/hf_tokenizer/%s/reference.json", name);
    json_object *ref = json_object_from_file(reference), *cases = json_object_object_get(ref, "cases");
    assert_non_null(cases);
    const char *dir = make_temp_dir("tokenize");
    snprintf(input, sizeof input, "%s/in.json", dir);
    snprintf(output, sizeof output, "%s/out.json", dir);
    json_object *texts = json_object_new_array();
    size_t n = json_object_array_length(cases);
    for (size_t i = 0; i < n; i++) {
        json_object *text = json_object_object_get(json_object_array_get_idx(cases, i), "text");
        json_object_array_add(texts, json_object_get(text));
    }
    assert_int_equal(json_object_to_file(input, texts), 0);
    snprintf(args, sizeof args, "tokenize --tokenizer tests/fixtures/hf_tokenizer/%s %s < %s > %s", name,
             special ? "--special" : "", input, output);
    assert_int_equal(run_tool(args), 0);
    json_object *ours = json_object_from_file(output);
    assert_int_equal(json_object_array_length(ours), n);
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(cases, i);
        const char *want = json_object_to_json_string(json_object_object_get(c, special ? "ids_with_special" : "ids"));
        const char *got = json_object_to_json_string(json_object_array_get_idx(ours, i));
        if (strcmp(want, got) != 0) fail_msg("%s case %zu: %s, tokenizers gives %s", name, i, got, want);
    }
    json_object_put(ours);
    json_object_put(texts);
    json_object_put(ref);
}

static void test_tokenize_matches_tokenizers(void **state) {
    const char *names[] = {"llama3_style", "sentencepiece_style", "wordpiece_style"};
    for (int i = 0; i < 3; i++) {
        check_tokenize(names[i], false);
        check_tokenize(names[i], true);
    }
    assert_int_not_equal(run_tool("tokenize --tokenizer tests/fixtures/hf_tokenizer/llama3_style < /dev/null 2>/dev/null"), 0);
    assert_int_not_equal(run_tool("tokenize < /dev/null 2>/dev/null"), 0);
}

// ----------------------------------------------------------------------------
// init-model

static Model *model_from(const char *dir, bool lora_all) {
    Error err = {0};
    LlamaConfig config;
    if (!hf_read_llama_config(dir, &config, &err)) fail_msg("%s", err.message);
    ModelOptions options = {.ops = ops_cpu(), .config = config, .max_batch = 1, .max_seq_len = 16,
                            .lora = {.r = 4, .alpha = 8}, .seed = 3};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = lora_all || t == LORA_Q;
    Model *model = model_create(&options, &err);
    if (!model || !hf_load_weights(model, dir, &err)) fail_msg("%s", err.message);
    return model;
}

static void test_init_model(void **state) {
    char args[1024];
    const char *dir = make_temp_dir("init-preset");
    snprintf(args, sizeof args, "init-model --arch llama --preset tiny --out %s/m > /dev/null", dir);
    assert_int_equal(run_tool(args), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/m", dir);
    Model *model = model_from(path, false);
    assert_int_equal(model_config(model)->vocab_size, 262);
    model_destroy(model);
    snprintf(args, sizeof args,
             "init-model --arch llama --config-json " FIXTURES "/llava/model/config.json "
             "--tokenizer tests/fixtures/hf_tokenizer/wordpiece_style/tokenizer.json --out %s/c > /dev/null 2>&1", dir);
    assert_int_not_equal(run_tool(args), 0); // the tokenizer has more tokens than vocab_size 96
    snprintf(args, sizeof args, "init-model --arch llama --config-json " FIXTURES "/llava/model/config.json --out %s/c > /dev/null", dir);
    assert_int_equal(run_tool(args), 0);
    snprintf(path, sizeof path, "%s/c", dir);
    model = model_from(path, false);
    const LlamaConfig *c = model_config(model);
    assert_true(c->vocab_size == 96 && c->hidden_size == 32 && c->n_kv_heads == 2 && c->head_dim == 8);
    model_destroy(model);
    assert_int_not_equal(run_tool("init-model --arch llama --preset huge --out /tmp/x 2>/dev/null"), 0);
    assert_int_not_equal(run_tool("init-model --arch gpt2 --preset tiny --out /tmp/x 2>/dev/null"), 0);
}

// ----------------------------------------------------------------------------
// export

static float reference_logits_error(Model *model, const char *reference_path) {
    Error err = {0};
    SafetensorsFile *ref = safetensors_open(reference_path, &err);
    assert_non_null(ref);
    Tensor ids, logits;
    assert_true(safetensors_get(ref, "input_ids", &ids, &err) && safetensors_get(ref, "logits", &logits, &err));
    int T = (int)ids.shape[1];
    int32_t tokens[16], targets[16];
    for (int t = 0; t < T; t++) {
        tokens[t] = (int32_t)((const int64_t *)ids.data)[t];
        targets[t] = -100;
    }
    Batch batch = {.B = 1, .T = T, .tokens = tokens, .targets = targets};
    size_t n = (size_t)tensor_numel(&logits);
    float *ours = malloc(n * sizeof(float));
    if (!model_logits(model, &batch, ours, &err)) fail_msg("%s", err.message);
    const float *theirs = logits.data;
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)ours[i] - theirs[i]));
        scale = fmax(scale, fabs((double)theirs[i]));
    }
    free(ours);
    safetensors_close(ref);
    return (float)(worst / scale);
}

// The merged model alone (LoRA B = 0) gives PEFT's logits of base + adapter.
static void check_merged(const char *name, const char *base) {
    const char *dir = make_temp_dir("export");
    char args[2048], path[512], reference[256];
    snprintf(args, sizeof args, "export --checkpoint " FIXTURES "/%s/adapter --base " FIXTURES "/%s/%s --format merged --out %s/merged",
             name, name, base, dir);
    assert_int_equal(run_tool(args), 0);
    snprintf(path, sizeof path, "%s/merged", dir);
    Model *model = model_from(path, true);
    snprintf(reference, sizeof reference, FIXTURES "/%s/reference.safetensors", name);
    float error = reference_logits_error(model, reference);
    print_message("%s/%s merged: logits vs PEFT relative error %.3g\n", name, base, (double)error);
    assert_true(error < 1e-4);
    model_destroy(model);
}

static void test_export_merged(void **state) {
    check_merged("llama", "model");
    check_merged("llava", "model");
    check_merged("llava", "new_layout");
}

// A BF16/F16 base stays BF16/F16, tensor by tensor, under its own names.
static void test_export_merged_keeps_dtypes(void **state) {
    const char *dir = make_temp_dir("export-bf16");
    char args[1024], path[512];
    snprintf(args, sizeof args, "export --checkpoint " FIXTURES "/llama/adapter --base " FIXTURES "/llama/sharded "
             "--format merged --out %s", dir);
    assert_int_equal(run_tool(args), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    Error err = {0};
    SafetensorsFile *merged = safetensors_open(path, &err);
    assert_non_null(merged);
    Tensor t;
    assert_true(safetensors_get(merged, "model.embed_tokens.weight", &t, &err));
    assert_int_equal(t.dtype, DTYPE_BF16);
    assert_true(safetensors_get(merged, "model.layers.1.self_attn.v_proj.weight", &t, &err));
    assert_int_equal(t.dtype, DTYPE_F16);
    assert_int_equal(safetensors_count(merged), 3 + 2 * 9);
    safetensors_close(merged);
    snprintf(args, sizeof args, "export --checkpoint %s --format merged --out %s/none 2>/dev/null", dir, dir);
    assert_int_not_equal(run_tool(args), 0); // no adapter_config.json to name the base
}

static void test_export_peft_copies(void **state) {
    const char *dir = make_temp_dir("export-peft");
    char args[1024];
    snprintf(args, sizeof args, "export --checkpoint " FIXTURES "/llama/adapter --format peft --out %s/a", dir);
    assert_int_equal(run_tool(args), 0);
    snprintf(args, sizeof args, "cmp " FIXTURES "/llama/adapter/adapter_model.safetensors %s/a/adapter_model.safetensors", dir);
    assert_int_equal(run_command(args), 0);
    assert_int_not_equal(run_tool("export --checkpoint x --format gguf --out /tmp/x 2>/dev/null"), 0);
}

// transformers loads the merged folders and gives PEFT's logits.
static void test_merged_loads_in_transformers(void **state) {
    if (run_command("python3 -c 'import transformers, safetensors' 2>/dev/null") != 0) {
        print_message("python3 with transformers is not available\n");
        skip();
    }
    const char *dir = make_temp_dir("export-hf");
    const char *cases[][2] = {{"llama", "model"}, {"llava", "model"}};
    for (int i = 0; i < 2; i++) {
        char args[2048];
        snprintf(args, sizeof args, "export --checkpoint " FIXTURES "/%s/adapter --base " FIXTURES "/%s/%s --format merged "
                 "--out %s/%s", cases[i][0], cases[i][0], cases[i][1], dir, cases[i][0]);
        assert_int_equal(run_tool(args), 0);
        snprintf(args, sizeof args, "python3 scripts/check_merged_hf.py %s/%s " FIXTURES "/%s/reference.safetensors > %s/%s.log 2>&1",
                 dir, cases[i][0], cases[i][0], dir, cases[i][0]);
        if (run_command(args) != 0) fail_msg("transformers rejected the merged %s model (see %s/%s.log)", cases[i][0], dir, cases[i][0]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokenize_matches_tokenizers),
        cmocka_unit_test(test_init_model),
        cmocka_unit_test(test_export_merged),
        cmocka_unit_test(test_export_merged_keeps_dtypes),
        cmocka_unit_test(test_export_peft_copies),
        cmocka_unit_test(test_merged_loads_in_transformers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
