// Model-level tests: LoRA identities, the whole model's LoRA gradients against
// finite differences, gradient accumulation, activation checkpointing, packed rows
// and the loss sum read once per optimizer step.
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "model/model.h"
#include "optim/optim.h"
#include "trainer/trainer.h"

enum { BATCH = 2, SEQ = 9 };

static ModelOptions tiny_options(bool lora_everywhere, bool checkpointing, float dropout) {
    ModelOptions options = {.ops = ops_cpu(), .max_batch = 4, .max_seq_len = 32,
                            .activation_checkpointing = checkpointing, .lm_head_chunk = 5, .seed = 7};
    Error err;
    assert_true(llama_config_preset("tiny", &options.config, &err));
    options.config.rope_scaling = (RopeScaling){.llama3 = true, .factor = 8, .low_freq_factor = 1,
                                                .high_freq_factor = 4, .original_max_position = 16};
    options.lora = (LoraConfig){.r = 4, .alpha = 8, .dropout = dropout};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = lora_everywhere;
    return options;
}

static Model *make_model(const ModelOptions *options) {
    Error err;
    Model *model = model_create(options, &err);
    if (!model) fail_msg("model_create: %s", err.message);
    if (!model_init_random_base(model, 1234, &err)) fail_msg("model_init_random_base: %s", err.message);
    return model;
}

// Fills every LoRA B (and A) with random values so LoRA changes the output.
static void randomise_lora(Model *model, uint64_t seed) {
    const ParamTable *table = model_params(model);
    Rng rng;
    rng_seed(&rng, seed);
    fill_uniform(model_param_data(model), table->total, -0.2f, 0.2f, &rng);
    model_sync_params(model);
}

static void fixed_batch(int32_t *tokens, int32_t *targets, int n, int vocab) {
    Rng rng;
    rng_seed(&rng, 99);
    for (int i = 0; i < n; i++) {
        tokens[i] = (int32_t)rng_below(&rng, (uint64_t)vocab);
        targets[i] = i % 4 == 3 ? IGNORE_INDEX : (int32_t)rng_below(&rng, (uint64_t)vocab);
    }
}

static float *logits_of(Model *model, const Batch *batch) {
    size_t n = (size_t)batch->B * batch->T * model_config(model)->vocab_size;
    float *logits = malloc(n * sizeof(float));
    poison(logits, n);
    Error err;
    if (!model_logits(model, batch, logits, &err)) fail_msg("model_logits: %s", err.message);
    assert_all_finite(logits, n);
    return logits;
}

// With B = 0 (PEFT's init) the adapted model computes exactly the base model.
static void test_lora_zero_b_is_base(void **state) {
    ModelOptions with = tiny_options(true, false, 0.0f), without = tiny_options(false, false, 0.0f);
    Model *adapted = make_model(&with), *base = make_model(&without);
    int32_t tokens[BATCH * SEQ], targets[BATCH * SEQ];
    fixed_batch(tokens, targets, BATCH * SEQ, with.config.vocab_size);
    Batch batch = {.B = BATCH, .T = SEQ, .tokens = tokens, .targets = targets};
    float *a = logits_of(adapted, &batch), *b = logits_of(base, &batch);
    size_t n = (size_t)BATCH * SEQ * with.config.vocab_size;
    assert_memory_equal(a, b, n * sizeof(float));
    // ... and a non-zero B changes it (the comparison above can fail)
    randomise_lora(adapted, 5);
    float *c = logits_of(adapted, &batch);
    assert_memory_not_equal(c, b, n * sizeof(float));
    free(a), free(b), free(c);
    model_destroy(adapted), model_destroy(base);
}

// Forward with W + s B A folded in equals the unmerged LoRA forward.
static void test_merged_equals_unmerged(void **state) {
    ModelOptions with = tiny_options(true, false, 0.0f), without = tiny_options(false, false, 0.0f);
    Model *adapted = make_model(&with), *merged = make_model(&without);
    randomise_lora(adapted, 11);
    const ParamTable *table = model_params(adapted);
    const float *params = model_param_data(adapted);
    float scale = lora_scale(&with.lora);
    for (int i = 0; i < table->count; i += 2) { // entries come in (lora_A, lora_B) pairs
        const ParamEntry *A = &table->entries[i], *B = &table->entries[i + 1];
        char base_name[PARAM_NAME_MAX];
        snprintf(base_name, sizeof base_name, "%.*s.weight", (int)(strstr(A->name, ".lora_A") - A->name), A->name);
        Tensor w;
        Error err;
        if (!model_frozen_tensor(merged, base_name, &w, &err)) fail_msg("%s", err.message);
        int64_t out = B->shape[0], r = A->shape[0], in = A->shape[1];
        float *wd = w.data; // CPU backend: fp32 host memory
        for (int64_t o = 0; o < out; o++) {
            for (int64_t k = 0; k < in; k++) {
                double delta = 0;
                for (int64_t j = 0; j < r; j++) delta += (double)params[B->offset + o * r + j] * params[A->offset + j * in + k];
                wd[o * in + k] += (float)(scale * delta);
            }
        }
    }
    int32_t tokens[BATCH * SEQ], targets[BATCH * SEQ];
    fixed_batch(tokens, targets, BATCH * SEQ, with.config.vocab_size);
    Batch batch = {.B = BATCH, .T = SEQ, .tokens = tokens, .targets = targets};
    float *a = logits_of(adapted, &batch), *b = logits_of(merged, &batch);
    size_t n = (size_t)BATCH * SEQ * with.config.vocab_size;
    double worst = 0, largest = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)a[i] - b[i]));
        largest = fmax(largest, fabs((double)b[i]));
    }
    print_message("merged vs unmerged: max |diff| %.3e of max |logit| %.3e\n", worst, largest);
    assert_true(worst / largest < 1e-5);
    free(a), free(b);
    model_destroy(adapted), model_destroy(merged);
}

static double step_loss(Model *model, const Batch *batch, float grad_scale, uint64_t dropout_seed) {
    StepOptions options = {.grad_scale = grad_scale, .train = true, .dropout_seed = dropout_seed};
    double loss;
    Error err;
    model_zero_grads(model);
    if (!model_step(model, batch, &options, &err) || !model_loss_sum(model, &loss, &err))
        fail_msg("model_step: %s", err.message);
    return loss * grad_scale;
}

// The backward of the whole model (every LoRA A and B, dropout on) against
// central differences of its own fp32 forward loss. (The ops are checked one by
// one against a double-precision reference in test_ops; this checks the wiring.)
static void test_model_gradients_finite_differences(void **state) {
    ModelOptions options = tiny_options(true, false, 0.2f);
    Model *model = make_model(&options);
    randomise_lora(model, 3);
    int32_t tokens[BATCH * SEQ], targets[BATCH * SEQ];
    fixed_batch(tokens, targets, BATCH * SEQ, options.config.vocab_size);
    Batch batch = {.B = BATCH, .T = SEQ, .tokens = tokens, .targets = targets};
    int n_labels = 0;
    for (int i = 0; i < BATCH * SEQ; i++) n_labels += targets[i] != IGNORE_INDEX;
    float grad_scale = 1.0f / (float)n_labels;
    step_loss(model, &batch, grad_scale, 42);
    size_t n = model_params(model)->total;
    float *grads = malloc(n * sizeof(float));
    memcpy(grads, model_grad_data(model), n * sizeof(float));
    float *params = model_param_data(model);
    int checked = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i += 7) { // a spread of parameters in every tensor
        if (fabsf(grads[i]) < 2e-3f) continue;
        float saved = params[i], eps = 3e-3f;
        params[i] = saved + eps;
        model_sync_params(model);
        double plus = step_loss(model, &batch, grad_scale, 42);
        params[i] = saved - eps;
        model_sync_params(model);
        double minus = step_loss(model, &batch, grad_scale, 42);
        params[i] = saved;
        model_sync_params(model);
        double numeric = (plus - minus) / (2.0 * eps);
        // allclose: 1% relative plus the fp32 forward's noise over 2 eps
        worst = fmax(worst, fabs(numeric - grads[i]) / (1e-2 * fabs(numeric) + 3e-4));
        checked++;
    }
    print_message("checked %d LoRA gradients, worst |fd - g| / (1e-2 |fd| + 3e-4) = %.3f\n", checked, worst);
    assert_true(checked > 50);
    assert_true(worst < 1.0);
    free(grads);
    model_destroy(model);
}

// Activation checkpointing recomputes each layer: the gradients are identical.
static void test_checkpointing_same_gradients(void **state) {
    ModelOptions plain = tiny_options(true, false, 0.1f), recompute = tiny_options(true, true, 0.1f);
    Model *a = make_model(&plain), *b = make_model(&recompute);
    randomise_lora(a, 8);
    randomise_lora(b, 8);
    int32_t tokens[BATCH * SEQ], targets[BATCH * SEQ];
    fixed_batch(tokens, targets, BATCH * SEQ, plain.config.vocab_size);
    Batch batch = {.B = BATCH, .T = SEQ, .tokens = tokens, .targets = targets};
    double loss_a = step_loss(a, &batch, 0.1f, 17), loss_b = step_loss(b, &batch, 0.1f, 17);
    assert_true(loss_a == loss_b);
    size_t n = model_params(a)->total;
    assert_memory_equal(model_grad_data(a), model_grad_data(b), n * sizeof(float));
    assert_true(model_activation_bytes(b) < model_activation_bytes(a));
    model_destroy(a), model_destroy(b);
}

// ----------------------------------------------------------------------------
// gradient accumulation: (4 x 1), (2 x 2), (1 x 4) micro-batches of the same
// four samples, which hold different numbers of label tokens.

static const char *write_uneven_dataset(void) {
    static char path[512];
    snprintf(path, sizeof path, "%s/uneven.jsonl", make_temp_dir("accum"));
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"text\": \"ab\"}\n", f);
    fputs("{\"messages\": [{\"role\": \"user\", \"content\": \"What colour is the sky?\"}, "
          "{\"role\": \"assistant\", \"content\": \"Blue, mostly.\"}]}\n", f);
    fputs("{\"text\": \"a longer plain text sample\"}\n", f);
    fputs("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello there\"}]}\n", f);
    fclose(f);
    return path;
}

typedef struct Update {
    float *grads, *params;
    double loss;
} Update;

static Update one_step(const char *data_path, int micro_batch, int grad_accum, int64_t *label_counts) {
    Error err;
    Tokenizer *tok = tokenizer_bytes(&err);
    Dataset *dataset = dataset_open_jsonl(data_path, tok, 32, &err);
    if (!dataset) fail_msg("%s", err.message);
    DataLoaderOptions loader_options = {.micro_batch = micro_batch, .grad_accum = grad_accum, .max_seq_len = 32,
                                        .seed = 1, .shuffle = false, .rank = 0, .world_size = 1};
    DataLoader *loader = dataloader_create(dataset, &loader_options, &err);
    assert_non_null(loader);
    const StepBatch *batch = dataloader_next(loader);
    for (int micro = 0; micro < batch->n_micro; micro++) {
        label_counts[micro] = 0;
        for (int i = 0; i < batch->B * batch->T; i++)
            label_counts[micro] += batch->targets[(size_t)micro * batch->B * batch->T + i] != IGNORE_INDEX;
    }
    ModelOptions options = tiny_options(true, false, 0.0f);
    Model *model = make_model(&options);
    randomise_lora(model, 21);
    Update update;
    if (!train_accumulate(model, NULL, batch, 1, 0, &update.loss, &err)) fail_msg("%s", err.message);
    size_t n = model_params(model)->total;
    update.grads = malloc(n * sizeof(float));
    memcpy(update.grads, model_grad_data(model), n * sizeof(float));
    AdamW opt;
    assert_true(adamw_init(&opt, ops_cpu(), n, 0.9f, 0.999f, 1e-8f, 0.01f, &err));
    adamw_step(&opt, model_param_data(model), model_grad_data(model), 1e-3f);
    update.params = malloc(n * sizeof(float));
    memcpy(update.params, model_param_data(model), n * sizeof(float));
    adamw_destroy(&opt);
    model_destroy(model);
    dataloader_destroy(loader);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
    return update;
}

static double max_rel_diff(const float *a, const float *b, size_t n) {
    double worst = 0, largest = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)a[i] - b[i]));
        largest = fmax(largest, fabs((double)b[i]));
    }
    return worst / largest;
}

// Packing: one row holding three samples (and padding) gives the loss sum and
// LoRA gradients of the three samples run alone, each in its own unpadded row.
static void test_packed_row_equals_separate_samples(void **state) {
    enum { T = 19, N_SAMPLES = 3 };
    const int lengths[] = {4, 7, 5, 3}; // the last is padding: its own segment, no labels
    ModelOptions options = tiny_options(true, false, 0.0f);
    Model *model = make_model(&options);
    randomise_lora(model, 8);
    int32_t tokens[T], targets[T], seq_start[T];
    fixed_batch(tokens, targets, T, options.config.vocab_size);
    packed_seq_start(seq_start, 1, T, lengths, 4);
    for (int t = 0; t < T; t++) {
        bool last_of_sample = t + 1 == T || seq_start[t + 1] != seq_start[t];
        if (last_of_sample || t >= T - lengths[N_SAMPLES]) targets[t] = IGNORE_INDEX;
    }
    size_t n = model_params(model)->total;
    StepOptions step = {.grad_scale = 0.25f, .train = true};
    Error err;
    double packed_loss, loss, separate_loss = 0;
    Batch packed = {.B = 1, .T = T, .tokens = tokens, .targets = targets, .seq_start = seq_start};
    model_zero_grads(model);
    if (!model_step(model, &packed, &step, &err) || !model_loss_sum(model, &packed_loss, &err))
        fail_msg("model_step: %s", err.message);
    float *packed_grads = copy_floats(model_grad_data(model), n);
    model_zero_grads(model);
    for (int i = 0, first = 0; i < N_SAMPLES; first += lengths[i++]) {
        Batch alone = {.B = 1, .T = lengths[i], .tokens = tokens + first, .targets = targets + first};
        if (!model_step(model, &alone, &step, &err) || !model_loss_sum(model, &loss, &err))
            fail_msg("model_step: %s", err.message);
        separate_loss += loss;
    }
    double grad_diff = max_rel_diff(packed_grads, model_grad_data(model), n);
    print_message("loss packed %.6f separate %.6f | grads rel diff %.2e\n", packed_loss, separate_loss, grad_diff);
    assert_true(fabs(packed_loss - separate_loss) <= 1e-5 * fabs(separate_loss));
    assert_true(grad_diff < 1e-5);
    // ... and without seq_start the samples see each other: the comparison can fail
    packed.seq_start = NULL;
    model_zero_grads(model);
    if (!model_step(model, &packed, &step, &err) || !model_loss_sum(model, &loss, &err))
        fail_msg("model_step: %s", err.message);
    assert_true(fabs(loss - separate_loss) > 1e-3 * fabs(separate_loss));
    free(packed_grads);
    model_destroy(model);
}

// A seq_start that neither starts a segment nor continues one is refused.
static void test_packed_row_bad_seq_start(void **state) {
    ModelOptions options = tiny_options(false, false, 0.0f);
    Model *model = make_model(&options);
    int32_t tokens[6], targets[6], seq_start[6] = {0, 0, 2, 2, 1, 4};
    fixed_batch(tokens, targets, 6, options.config.vocab_size);
    Batch batch = {.B = 1, .T = 6, .tokens = tokens, .targets = targets, .seq_start = seq_start};
    StepOptions step = {.grad_scale = 1.0f};
    Error err;
    assert_false(model_step(model, &batch, &step, &err));
    assert_non_null(strstr(err.message, "seq_start 1 at row 0, position 4"));
    model_destroy(model);
}

static void test_accumulation_matches_one_batch(void **state) {
    const char *path = write_uneven_dataset();
    int64_t counts_4x1[1], counts_2x2[2], counts_1x4[4];
    Update whole = one_step(path, 4, 1, counts_4x1);
    Update halves = one_step(path, 2, 2, counts_2x2);
    Update singles = one_step(path, 1, 4, counts_1x4);
    // the micro-batches really are uneven, so a mean of micro-batch means would differ
    assert_true(counts_1x4[0] != counts_1x4[1] && counts_1x4[1] != counts_1x4[2]);
    assert_true(counts_2x2[0] != counts_2x2[1]);
    assert_int_equal(counts_1x4[0] + counts_1x4[1] + counts_1x4[2] + counts_1x4[3], counts_4x1[0]);
    ModelOptions options = tiny_options(true, false, 0.0f);
    Model *model = make_model(&options);
    size_t n = model_params(model)->total;
    model_destroy(model);
    double grad_2x2 = max_rel_diff(halves.grads, whole.grads, n), grad_1x4 = max_rel_diff(singles.grads, whole.grads, n);
    double param_2x2 = max_rel_diff(halves.params, whole.params, n), param_1x4 = max_rel_diff(singles.params, whole.params, n);
    print_message("grads rel diff 2x2 %.2e 1x4 %.2e | params rel diff 2x2 %.2e 1x4 %.2e\n", grad_2x2, grad_1x4,
                  param_2x2, param_1x4);
    assert_true(fabs(halves.loss - whole.loss) < 1e-5 * whole.loss);
    assert_true(fabs(singles.loss - whole.loss) < 1e-5 * whole.loss);
    assert_true(grad_2x2 < 1e-5 && grad_1x4 < 1e-5);
    assert_true(param_2x2 < 1e-5 && param_1x4 < 1e-5);
    Update *updates[] = {&whole, &halves, &singles};
    for (int i = 0; i < 3; i++) free(updates[i]->grads), free(updates[i]->params);
}

// The trainer reads the loss once per optimizer step: the sum the micro-batches
// left on the device equals, bit for bit, the fp32 sum of their losses read one
// by one (one lm_head chunk, so each micro-batch adds a single fp32 value).
static void test_step_loss_read_once(void **state) {
    enum { N_MICRO = 3, MICRO_TOKENS = BATCH * SEQ };
    ModelOptions options = tiny_options(true, false, 0.0f);
    options.lm_head_chunk = 0;
    Model *model = make_model(&options);
    randomise_lora(model, 5);
    int32_t tokens[N_MICRO * MICRO_TOKENS], targets[N_MICRO * MICRO_TOKENS];
    fixed_batch(tokens, targets, N_MICRO * MICRO_TOKENS, options.config.vocab_size);
    StepBatch step = {.n_micro = N_MICRO, .B = BATCH, .T = SEQ, .tokens = tokens, .targets = targets};
    for (int i = 0; i < N_MICRO * MICRO_TOKENS; i++) step.n_label_tokens += targets[i] != IGNORE_INDEX;
    double mean_loss;
    Error err;
    if (!train_accumulate(model, NULL, &step, 1, 0, &mean_loss, &err)) fail_msg("%s", err.message);
    StepOptions alone = {.grad_scale = 1.0f, .train = true};
    float separate_sum = 0;
    for (int micro = 0; micro < N_MICRO; micro++) {
        Batch batch = {.B = BATCH, .T = SEQ, .tokens = tokens + micro * MICRO_TOKENS,
                       .targets = targets + micro * MICRO_TOKENS};
        double loss;
        if (!model_step(model, &batch, &alone, &err) || !model_loss_sum(model, &loss, &err))
            fail_msg("model_step: %s", err.message);
        separate_sum += (float)loss;
    }
    double want = (double)separate_sum / (double)step.n_label_tokens;
    print_message("mean loss read once %.9f, from separate micro-batches %.9f\n", mean_loss, want);
    assert_true(mean_loss == want);
    model_destroy(model);
}

// A backend that fails while the model initialises its trainable parameters
// (a device fault, an out-of-memory upload): model_create returns the reason,
// not a model whose LoRA B is whatever the memory held.
static bool failing_check(const Ops *ops, Error *err) {
    return (fail)(err, "injected backend failure");
} // (fail): cmocka has a fail() macro

static void test_create_reports_a_failed_initialisation(void **state) {
    Ops failing = *ops_cpu();
    failing.check = failing_check;
    ModelOptions options = tiny_options(true, false, 0);
    options.ops = &failing;
    Error err;
    Model *model = model_create(&options, &err);
    assert_null(model);
    print_message("model_create: %s\n", err.message);
    assert_non_null(strstr(err.message, "injected backend failure"));
    assert_non_null(strstr(err.message, "initialising the trainable parameters"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_zero_b_is_base),
        cmocka_unit_test(test_merged_equals_unmerged),
        cmocka_unit_test(test_model_gradients_finite_differences),
        cmocka_unit_test(test_checkpointing_same_gradients),
        cmocka_unit_test(test_packed_row_equals_separate_samples),
        cmocka_unit_test(test_packed_row_bad_seq_start),
        cmocka_unit_test(test_accumulation_matches_one_batch),
        cmocka_unit_test(test_step_loss_read_once),
        cmocka_unit_test(test_create_reports_a_failed_initialisation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
