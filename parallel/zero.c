// ZeRO over the flat trainable buffer.
//
// Stage 0: every rank all-reduces the whole gradient and runs AdamW on the
// whole buffer (replicated state). Stage 2: the buffer is cut in world_size
// contiguous shards; the gradient is reduce-scattered so each rank holds the
// sum of its shard, AdamW (state sized to the shard) updates that shard only
// and the parameters are all-gathered. The global grad norm is the square
// root of the all-reduced shard sums of squares. At stage 2 every
// micro-batch's gradient is reduce-scattered: between micro-batches a rank
// holds only its shard's accumulated gradient, sum over ranks and
// micro-batches so far, and zeros elsewhere, so the next backward adds this
// rank's share on top and the next reduce-scatter adds the other ranks' (the
// shard counted once).
//
// Overlap (overlap_comm): the model reports each layer's range of the flat
// buffer as soon as its gradients are final (zero_grads_ready, from the last
// layer down, then the projector). Adjacent ranges are merged into a bucket;
// a bucket of bucket_elements or more (or one that the next range does not
// touch) is reduce-scattered in the background (the CPU collectives'
// communication thread, NCCL's communication stream) while the backward goes
// on. zero_reduce_micro_batch closes the last bucket, reduces any range no
// bucket covered, orders what follows after all of them (join_reductions)
// and zeroes what this rank does not own. Stage 0 keeps one all-reduce of the
// whole buffer per step.
//
// Host waits: on NCCL every collective is ordered on the device (the compute
// stream waits for the communication stream's events), so a step's
// micro-batches, its grad-norm all-reduce and its parameters' all-gather are
// issued without the host waiting. The host waits (Collectives.wait, which
// fails within the timeout on a dead or hung peer) only where it reads device
// memory anyway: zero_step_norm's download, the loss (zero_wait), the offload
// path's host gradient and norm, zero_flush before a checkpoint.
//
// Offload with overlap: in the step's last micro-batch (zero_begin_micro_batch)
// the owned piece of each bucket is copied into the host gradient buffer as
// soon as its reduction is done, in order: on CUDA by the backend's copy
// stream after the communication stream's event, on the CPU by a plain copy
// once the communication thread has finished the bucket (seen at the next
// zero_grads_ready); zero_reduce_micro_batch waits on the host for the
// reductions (it needs their data) and the last copies. The device
// accumulates the shard over the micro-batches and only the last one is
// copied: the device holds the whole gradient buffer for the backward anyway,
// so accumulating on the host would save no device memory and would move the
// shard over PCIe once per micro-batch instead of once per step.
// zero_step then finds the gradient on the host and downloads nothing (it
// still does at stage 0, without overlap, or without the last micro-batch
// flagged). The norm is taken on the device, the clipping on the host copy.
// Without offload nothing of the step comes to the host until zero_step_norm:
// the clip coefficient and the skip are decided on the device.
// delayed_update (offload only): the CPU AdamW of step k runs on a thread
// during step k + 1's forward and backward, reading one host gradient buffer
// while step k + 1's buckets arrive in the other; zero_step k + 1 collects it.
#include <math.h>
#include <stdlib.h>

#include "parallel.h"

typedef struct Range {
    size_t begin, end;
} Range;

struct Zero {
    const Ops *ops;
    Collectives *coll;
    size_t n;                // parameters in the flat buffer
    float *grads;            // the flat gradient buffer (backend memory, n)
    ZeroOptions options;
    size_t begin, end;       // the shard this rank's optimizer updates
    AdamW adamw;             // on the backend, without offload
    Offload offload;         // in host memory, with offload
    float *sum_squares;      // backend fp32 scalar: the step's global sum of g^2
    float host_sum_squares;  // its value on the host, once read
    bool step_pending;       // zero_step_issue ran; zero_step_norm has not read its norm yet
    bool grads_reduced;      // stage 2: the shard already holds the sum over ranks
    float norm_limit;        // zero_set_norm_limit
    // overlap_comm: this micro-batch's buckets
    Range filling;           // the bucket being filled (empty: begin == end)
    Range *started;          // buckets in flight
    size_t n_started, started_capacity;
    bool bucket_failed;      // starting or copying a bucket failed: bucket_error says why
    Error bucket_error;
    // offload with overlap_comm: the last micro-batch's buckets copied to the host
    bool copy_to_host;       // this micro-batch copies (zero_begin_micro_batch)
    bool host_grads_ready;   // offload_grads holds the step's reduced shard
    Range *copies;           // the owned piece of each bucket started, in start order
    size_t n_copies, n_copied, copies_capacity;
    size_t finished_before;  // the collectives' reductions finished before this micro-batch's first bucket
};

size_t zero_shard_size(const Zero *zero) { return zero->end - zero->begin; }

static bool init_optimizer(Zero *zero, const float *params, Error *err) {
    const ZeroOptions *o = &zero->options;
    size_t shard = zero_shard_size(zero);
    if (o->offload_cpu) { // its masters are downloaded from params: after the collectives that wrote them
        if (!zero->coll->wait(zero->coll, err)) return false;
        AdamWHyper hyper = {.beta1 = o->beta1, .beta2 = o->beta2, .eps = o->eps, .weight_decay = o->weight_decay};
        return offload_init(&zero->offload, zero->ops, params + zero->begin, shard, &hyper, o->delayed_update, err);
    }
    return adamw_init(&zero->adamw, zero->ops, shard, o->beta1, o->beta2, o->eps, o->weight_decay, err);
}

Zero *zero_create(const Ops *ops, Collectives *coll, const float *params, float *grads, size_t n_params,
                  const ZeroOptions *options, Error *err) {
    if (options->stage != 0 && options->stage != 2) return fail(err, "zero.stage %d is not 0 or 2", options->stage), NULL;
    if (options->delayed_update && !options->offload_cpu)
        return fail(err, "zero.delayed_update needs the CPU offload (zero.offload: cpu)"), NULL;
    if (n_params < (size_t)coll->world_size)
        return fail(err, "%zu trainable parameters cannot be sharded over %d ranks", n_params, coll->world_size), NULL;
    Zero *zero = checked_calloc(1, sizeof *zero, "the ZeRO optimizer", err);
    if (!zero) return NULL;
    *zero = (Zero){.ops = ops, .coll = coll, .n = n_params, .grads = grads, .options = *options, .begin = 0,
                   .end = n_params, .norm_limit = INFINITY};
    if (options->stage == 2) dist_shard_range(n_params, coll->world_size, coll->rank, &zero->begin, &zero->end);
    zero->sum_squares = ops->alloc(ops, sizeof(float), err);
    if (!zero->sum_squares || !init_optimizer(zero, params, err)) {
        zero_destroy(zero);
        return NULL;
    }
    return zero;
}

void zero_destroy(Zero *zero) {
    if (!zero) return;
    Error ignored; // a failed step: no collective may still be reading or writing the buffers
    zero->coll->wait(zero->coll, &ignored);
    zero->ops->synchronize_copies(zero->ops);
    free(zero->started), free(zero->copies);
    if (zero->adamw.m) adamw_destroy(&zero->adamw);
    offload_destroy(&zero->offload);
    if (zero->sum_squares) zero->ops->free(zero->ops, zero->sum_squares);
    free(zero);
}

// ----------------------------------------------------------------------------
// buckets

static bool overlapping(const Zero *zero) { return zero->options.stage == 2 && zero->options.overlap_comm; }
static bool bucket_filling(const Zero *zero) { return zero->filling.end > zero->filling.begin; }

static bool push_range(Range **ranges, size_t *count, size_t *capacity, Range range, Error *err) {
    if (*count == *capacity) {
        size_t grown_capacity = *capacity ? 2 * *capacity : 64;
        Range *grown = realloc(*ranges, grown_capacity * sizeof *grown);
        if (!grown) return fail(err, "ZeRO: out of memory for %zu gradient buckets", grown_capacity);
        *ranges = grown;
        *capacity = grown_capacity;
    }
    (*ranges)[(*count)++] = range;
    return true;
}

static bool start_bucket(Zero *zero, Range bucket, Error *err) {
    if (zero->n_started == 0) zero->finished_before = zero->coll->reductions_finished(zero->coll);
    Range owned;
    dist_owned_range(zero->n, zero->coll->world_size, zero->coll->rank, bucket.begin, bucket.end, &owned.begin,
                     &owned.end);
    return push_range(&zero->started, &zero->n_started, &zero->started_capacity, bucket, err) &&
           (!zero->copy_to_host || push_range(&zero->copies, &zero->n_copies, &zero->copies_capacity, owned, err)) &&
           zero->coll->reduce_scatter_range_start(zero->coll, zero->grads, zero->n, bucket.begin, bucket.end, err);
}

// Copies the owned piece of each bucket whose reduction a copy may follow, in
// start order, into the host gradient buffer: every started one after the
// collectives' event (NCCL), else those the collectives count as finished.
static bool copy_reduced_buckets(Zero *zero, Error *err) {
    if (zero->n_copied == zero->n_copies) return true;
    void *event;
    if (!zero->coll->reductions_event(zero->coll, &event, err)) return false;
    size_t ready = event ? zero->n_copies : zero->coll->reductions_finished(zero->coll) - zero->finished_before;
    float *host = offload_grads(&zero->offload); // (shard): host[i - zero->begin] is element i
    for (; zero->n_copied < ready && zero->n_copied < zero->n_copies; zero->n_copied++) {
        Range owned = zero->copies[zero->n_copied];
        zero->ops->download_async(zero->ops, host + (owned.begin - zero->begin), zero->grads + owned.begin,
                                  (owned.end - owned.begin) * sizeof(float), event);
    }
    return true;
}

// Starts the bucket being filled; a failure is kept for zero_reduce_micro_batch.
static void close_bucket(Zero *zero) {
    Range bucket = zero->filling;
    zero->filling = (Range){0, 0};
    if (bucket.end == bucket.begin || zero->bucket_failed) return;
    if (!start_bucket(zero, bucket, &zero->bucket_error)) zero->bucket_failed = true;
}

void zero_grads_ready(void *context, size_t begin, size_t end) {
    Zero *zero = context;
    if (!overlapping(zero) || end <= begin) return;
    Range *f = &zero->filling;
    if (bucket_filling(zero) && end != f->begin && begin != f->end) close_bucket(zero);
    if (!bucket_filling(zero)) {
        *f = (Range){begin, end};
    } else {
        f->begin = begin < f->begin ? begin : f->begin;
        f->end = end > f->end ? end : f->end;
    }
    if (f->end - f->begin >= zero->options.bucket_elements) close_bucket(zero);
    if (!zero->bucket_failed && !copy_reduced_buckets(zero, &zero->bucket_error)) zero->bucket_failed = true;
}

void zero_begin_micro_batch(Zero *zero, bool last) {
    zero->copy_to_host = last && overlapping(zero) && zero->options.offload_cpu;
}

static int by_begin(const void *a, const void *b) {
    size_t x = ((const Range *)a)->begin, y = ((const Range *)b)->begin;
    return (x > y) - (x < y);
}

// Reduce-scatters the parts of the buffer no bucket covered this micro-batch.
static bool start_uncovered(Zero *zero, Error *err) {
    size_t n_buckets = zero->n_started, next = 0;
    qsort(zero->started, n_buckets, sizeof(Range), by_begin);
    for (size_t i = 0; i < n_buckets; i++) {
        Range bucket = zero->started[i];
        if (bucket.begin < next)
            return fail(err, "ZeRO: gradients [%zu, %zu) were reported ready twice in one micro-batch", bucket.begin, next);
        if (bucket.begin > next && !start_bucket(zero, (Range){next, bucket.begin}, err)) return false;
        next = bucket.end;
    }
    return next == zero->n || start_bucket(zero, (Range){next, zero->n}, err);
}

// Every element of the buffer reduced: the last bucket, the uncovered rest,
// then the join (always, so that later work follows every reduction). A
// copying micro-batch waits on the host instead (its copies read the
// reductions' results, and a copy behind a hung one would never finish), then
// copies the buckets left and waits for the copies, so none outlives the call.
static bool finish_buckets(Zero *zero, Error *err) {
    close_bucket(zero);
    bool started = !zero->bucket_failed || (*err = zero->bucket_error, false);
    started = started && start_uncovered(zero, err);
    Error wait_error;
    bool copying = zero->copy_to_host;
    Collectives *coll = zero->coll;
    bool waited = copying ? coll->wait(coll, &wait_error) : coll->join_reductions(coll, &wait_error);
    if (started && !waited) *err = wait_error;
    bool copied = started && waited && copy_reduced_buckets(zero, err);
    if (copying) zero->ops->synchronize_copies(zero->ops);
    zero->host_grads_ready = copied && copying;
    zero->copy_to_host = false;
    zero->n_started = zero->n_copies = zero->n_copied = 0;
    zero->bucket_failed = false;
    return copied;
}

bool zero_reduce_micro_batch(Zero *zero, float *grads, Error *err) {
    if (zero->options.stage != 2) return true;
    bool reduced = overlapping(zero) ? finish_buckets(zero, err)
                                     : zero->coll->reduce_scatter_sum(zero->coll, grads, zero->n, err);
    if (!reduced) return false;
    zero->ops->zero(zero->ops, grads, zero->begin * sizeof(float));
    zero->ops->zero(zero->ops, grads + zero->end, (zero->n - zero->end) * sizeof(float));
    zero->grads_reduced = true;
    return true;
}

// ----------------------------------------------------------------------------
// the step

// Sums the gradient over ranks: whole buffer (stage 0) or this rank's shard
// (stage 2, unless zero_reduce_micro_batch did).
static bool reduce_grads(Zero *zero, float *grads, Error *err) {
    if (zero->options.stage == 2 && zero->grads_reduced) {
        zero->grads_reduced = false;
        return true;
    }
    if (zero->options.stage == 2) return zero->coll->reduce_scatter_sum(zero->coll, grads, zero->n, err);
    return zero->coll->all_reduce_sum(zero->coll, grads, zero->n, DTYPE_F32, err);
}

// sum(g^2) over the whole buffer into zero->sum_squares (backend scalar): the
// shard's sum, all-reduced at stage 2; nothing comes to the host.
static bool issue_sum_squares(Zero *zero, const float *grads, Error *err) {
    const Ops *ops = zero->ops;
    ops->zero(ops, zero->sum_squares, sizeof(float));
    ops->sum_squares(ops, zero->sum_squares, grads + zero->begin, zero_shard_size(zero));
    return zero->options.stage != 2 || zero->coll->all_reduce_sum(zero->coll, zero->sum_squares, 1, DTYPE_F32, err);
}

// The shard's gradient on the host (copied per bucket during the backward,
// else downloaded now), clipped there by the CPU backend's scale (host
// memory, the same arithmetic), then the CPU AdamW, now or on the worker.
// The host needs the norm first: the step's one download, mid-step, after the
// host's wait for the all-reduce.
static bool offloaded_update(Zero *zero, float *params, const float *grads, bool on_host, float lr, Error *err) {
    if (!zero_wait(zero, err)) return false;
    zero->ops->download(zero->ops, &zero->host_sum_squares, zero->sum_squares, sizeof(float));
    if (ops_step_skipped(zero->host_sum_squares, zero->norm_limit)) return true;
    Offload *offload = &zero->offload;
    float *host_grads = offload_grads(offload), *shard_params = params + zero->begin;
    if (!on_host) zero->ops->download(zero->ops, host_grads, grads + zero->begin, offload->n * sizeof(float));
    float max_norm = zero->options.max_grad_norm;
    if (max_norm > 0) clip_grads(ops_cpu(), host_grads, offload->n, sqrtf(zero->host_sum_squares), max_norm);
    if (zero->options.delayed_update) {
        if (!offload_step_delayed(offload, shard_params, lr, err)) return false;
    } else {
        offload_step(offload, shard_params, lr);
    }
    return zero->options.stage != 2 || zero->coll->all_gather(zero->coll, params, zero->n, err);
}

// On the backend: clip by the device's norm, AdamW unless the device finds the
// step skipped (then params, m and v keep their bits; the all-gather at stage 2
// gathers unchanged shards), the step counted by zero_step_norm.
static bool device_update(Zero *zero, float *params, float *grads, float lr, Error *err) {
    float *shard_grads = grads + zero->begin;
    if (zero->options.max_grad_norm > 0)
        zero->ops->clip_by_norm(zero->ops, shard_grads, zero_shard_size(zero), zero->sum_squares,
                                zero->options.max_grad_norm);
    adamw_step_unless_skipped(&zero->adamw, params + zero->begin, shard_grads, lr, zero->sum_squares,
                              zero->norm_limit);
    return zero->options.stage != 2 || zero->coll->all_gather(zero->coll, params, zero->n, err);
}

bool zero_step_issue(Zero *zero, float *params, float *grads, float lr, Error *err) {
    if (zero->step_pending) return fail(err, "ZeRO: a step was issued before the last one's norm was read");
    bool on_host = zero->host_grads_ready;
    zero->host_grads_ready = false;
    if (!reduce_grads(zero, grads, err) || !issue_sum_squares(zero, grads, err)) return false;
    zero->step_pending = true;
    if (zero->options.offload_cpu) return offloaded_update(zero, params, grads, on_host, lr, err);
    return device_update(zero, params, grads, lr, err);
}

bool zero_wait(Zero *zero, Error *err) { return zero->coll->wait(zero->coll, err); }

// The wait first: the download is queued behind the step's collectives.
bool zero_step_norm(Zero *zero, float *norm, Error *err) {
    if (zero->step_pending && !zero->options.offload_cpu) {
        if (!zero_wait(zero, err)) return false;
        zero->ops->download(zero->ops, &zero->host_sum_squares, zero->sum_squares, sizeof(float));
        if (!ops_step_skipped(zero->host_sum_squares, zero->norm_limit)) zero->adamw.step++;
    }
    zero->step_pending = false;
    *norm = sqrtf(zero->host_sum_squares);
    return true;
}

bool zero_step(Zero *zero, float *params, float *grads, float lr, float *norm_out, Error *err) {
    return zero_step_issue(zero, params, grads, lr, err) && zero_step_norm(zero, norm_out, err);
}

void zero_set_norm_limit(Zero *zero, float limit) { zero->norm_limit = limit; }

bool zero_flush(Zero *zero, float *params, Error *err) {
    if (!zero->options.delayed_update) return true;
    if (!offload_flush(&zero->offload, params + zero->begin, err)) return false;
    return (zero->options.stage != 2 || zero->coll->all_gather(zero->coll, params, zero->n, err)) &&
           zero_wait(zero, err);
}

const float *zero_offloaded_grads(const Zero *zero) {
    return zero->options.offload_cpu ? offload_grads(&zero->offload) : NULL;
}

ZeroState zero_state(const Zero *zero) {
    bool on_host = zero->options.offload_cpu;
    return (ZeroState){.begin = zero->begin, .count = zero_shard_size(zero),
                       .m = on_host ? zero->offload.m : zero->adamw.m, .v = on_host ? zero->offload.v : zero->adamw.v,
                       .on_host = on_host, .step = on_host ? zero->offload.step : zero->adamw.step};
}

void zero_restore(Zero *zero, const float *params, int step) {
    if (!zero->options.offload_cpu) {
        zero->adamw.step = step;
        return;
    }
    zero->offload.step = step;
    zero->ops->download(zero->ops, zero->offload.master, params + zero->begin, zero_shard_size(zero) * sizeof(float));
    zero->ops->synchronize(zero->ops);
}
