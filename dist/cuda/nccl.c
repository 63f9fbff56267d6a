// NCCL collectives on a communication stream.
//
// Each call first waits for the compute work already issued (the op table's
// synchronize), enqueues on its own stream, records an event and polls it
// with ncclCommGetAsyncError until done or until timeout_s, when the
// communicator is aborted so a dead or hung peer ends the job instead of
// blocking forever. Rank 0 creates the unique id and shares it through the
// store. The communicator lives on the device ops_cuda selected for this
// local rank (the calling thread's current device). Compiled when CUDA is
// found; not yet run on a GPU.
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
    double timeout_s;
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

// Uneven shards (the padding is virtual): one grouped reduce per shard owner.
static bool nccl_reduce_scatter(Collectives *c, float *x, size_t n, Error *err) {
    if (!wait_compute(err)) return false;
    NCCL_TRY(ncclGroupStart(), "group start");
    for (int r = 0; r < c->world_size; r++) {
        size_t begin, end;
        dist_shard_range(n, c->world_size, r, &begin, &end);
        NCCL_TRY(ncclReduce(x + begin, x + begin, end - begin, ncclFloat32, ncclSum, r, state_of(c)->comm,
                            state_of(c)->stream), "reduce_scatter");
    }
    NCCL_TRY(ncclGroupEnd(), "group end");
    return finish(c, "reduce_scatter", err);
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
    if (!ops_cuda(err)) return fail_context(err, "NCCL needs the CUDA backend: ");
    CUDA_TRY(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "creating the communication stream");
    CUDA_TRY(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming), "creating the communication event");
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
                       .all_gather = nccl_all_gather, .broadcast = nccl_broadcast, .barrier = nccl_barrier,
                       .destroy = nccl_destroy};
    if (!nccl_init(c, store, info, err)) {
        nccl_destroy(c);
        return NULL;
    }
    return c;
}
