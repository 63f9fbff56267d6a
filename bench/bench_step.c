// One training step of a fixed small config on the CPU backend: step time,
// tokens/s, and each op's share of the time (a timing wrapper around the op
// table). Figures for docs/BENCHMARKS.md; nothing here passes or fails.
//   build/bench/bench_step [--checkpointing] [--steps N]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/data.h"
#include "model/model.h"
#include "optim/optim.h"
#include "trainer/trainer.h"

enum { B = 4, T = 256, WARMUP_STEPS = 2 };

// ----------------------------------------------------------------------------
// the timed op table: every op of the CPU backend, with its time and calls

enum {
    OP_matmul, OP_matmul_weight_grad, OP_add_inplace, OP_embedding_forward, OP_rmsnorm_forward,
    OP_rmsnorm_backward, OP_rope_forward, OP_rope_backward, OP_attention_forward, OP_attention_backward,
    OP_swiglu_forward, OP_swiglu_backward, OP_dropout_forward, OP_dropout_backward, OP_cross_entropy,
    OP_sum_squares, OP_scale_f32, OP_adamw, OP_zero, OP_params_to_act, OP_COUNT
};

static const char *const OP_NAMES[OP_COUNT] = {
    "matmul", "matmul_weight_grad", "add_inplace", "embedding_forward", "rmsnorm_forward", "rmsnorm_backward",
    "rope_forward", "rope_backward", "attention_forward", "attention_backward", "swiglu_forward",
    "swiglu_backward", "dropout_forward", "dropout_backward", "cross_entropy", "sum_squares", "scale_f32",
    "adamw", "zero", "params_to_act",
};

static const Ops *base;
static double op_seconds[OP_COUNT];
static long op_calls[OP_COUNT];

#define TIMED(name, params, args)                      \
    static void timed_##name params {                  \
        double start = time_seconds();                 \
        base->name args;                               \
        op_seconds[OP_##name] += time_seconds() - start; \
        op_calls[OP_##name]++;                         \
    }

TIMED(matmul, (void *o, const void *a, const void *b, int M, int N, int K, bool ta, bool tb, float al, float be),
      (o, a, b, M, N, K, ta, tb, al, be))
TIMED(matmul_weight_grad, (float *dw, const void *dy, const void *x, int M, int N, int K, float al),
      (dw, dy, x, M, N, K, al))
TIMED(add_inplace, (void *a, const void *b, size_t n), (a, b, n))
TIMED(embedding_forward, (void *o, const int32_t *ids, const void *t, int N, int C), (o, ids, t, N, C))
TIMED(rmsnorm_forward, (void *o, float *r, const void *x, const void *w, int N, int C, float e), (o, r, x, w, N, C, e))
TIMED(rmsnorm_backward, (void *dx, const void *dy, const void *x, const void *w, const float *r, int N, int C),
      (dx, dy, x, w, r, N, C))
TIMED(rope_forward, (void *x, const int32_t *p, const float *f, int N, int h, int d), (x, p, f, N, h, d))
TIMED(rope_backward, (void *x, const int32_t *p, const float *f, int N, int h, int d), (x, p, f, N, h, d))
TIMED(attention_forward, (void *o, float *l, const void *q, const void *k, const void *v, const int32_t *s, int b,
                          int t, int h, int kv, int d), (o, l, q, k, v, s, b, t, h, kv, d))
TIMED(attention_backward, (void *dq, void *dk, void *dv, const void *dout, const void *out, const float *l,
                           const void *q, const void *k, const void *v, const int32_t *s, int b, int t, int h, int kv,
                           int d), (dq, dk, dv, dout, out, l, q, k, v, s, b, t, h, kv, d))
TIMED(swiglu_forward, (void *o, const void *g, const void *u, size_t n), (o, g, u, n))
TIMED(swiglu_backward, (void *dg, void *du, const void *dy, const void *g, const void *u, size_t n),
      (dg, du, dy, g, u, n))
TIMED(dropout_forward, (void *o, const void *x, size_t n, float p, uint64_t s, uint64_t off), (o, x, n, p, s, off))
TIMED(dropout_backward, (void *dx, const void *dy, size_t n, float p, uint64_t s, uint64_t off),
      (dx, dy, n, p, s, off))
TIMED(cross_entropy, (float *l, void *dl, const void *lg, const int32_t *t, int N, int V, float g),
      (l, dl, lg, t, N, V, g))
TIMED(sum_squares, (float *o, const float *g, size_t n), (o, g, n))
TIMED(scale_f32, (float *x, float s, size_t n), (x, s, n))
TIMED(adamw, (float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float e,
              float wd, int step), (p, g, m, v, n, lr, b1, b2, e, wd, step))
TIMED(zero, (void *p, size_t bytes), (p, bytes))
TIMED(params_to_act, (void *d, const float *s, size_t n), (d, s, n))

static Ops timed_ops(void) {
    Ops ops = *base;
    ops.matmul = timed_matmul, ops.matmul_weight_grad = timed_matmul_weight_grad;
    ops.add_inplace = timed_add_inplace, ops.embedding_forward = timed_embedding_forward;
    ops.rmsnorm_forward = timed_rmsnorm_forward, ops.rmsnorm_backward = timed_rmsnorm_backward;
    ops.rope_forward = timed_rope_forward, ops.rope_backward = timed_rope_backward;
    ops.attention_forward = timed_attention_forward, ops.attention_backward = timed_attention_backward;
    ops.swiglu_forward = timed_swiglu_forward, ops.swiglu_backward = timed_swiglu_backward;
    ops.dropout_forward = timed_dropout_forward, ops.dropout_backward = timed_dropout_backward;
    ops.cross_entropy = timed_cross_entropy, ops.sum_squares = timed_sum_squares, ops.scale_f32 = timed_scale_f32;
    ops.adamw = timed_adamw, ops.zero = timed_zero, ops.params_to_act = timed_params_to_act;
    return ops;
}

// ----------------------------------------------------------------------------
// the step

static void random_step_batch(StepBatch *batch, int vocab) {
    Rng rng;
    rng_seed(&rng, 3);
    *batch = (StepBatch){.n_micro = 1, .B = B, .T = T};
    batch->tokens = malloc(sizeof(int32_t) * B * T);
    batch->targets = malloc(sizeof(int32_t) * B * T);
    for (int i = 0; i < B * T; i++) {
        batch->tokens[i] = (int32_t)rng_below(&rng, (uint64_t)vocab);
        batch->targets[i] = (int32_t)rng_below(&rng, (uint64_t)vocab);
    }
    batch->n_label_tokens = B * T;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    bool checkpointing = false;
    int steps = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--checkpointing") == 0) checkpointing = true;
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
    }
    base = ops_cpu();
    Ops ops = timed_ops();
    ModelOptions options = {.ops = &ops, .max_batch = B, .max_seq_len = T, .activation_checkpointing = checkpointing,
                            .lm_head_chunk = 1024, .seed = 1,
                            .lora = {.r = 16, .alpha = 32, .dropout = 0.05f}};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    Error err;
    if (!llama_config_preset("small", &options.config, &err)) return fprintf(stderr, "%s\n", err.message), 1;
    Model *model = model_create(&options, &err);
    if (!model) return fprintf(stderr, "%s\n", err.message), 1;
    model_init_random_base(model, 1);
    size_t n_params = model_params(model)->total;
    AdamW opt;
    float *norm_scratch = ops.alloc(sizeof(float), &err);
    if (!norm_scratch || !adamw_init(&opt, &ops, n_params, 0.9f, 0.999f, 1e-8f, 0.0f, &err))
        return fprintf(stderr, "%s\n", err.message), 1;
    StepBatch batch;
    random_step_batch(&batch, options.config.vocab_size);
    double *step_seconds = malloc(sizeof(double) * (size_t)steps);
    for (int step = 0; step < WARMUP_STEPS + steps; step++) {
        if (step == WARMUP_STEPS) memset(op_seconds, 0, sizeof op_seconds), memset(op_calls, 0, sizeof op_calls);
        double start = time_seconds(), loss;
        if (!train_accumulate(model, &batch, 1, step, &loss, &err)) return fprintf(stderr, "%s\n", err.message), 1;
        float norm = grad_norm(&ops, model_grad_data(model), n_params, norm_scratch);
        clip_grads(&ops, model_grad_data(model), n_params, norm, 1.0f);
        adamw_step(&opt, model_param_data(model), model_grad_data(model), 1e-4f);
        model_sync_params(model);
        if (step >= WARMUP_STEPS) step_seconds[step - WARMUP_STEPS] = time_seconds() - start;
    }
    qsort(step_seconds, (size_t)steps, sizeof(double), compare_doubles);
    double median = step_seconds[steps / 2], mean = 0, total_op = 0;
    for (int i = 0; i < steps; i++) mean += step_seconds[i] / steps;
    for (int i = 0; i < OP_COUNT; i++) total_op += op_seconds[i];
    const LlamaConfig *c = &options.config;
    printf("config: preset small (hidden %d, %d layers, %d heads / %d kv, mlp %d, vocab %d), B=%d T=%d, LoRA r=16 "
           "on all 7 projections (%zu trainable), dropout 0.05, activation checkpointing %s\n",
           c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads, c->intermediate_size, c->vocab_size, B, T,
           n_params, checkpointing ? "on" : "off");
    printf("step time: median %.3f s over %d steps (min %.3f, max %.3f) = %.0f tokens/s at the median; "
           "activations %.1f MB\n", median, steps, step_seconds[0], step_seconds[steps - 1], B * T / median,
           model_activation_bytes(model) / 1e6);
    printf("\n| op | calls/step | ms/step | share |\n|---|---|---|---|\n");
    for (int pass = 0; pass < OP_COUNT; pass++) { // largest first
        int best = -1;
        for (int i = 0; i < OP_COUNT; i++)
            if (op_calls[i] >= 0 && (best < 0 || op_seconds[i] > op_seconds[best])) best = i;
        if (op_seconds[best] <= 0) break;
        printf("| %s | %ld | %.2f | %.1f%% |\n", OP_NAMES[best], op_calls[best] / steps,
               1e3 * op_seconds[best] / steps, 100.0 * op_seconds[best] / total_op);
        op_calls[best] = -1;
        op_seconds[best] = -1;
    }
    printf("| (all ops) | | %.2f | of a mean step of %.2f ms |\n", 1e3 * total_op / steps, 1e3 * mean);
    adamw_destroy(&opt);
    ops.free(norm_scratch);
    model_destroy(model);
    return 0;
}
