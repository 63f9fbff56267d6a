// NCCL collectives on a communication stream.
//
// Each call first waits for the compute work already issued (the op table's
// synchronize), enqueues on its own stream, records an event and polls it
// with ncclCommGetAsyncError until done or until timeout_s, when the
// communicator is aborted so a dead or hung peer ends the job instead of
// blocking forever. A background reduction (reduce_scatter_range_start)
// does not wait on the host: the communication stream waits for an event
// recorded on the compute stream, and `wait` polls as above; every later
// call is queued behind it on the same stream; reductions_event lets the
// backend's copy stream wait for the reductions started so far. Rank 0
// creates the unique id and shares it through the store. The communicator
// lives on the device ops_cuda selected for this local rank (the calling
// thread's current device). Compiled when CUDA is found; not yet run on a GPU.
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist/dist.h"

typedef struct NcclState {
    ncclComm_t comm;
    cudaStream_t stream;
    cudaEvent_t done;
    cudaEvent_t compute_ready; // recorded on the compute stream before a background reduction
    cudaEvent_t reduced;       // recorded after the background reductions, for the backend's copy stream
    const Ops *ops;            // the CUDA backend: its compute stream
    double timeout_s;
    size_t started, finished;  // background reductions
} NcclState;

static NcclState *state_of(Collectives *c) { return c->state; }

#define NCCL_TRY(call, what)                                                                     \
    do {                                                                                         \
        ncclResult_t nccl_rc_ = (call);                                                          \
        if (nccl_rc_ != ncclSuccess) return fail(err, "NCCL %s: %s", what, ncclGetErrorString(nccl_rc_)); \
    } while (0)
#define CUDA_TRY(call, what)                                                                     \
    do {                                                                                         \
        cudaError_t cuda_rc_ = (call);                                                           \
        if (cuda_rc_ != cudaSuccess) return fail(err, "CUDA %s: %s", what, cudaGetErrorString(cuda_rc_)); \
    } while (0)

static bool wait_compute(Error *err) {
    CUDA_TRY(cudaDeviceSynchronize(), "waiting for the compute stream");
    return true;
}

// Polls the call's event until done, a communicator error, or the timeout.
static bool finish(Collectives *c, const char *what, Error *err) {
    NcclState *s = state_of(c);
    CUDA_TRY(cudaEventRecord(s->done, s->stream), "recording the collective's event");
    double deadline = time_seconds() + s->timeout_s;
    for (;;) {
        cudaError_t rc = cudaEventQuery(s->done);
        if (rc == cudaSuccess) return true;
        if (rc != cudaErrorNotReady) return fail(err, "CUDA during NCCL %s: %s", what, cudaGetErrorString(rc));
        ncclResult_t async_rc;
        NCCL_TRY(ncclCommGetAsyncError(s->comm, &async_rc), "querying the communicator");
        if (async_rc != ncclSuccess && async_rc != ncclInProgress)
            return fail(err, "NCCL %s on rank %d: %s (a peer failed)", what, c->rank, ncclGetErrorString(async_rc));
        if (time_seconds() > deadline) {
            ncclCommAbort(s->comm);
            s->comm = NULL;
            return fail(err, "NCCL %s on rank %d did not finish within %.0f s (a rank died or hung; see the other ranks)",
                        what, c->rank, s->timeout_s);
        }
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000}, NULL);
    }
}

static bool nccl_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) {
    if (dtype != DTYPE_F32 && dtype != DTYPE_F64) return fail(err, "all_reduce_sum: dtype %s is not F32 or F64", dtype_name(dtype));
    if (!wait_compute(err)) return false;
    NCCL_TRY(ncclAllReduce(x, x, n, dtype == DTYPE_F32 ? ncclFloat32 : ncclFloat64, ncclSum, state_of(c)->comm,
                           state_of(c)->stream), "all_reduce");
    return finish(c, "all_reduce", err);
}

// Uneven shards (the padding is virtual): one grouped reduce per owner of a
// piece of x[begin, end), enqueued on the communication stream.
static bool enqueue_reduce_scatter_range(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    if (begin > end || end > n)
        return fail(err, "reduce_scatter_range_sum: [%zu, %zu) is not inside a buffer of %zu", begin, end, n);
    NCCL_TRY(ncclGroupStart(), "group start");
    for (int r = 0; r < c->world_size; r++) {
        size_t owned_begin, owned_end;
        dist_owned_range(n, c->world_size, r, begin, end, &owned_begin, &owned_end);
        if (owned_end == owned_begin) continue;
        NCCL_TRY(ncclReduce(x + owned_begin, x + owned_begin, owned_end - owned_begin, ncclFloat32, ncclSum, r,
                            state_of(c)->comm, state_of(c)->stream), "reduce_scatter");
    }
    NCCL_TRY(ncclGroupEnd(), "group end");
    return true;
}

static bool nccl_reduce_scatter_range(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    if (!wait_compute(err) || !enqueue_reduce_scatter_range(c, x, n, begin, end, err)) return false;
    return finish(c, "reduce_scatter", err);
}

static bool nccl_reduce_scatter(Collectives *c, float *x, size_t n, Error *err) {
    return nccl_reduce_scatter_range(c, x, n, 0, n, err);
}

// The communication stream waits for the compute issued so far, then reduces.
static bool nccl_reduce_scatter_range_start(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    NcclState *s = state_of(c);
    cudaStream_t compute = (cudaStream_t)s->ops->stream();
    CUDA_TRY(cudaEventRecord(s->compute_ready, compute), "recording the gradients' event");
    CUDA_TRY(cudaStreamWaitEvent(s->stream, s->compute_ready, 0), "ordering the reduction after the backward");
    if (!enqueue_reduce_scatter_range(c, x, n, begin, end, err)) return false;
    s->started++;
    return true;
}

static bool nccl_wait(Collectives *c, Error *err) {
    NcclState *s = state_of(c);
    if (!finish(c, "background reduce_scatter", err)) return false;
    s->finished = s->started;
    return true;
}

static size_t nccl_reductions_finished(Collectives *c) { return state_of(c)->finished; }

static bool nccl_reductions_event(Collectives *c, void **event, Error *err) {
    NcclState *s = state_of(c);
    CUDA_TRY(cudaEventRecord(s->reduced, s->stream), "recording the reductions' event");
    *event = s->reduced;
    return true;
}

static bool nccl_all_gather(Collectives *c, float *x, size_t n, Error *err) {
    if (!wait_compute(err)) return false;
    NCCL_TRY(ncclGroupStart(), "group start");
    for (int r = 0; r < c->world_size; r++) {
        size_t begin, end;
        dist_shard_range(n, c->world_size, r, &begin, &end);
        NCCL_TRY(ncclBroadcast(x + begin, x + begin, end - begin, ncclFloat32, r, state_of(c)->comm,
                               state_of(c)->stream), "all_gather");
    }
    NCCL_TRY(ncclGroupEnd(), "group end");
    return finish(c, "all_gather", err);
}

static bool nccl_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    if (!wait_compute(err)) return false;
    NCCL_TRY(ncclBroadcast(x, x, bytes, ncclUint8, root, state_of(c)->comm, state_of(c)->stream), "broadcast");
    return finish(c, "broadcast", err);
}

static bool nccl_barrier(Collectives *c, Error *err) {
    float *one;
    CUDA_TRY(cudaMallocAsync((void **)&one, sizeof *one, state_of(c)->stream), "allocating the barrier's scalar");
    bool ok = nccl_all_reduce(c, one, 1, DTYPE_F32, err);
    cudaError_t rc = cudaFreeAsync(one, state_of(c)->stream);
    return ok && (rc == cudaSuccess || fail(err, "CUDA freeing the barrier's scalar: %s", cudaGetErrorString(rc)));
}

static void nccl_destroy(Collectives *c) {
    NcclState *s = state_of(c);
    if (s->comm) ncclCommDestroy(s->comm);
    if (s->done) cudaEventDestroy(s->done);
    if (s->compute_ready) cudaEventDestroy(s->compute_ready);
    if (s->reduced) cudaEventDestroy(s->reduced);
    if (s->stream) cudaStreamDestroy(s->stream);
    free(s);
    free(c);
}

static bool share_unique_id(Store *store, const RankInfo *info, ncclUniqueId *id, Error *err) {
    if (info->rank == 0) {
        NCCL_TRY(ncclGetUniqueId(id), "creating the unique id");
        return store_set(store, "nccl/unique_id", id, sizeof *id, err);
    }
    void *value;
    size_t size;
    if (!store_get(store, "nccl/unique_id", &value, &size, err)) return false;
    bool ok = size == sizeof *id || fail(err, "the store's NCCL unique id has %zu bytes, not %zu", size, sizeof *id);
    if (ok) memcpy(id, value, sizeof *id);
    free(value);
    return ok;
}

static bool nccl_init(Collectives *c, Store *store, const RankInfo *info, Error *err) {
    NcclState *s = state_of(c);
    if (!(s->ops = ops_cuda(err))) return fail_context(err, "NCCL needs the CUDA backend: ");
    CUDA_TRY(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "creating the communication stream");
    CUDA_TRY(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming), "creating the communication event");
    CUDA_TRY(cudaEventCreateWithFlags(&s->compute_ready, cudaEventDisableTiming), "creating the compute event");
    CUDA_TRY(cudaEventCreateWithFlags(&s->reduced, cudaEventDisableTiming), "creating the reductions' event");
    ncclUniqueId id;
    if (!share_unique_id(store, info, &id, err)) return false;
    NCCL_TRY(ncclCommInitRank(&s->comm, info->world_size, id, info->rank), "joining the communicator");
    return true;
}

Collectives *collectives_nccl(Store *store, const RankInfo *info, double timeout_s, Error *err) {
    Collectives *c = checked_calloc(1, sizeof *c, "collectives", err);
    NcclState *s = c ? checked_calloc(1, sizeof *s, "NCCL state", err) : NULL;
    if (!s) return free(c), NULL;
    s->timeout_s = timeout_s;
    *c = (Collectives){.name = "nccl", .rank = info->rank, .world_size = info->world_size, .state = s,
                       .all_reduce_sum = nccl_all_reduce, .reduce_scatter_sum = nccl_reduce_scatter,
                       .reduce_scatter_range_sum = nccl_reduce_scatter_range,
                       .reduce_scatter_range_start = nccl_reduce_scatter_range_start, .wait = nccl_wait,
                       .reductions_finished = nccl_reductions_finished, .reductions_event = nccl_reductions_event,
                       .all_gather = nccl_all_gather, .broadcast = nccl_broadcast, .barrier = nccl_barrier,
                       .destroy = nccl_destroy};
    if (!nccl_init(c, store, info, err)) {
        nccl_destroy(c);
        return NULL;
    }
    return c;
}
