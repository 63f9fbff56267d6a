// Vision-language batching, in DataLoader's order: a permutation of the usable
// samples per epoch from (seed, epoch); global step g takes positions
// [g*S, (g+1)*S), S = B * grad_accum * world_size, of which this rank takes
// rank, rank + world_size, ...; the remainder of an epoch is dropped.
// A sample whose image fails to load is replaced by the next position of the
// epoch's order (wrapping) whose sample loads.
#include "data.h"
#include "data_private.h"

#include <stdlib.h>
#include <string.h>

struct VlmLoader {
    VlmDataset *dataset;
    DataLoaderOptions options;
    int64_t n_samples;         // served: the subset's or the dataset's
    double max_skip_fraction;
    int64_t samples_per_step;  // S, over all ranks
    int64_t steps_per_epoch;
    int64_t *order;            // (n_samples,) permutation of order_epoch
    int order_epoch;           // -1 before the first permutation
    int epoch;
    int64_t step_in_epoch;
    StepBatch batch;
};

static bool check_options(const DataLoaderOptions *o, int64_t n_samples, Error *err) {
    if (o->micro_batch < 1 || o->grad_accum < 1 || o->max_seq_len < 1)
        return fail(err, "vlm loader: micro_batch (%d), grad_accum (%d) and max_seq_len (%d) must be positive",
                    o->micro_batch, o->grad_accum, o->max_seq_len);
    if (o->world_size < 1 || o->rank < 0 || o->rank >= o->world_size)
        return fail(err, "vlm loader: rank %d is outside world_size %d", o->rank, o->world_size);
    int64_t per_step = (int64_t)o->micro_batch * o->grad_accum * o->world_size;
    if (n_samples < per_step)
        return fail(err, "vlm loader: the dataset's %lld usable samples are fewer than one optimizer step's %lld",
                    (long long)n_samples, (long long)per_step);
    return true;
}

static bool allocate_batch(VlmLoader *loader, int image_size, Error *err) {
    const DataLoaderOptions *o = &loader->options;
    size_t rows = (size_t)o->grad_accum * o->micro_batch;
    size_t image_floats = 3 * (size_t)image_size * (size_t)image_size;
    StepBatch *batch = &loader->batch;
    *batch = (StepBatch){.n_micro = o->grad_accum, .B = o->micro_batch, .T = o->max_seq_len, .image_size = image_size,
                         .image_channels = 3};
    batch->tokens = checked_malloc(rows * (size_t)o->max_seq_len * sizeof(int32_t), "batch tokens", err);
    batch->targets = batch->tokens ? checked_malloc(rows * (size_t)o->max_seq_len * sizeof(int32_t), "batch targets", err) : NULL;
    batch->images = batch->targets ? checked_malloc(rows * image_floats * sizeof(float), "batch images", err) : NULL;
    batch->has_image = batch->images ? checked_malloc(rows, "batch image flags", err) : NULL;
    return batch->has_image != NULL;
}

VlmLoader *vlm_loader_create(VlmDataset *dataset, const DataLoaderOptions *options, double max_skip_fraction,
                             Error *err) {
    int64_t n_samples = options->subset ? options->n_subset : vlm_dataset_size(dataset);
    if (!check_options(options, n_samples, err)) return NULL;
    VlmLoader *loader = checked_calloc(1, sizeof *loader, "a vision-language loader", err);
    if (!loader) return NULL;
    int64_t per_step = (int64_t)options->micro_batch * options->grad_accum * options->world_size;
    *loader = (VlmLoader){.dataset = dataset, .options = *options, .n_samples = n_samples, .max_skip_fraction = max_skip_fraction,
                          .samples_per_step = per_step, .steps_per_epoch = n_samples / per_step, .order_epoch = -1};
    loader->order = checked_malloc((size_t)n_samples * sizeof *loader->order, "the epoch order", err);
    if (!loader->order || !allocate_batch(loader, vlm_dataset_image_size(dataset), err)) {
        vlm_loader_destroy(loader);
        return NULL;
    }
    return loader;
}

void vlm_loader_destroy(VlmLoader *loader) {
    if (!loader) return;
    free(loader->order);
    free(loader->batch.tokens);
    free(loader->batch.targets);
    free(loader->batch.images);
    free(loader->batch.has_image);
    free(loader);
}

int64_t vlm_loader_steps_per_epoch(const VlmLoader *loader) { return loader->steps_per_epoch; }

static void build_order(VlmLoader *loader, int epoch) {
    const DataLoaderOptions *o = &loader->options;
    epoch_order(loader->order, loader->n_samples, o->seed, epoch, o->shuffle);
    for (int64_t i = 0; o->subset && i < loader->n_samples; i++) loader->order[i] = o->subset[loader->order[i]];
    loader->order_epoch = epoch;
}

// The sample at epoch position `position`, or the next one (wrapping) that loads.
static bool load_at(VlmLoader *loader, int64_t position, VlmSample *sample, Error *err) {
    int64_t n_samples = loader->n_samples;
    for (int64_t tried = 0; tried < n_samples; tried++) {
        bool skipped = false;
        int64_t index = loader->order[(position + tried) % n_samples];
        if (!vlm_dataset_load(loader->dataset, index, sample, &skipped, err)) return false;
        if (!skipped) return true;
        if (!vlm_dataset_check_skips(loader->dataset, loader->max_skip_fraction, err)) return false;
    }
    return fail(err, "vlm loader: no sample of the dataset loads");
}

// Row `row` of the batch from sample; returns its label-token count.
static int64_t fill_vlm_row(StepBatch *batch, int64_t row, const VlmSample *sample, int32_t pad) {
    size_t image_floats = 3 * (size_t)batch->image_size * (size_t)batch->image_size;
    float *image = batch->images + (size_t)row * image_floats;
    batch->has_image[row] = sample->has_image;
    if (sample->has_image) memcpy(image, sample->image, image_floats * sizeof(float));
    else memset(image, 0, image_floats * sizeof(float));
    return step_fill_row(&sample->text, batch->T, pad, batch->tokens + row * batch->T, batch->targets + row * batch->T);
}

const StepBatch *vlm_loader_next(VlmLoader *loader, Error *err) {
    normalize_epoch_position(loader->steps_per_epoch, &loader->epoch, &loader->step_in_epoch);
    if (loader->order_epoch != loader->epoch) build_order(loader, loader->epoch);
    const DataLoaderOptions *o = &loader->options;
    StepBatch *batch = &loader->batch;
    int32_t pad = tokenizer_pad(vlm_dataset_tokenizer(loader->dataset));
    int64_t step_start = loader->step_in_epoch * loader->samples_per_step;
    int64_t rows = (int64_t)o->grad_accum * o->micro_batch;
    batch->n_label_tokens = 0;
    for (int64_t row = 0; row < rows; row++) {
        VlmSample sample;
        if (!load_at(loader, step_start + row * o->world_size + o->rank, &sample, err)) return NULL;
        batch->n_label_tokens += fill_vlm_row(batch, row, &sample, pad);
        vlm_sample_free(&sample);
    }
    batch->epoch = loader->epoch;
    loader->step_in_epoch++;
    return batch;
}

void vlm_loader_position(const VlmLoader *loader, int *epoch, int64_t *step_in_epoch) {
    *epoch = loader->epoch;
    *step_in_epoch = loader->step_in_epoch;
    normalize_epoch_position(loader->steps_per_epoch, epoch, step_in_epoch);
}

void vlm_loader_seek(VlmLoader *loader, int epoch, int64_t step_in_epoch) {
    loader->epoch = epoch < 0 ? 0 : epoch;
    loader->step_in_epoch = step_in_epoch < 0 ? 0 : step_in_epoch;
    normalize_epoch_position(loader->steps_per_epoch, &loader->epoch, &loader->step_in_epoch);
}

// ----------------------------------------------------------------------------
// as a StepLoader

static const StepBatch *vlm_next(void *impl, Error *err) { return vlm_loader_next(impl, err); }
static void vlm_position(const void *impl, int *epoch, int64_t *step) { vlm_loader_position(impl, epoch, step); }
static void vlm_seek(void *impl, int epoch, int64_t step) { vlm_loader_seek(impl, epoch, step); }
static int64_t vlm_steps_per_epoch(const void *impl) { return vlm_loader_steps_per_epoch(impl); }
static int64_t vlm_steps_for_epochs(void *impl, int n_epochs) { return vlm_loader_steps_per_epoch(impl) * n_epochs; }
static int64_t vlm_samples(const void *impl) { return ((const VlmLoader *)impl)->n_samples; }
static int64_t vlm_truncated(const void *impl) {
    return vlm_dataset_stats(((const VlmLoader *)impl)->dataset)->truncated;
}
static void vlm_destroy_impl(void *impl) { vlm_loader_destroy(impl); }

static const StepLoaderKind VLM_LOADER = {vlm_next, vlm_position, vlm_seek, vlm_steps_per_epoch,
                                          vlm_steps_for_epochs, vlm_samples, vlm_truncated, vlm_destroy_impl};

StepLoader *step_loader_vlm(VlmDataset *dataset, const DataLoaderOptions *options, double max_skip_fraction,
                            Error *err) {
    return step_loader_wrap(&VLM_LOADER, vlm_loader_create(dataset, options, max_skip_fraction, err), err);
}
