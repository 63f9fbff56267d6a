// NCCL collectives on a communication stream.
//
// The communicator is nonblocking (ncclConfig_t.blocking = 0), so no NCCL
// call waits on a peer: joining it, enqueueing a collective and finalizing it
// return at once (ncclInProgress) and `wait_comm` polls
// ncclCommGetAsyncError until the communicator is ready, failed, or
// timeout_s has passed. On a failure or a timeout the communicator is
// aborted, so a dead or hung peer ends the job with a message instead of
// blocking forever (ncclCommInitRank would wait forever for a rank that never
// joins). Stream invariants: each collective is enqueued on the communication
// stream behind an event recorded on the compute stream (the work that
// produced its data), and the compute stream waits for an event recorded
// after it (cudaStreamWaitEvent), so later kernels read its results without
// the host waiting for the device. A background reduction
// (reduce_scatter_range_start) is ordered after the compute the same way,
// but the compute stream does not wait for it until join_reductions; every
// later collective is queued behind it on the same stream; reductions_event
// lets the backend's copy stream wait for the reductions started so far.
// The host waits only in `wait` (and barrier, destroy): it polls an event
// recorded after everything issued, together with the communicator's error,
// against the deadline, aborting on a failure. Its callers wait there before
// any blocking read of device memory, which behind a collective hung on a
// dead peer would never return. The CUDA backend's own wait inside a step
// (the upload staging's) polls nccl_wait_check (kernels/cuda/wait_check.h),
// which aborts the communicator the same way and keeps the reason for the
// next call. Rank 0 creates the unique id and shares it through the store.
// The communicator lives on the device ops_cuda selected for this local rank
// (the calling thread's current device). Run on the emulated CUDA backend
// (tools/cuda_emu) in CI; not yet on a GPU.
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/wait_check.h"
#include "parallel/parallel.h"

typedef struct NcclState {
    ncclComm_t comm;     // NULL once aborted
    cudaStream_t stream;
    cudaEvent_t done;           // recorded after collectives, for the compute stream and `wait`
    cudaEvent_t compute_ready;  // recorded on the compute stream before each collective
    cudaEvent_t reduced;        // recorded after the background reductions, for the backend's copy stream
    const Ops *ops;             // the CUDA backend: its compute stream
    float *barrier_scalar;      // device, all-reduced by barrier
    double timeout_s;
    size_t started, finished;   // background reductions
    bool unwaited;              // collectives issued since the last `wait`
    bool failed;                // the backend's wait check aborted the communicator: failure says why
    Error failure;
} NcclState;

static NcclState *state_of(Collectives *c) { return c->state; }

// ncclInProgress is not a failure: the nonblocking communicator finishes the call in the background.
#define NCCL_TRY(call, what)                                                                     \
    do {                                                                                         \
        ncclResult_t nccl_rc_ = (call);                                                          \
        if (nccl_rc_ != ncclSuccess && nccl_rc_ != ncclInProgress)                               \
            return fail(err, "NCCL %s: %s", what, ncclGetErrorString(nccl_rc_));                 \
    } while (0)
#define CUDA_TRY(call, what)                                                                     \
    do {                                                                                         \
        cudaError_t cuda_rc_ = (call);                                                           \
        if (cuda_rc_ != cudaSuccess) return fail(err, "CUDA %s: %s", what, cudaGetErrorString(cuda_rc_)); \
    } while (0)

// Ends the communicator after a failure: its kernels return and nothing
// later waits on a peer. The job is failing already, so abort's own status
// adds nothing to the message.
static void abort_comm(NcclState *s) {
    if (s->comm) (void)ncclCommAbort(s->comm);
    s->comm = NULL;
}

static void nap(void) { nanosleep(&(struct timespec){.tv_nsec = 100 * 1000}, NULL); }

// Polls the communicator's state once: *ready when no call is in progress.
// A communicator error or the deadline aborts it and fails.
static bool poll_comm(Collectives *c, const char *what, double deadline, bool *ready, Error *err) {
    NcclState *s = state_of(c);
    ncclResult_t state;
    ncclResult_t rc = ncclCommGetAsyncError(s->comm, &state);
    if (rc != ncclSuccess) state = rc;
    *ready = state == ncclSuccess;
    if (state != ncclSuccess && state != ncclInProgress) {
        bool ok = fail(err, "NCCL %s on rank %d: %s: %s (a peer failed?)", what, c->rank, ncclGetErrorString(state),
                       ncclGetLastError(s->comm));
        abort_comm(s);
        return ok;
    }
    if (time_seconds() <= deadline) return true;
    abort_comm(s);
    return fail(err, "NCCL %s on rank %d did not finish within %.0f s (a rank died or hung; see the other ranks)",
                what, c->rank, s->timeout_s);
}

// Waits until the communicator has finished the calls issued so far.
static bool wait_comm(Collectives *c, const char *what, Error *err) {
    double deadline = time_seconds() + state_of(c)->timeout_s;
    for (bool ready = false;; nap()) {
        if (!poll_comm(c, what, deadline, &ready, err)) return false;
        if (ready) return true;
    }
}

// Orders the communication stream after the compute work issued so far.
static bool after_compute(NcclState *s, Error *err) {
    cudaStream_t compute = (cudaStream_t)s->ops->stream(s->ops);
    CUDA_TRY(cudaEventRecord(s->compute_ready, compute), "recording the compute stream's event");
    CUDA_TRY(cudaStreamWaitEvent(s->stream, s->compute_ready, 0), "ordering the collective after the compute stream");
    return true;
}

// Fails once the communicator is aborted, with the wait check's reason when it aborted it.
static bool check_usable(Collectives *c, const char *what, Error *err) {
    NcclState *s = state_of(c);
    if (s->failed) return *err = s->failure, false;
    return s->comm ||
           fail(err, "NCCL %s on rank %d: the communicator was aborted after an earlier failure", what, c->rank);
}

// Before a collective: the communicator is usable and the collective will
// run after the compute work that produced its data.
static bool begin_collective(Collectives *c, const char *what, Error *err) {
    return check_usable(c, what, err) && after_compute(state_of(c), err);
}

// The compute stream waits for the communication stream's work so far; the host goes on.
static bool compute_after_comm(NcclState *s, Error *err) {
    cudaStream_t compute = (cudaStream_t)s->ops->stream(s->ops);
    CUDA_TRY(cudaEventRecord(s->done, s->stream), "recording the collectives' event");
    CUDA_TRY(cudaStreamWaitEvent(compute, s->done, 0), "ordering the compute stream after the collectives");
    s->unwaited = true;
    return true;
}

// After a collective: waits until the communicator has enqueued it (not
// until it runs), then orders the later compute after it.
static bool finish(Collectives *c, const char *what, Error *err) {
    return wait_comm(c, what, err) && compute_after_comm(state_of(c), err);
}

static bool nccl_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) {
    if (dtype != DTYPE_F32 && dtype != DTYPE_F64) return fail(err, "all_reduce_sum: dtype %s is not F32 or F64", dtype_name(dtype));
    if (!begin_collective(c, "all_reduce", err)) return false;
    NCCL_TRY(ncclAllReduce(x, x, n, dtype == DTYPE_F32 ? ncclFloat32 : ncclFloat64, ncclSum, state_of(c)->comm,
                           state_of(c)->stream), "all_reduce");
    return finish(c, "all_reduce", err);
}

// A bucket: one grouped reduce per owner of a piece of x[begin, end)
// (DeepSpeed's per-partition reduction of a ZeRO-2 bucket), enqueued on the
// communication stream; the range need not be padded.
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
    if (!begin_collective(c, "reduce_scatter", err) || !enqueue_reduce_scatter_range(c, x, n, begin, end, err))
        return false;
    return finish(c, "reduce_scatter", err);
}

// Equal shards of the padded buffer: rank r's block [r S, (r + 1) S) of x
// reduced in place into the same block (NCCL's in-place form: recvbuff =
// sendbuff + rank * recvcount).
static bool nccl_reduce_scatter(Collectives *c, float *x, size_t n, Error *err) {
    size_t shard = dist_padded_size(n, c->world_size) / (size_t)c->world_size;
    if (!begin_collective(c, "reduce_scatter", err)) return false;
    NCCL_TRY(ncclReduceScatter(x, x + (size_t)c->rank * shard, shard, ncclFloat32, ncclSum, state_of(c)->comm,
                               state_of(c)->stream), "reduce_scatter");
    return finish(c, "reduce_scatter", err);
}

// The communication stream waits for the compute issued so far, then reduces;
// the host waits only until the nonblocking communicator has enqueued it, the
// compute stream not at all (until join_reductions).
static bool nccl_reduce_scatter_range_start(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    NcclState *s = state_of(c);
    if (!begin_collective(c, "reduce_scatter", err) || !enqueue_reduce_scatter_range(c, x, n, begin, end, err) ||
        !wait_comm(c, "reduce_scatter", err))
        return false;
    s->started++;
    s->unwaited = true;
    return true;
}

static bool nccl_join_reductions(Collectives *c, Error *err) { return compute_after_comm(state_of(c), err); }

// The host's one wait: polls an event recorded after every collective issued
// and the communicator's error until the event completes, the communicator
// fails or the deadline passes (then it is aborted, and its kernels return).
static bool nccl_wait(Collectives *c, Error *err) {
    NcclState *s = state_of(c);
    if (!s->unwaited) return true;
    if (!check_usable(c, "collectives", err)) return false;
    CUDA_TRY(cudaEventRecord(s->done, s->stream), "recording the collectives' event");
    double deadline = time_seconds() + s->timeout_s;
    for (bool ready = false;; nap()) {
        cudaError_t rc = cudaEventQuery(s->done);
        if (rc == cudaSuccess) break;
        if (rc != cudaErrorNotReady) return fail(err, "CUDA during NCCL collectives: %s", cudaGetErrorString(rc));
        if (!poll_comm(c, "collectives", deadline, &ready, err)) return false;
    }
    s->finished = s->started;
    s->unwaited = false;
    return true;
}

static size_t nccl_reductions_finished(Collectives *c) { return state_of(c)->finished; }

static bool nccl_reductions_event(Collectives *c, void **event, Error *err) {
    NcclState *s = state_of(c);
    CUDA_TRY(cudaEventRecord(s->reduced, s->stream), "recording the reductions' event");
    *event = s->reduced;
    return true;
}

// In place on the padded buffer: sendbuff = recvbuff + rank * sendcount.
static bool nccl_all_gather(Collectives *c, float *x, size_t n, Error *err) {
    size_t shard = dist_padded_size(n, c->world_size) / (size_t)c->world_size;
    if (!begin_collective(c, "all_gather", err)) return false;
    NCCL_TRY(ncclAllGather(x + (size_t)c->rank * shard, x, shard, ncclFloat32, state_of(c)->comm, state_of(c)->stream),
             "all_gather");
    return finish(c, "all_gather", err);
}

static bool nccl_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    if (!begin_collective(c, "broadcast", err)) return false;
    NCCL_TRY(ncclBroadcast(x, x, bytes, ncclUint8, root, state_of(c)->comm, state_of(c)->stream), "broadcast");
    return finish(c, "broadcast", err);
}

static bool nccl_barrier(Collectives *c, Error *err) {
    return nccl_all_reduce(c, state_of(c)->barrier_scalar, 1, DTYPE_F32, err) && nccl_wait(c, err);
}

// The CUDA backend's check while its own wait for the compute stream (which
// may sit behind a collective) lasts: a communicator error, or timeout_s past
// `since`, aborts the communicator, so the device goes on; `wait` and every
// later call report why.
static bool nccl_wait_check(void *context, double since) {
    Collectives *c = context;
    NcclState *s = state_of(c);
    bool ready;
    if (!s->comm || poll_comm(c, "collectives", since + s->timeout_s, &ready, &s->failure)) return s->comm != NULL;
    s->failed = true;
    return false;
}

// Finalize (collective: flushes every peer's calls) within the timeout, then
// destroy; after a failure or a timeout, abort, which never waits on a peer.
static void nccl_destroy(Collectives *c) {
    NcclState *s = state_of(c);
    Error ignored;  // nothing is left to report to: the caller is tearing down
    if (s->ops) ops_cuda_set_wait_check(NULL, NULL);
    if (s->comm) {
        ncclResult_t rc = ncclCommFinalize(s->comm);
        if ((rc == ncclSuccess || rc == ncclInProgress) && wait_comm(c, "finalize", &ignored))
            (void)ncclCommDestroy(s->comm);
        else
            abort_comm(s);
    }
    if (s->stream) (void)cudaStreamSynchronize(s->stream);  // after abort too: its collectives have returned
    if (s->barrier_scalar) (void)cudaFree(s->barrier_scalar);
    if (s->done) (void)cudaEventDestroy(s->done);
    if (s->compute_ready) (void)cudaEventDestroy(s->compute_ready);
    if (s->reduced) (void)cudaEventDestroy(s->reduced);
    if (s->stream) (void)cudaStreamDestroy(s->stream);
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
    CUDA_TRY(cudaMalloc((void **)&s->barrier_scalar, sizeof *s->barrier_scalar), "allocating the barrier's scalar");
    CUDA_TRY(cudaMemsetAsync(s->barrier_scalar, 0, sizeof *s->barrier_scalar, s->stream),
             "zeroing the barrier's scalar");
    ncclUniqueId id;
    if (!share_unique_id(store, info, &id, err)) return false;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    NCCL_TRY(ncclCommInitRankConfig(&s->comm, info->world_size, id, info->rank, &config), "joining the communicator");
    if (!wait_comm(c, "joining the communicator", err)) return false;
    ops_cuda_set_wait_check(nccl_wait_check, c);
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
                       .reduce_scatter_range_start = nccl_reduce_scatter_range_start,
                       .join_reductions = nccl_join_reductions, .wait = nccl_wait,
                       .reductions_finished = nccl_reductions_finished, .reductions_event = nccl_reductions_event,
                       .all_gather = nccl_all_gather,
                       .broadcast = nccl_broadcast, .barrier = nccl_barrier, .destroy = nccl_destroy};
    if (!nccl_init(c, store, info, err)) {
        nccl_destroy(c);
        return NULL;
    }
    return c;
}

int nccl_version(void) {
    int version = 0;
    return ncclGetVersion(&version) == ncclSuccess ? version : 0;
}
