// The vision-language side of a training run (data.images or vision.tower
// set): the frozen CLIP tower, LLaVA records through VlmDataset / VlmLoader,
// and for every micro-batch the tower's features of the rows holding an image
// (forward only, nothing kept for a backward). The data-position functions
// serve text and vision-language runs alike.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train_private.h"

bool run_is_vlm(const Config *config) { return config->data.images[0] || config->vision.tower[0]; }

static bool tower_config(const Config *config, ClipVisionConfig *clip, Error *err) {
    if (!clip_config_preset(config->vision.tower_preset, clip, err)) return false;
    clip->feature_layer = config->vision.feature_layer;
    if (!clip_config_validate(clip, err)) return fail_context(err, "vision.tower_preset %s: ", config->vision.tower_preset);
    if (clip_n_patches(clip) != config->data.image_tokens)
        return fail(err, "data.image_tokens is %d, but vision.tower_preset %s gives %d patches per image",
                    config->data.image_tokens, config->vision.tower_preset, clip_n_patches(clip));
    return true;
}

bool vlm_projector_options(const Config *config, ModelOptions *options, ClipVisionConfig *clip, Error *err) {
    if (!config->vision.tower[0]) return fail(err, "data.images is set but vision.tower is not: image-text training needs a tower");
    if (!tower_config(config, clip, err)) return false;
    options->projector_in = clip->hidden_size;
    options->max_image_rows = config->train.micro_batch * clip_n_patches(clip);
    return true;
}

bool vlm_model_options(Run *run, const LlamaConfig *llama, ModelOptions *options, Error *err) {
    if (!run_is_vlm(run->config)) return true;
    ClipVisionConfig clip;
    if (!vlm_projector_options(run->config, options, &clip, err)) return false;
    run->image_token_id = llava_image_token_id(run->tokenizer, llama->vocab_size);
    options->image_token_id = run->image_token_id;
    return true;
}

// vision.tower, first written with random weights when it is absent and
// model.create_if_missing is set (rank 0 alone gets there first).
static bool load_or_create_tower(Run *run, Error *err) {
    const Config *config = run->config;
    ClipVisionConfig clip;
    if (!tower_config(config, &clip, err)) return false;
    run->tower = clip_tower_create(run->ops, &clip, config->train.micro_batch, err);
    if (!run->tower) return false;
    const char *path = config->vision.tower;
    if (path_exists(path) || !config->model.create_if_missing[0]) return clip_load_weights(run->tower, path, err);
    if (run->is_rank0) printf("creating a random '%s' vision tower in %s\n", config->vision.tower_preset, path);
    clip_tower_init_random(run->tower, config->train.seed ^ 0xc11bULL);
    return clip_save_weights(run->tower, path, err);
}

static ImageFit image_fit_named(const char *name) {
    if (strcmp(name, "pad") == 0) return IMAGE_FIT_PAD;
    return strcmp(name, "crop") == 0 ? IMAGE_FIT_CROP : IMAGE_FIT_SQUASH;
}

bool vlm_dataset_options(const Config *config, const Tokenizer *tok, int32_t image_token_id,
                         VlmDatasetOptions *options, Error *err) {
    ClipVisionConfig clip;
    if (!tower_config(config, &clip, err)) return false;
    ImagePreprocess preprocess = image_preprocess_clip336(image_fit_named(config->vision.image_fit));
    preprocess.size = clip.image_size; // CLIP's mean, std and pad colour at the tower's resolution
    *options = (VlmDatasetOptions){.path = config->data.path, .images = config->data.images, .tok = tok,
                                   .max_seq_len = config->data.max_seq_len, .n_image_tokens = clip_n_patches(&clip),
                                   .image_token_id = image_token_id, .preprocess = preprocess};
    return true;
}

static bool open_vlm_dataset(Run *run, Error *err) {
    VlmDatasetOptions options;
    if (!vlm_dataset_options(run->config, run->tokenizer, run->image_token_id, &options, err)) return false;
    run->vlm_dataset = vlm_dataset_open(&options, err);
    return run->vlm_dataset && vlm_dataset_check_skips(run->vlm_dataset, run->config->data.max_skip_fraction, err);
}

// The tower, the pretrained projector (vision.projector_init) and the dataset.
size_t vlm_feature_bytes(const Config *config, const ClipVisionConfig *clip, DType act_dtype) {
    return (size_t)config->train.micro_batch * clip_n_patches(clip) * clip->hidden_size * dtype_size(act_dtype);
}

bool vlm_load(Run *run, Error *err) {
    const Config *config = run->config;
    if (config->vision.projector_init[0] && !projector_load(run->model, config->vision.projector_init, err)) return false;
    if (!load_or_create_tower(run, err) || !open_vlm_dataset(run, err)) return false;
    const ClipVisionConfig *clip = clip_tower_config(run->tower);
    size_t pixels = (size_t)3 * clip->image_size * clip->image_size;
    run->image_scratch = checked_malloc((size_t)config->train.micro_batch * pixels * sizeof(float), "images", err);
    run->image_features =
        run->image_scratch ? run->ops->alloc(vlm_feature_bytes(config, clip, run->ops->act_dtype), err) : NULL;
    return run->image_features != NULL;
}

bool run_create_loader(Run *run, const DataLoaderOptions *options, Error *err) {
    if (run->vlm_dataset) {
        run->vlm_loader = vlm_loader_create(run->vlm_dataset, options, run->config->data.max_skip_fraction, err);
        return run->vlm_loader != NULL;
    }
    run->loader = dataloader_create(run->dataset, options, err);
    return run->loader != NULL;
}

// Micro-batch micro's images through the frozen tower: the rows holding an
// image, in row order, give (n_images * P, D) feature rows, the order in which
// their image tokens appear in the (B, T) tokens.
bool vlm_micro_features(Run *run, const StepBatch *batch, int micro, Batch *out, Error *err) {
    if (!run || !run->tower) return true;
    const ClipVisionConfig *clip = clip_tower_config(run->tower);
    size_t pixels = (size_t)3 * batch->image_size * batch->image_size;
    int n_images = 0;
    for (int b = 0; b < batch->B; b++) {
        size_t row = (size_t)micro * batch->B + b;
        if (!batch->has_image[row]) continue;
        memcpy(run->image_scratch + n_images * pixels, batch->images + row * pixels, pixels * sizeof(float));
        n_images++;
    }
    out->n_image_rows = n_images * clip_n_patches(clip);
    out->image_features = n_images ? run->image_features : NULL;
    return n_images == 0 || clip_tower_forward(run->tower, run->image_scratch, n_images, run->image_features, err);
}

void vlm_destroy(Run *run) {
    if (run->image_features) run->ops->free(run->image_features);
    free(run->image_scratch);
    vlm_loader_destroy(run->vlm_loader);
    vlm_dataset_destroy(run->vlm_dataset);
    clip_tower_destroy(run->tower);
}

// ----------------------------------------------------------------------------
// the data position, whichever loader the run has

const StepBatch *run_next_batch(Run *run, Error *err) {
    return run->vlm_loader ? vlm_loader_next(run->vlm_loader, err) : dataloader_next(run->loader);
}

void run_data_position(const Run *run, int *epoch, int64_t *step_in_epoch) {
    if (run->vlm_loader) vlm_loader_position(run->vlm_loader, epoch, step_in_epoch);
    else dataloader_position(run->loader, epoch, step_in_epoch);
}

void run_data_seek(Run *run, int epoch, int64_t step_in_epoch) {
    if (run->vlm_loader) vlm_loader_seek(run->vlm_loader, epoch, step_in_epoch);
    else dataloader_seek(run->loader, epoch, step_in_epoch);
}

int64_t run_steps_per_epoch(const Run *run) {
    return run->vlm_loader ? vlm_loader_steps_per_epoch(run->vlm_loader) : dataloader_steps_per_epoch(run->loader);
}

int64_t run_steps_for_epochs(Run *run, int n_epochs) {
    if (run->vlm_loader) return vlm_loader_steps_per_epoch(run->vlm_loader) * n_epochs;
    return dataloader_steps_for_epochs(run->loader, n_epochs);
}

int64_t run_samples(const Run *run) {
    if (run->eval.train_subset) return run->eval.n_train;
    return run->vlm_dataset ? vlm_dataset_size(run->vlm_dataset) : dataset_size(run->dataset);
}

int64_t run_truncated(const Run *run) {
    return run->vlm_dataset ? vlm_dataset_stats(run->vlm_dataset)->truncated : dataset_truncated_count(run->dataset);
}
