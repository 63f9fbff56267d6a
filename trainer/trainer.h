// trainer: configuration, the training loop and the lora-train command line.
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "../core/core.h"
#include "../model/model.h"
#include "../optim/optim.h"

#define CONFIG_PATH_MAX 1024
#define CONFIG_NAME_MAX 64

typedef struct Config {
    struct {
        char path[CONFIG_PATH_MAX];          // Hugging Face model folder
        char name[CONFIG_PATH_MAX];          // its Hugging Face id ("" = unknown): adapters, download hints
        char create_if_missing[CONFIG_NAME_MAX]; // preset to write at path if absent ("" = never)
        char quantize[CONFIG_NAME_MAX];      // "none" | "nf4"
        bool double_quant;                   // nf4: double-quantize the absmax (bitsandbytes' default)
    } model;
    struct {
        int r;
        float alpha;
        float dropout;
        bool targets[LORA_TARGET_COUNT];     // from lora.target: [q_proj, v_proj, ...], "all" or "all-linear"
        bool all_linear;                     // "all-linear": PEFT's, every linear but lm_head (OpenVLA's projector
                                             // and towers too; a text model's seven linears alike)
        bool rslora;
        char init[CONFIG_NAME_MAX];          // "kaiming" | "gaussian"
    } lora;
    struct {
        char path[CONFIG_PATH_MAX];          // JSONL dataset
        char images[CONFIG_PATH_MAX];        // image folder or archive (vision issue)
        char create_if_missing[CONFIG_NAME_MAX]; // synthetic generator to write at path ("" = never)
        int max_seq_len;
        char chat_template[CONFIG_NAME_MAX]; // data.template: auto | llama3 | llama2 | vicuna_v1 | plain
        bool shuffle;
        bool pack;                           // several samples per row of max_seq_len (text only)
        int image_tokens;                    // positions per <image>; 0: the tower's features per image
        float max_skip_fraction;             // skipped records / records above this is an error
        char eval_path[CONFIG_PATH_MAX];     // held-out data in data.path's format ("" = none)
        float eval_fraction;                 // or this fraction of data.path held out (0 = none)
        char format[CONFIG_NAME_MAX];        // auto | jsonl | llava | rlds | robot_jsonl (config_data_format)
        char image_key[CONFIG_NAME_MAX];     // robot data: step keys ("" = the dataset's defaults)
        char instruction_key[CONFIG_NAME_MAX];
        char action_key[CONFIG_NAME_MAX];
        int shuffle_buffer;                  // robot data: steps in the bounded shuffle buffer
    } data;
    struct {
        int micro_batch;
        int grad_accum;
        int max_steps;                       // 0 = from epochs
        int epochs;
        float lr;
        Schedule schedule;
        float warmup;                        // < 1: ratio of total steps; >= 1: steps
        float min_lr_ratio;                  // cosine floor as a fraction of lr
        float weight_decay;
        float beta1, beta2, eps;
        float max_grad_norm;                 // 0 = no clipping
        uint64_t seed;
        int log_every;
        int eval_every;                      // steps between evaluations (0 = only at the end)
        bool activation_checkpointing;
        char backend[CONFIG_NAME_MAX];       // "auto" | "cpu" | "cuda"
        int max_bad_steps;                   // skipped bad steps (non-finite, outliers) in a row before stopping
        float skip_loss_zscore;              // skip a step whose loss is this many sigma above the window (0: off)
        float skip_grad_zscore;              // the same for the gradient norm (0: off)
        int skip_window;                     // accepted steps the z-scores look back on
    } train;
    struct {
        char dir[CONFIG_PATH_MAX];
        int every_steps;                     // 0 = only at the end
        int keep_last;                       // 0 = keep all
        bool keep_best;                      // the adapter of the best eval loss in best/
        char on_low_disk[CONFIG_NAME_MAX];   // "wait" | "abort"
        float low_disk_wait_minutes;
    } checkpoint;
    struct {
        char tower[CONFIG_PATH_MAX];         // CLIP tower file or folder ("" = a llava-hf model.path's, else text only)
        char tower_preset[CONFIG_NAME_MAX];  // "auto" (a llava-hf model.path's vision_config) | a ClipVisionConfig preset
        int feature_layer;                   // LLaVA's vision_feature_layer: -2 = penultimate; 0 = the folder's (else -2)
        char image_fit[CONFIG_NAME_MAX];     // "pad" (LLaVA-1.5) | "crop" (CLIP) | "squash"
        char projector[CONFIG_NAME_MAX];     // "mlp2x_gelu"
        char projector_init[CONFIG_PATH_MAX]; // starting projector file or folder ("" = a llava-hf model.path's, else random)
        bool train_projector;
    } vision;
    struct {
        int stage;                           // 0 | 2
        char offload[CONFIG_NAME_MAX];       // "none" | "cpu"
        bool delayed_update;                 // offload cpu: AdamW of step k overlaps step k + 1 (one update late)
        bool overlap_comm;                   // stage 2: gradient buckets reduce-scattered during the backward
        float bucket_mb;                     // with overlap_comm: MB of fp32 gradients per bucket (0: one per layer)
    } zero;
    struct {
        float timeout_s;                     // a collective or rendezvous waiting longer fails
    } dist;
} Config;

// Defaults for every key (a valid config needs only model.path and data.path).
void config_defaults(Config *config);
// Loads a YAML file over the defaults. Unknown keys, wrong types and bad
// values fail with the key's path (and a did-you-mean for unknown keys).
bool config_load_yaml(Config *config, const char *path, Error *err);
// Applies one "key.path=value" override (value parsed as YAML scalar or flow list).
bool config_set(Config *config, const char *assignment, Error *err);
// Cross-field checks after all overrides (ranges, files that must exist).
// data.format with auto resolved as `data check` tells: robot data (robot_data_detect:
// an RLDS folder is rlds, a JSONL file of steps robot_jsonl), else llava when
// data.images or vision.tower is set, else jsonl.
const char *config_data_format(const Config *config);
bool config_is_robot_data(const Config *config); // rlds or robot_jsonl
bool config_validate(const Config *config, Error *err);
// config_validate, but inputs not on disk yet are listed in missing (a line
// each: "\n  key: 'path' does not exist: how to get it"), not an error: for plan.
bool config_validate_allowing_missing(const Config *config, char *missing, size_t size, int *n_missing, Error *err);
// The config as YAML text (malloc'd), for logs and trainer state.
char *config_to_yaml(const Config *config, Error *err);

// What differs between a checkpoint's config and this run's (both
// config_to_yaml dumps, the checkpoint's possibly from an older version):
// operational and length keys, and (allowed only with --allow-config-change)
// the others. Keys are compared by value; one the checkpoint lacks had its
// default, one only the checkpoint has is noted as no longer a setting.
typedef struct ConfigChanges {
    char operational[1024], mathematical[1024];
    bool length_changed;
} ConfigChanges;
bool config_changes(const char *saved, const char *now, bool allow_math, ConfigChanges *changes, Error *err);

typedef struct TrainSummary {
    int steps;                      // optimizer steps taken
    int skipped_steps;              // steps without label tokens
    int bad_steps;                  // steps skipped for a non-finite or outlier loss or gradient norm
    bool interrupted;               // stopped early (signal or stop_after_steps) with a checkpoint
    char checkpoint_dir[CONFIG_PATH_MAX + 32]; // the newest checkpoint this run saved ("" = none)
    double first_loss, last_loss;   // mean loss per label token of the first and last step
    char adapter_dir[CONFIG_PATH_MAX + 32]; // the final adapter folder
    int evaluations;                // held-out evaluations this process ran
    double eval_loss, eval_token_accuracy, eval_answer_accuracy; // the last one's
    double eval_action_accuracy, eval_action_l1; // the last one's, robot runs (NaN otherwise)
    double before_eval_loss, before_eval_action_accuracy, before_eval_action_l1; // TrainControl.eval_before's
    int best_eval_step;             // the lowest eval loss of the run (resumed runs included); 0: none
    double best_eval_loss;
} TrainSummary;

struct StepBatch;
struct Zero;
// Zeroes the gradients, then runs forward and backward over every micro-batch
// of one optimizer step with grad_scale = 1 / (the step's label tokens);
// *mean_loss = (sum of token losses) / (label tokens). Dropout masks are drawn
// from (seed, step, micro-batch). With a zero (NULL: none), each layer's
// gradients go to it as they are ready and every micro-batch is reduced, as in training.
bool train_accumulate(Model *model, struct Zero *zero, const struct StepBatch *batch, uint64_t seed, int step,
                      double *mean_loss, Error *err);

// How a run starts and stops, beside its config.
typedef struct TrainControl {
    const char *resume;          // a checkpoint folder, "latest" (newest complete in checkpoint.dir), or NULL
    bool allow_low_disk;         // train even when the run's checkpoints will not fit
    bool allow_config_change;    // resume although keys that change the mathematics differ (they are printed)
    int stop_after_steps;        // tests: stop as SIGTERM would before this loop step (0 = never)
    bool eval_before;            // a fresh run with held-out data evaluates it before its first step too
    int world_size;              // plan: ranks of the job (--world-size; 0 = 1)
    const char *config_name;     // the recipe's file, for loss.png's title (NULL: none)
    void (*on_step)(void *context, int step, double loss); // after every optimizer step (1-based)
    void *context;
} TrainControl;

// The SIGINT / SIGTERM handlers of training, unless installed already (a
// signal received since is kept): lora-train installs them first thing, so a
// signal during set-up stops the run at its first step with a checkpoint and
// one after the outputs are complete leaves the exit status 0; train_run_with
// installs them for its own duration otherwise. *installed: whether this call did.
bool stop_signals_install(bool *installed, Error *err);

// Runs the whole training job described by config. Progress goes to stdout;
// summary (may be NULL) receives the outcome. SIGINT / SIGTERM finish the
// current micro-batch (with several ranks: the current step, the ranks
// agreeing on it through the collective), save a checkpoint and return true
// with summary->interrupted; with one rank a second signal ends the process.
bool train_run(const Config *config, TrainSummary *summary, Error *err);
bool train_run_with(const Config *config, const TrainControl *control, TrainSummary *summary, Error *err);

// `lora-train data check`: reads the dataset as training would (text JSONL or
// LLaVA records, written first per data.create_if_missing) and prints its
// counts, skips per reason and the first few of each; the process exit status.
int data_check_main(const Config *config);

// The tokenizer of model.path (its tokenizer.json, else the byte tokenizer,
// also while model.path is yet to be created) with data.template applied.
struct Tokenizer *config_tokenizer(const Config *config, Error *err);
// `lora-train plan`: what a run of config needs, before anything is loaded.
// Memory is per rank, in the run backend's storage (bf16 with CUDA, fp32 on
// the CPU); the model's share comes from model_plan.
typedef struct RunPlan {
    bool gpu;                          // planned for the CUDA backend
    int world_size;
    ModelPlan model;                   // activations per train.activation_checkpointing
    size_t activation_bytes_checkpointed, activation_bytes_full;
    size_t optimizer_shard;            // elements of rank 0's optimizer shard (all without ZeRO-2)
    size_t optimizer_device_bytes;     // Adam moments in backend memory (0 with --offload cpu)
    size_t pinned_host_bytes;          // --offload cpu: the shard's masters, gradients, moments; CUDA: upload staging
    size_t workspace_bytes;            // NF4 dequantization scratch, grad-norm and all-reduce scalars
    size_t tower_bytes;                // the frozen vision tower: weights, activations, feature buffer (0 for text)
    size_t backend_bytes;              // CUDA backend's own buffers: cuBLASLt workspace, staging, scratch
    size_t device_total_bytes;         // every backend allocation of model, tower, optimizer and backend
    uint64_t checkpoint_bytes;         // one checkpoint, as checkpoint_write adds it to the disk
    int total_steps;                   // 0 when unknown (epochs of a dataset not written yet)
    int checkpoints_kept;
    uint64_t run_disk_bytes, free_disk_bytes; // the whole run's need; free in checkpoint.dir
    int64_t tokens_per_step;           // micro_batch x max_seq_len x grad_accum x world_size
} RunPlan;
bool run_plan(const Config *config, int world_size, RunPlan *plan, Error *err);
// The memory part of run_plan alone (no checkpoint image, no dataset read).
bool run_plan_memory(const Config *config, int world_size, RunPlan *plan, Error *err);
// The peak the plan compares with a memory: per rank on the GPU, or on the
// CPU backend everything in host memory.
uint64_t plan_peak_bytes(const RunPlan *plan);
// Whether config's plan fits memory (memory_name: "GPU 0 (NVIDIA H100)", ...)
// with reserve bytes left for what plan does not count. verdict: "fits: ..." or
// "does NOT fit: ..." and the changes that make it fit, cheapest first
// (activation checkpointing, a smaller micro-batch with more accumulation,
// --offload cpu, model.quantize nf4, more ranks with ZeRO-2), each with its peak.
bool plan_check_fit(const Config *config, int world_size, uint64_t memory, uint64_t reserve, const char *memory_name,
                    bool *fits, char *verdict, size_t size, Error *err);
// This machine's physical memory in bytes (0 when unknown).
uint64_t machine_memory_bytes(void);
// "24GB", "24 GiB", "80000MiB" or "24" (GB) in bytes; 0 when not a size.
uint64_t parse_memory_size(const char *text);

typedef struct PlanRequest {
    int world_size;                    // ranks of the job (--world-size; 0 = 1)
    uint64_t gpu_memory_bytes;         // --gpu-memory: plan for a GPU of this size (0: the detected GPU, if any)
    const char *gpu_memory_text;       // as typed
    const char *missing;               // inputs not on disk yet (config_validate_allowing_missing) or NULL
} PlanRequest;
// Prints the plan, whether it fits and what would make it fit; returns the process exit status.
int plan_main(const Config *config, const PlanRequest *request);

// `lora-train doctor`: GPUs, driver and CUDA runtime against the build, NCCL,
// locked memory, /dev/shm, free disk in checkpoint.dir, cores, memory; a line
// each with what it means and what to do. Returns the process exit status.
int doctor_main(const Config *config);

// `lora-train report RUN_DIR... [--out FILE]` (argv after "report"): a table
// of the runs from their metrics.jsonl and a PNG comparing their losses; the exit status.
int report_main(int argc, char **argv);

// lora-train's command line: returns the process exit status.
int lora_train_main(int argc, char **argv);
// lora-launch's command line (one process per local rank): the exit status.
int lora_launch_main(int argc, char **argv);
// The subcommands init-model, tokenize and export (argv after the subcommand).
int lora_train_tool_main(const char *tool, int argc, char **argv);
// The vision-language demo in dir: synthetic pictures in a tar and LLaVA
// records, a tiny random VLM, projector + LoRA trained by train_run, held-out
// accuracy before and after, the adapter under dir/out/adapter. settings
// ("key=value", as --set) apply over the demo's recipe. Prints its
// progress; before / after (may be NULL) receive the held-out accuracies.
typedef struct DemoAccuracy {
    double overall, colour, shape; // fractions of the held-out questions answered exactly
} DemoAccuracy;
bool vlm_demo_run(const char *dir, const char *const *settings, int n_settings, DemoAccuracy *before,
                  DemoAccuracy *after, Error *err);
// The vision-language-action demo in dir (lora-train demo --vla): a synthetic
// grid world's episodes written as RLDS, a tiny random VLM over a small
// Llama-2-style tokenizer, LoRA + projector trained by train_run as OpenVLA
// data; held-out action-token accuracy and L1 before and after (result may be NULL).
typedef struct VlaDemoResult {
    double accuracy_before, accuracy_after; // held-out action tokens whose argmax is the target
    double l1_before, l1_after;             // mean |decoded argmax - decoded target| (normalised actions)
    double accuracy_blind, l1_blind;        // each dimension's most common training token, whatever the input
    double seconds;                         // the whole demo: data, model, training, evaluations
} VlaDemoResult;
bool vla_demo_run(const char *dir, const char *const *settings, int n_settings, VlaDemoResult *result, Error *err);
// Its data (RLDS under dir), a random model of either shape (dir/model; the demo's is LLaVA-shaped, a CLIP tower
// and the mlp2x projector; OpenVLA-shaped: an OpenVLA folder, two timm towers and the 3-layer projector,
// all-linear) and the config with the settings applied, validated: for tests.
typedef enum VlaModelShape { VLA_MODEL_LLAVA, VLA_MODEL_OPENVLA } VlaModelShape;
bool vla_demo_prepare(const char *dir, VlaModelShape shape, const char *const *settings, int n_settings,
                      Config *config, Error *err);
