// trainer: the state of one training run, shared by train.c (set-up and the
// loop) and run_guard.c (checkpoints, resume, disk guard, signals).
#pragma once
#include <signal.h>

#include "checkpoints/checkpoints.h"
#include "data/data.h"
#include "data/rlds.h"
#include "distributed.h"
#include "trainer.h"

// Held-out evaluation (evaluate.c). With data.eval_fraction the run's dataset
// is split: the training loader serves train_subset, the evaluation loader
// eval_subset; with data.eval_path the evaluation loader serves a dataset of
// its own. The evaluation loader has micro-batches of one row, in file order,
// every rank its share; it never touches the training loader.
typedef struct Evaluation {
    int64_t *train_subset, *eval_subset; // data.eval_fraction's split (NULL otherwise)
    int64_t n_train, n_eval;
    Dataset *dataset;                    // data.eval_path's (text)
    VlmDataset *vlm_dataset;             // data.eval_path's (image-text)
    RobotDataset *robot_dataset;         // data.eval_path's (robot steps)
    StepLoader *loader;                  // NULL without held-out data; all of it, one sample per step
    int rank, world_size;                // this rank evaluates steps rank, rank + world_size, ...
    int n_done;                          // evaluations this process ran
} Evaluation;

// One evaluation over the held-out data, reduced over ranks.
typedef struct EvalResult {
    int step;                   // after this many steps
    double loss;                // sum of -log p over label tokens / their count
    double perplexity;          // exp(loss)
    double token_accuracy;      // label tokens whose largest logit is the target / their count
    double answer_accuracy;     // samples whose label tokens are all such hits (greedy decoding gives the answer) / samples
    int64_t n_label_tokens, n_answers;
    // robot runs (OpenVLA's finetune.py metrics over the action-token labels); NaN and 0 otherwise
    double action_accuracy;     // action tokens whose argmax is the target / action tokens
    double action_l1;           // mean |bin centre of the argmax - bin centre of the target| (normalised actions)
    int64_t n_action_tokens;
    double seconds;
} EvalResult;

typedef struct Run {
    const Config *config;
    const TrainControl *control;
    const Ops *ops;
    Model *model;
    AdapterInfo adapter_info; // base model path and key layout, for every adapter written
    char base_model[CONFIG_PATH_MAX]; // adapter_info's base_model_name_or_path (config_base_model_name)
    Tokenizer *tokenizer;
    Dataset *dataset;
    StepLoader *loader;    // the training steps, whichever data the run has (run_open_loader)
    DistContext dist;
    Zero *zero;
    LrSchedule schedule;
    int total_steps;
    bool is_rank0;         // logs and writes adapters and checkpoints
    char *config_yaml;     // saved in every checkpoint, compared on resume
    TrainerState progress; // losses and step counts so far (position fields filled at save time)
    // vision-language runs (train_vlm.c); NULL otherwise, and then dataset serves
    ClipTower *tower;
    FusedFeaturizer *featurizer; // an OpenVLA model.path's two towers in place of tower (adapters under all-linear)
    OpenVlaVision openvla;       // its config.json's towers (is_openvla); the model's lora_towers point here
    bool is_openvla;
    int n_micro_images;          // images in the micro-batch vlm_micro_features ran (the towers' backward)
    VlmDataset *vlm_dataset;
    RobotDataset *robot_dataset; // robot data (rlds, robot_jsonl) in place of vlm_dataset
    ActionStats action_stats;    // its actions' statistics, for normalisation and dataset_statistics.json
    int32_t image_token_id;
    float *image_scratch;  // (micro_batch, channels, S, S) host: the images of one micro-batch
    void *image_features;  // (micro_batch * P, D) backend memory: the tower's output
    Evaluation eval;
    EvalResult last_eval;  // the latest evaluation (eval.n_done > 0)
    struct MetricsLog *metrics; // rank 0: metrics.jsonl and the event file (metrics.h); NULL elsewhere
    double run_clock_start; // time_seconds() at which the run's elapsed time (resumed processes included) is 0
    bool progress_line;     // rank 0 with stderr on a terminal: the progress line redrawn in place
    bool progress_replaces_lines; // ... and stdout on it too: no per-step log lines
    bool progress_shown;    // the progress line is on the screen (cleared before any other message)
} Run;

// evaluate.c: opens data.eval_path's dataset, or splits data.eval_fraction
// off the run's (then *options serves the training share).
bool eval_prepare(Run *run, DataLoaderOptions *options, Error *err);
// The evaluation loader, once the training data is open.
bool eval_create_loader(Run *run, const DataLoaderOptions *train_options, Error *err);
bool eval_enabled(const Run *run);
// "eval: N held-out samples (where from) after every K steps and the last" (rank 0 calls it).
void eval_print_header(const Run *run);
// Whether step (0-based) is followed by an evaluation: every train.eval_every and the last.
bool eval_due(const Run *run, int step);
// Evaluates the model as it stands after step steps (every rank; no dropout, the training
// loader and random streams untouched).
bool eval_run(Run *run, int step, EvalResult *result, Error *err);
void eval_destroy(Run *run);

// The model's LlamaConfig and key layout without loading it: config.json of
// model.path, or the preset model.create_if_missing writes there (plan.c).
bool config_llama_config(const Config *config, LlamaConfig *llama, HfLayout *layout, Error *err);
// adapter_config.json's base_model_name_or_path, as PEFT, vLLM and LMDeploy
// users expect it: model.name, else config.json's _name_or_path when it is a
// Hugging Face id ("owner/name"), else model.path made absolute.
bool config_base_model_name(const Config *config, char *name, size_t size, Error *err);

// cli.c: the candidate nearest to word (at most 3 edits), or NULL; and the
// error for an unknown argument with that did-you-mean.
const char *did_you_mean(const char *word, const char *const *candidates);
bool fail_unknown_argument(Error *err, const char *argument, const char *const *known);

// Writes data.create_if_missing's dataset at data.path when absent (train.c).
bool data_create_if_missing(const Config *config, bool verbose, Error *err);

// train_vlm.c: image-text training when data.images or vision.tower is set.
bool run_is_vlm(const Config *config);
// The image-text settings: vision.* keys where set, else a llava-hf model.path's
// own (config.json, its image processor, its tower and projector weights).
typedef struct VlmSetup {
    ClipVisionConfig clip;      // vision.tower_preset / vision.feature_layer, else config.json's
    const char *tower;          // vision.tower, else model.path (llava-hf)
    const char *projector_init; // vision.projector_init, else model.path (llava-hf), else "" (random)
    int32_t image_token_id;     // config.json's image_token_index; -1: llava_image_token_id's rule
    ImagePreprocess preprocess; // the folder's image processor, else CLIP's; vision.image_fit
} VlmSetup;
bool vlm_setup(const Config *config, VlmSetup *out, Error *err);
int32_t vlm_image_token_id(const VlmSetup *setup, const Tokenizer *tok, int model_vocab);
// Sets the projector's width, the image token and the feature rows per micro-batch.
bool vlm_model_options(Run *run, const LlamaConfig *llama, ModelOptions *options, Error *err);
// The projector's share of vlm_model_options (no tokenizer needed) and the tower's config: for plan.
bool vlm_projector_options(const Config *config, ModelOptions *options, ClipVisionConfig *clip, Error *err);
// The dataset as training opens it (and `data check`): vlm_setup's preprocessing and
// image tokens per image, images decoded by the loader.
bool vlm_dataset_options(const Config *config, const Tokenizer *tok, int32_t image_token_id,
                         VlmDatasetOptions *options, Error *err);
// An OpenVLA model.path (hf_read_openvla; *vla's towers the presets of its timm_model_ids).
bool vlm_read_openvla(const Config *config, bool *is_openvla, OpenVlaVision *vla, Error *err);
// OpenVLA's projector in options: the fused towers' width in, frozen with LoRA per lora.target all-linear,
// micro_batch images of P features each.
void vlm_openvla_model_options(const Config *config, const OpenVlaVision *vla, ModelOptions *options);
// Backend bytes of one micro-batch's tower features (micro_batch * features, D), the buffer vlm_load allocates.
size_t vlm_feature_bytes(const Config *config, const ClipVisionConfig *clip, DType act_dtype);
// The tower (loaded, or written random with model.create_if_missing), the starting projector, the dataset.
bool vlm_load(Run *run, Error *err);
// Image features of micro-batch micro into out (nothing for a text run: run NULL or no tower).
bool vlm_micro_features(Run *run, const StepBatch *batch, int micro, Batch *out, Error *err);
// After model_step of that micro-batch: OpenVLA's towers' backward from model_image_feature_grads into the
// model's gradients when they have adapters, then grads_ready for their range (every micro-batch, every rank).
bool vlm_micro_backward(Run *run, const StepOptions *options, Error *err);
void vlm_destroy(Run *run);
// A StepLoader over the run's data (robot_dataset, vlm_dataset or dataset,
// whichever is set) or, for evaluation, over held_out: the held-out dataset of
// the same kind (RobotDataset, VlmDataset or Dataset), NULL for the run's own.
StepLoader *run_open_loader(const Run *run, void *held_out, const DataLoaderOptions *options, Error *err);
// Usable samples of the run's training data (before data.eval_fraction's split).
int64_t run_data_size(const Run *run);
// Robot steps at path as data.format and the step keys say, skips checked.
RobotDataset *open_robot_dataset(const Config *config, const char *path, Error *err);
// data.eval_path opened as the run's data is (robot or image-text runs).
bool vlm_open_held_out(Run *run, Error *err);
// Robot data: its action statistics as dataset_statistics.json in dir (checkpoint.dir,
// and every adapter folder the run saves, which inference un-normalises actions with).
bool vlm_write_dataset_statistics(const Run *run, const char *dir, Error *err);

// Set by SIGINT / SIGTERM once stop_signals_install ran (trainer.h).
extern volatile sig_atomic_t stop_signal;
// Puts back the handlers from before stop_signals_install and forgets any signal.
void stop_signals_restore(void);

// Refuses to start when checkpoint.dir cannot take a file, or (unless
// control->allow_low_disk) when keep_last
// checkpoints plus the final adapter exceed the free space of checkpoint.dir.
bool check_disk_for_run(Run *run, Error *err);
// Saves a checkpoint whose next step is next_step (the data loader is at its
// position): disk guard first, then the atomic verified write, then keep_last.
// Every rank calls it (each writes its optimizer shard); path is set on all.
bool save_checkpoint(Run *run, int next_step, char *path, size_t path_size, Error *err);
// Loads control->resume into the model, optimizer, loader and progress;
// *start_step receives the step to continue from.
bool resume_from_checkpoint(Run *run, int *start_step, Error *err);

// The model the run creates for config (train.c), for plan to measure.
ModelOptions train_model_options(const Config *config, const Ops *ops, const LlamaConfig *llama);
// "1.50 GiB", "3.20 MiB" or "512 bytes".
void format_bytes(uint64_t bytes, char *text, size_t size);
// Checkpoints a run of total_steps has on disk at once (every_steps, keep_last,
// the last step's): keep_last, plus the new one written before the oldest is pruned.
int checkpoints_kept(const Config *config, int total_steps);
// The whole run's disk need: the kept checkpoints of checkpoint_bytes each and the final adapter
// (and best/ with checkpoint.keep_best: adapters_kept names them).
uint64_t run_disk_bytes(const Config *config, int total_steps, uint64_t checkpoint_bytes, size_t n_params);
const char *adapters_kept(const Config *config);
