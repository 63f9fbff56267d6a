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

bool config_llama_config(const Config *config, LlamaConfig *llama, HfLayout *layout, Error *err) {
    const char *path = config->model.path;
    *layout = HF_LAYOUT_LLAMA;
    if (!path_exists(path) && config->model.create_if_missing[0])
        return llama_config_preset(config->model.create_if_missing, llama, err);
    return hf_read_llama_config(path, llama, err) && hf_read_layout(path, layout, err);
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

// Optimizer steps of the run: train.max_steps, or epochs over the dataset.
static bool plan_total_steps(const Config *config, int world_size, int *total_steps, Error *err) {
    *total_steps = config->train.max_steps;
    if (*total_steps > 0) return true;
    if (!path_exists(config->data.path)) return true; // unknown until the dataset exists
    Tokenizer *tok = config_tokenizer(config, err); // the run's token counts: packed rows depend on them
    Dataset *dataset = tok ? dataset_open_jsonl(config->data.path, tok, config->data.max_seq_len, err) : NULL;
    DataLoaderOptions options = {.micro_batch = config->train.micro_batch, .grad_accum = config->train.grad_accum,
                                 .max_seq_len = config->data.max_seq_len, .seed = config->train.seed,
                                 .shuffle = config->data.shuffle, .world_size = world_size,
                                 .pack = config->data.pack};
    DataLoader *loader = dataset ? dataloader_create(dataset, &options, err) : NULL;
    if (loader) *total_steps = (int)dataloader_steps_for_epochs(loader, config->train.epochs);
    dataloader_destroy(loader);
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


// An image-text run adds the projector to the model, and beside it the frozen
// tower and the buffer of its features.
static bool plan_vision(const Config *config, ModelOptions *options, RunPlan *plan, Error *err) {
    if (!run_is_vlm(config)) return true;
    ClipVisionConfig clip;
    DType act_dtype = options->ops->act_dtype;
    if (!vlm_projector_options(config, options, &clip, err) ||
        !clip_tower_bytes(act_dtype, &clip, config->train.micro_batch, &plan->tower_bytes, err))
        return false;
    plan->tower_bytes += vlm_feature_bytes(config, &clip, act_dtype);
    return true;
}

bool run_plan(const Config *config, int world_size, RunPlan *plan, Error *err) {
    *plan = (RunPlan){.world_size = world_size > 0 ? world_size : 1};
    LlamaConfig llama;
    HfLayout layout;
    plan->gpu = plan_uses_gpu(config);
    if (!config_llama_config(config, &llama, &layout, err)) return fail_context(err, "plan: ");
    // Only act_dtype matters to the layout: a copy of the CPU table carries the GPU's.
    Ops planning_ops = *ops_cpu();
    planning_ops.act_dtype = plan->gpu ? DTYPE_BF16 : DTYPE_F32;
    ModelOptions options = train_model_options(config, &planning_ops, &llama);
    if (!plan_vision(config, &options, plan, err) || !plan_memory(config, &options, plan, err))
        return fail_context(err, "plan: ");
    if (!plan_total_steps(config, plan->world_size, &plan->total_steps, err) ||
        !plan_checkpoint_bytes(config, &options, layout, plan->total_steps, &plan->checkpoint_bytes, err))
        return fail_context(err, "plan: ");
    plan->checkpoints_kept = checkpoints_kept(config, plan->total_steps);
    plan->run_disk_bytes = run_disk_bytes(config, plan->total_steps, plan->checkpoint_bytes, plan->model.n_params);
    if (!disk_free_bytes(config->checkpoint.dir, &plan->free_disk_bytes, err)) return fail_context(err, "plan: ");
    plan->tokens_per_step = (int64_t)config->train.micro_batch * config->data.max_seq_len *
                            config->train.grad_accum * plan->world_size;
    return true;
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
    print_bytes_line("activations", plan->model.activation_bytes,
                     config->train.activation_checkpointing ? "with checkpointing" : "without checkpointing");
    print_bytes_line("  with checkpointing", plan->activation_bytes_checkpointed, "");
    print_bytes_line("  without checkpointing", plan->activation_bytes_full, "");
    print_bytes_line("workspace", plan->workspace_bytes, nf4 ? "NF4 dequantization scratch" : "");
    if (plan->tower_bytes) print_bytes_line("vision tower", plan->tower_bytes, "frozen weights, activations, features");
    if (plan->backend_bytes)
        print_bytes_line("CUDA backend", plan->backend_bytes, "cuBLASLt workspace, staging, attention scratch");
    print_bytes_line("total", plan->device_total_bytes, "");
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
        char note[64];
        snprintf(note, sizeof note, "%d checkpoints at once + the final adapter", plan->checkpoints_kept);
        print_bytes_line("whole run", plan->run_disk_bytes, note);
    }
    print_bytes_line("free", plan->free_disk_bytes,
                     plan->run_disk_bytes <= plan->free_disk_bytes ? "enough" : "NOT ENOUGH for the whole run");
}

int plan_main(const Config *config, int world_size) {
    RunPlan plan;
    Error err = {{0}};
    if (!run_plan(config, world_size, &plan, &err)) {
        fprintf(stderr, "lora-train: %s\n", err.message);
        return 1;
    }
    printf("plan for %d rank%s, %d steps of %lld tokens (micro_batch %d x max_seq_len %d x grad_accum %d x ranks)\n",
           plan.world_size, plan.world_size > 1 ? "s" : "", plan.total_steps, (long long)plan.tokens_per_step,
           config->train.micro_batch, config->data.max_seq_len, config->train.grad_accum);
    print_memory(config, &plan);
    print_disk(config, &plan);
    return 0;
}
