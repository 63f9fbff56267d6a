// The one-step-delayed CPU offload update (zero.delayed_update) on the CPU
// backend: step by step it equals a sequential reference that applies the
// same delay without a thread (gradient k at p_(k-1), p_(k+1) = AdamW(p_k,
// g_k)), so the overlap changes nothing but the schedule; the delay is real
// (the first update lands one step late); a tiny model still learns, in a
// loop over Zero and through train_run; and a resume from a checkpoint
// continues exactly as the run that saved it.
#include "run_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/parallel.h"
#include "trainer/trainer.h"

enum { BATCH = 2, SEQ = 16, STEPS = 30, N_BATCHES = 2 };

static const float LR = 1e-2f, MAX_GRAD_NORM = 0.5f;
static const AdamWHyper HYPER = {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};

static Model *tiny_model(void) {
    ModelOptions options = {.ops = ops_cpu(), .max_batch = BATCH, .max_seq_len = SEQ, .lm_head_chunk = 8, .seed = 7};
    Error err;
    assert_true(llama_config_preset("tiny", &options.config, &err));
    options.lora = (LoraConfig){.r = 4, .alpha = 8};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    Model *model = model_create(&options, &err);
    if (!model) fail_msg("model_create: %s", err.message);
    if (!model_init_random_base(model, 1234, &err)) fail_msg("model_init_random_base: %s", err.message);
    return model;
}

// N_BATCHES fixed random batches (B, T) of tokens and next-token targets.
static void make_batches(int32_t tokens[N_BATCHES][BATCH * SEQ], int32_t targets[N_BATCHES][BATCH * SEQ], int vocab) {
    Rng rng;
    rng_seed(&rng, 99);
    for (int b = 0; b < N_BATCHES; b++)
        for (int i = 0; i < BATCH * SEQ; i++) {
            tokens[b][i] = (int32_t)rng_below(&rng, (uint64_t)vocab);
            targets[b][i] = (int32_t)rng_below(&rng, (uint64_t)vocab);
        }
}

// Zeroes the gradients and runs one micro-batch; returns the mean loss.
static double gradient_at(Model *model, const int32_t *tokens, const int32_t *targets) {
    Batch batch = {.B = BATCH, .T = SEQ, .tokens = tokens, .targets = targets};
    StepOptions options = {.grad_scale = 1.0f / (BATCH * SEQ), .train = true};
    double loss_sum;
    Error err;
    model_zero_grads(model);
    if (!model_step(model, &batch, &options, &err) || !model_loss_sum(model, &loss_sum, &err))
        fail_msg("model_step: %s", err.message);
    return loss_sum / (BATCH * SEQ);
}

static Zero *zero_for(Model *model, Collectives *coll, bool delayed) {
    ZeroOptions options = {.stage = 2, .offload_cpu = true, .delayed_update = delayed, .beta1 = HYPER.beta1,
                           .beta2 = HYPER.beta2, .eps = HYPER.eps, .weight_decay = HYPER.weight_decay,
                           .max_grad_norm = MAX_GRAD_NORM};
    Error err;
    Zero *zero = zero_create(ops_cpu(), coll, model_param_data(model), model_grad_data(model), model_params(model)->total,
                             &options, &err);
    if (!zero) fail_msg("zero_create: %s", err.message);
    return zero;
}

static void zero_step_or_fail(Zero *zero, Model *model) {
    float norm;
    Error err;
    if (!zero_step(zero, model_param_data(model), model_grad_data(model), LR, &norm, &err))
        fail_msg("zero_step: %s", err.message);
    model_sync_params(model);
}

static bool same_floats(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

// The sequential reference of the delayed update on host arrays (n): the
// previous step's clipped gradient is applied to the masters, which become
// the parameters, and this step's clipped gradient waits for the next step.
typedef struct DelayedReference {
    size_t n;
    float *masters, *m, *v, *pending_grads;
    int updates;
} DelayedReference;

static void reference_step(DelayedReference *ref, float *params, float *grads) {
    float sum_squares = 0;
    ops_cpu()->sum_squares(ops_cpu(), &sum_squares, grads, ref->n);
    clip_grads(ops_cpu(), grads, ref->n, sqrtf(sum_squares), MAX_GRAD_NORM);
    if (ref->updates > 0) cpu_adamw(ref->masters, ref->pending_grads, ref->m, ref->v, ref->n, LR, &HYPER, ref->updates);
    memcpy(params, ref->masters, ref->n * sizeof(float));
    memcpy(ref->pending_grads, grads, ref->n * sizeof(float));
    ref->updates++;
}

static void test_delayed_update_equals_the_sequential_reference(void **state) {
    Model *delayed = tiny_model(), *reference = tiny_model(), *plain = tiny_model();
    size_t n = model_params(delayed)->total;
    int32_t tokens[N_BATCHES][BATCH * SEQ], targets[N_BATCHES][BATCH * SEQ];
    make_batches(tokens, targets, model_config(delayed)->vocab_size);
    Error err;
    Collectives *coll = collectives_single(&err);
    assert_non_null(coll);
    Zero *zero_delayed = zero_for(delayed, coll, true), *zero_plain = zero_for(plain, coll, false);
    float *initial = malloc(n * sizeof(float)), *plain_after_first = malloc(n * sizeof(float));
    memcpy(initial, model_param_data(delayed), n * sizeof(float));
    DelayedReference ref = {.n = n, .masters = malloc(n * sizeof(float)), .m = calloc(n, sizeof(float)),
                            .v = calloc(n, sizeof(float)), .pending_grads = malloc(n * sizeof(float))};
    memcpy(ref.masters, initial, n * sizeof(float));
    double first_loss = 0, last_loss = 0;
    for (int step = 0; step < STEPS; step++) {
        const int32_t *x = tokens[step % N_BATCHES], *y = targets[step % N_BATCHES];
        double loss = gradient_at(delayed, x, y), reference_loss = gradient_at(reference, x, y);
        assert_true(loss == reference_loss);
        zero_step_or_fail(zero_delayed, delayed);
        reference_step(&ref, model_param_data(reference), model_grad_data(reference));
        model_sync_params(reference);
        assert_true(same_floats(model_param_data(delayed), model_param_data(reference), n));
        if (step == 0) {
            assert_true(same_floats(model_param_data(delayed), initial, n)); // the update is still in flight
            gradient_at(plain, x, y);
            zero_step_or_fail(zero_plain, plain);
            memcpy(plain_after_first, model_param_data(plain), n * sizeof(float));
        }
        if (step == 1) assert_true(same_floats(model_param_data(delayed), plain_after_first, n));
        if (step < N_BATCHES) first_loss += loss / N_BATCHES;
        if (step >= STEPS - N_BATCHES) last_loss += loss / N_BATCHES;
    }
    assert_true(zero_flush(zero_delayed, model_param_data(delayed), &err));
    cpu_adamw(ref.masters, ref.pending_grads, ref.m, ref.v, n, LR, &HYPER, ref.updates);
    assert_true(same_floats(model_param_data(delayed), ref.masters, n));
    ZeroState zero_moments = zero_state(zero_delayed);
    assert_int_equal(zero_moments.step, STEPS);
    assert_true(same_floats(zero_moments.m, ref.m, n) && same_floats(zero_moments.v, ref.v, n));
    print_message("delayed update: loss %.4f -> %.4f over %d steps, parameters equal to the sequential reference\n",
                  first_loss, last_loss, STEPS);
    assert_true(last_loss < 0.7 * first_loss);
    zero_destroy(zero_delayed), zero_destroy(zero_plain), collectives_destroy(coll);
    model_destroy(delayed), model_destroy(reference), model_destroy(plain);
    free(initial), free(plain_after_first), free(ref.masters), free(ref.m), free(ref.v), free(ref.pending_grads);
}

static void test_delayed_update_needs_the_offload(void **state) {
    Model *model = tiny_model();
    Error err;
    Collectives *coll = collectives_single(&err);
    assert_non_null(coll);
    ZeroOptions options = {.stage = 0, .delayed_update = true, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    assert_null(zero_create(ops_cpu(), coll, model_param_data(model), model_grad_data(model), model_params(model)->total,
                            &options, &err));
    if (!strstr(err.message, "zero.delayed_update needs the CPU offload")) fail_msg("unexpected error: %s", err.message);
    collectives_destroy(coll);
    model_destroy(model);
}

// Through train_run, with a checkpoint at step 20 (which applies the update
// in flight first): the loss falls, and a resume from that checkpoint gives
// the same losses and the same adapter bytes as the run that saved it.
static void test_train_run_with_the_delayed_update_learns_and_resumes(void **state) {
    enum { TOTAL = 40, SAVED_AT = 20 };
    const char *dir = make_temp_dir("delayed");
    const char *recipe[] = {"data.create_if_missing=demo", "data.max_seq_len=64", "lora.target=all", "lora.r=8",
                            "lora.alpha=16", "train.micro_batch=8", "train.max_steps=40", "train.lr=5e-3", "train.log_every=20",
                            "checkpoint.every_steps=20", "train.backend=cpu", "zero.offload=cpu",
                            "zero.delayed_update=true"};
    Config config = tiny_run_config(dir, recipe, sizeof recipe / sizeof recipe[0]);
    Error err;
    LossRecorder straight = {0}, resumed = {0};
    TrainSummary summary;
    if (!train_run_with(&config, &(TrainControl){.on_step = record_loss, .context = &straight}, &summary, &err))
        fail_msg("train_run_with: %s", err.message);
    print_message("delayed update through train_run: loss %.4f -> %.4f over %d steps\n", summary.first_loss,
                  summary.last_loss, summary.steps);
    assert_int_equal(summary.steps, TOTAL);
    assert_true(summary.last_loss < 0.7 * summary.first_loss);
    size_t straight_size, resumed_size;
    char *straight_adapter = adapter_file_bytes(summary.adapter_dir, &straight_size);

    char checkpoint[2048];
    snprintf(checkpoint, sizeof checkpoint, "%s/out/step-%06d", dir, SAVED_AT);
    if (!train_run_with(&config, &(TrainControl){.resume = checkpoint, .on_step = record_loss, .context = &resumed},
                        &summary, &err))
        fail_msg("train_run_with (resume): %s", err.message);
    for (int step = SAVED_AT + 1; step <= TOTAL; step++)
        if (memcmp(&straight.losses[step], &resumed.losses[step], sizeof(double)) != 0)
            fail_msg("step %d: loss %.17g straight, %.17g resumed", step, straight.losses[step], resumed.losses[step]);
    char *resumed_adapter = adapter_file_bytes(summary.adapter_dir, &resumed_size);
    assert_int_equal(resumed_size, straight_size);
    assert_memory_equal(resumed_adapter, straight_adapter, straight_size);
    free(straight_adapter), free(resumed_adapter);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delayed_update_equals_the_sequential_reference),
        cmocka_unit_test(test_delayed_update_needs_the_offload),
        cmocka_unit_test(test_train_run_with_the_delayed_update_learns_and_resumes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
