// LoRA training throughput, peak memory and model FLOPs utilisation of one
// configuration: a Llama-shaped model with random base weights (no checkpoint
// needed), LoRA on all seven projections, uniform random tokens with every
// position labelled, AdamW through ZeRO with world size 1 (so --offload cpu is
// the trainer's own path). Warm-up steps, then timed steps between
// synchronisations; a bf16 GEMM probe through the same backend's matmul
// (cuBLASLt on CUDA) gives the rate MFU is measured against.
//
// MFU with LoRA accounting, per token (N = base weights the matmuls touch:
// the seven linears of every layer and the lm_head; the frozen base gets no
// weight gradient, and the adapters' own r = 16 products are not counted):
//   forward 2N + input gradient 2N + recompute 2N_layers (checkpointing on)
//   + causal attention: forward 2 L T H hd, backward twice that, recompute once more.
//
//   build/bench/bench_train [--backend cpu|cuda] [--preset llama3-8b] [--batch 1] [--seq 2048]
//       [--checkpointing] [--nf4] [--offload] [--steps 5] [--warmup 2] [--profile]
//       [--probe-size 8192] [--lr 1e-4] [--json FILE]
// Prints a summary, with --profile each op's share of the time, and one JSON
// line (appended to FILE with --json) for bench/gpu_compare.py.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/op_timer.h"
#include "bench/step_util.h"
#include "data/data.h"
#include "parallel/parallel.h"
#include "model/model.h"
#include "trainer/trainer.h"

typedef struct Args {
    const char *backend, *preset, *json_path;
    int batch, seq, steps, warmup, probe_size, lora_r;
    float lr, dropout;
    bool checkpointing, nf4, offload, profile;
} Args;

static bool parse_args(int argc, char **argv, Args *a) {
    *a = (Args){.backend = "cuda", .preset = "llama3-8b", .batch = 1, .seq = 2048, .steps = 5, .warmup = 2,
                .probe_size = 0, .lora_r = 16, .lr = 1e-4f, .dropout = 0.05f};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--checkpointing") == 0) a->checkpointing = true;
        else if (strcmp(arg, "--nf4") == 0) a->nf4 = true;
        else if (strcmp(arg, "--offload") == 0) a->offload = true;
        else if (strcmp(arg, "--profile") == 0) a->profile = true;
        else if (!value) return fprintf(stderr, "bench_train: %s needs a value or is unknown\n", arg), false;
        else if (strcmp(arg, "--backend") == 0) a->backend = value, i++;
        else if (strcmp(arg, "--preset") == 0) a->preset = value, i++;
        else if (strcmp(arg, "--json") == 0) a->json_path = value, i++;
        else if (strcmp(arg, "--batch") == 0) a->batch = atoi(value), i++;
        else if (strcmp(arg, "--seq") == 0) a->seq = atoi(value), i++;
        else if (strcmp(arg, "--steps") == 0) a->steps = atoi(value), i++;
        else if (strcmp(arg, "--warmup") == 0) a->warmup = atoi(value), i++;
        else if (strcmp(arg, "--probe-size") == 0) a->probe_size = atoi(value), i++;
        else if (strcmp(arg, "--lora-r") == 0) a->lora_r = atoi(value), i++;
        else if (strcmp(arg, "--lr") == 0) a->lr = strtof(value, NULL), i++;
        else if (strcmp(arg, "--dropout") == 0) a->dropout = strtof(value, NULL), i++;
        else return fprintf(stderr, "bench_train: unknown option %s\n", arg), false;
    }
    if (a->batch < 1 || a->seq < 1 || a->steps < 1 || a->warmup < 0 || a->probe_size < 0 || a->lora_r < 1)
        return fprintf(stderr, "bench_train: --batch, --seq, --steps, --lora-r must be >= 1, --warmup >= 0\n"), false;
    if (a->probe_size == 0) a->probe_size = strcmp(a->backend, "cuda") == 0 ? 8192 : 256;
    return true;
}

// ----------------------------------------------------------------------------
// random base weights, fast: a tile of N(0, std^2) values repeated over every
// tensor, and one NF4 quantization per linear shape copied to the other layers

enum { TILE = 1000003 };  // prime, so the tile does not line up with rows

typedef struct Filler {
    const Ops *ops;
    float *tile, *ones;
    Nf4Weight *first_of_shape[LORA_TARGET_COUNT];
    int n_shapes;
} Filler;

static bool fill_frozen(void *context, const char *name, const Tensor *tensor, Error *err) {
    Filler *f = context;
    size_t n = (size_t)tensor_numel(tensor), act_size = dtype_size(f->ops->act_dtype);
    const float *source = tensor->ndim == 1 ? f->ones : f->tile;  // norms are 1, as transformers initialises them
    for (size_t start = 0; start < n; start += TILE) {
        size_t count = n - start < TILE ? n - start : TILE;
        f->ops->upload_f32(f->ops, (char *)tensor->data + start * act_size, source, count);
    }
    return true;
}

static bool copy_device(const Ops *ops, void *dst, const void *src, size_t bytes, Error *err) {
    void *host = malloc(bytes ? bytes : 1);
    if (!host) return fail(err, "out of host memory copying %zu bytes", bytes);
    ops->download(ops, host, src, bytes);
    ops->upload(ops, dst, host, bytes);
    free(host);
    return true;
}

// dst = src, two NF4 weights of the same shape and kind, through the host.
static bool copy_nf4(const Ops *ops, Nf4Weight *dst, const Nf4Weight *src, Error *err) {
    size_t n = (size_t)(src->rows * src->cols), blocks = nf4_blocks(n, NF4_BLOCK);
    dst->offset = src->offset;
    bool ok = copy_device(ops, dst->packed, src->packed, nf4_packed_bytes(n), err) &&
              copy_device(ops, dst->code, src->code, 16 * sizeof(float), err);
    if (!src->double_quant) return ok && copy_device(ops, dst->absmax, src->absmax, blocks * sizeof(float), err);
    return ok && copy_device(ops, dst->absmax_q, src->absmax_q, blocks, err) &&
           copy_device(ops, dst->nested_absmax, src->nested_absmax,
                       nf4_blocks(blocks, NF4_NESTED_BLOCK) * sizeof(float), err) &&
           copy_device(ops, dst->nested_map, src->nested_map, NF4_DYNAMIC_MAP_SIZE * sizeof(float), err);
}

static bool fill_nf4(void *context, const char *name, Nf4Weight *w, Error *err) {
    Filler *f = context;
    for (int i = 0; i < f->n_shapes; i++) {
        Nf4Weight *first = f->first_of_shape[i];
        if (first->rows == w->rows && first->cols == w->cols) return copy_nf4(f->ops, w, first, err);
    }
    size_t n = (size_t)(w->rows * w->cols);
    float *values = malloc(n * sizeof(float));
    if (!values) return fail(err, "%s: out of host memory", name);
    for (size_t start = 0; start < n; start += TILE)
        memcpy(values + start, f->tile, (n - start < TILE ? n - start : TILE) * sizeof(float));
    bool ok = nf4_weight_quantize_from(w, f->ops, values, err);
    free(values);
    if (ok && f->n_shapes < LORA_TARGET_COUNT) f->first_of_shape[f->n_shapes++] = w;
    return ok;
}

static bool init_random_base(Model *model, Error *err) {
    Filler f = {.ops = model_ops(model), .tile = malloc(TILE * sizeof(float)), .ones = malloc(TILE * sizeof(float))};
    if (!f.tile || !f.ones) return free(f.tile), free(f.ones), fail(err, "out of host memory");
    float std = model_config(model)->initializer_range > 0 ? model_config(model)->initializer_range : 0.02f;
    Rng rng;
    rng_seed(&rng, 1);
    for (int i = 0; i < TILE; i++) f.tile[i] = std * rng_normal(&rng), f.ones[i] = 1.0f;
    bool ok = model_visit_frozen(model, fill_frozen, &f, err) && (!model_is_nf4(model) ||
                                                                   model_visit_nf4(model, fill_nf4, &f, err));
    free(f.tile), free(f.ones);
    return ok && f.ops->check(f.ops, err);
}

// ----------------------------------------------------------------------------
// FLOPs and the GEMM probe

static double matmul_weights(const LlamaConfig *c) {
    double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
    double per_layer = c->hidden_size * (q + 2 * kv) + q * c->hidden_size + 3.0 * c->hidden_size * c->intermediate_size;
    return per_layer * c->n_layers;
}

static double flops_per_token(const LlamaConfig *c, int T, bool checkpointing) {
    double layers = matmul_weights(c), head = (double)c->vocab_size * c->hidden_size;
    double attention = 2.0 * c->n_layers * T * c->n_heads * c->head_dim;  // causal forward
    double forward = 2 * (layers + head) + attention, input_grad = 2 * (layers + head) + 2 * attention;
    double recompute = checkpointing ? 2 * layers + attention : 0;
    return forward + input_grad + recompute;
}

// FLOP/s of out (S, S) = a (S, S) @ b (S, S)^T in act_dtype through ops->matmul:
// 3 warm-up products, then the mean of 10, on random data.
static double gemm_rate(const Ops *ops, int S, Error *err) {
    size_t n = (size_t)S * S, bytes = n * dtype_size(ops->act_dtype);
    void *a = ops->alloc(ops, bytes, err), *b = a ? ops->alloc(ops, bytes, err) : NULL,
         *out = b ? ops->alloc(ops, bytes, err) : NULL;
    float *host = malloc(n * sizeof(float));
    double rate = 0;
    if (out && host) {
        Rng rng;
        rng_seed(&rng, 2);
        for (size_t i = 0; i < n; i++) host[i] = rng_uniform(&rng) - 0.5f;
        ops->upload_f32(ops, a, host, n);
        ops->upload_f32(ops, b, host, n);
        for (int i = 0; i < 3; i++) ops->matmul(ops, out, a, b, S, S, S, false, true, 1.0f, 0.0f);
        ops->synchronize(ops);
        double start = time_seconds();
        for (int i = 0; i < 10; i++) ops->matmul(ops, out, a, b, S, S, S, false, true, 1.0f, 0.0f);
        ops->synchronize(ops);
        rate = 10 * 2.0 * S * (double)S * S / (time_seconds() - start);
    }
    free(host);
    ops->free(ops, a), ops->free(ops, b), ops->free(ops, out);
    return ops->check(ops, err) ? rate : 0;
}

// ----------------------------------------------------------------------------
// the run

typedef struct Result {
    double median_s, min_s, max_s, first_loss, last_loss, gemm_flops;
    size_t peak_bytes, n_params;
} Result;

static bool train_steps(const Args *a, Model *model, Zero *zero, Result *r, Error *err) {
    const Ops *ops = model_ops(model);
    StepBatch batch;
    random_step_batch(&batch, a->batch, a->seq, model_config(model)->vocab_size);
    double *seconds = malloc(sizeof(double) * (size_t)a->steps);
    bool ok = batch.tokens && batch.targets && seconds;
    for (int step = 0; ok && step < a->warmup + a->steps; step++) {
        if (step == a->warmup && a->profile) op_timer_reset();
        ops->synchronize(ops);
        double start = time_seconds(), loss;
        float norm;
        ok = train_accumulate(model, zero, &batch, 1, step, &loss, err) &&
             zero_step(zero, model_param_data(model), model_grad_data(model), a->lr, &norm, err);
        model_sync_params(model);
        ops->synchronize(ops);
        ok = ok && ops->check(ops, err);
        if (step == 0) r->first_loss = loss;
        r->last_loss = loss;
        if (step >= a->warmup) seconds[step - a->warmup] = time_seconds() - start;
    }
    if (ok) {
        sort_seconds(seconds, a->steps);
        r->median_s = seconds[a->steps / 2], r->min_s = seconds[0], r->max_s = seconds[a->steps - 1];
    }
    free(seconds), free(batch.tokens), free(batch.targets);
    return ok;
}

static bool run(const Args *a, const Ops *ops, LlamaConfig *config, Result *r, Error *err) {
    ModelOptions options = {.ops = ops, .max_batch = a->batch, .max_seq_len = a->seq,
                            .activation_checkpointing = a->checkpointing, .lm_head_chunk = 1024, .seed = 1,
                            .nf4 = a->nf4, .nf4_double_quant = a->nf4,
                            .lora = {.r = a->lora_r, .alpha = 2.0f * a->lora_r, .dropout = a->dropout}};
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    if (!llama_config_preset(a->preset, &options.config, err)) return false;
    *config = options.config;
    Model *model = model_create(&options, err);
    if (!model) return false;
    Collectives *coll = NULL;
    Zero *zero = NULL;
    ZeroOptions zero_options = {.offload_cpu = a->offload, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                .max_grad_norm = 1.0f};
    r->n_params = model_params(model)->total;
    bool ok = init_random_base(model, err) && (coll = collectives_single(err)) &&
              (zero = zero_create(ops, coll, model_param_data(model), model_grad_data(model), r->n_params, &zero_options, err)) &&
              train_steps(a, model, zero, r, err);
    r->peak_bytes = ops->peak_bytes(ops);
    zero_destroy(zero);
    collectives_destroy(coll);
    model_destroy(model);
    return ok && (r->gemm_flops = gemm_rate(ops, a->probe_size, err)) > 0;
}

// ----------------------------------------------------------------------------
// output

static void print_json(FILE *out, const Args *a, const Ops *ops, const LlamaConfig *c, const Result *r) {
    double tokens_per_s = a->batch * a->seq / r->median_s;
    double flops = flops_per_token(c, a->seq, a->checkpointing);
    fprintf(out, "{\"impl\": \"lora-train\", \"backend\": \"%s\", \"preset\": \"%s\", \"vocab_size\": %d, "
                 "\"hidden_size\": %d, \"intermediate_size\": %d, \"n_layers\": %d, \"n_heads\": %d, "
                 "\"n_kv_heads\": %d, \"head_dim\": %d, \"rope_theta\": %g, \"rms_eps\": %g, \"lora_r\": %d, "
                 "\"lora_dropout\": %g, \"batch\": %d, \"seq\": %d, \"checkpointing\": %s, \"nf4\": %s, "
                 "\"offload\": %s, \"steps\": %d, \"warmup\": %d, \"trainable_params\": %zu, \"median_step_s\": %.6f, "
                 "\"min_step_s\": %.6f, \"max_step_s\": %.6f, \"tokens_per_s\": %.3f, \"peak_bytes\": %zu, "
                 "\"flops_per_token\": %.6g, \"achieved_flops\": %.6g, \"gemm_probe_size\": %d, "
                 "\"gemm_flops\": %.6g, \"mfu\": %.5f, \"first_loss\": %.6f, \"last_loss\": %.6f",
            ops->name, a->preset, c->vocab_size, c->hidden_size, c->intermediate_size, c->n_layers, c->n_heads,
            c->n_kv_heads, c->head_dim, c->rope_theta, c->rms_eps, a->lora_r, a->dropout, a->batch, a->seq,
            a->checkpointing ? "true" : "false", a->nf4 ? "true" : "false", a->offload ? "true" : "false", a->steps,
            a->warmup, r->n_params, r->median_s, r->min_s, r->max_s, tokens_per_s, r->peak_bytes, flops,
            flops * tokens_per_s, a->probe_size, r->gemm_flops, flops * tokens_per_s / r->gemm_flops, r->first_loss,
            r->last_loss);
    if (a->profile) fprintf(out, ", \"op_times\": "), op_timer_print_json(out, a->steps);
    fprintf(out, "}\n");
}

// The GPU the CUDA backend runs on, when its peaks are known (not on the CPU or the emulated backend).
static const DevicePeak *bench_device(const Ops *ops) {
    if (!ops->device_memory || ops_cuda_is_emulated()) return NULL;
    CudaInfo info;
    ops_cuda_info(&info);
    return info.n_devices > 0 ? device_peak_named(info.devices[0].name) : NULL;
}

static void print_summary(const Args *a, const Ops *ops, const LlamaConfig *c, const Result *r) {
    double tokens_per_s = a->batch * a->seq / r->median_s, flops = flops_per_token(c, a->seq, a->checkpointing);
    printf("bench_train: %s backend, preset %s (hidden %d, %d layers, vocab %d), B=%d T=%d, LoRA r=%d on all 7 "
           "projections (%zu trainable), checkpointing %s, base %s, optimizer %s\n",
           ops->name, a->preset, c->hidden_size, c->n_layers, c->vocab_size, a->batch, a->seq, a->lora_r,
           r->n_params, a->checkpointing ? "on" : "off", a->nf4 ? "nf4 (double quant)" : ops->act_dtype == DTYPE_BF16 ? "bf16" : "fp32",
           a->offload ? "offloaded to the CPU" : "on the backend");
    printf("step: median %.4f s over %d steps (min %.4f, max %.4f) | %.1f tokens/s | peak %s memory %.3f GB | "
           "loss %.4f -> %.4f\n", r->median_s, a->steps, r->min_s, r->max_s, tokens_per_s, ops->name,
           r->peak_bytes / 1e9, r->first_loss, r->last_loss);
    printf("MFU: %.3g FLOP/token x %.1f tokens/s = %.3f TFLOP/s of a measured %d^3 GEMM rate of %.3f TFLOP/s = "
           "%.1f%%\n", flops, tokens_per_s, flops * tokens_per_s / 1e12, a->probe_size, r->gemm_flops / 1e12,
           100 * flops * tokens_per_s / r->gemm_flops);
    if (a->profile) printf("\n"), op_timer_print(stdout, a->steps, bench_device(ops)), printf("\n");
}

int main(int argc, char **argv) {
    Args a;
    if (!parse_args(argc, argv, &a)) return 2;
    Error err;
    const Ops *backend = strcmp(a.backend, "cpu") == 0 ? ops_cpu() : ops_cuda(&err);
    if (!backend) return fprintf(stderr, "bench_train: %s\n", err.message), 1;
    Ops timed = op_timer_wrap(backend);
    const Ops *ops = a.profile ? &timed : backend;
    LlamaConfig config;
    Result result = {0};
    if (!run(&a, ops, &config, &result, &err)) return fprintf(stderr, "bench_train: %s\n", err.message), 1;
    print_summary(&a, ops, &config, &result);
    printf("RESULT ");
    print_json(stdout, &a, ops, &config, &result);
    FILE *json = a.json_path ? fopen(a.json_path, "a") : NULL;
    if (a.json_path && !json) return fprintf(stderr, "bench_train: cannot append to %s\n", a.json_path), 1;
    if (json) print_json(json, &a, ops, &config, &result), fclose(json);
    return 0;
}
