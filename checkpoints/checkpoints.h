// checkpoints: safetensors I/O, Hugging Face model folders, PEFT adapters,
// training checkpoints (atomic, verified) and free disk space.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"
#include "../model/model.h"
#include "../vision/vision.h"

// ----------------------------------------------------------------------------
// safetensors: 8-byte little-endian header length, JSON header, data.
// The reader memory-maps the file and checks every offset and shape against
// the file's size before handing out a view.

typedef struct SafetensorsFile SafetensorsFile;

SafetensorsFile *safetensors_open(const char *path, Error *err);
void safetensors_close(SafetensorsFile *file);
int safetensors_count(const SafetensorsFile *file);
const char *safetensors_name(const SafetensorsFile *file, int index);
// View of the named tensor (data points into the mapping); false if absent.
bool safetensors_get(const SafetensorsFile *file, const char *name, Tensor *out, Error *err);
// Drops a view's pages from this process's memory once it is copied out (read
// again from the file if touched later): loading keeps one tensor mapped, not the file.
void safetensors_release(const Tensor *view);
// __metadata__ value for key, or NULL.
const char *safetensors_metadata(const SafetensorsFile *file, const char *key);

typedef struct SafetensorsEntry {
    const char *name;
    Tensor tensor;     // host memory
} SafetensorsEntry;

// Writes entries (in the given order) with optional string metadata pairs.
bool safetensors_write(const char *path, const SafetensorsEntry *entries, int n_entries,
                       const char *const *metadata_kv, int n_metadata, Error *err);
// safetensors_write with the data of one tensor at a time: entries give the
// names, dtypes and shapes (data unused); fill writes tensor index's size bytes
// into bytes. The file is never whole in memory.
typedef bool (*SafetensorsFill)(void *context, int index, void *bytes, size_t size, Error *err);
bool safetensors_write_streamed(const char *path, const SafetensorsEntry *entries, int n_entries,
                                const char *const *metadata_kv, int n_metadata, SafetensorsFill fill, void *context,
                                Error *err);
// The same file's bytes in memory (*bytes malloc'd, *size bytes); name is for messages.
bool safetensors_serialize(const char *name, const SafetensorsEntry *entries, int n_entries,
                           const char *const *metadata_kv, int n_metadata, uint8_t **bytes, size_t *size,
                           Error *err);

// ----------------------------------------------------------------------------
// Hugging Face model folders: config.json + model.safetensors or shards listed
// by model.safetensors.index.json (F32, BF16, F16). LlamaForCausalLM, or the
// language model of LlavaForConditionalGeneration (config.json's text_config).

// Where a folder keeps the language model's tensors. The model and its
// ParamTable use the Llama names; loading and adapters translate.
typedef enum HfLayout {
    HF_LAYOUT_LLAMA,        // model.layers.*, lm_head.weight
    HF_LAYOUT_LLAVA_LEGACY, // language_model.model.layers.*, language_model.lm_head.weight (save_pretrained < 4.52)
    HF_LAYOUT_LLAVA,        // model.language_model.layers.*, lm_head.weight (transformers >= 4.52)
    HF_LAYOUT_OPENVLA,      // OpenVLAForActionPrediction: the legacy LLaVA names, with projector.fc1..3 and
                            // vision_backbone.* beside (its adapters keep these names, unlike LLaVA's)
} HfLayout;

// Prefix of the decoder's modules under layout: "model.", "language_model.model.", ...
const char *hf_layout_decoder_prefix(HfLayout layout);
// Reads the folder's tensor names (index or single file) to find its layout.
bool hf_read_layout(const char *model_dir, HfLayout *out, Error *err);

bool hf_read_llama_config(const char *model_dir, LlamaConfig *out, Error *err);
// Writes config.json and model.safetensors (fp32) of the model's frozen weights.
bool hf_save_model(Model *model, const char *model_dir, Error *err);
// hf_save_model with the frozen tensors stored as dtype (F32, BF16 or F16,
// config.json's torch_dtype saying so), streamed to the file one at a time.
bool hf_save_model_as(Model *model, const char *model_dir, DType dtype, Error *err);
// Loads every frozen tensor of model from model_dir in whichever layout it
// uses. Presence, dtype and shape of every tensor are checked before any is
// loaded; a mismatch names the tensor, the expected and the found shape.
bool hf_load_weights(Model *model, const char *model_dir, Error *err);

// The vision side of a llava-hf folder (LlavaForConditionalGeneration): the
// tower's shape (CLIP or SigLIP) from config.json's vision_config,
// vision_feature_layer and vision_feature_select_strategy (default | full),
// image_token_index, and the image processor (preprocessor_config.json, or
// processor_config.json's image_processor): size, its fit, mean, std, pad
// colour int(mean * 255). Refused with the file and the key: towers other than
// CLIP and SigLIP, a hidden_act other than quick_gelu, gelu, gelu_pytorch_tanh
// or gelu_new, projector_hidden_act other than gelu, a list of feature layers,
// resampling other than bicubic, a crop other than the resize's size.
typedef struct LlavaVision {
    ClipVisionConfig clip;
    int image_token_id;
    bool has_preprocess;        // an image processor config was found (else CLIP's mean / std at the tower's size)
    ImagePreprocess preprocess; // fit: the processor's own (CROP, or SQUASH for a square size); the caller picks
} LlavaVision;

// *is_llava false (and true returned) when the folder's config.json is not a
// llava one or is absent.
bool hf_read_llava_vision(const char *model_dir, bool *is_llava, LlavaVision *out, Error *err);

// An OpenVLA folder (config.json architectures ["OpenVLAForActionPrediction"] or model_type
// "openvla"; the language model from text_config through hf_read_llama_config): the fused towers'
// shapes from timm_model_ids (vit_large_patch14_reg4_dinov2* -> dinov2-vit-l14-reg4,
// vit_so400m_patch14_siglip_224* -> siglip-so400m-14) at image_sizes, n_action_bins and
// pad_to_multiple_of. Refused, naming config.json: a single (unfused) tower, other timm models,
// timm_override_act_layers, image sizes that differ. Each tower's preprocessing from the folder's
// preprocessor_config.json (PrismaticImageProcessor: tvf_normalize_params, else means / stds, at
// input_sizes), else openvla/openvla-7b's; refused, naming the file and key, where it asks for what
// lora-train does not implement: a strategy other than resize-naive, letterbox, a resize other than
// bicubic to the towers' image size, a crop that crops.
typedef struct OpenVlaVision {
    ClipVisionConfig towers[2];    // vision_backbone.featurizer, vision_backbone.fused_featurizer
    ImagePreprocess preprocess[2]; // each tower's square resize and mean / std
    int n_action_bins;
    int pad_to_multiple_of;
} OpenVlaVision;
// *is_openvla false (and true returned) when config.json is absent or not OpenVLA's.
bool hf_read_openvla(const char *model_dir, bool *is_openvla, OpenVlaVision *out, Error *err);
// Both towers' weights from the folder (vision_backbone.featurizer. / .fused_featurizer.).
bool openvla_load_towers(FusedFeaturizer *featurizer, const char *model_dir, Error *err);
// A random OpenVLA-shaped folder (tests, demo): config.json with OpenVLA's keys, the Llama as text_config
// and lora-train's "tower_shapes" (the towers' sizes where they are not the presets'; hf_read_openvla reads
// them), preprocessor_config.json as openvla/openvla-7b's at the towers' image size, model.safetensors in
// OpenVLA's names (language_model., projector.fcK, vision_backbone.).
bool hf_save_openvla(Model *model, FusedFeaturizer *featurizer, const char *model_dir, Error *err);

// ----------------------------------------------------------------------------
// PEFT adapters

typedef struct AdapterInfo {
    const char *base_model_name_or_path;
    HfLayout layout;  // the base checkpoint's layout
} AdapterInfo;

// adapter_config.json + adapter_model.safetensors in dir (created if needed),
// keys base_model.model.<module>.lora_A.weight (r, in) / lora_B.weight (out, r).
// Llama bases: module = ParamTable name, target_modules the short names
// ["q_proj", ...]. LLaVA bases (either layout): the module paths of
// transformers >= 4.52 (model.language_model.layers.*), as PEFT writes them
// for both checkpoint layouts, and target_modules lists every targeted
// module's full path, so PEFT leaves the vision tower's q/k/v_proj alone.
// A trained projector goes into the same file as PEFT saves modules_to_save
// (base_model.model.model.multi_modal_projector.linear_1.weight, ...; without
// the second "model." for a Llama base), modules_to_save ["multi_modal_projector"].
bool adapter_save(Model *model, const AdapterInfo *info, const char *dir, Error *err);
// Loads LoRA tensors from a PEFT adapter folder (keys in any HfLayout) into
// the model's parameters, and the projector from the adapter file or, in
// folders written before it moved there, PROJECTOR_FILE beside it.
bool adapter_load(Model *model, const char *dir, Error *err);

// ----------------------------------------------------------------------------
// export

// base_dir with every LoRA pair of adapter_dir folded in (W + s * B A, in
// fp32, rounded once to W's dtype): out_dir/model.safetensors keeps the base's
// tensor names and dtypes; the adapter's trained projector (its file's
// modules_to_save tensors, or PROJECTOR_FILE beside it) replaces the base's,
// which must hold one; the vision tower is copied as it is; config.json, the
// tokenizer and processor files (chat_template.jinja, preprocessor_config.json,
// processor_config.json) are copied.
bool export_merged(const char *base_dir, const char *adapter_dir, const char *out_dir, Error *err);
// The adapter folder's two files (and an older folder's PROJECTOR_FILE) copied into out_dir.
bool export_peft(const char *adapter_dir, const char *out_dir, Error *err);

// ----------------------------------------------------------------------------
// training checkpoints: <run_dir>/step-NNNNNN/ holds
//   adapter_config.json, adapter_model.safetensors   the PEFT adapter (with the projector), usable as is
//   optimizer/rank-NNNNN.safetensors                  one per rank: its shard [begin, end) of AdamW exp_avg,
//                                                     exp_avg_sq (ParamTable layout), the range and the step
//   trainer_state.json                                step, data position, seed, losses, the outlier
//                                                     window, world size, config and its hash
//   COMPLETE                                          written last: every file's size and FNV-1a checksum
// and <run_dir>/latest names the newest complete one. A save writes
// .partial-step-NNNNNN/, fsyncs, re-reads and verifies every file, then
// renames it: a failure or a kill at any point leaves earlier checkpoints intact.
// A load gathers any range of the moments from whichever shard files hold it,
// so a run resumes on a different number of ranks.

#define RECENT_STEPS_MAX 1000 // train.skip_window's upper bound

typedef struct TrainerState {
    int step;                // loop steps done: the next step's index and the LR schedule position
    int optimizer_steps;     // AdamW steps taken (its bias correction)
    int epoch;               // data position of the next step
    int64_t step_in_epoch;
    uint64_t seed;           // init, shuffling (seed, epoch), dropout (seed, step, micro-batch)
    int skipped_steps;       // steps without label tokens
    int bad_steps;           // steps skipped for a non-finite or outlier loss or gradient norm
    int world_size;          // ranks of the run that saved it (filled by the load)
    double first_loss, last_loss;
    int best_eval_step;      // step of the lowest eval loss so far (0: no evaluation yet)
    double best_eval_loss;
    int n_recent;            // the last accepted steps' losses and gradient norms, oldest first (outlier window)
    double recent_loss[RECENT_STEPS_MAX], recent_norm[RECENT_STEPS_MAX];
    char *config_yaml;       // the run's config; malloc'd when loaded
} TrainerState;

typedef struct CheckpointSource {
    Model *model;                  // fp32 masters -> the adapter
    const AdapterInfo *adapter;
    const float *adam_m, *adam_v;  // this rank's shard of the ParamTable layout, backend memory (host memory when moments_on_host)
    bool moments_on_host;
    const TrainerState *state;
    int rank, world_size;            // world_size 0: one rank, adam_m / adam_v hold the whole buffer
    size_t shard_begin, shard_count; // the elements adam_m / adam_v hold when world_size > 0
} CheckpointSource;

// One rank's files of one checkpoint (rank 0: all but the other ranks'
// optimizer shards), serialised in memory: the size is exact before anything
// touches the disk.
typedef struct CheckpointImage CheckpointImage;

typedef struct FileDigest {
    uint64_t bytes, fnv1a64;
} FileDigest;

CheckpointImage *checkpoint_image_create(const CheckpointSource *source, Error *err);
void checkpoint_image_destroy(CheckpointImage *image);
// Bytes this rank's part adds to the disk (its files, rank 0's marker and `latest`).
uint64_t checkpoint_image_bytes(const CheckpointImage *image);
// Bytes of its optimizer shard file alone.
uint64_t checkpoint_image_shard_bytes(const CheckpointImage *image);
// Atomic, verified write of a one-rank image into run_dir; path receives step-NNNNNN's path.
bool checkpoint_write(const char *run_dir, const CheckpointImage *image, char *path, size_t path_size, Error *err);
// The same over several ranks, each phase finished on every rank (a barrier)
// before the next starts: rank 0 creates the partial folder (begin); every
// rank writes and verifies its shard file, *digest for rank 0 (shard); rank 0
// writes its files, re-reads every shard against digests[world_size], writes
// the marker and renames (finish). On a failure rank 0 abandons the save.
bool checkpoint_write_begin(const char *run_dir, const CheckpointImage *image, Error *err);
bool checkpoint_write_shard(const char *run_dir, const CheckpointImage *image, FileDigest *digest, Error *err);
bool checkpoint_write_finish(const char *run_dir, const CheckpointImage *image, const FileDigest *digests, char *path,
                             size_t path_size, Error *err);
void checkpoint_write_abandon(const char *run_dir, const CheckpointImage *image);

// Checks the marker, then every file's size and checksum (every rank's shard).
bool checkpoint_verify(const char *dir, Error *err);
// The newest complete checkpoint of run_dir: `latest` when it verifies, else
// the newest step-NNNNNN/ that does. False when there is none.
bool checkpoint_find_latest(const char *run_dir, char *path, size_t path_size, Error *err);
// Verifies dir, then loads the adapter into model, the AdamW moments'
// elements [shard_begin, shard_begin + shard_count) into adam_m / adam_v
// (backend memory, or host memory when moments_on_host), gathered from the
// shard files of however many ranks saved the checkpoint, and the trainer
// state (free it with trainer_state_free).
bool checkpoint_load_shard(const char *dir, Model *model, float *adam_m, float *adam_v, bool moments_on_host,
                           size_t shard_begin, size_t shard_count, TrainerState *state, Error *err);
void trainer_state_free(TrainerState *state);
// Removes complete checkpoints beyond the newest `keep` (keep >= 1) and
// leftovers of interrupted saves; the newest complete one always stays.
bool checkpoint_prune(const char *run_dir, int keep, Error *err);

// Bytes available to an unprivileged writer on the filesystem holding path
// (its nearest existing ancestor when path does not exist yet).
bool disk_free_bytes(const char *path, uint64_t *free_bytes, Error *err);

// ----------------------------------------------------------------------------
// vision-language: projector and CLIP tower weights

#define PROJECTOR_FILE "projector.safetensors" // adapter folders written before the projector moved into the adapter file

// The projector's four tensors, llava-hf names multi_modal_projector.linear_1.weight
// (C, in), linear_1.bias (C), linear_2.weight (C, C), linear_2.bias (C), from a
// safetensors file or a model folder (single or sharded) holding them under
// those names (with or without the "model." prefix of the new layout, or a
// PEFT adapter's "base_model.model." before either) or LLaVA pretraining's
// (model.mm_projector.0/2.{weight,bias}); shapes are checked.
bool projector_load(Model *model, const char *path, Error *err);
// Every tower weight from a safetensors file or a model folder (single or
// sharded) with its layout's keys: Hugging Face's ("vision_model....", as
// openai/clip-vit-large-patch14-336) or a llava-hf checkpoint's (under
// "vision_tower." or "model.vision_tower."), each with or without the
// "vision_model." part (transformers 5 saves without); timm's state dict
// ("patch_embed.proj.weight", ...); other tensors are ignored.
bool clip_load_weights(ClipTower *tower, const char *path, Error *err);
// The tower's weights (its layout's names) under prefix exactly, as OpenVLA's
// checkpoints hold their two timm towers ("vision_backbone.featurizer.",
// "vision_backbone.fused_featurizer."). Both loaders take timm's LayerScale
// gammas under OpenVLA's name for them too ("ls1.scale_factor" for "ls1.gamma").
bool clip_load_weights_under(ClipTower *tower, const char *path, const char *prefix, Error *err);
// Every tower weight under its CLIPVisionModel name, in the backend's dtype.
bool clip_save_weights(ClipTower *tower, const char *path, Error *err);
