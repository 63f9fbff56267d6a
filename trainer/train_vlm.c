// The vision-language side of a training run (data.images or vision.tower
// set, or robot data): what comes from the config and what from a llava-hf
// model.path (vlm_setup), the frozen CLIP tower, LLaVA records through
// VlmDataset or robot steps through RobotDataset, and for every micro-batch
// the tower's features of the rows holding an image (forward only, nothing
// kept for a backward). run_open_loader picks the StepLoader of the run's
// data: text (DataLoader), LLaVA (VlmLoader) or robot steps (RobotLoader).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "train_private.h"

#define DEFAULT_TOWER_PRESET "clip-vit-large-patch14-336" // vision.tower_preset auto without a llava-hf folder

// vision.tower_preset with auto resolved for a model.path that is no llava-hf folder.
static const char *tower_preset(const Config *config) {
    return strcmp(config->vision.tower_preset, "auto") == 0 ? DEFAULT_TOWER_PRESET : config->vision.tower_preset;
}

bool run_is_vlm(const Config *config) {
    return config->data.images[0] || config->vision.tower[0] || config_is_robot_data(config);
}

static ImageFit image_fit_named(const char *name) {
    if (strcmp(name, "pad") == 0) return IMAGE_FIT_PAD;
    return strcmp(name, "crop") == 0 ? IMAGE_FIT_CROP : IMAGE_FIT_SQUASH;
}

// The tower's shape: vision.tower_preset, else a llava-hf model.path's config.json
// (CLIP ViT-L/14-336 otherwise); vision.feature_layer (0: the folder's, else -2) overrides.
static bool setup_tower_shape(const Config *config, bool is_llava, const LlavaVision *folder, VlmSetup *out, Error *err) {
    const char *preset = tower_preset(config);
    bool from_folder = is_llava && strcmp(config->vision.tower_preset, "auto") == 0;
    if (from_folder) out->clip = folder->clip;
    else if (!clip_config_preset(preset, &out->clip, err)) return false;
    if (config->vision.feature_layer != 0) out->clip.feature_layer = config->vision.feature_layer;
    if (!clip_config_validate(&out->clip, err))
        return fail_context(err, "%s: ", from_folder ? config->model.path : "vision.tower_preset");
    int features = clip_n_features(&out->clip);
    if (config->data.image_tokens != 0 && config->data.image_tokens != features)
        return fail(err, "data.image_tokens is %d, but the vision tower (%s) gives %d features per image",
                    config->data.image_tokens, from_folder ? config->model.path : preset, features);
    return true;
}

// Preprocessing: the folder's image processor (size, mean, std) when it has one,
// else CLIP's mean and std at the tower's size; vision.image_fit picks the fit.
static bool setup_preprocess(const Config *config, bool is_llava, const LlavaVision *folder, VlmSetup *out, Error *err) {
    ImageFit fit = image_fit_named(config->vision.image_fit);
    out->preprocess = image_preprocess_clip336(fit);
    out->preprocess.size = out->clip.image_size;
    if (!is_llava || !folder->has_preprocess) return true;
    out->preprocess = folder->preprocess;
    out->preprocess.fit = fit;
    if (out->preprocess.size != out->clip.image_size)
        return fail(err, "%s: the image processor makes %d x %d pixels, the vision tower takes %d x %d", config->model.path,
                    out->preprocess.size, out->preprocess.size, out->clip.image_size, out->clip.image_size);
    return true;
}

bool vlm_setup(const Config *config, VlmSetup *out, Error *err) {
    LlavaVision folder;
    bool is_llava = false;
    if (path_exists(config->model.path) && !hf_read_llava_vision(config->model.path, &is_llava, &folder, err)) return false;
    *out = (VlmSetup){.tower = config->vision.tower, .projector_init = config->vision.projector_init,
                      .image_token_id = is_llava ? folder.image_token_id : -1};
    if (is_llava && !out->tower[0]) out->tower = config->model.path;
    if (is_llava && !out->projector_init[0]) out->projector_init = config->model.path;
    return setup_tower_shape(config, is_llava, &folder, out, err) && setup_preprocess(config, is_llava, &folder, out, err);
}

int32_t vlm_image_token_id(const VlmSetup *setup, const Tokenizer *tok, int model_vocab) {
    return setup->image_token_id >= 0 ? setup->image_token_id : llava_image_token_id(tok, model_vocab);
}

bool vlm_projector_options(const Config *config, ModelOptions *options, ClipVisionConfig *clip, Error *err) {
    VlmSetup setup;
    if (!vlm_setup(config, &setup, err)) return false;
    if (!setup.tower[0])
        return fail(err, "data.images is set but vision.tower is not, and model.path is no llava-hf folder: "
                         "image-text training needs a tower");
    *clip = setup.clip;
    options->projector_in = clip->hidden_size;
    options->max_image_rows = config->train.micro_batch * clip_n_features(clip);
    return true;
}

bool vlm_read_openvla(const Config *config, bool *is_openvla, OpenVlaVision *vla, Error *err) {
    *is_openvla = false;
    return !path_exists(config->model.path) || hf_read_openvla(config->model.path, is_openvla, vla, err);
}

void vlm_openvla_model_options(const Config *config, const OpenVlaVision *vla, ModelOptions *options) {
    options->projector_kind = PROJECTOR_OPENVLA;
    options->projector_in = vla->towers[0].hidden_size + vla->towers[1].hidden_size;
    options->max_image_rows = config->train.micro_batch * clip_n_features(&vla->towers[0]);
}

// OpenVLA has no image token: the placeholders after BOS take an id the tokenizer never gives
// (llava_image_token_id: past its vocabulary), and the model splices the features at them.
static bool openvla_model_options(Run *run, const OpenVlaVision *vla, const LlamaConfig *llama,
                                  ModelOptions *options, Error *err) {
    if (!config_is_robot_data(run->config))
        return fail(err, "%s: an OpenVLA folder trains on robot data (data.format rlds or robot_jsonl)",
                    run->config->model.path);
    run->is_openvla = true;
    run->openvla = *vla;
    vlm_openvla_model_options(run->config, vla, options);
    options->lora_towers = run->openvla.towers;
    options->image_feature_grads = options->lora.target_towers;
    run->image_token_id = llava_image_token_id(run->tokenizer, llama->vocab_size);
    options->image_token_id = run->image_token_id;
    return true;
}

bool vlm_model_options(Run *run, const LlamaConfig *llama, ModelOptions *options, Error *err) {
    bool is_openvla;
    OpenVlaVision vla;
    if (!vlm_read_openvla(run->config, &is_openvla, &vla, err)) return false;
    if (is_openvla) return openvla_model_options(run, &vla, llama, options, err);
    if (!run_is_vlm(run->config)) return true;
    ClipVisionConfig clip;
    VlmSetup setup;
    if (!vlm_projector_options(run->config, options, &clip, err) || !vlm_setup(run->config, &setup, err)) return false;
    run->image_token_id = vlm_image_token_id(&setup, run->tokenizer, llama->vocab_size);
    if (run->image_token_id >= llama->vocab_size)
        return fail(err, "%s: image_token_index %d is outside the vocabulary of %d", run->config->model.path,
                    run->image_token_id, llama->vocab_size);
    options->image_token_id = run->image_token_id;
    return true;
}

// The tower (vision.tower, or the llava-hf model folder), first written with
// random weights when vision.tower is absent and model.create_if_missing is
// set (rank 0 alone gets there first).
static bool load_or_create_tower(Run *run, const VlmSetup *setup, Error *err) {
    const Config *config = run->config;
    run->tower = clip_tower_create(run->ops, &setup->clip, config->train.micro_batch, err);
    if (!run->tower) return false;
    const char *path = setup->tower;
    if (path_exists(path) || !config->model.create_if_missing[0]) return clip_load_weights(run->tower, path, err);
    if (run->is_rank0) printf("creating a random '%s' vision tower in %s\n", tower_preset(config), path);
    clip_tower_init_random(run->tower, config->train.seed ^ 0xc11bULL);
    return clip_save_weights(run->tower, path, err);
}

bool vlm_dataset_options(const Config *config, const Tokenizer *tok, int32_t image_token_id,
                         VlmDatasetOptions *options, Error *err) {
    VlmSetup setup;
    if (!vlm_setup(config, &setup, err)) return false;
    *options = (VlmDatasetOptions){.path = config->data.path, .images = config->data.images, .tok = tok,
                                   .max_seq_len = config->data.max_seq_len, .n_image_tokens = clip_n_features(&setup.clip),
                                   .image_token_id = image_token_id, .preprocess = setup.preprocess};
    return true;
}

static const char *key_or_default(const char *key) { return key[0] ? key : NULL; }

static bool is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

RobotDataset *open_robot_dataset(const Config *config, const char *path, Error *err) {
    bool rlds = strcmp(config_data_format(config), "rlds") == 0;
    RobotDataOptions options = {.path = path, .images = key_or_default(config->data.images),
                                .image_key = key_or_default(config->data.image_key),
                                .instruction_key = key_or_default(config->data.instruction_key),
                                .action_key = key_or_default(config->data.action_key)};
    if (rlds != is_directory(path)) {
        fail(err, "%s: data.format is %s, but this is %s", path, config_data_format(config),
             rlds ? "no RLDS folder" : "an RLDS folder");
        return NULL;
    }
    RobotDataset *dataset = robot_dataset_open(&options, err);
    if (dataset && robot_dataset_check_skips(dataset, config->data.max_skip_fraction, err)) return dataset;
    robot_dataset_destroy(dataset);
    return NULL;
}

// The run's data: LLaVA records, or robot steps and their action statistics
// (over the whole of data.path, OpenVLA's training split).
static bool open_vlm_dataset(Run *run, Error *err) {
    const Config *config = run->config;
    if (config_is_robot_data(config)) {
        run->robot_dataset = open_robot_dataset(config, config->data.path, err);
        return run->robot_dataset && robot_dataset_action_stats(run->robot_dataset, NULL, &run->action_stats, err);
    }
    VlmDatasetOptions options;
    if (!vlm_dataset_options(config, run->tokenizer, run->image_token_id, &options, err)) return false;
    run->vlm_dataset = vlm_dataset_open(&options, err);
    return run->vlm_dataset && vlm_dataset_check_skips(run->vlm_dataset, config->data.max_skip_fraction, err);
}

bool vlm_open_held_out(Run *run, Error *err) {
    const Config *config = run->config;
    Evaluation *eval = &run->eval;
    if (run->robot_dataset) return (eval->robot_dataset = open_robot_dataset(config, config->data.eval_path, err)) != NULL;
    VlmDatasetOptions options;
    if (!vlm_dataset_options(config, run->tokenizer, run->image_token_id, &options, err)) return false;
    options.path = config->data.eval_path;
    eval->vlm_dataset = vlm_dataset_open(&options, err);
    return eval->vlm_dataset && vlm_dataset_check_skips(eval->vlm_dataset, config->data.max_skip_fraction, err);
}

bool vlm_write_dataset_statistics(const Run *run, const char *dir, Error *err) {
    if (!run->robot_dataset) return true;
    char path[CONFIG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/dataset_statistics.json", dir);
    return action_stats_write_json(&run->action_stats, robot_dataset_name(run->robot_dataset), path, err);
}

size_t vlm_feature_bytes(const Config *config, const ClipVisionConfig *clip, DType act_dtype) {
    return (size_t)config->train.micro_batch * clip_n_features(clip) * clip->hidden_size * dtype_size(act_dtype);
}

// OpenVLA's two towers from model.path, with adapters bound to the model's flat buffer under all-linear,
// and the buffers of one micro-batch's 6-channel pixels and features side by side.
static bool load_openvla(Run *run, Error *err) {
    const Config *config = run->config;
    bool train = model_lora(run->model)->target_towers;
    ClipTowerOptions options = {.lora_r = config->lora.r, .train = true,
                                .activation_checkpointing = config->train.activation_checkpointing};
    int micro = config->train.micro_batch;
    run->featurizer = fused_featurizer_create_with(run->ops, run->openvla.towers, micro, train ? &options : NULL, err);
    if (!run->featurizer || !openvla_load_towers(run->featurizer, config->model.path, err)) return false;
    if (train && !fused_featurizer_bind_lora(run->featurizer, model_params(run->model),
                                             lora_scale(model_lora(run->model)), err))
        return false;
    if (!open_vlm_dataset(run, err)) return false;
    int S = run->openvla.towers[0].image_size;
    size_t pixels = (size_t)micro * 6 * S * S, rows = (size_t)micro * fused_featurizer_n_features(run->featurizer);
    run->image_scratch = checked_malloc(pixels * sizeof(float), "images", err);
    size_t bytes = rows * fused_featurizer_width(run->featurizer) * dtype_size(run->ops->act_dtype);
    run->image_features = run->image_scratch ? run->ops->alloc(run->ops, bytes, err) : NULL;
    return run->image_features != NULL;
}

// The tower, the starting projector (vision.projector_init, or the llava-hf
// model folder's) and the dataset; OpenVLA's towers (load_openvla).
bool vlm_load(Run *run, Error *err) {
    const Config *config = run->config;
    if (run->is_openvla) return load_openvla(run, err);
    VlmSetup setup;
    if (!vlm_setup(config, &setup, err)) return false;
    if (setup.projector_init[0] && !projector_load(run->model, setup.projector_init, err)) return false;
    if (!load_or_create_tower(run, &setup, err) || !open_vlm_dataset(run, err)) return false;
    const ClipVisionConfig *clip = clip_tower_config(run->tower);
    size_t pixels = (size_t)3 * clip->image_size * clip->image_size;
    run->image_scratch = checked_malloc((size_t)config->train.micro_batch * pixels * sizeof(float), "images", err);
    run->image_features = run->image_scratch
                              ? run->ops->alloc(run->ops, vlm_feature_bytes(config, clip, run->ops->act_dtype), err)
                              : NULL;
    return run->image_features != NULL;
}

// Micro-batch micro's images through the frozen tower: the rows holding an
// image, in row order, give (n_images * P, D) feature rows, the order in which
// their image tokens appear in the (B, T) tokens.
bool vlm_micro_features(Run *run, const StepBatch *batch, int micro, Batch *out, Error *err) {
    if (run) run->n_micro_images = 0;
    if (!run || (!run->tower && !run->featurizer)) return true;
    size_t pixels = (size_t)batch->image_channels * batch->image_size * batch->image_size;
    int n_images = 0;
    for (int b = 0; b < batch->B; b++) {
        size_t row = (size_t)micro * batch->B + b;
        if (!batch->has_image[row]) continue;
        memcpy(run->image_scratch + n_images * pixels, batch->images + row * pixels, pixels * sizeof(float));
        n_images++;
    }
    run->n_micro_images = n_images;
    out->image_features = n_images ? run->image_features : NULL;
    if (run->featurizer) {
        out->n_image_rows = n_images * fused_featurizer_n_features(run->featurizer);
        return n_images == 0 || fused_featurizer_forward_lora(run->featurizer, model_param_act(run->model),
                                                              run->image_scratch, n_images, run->image_features, err);
    }
    out->n_image_rows = n_images * clip_n_features(clip_tower_config(run->tower));
    return n_images == 0 || clip_tower_forward(run->tower, run->image_scratch, n_images, run->image_features, err);
}

bool vlm_micro_backward(Run *run, const StepOptions *options, Error *err) {
    if (!run || !run->featurizer || !model_lora(run->model)->target_towers) return true;
    if (options->train && run->n_micro_images > 0 &&
        !fused_featurizer_backward(run->featurizer, model_param_act(run->model), model_grad_data(run->model),
                                   model_image_feature_grads(run->model), run->n_micro_images, err))
        return false;
    size_t begin, end;
    openvla_tower_lora_range(model_params(run->model), &begin, &end);
    if (options->grads_ready && end > begin) options->grads_ready(options->grads_ready_context, begin, end);
    return true;
}

void vlm_destroy(Run *run) {
    if (run->image_features) run->ops->free(run->ops, run->image_features);
    free(run->image_scratch);
    vlm_dataset_destroy(run->vlm_dataset);
    robot_dataset_destroy(run->robot_dataset);
    clip_tower_destroy(run->tower);
    fused_featurizer_destroy(run->featurizer);
}

// OpenVLA's training images: resized to S x S by its RLDS pipeline (TensorFlow's lanczos3 with
// antialias, rounded to 8 bits), then PrismaticImageProcessor with image_resize_strategy resize-naive:
// each tower's bicubic resize to S x S (then the identity) and its own mean / std (hf_read_openvla:
// the folder's preprocessor_config.json, else openvla-7b's); channels 0:3 and 3:6.
static bool openvla_sample_options(const Run *run, RobotSampleOptions *out) {
    *out = (RobotSampleOptions){.tok = run->tokenizer,
                                .stats = run->action_stats,
                                .action_vocab_size = tokenizer_base_vocab_size(run->tokenizer),
                                .n_image_tokens = clip_n_features(&run->openvla.towers[0]),
                                .image_token_id = run->image_token_id,
                                .preprocess = run->openvla.preprocess[0],
                                .fused = true,
                                .fused_preprocess = run->openvla.preprocess[1],
                                .dlimp_resize = true,
                                .shuffle_buffer = run->config->data.shuffle_buffer};
    return true;
}

// The robot samples as vlm_setup's tower and preprocessing need them.
static bool robot_sample_options(const Run *run, RobotSampleOptions *out, Error *err) {
    if (run->is_openvla) return openvla_sample_options(run, out);
    VlmSetup setup;
    if (!vlm_setup(run->config, &setup, err)) return false;
    *out = (RobotSampleOptions){.tok = run->tokenizer, .stats = run->action_stats,
                                .action_vocab_size = tokenizer_base_vocab_size(run->tokenizer),
                                .n_image_tokens = clip_n_features(&setup.clip), .image_token_id = run->image_token_id,
                                .preprocess = setup.preprocess, .shuffle_buffer = run->config->data.shuffle_buffer};
    return true;
}

StepLoader *run_open_loader(const Run *run, void *held_out, const DataLoaderOptions *options, Error *err) {
    if (run->robot_dataset) {
        RobotSampleOptions robot;
        return robot_sample_options(run, &robot, err)
                   ? step_loader_robot(held_out ? held_out : run->robot_dataset, &robot, options,
                                     run->config->data.max_skip_fraction, err)
                   : NULL;
    }
    if (run->vlm_dataset)
        return step_loader_vlm(held_out ? held_out : run->vlm_dataset, options, run->config->data.max_skip_fraction, err);
    return step_loader_text(held_out ? held_out : run->dataset, options, err);
}

int64_t run_data_size(const Run *run) {
    if (run->robot_dataset) return robot_dataset_size(run->robot_dataset);
    return run->vlm_dataset ? vlm_dataset_size(run->vlm_dataset) : dataset_size(run->dataset);
}
