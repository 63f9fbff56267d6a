// RobotLoader: robot steps (RobotDataset) as OpenVLA training samples, dealt
// as VlmLoader deals LLaVA samples, in an order from a bounded shuffle buffer.
#include "data_private.h"
#include "rlds.h"

#include <stdlib.h>
#include <string.h>

// Seeds the shuffle buffer's picks apart from other streams.
#define SHUFFLE_BUFFER_STREAM 0x5b0ffe12ULL

typedef struct RobotLoader {
    RobotDataset *dataset;
    RobotSampleOptions robot;
    DataLoaderOptions options;
    double max_skip_fraction;
    ActionTokenizer action_tokenizer;
    int64_t n_samples;        // served: the subset's or the dataset's
    int64_t samples_per_step; // over all ranks
    int64_t steps_per_epoch;
    int64_t truncated;        // served steps longer than max_seq_len
    int64_t *order;           // (n_samples,) the order of order_epoch
    int64_t *buffer;          // (min(shuffle_buffer, n_samples),)
    uint8_t *bad_image;       // (dataset steps,) an image that failed to load, skipped once recorded
    int order_epoch;          // -1 before the first
    int epoch;
    int64_t step_in_epoch;
    StepBatch batch;
} RobotLoader;

// The sample with n_tokens image positions inserted after its BOS.
static bool insert_image_positions(Sample *sample, int n_tokens, int32_t token_id, Error *err) {
    int length = sample->length + n_tokens;
    int32_t *ids = checked_malloc((size_t)length * sizeof *ids, "sample ids", err);
    int32_t *labels = ids ? checked_malloc((size_t)length * sizeof *labels, "sample labels", err) : NULL;
    if (!labels) {
        free(ids);
        return false;
    }
    ids[0] = sample->ids[0];
    labels[0] = sample->labels[0];
    for (int t = 1; t <= n_tokens; t++) ids[t] = token_id, labels[t] = IGNORE_INDEX;
    memcpy(ids + 1 + n_tokens, sample->ids + 1, (size_t)(sample->length - 1) * sizeof *ids);
    memcpy(labels + 1 + n_tokens, sample->labels + 1, (size_t)(sample->length - 1) * sizeof *labels);
    sample_free(sample);
    *sample = (Sample){.ids = ids, .labels = labels, .length = length};
    return true;
}

static bool training_sample(const RobotDataset *dataset, const RobotSampleOptions *o, const ActionTokenizer *actions,
                            int64_t i, Sample *out, Error *err) {
    RobotStep step = robot_dataset_step(dataset, i);
    int dim = robot_dataset_action_dim(dataset);
    float normalized[ROBOT_ACTION_DIM_MAX];
    action_normalize(&o->stats, step.action, normalized);
    if (!openvla_sample(o->tok, actions, step.instruction, normalized, dim, out, err))
        return fail_context(err, "step %lld of episode %lld: ", (long long)step.step, (long long)step.episode);
    return insert_image_positions(out, o->n_image_tokens, o->image_token_id, err);
}

bool robot_training_sample(const RobotDataset *dataset, const RobotSampleOptions *options, int64_t i, Sample *out,
                           Error *err) {
    ActionTokenizer actions;
    action_tokenizer_init(&actions, options->action_vocab_size);
    return training_sample(dataset, options, &actions, i, out, err);
}

static int64_t served_index(const RobotLoader *loader, int64_t i) {
    return loader->options.subset ? loader->options.subset[i] : i;
}

// Served steps longer than max_seq_len (cut there), counted once at creation.
static bool count_truncated(RobotLoader *loader, Error *err) {
    for (int64_t i = 0; i < loader->n_samples; i++) {
        Sample sample;
        if (!training_sample(loader->dataset, &loader->robot, &loader->action_tokenizer, served_index(loader, i),
                             &sample, err))
            return false;
        loader->truncated += sample.length > loader->options.max_seq_len;
        sample_free(&sample);
    }
    return true;
}

static bool check_options(const DataLoaderOptions *o, const RobotSampleOptions *robot, int64_t n_samples, Error *err) {
    if (o->micro_batch < 1 || o->grad_accum < 1 || o->max_seq_len < 1)
        return fail(err, "robot loader: micro_batch (%d), grad_accum (%d) and max_seq_len (%d) must be positive",
                    o->micro_batch, o->grad_accum, o->max_seq_len);
    if (o->world_size < 1 || o->rank < 0 || o->rank >= o->world_size)
        return fail(err, "robot loader: rank %d is outside world_size %d", o->rank, o->world_size);
    if (robot->shuffle_buffer < 0 || robot->n_image_tokens < 0 || robot->preprocess.size < 1)
        return fail(err, "robot loader: shuffle_buffer (%d), image tokens (%d) and image size (%d) are out of range",
                    robot->shuffle_buffer, robot->n_image_tokens, robot->preprocess.size);
    if (robot->fused && robot->fused_preprocess.size != robot->preprocess.size)
        return fail(err, "robot loader: the fused towers' preprocessing makes %d and %d pixels; they must agree",
                    robot->preprocess.size, robot->fused_preprocess.size);
    int64_t per_step = (int64_t)o->micro_batch * o->grad_accum * o->world_size;
    if (n_samples < per_step)
        return fail(err, "robot loader: the dataset's %lld usable steps are fewer than one optimizer step's %lld",
                    (long long)n_samples, (long long)per_step);
    return true;
}

static bool allocate(RobotLoader *loader, Error *err) {
    const DataLoaderOptions *o = &loader->options;
    size_t rows = (size_t)o->grad_accum * o->micro_batch, T = (size_t)o->max_seq_len;
    int S = loader->robot.preprocess.size;
    int64_t buffer = loader->robot.shuffle_buffer < loader->n_samples ? loader->robot.shuffle_buffer : loader->n_samples;
    StepBatch *batch = &loader->batch;
    int channels = loader->robot.fused ? 6 : 3;
    *batch = (StepBatch){.n_micro = o->grad_accum, .B = o->micro_batch, .T = o->max_seq_len, .image_size = S,
                         .image_channels = channels};
    loader->order = checked_malloc((size_t)loader->n_samples * sizeof *loader->order, "the epoch order", err);
    loader->bad_image = checked_calloc((size_t)robot_dataset_size(loader->dataset), 1, "image flags", err);
    loader->buffer = checked_malloc((size_t)(buffer > 0 ? buffer : 1) * sizeof *loader->buffer, "the shuffle buffer", err);
    batch->tokens = checked_malloc(rows * T * sizeof(int32_t), "batch tokens", err);
    batch->targets = checked_malloc(rows * T * sizeof(int32_t), "batch targets", err);
    batch->images = checked_malloc(rows * channels * (size_t)S * (size_t)S * sizeof(float), "batch images", err);
    batch->has_image = checked_malloc(rows, "batch image flags", err);
    return loader->order && loader->bad_image && loader->buffer && batch->tokens && batch->targets && batch->images &&
           batch->has_image;
}

static void robot_loader_destroy(void *impl) {
    RobotLoader *loader = impl;
    if (!loader) return;
    free(loader->order);
    free(loader->buffer);
    free(loader->bad_image);
    free(loader->batch.tokens);
    free(loader->batch.targets);
    free(loader->batch.images);
    free(loader->batch.has_image);
    free(loader);
}

// The epoch's order: the served steps in data order through the shuffle buffer.
static void build_order(RobotLoader *loader, int epoch) {
    int64_t n = loader->n_samples, *buffer = loader->buffer;
    bool shuffle = loader->options.shuffle && loader->robot.shuffle_buffer > 1;
    int64_t filled = shuffle ? (loader->robot.shuffle_buffer < n ? loader->robot.shuffle_buffer : n) : 1;
    uint64_t seed = rng_hash(loader->options.seed ^ SHUFFLE_BUFFER_STREAM, (uint64_t)epoch);
    int64_t incoming = 0;
    for (; incoming < filled; incoming++) buffer[incoming] = incoming;
    for (int64_t t = 0; t < n; t++) {
        int64_t pick = (int64_t)(rng_hash(seed, (uint64_t)t) % (uint64_t)filled);
        loader->order[t] = served_index(loader, buffer[pick]);
        if (incoming < n) buffer[pick] = incoming++;
        else buffer[pick] = buffer[--filled];
    }
    loader->order_epoch = epoch;
}

// With robot->dlimp_resize, image resized in place to S x S as OpenVLA's RLDS pipeline does.
static bool dlimp_resize(const RobotSampleOptions *robot, Image *image, Error *err) {
    int S = robot->preprocess.size;
    if (!robot->dlimp_resize || (image->width == S && image->height == S)) return true;
    Image resized;
    if (!image_resize_lanczos3_tf(image, S, S, &resized, err)) return false;
    image_free(image);
    *image = resized;
    return true;
}

// Step i's image preprocessed into out; false with *skipped when it does not
// load (recorded in the dataset's skips the first time), false alone on other errors.
static bool load_image(RobotLoader *loader, int64_t i, float *out, bool *skipped, Error *err) {
    *skipped = loader->bad_image[i] != 0;
    if (*skipped) return false;
    Image image = {0};
    Error why = {{0}};
    const RobotSampleOptions *robot = &loader->robot;
    size_t plane = (size_t)3 * robot->preprocess.size * robot->preprocess.size;
    bool ok = robot_dataset_image(loader->dataset, i, &image, &why) && dlimp_resize(robot, &image, &why) &&
              image_preprocess(&image, &robot->preprocess, out, &why) &&
              (!robot->fused || image_preprocess(&image, &robot->fused_preprocess, out + plane, &why));
    image_free(&image);
    if (ok) return true;
    RobotStep step = robot_dataset_step(loader->dataset, i);
    loader->bad_image[i] = 1;
    *skipped = robot_skip(loader->dataset, step.episode, SKIP_BAD_IMAGE, err, "episode %lld, step %d: %s",
                          (long long)step.episode, step.step, why.message);
    return false;
}

// Row `row` of the batch from the step at epoch position `position`, or the
// next one (wrapping) whose image loads; returns its label-token count, or -1 on failure.
static int64_t fill_row(RobotLoader *loader, int64_t row, int64_t position, Error *err) {
    StepBatch *batch = &loader->batch;
    float *image = batch->images + (size_t)row * batch->image_channels * (size_t)batch->image_size * batch->image_size;
    int64_t i = -1;
    for (int64_t tried = 0; tried < loader->n_samples && i < 0; tried++) {
        int64_t candidate = loader->order[(position + tried) % loader->n_samples];
        bool skipped;
        if (load_image(loader, candidate, image, &skipped, err)) i = candidate;
        else if (!skipped || !robot_dataset_check_skips(loader->dataset, loader->max_skip_fraction, err)) return -1;
    }
    if (i < 0) {
        fail(err, "robot loader: no step's image loads");
        return -1;
    }
    Sample sample;
    if (!training_sample(loader->dataset, &loader->robot, &loader->action_tokenizer, i, &sample, err)) return -1;
    batch->has_image[row] = 1;
    int32_t pad = tokenizer_pad(loader->robot.tok);
    int64_t labels = step_fill_row(&sample, batch->T, pad, batch->tokens + row * batch->T, batch->targets + row * batch->T);
    sample_free(&sample);
    return labels;
}

static const StepBatch *robot_next(void *impl, Error *err) {
    RobotLoader *loader = impl;
    normalize_epoch_position(loader->steps_per_epoch, &loader->epoch, &loader->step_in_epoch);
    if (loader->order_epoch != loader->epoch) build_order(loader, loader->epoch);
    const DataLoaderOptions *o = &loader->options;
    StepBatch *batch = &loader->batch;
    int64_t step_start = loader->step_in_epoch * loader->samples_per_step;
    int64_t rows = (int64_t)o->grad_accum * o->micro_batch;
    batch->n_label_tokens = 0;
    for (int64_t row = 0; row < rows; row++) {
        int64_t labels = fill_row(loader, row, step_start + row * o->world_size + o->rank, err);
        if (labels < 0) return NULL;
        batch->n_label_tokens += labels;
    }
    batch->epoch = loader->epoch;
    loader->step_in_epoch++;
    return batch;
}

static void robot_position(const void *impl, int *epoch, int64_t *step_in_epoch) {
    const RobotLoader *loader = impl;
    *epoch = loader->epoch;
    *step_in_epoch = loader->step_in_epoch;
    normalize_epoch_position(loader->steps_per_epoch, epoch, step_in_epoch);
}

static void robot_seek(void *impl, int epoch, int64_t step_in_epoch) {
    RobotLoader *loader = impl;
    loader->epoch = epoch < 0 ? 0 : epoch;
    loader->step_in_epoch = step_in_epoch < 0 ? 0 : step_in_epoch;
    normalize_epoch_position(loader->steps_per_epoch, &loader->epoch, &loader->step_in_epoch);
}

static int64_t robot_steps_per_epoch(const void *impl) { return ((const RobotLoader *)impl)->steps_per_epoch; }
static int64_t robot_steps_for_epochs(void *impl, int n_epochs) { return robot_steps_per_epoch(impl) * n_epochs; }
static int64_t robot_samples(const void *impl) { return ((const RobotLoader *)impl)->n_samples; }
static int64_t robot_truncated(const void *impl) { return ((const RobotLoader *)impl)->truncated; }

static const StepLoaderKind ROBOT_LOADER = {robot_next, robot_position, robot_seek, robot_steps_per_epoch,
                                            robot_steps_for_epochs, robot_samples, robot_truncated,
                                            robot_loader_destroy};

StepLoader *step_loader_robot(RobotDataset *dataset, const RobotSampleOptions *robot, const DataLoaderOptions *options,
                              double max_skip_fraction, Error *err) {
    int64_t n_samples = options->subset ? options->n_subset : robot_dataset_size(dataset);
    if (!check_options(options, robot, n_samples, err)) return NULL;
    RobotLoader *loader = checked_calloc(1, sizeof *loader, "a robot loader", err);
    if (!loader) return NULL;
    int64_t per_step = (int64_t)options->micro_batch * options->grad_accum * options->world_size;
    *loader = (RobotLoader){.dataset = dataset, .robot = *robot, .options = *options,
                            .max_skip_fraction = max_skip_fraction, .n_samples = n_samples,
                            .samples_per_step = per_step, .steps_per_epoch = n_samples / per_step, .order_epoch = -1};
    action_tokenizer_init(&loader->action_tokenizer, robot->action_vocab_size);
    if (!allocate(loader, err) || !count_truncated(loader, err)) {
        robot_loader_destroy(loader);
        return NULL;
    }
    return step_loader_wrap(&ROBOT_LOADER, loader, err);
}
