// The training loop: backend, model, data, optimizer, progress, adapters.
//
// One optimizer step = grad_accum micro-batches. The loss of a step is the sum
// over all its label tokens divided by their count across all micro-batches,
// so accumulation gives the same update as one large batch.
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

#include "metrics.h"
#include "train_private.h"

#define SKIPS_LOGGED 20

// The process's peak resident set (getrusage's ru_maxrss, KiB on Linux).
static double process_peak_rss_bytes(void) {
    struct rusage usage;
    return getrusage(RUSAGE_SELF, &usage) == 0 ? 1024.0 * (double)usage.ru_maxrss : 0.0;
}

// ----------------------------------------------------------------------------
// set-up

static const Ops *choose_backend(const char *backend, bool verbose, Error *err) {
    if (strcmp(backend, "cpu") == 0) return ops_cpu();
    if (strcmp(backend, "auto") == 0 && ops_cuda_is_emulated()) {
        if (verbose) printf("the CUDA backend is the CPU emulation (tools/cuda_emu): using the CPU backend "
                            "(train.backend cuda runs the emulation)\n");
        return ops_cpu();
    }
    Error why = {{0}};
    const Ops *cuda = ops_cuda(&why);
    if (cuda) return cuda;
    if (strcmp(backend, "cuda") == 0) {
        fail(err, "train.backend is cuda, but %s", why.message);
        return NULL;
    }
    if (verbose) printf("CUDA backend unavailable (%s); using the CPU backend\n", why.message);
    return ops_cpu();
}

static LoraConfig lora_config_from(const Config *config) {
    LoraConfig lora = {.r = config->lora.r, .alpha = config->lora.alpha, .dropout = config->lora.dropout,
                       .rslora = config->lora.rslora,
                       .init = strcmp(config->lora.init, "gaussian") == 0 ? LORA_INIT_GAUSSIAN : LORA_INIT_KAIMING};
    memcpy(lora.targets, config->lora.targets, sizeof lora.targets);
    lora.target_projector = config->lora.all_linear;
    lora.target_towers = config->lora.all_linear; // OpenVLA's towers' adapters (ModelOptions.lora_towers)
    return lora;
}

ModelOptions train_model_options(const Config *config, const Ops *ops, const LlamaConfig *llama) {
    return (ModelOptions){.ops = ops, .config = *llama, .lora = lora_config_from(config),
                          .max_batch = config->train.micro_batch, .max_seq_len = config->data.max_seq_len,
                          .activation_checkpointing = config->train.activation_checkpointing,
                          .lm_head_chunk = 1024, .seed = config->train.seed,
                          .nf4 = strcmp(config->model.quantize, "nf4") == 0,
                          .nf4_double_quant = config->model.double_quant};
}

// With a vision tower the model also holds the projector.
static Model *create_model(Run *run, const Config *config, const LlamaConfig *llama, Error *err) {
    ModelOptions options = train_model_options(config, run->ops, llama);
    options.flat_shards = run->dist.info.world_size;
    return vlm_model_options(run, llama, &options, err) ? model_create(&options, err) : NULL;
}

// Writes a random unquantized model of the preset model.create_if_missing at model.path.
static bool write_random_model(Run *run, const LlamaConfig *llama, bool verbose, Error *err) {
    const Config *config = run->config;
    Config unquantized = *config;
    snprintf(unquantized.model.quantize, CONFIG_NAME_MAX, "none");
    Model *model = create_model(run, &unquantized, llama, err);
    if (!model) return false;
    if (verbose) printf("creating a random '%s' model in %s\n", config->model.create_if_missing, config->model.path);
    bool ok = model_init_random_base(model, config->train.seed, err) && make_dirs(config->model.path, err) &&
              hf_save_model(model, config->model.path, err);
    model_destroy(model);
    return ok;
}

// Loads model.path (quantizing it with model.quantize), first writing a random
// model of the preset named by model.create_if_missing there if absent.
static Model *load_or_create_model(Run *run, bool verbose, Error *err) {
    const Config *config = run->config;
    const char *path = config->model.path;
    LlamaConfig llama;
    if (!path_exists(path) && config->model.create_if_missing[0]) {
        if (!llama_config_preset(config->model.create_if_missing, &llama, err) ||
            !write_random_model(run, &llama, verbose, err))
            return NULL;
    } else if (!hf_read_llama_config(path, &llama, err)) {
        return NULL;
    }
    Model *model = create_model(run, config, &llama, err);
    if (!model) return NULL;
    if (!hf_load_weights(model, path, err)) {
        model_destroy(model);
        return NULL;
    }
    return model;
}

// The skipped records (the first SKIPS_LOGGED), then data.max_skip_fraction.
static bool report_skips(const Dataset *dataset, double max_fraction, bool verbose, Error *err) {
    int64_t n = dataset_skipped_count(dataset);
    for (int64_t i = 0; verbose && i < n && i < SKIPS_LOGGED; i++)
        printf("skipped %s\n", dataset_skipped(dataset, i)->message);
    if (verbose && n > SKIPS_LOGGED) printf("skipped %lld more records\n", (long long)(n - SKIPS_LOGGED));
    return dataset_check_skips(dataset, max_fraction, err);
}

bool data_create_if_missing(const Config *config, bool verbose, Error *err) {
    const char *path = config->data.path;
    if (path_exists(path) || !config->data.create_if_missing[0]) return true;
    if (strcmp(config->data.create_if_missing, "demo") != 0)
        return fail(err, "data.create_if_missing: unknown generator '%s' (known: demo)", config->data.create_if_missing);
    char dir[CONFIG_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    if (verbose) printf("writing the demo dataset to %s\n", path);
    return (!slash || make_dirs(dir, err)) && dataset_write_demo_jsonl(path, 2000, config->train.seed, err);
}

static Dataset *open_dataset(const Config *config, const Tokenizer *tok, bool verbose, Error *err) {
    const char *path = config->data.path;
    if (!data_create_if_missing(config, verbose, err)) return NULL;
    Dataset *dataset = dataset_open_jsonl(path, tok, config->data.max_seq_len, err);
    if (dataset && !report_skips(dataset, config->data.max_skip_fraction, verbose, err)) {
        dataset_destroy(dataset);
        return NULL;
    }
    return dataset;
}

// Values the config accepts but this build cannot honour yet stop the run
// before anything is written, rather than being ignored.
static bool check_supported(const Config *config, Error *err) {
    if (run_is_vlm(config) && !config->vision.train_projector)
        return fail(err, "vision.train_projector: a frozen projector is not supported by this build yet");
    return true;
}

// The model and the dataset; rank 0 first, so that it alone creates missing ones.
static bool load_model_and_data(Run *run, Error *err) {
    const Config *config = run->config;
    Collectives *coll = run->dist.coll;
    if (!run->is_rank0 && !coll->barrier(coll, err)) return false;
    // The tokenizer first: the projector's image token id depends on it. A
    // model.path still to be created gets the byte tokenizer its presets use.
    if (!(run->tokenizer = config_tokenizer(config, err))) return false;
    run->model = load_or_create_model(run, run->is_rank0, err);
    if (!run->model) return false;
    if (!config_base_model_name(config, run->base_model, sizeof run->base_model, err)) return false;
    run->adapter_info = (AdapterInfo){.base_model_name_or_path = run->base_model};
    if (!hf_read_layout(config->model.path, &run->adapter_info.layout, err)) return false;
    if (model_config(run->model)->vocab_size < tokenizer_vocab_size(run->tokenizer))
        return fail(err, "%s: vocab_size %d is smaller than the tokenizer's %d", config->model.path,
                    model_config(run->model)->vocab_size, tokenizer_vocab_size(run->tokenizer));
    if (run_is_vlm(config)) {
        if (!vlm_load(run, err)) return false;
    } else if (!(run->dataset = open_dataset(config, run->tokenizer, run->is_rank0, err))) {
        return false;
    }
    return !run->is_rank0 || coll->barrier(coll, err);
}

// ZeRO over the flat buffer, after every rank took rank 0's initial parameters.
static bool create_optimizer(Run *run, Error *err) {
    const Config *config = run->config;
    const ParamTable *params = model_params(run->model);
    Collectives *coll = run->dist.coll;
    if (!coll->broadcast(coll, model_param_data(run->model), params->total * sizeof(float), 0, err)) return false;
    model_sync_params(run->model);
    ZeroOptions zero = {.stage = config->zero.stage, .offload_cpu = strcmp(config->zero.offload, "cpu") == 0,
                        .delayed_update = config->zero.delayed_update, .overlap_comm = config->zero.overlap_comm,
                        .bucket_elements = (size_t)((double)config->zero.bucket_mb * (1 << 20) / sizeof(float)),
                        .beta1 = config->train.beta1, .beta2 = config->train.beta2, .eps = config->train.eps,
                        .weight_decay = config->train.weight_decay, .max_grad_norm = config->train.max_grad_norm};
    run->zero = zero_create(run->ops, coll, model_param_data(run->model), model_grad_data(run->model), params->total,
                            &zero, err);
    return run->zero != NULL;
}

// Refuses, with plan's advice, a run whose plan exceeds the memory it runs
// in: the GPU's, or on the CPU backend the machine's share of this rank.
static bool check_memory_fits(const Config *config, const Ops *ops, const RankInfo *ranks, Error *err) {
    Config planned = *config;
    snprintf(planned.train.backend, CONFIG_NAME_MAX, "%s", ops->device_memory ? "cuda" : "cpu");
    char name[320], *verdict = checked_malloc(ERROR_MESSAGE_MAX, "the memory check", err);
    uint64_t memory = machine_memory_bytes() / (uint64_t)(ranks->local_world_size > 0 ? ranks->local_world_size : 1);
    snprintf(name, sizeof name, "this machine's memory (its share per local rank)");
    CudaInfo info;
    if (ops->device_memory) {
        ops_cuda_info(&info);
        memory = info.n_devices ? info.devices[0].total_bytes : 0;
        snprintf(name, sizeof name, "GPU 0 (%s)", info.n_devices ? info.devices[0].name : "none");
    }
    bool fits = true;
    bool ok = verdict && (memory == 0 || plan_check_fit(&planned, ranks->world_size, memory, 0, name, &fits, verdict,
                                                        ERROR_MESSAGE_MAX, err));
    if (ok && !fits) ok = fail(err, "the run %s", verdict);
    free(verdict);
    return ok;
}

static bool setup(Run *run, const Config *config, Error *err) {
    run->config = config;
    RankInfo ranks;
    if (!rank_info_from_env(&ranks, err)) return false;
    run->is_rank0 = ranks.rank == 0;
    progress_set_quiet(!run->is_rank0);  // preparation progress from rank 0 alone
    if (!check_supported(config, err)) return false;
    run->ops = choose_backend(config->train.backend, run->is_rank0, err);
    if (!run->ops || !check_memory_fits(config, run->ops, &ranks, err) ||
        !dist_context_start(&run->dist, run->ops, config->dist.timeout_s, err))
        return false;
    if (!load_model_and_data(run, err)) return false;
    DataLoaderOptions loader_options = {.micro_batch = config->train.micro_batch,
                                        .grad_accum = config->train.grad_accum,
                                        .max_seq_len = config->data.max_seq_len, .seed = config->train.seed,
                                        .shuffle = config->data.shuffle, .rank = ranks.rank,
                                        .world_size = ranks.world_size, .pack = config->data.pack};
    if (!eval_prepare(run, &loader_options, err) || !(run->loader = run_open_loader(run, NULL, &loader_options, err)) ||
        !eval_create_loader(run, &loader_options, err))
        return false;
    int64_t per_epoch = step_loader_steps_per_epoch(run->loader);
    if (per_epoch < 1)
        return fail(err, "%s: %lld samples are fewer than one step's micro_batch x grad_accum x world_size = %d",
                    config->data.path, (long long)step_loader_samples(run->loader),
                    config->train.micro_batch * config->train.grad_accum * ranks.world_size);
    run->total_steps = config->train.max_steps > 0 ? config->train.max_steps
                                                   : (int)step_loader_steps_for_epochs(run->loader, config->train.epochs);
    run->schedule = (LrSchedule){.kind = config->train.schedule, .peak_lr = config->train.lr,
                                 .warmup_steps = warmup_steps_from(config->train.warmup, run->total_steps),
                                 .total_steps = run->total_steps, .min_lr_ratio = config->train.min_lr_ratio};
    run->config_yaml = config_to_yaml(config, err);
    return run->config_yaml && create_optimizer(run, err);
}

static void teardown(Run *run) {
    free(run->config_yaml);
    zero_destroy(run->zero);
    eval_destroy(run);
    step_loader_destroy(run->loader);
    vlm_destroy(run);
    dataset_destroy(run->dataset);
    model_destroy(run->model);
    tokenizer_destroy(run->tokenizer);
    if (run->ops) dist_context_stop(&run->dist);
}

// ----------------------------------------------------------------------------
// adapters on disk

static bool save_adapter(Run *run, const char *name, char *dir_out, size_t dir_size, Error *err) {
    snprintf(dir_out, dir_size, "%s/%s", run->config->checkpoint.dir, name);
    if (!adapter_save(run->model, &run->adapter_info, dir_out, err) || !vlm_write_dataset_statistics(run, dir_out, err))
        return fail_context(err, "saving the adapter to %s: ", dir_out);
    return true;
}

// ----------------------------------------------------------------------------
// the loop

static void format_duration(double seconds, char *buf, size_t size) {
    long s = (long)(seconds + 0.5);
    snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
}

static void log_step(const Run *run, int step, double loss, float lr, float norm, double tokens, double elapsed) {
    char elapsed_text[32], eta_text[32];
    format_duration(elapsed, elapsed_text, sizeof elapsed_text);
    format_duration(elapsed / step * (run->total_steps - step), eta_text, sizeof eta_text);
    double rate = tokens / elapsed; // 3 significant digits below 100 ("2.58"), whole tokens above
    printf("step %d/%d | loss %.4f | lr %.3e | grad norm %.4f | %.*f tok/s | elapsed %s | eta %s\n", step,
           run->total_steps, loss, lr, norm, rate >= 100 ? 0 : rate >= 10 ? 1 : 2, rate, elapsed_text, eta_text);
    fflush(stdout);
}

// Timing of the log lines: the loop's start and the tokens trained since.
typedef struct Throughput {
    double start, tokens;
    int start_step;
} Throughput;

// ----------------------------------------------------------------------------
// the progress line: with stderr on a terminal (rank 0) one line redrawn in
// place after every step; any other message clears it first, and it comes
// back after the next step. When stdout is that terminal too, the bar takes
// the place of the per-step log lines (metrics.jsonl keeps them all).

#define PROGRESS_BAR_WIDTH 24

static void clear_progress(Run *run) {
    if (!run->progress_shown) return;
    fputs("\r\033[K", stderr);
    run->progress_shown = false;
}

static void draw_progress(Run *run, int step, double loss, const Throughput *throughput, double since_start) {
    char bar[PROGRESS_BAR_WIDTH + 1], eta[32], memory[32];
    int filled = (int)((double)PROGRESS_BAR_WIDTH * step / run->total_steps);
    for (int i = 0; i < PROGRESS_BAR_WIDTH; i++) bar[i] = i < filled ? '#' : '.';
    bar[PROGRESS_BAR_WIDTH] = '\0';
    int steps_run = step - throughput->start_step;
    format_duration(since_start / (steps_run > 0 ? steps_run : 1) * (run->total_steps - step), eta, sizeof eta);
    format_bytes(run->ops->peak_bytes(run->ops), memory, sizeof memory);
    fprintf(stderr, "\r\033[K[%s] step %d/%d | loss %.4f | %.0f tok/s | eta %s | peak %s", bar, step, run->total_steps,
            loss, throughput->tokens / since_start, eta, memory);
    fflush(stderr);
    run->progress_shown = true;
}

// The step's log line (unless the progress line replaces it) and its metrics row.
static bool log_and_record_step(Run *run, int step, const StepBatch *batch, double loss, float lr, float norm,
                                const Throughput *throughput, double since_start, Error *err) {
    if (!run->progress_replaces_lines) {
        clear_progress(run);
        log_step(run, step + 1, loss, lr, norm, throughput->tokens, since_start);
    }
    StepMetrics metrics = {.step = step + 1,
                           .epoch = batch->epoch,
                           .loss = loss,
                           .lr = lr,
                           .grad_norm = norm,
                           .tokens = (double)batch->n_micro * batch->B * batch->T * run->dist.info.world_size,
                           .tokens_per_s = throughput->tokens / since_start,
                           .elapsed_s = time_seconds() - run->run_clock_start,
                           .peak_bytes = run->ops->peak_bytes(run->ops),
                           .skipped_steps = run->progress.skipped_steps,
                           .bad_steps = run->progress.bad_steps};
    return metrics_log_step(run->metrics, &metrics, err);
}

// The step's micro-batches (with run, their images through its tower, and at
// ZeRO stage 2 each micro-batch's gradient reduce-scattered to its owners,
// bucket by bucket during the backward with zero.overlap_comm, the last
// micro-batch's buckets copied to the host with --offload cpu); with one
// rank, *interrupted when a stop signal arrived after one of them (the step
// is then incomplete and not applied). The loss sum stays on the device
// until all are issued: reading it is the step's one wait for the device here,
// after zero_wait (the collectives: a dead peer fails there, not in the read).
static bool accumulate(Run *run, Zero *zero, Model *model, const StepBatch *batch, uint64_t seed, int step,
                       double *mean_loss, bool *interrupted, Error *err) {
    model_zero_grads(model);
    StepOptions options = {.grad_scale = (float)(1.0 / (double)batch->n_label_tokens), .train = true,
                           .grads_ready = zero ? zero_grads_ready : NULL, .grads_ready_context = zero};
    size_t micro_tokens = (size_t)batch->B * batch->T;
    *interrupted = false;
    bool one_rank = !run || run->dist.info.world_size == 1;
    for (int micro = 0; micro < batch->n_micro; micro++) {
        Batch micro_batch = {.B = batch->B, .T = batch->T, .tokens = batch->tokens + micro * micro_tokens,
                             .targets = batch->targets + micro * micro_tokens,
                             .seq_start = batch->seq_start ? batch->seq_start + micro * micro_tokens : NULL};
        options.dropout_seed = rng_hash(seed ^ 0xd5d5d5d5ULL,
                                        (uint64_t)step * (uint64_t)batch->n_micro + (uint64_t)micro);
        options.accumulate_loss = micro > 0;
        if (!vlm_micro_features(run, batch, micro, &micro_batch, err)) return false;
        if (zero) zero_begin_micro_batch(zero, micro + 1 == batch->n_micro);
        if (!model_step(model, &micro_batch, &options, err) || !vlm_micro_backward(run, &options, err)) return false;
        if (zero && !zero_reduce_micro_batch(zero, model_grad_data(model), err)) return false;
        if (one_rank && stop_signal && micro + 1 < batch->n_micro) {
            *interrupted = true;
            return true;
        }
    }
    double loss_sum;
    if ((zero && !zero_wait(zero, err)) || !model_loss_sum(model, &loss_sum, err)) return false;
    *mean_loss = loss_sum / (double)batch->n_label_tokens;
    return true;
}

bool train_accumulate(Model *model, Zero *zero, const StepBatch *batch, uint64_t seed, int step, double *mean_loss,
                      Error *err) {
    bool interrupted;
    return accumulate(NULL, zero, model, batch, seed, step, mean_loss, &interrupted, err);
}

// ----------------------------------------------------------------------------
// outlier steps, as llm.c's z-score guard: a step whose loss or gradient norm
// is more than train.skip_loss_zscore / skip_grad_zscore standard deviations
// above the mean of the last train.skip_window accepted steps is skipped
// before the update. The window lives in run->progress, so checkpoints carry
// it and a resumed run decides as an uninterrupted one; the loss and norm
// are reduced over ranks, so every rank decides alike.

#define OUTLIER_MIN_HISTORY 10

// The window's statistics of one quantity; limit: the value above which a step is an outlier.
typedef struct Spread {
    int n;
    double mean, sd, limit;
} Spread;

typedef struct OutlierLimits {
    Spread loss, norm;
} OutlierLimits;

// limit INFINITY when the rule is off (zscore 0) or fewer than OUTLIER_MIN_HISTORY steps are in the window.
static Spread spread_of(const double *history, int n, int window, float zscore) {
    int from = n > window ? n - window : 0;
    Spread spread = {.n = n - from, .limit = INFINITY};
    if (zscore <= 0 || spread.n < OUTLIER_MIN_HISTORY) return spread;
    double sum = 0, squares = 0;
    for (int i = from; i < n; i++) sum += history[i];
    spread.mean = sum / spread.n;
    for (int i = from; i < n; i++) squares += (history[i] - spread.mean) * (history[i] - spread.mean);
    spread.sd = sqrt(squares / spread.n);
    spread.limit = spread.mean + zscore * spread.sd;
    return spread;
}

static OutlierLimits outlier_limits(const Run *run) {
    const TrainerState *p = &run->progress;
    int window = run->config->train.skip_window;
    return (OutlierLimits){spread_of(p->recent_loss, p->n_recent, window, run->config->train.skip_loss_zscore),
                           spread_of(p->recent_norm, p->n_recent, window, run->config->train.skip_grad_zscore)};
}

// Appends an accepted step to the window, dropping the oldest beyond train.skip_window.
static void remember_step(Run *run, double loss, float norm) {
    TrainerState *p = &run->progress;
    int window = run->config->train.skip_window;
    if (p->n_recent >= window) {
        int drop = p->n_recent - window + 1;
        p->n_recent -= drop;
        memmove(p->recent_loss, p->recent_loss + drop, (size_t)p->n_recent * sizeof(double));
        memmove(p->recent_norm, p->recent_norm + drop, (size_t)p->n_recent * sizeof(double));
    }
    p->recent_loss[p->n_recent] = loss;
    p->recent_norm[p->n_recent++] = norm;
}

typedef enum Verdict { STEP_APPLIED, STEP_NON_FINITE, STEP_LOSS_OUTLIER, STEP_NORM_OUTLIER } Verdict;

// Gradients summed over ranks, clipped by the global norm, AdamW (ZeRO).
// Parameters and optimizer state stay untouched unless *verdict is
// STEP_APPLIED: a non-finite loss or norm, or one above its outlier limit,
// skips the step (a non-finite or outlier loss without calling zero_step).
static bool optimizer_step(Run *run, int step, double loss, const OutlierLimits *limits, float *norm_out,
                           float *lr_out, Verdict *verdict, Error *err) {
    Model *model = run->model;
    *lr_out = lr_at_step(&run->schedule, step);
    *norm_out = NAN;
    *verdict = !isfinite(loss) ? STEP_NON_FINITE : loss > limits->loss.limit ? STEP_LOSS_OUTLIER : STEP_APPLIED;
    if (*verdict != STEP_APPLIED) return true;
    zero_set_norm_limit(run->zero, (float)limits->norm.limit);
    if (!zero_step(run->zero, model_param_data(model), model_grad_data(model), *lr_out, norm_out, err)) return false;
    *verdict = !isfinite(*norm_out) ? STEP_NON_FINITE
               : *norm_out > (float)limits->norm.limit ? STEP_NORM_OUTLIER : STEP_APPLIED;
    if (*verdict == STEP_APPLIED) model_sync_params(model);
    return true;
}

// This rank's micro-batches with the loss normalised by the label tokens of
// all ranks; *loss: the step's mean loss over all ranks; *skipped when no
// rank has a label token. With several ranks the same all-reduce counts the
// ranks that got a stop signal: any makes every rank *interrupted before
// the step, so all stop at the same one.
static bool accumulate_global(Run *run, const StepBatch *batch, int step, double *loss, bool *skipped,
                              bool *interrupted, Error *err) {
    StepBatch global = *batch;
    bool several = run->dist.info.world_size > 1;
    double sums[2] = {(double)batch->n_label_tokens, several && stop_signal ? 1.0 : 0.0};
    if (!all_reduce_host(&run->dist, sums, 2, err)) return false;
    global.n_label_tokens = (int64_t)sums[0];
    *loss = 0;
    *interrupted = sums[1] > 0;
    *skipped = global.n_label_tokens == 0;
    if (*interrupted || *skipped) return true;
    uint64_t rank_seed = run->config->train.seed ^ ((uint64_t)run->dist.info.rank * 0x9E3779B97F4A7C15ULL);
    return accumulate(run, run->zero, run->model, &global, rank_seed, step, loss, interrupted, err) &&
           (*interrupted || all_reduce_host(&run->dist, loss, 1, err));
}

static void print_header(const Run *run) {
    const LlamaConfig *c = model_config(run->model);
    if (run->dist.info.world_size > 1)
        printf("%d ranks (%s collectives) | ZeRO stage %d | optimizer shard of %zu parameters%s\n",
               run->dist.info.world_size, run->dist.coll->name, run->config->zero.stage, zero_shard_size(run->zero),
               strcmp(run->config->zero.offload, "cpu") == 0 ? " in host memory" : "");
    printf("backend %s | model %d layers, hidden %d, vocab %d | LoRA r %d on %lld trainable parameters\n",
           run->ops->name, c->n_layers, c->hidden_size, c->vocab_size, run->config->lora.r,
           (long long)model_params(run->model)->total);
    printf("data %s: %lld samples (%lld truncated to %d tokens)%s | %d steps of %d x %d micro-batches\n",
           run->config->data.path, (long long)step_loader_samples(run->loader),
           (long long)step_loader_truncated(run->loader), run->config->data.max_seq_len,
           run->config->data.pack ? ", packed into rows" : "", run->total_steps,
           run->config->train.grad_accum, run->config->train.micro_batch);
    fflush(stdout);
}

// Applies the update in flight (zero.delayed_update) to the model, on every
// rank: what is saved next is the state after all the updates started.
static bool settle_optimizer(Run *run, Error *err) {
    if (!run->config->zero.delayed_update) return true;
    if (!zero_flush(run->zero, model_param_data(run->model), err)) return false;
    model_sync_params(run->model);
    return true;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

// loss.png in the run folder from its metrics.jsonl (rank 0). A plot that
// cannot be drawn is reported and training goes on.
static void draw_loss_plot(const Run *run) {
    if (!run->is_rank0) return;
    const Config *config = run->config;
    char title[256], path[CONFIG_PATH_MAX + 16];
    const char *recipe = run->control->config_name ? run->control->config_name : config->checkpoint.dir;
    snprintf(title, sizeof title, "%.80s | model %.80s | LoRA r %d", base_name(recipe), base_name(config->model.path),
             config->lora.r);
    snprintf(path, sizeof path, "%s/loss.png", config->checkpoint.dir);
    RunHistory history;
    Error err;
    bool ok = history_read(config->checkpoint.dir, &history, &err) && plot_loss_png(&history, title, path, &err);
    history_free(&history);
    if (!ok) printf("warning: loss.png not drawn: %s\n", err.message);
}

// Saves the state before next_step and marks the run interrupted.
static bool stop_with_checkpoint(Run *run, int next_step, TrainSummary *summary, Error *err) {
    summary->interrupted = true;
    if (!settle_optimizer(run, err)) return false;
    if (!save_checkpoint(run, next_step, summary->checkpoint_dir, sizeof summary->checkpoint_dir, err)) return false;
    clear_progress(run);
    if (run->is_rank0) printf("stopped before step %d: checkpoint saved to %s (continue with --resume)\n", next_step + 1,
           summary->checkpoint_dir);
    draw_loss_plot(run);
    return true;
}

// The skip message names the rule that fired and its numbers.
static void log_bad_step(Run *run, int step, Verdict verdict, const OutlierLimits *limits, double loss,
                         float norm, int in_row) {
    if (!run->is_rank0) return;
    clear_progress(run);
    printf("step %d/%d | skipped: ", step + 1, run->total_steps);
    const Config *c = run->config;
    if (verdict == STEP_NON_FINITE) printf("non-finite loss %g or gradient norm %g", loss, (double)norm);
    if (verdict == STEP_LOSS_OUTLIER)
        printf("loss %.4g is %.1f sigma above the last %d steps' mean %.4g (train.skip_loss_zscore %g)", loss,
               (loss - limits->loss.mean) / limits->loss.sd, limits->loss.n, limits->loss.mean,
               (double)c->train.skip_loss_zscore);
    if (verdict == STEP_NORM_OUTLIER)
        printf("gradient norm %.4g is %.1f sigma above the last %d steps' mean %.4g (train.skip_grad_zscore %g)",
               (double)norm, (norm - limits->norm.mean) / limits->norm.sd, limits->norm.n, limits->norm.mean,
               (double)c->train.skip_grad_zscore);
    printf(" (%d in a row)\n", in_row);
    fflush(stdout);
}

// A skipped step (non-finite or outlier); false (after a checkpoint of the
// last good state) when max_bad_steps came in a row.
static bool count_bad_step(Run *run, int step, Verdict verdict, const OutlierLimits *limits, int *in_row,
                           double loss, float norm, TrainSummary *summary, Error *err) {
    run->progress.bad_steps++;
    (*in_row)++;
    log_bad_step(run, step, verdict, limits, loss, norm, *in_row);
    if (*in_row < run->config->train.max_bad_steps) return true;
    if (!settle_optimizer(run, err)) return false;
    if (!save_checkpoint(run, step + 1, summary->checkpoint_dir, sizeof summary->checkpoint_dir, err)) return false;
    return fail(err, "step %d: %d bad steps in a row (non-finite or outliers; train.max_bad_steps); the last good "
                     "state is in %s", step + 1, *in_row, summary->checkpoint_dir);
}

static void record_step(Run *run, int step, double loss) {
    if (zero_state(run->zero).step == 1) run->progress.first_loss = loss;
    run->progress.last_loss = loss;
    if (run->control->on_step) run->control->on_step(run->control->context, step + 1, loss);
}

// With several ranks a signal is acted on in accumulate_global, where they agree.
static bool stop_requested(const Run *run, int step) {
    return (run->dist.info.world_size == 1 && stop_signal) ||
           (run->control->stop_after_steps > 0 && step == run->control->stop_after_steps);
}

// The optimizer step (or its skip, counted) of a step with label tokens, the outlier window and the log line.
static bool update_and_log(Run *run, int step, const StepBatch *batch, double loss, int *bad_in_row,
                           Throughput *throughput, TrainSummary *summary, Error *err) {
    OutlierLimits limits = outlier_limits(run);
    Verdict verdict;
    float norm, lr;
    if (!optimizer_step(run, step, loss, &limits, &norm, &lr, &verdict, err))
        return fail_context(err, "step %d: ", step + 1);
    if (verdict != STEP_APPLIED) return count_bad_step(run, step, verdict, &limits, bad_in_row, loss, norm, summary, err);
    *bad_in_row = 0;
    remember_step(run, loss, norm);
    throughput->tokens += (double)batch->n_micro * batch->B * batch->T * run->dist.info.world_size;
    record_step(run, step, loss);
    if (!run->is_rank0) return true;
    double since_start = time_seconds() - throughput->start;
    bool due = (step + 1) % run->config->train.log_every == 0 || step + 1 == run->total_steps;
    bool ok = !due || log_and_record_step(run, step, batch, loss, lr, norm, throughput, since_start, err);
    if (run->progress_line) draw_progress(run, step + 1, loss, throughput, since_start);
    return ok;
}

static bool write_text_file(const char *path, const char *text, Error *err) {
    FILE *f = fopen(path, "w");
    if (!f) return fail(err, "%s: %s", path, strerror(errno));
    bool written = fputs(text, f) >= 0;
    if (fclose(f) != 0 || !written) return fail(err, "%s: writing failed: %s", path, strerror(errno));
    return true;
}

// keep_best: the adapter of the lowest eval loss so far in best/, with eval.json naming its step.
static bool keep_if_best(Run *run, int step, const EvalResult *result, Error *err) {
    TrainerState *p = &run->progress;
    if (p->best_eval_step > 0 && !(result->loss < p->best_eval_loss)) return true;
    p->best_eval_step = step + 1;
    p->best_eval_loss = result->loss;
    if (!run->config->checkpoint.keep_best || !run->is_rank0) return true;
    char dir[CONFIG_PATH_MAX + 32], path[CONFIG_PATH_MAX + 64], json[256];
    if (!save_adapter(run, "best", dir, sizeof dir, err)) return false;
    clear_progress(run);
    snprintf(path, sizeof path, "%s/eval.json", dir);
    snprintf(json, sizeof json, "{\"step\": %d, \"eval_loss\": %.17g, \"eval_token_accuracy\": %.17g}\n",
                     step + 1, result->loss, result->token_accuracy);
    if (!write_text_file(path, json, err)) return fail_context(err, "checkpoint.keep_best: ");
    printf("best eval loss so far: adapter saved to %s\n", dir);
    return true;
}

// Evaluates the model after `done` steps: printed, logged, kept in *result.
static bool evaluate_and_log(Run *run, int done, EvalResult *out, Error *err) {
    EvalResult result;
    if (!eval_run(run, done, &result, err)) return fail_context(err, "step %d: ", done);
    *out = result;
    if (run->is_rank0) {
        clear_progress(run);
        printf("eval after step %d/%d | loss %.4f | perplexity %.3f | token accuracy %.2f%% | exact answers %.2f%% "
               "of %lld | %lld label tokens | %.1f s\n", done, run->total_steps, result.loss, result.perplexity,
               100 * result.token_accuracy, 100 * result.answer_accuracy, (long long)result.n_answers,
               (long long)result.n_label_tokens, result.seconds);
        if (run->robot_dataset)
            printf("  actions: token accuracy %.2f%% | L1 %.4f (normalised, bin centres) | %lld action tokens\n",
                   100 * result.action_accuracy, result.action_l1, (long long)result.n_action_tokens);
        fflush(stdout);
    }
    EvalMetrics metrics = {.step = done, .loss = result.loss, .perplexity = result.perplexity,
                           .token_accuracy = result.token_accuracy, .answer_accuracy = result.answer_accuracy,
                           .label_tokens = result.n_label_tokens, .answers = result.n_answers,
                           .seconds = result.seconds, .elapsed_s = time_seconds() - run->run_clock_start,
                           .has_actions = run->robot_dataset != NULL, .action_accuracy = result.action_accuracy,
                           .action_l1 = result.action_l1, .action_tokens = result.n_action_tokens};
    return metrics_log_eval(run->metrics, &metrics, err);
}

// After every train.eval_every-th step and the last one, with held-out data
// (the last step's update settled first, so the final adapter is what is judged).
static bool evaluate_if_due(Run *run, int step, Error *err) {
    if (!eval_due(run, step)) return true;
    if (step + 1 == run->total_steps && !settle_optimizer(run, err)) return false;
    return evaluate_and_log(run, step + 1, &run->last_eval, err) && keep_if_best(run, step, &run->last_eval, err);
}

// TrainControl.eval_before: the held-out data evaluated before the first step of a fresh run.
static bool evaluate_before(Run *run, int start_step, TrainSummary *summary, Error *err) {
    if (!run->control->eval_before || start_step != 0 || !eval_enabled(run)) return true;
    EvalResult before;
    if (!evaluate_and_log(run, 0, &before, err)) return false;
    summary->before_eval_loss = before.loss;
    summary->before_eval_action_accuracy = before.action_accuracy;
    summary->before_eval_action_l1 = before.action_l1;
    return true;
}

// After every checkpoint.every_steps-th step and the last one (so a longer
// run can continue it), whether the step was applied or skipped.
static bool save_if_due(Run *run, int step, TrainSummary *summary, Error *err) {
    int every = run->config->checkpoint.every_steps;
    if (!(every > 0 && (step + 1) % every == 0) && step + 1 != run->total_steps) return true;
    if (!settle_optimizer(run, err)) return false;
    if (!save_checkpoint(run, step + 1, summary->checkpoint_dir, sizeof summary->checkpoint_dir, err)) return false;
    clear_progress(run);
    if (run->is_rank0) printf("saved checkpoint %s (verified)\n", summary->checkpoint_dir);
    draw_loss_plot(run);
    return true;
}

static bool train_loop(Run *run, int start_step, TrainSummary *summary, Error *err) {
    Throughput throughput = {.start = time_seconds(), .start_step = start_step};
    int bad_in_row = 0;
    for (int step = start_step; step < run->total_steps; step++) {
        if (stop_requested(run, step)) return stop_with_checkpoint(run, step, summary, err);
        int epoch;
        int64_t step_in_epoch;
        step_loader_position(run->loader, &epoch, &step_in_epoch);
        const StepBatch *batch = step_loader_next(run->loader, err);
        if (!batch) return fail_context(err, "step %d: ", step + 1);
        double loss;
        bool skipped, interrupted;
        if (!accumulate_global(run, batch, step, &loss, &skipped, &interrupted, err))
            return fail_context(err, "step %d: ", step + 1);
        if (interrupted) {
            step_loader_seek(run->loader, epoch, step_in_epoch);
            return stop_with_checkpoint(run, step, summary, err);
        }
        if (skipped) {
            run->progress.skipped_steps++;
            clear_progress(run);
            if (run->is_rank0) printf("step %d/%d | skipped: no label tokens in this step\n", step + 1, run->total_steps);
        } else if (!update_and_log(run, step, batch, loss, &bad_in_row, &throughput, summary, err)) {
            return false;
        }
        if (!evaluate_if_due(run, step, err) || !save_if_due(run, step, summary, err)) return false;
    }
    clear_progress(run);
    if (!settle_optimizer(run, err)) return false;
    return !run->is_rank0 || save_adapter(run, "adapter", summary->adapter_dir, sizeof summary->adapter_dir, err);
}

static void fill_summary(const Run *run, TrainSummary *summary) {
    summary->steps = zero_state(run->zero).step;
    summary->skipped_steps = run->progress.skipped_steps;
    summary->bad_steps = run->progress.bad_steps;
    summary->first_loss = run->progress.first_loss;
    summary->last_loss = run->progress.last_loss;
    summary->evaluations = run->eval.n_done;
    summary->eval_loss = run->last_eval.loss;
    summary->eval_token_accuracy = run->last_eval.token_accuracy;
    summary->eval_answer_accuracy = run->last_eval.answer_accuracy;
    summary->eval_action_accuracy = run->last_eval.action_accuracy;
    summary->eval_action_l1 = run->last_eval.action_l1;
    summary->best_eval_step = run->progress.best_eval_step;
    summary->best_eval_loss = run->progress.best_eval_loss;
}

static bool start_and_train(Run *run, TrainSummary *summary, Error *err) {
    int start_step = 0;
    if (run->control->resume && !resume_from_checkpoint(run, &start_step, err)) return false;
    if (run->is_rank0) print_header(run);
    if (run->is_rank0) eval_print_header(run);
    if (run->is_rank0 && !check_disk_for_run(run, err)) return false;
    if (run->is_rank0 && !(run->metrics = metrics_open(run->config->checkpoint.dir, start_step, err))) return false;
    if (run->is_rank0 && !vlm_write_dataset_statistics(run, run->config->checkpoint.dir, err)) return false;
    run->run_clock_start = time_seconds() - metrics_elapsed_before(run->metrics);
    run->progress_line = run->is_rank0 && isatty(STDERR_FILENO);
    run->progress_replaces_lines = run->progress_line && isatty(STDOUT_FILENO);
    return evaluate_before(run, start_step, summary, err) && train_loop(run, start_step, summary, err);
}

bool train_run_with(const Config *config, const TrainControl *control, TrainSummary *summary, Error *err) {
    TrainSummary local;
    if (!summary) summary = &local;
    *summary = (TrainSummary){0};
    TrainControl no_control = {0};
    Run run = {.control = control ? control : &no_control};
    bool installed_signals;
    if (!stop_signals_install(&installed_signals, err)) return false;
    bool ok = setup(&run, config, err) && start_and_train(&run, summary, err);
    if (run.zero) fill_summary(&run, summary);
    ok = metrics_close(run.metrics, ok ? err : &(Error){{0}}) && ok;
    if (ok && run.is_rank0 && !summary->interrupted)
        printf("done: %d steps, loss %.4f -> %.4f | peak memory: %s backend %.2f GB (its own allocations), process "
               "%.2f GB (resident) | adapter saved to %s\n",
               summary->steps, summary->first_loss, summary->last_loss, run.ops->name,
               run.ops->peak_bytes(run.ops) / 1e9, process_peak_rss_bytes() / 1e9, summary->adapter_dir);
    teardown(&run);
    if (installed_signals) stop_signals_restore();
    return ok;
}

bool train_run(const Config *config, TrainSummary *summary, Error *err) {
    return train_run_with(config, NULL, summary, err);
}
