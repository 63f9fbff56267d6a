// lora-train plan: the memory, disk and tokens a config will need, computed
// before anything is trained or loaded. Memory comes from model_plan (the
// layout code model_create allocates with), the checkpoint size from a real
// checkpoint image of the trainable parameters (no base weights loaded).
#include <ctype.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "train_private.h"

#define NORM_SCALAR_BYTES sizeof(float) // ZeRO's grad-norm accumulator
#define NCCL_BARRIER_BYTES sizeof(float) // the scalar NCCL's barrier all-reduces

// The storage the run's backend uses: bf16 on CUDA, fp32 on the CPU. A GPU
// backend is planned for even where this machine has no GPU (train.backend cuda).
static bool plan_uses_gpu(const Config *config) {
    if (strcmp(config->train.backend, "cpu") == 0) return false;
    if (strcmp(config->train.backend, "cuda") == 0) return true;
    Error why;
    return !ops_cuda_is_emulated() && ops_cuda(&why) != NULL;
}

// The key layout from config.json alone (the weights not downloaded yet):
// LLaVA's newer layout for a llava model_type, OpenVLA's for openvla; the layout changes only the
// adapter's key names, so the plan's checkpoint size by a few bytes.
static HfLayout layout_from_config_json(const char *model_dir) {
    char path[CONFIG_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    json_object *config = json_object_from_file(path), *type = NULL;
    const char *model_type = config && json_object_object_get_ex(config, "model_type", &type) &&
                                     json_object_is_type(type, json_type_string) ? json_object_get_string(type) : "";
    HfLayout layout = strcmp(model_type, "llava") == 0     ? HF_LAYOUT_LLAVA
                      : strcmp(model_type, "openvla") == 0 ? HF_LAYOUT_OPENVLA
                                                           : HF_LAYOUT_LLAMA;
    json_object_put(config);
    return layout;
}

static bool weights_present(const char *model_dir) {
    char path[CONFIG_PATH_MAX + 40];
    snprintf(path, sizeof path, "%s/model.safetensors", model_dir);
    if (path_exists(path)) return true;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", model_dir);
    return path_exists(path);
}

bool config_llama_config(const Config *config, LlamaConfig *llama, HfLayout *layout, Error *err) {
    const char *path = config->model.path;
    *layout = HF_LAYOUT_LLAMA;
    if (!path_exists(path) && config->model.create_if_missing[0])
        return llama_config_preset(config->model.create_if_missing, llama, err);
    char json[CONFIG_PATH_MAX + 16];
    snprintf(json, sizeof json, "%s/config.json", path);
    if (!path_exists(json))
        return fail(err, "model.path: %s has no config.json, which plan needs at least: huggingface-cli download %s "
                         "config.json --local-dir %s", path, config->model.name[0] ? config->model.name : "<id>", path);
    if (!hf_read_llama_config(path, llama, err)) return false;
    if (!weights_present(path)) {
        *layout = layout_from_config_json(path);
        return true;
    }
    return hf_read_layout(path, layout, err);
}

// "owner/name" of letters, digits, '-', '_' and '.', as the Hugging Face Hub spells a repository.
static bool is_hub_id(const char *text) {
    const char *slash = strchr(text, '/');
    if (!slash || slash == text || !slash[1] || strchr(slash + 1, '/') || text[0] == '.') return false;
    for (const char *c = text; *c; c++)
        if (c != slash && !isalnum((unsigned char)*c) && !strchr("-_.", *c)) return false;
    return true;
}

// config.json's "_name_or_path" into name when it is a Hub id; false otherwise.
static bool hub_id_of_folder(const char *model_dir, char *name, size_t size) {
    char path[CONFIG_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    json_object *config = json_object_from_file(path), *value = NULL;
    bool found = config && json_object_object_get_ex(config, "_name_or_path", &value) &&
                 json_object_is_type(value, json_type_string) && is_hub_id(json_object_get_string(value)) &&
                 !path_exists(json_object_get_string(value));
    if (found) snprintf(name, size, "%s", json_object_get_string(value));
    json_object_put(config);
    return found;
}

bool config_base_model_name(const Config *config, char *name, size_t size, Error *err) {
    if (config->model.name[0]) return snprintf(name, size, "%s", config->model.name) > 0;
    if (hub_id_of_folder(config->model.path, name, size)) return true;
    char absolute[PATH_MAX];
    if (realpath(config->model.path, absolute)) return snprintf(name, size, "%s", absolute) > 0;
    if (config->model.path[0] == '/' || !getcwd(absolute, sizeof absolute))
        return snprintf(name, size, "%s", config->model.path) > 0; // not created yet (plan)
    int n = snprintf(name, size, "%s/%s", absolute, config->model.path);
    return (n > 0 && (size_t)n < size) || fail(err, "model.path: %s/%s is too long", absolute, config->model.path);
}

// Robot data: whole steps of micro_batch x grad_accum x ranks per epoch over
// the steps training serves, as RobotLoader deals them.
static bool plan_robot_steps(const Config *config, int world_size, int *total_steps, Error *err) {
    RobotDataset *dataset = open_robot_dataset(config, config->data.path, err);
    if (!dataset) return false;
    int64_t n = robot_dataset_size(dataset), *train = NULL, *held_out = NULL, n_held_out;
    robot_dataset_destroy(dataset);
    if (config->data.eval_fraction > 0 &&
        !data_split_held_out(n, config->data.eval_fraction, config->train.seed, &train, &n, &held_out, &n_held_out, err))
        return false;
    free(train);
    free(held_out);
    int64_t per_step = (int64_t)config->train.micro_batch * config->train.grad_accum * world_size;
    *total_steps = (int)(n / per_step * config->train.epochs);
    return true;
}

// Optimizer steps of the run: train.max_steps, or epochs over the dataset.
static bool plan_total_steps(const Config *config, int world_size, int *total_steps, Error *err) {
    *total_steps = config->train.max_steps;
    if (*total_steps > 0) return true;
    if (!path_exists(config->data.path)) return true; // unknown until the dataset exists
    if (config_is_robot_data(config)) return plan_robot_steps(config, world_size, total_steps, err);
    Tokenizer *tok = config_tokenizer(config, err); // the run's token counts: packed rows depend on them
    Dataset *dataset = tok ? dataset_open_jsonl(config->data.path, tok, config->data.max_seq_len, err) : NULL;
    DataLoaderOptions options = {.micro_batch = config->train.micro_batch, .grad_accum = config->train.grad_accum,
                                 .max_seq_len = config->data.max_seq_len, .seed = config->train.seed,
                                 .shuffle = config->data.shuffle, .world_size = world_size,
                                 .pack = config->data.pack};
    int64_t *train = NULL, *held_out = NULL, n_held_out;
    bool split = dataset && config->data.eval_fraction > 0 &&
                 data_split_held_out(dataset_size(dataset), config->data.eval_fraction, config->train.seed, &train,
                                     &options.n_subset, &held_out, &n_held_out, err);
    options.subset = train; // data.eval_fraction: training serves the rest
    bool serves = dataset && (split || config->data.eval_fraction <= 0);
    DataLoader *loader = serves ? dataloader_create(dataset, &options, err) : NULL;
    if (loader) *total_steps = (int)dataloader_steps_for_epochs(loader, config->train.epochs);
    dataloader_destroy(loader);
    free(train);
    free(held_out);
    dataset_destroy(dataset);
    tokenizer_destroy(tok);
    return loader != NULL;
}

// The bytes of one checkpoint as checkpoint_write adds them: the trainable
// parameters alone are created and serialised with zero Adam moments.
static bool plan_checkpoint_bytes(const Config *config, const ModelOptions *options, HfLayout layout,
                                  int total_steps, uint64_t *bytes, Error *err) {
    ModelOptions trainable = *options;
    trainable.ops = ops_cpu();
    trainable.trainable_only = true;
    Model *model = model_create(&trainable, err);
    if (!model) return false;
    size_t n = model_params(model)->total;
    float *moments = checked_calloc(2 * n, sizeof(float), "plan: Adam moments", err);
    char *yaml = moments ? config_to_yaml(config, err) : NULL;
    CheckpointImage *image = NULL;
    char base_model[CONFIG_PATH_MAX];
    if (yaml && config_base_model_name(config, base_model, sizeof base_model, err)) {
        AdapterInfo adapter = {.base_model_name_or_path = base_model, .layout = layout};
        TrainerState state = {.step = total_steps, .optimizer_steps = total_steps, .seed = config->train.seed,
                              .first_loss = 1.0, .last_loss = 1.0, .config_yaml = yaml};
        CheckpointSource source = {model, &adapter, moments, moments + n, true, &state, .world_size = 0};
        image = checkpoint_image_create(&source, err);
    }
    if (image) *bytes = checkpoint_image_bytes(image);
    checkpoint_image_destroy(image);
    free(yaml);
    free(moments);
    model_destroy(model);
    return image != NULL;
}

// Optimizer state of rank 0's shard (the largest): Adam moments in backend
// memory, or masters, gradients (two buffers with the delayed update) and
// moments in pinned host memory with offload.
static void plan_optimizer(const Config *config, RunPlan *plan) {
    size_t begin = 0, end = plan->model.n_params;
    if (config->zero.stage == 2) dist_shard_range(plan->model.n_params, plan->world_size, 0, &begin, &end);
    plan->optimizer_shard = end - begin;
    bool offload = strcmp(config->zero.offload, "cpu") == 0;
    size_t host_buffers = config->zero.delayed_update ? 5 : 4;
    plan->optimizer_device_bytes = offload ? 0 : 2 * plan->optimizer_shard * sizeof(float);
    plan->pinned_host_bytes = offload ? host_buffers * plan->optimizer_shard * sizeof(float) : 0;
}

static bool plan_memory(const Config *config, const ModelOptions *options, RunPlan *plan, Error *err) {
    ModelOptions variant = *options;
    ModelPlan other;
    variant.activation_checkpointing = !options->activation_checkpointing;
    if (!model_plan(options, &plan->model, err) || !model_plan(&variant, &other, err)) return false;
    plan->activation_bytes_checkpointed = options->activation_checkpointing ? plan->model.activation_bytes
                                                                            : other.activation_bytes;
    plan->activation_bytes_full = options->activation_checkpointing ? other.activation_bytes
                                                                    : plan->model.activation_bytes;
    plan_optimizer(config, plan);
    // The CUDA backend's own buffers: the fixed device ones and the scratch the
    // model reserves; on the host, upload_async's pinned staging.
    if (plan->gpu) {
        plan->backend_bytes =
            CUDA_LT_WORKSPACE_BYTES + CUDA_STAGING_BYTES + CUDA_REDUCE_PARTIALS_BYTES + plan->model.scratch_bytes;
        plan->pinned_host_bytes += CUDA_UPLOAD_STAGING_BYTES;
    }
    plan->workspace_bytes = plan->model.nf4_scratch_bytes + NORM_SCALAR_BYTES + DIST_SCALARS_BYTES;
    if (plan->gpu && plan->world_size > 1) plan->workspace_bytes += NCCL_BARRIER_BYTES;
    plan->device_total_bytes = plan->model.frozen_bytes + plan->model.nf4_bytes + plan->model.param_bytes +
                               plan->model.grad_bytes + plan->optimizer_device_bytes + plan->model.activation_bytes +
                               plan->workspace_bytes + plan->tower_bytes + plan->backend_bytes;
    return true;
}


// OpenVLA: its projector in the model, beside it both towers, each with its feature buffer, and the
// buffer of their features side by side.
static bool plan_openvla(const Config *config, const OpenVlaVision *vla, ModelOptions *options, RunPlan *plan,
                         Error *err) {
    DType act_dtype = options->ops->act_dtype;
    int micro = config->train.micro_batch;
    vlm_openvla_model_options(config, vla, options);
    options->lora_towers = vla->towers; // their adapters in the flat buffer under all-linear, as a run's
    options->image_feature_grads = options->lora.target_towers;
    plan->tower_bytes = (size_t)options->max_image_rows * options->projector_in * dtype_size(act_dtype);
    // all-linear puts adapters on the towers, which then keep what their backward needs
    ClipTowerOptions training = {.lora_r = config->lora.r, .train = true,
                                 .activation_checkpointing = config->train.activation_checkpointing};
    const ClipTowerOptions *tower_options = config->lora.all_linear ? &training : NULL;
    for (int k = 0; k < 2; k++) {
        size_t bytes;
        if (!clip_tower_bytes(act_dtype, &vla->towers[k], micro, tower_options, &bytes, err)) return false;
        plan->tower_bytes += bytes + vlm_feature_bytes(config, &vla->towers[k], act_dtype);
    }
    return true;
}

// An image-text run adds the projector to the model, and beside it the frozen
// tower and the buffer of its features; an OpenVLA model.path, its two towers (read into *vla, which
// options->lora_towers then points at: the caller keeps it while it uses options).
static bool plan_vision(const Config *config, ModelOptions *options, OpenVlaVision *vla, RunPlan *plan, Error *err) {
    bool is_openvla;
    if (!vlm_read_openvla(config, &is_openvla, vla, err)) return false;
    if (is_openvla) return plan_openvla(config, vla, options, plan, err);
    if (!run_is_vlm(config)) return true;
    ClipVisionConfig clip;
    DType act_dtype = options->ops->act_dtype;
    if (!vlm_projector_options(config, options, &clip, err) ||
        !clip_tower_bytes(act_dtype, &clip, config->train.micro_batch, NULL, &plan->tower_bytes, err))
        return false;
    plan->tower_bytes += vlm_feature_bytes(config, &clip, act_dtype);
    return true;
}

bool run_plan_memory(const Config *config, int world_size, RunPlan *plan, Error *err) {
    *plan = (RunPlan){.world_size = world_size > 0 ? world_size : 1};
    LlamaConfig llama;
    HfLayout layout;
    plan->gpu = plan_uses_gpu(config);
    if (!config_llama_config(config, &llama, &layout, err)) return fail_context(err, "plan: ");
    // Only act_dtype matters to the layout: a copy of the CPU table carries the GPU's.
    Ops planning_ops = *ops_cpu();
    planning_ops.act_dtype = plan->gpu ? DTYPE_BF16 : DTYPE_F32;
    ModelOptions options = train_model_options(config, &planning_ops, &llama);
    options.flat_shards = plan->world_size;
    OpenVlaVision vla;
    if (!plan_vision(config, &options, &vla, plan, err) || !plan_memory(config, &options, plan, err))
        return fail_context(err, "plan: ");
    plan->tokens_per_step = (int64_t)config->train.micro_batch * config->data.max_seq_len *
                            config->train.grad_accum * plan->world_size;
    return true;
}

bool run_plan(const Config *config, int world_size, RunPlan *plan, Error *err) {
    if (!run_plan_memory(config, world_size, plan, err)) return false;
    LlamaConfig llama;
    HfLayout layout;
    Ops planning_ops = *ops_cpu();
    planning_ops.act_dtype = plan->gpu ? DTYPE_BF16 : DTYPE_F32;
    if (!config_llama_config(config, &llama, &layout, err)) return fail_context(err, "plan: ");
    ModelOptions options = train_model_options(config, &planning_ops, &llama);
    OpenVlaVision vla;
    if (!plan_vision(config, &options, &vla, &(RunPlan){0}, err)) return fail_context(err, "plan: ");
    if (!plan_total_steps(config, plan->world_size, &plan->total_steps, err) ||
        !plan_checkpoint_bytes(config, &options, layout, plan->total_steps, &plan->checkpoint_bytes, err))
        return fail_context(err, "plan: ");
    plan->checkpoints_kept = checkpoints_kept(config, plan->total_steps);
    plan->run_disk_bytes = run_disk_bytes(config, plan->total_steps, plan->checkpoint_bytes, plan->model.n_params);
    if (!disk_free_bytes(config->checkpoint.dir, &plan->free_disk_bytes, err)) return fail_context(err, "plan: ");
    return true;
}

uint64_t plan_peak_bytes(const RunPlan *plan) {
    return plan->gpu ? plan->device_total_bytes : plan->device_total_bytes + plan->pinned_host_bytes;
}

uint64_t machine_memory_bytes(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page_size > 0 ? (uint64_t)pages * (uint64_t)page_size : 0;
}

// ----------------------------------------------------------------------------
// will it fit: the plan against a memory size, and the changes that make it fit

typedef struct FitLimit {
    uint64_t memory;   // the GPU's or the machine's
    uint64_t reserve;  // left free for what plan does not count
} FitLimit;

typedef struct FitChange {
    char flags[160];   // the command-line change: "--set train.micro_batch=1 --set train.grad_accum=64"
    Config config;
    int world_size;
    uint64_t peak;     // planned peak per rank with this change (and the ones before it, cumulatively)
} FitChange;

static bool plan_fits(uint64_t peak, FitLimit limit) {
    return limit.memory > limit.reserve && peak <= limit.memory - limit.reserve;
}

static bool peak_of(const Config *config, int world_size, uint64_t *peak, Error *err) {
    RunPlan plan;
    if (!run_plan_memory(config, world_size, &plan, err)) return false;
    *peak = plan_peak_bytes(&plan);
    return true;
}

typedef enum { CHANGE_ERROR = -1, CHANGE_NOT_APPLICABLE = 0, CHANGE_APPLIED = 1 } ChangeResult;

static ChangeResult set_change(FitChange *change, const char *assignment, const char *flags, Error *err) {
    snprintf(change->flags, sizeof change->flags, "%s", flags);
    return config_set(&change->config, assignment, err) ? CHANGE_APPLIED : CHANGE_ERROR;
}

// A smaller micro-batch with more accumulation (the same global batch): the
// largest that fits memory, else 1.
static ChangeResult smaller_micro_batch(FitChange *change, FitLimit memory, Error *err) {
    Config *c = &change->config;
    int micro = c->train.micro_batch, accum = c->train.grad_accum;
    if (micro == 1) return CHANGE_NOT_APPLICABLE;
    for (int m = micro / 2; m >= 1; m--) {
        if (micro % m) continue;
        c->train.micro_batch = m;
        c->train.grad_accum = accum * (micro / m);
        if (!peak_of(c, change->world_size, &change->peak, err)) return CHANGE_ERROR;
        if (plan_fits(change->peak, memory)) break;
    }
    snprintf(change->flags, sizeof change->flags, "--set train.micro_batch=%d --set train.grad_accum=%d",
             c->train.micro_batch, c->train.grad_accum);
    return CHANGE_APPLIED;
}

// More ranks with ZeRO-2 (the optimizer state sharded): the fewest up to 8
// that fit memory, grad_accum divided to keep the global batch where it divides.
static ChangeResult more_ranks(FitChange *change, FitLimit memory, Error *err) {
    int ranks = change->world_size, accum = change->config.train.grad_accum;
    if (ranks >= 8) return CHANGE_NOT_APPLICABLE;
    if (!config_set(&change->config, "zero.stage=2", err)) return CHANGE_ERROR;
    for (int w = ranks * 2; w <= 8; w *= 2) {
        change->world_size = w;
        change->config.train.grad_accum = accum % (w / ranks) == 0 ? accum / (w / ranks) : accum;
        if (!peak_of(&change->config, w, &change->peak, err)) return CHANGE_ERROR;
        if (plan_fits(change->peak, memory)) break;
    }
    snprintf(change->flags, sizeof change->flags, "lora-launch --nproc-per-node %d ... --set zero.stage=2%s",
             change->world_size, change->config.train.grad_accum != accum ? " --set train.grad_accum=" : "");
    if (change->config.train.grad_accum != accum) {
        size_t used = strlen(change->flags);
        snprintf(change->flags + used, sizeof change->flags - used, "%d", change->config.train.grad_accum);
    }
    return CHANGE_APPLIED;
}

// Change number index of the list, cheapest first, applied to *change (which
// may hold earlier ones); then change->peak is its planned peak.
static ChangeResult apply_change(int index, FitChange *change, FitLimit memory, Error *err) {
    const Config *c = &change->config;
    ChangeResult result = CHANGE_NOT_APPLICABLE;
    if (index == 0 && !c->train.activation_checkpointing)
        result = set_change(change, "train.activation_checkpointing=true", "--set train.activation_checkpointing=true", err);
    else if (index == 1)
        result = smaller_micro_batch(change, memory, err);
    else if (index == 2 && strcmp(c->zero.offload, "cpu") != 0 && plan_uses_gpu(c))
        result = set_change(change, "zero.offload=cpu", "--offload cpu", err);
    else if (index == 3 && strcmp(c->model.quantize, "nf4") != 0)
        result = set_change(change, "model.quantize=nf4", "--set model.quantize=nf4", err);
    else if (index == 4 && plan_uses_gpu(c)) // CPU ranks of one machine share its memory
        result = more_ranks(change, memory, err);
    if (result == CHANGE_APPLIED && !peak_of(&change->config, change->world_size, &change->peak, err))
        return CHANGE_ERROR;
    return result;
}

#define N_FIT_CHANGES 5

// Appends one "  FLAGS  PEAK  fits / does not fit" line to text.
static void append_change(char *text, size_t size, const FitChange *change, FitLimit memory) {
    char peak[32];
    format_bytes(change->peak, peak, sizeof peak);
    size_t used = strlen(text);
    snprintf(text + used, size - used, "\n  %-62s %10s  %s", change->flags, peak,
             plan_fits(change->peak, memory) ? "fits" : "does not fit");
}

// The changes that make config fit memory, cheapest first, each alone with
// its planned peak, then cumulatively until it fits; written into advice.
static bool fit_advice(const Config *config, int world_size, uint64_t peak_now, FitLimit memory, char *advice,
                       size_t size, Error *err) {
    char reserve[32];
    format_bytes(memory.reserve, reserve, sizeof reserve);
    snprintf(advice, size, "changes, cheapest first, each alone (planned peak per rank; fits: %s left for what plan "
                           "does not count):", reserve);
    for (int i = 0; i < N_FIT_CHANGES; i++) {
        FitChange alone = {.config = *config, .world_size = world_size};
        ChangeResult result = apply_change(i, &alone, memory, err);
        if (result == CHANGE_ERROR) return false;
        if (result == CHANGE_APPLIED && alone.peak < peak_now) append_change(advice, size, &alone, memory);
    }
    FitChange together = {.config = *config, .world_size = world_size, .peak = UINT64_MAX};
    char combined[512] = "";
    for (int i = 0; i < N_FIT_CHANGES && !plan_fits(together.peak, memory); i++) {
        FitChange next = together;
        ChangeResult result = apply_change(i, &next, memory, err);
        if (result == CHANGE_ERROR) return false;
        if (result == CHANGE_NOT_APPLICABLE || next.peak >= (together.peak == UINT64_MAX ? peak_now : together.peak))
            continue;
        together = next;
        size_t used = strlen(combined);
        if (result == CHANGE_APPLIED)
            snprintf(combined + used, sizeof combined - used, "%s%s", used ? " " : "", together.flags);
    }
    if (!combined[0]) return true;
    char peak[32];
    format_bytes(together.peak, peak, sizeof peak);
    size_t used = strlen(advice);
    snprintf(advice + used, size - used, "\ntogether, in that order until it fits: %s: %s, %s", combined, peak,
             plan_fits(together.peak, memory) ? "fits" : "still does not fit");
    return true;
}

bool plan_check_fit(const Config *config, int world_size, uint64_t memory, uint64_t reserve, const char *memory_name,
                    bool *fits, char *verdict, size_t size, Error *err) {
    FitLimit limit = {memory, reserve};
    RunPlan plan;
    if (!run_plan_memory(config, world_size, &plan, err)) return false;
    uint64_t peak = plan_peak_bytes(&plan);
    char peak_text[32], memory_text[32];
    format_bytes(peak, peak_text, sizeof peak_text);
    format_bytes(memory, memory_text, sizeof memory_text);
    *fits = plan_fits(peak, limit);
    int n = snprintf(verdict, size, "%s: %s planned per rank on %s of %s", *fits ? "fits" : "does NOT fit",
                     peak_text, memory_name, memory_text);
    if (*fits || n < 0 || (size_t)n >= size) return true;
    char *advice = checked_malloc(ERROR_MESSAGE_MAX, "plan: advice", err);
    Error advice_err = {{0}};
    bool ok = advice && fit_advice(config, plan.world_size, peak, limit, advice, ERROR_MESSAGE_MAX, &advice_err);
    if (ok) snprintf(verdict + n, size - (size_t)n, "\n%s", advice);
    free(advice);
    return ok || fail(err, "plan: %s", advice_err.message);
}

static void print_bytes_line(const char *what, uint64_t bytes, const char *note) {
    char text[32];
    format_bytes(bytes, text, sizeof text);
    printf("  %-28s %12s  %s\n", what, text, note);
}

static void print_memory(const Config *config, const RunPlan *plan) {
    bool nf4 = plan->model.nf4_bytes > 0, offload = strcmp(config->zero.offload, "cpu") == 0;
    char shard_note[96];
    snprintf(shard_note, sizeof shard_note, "%zu of %zu parameters%s", plan->optimizer_shard, plan->model.n_params,
             config->zero.stage == 2 && plan->world_size > 1 ? " (ZeRO-2 shard)" : "");
    printf("%s memory per rank (%s storage):\n", plan->gpu ? "GPU" : "CPU backend", plan->gpu ? "bf16" : "fp32");
    print_bytes_line("frozen weights", plan->model.frozen_bytes + plan->model.nf4_bytes,
                     nf4 ? "NF4 linears, the rest bf16" : plan->gpu ? "bf16" : "fp32");
    print_bytes_line("trainable parameters", plan->model.param_bytes, "fp32 masters + compute copy");
    print_bytes_line("gradients", plan->model.grad_bytes, "fp32");
    print_bytes_line("optimizer state", plan->optimizer_device_bytes,
                     offload ? "in pinned host memory (--offload cpu)" : shard_note);
    char other[96], activation_note[160];
    bool checkpointing = config->train.activation_checkpointing;
    format_bytes(checkpointing ? plan->activation_bytes_full : plan->activation_bytes_checkpointed, other, sizeof other);
    snprintf(activation_note, sizeof activation_note, "%s checkpointing (%s: %s)", checkpointing ? "with" : "without",
             checkpointing ? "without" : "with", other);
    print_bytes_line("activations", plan->model.activation_bytes, activation_note);
    if (nf4) print_bytes_line("NF4 dequantization scratch", plan->model.nf4_scratch_bytes, "one linear's weight");
    if (plan->tower_bytes) print_bytes_line("vision tower", plan->tower_bytes, "frozen weights, activations, features");
    if (plan->backend_bytes)
        print_bytes_line("CUDA backend", plan->backend_bytes, "cuBLASLt workspace, staging, attention scratch");
    char total_note[64];
    snprintf(total_note, sizeof total_note, "with %zu bytes of reduction scalars",
             plan->workspace_bytes - plan->model.nf4_scratch_bytes);
    print_bytes_line("total", plan->device_total_bytes, total_note);
    printf("host memory:\n");
    char pinned_note[160];
    snprintf(pinned_note, sizeof pinned_note, "%s%s%s", offload ? "optimizer offload, " : "", offload ? shard_note : "",
             !plan->gpu ? "" : offload ? " + CUDA upload staging" : "CUDA upload staging");
    print_bytes_line("pinned", plan->pinned_host_bytes, pinned_note[0] ? pinned_note : "none without --offload cpu");
}

static void print_disk(const Config *config, const RunPlan *plan) {
    printf("disk (%s):\n", config->checkpoint.dir);
    print_bytes_line("per checkpoint", plan->checkpoint_bytes, "adapter, optimizer state, trainer state, marker");
    if (plan->total_steps == 0) {
        printf("  whole run: unknown (train.max_steps is 0 and %s does not exist yet)\n", config->data.path);
    } else {
        char note[96];
        snprintf(note, sizeof note, "%d checkpoints at once + %s", plan->checkpoints_kept, adapters_kept(config));
        print_bytes_line("whole run", plan->run_disk_bytes, note);
    }
    print_bytes_line("free", plan->free_disk_bytes,
                     plan->run_disk_bytes <= plan->free_disk_bytes ? "enough" : "NOT ENOUGH for the whole run");
}

// "24GB", "24 GiB", "80000MiB", "24" (GB): bytes, or 0 when the text is not a size.
uint64_t parse_memory_size(const char *text) {
    char *end;
    double value = strtod(text, &end);
    while (*end == ' ') end++;
    static const struct { const char *unit; double bytes; } units[] = {
        {"", 1e9}, {"GB", 1e9}, {"G", 1e9}, {"GiB", 1073741824.0}, {"MB", 1e6}, {"MiB", 1048576.0},
        {"TB", 1e12}, {"TiB", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcasecmp(end, units[i].unit) == 0 && value > 0) return (uint64_t)(value * units[i].bytes);
    return 0;
}

// The GPU memory a GPU plan is compared with: --gpu-memory, else this
// machine's first GPU's; 0 when neither is known.
static uint64_t gpu_memory(const PlanRequest *request, char *name, size_t size) {
    if (request->gpu_memory_bytes) {
        snprintf(name, size, "a GPU of --gpu-memory %s", request->gpu_memory_text);
        return request->gpu_memory_bytes;
    }
    CudaInfo info;
    ops_cuda_info(&info);
    if (info.n_devices == 0 || ops_cuda_is_emulated()) return 0;
    snprintf(name, size, "GPU 0 (%s)", info.devices[0].name);
    return info.devices[0].total_bytes;
}

// What plan does not count (CUDA context, cuBLASLt's own allocations, the
// process's code and buffers) is left free when plan judges a fit.
#define PLAN_RESERVE_BYTES ((uint64_t)1 << 30)

// Fits or not, against the GPU's memory (GPU plan) or this machine's (CPU
// plan), and the changes that make it fit; and the host side of a GPU plan.
static bool print_fit(const Config *config, const RunPlan *plan, const PlanRequest *request, Error *err) {
    char name[320], verdict[ERROR_MESSAGE_MAX + 512];
    uint64_t memory = plan->gpu ? gpu_memory(request, name, sizeof name) : machine_memory_bytes();
    if (!plan->gpu) snprintf(name, sizeof name, "this machine's memory");
    bool fits = true;
    if (memory == 0) {
        printf("fit: unknown: no GPU here to compare with; ask with --gpu-memory 24GB\n");
    } else {
        if (!plan_check_fit(config, plan->world_size, memory, PLAN_RESERVE_BYTES, name, &fits, verdict, sizeof verdict,
                            err))
            return false;
        printf("fit: %s\n", verdict);
    }
    uint64_t host = machine_memory_bytes();
    if (plan->gpu && host && plan->pinned_host_bytes > host) {
        char need[32], have[32];
        format_bytes(plan->pinned_host_bytes, need, sizeof need);
        format_bytes(host, have, sizeof have);
        printf("host memory: the pinned %s EXCEEDS this machine's memory (%s)\n", need, have);
    }
    return true;
}

int plan_main(const Config *config, const PlanRequest *request) {
    RunPlan plan;
    Error err = {{0}};
    Config planned = *config;
    if (request->gpu_memory_bytes) snprintf(planned.train.backend, CONFIG_NAME_MAX, "cuda"); // planned for that GPU
    if (request->missing && request->missing[0])
        printf("not on disk yet (planned from the config; download before training):%s\n", request->missing);
    if (!run_plan(&planned, request->world_size, &plan, &err)) {
        fprintf(stderr, "lora-train: %s\n", err.message);
        return 1;
    }
    printf("plan for %d rank%s, %d steps of %lld tokens (micro_batch %d x max_seq_len %d x grad_accum %d x ranks)\n",
           plan.world_size, plan.world_size > 1 ? "s" : "", plan.total_steps, (long long)plan.tokens_per_step,
           planned.train.micro_batch, planned.data.max_seq_len, planned.train.grad_accum);
    print_memory(&planned, &plan);
    print_disk(&planned, &plan);
    if (!print_fit(&planned, &plan, request, &err)) {
        fprintf(stderr, "lora-train: %s\n", err.message);
        return 1;
    }
    return 0;
}
