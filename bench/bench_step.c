// One training step of a fixed small config on the CPU backend: step time,
// tokens/s, and each op's share of the time (a timing wrapper around the op
// table). Figures for docs/BENCHMARKS.md; nothing here passes or fails.
//   build/bench/bench_step [--checkpointing] [--steps N]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/op_timer.h"
#include "bench/step_util.h"
#include "data/data.h"
#include "model/model.h"
#include "optim/optim.h"
#include "trainer/trainer.h"

enum { B = 4, T = 256, WARMUP_STEPS = 2 };

int main(int argc, char **argv) {
    bool checkpointing = false;
    int steps = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--checkpointing") == 0) checkpointing = true;
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
    }
    Ops ops = op_timer_wrap(ops_cpu());
    ModelOptions options = {.ops = &ops, .max_batch = B, .max_seq_len = T, .activation_checkpointing = checkpointing,
                            .lm_head_chunk = 1024, .seed = 1,
                            .lora = {.r = 16, .alpha = 32, .dropout = 0.05f}};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    Error err;
    if (!llama_config_preset("small", &options.config, &err)) return fprintf(stderr, "%s\n", err.message), 1;
    Model *model = model_create(&options, &err);
    if (!model) return fprintf(stderr, "%s\n", err.message), 1;
    if (!model_init_random_base(model, 1, &err)) return fprintf(stderr, "%s\n", err.message), 1;
    size_t n_params = model_params(model)->total;
    AdamW opt;
    float *norm_scratch = ops.alloc(&ops, sizeof(float), &err);
    if (!norm_scratch || !adamw_init(&opt, &ops, n_params, 0.9f, 0.999f, 1e-8f, 0.0f, &err))
        return fprintf(stderr, "%s\n", err.message), 1;
    StepBatch batch;
    random_step_batch(&batch, B, T, options.config.vocab_size);
    double *step_seconds = malloc(sizeof(double) * (size_t)steps);
    for (int step = 0; step < WARMUP_STEPS + steps; step++) {
        if (step == WARMUP_STEPS) op_timer_reset();
        double start = time_seconds(), loss;
        if (!train_accumulate(model, NULL, &batch, 1, step, &loss, &err)) return fprintf(stderr, "%s\n", err.message), 1;
        float norm = grad_norm(&ops, model_grad_data(model), n_params, norm_scratch);
        clip_grads(&ops, model_grad_data(model), n_params, norm, 1.0f);
        adamw_step(&opt, model_param_data(model), model_grad_data(model), 1e-4f);
        model_sync_params(model);
        if (step >= WARMUP_STEPS) step_seconds[step - WARMUP_STEPS] = time_seconds() - start;
    }
    sort_seconds(step_seconds, steps);
    double median = step_seconds[steps / 2], mean = 0;
    for (int i = 0; i < steps; i++) mean += step_seconds[i] / steps;
    const LlamaConfig *c = &options.config;
    printf("config: preset small (hidden %d, %d layers, %d heads / %d kv, mlp %d, vocab %d), B=%d T=%d, LoRA r=16 "
           "on all 7 projections (%zu trainable), dropout 0.05, activation checkpointing %s\n",
           c->hidden_size, c->n_layers, c->n_heads, c->n_kv_heads, c->intermediate_size, c->vocab_size, B, T,
           n_params, checkpointing ? "on" : "off");
    printf("step time: median %.3f s over %d steps (min %.3f, max %.3f) = %.0f tokens/s at the median; "
           "activations %.1f MB; mean step %.2f ms\n\n", median, steps, step_seconds[0], step_seconds[steps - 1],
           B * T / median, model_activation_bytes(model) / 1e6, 1e3 * mean);
    op_timer_print(stdout, steps, NULL);
    adamw_destroy(&opt);
    ops.free(&ops, norm_scratch);
    model_destroy(model);
    return 0;
}
