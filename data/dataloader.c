// Deterministic batching: a permutation of the dataset per epoch from
// (seed, epoch); global step g of an epoch takes the S = B * grad_accum *
// world_size samples order[g*S .. (g+1)*S), of which this rank takes
// rank, rank + world_size, ...; the remainder of an epoch is dropped.
#include "data.h"
#include "data_private.h"

#include <stdlib.h>
#include <string.h>

struct DataLoader {
    const Dataset *dataset;
    DataLoaderOptions options;
    int64_t samples_per_step; // S, over all ranks
    int64_t steps_per_epoch;
    int64_t *order;           // (n_samples,) the permutation of order_epoch
    int order_epoch;          // -1 before the first permutation
    int epoch;                // position of the next step
    int64_t step_in_epoch;
    StepBatch batch;
};

static bool check_options(const DataLoaderOptions *o, Error *err) {
    if (o->micro_batch < 1 || o->grad_accum < 1 || o->max_seq_len < 1) {
        return fail(err, "data loader: micro_batch (%d), grad_accum (%d) and max_seq_len (%d) must be positive",
                    o->micro_batch, o->grad_accum, o->max_seq_len);
    }
    if (o->world_size < 1 || o->rank < 0 || o->rank >= o->world_size) {
        return fail(err, "data loader: rank %d is outside world_size %d", o->rank, o->world_size);
    }
    return true;
}

DataLoader *dataloader_create(const Dataset *dataset, const DataLoaderOptions *options, Error *err) {
    if (!check_options(options, err)) return NULL;
    int64_t n_samples = dataset_size(dataset);
    int64_t samples_per_step = (int64_t)options->micro_batch * options->grad_accum * options->world_size;
    if (n_samples < samples_per_step) {
        fail(err, "data loader: the dataset's %lld samples are fewer than one optimizer step's %lld "
                  "(micro_batch %d x grad_accum %d x world_size %d)",
             (long long)n_samples, (long long)samples_per_step, options->micro_batch, options->grad_accum,
             options->world_size);
        return NULL;
    }
    DataLoader *loader = checked_calloc(1, sizeof *loader, "a data loader", err);
    if (!loader) return NULL;
    *loader = (DataLoader){.dataset = dataset, .options = *options, .samples_per_step = samples_per_step,
                           .steps_per_epoch = n_samples / samples_per_step, .order_epoch = -1};
    size_t n_tokens = (size_t)options->grad_accum * options->micro_batch * options->max_seq_len;
    loader->order = checked_malloc((size_t)n_samples * sizeof *loader->order, "the epoch order", err);
    loader->batch.tokens = checked_malloc(n_tokens * sizeof(int32_t), "batch tokens", err);
    loader->batch.targets = checked_malloc(n_tokens * sizeof(int32_t), "batch targets", err);
    if (!loader->order || !loader->batch.tokens || !loader->batch.targets) {
        dataloader_destroy(loader);
        return NULL;
    }
    loader->batch.n_micro = options->grad_accum;
    loader->batch.B = options->micro_batch;
    loader->batch.T = options->max_seq_len;
    return loader;
}

void dataloader_destroy(DataLoader *loader) {
    if (!loader) return;
    free(loader->order);
    free(loader->batch.tokens);
    free(loader->batch.targets);
    free(loader);
}

int64_t dataloader_steps_per_epoch(const DataLoader *loader) { return loader->steps_per_epoch; }

void epoch_order(int64_t *order, int64_t n_samples, uint64_t seed, int epoch, bool shuffle) {
    for (int64_t i = 0; i < n_samples; i++) order[i] = i;
    if (!shuffle) return;
    Rng rng;
    rng_seed(&rng, rng_hash(seed, (uint64_t)epoch));
    rng_shuffle_indices(&rng, order, n_samples);
}

static void build_order(DataLoader *loader, int epoch) {
    epoch_order(loader->order, dataset_size(loader->dataset), loader->options.seed, epoch, loader->options.shuffle);
    loader->order_epoch = epoch;
}

// One row of T: tokens = ids padded with pad; targets[t] = labels[t + 1], and
// IGNORE_INDEX at the sample's last token and on padding. Returns the number
// of targets that are not IGNORE_INDEX.
int64_t step_fill_row(const Sample *sample, int T, int32_t pad, int32_t *tokens, int32_t *targets) {
    int length = sample->length < T ? sample->length : T;
    int64_t n_labels = 0;
    for (int t = 0; t < T; t++) {
        tokens[t] = t < length ? sample->ids[t] : pad;
        targets[t] = t + 1 < length ? sample->labels[t + 1] : IGNORE_INDEX;
        n_labels += targets[t] != IGNORE_INDEX;
    }
    return n_labels;
}

void normalize_epoch_position(int64_t steps_per_epoch, int *epoch, int64_t *step_in_epoch) {
    *epoch += (int)(*step_in_epoch / steps_per_epoch);
    *step_in_epoch %= steps_per_epoch;
}

const StepBatch *dataloader_next(DataLoader *loader) {
    normalize_epoch_position(loader->steps_per_epoch, &loader->epoch, &loader->step_in_epoch);
    if (loader->order_epoch != loader->epoch) build_order(loader, loader->epoch);
    const DataLoaderOptions *o = &loader->options;
    StepBatch *batch = &loader->batch;
    int32_t pad = dataset_pad_id(loader->dataset);
    int64_t step_start = loader->step_in_epoch * loader->samples_per_step;
    int64_t rows = (int64_t)o->grad_accum * o->micro_batch; // this rank's samples, micro-batch major
    batch->n_label_tokens = 0;
    for (int64_t row = 0; row < rows; row++) {
        int64_t index = loader->order[step_start + row * o->world_size + o->rank];
        const Sample *sample = dataset_sample(loader->dataset, index);
        batch->n_label_tokens += step_fill_row(sample, batch->T, pad, batch->tokens + row * batch->T,
                                          batch->targets + row * batch->T);
    }
    batch->epoch = loader->epoch;
    loader->step_in_epoch++;
    return batch;
}

void dataloader_position(const DataLoader *loader, int *epoch, int64_t *step_in_epoch) {
    *epoch = loader->epoch;
    *step_in_epoch = loader->step_in_epoch;
    normalize_epoch_position(loader->steps_per_epoch, epoch, step_in_epoch);
}

void dataloader_seek(DataLoader *loader, int epoch, int64_t step_in_epoch) {
    loader->epoch = epoch < 0 ? 0 : epoch;
    loader->step_in_epoch = step_in_epoch < 0 ? 0 : step_in_epoch;
    normalize_epoch_position(loader->steps_per_epoch, &loader->epoch, &loader->step_in_epoch);
}
