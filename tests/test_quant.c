// NF4 against bitsandbytes: codes, packed bytes, absmax, double quantization
// and dequantized values identical to scripts/ref_nf4.py (numpy, checked there
// against bitsandbytes 0.50); round-trip error bounds; a bitsandbytes-format
// checkpoint loads; a tiny model trained on NF4 weights learns like fp32; the
// resident size of Llama-3-8B's NF4 weights.
#include "run_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "quant/quant.h"
#include "trainer/trainer.h"

#define FIXTURES "tests/fixtures/nf4"

static SafetensorsFile *open_fixture(const char *name) {
    char path[512];
    snprintf(path, sizeof path, FIXTURES "/%s", name);
    Error err;
    SafetensorsFile *file = safetensors_open(path, &err);
    if (!file) fail_msg("%s (run scripts/ref_nf4.py)", err.message);
    return file;
}

static Tensor get(const SafetensorsFile *file, const char *name) {
    Tensor t;
    Error err;
    if (!safetensors_get(file, name, &t, &err)) fail_msg("fixture tensor %s: %s", name, err.message);
    return t;
}

static void assert_floats_identical(const float *a, const float *b, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) fail_msg("%s[%zu]: %.9g != %.9g", what, i, a[i], b[i]);
    }
}

static void test_code_and_dynamic_map(void **state) {
    SafetensorsFile *file = open_fixture("code.safetensors");
    float map[NF4_DYNAMIC_MAP_SIZE];
    nf4_dynamic_map(map);
    assert_floats_identical(NF4_CODE, get(file, "nf4_code").data, 16, "nf4 code");
    assert_floats_identical(map, get(file, "dynamic_map").data, NF4_DYNAMIC_MAP_SIZE, "dynamic map");
    safetensors_close(file);
}

// Quantizes the case's input with the host functions and through an Nf4Weight
// on the CPU backend: every stored and dequantized value identical.
static void check_case(const char *case_name) {
    char file_name[128];
    snprintf(file_name, sizeof file_name, "case_%s.safetensors", case_name);
    SafetensorsFile *file = open_fixture(file_name);
    Tensor input = get(file, "input");
    size_t n = (size_t)tensor_numel(&input), blocks = nf4_blocks(n, NF4_BLOCK);
    size_t nested = nf4_blocks(blocks, NF4_NESTED_BLOCK);
    uint8_t *packed = malloc(nf4_packed_bytes(n)), *absmax_q = malloc(blocks);
    float *absmax = malloc(blocks * sizeof(float)), *nested_absmax = malloc(nested * sizeof(float));
    float *out = malloc(n * sizeof(float)), *absmax_scratch = malloc(blocks * sizeof(float));
    float map[NF4_DYNAMIC_MAP_SIZE], offset;
    nf4_dynamic_map(map);
    nf4_quantize(input.data, n, packed, absmax);
    assert_memory_equal(packed, get(file, "packed").data, nf4_packed_bytes(n));
    assert_floats_identical(absmax, get(file, "absmax").data, blocks, "absmax");
    nf4_double_quantize(absmax, blocks, map, absmax_q, nested_absmax, &offset);
    assert_memory_equal(absmax_q, get(file, "absmax_q").data, blocks);
    assert_floats_identical(nested_absmax, get(file, "nested_absmax").data, nested, "nested_absmax");
    assert_floats_identical(&offset, get(file, "offset").data, 1, "offset");
    nf4_dequantize(out, packed, n, NF4_CODE, absmax);
    assert_floats_identical(out, get(file, "dequant_plain").data, n, "dequant without double quant");

    const Ops *ops = ops_cpu();
    Nf4Weight weight;
    Error err;
    assert_true(nf4_weight_alloc(&weight, ops, 1, (int64_t)n, true, &err));
    assert_true(nf4_weight_quantize_from(&weight, ops, input.data, &err));
    nf4_weight_dequantize(&weight, ops, out, absmax_scratch);
    assert_floats_identical(out, get(file, "dequant").data, n, "dequant");
    nf4_weight_free(&weight, ops);
    free(packed), free(absmax_q), free(absmax), free(nested_absmax), free(out), free(absmax_scratch);
    safetensors_close(file);
}

static void test_normal_identical(void **state) { check_case("normal"); }
static void test_heavy_tails_identical(void **state) { check_case("heavy_tails"); }
static void test_zeros_identical(void **state) { check_case("zeros"); }
static void test_odd_length_identical(void **state) { check_case("odd_length"); }

// Every value within half the widest gap of the NF4 code (1 - 0.6961928) / 2 of
// its block's absmax, plus what double quantization moves the absmax by; and
// the relative RMS error of N(0, 1)-like weights as NF4 gives (about 0.1).
static void check_round_trip(const float *w, size_t n, double max_rms) {
    const Ops *ops = ops_cpu();
    Nf4Weight weight;
    Error err;
    assert_true(nf4_weight_alloc(&weight, ops, 1, (int64_t)n, true, &err));
    assert_true(nf4_weight_quantize_from(&weight, ops, w, &err));
    float *out = malloc(n * sizeof(float)), *absmax = malloc(nf4_blocks(n, NF4_BLOCK) * sizeof(float));
    nf4_weight_dequantize(&weight, ops, out, absmax);
    double err_sq = 0, ref_sq = 0;
    for (size_t start = 0; start < n; start += NF4_BLOCK) {
        size_t len = n - start < NF4_BLOCK ? n - start : NF4_BLOCK;
        float block_max = 0;
        for (size_t i = 0; i < len; i++) block_max = fmaxf(block_max, fabsf(w[start + i]));
        double bound = block_max * (1 - 0.6961928009986877) / 2 + fabs(absmax[start / NF4_BLOCK] - block_max);
        for (size_t i = start; i < start + len; i++) {
            double diff = (double)out[i] - w[i];
            if (fabs(diff) > bound * (1 + 1e-6)) fail_msg("element %zu: %g -> %g, bound %g", i, w[i], out[i], bound);
            err_sq += diff * diff;
            ref_sq += (double)w[i] * w[i];
        }
    }
    double rms = sqrt(err_sq / ref_sq);
    print_message("relative RMS error %.4f over %zu values\n", rms, n);
    assert_true(rms < max_rms);
    free(out), free(absmax);
    nf4_weight_free(&weight, ops);
}

static void test_round_trip_random(void **state) {
    size_t n = 1 << 20;
    float *w = malloc(n * sizeof(float));
    Rng rng;
    rng_seed(&rng, 1);
    for (size_t i = 0; i < n; i++) w[i] = 0.02f * rng_normal(&rng);
    check_round_trip(w, n, 0.11);
    free(w);
}

// A Llama-3-8B down_proj-shaped row block (4096 x 512 of 4096 x 14336): heavy
// tails (Student-t, 3 degrees of freedom) and a few large outliers as in real weights.
static void test_round_trip_real_shaped(void **state) {
    size_t n = (size_t)4096 * 512;
    float *w = malloc(n * sizeof(float));
    Rng rng;
    rng_seed(&rng, 2);
    for (size_t i = 0; i < n; i++) {
        float z = rng_normal(&rng), chi2 = 0;
        for (int k = 0; k < 3; k++) {
            float g = rng_normal(&rng);
            chi2 += g * g;
        }
        w[i] = 0.01f * z / sqrtf(fmaxf(chi2, 1e-3f) / 3.0f);
        if (rng_below(&rng, 100000) == 0) w[i] *= 30;
    }
    check_round_trip(w, n, 0.15);
    free(w);
}

// ----------------------------------------------------------------------------
// models

static Model *tiny_model(bool nf4) {
    ModelOptions options = {.ops = ops_cpu(), .lora = {.r = 4, .alpha = 8, .targets = {true, true, true, true}},
                            .max_batch = 1, .max_seq_len = 8, .seed = 1, .nf4 = nf4, .nf4_double_quant = true};
    Error err;
    if (!hf_read_llama_config(FIXTURES "/prequantized", &options.config, &err)) fail_msg("%s", err.message);
    Model *model = model_create(&options, &err);
    if (!model) fail_msg("%s", err.message);
    return model;
}

typedef struct ExpectedWeights {
    SafetensorsFile *file;
    int checked;
} ExpectedWeights;

static bool check_nf4_weight(void *context, const char *name, Nf4Weight *weight, Error *err) {
    ExpectedWeights *expected = context;
    Tensor want = get(expected->file, name);
    size_t n = (size_t)tensor_numel(&want);
    float *out = malloc(n * sizeof(float)), *absmax = malloc(nf4_blocks(n, NF4_BLOCK) * sizeof(float));
    nf4_weight_dequantize(weight, ops_cpu(), out, absmax);
    assert_int_equal(weight->rows * weight->cols, n);
    assert_floats_identical(out, want.data, n, name);
    free(out), free(absmax);
    expected->checked++;
    return true;
}

static bool check_frozen_tensor(void *context, const char *name, const Tensor *tensor, Error *err) {
    ExpectedWeights *expected = context;
    Tensor want = get(expected->file, name);
    assert_int_equal(tensor_numel(tensor), tensor_numel(&want));
    assert_floats_identical(tensor->data, want.data, (size_t)tensor_numel(&want), name);
    expected->checked++;
    return true;
}

// bitsandbytes quantized and serialized these linears (as transformers saves
// a load_in_4bit model); loading them gives bitsandbytes' dequantized weights.
static void test_prequantized_checkpoint_loads(void **state) {
    Model *model = tiny_model(true);
    Error err;
    if (!hf_load_weights(model, FIXTURES "/prequantized", &err)) fail_msg("%s", err.message);
    ExpectedWeights expected = {open_fixture("prequantized_expected.safetensors"), 0};
    assert_true(model_visit_nf4(model, check_nf4_weight, &expected, &err));
    assert_int_equal(expected.checked, 2 * LORA_TARGET_COUNT);
    assert_true(model_visit_frozen(model, check_frozen_tensor, &expected, &err));
    assert_int_equal(expected.checked, 2 * LORA_TARGET_COUNT + 2 * 2 + 3);
    safetensors_close(expected.file);
    model_destroy(model);
}

// A bitsandbytes checkpoint is refused by a model without double quant, naming the tensor.
static void test_prequantized_mismatch_is_named(void **state) {
    ModelOptions options = {.ops = ops_cpu(), .lora = {.r = 4, .alpha = 8, .targets = {true}}, .max_batch = 1,
                            .max_seq_len = 8, .nf4 = true, .nf4_double_quant = false};
    Error err;
    assert_true(hf_read_llama_config(FIXTURES "/prequantized", &options.config, &err));
    Model *model = model_create(&options, &err);
    assert_non_null(model);
    assert_false(hf_load_weights(model, FIXTURES "/prequantized", &err));
    assert_non_null(strstr(err.message, "model.layers.0.self_attn.q_proj.weight"));
    model_destroy(model);
}

static TrainSummary train_tiny(const char *dir, const char *quantize) {
    Config config;
    config_defaults(&config);
    config_set_or_fail(&config, "model.path=%s/model", dir);
    config_set_or_fail(&config, "model.create_if_missing=%s", "tiny");
    config_set_or_fail(&config, "data.path=%s/data.jsonl", dir);
    config_set_or_fail(&config, "data.create_if_missing=%s", "demo");
    config_set_or_fail(&config, "checkpoint.dir=%s/out", dir);
    config_set_or_fail(&config, "model.quantize=%s", quantize);
    const char *recipe[] = {"data.max_seq_len=64", "lora.target=all", "lora.r=8", "lora.alpha=16",
                            "train.micro_batch=8", "train.max_steps=40", "train.lr=5e-3", "train.schedule=cosine",
                            "train.log_every=20", "train.backend=cpu"};
    for (size_t i = 0; i < sizeof recipe / sizeof recipe[0]; i++) config_set_or_fail(&config, "%s", recipe[i]);
    Error err;
    TrainSummary summary;
    if (!config_validate(&config, &err) || !train_run(&config, &summary, &err)) fail_msg("%s", err.message);
    return summary;
}

// The same base (written once as fp32, quantized on load) and data: the NF4
// run's loss curve ends close to the fp32 run's.
static void test_nf4_learns_like_fp32(void **state) {
    const char *dir = make_temp_dir("nf4_learns");
    TrainSummary full = train_tiny(dir, "none");
    TrainSummary nf4 = train_tiny(dir, "nf4");
    print_message("fp32 loss %.4f -> %.4f, nf4 %.4f -> %.4f\n", full.first_loss, full.last_loss, nf4.first_loss,
                  nf4.last_loss);
    assert_int_equal(nf4.steps, full.steps);
    assert_true(fabs(nf4.first_loss - full.first_loss) < 0.05 * full.first_loss);
    assert_true(nf4.last_loss < 0.6 * nf4.first_loss);
    assert_true(fabs(nf4.last_loss - full.last_loss) < 0.1 * full.last_loss);
}

// Resident bytes of Llama-3-8B with NF4 linears (double quant) and bf16
// embeddings, lm_head and norms, as lora-train plan would count them.
static void test_llama3_8b_resident_size(void **state) {
    LlamaConfig c;
    Error err;
    assert_true(llama_config_preset("llama3-8b", &c, &err));
    int64_t q = (int64_t)c.n_heads * c.head_dim, kv = (int64_t)c.n_kv_heads * c.head_dim;
    int64_t shapes[LORA_TARGET_COUNT][2] = {{q, c.hidden_size}, {kv, c.hidden_size}, {kv, c.hidden_size},
                                            {c.hidden_size, q}, {c.intermediate_size, c.hidden_size},
                                            {c.intermediate_size, c.hidden_size}, {c.hidden_size, c.intermediate_size}};
    double linears = 0, linears_single = 0;
    for (int t = 0; t < LORA_TARGET_COUNT; t++) {
        linears += (double)nf4_weight_bytes(shapes[t][0], shapes[t][1], true) * c.n_layers;
        linears_single += (double)nf4_weight_bytes(shapes[t][0], shapes[t][1], false) * c.n_layers;
    }
    double embeddings = 2.0 * c.vocab_size * c.hidden_size * 2, norms = (2.0 * c.n_layers + 1) * c.hidden_size * 2;
    double total = linears + embeddings + norms;
    print_message("Llama-3-8B NF4 linears: %.3f GB with double quant (%.3f GB without); + bf16 embeddings, lm_head "
                  "and norms %.3f GB = %.3f GB resident\n", linears / 1e9, linears_single / 1e9,
                  (embeddings + norms) / 1e9, total / 1e9);
    assert_true(linears < linears_single);
    assert_true(total < 5.8e9);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_code_and_dynamic_map),
        cmocka_unit_test(test_normal_identical),
        cmocka_unit_test(test_heavy_tails_identical),
        cmocka_unit_test(test_zeros_identical),
        cmocka_unit_test(test_odd_length_identical),
        cmocka_unit_test(test_round_trip_random),
        cmocka_unit_test(test_round_trip_real_shaped),
        cmocka_unit_test(test_prequantized_checkpoint_loads),
        cmocka_unit_test(test_prequantized_mismatch_is_named),
        cmocka_unit_test(test_nf4_learns_like_fp32),
        cmocka_unit_test(test_llama3_8b_resident_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
