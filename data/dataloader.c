// Deterministic batching: a permutation of the dataset per epoch from
// (seed, epoch); global step g of an epoch takes the S = B * grad_accum *
// world_size samples order[g*S .. (g+1)*S), of which this rank takes
// rank, rank + world_size, ...; the remainder of an epoch is dropped.
// Packing: the epoch's order is cut into rows (consecutive samples that fit in
// T tokens together), and those rows are dealt as samples are above.
#include "data.h"
#include "data_private.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Seeds the held-out split apart from the epochs' shuffles.
#define HELD_OUT_STREAM 0x4e1d0017ULL

struct DataLoader {
    const Dataset *dataset;
    DataLoaderOptions options;
    int64_t n_samples;        // served: the subset's or the dataset's
    int64_t samples_per_step; // S, over all ranks: samples, or with packing rows
    int64_t steps_per_epoch;  // with packing: of epoch 0
    int64_t *order;           // (n_samples,) the permutation of order_epoch
    int order_epoch;          // -1 before the first permutation
    int64_t *row_first;       // (n_samples + 1) with packing: row r holds order[row_first[r] .. row_first[r + 1])
    int64_t n_rows;           // rows of order_epoch
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

static int sample_tokens(const Dataset *dataset, int64_t index, int T) {
    int length = dataset_sample(dataset, index)->length;
    return length < T ? length : T;
}

static int64_t served_count(const Dataset *dataset, const DataLoaderOptions *o) {
    return o->subset ? o->n_subset : dataset_size(dataset);
}

// The dataset index of the loader's i-th sample.
static int64_t served_index(const DataLoaderOptions *o, int64_t i) { return o->subset ? o->subset[i] : i; }

// Fewest rows of T tokens any packing of the served samples fills: every epoch has at least these.
static int64_t min_packed_rows(const Dataset *dataset, const DataLoaderOptions *o) {
    int64_t tokens = 0;
    int T = o->max_seq_len;
    for (int64_t i = 0; i < served_count(dataset, o); i++) tokens += sample_tokens(dataset, served_index(o, i), T);
    return (tokens + T - 1) / T;
}

// Packing needs one step's rows in every epoch, whatever its order.
static bool check_packable(const Dataset *dataset, const DataLoaderOptions *o, int64_t rows_per_step, Error *err) {
    int64_t min_rows = min_packed_rows(dataset, o);
    if (min_rows >= rows_per_step) return true;
    return fail(err, "data loader: packed into rows of %d tokens, the dataset's samples may fill as few as %lld rows, "
                     "fewer than one optimizer step's %lld (micro_batch %d x grad_accum %d x world_size %d)",
                o->max_seq_len, (long long)min_rows, (long long)rows_per_step, o->micro_batch, o->grad_accum,
                o->world_size);
}

static void build_order(DataLoader *loader, int epoch);

DataLoader *dataloader_create(const Dataset *dataset, const DataLoaderOptions *options, Error *err) {
    if (!check_options(options, err)) return NULL;
    int64_t n_samples = served_count(dataset, options);
    int64_t samples_per_step = (int64_t)options->micro_batch * options->grad_accum * options->world_size;
    if (options->pack && !check_packable(dataset, options, samples_per_step, err)) return NULL;
    if (!options->pack && n_samples < samples_per_step) {
        fail(err, "data loader: the dataset's %lld samples are fewer than one optimizer step's %lld "
                  "(micro_batch %d x grad_accum %d x world_size %d)",
             (long long)n_samples, (long long)samples_per_step, options->micro_batch, options->grad_accum,
             options->world_size);
        return NULL;
    }
    DataLoader *loader = checked_calloc(1, sizeof *loader, "a data loader", err);
    if (!loader) return NULL;
    *loader = (DataLoader){.dataset = dataset, .options = *options, .n_samples = n_samples, .samples_per_step = samples_per_step,
                           .steps_per_epoch = n_samples / samples_per_step, .order_epoch = -1};
    size_t n_tokens = (size_t)options->grad_accum * options->micro_batch * options->max_seq_len;
    loader->order = checked_malloc((size_t)n_samples * sizeof *loader->order, "the epoch order", err);
    loader->batch.tokens = checked_malloc(n_tokens * sizeof(int32_t), "batch tokens", err);
    loader->batch.targets = checked_malloc(n_tokens * sizeof(int32_t), "batch targets", err);
    if (options->pack) {
        loader->row_first = checked_malloc((size_t)(n_samples + 1) * sizeof(int64_t), "the epoch's rows", err);
        loader->batch.seq_start = checked_malloc(n_tokens * sizeof(int32_t), "batch seq_start", err);
    }
    if (!loader->order || !loader->batch.tokens || !loader->batch.targets ||
        (options->pack && (!loader->row_first || !loader->batch.seq_start))) {
        dataloader_destroy(loader);
        return NULL;
    }
    loader->batch.n_micro = options->grad_accum;
    loader->batch.B = options->micro_batch;
    loader->batch.T = options->max_seq_len;
    if (options->pack) {
        build_order(loader, 0);
        loader->steps_per_epoch = loader->n_rows / samples_per_step;
    }
    return loader;
}

void dataloader_destroy(DataLoader *loader) {
    if (!loader) return;
    free(loader->order);
    free(loader->batch.tokens);
    free(loader->batch.targets);
    free(loader->batch.seq_start);
    free(loader->row_first);
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

bool data_split_held_out(int64_t n_samples, double fraction, uint64_t seed, int64_t **train, int64_t *n_train,
                         int64_t **held_out, int64_t *n_held_out, Error *err) {
    if (n_samples < 2) return fail(err, "a held-out split needs at least 2 samples, the dataset has %lld", (long long)n_samples);
    int64_t n_out = (int64_t)llround(fraction * (double)n_samples);
    n_out = n_out < 1 ? 1 : n_out > n_samples - 1 ? n_samples - 1 : n_out;
    uint8_t *is_held_out = checked_calloc((size_t)n_samples, 1, "the held-out split", err);
    int64_t *order = is_held_out ? checked_malloc((size_t)n_samples * sizeof *order, "the held-out split", err) : NULL;
    *train = order ? checked_malloc((size_t)(n_samples - n_out) * sizeof **train, "the training split", err) : NULL;
    *held_out = *train ? checked_malloc((size_t)n_out * sizeof **held_out, "the held-out split", err) : NULL;
    bool ok = *held_out != NULL;
    if (ok) {
        epoch_order(order, n_samples, rng_hash(seed, HELD_OUT_STREAM), 0, true);
        for (int64_t i = 0; i < n_out; i++) is_held_out[order[i]] = 1;
        *n_train = *n_held_out = 0;
        for (int64_t i = 0; i < n_samples; i++) {
            if (is_held_out[i]) (*held_out)[(*n_held_out)++] = i;
            else (*train)[(*n_train)++] = i;
        }
    } else {
        free(*train);
        *train = NULL;
    }
    free(order);
    free(is_held_out);
    return ok;
}

// Greedy packing of order (n) into rows of T tokens: row r holds
// order[row_first[r] .. row_first[r + 1]). Returns the number of rows.
static int64_t pack_rows(const Dataset *dataset, const int64_t *order, int64_t n, int T, int64_t *row_first) {
    int64_t n_rows = 0;
    int used = 0; // tokens in the current row
    for (int64_t i = 0; i < n; i++) {
        int length = sample_tokens(dataset, order[i], T);
        if (n_rows == 0 || used + length > T) {
            row_first[n_rows++] = i;
            used = 0;
        }
        used += length;
    }
    row_first[n_rows] = n;
    return n_rows;
}

static void build_order(DataLoader *loader, int epoch) {
    int64_t n_samples = loader->n_samples;
    epoch_order(loader->order, n_samples, loader->options.seed, epoch, loader->options.shuffle);
    for (int64_t i = 0; i < n_samples; i++) loader->order[i] = served_index(&loader->options, loader->order[i]);
    loader->order_epoch = epoch;
    if (loader->options.pack)
        loader->n_rows = pack_rows(loader->dataset, loader->order, n_samples, loader->options.max_seq_len,
                                   loader->row_first);
}

// Steps of an epoch: constant, or with packing those its rows fill.
static int64_t epoch_steps(DataLoader *loader, int epoch) {
    if (!loader->options.pack) return loader->steps_per_epoch;
    if (loader->order_epoch != epoch) build_order(loader, epoch);
    return loader->n_rows / loader->samples_per_step;
}

int64_t dataloader_steps_for_epochs(DataLoader *loader, int n_epochs) {
    int64_t steps = 0;
    for (int epoch = 0; epoch < n_epochs; epoch++) steps += epoch_steps(loader, epoch);
    return steps;
}

// Moves a step past the end of its epoch into the following epochs.
static void normalize_position(DataLoader *loader) {
    if (!loader->options.pack) {
        normalize_epoch_position(loader->steps_per_epoch, &loader->epoch, &loader->step_in_epoch);
        return;
    }
    for (int64_t steps; loader->step_in_epoch >= (steps = epoch_steps(loader, loader->epoch)); loader->epoch++)
        loader->step_in_epoch -= steps;
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

// Packed row `row` of the epoch: its samples end to end, each filled as
// step_fill_row fills a row of the sample's own length (so its last token
// predicts nothing), then padding as one more segment with no labels.
static int64_t fill_packed_row(const DataLoader *loader, int64_t row, int32_t *tokens, int32_t *targets,
                               int32_t *seq_start) {
    int T = loader->options.max_seq_len, used = 0;
    int32_t pad = dataset_pad_id(loader->dataset);
    int64_t n_labels = 0;
    for (int64_t i = loader->row_first[row]; i < loader->row_first[row + 1]; i++) {
        const Sample *sample = dataset_sample(loader->dataset, loader->order[i]);
        int length = sample_tokens(loader->dataset, loader->order[i], T);
        n_labels += step_fill_row(sample, length, pad, tokens + used, targets + used);
        for (int t = used; t < used + length; t++) seq_start[t] = used;
        used += length;
    }
    for (int t = used; t < T; t++) {
        tokens[t] = pad;
        targets[t] = IGNORE_INDEX;
        seq_start[t] = used;
    }
    return n_labels;
}

// Row `index` of the epoch (a sample, or with packing a packed row) into row `row` of the batch.
static int64_t fill_batch_row(const DataLoader *loader, int64_t index, int64_t row) {
    const StepBatch *batch = &loader->batch;
    size_t at = (size_t)row * batch->T;
    if (loader->options.pack)
        return fill_packed_row(loader, index, batch->tokens + at, batch->targets + at, batch->seq_start + at);
    const Sample *sample = dataset_sample(loader->dataset, loader->order[index]);
    return step_fill_row(sample, batch->T, dataset_pad_id(loader->dataset), batch->tokens + at, batch->targets + at);
}

const StepBatch *dataloader_next(DataLoader *loader) {
    normalize_position(loader);
    if (loader->order_epoch != loader->epoch) build_order(loader, loader->epoch);
    const DataLoaderOptions *o = &loader->options;
    StepBatch *batch = &loader->batch;
    int64_t step_start = loader->step_in_epoch * loader->samples_per_step;
    int64_t rows = (int64_t)o->grad_accum * o->micro_batch; // this rank's rows, micro-batch major
    batch->n_label_tokens = 0;
    for (int64_t row = 0; row < rows; row++)
        batch->n_label_tokens += fill_batch_row(loader, step_start + row * o->world_size + o->rank, row);
    batch->epoch = loader->epoch;
    loader->step_in_epoch++;
    normalize_position(loader);
    return batch;
}

void dataloader_position(const DataLoader *loader, int *epoch, int64_t *step_in_epoch) {
    *epoch = loader->epoch;
    *step_in_epoch = loader->step_in_epoch;
}

void dataloader_seek(DataLoader *loader, int epoch, int64_t step_in_epoch) {
    loader->epoch = epoch < 0 ? 0 : epoch;
    loader->step_in_epoch = step_in_epoch < 0 ? 0 : step_in_epoch;
    normalize_position(loader);
}

// ----------------------------------------------------------------------------
// as a StepLoader

static const StepBatch *text_next(void *impl, Error *err) {
    (void)err;
    return dataloader_next(impl);
}
static void text_position(const void *impl, int *epoch, int64_t *step) { dataloader_position(impl, epoch, step); }
static void text_seek(void *impl, int epoch, int64_t step) { dataloader_seek(impl, epoch, step); }
static int64_t text_steps_per_epoch(const void *impl) { return dataloader_steps_per_epoch(impl); }
static int64_t text_steps_for_epochs(void *impl, int n_epochs) { return dataloader_steps_for_epochs(impl, n_epochs); }
static int64_t text_samples(const void *impl) { return ((const DataLoader *)impl)->n_samples; }
static int64_t text_truncated(const void *impl) {
    return dataset_truncated_count(((const DataLoader *)impl)->dataset);
}
static void text_destroy(void *impl) { dataloader_destroy(impl); }

static const StepLoaderKind TEXT_LOADER = {text_next, text_position, text_seek, text_steps_per_epoch,
                                           text_steps_for_epochs, text_samples, text_truncated, text_destroy};

StepLoader *step_loader_text(const Dataset *dataset, const DataLoaderOptions *options, Error *err) {
    return step_loader_wrap(&TEXT_LOADER, dataloader_create(dataset, options, err), err);
}
