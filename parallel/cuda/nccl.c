// NCCL collectives on a communication stream.
//
// The communicator is nonblocking (ncclConfig_t.blocking = 0), so no NCCL
// call waits on a peer: joining it, enqueueing a collective and finalizing it
// return at once (ncclInProgress) and `wait_comm` polls
// ncclCommGetAsyncError until the communicator is ready, failed, or
// timeout_s has passed (ncclCommInitRank would wait forever for a rank that
// never joins). Stream invariants: each collective is enqueued on the
// communication stream behind an event recorded on the compute stream (the
// work that produced its data), and the compute stream waits for an event
// recorded after it (cudaStreamWaitEvent), so later kernels read its results
// without the host waiting for the device. A background reduction
// (reduce_scatter_range_start) is ordered after the compute the same way,
// but the compute stream does not wait for it until join_reductions; every
// later collective is queued behind it on the same stream; reductions_event
// lets the backend's copy stream wait for the reductions started so far.
// A watchdog thread per communicator (as PyTorch's ProcessGroupNCCL's) looks
// every WATCH_INTERVAL_MS at the communicator's error and at two events per
// collective, on the communication stream where it begins (its data ready,
// the collectives before it done) and after it: an error, or a collective
// that has been the oldest unfinished one, begun, for more than timeout_s,
// aborts the communicator, so its kernels return and the streams behind them
// go on (and with them a host blocked in a kernel launch on a full launch
// queue, or in the upload staging's wait), and keeps the reason for the next
// call. The timeout thus measures how long a collective waits on its peers,
// not the length of a step or of the compute between collectives. Thread
// invariants: `lock` guards the communicator, the failure and the watchdog's
// events; the main thread holds it while it calls NCCL, so an abort never
// races a collective's enqueue, but not while it issues work on the compute
// stream, where a full launch queue blocks the host until the watchdog's
// abort lets the device go on; it stops and joins the watchdog before it
// finalizes or destroys. Once aborted, the communicator is not used again:
// every call returns the reason kept. The host waits only in `wait` (and
// barrier, destroy): it polls an event recorded after everything issued and
// the watchdog's verdict. Its callers wait there before any blocking read of
// device memory. Rank 0 creates the unique id and shares it through the
// store. The communicator lives on the device ops_cuda selected for this
// local rank (the calling thread's current device; the watchdog selects it
// too). Run on the emulated CUDA backend (tools/cuda_emu) in CI; not yet on
// a GPU.
#include <cuda_runtime.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/parallel.h"

enum { WATCH_RING = 64, WATCH_INTERVAL_MS = 50 };

typedef struct NcclState {
    // Guarded by lock, shared by the main thread and the watchdog:
    pthread_mutex_t lock;
    ncclComm_t comm;                // NULL once aborted
    bool failed;                    // aborted: failure says why
    Error failure;
    cudaEvent_t began[WATCH_RING];  // on the communication stream before a collective
    cudaEvent_t ended[WATCH_RING];  // after it; [seen, tracked) not yet seen complete
    size_t tracked, seen;
    double running_since;           // since when the oldest unfinished collective has been the oldest and begun
    bool stopping;                  // destroy asks the watchdog to return
    // The main thread's:
    pthread_t watchdog;
    bool watching;
    int device;
    cudaStream_t stream;
    cudaEvent_t done;           // recorded after collectives, for the compute stream and `wait`
    cudaEvent_t compute_ready;  // recorded on the compute stream before each collective
    cudaEvent_t reduced;        // recorded after the background reductions, for the backend's copy stream
    const Ops *ops;             // the CUDA backend: its compute stream
    float *barrier_scalar;      // device, all-reduced by barrier
    double timeout_s;
    size_t started, finished;   // background reductions
    bool unwaited;              // collectives issued since the last `wait`
} NcclState;

static NcclState *state_of(Collectives *c) { return c->state; }

// ncclInProgress is not a failure: the nonblocking communicator finishes the call in the background.
static bool nccl_ok(ncclResult_t rc, const char *what, Error *err) {
    return rc == ncclSuccess || rc == ncclInProgress || fail(err, "NCCL %s: %s", what, ncclGetErrorString(rc));
}
static bool cuda_ok(cudaError_t rc, const char *what, Error *err) {
    return rc == cudaSuccess || fail(err, "CUDA %s: %s", what, cudaGetErrorString(rc));
}
#define NCCL_TRY(call, what)                                                                                           \
    do {                                                                                                               \
        if (!nccl_ok((call), what, err)) return false;                                                                 \
    } while (0)
#define CUDA_TRY(call, what)                                                                                           \
    do {                                                                                                               \
        if (!cuda_ok((call), what, err)) return false;                                                                 \
    } while (0)

// A mutex or thread call that fails is a bug: stop at once.
static void must(int rc, const char *what) {
    if (rc == 0) return;
    fprintf(stderr, "NCCL watchdog: %s: %s\n", what, strerror(rc));
    abort();
}
static void lock(NcclState *s) { must(pthread_mutex_lock(&s->lock), "locking"); }
static void unlock(NcclState *s) { must(pthread_mutex_unlock(&s->lock), "unlocking"); }

// Lock held. Ends the communicator after a failure and keeps why for every
// later call: its kernels return and nothing waits on a peer any more. The
// job is failing already, so abort's own status adds nothing. Returns false.
static bool abort_for(NcclState *s, const Error *why) {
    s->failure = *why;
    s->failed = true;
    (void)ncclCommAbort(s->comm);
    s->comm = NULL;
    return false;
}

// Lock held. The communicator's state: ncclSuccess, ncclInProgress, or fails with its error.
static bool comm_state(Collectives *c, const char *what, ncclResult_t *state, Error *err) {
    NcclState *s = state_of(c);
    ncclResult_t rc = ncclCommGetAsyncError(s->comm, state);
    if (rc != ncclSuccess) *state = rc;
    if (*state == ncclSuccess || *state == ncclInProgress) return true;
    return fail(err, "NCCL %s on rank %d: %s: %s (a peer failed?)", what, c->rank, ncclGetErrorString(*state),
                ncclGetLastError(s->comm));
}

static bool timed_out(Collectives *c, const char *what, Error *err) {
    return fail(err, "NCCL %s on rank %d did not finish within %.0f s (a rank died or hung; see the other ranks)", what,
                c->rank, state_of(c)->timeout_s);
}

static void nap(void) { nanosleep(&(struct timespec){.tv_nsec = 100 * 1000}, NULL); }

// Lock held, or no watchdog yet or any more. Polls the communicator once:
// *ready when no call is in progress. An error or the deadline aborts it and fails.
static bool poll_comm(Collectives *c, const char *what, double deadline, bool *ready, Error *err) {
    NcclState *s = state_of(c);
    ncclResult_t state;
    if (!comm_state(c, what, &state, err)) return abort_for(s, err);
    *ready = state == ncclSuccess;
    if (*ready || time_seconds() <= deadline) return true;
    timed_out(c, what, err);
    return abort_for(s, err);
}

// Lock held, or no watchdog. Waits until the communicator has finished the calls issued so far.
static bool wait_comm(Collectives *c, const char *what, Error *err) {
    double deadline = time_seconds() + state_of(c)->timeout_s;
    for (bool ready = false;; nap()) {
        if (!poll_comm(c, what, deadline, &ready, err)) return false;
        if (ready) return true;
    }
}

// Whether an event has completed; an error fails.
static bool query(Collectives *c, cudaEvent_t event, bool *done, Error *err) {
    cudaError_t rc = cudaEventQuery(event);
    *done = rc == cudaSuccess;
    return *done || rc == cudaErrorNotReady ||
           fail(err, "CUDA during NCCL collectives on rank %d: %s", c->rank, cudaGetErrorString(rc));
}

// Lock held. Retires the collectives seen complete; fails on the
// communicator's error, or when the oldest unfinished collective has been
// the oldest and begun for more than timeout_s. Before it begins the device
// computes its data, which waits on no peer.
static bool watch(Collectives *c, Error *err) {
    NcclState *s = state_of(c);
    ncclResult_t state;
    bool done;
    if (!comm_state(c, "collectives", &state, err)) return false;
    for (; s->seen < s->tracked; s->seen++, s->running_since = time_seconds()) {
        if (!query(c, s->ended[s->seen % WATCH_RING], &done, err)) return false;
        if (!done) break;
    }
    if (s->seen == s->tracked) return true;
    if (!query(c, s->began[s->seen % WATCH_RING], &done, err)) return false;
    if (!done) s->running_since = time_seconds();
    return time_seconds() - s->running_since <= s->timeout_s || timed_out(c, "collectives", err);
}

// The watchdog thread: every WATCH_INTERVAL_MS, until destroy stops it,
// watches the communicator and aborts it on a failure.
static void *watchdog(void *arg) {
    Collectives *c = arg;
    NcclState *s = state_of(c);
    Error why;
    bool on_device = cuda_ok(cudaSetDevice(s->device), "selecting the watchdog's device", &why);
    lock(s);
    if (!on_device) abort_for(s, &why);
    while (!s->stopping) {
        if (s->comm && !watch(c, &why)) abort_for(s, &why);
        unlock(s);
        nanosleep(&(struct timespec){.tv_nsec = WATCH_INTERVAL_MS * 1000 * 1000}, NULL);
        lock(s);
    }
    unlock(s);
    return NULL;
}

static bool start_watchdog(Collectives *c, Error *err) {
    int rc = pthread_create(&state_of(c)->watchdog, NULL, watchdog, c);
    if (rc != 0) return fail(err, "starting the NCCL watchdog: %s", strerror(rc));
    state_of(c)->watching = true;
    return true;
}

// From its return, the main thread alone uses the communicator.
static void stop_watchdog(NcclState *s) {
    if (!s->watching) return;
    lock(s);
    s->stopping = true;
    unlock(s);
    must(pthread_join(s->watchdog, NULL), "joining");
    s->watching = false;
}

// Not under the lock, as compute_after_comm: a full launch queue may block a
// push on the compute stream until the watchdog's abort lets the device go on.
// Orders the communication stream after the compute work issued so far.
static bool after_compute(NcclState *s, Error *err) {
    cudaStream_t compute = (cudaStream_t)s->ops->stream(s->ops);
    CUDA_TRY(cudaEventRecord(s->compute_ready, compute), "recording the compute stream's event");
    CUDA_TRY(cudaStreamWaitEvent(s->stream, s->compute_ready, 0), "ordering the collective after the compute stream");
    return true;
}

// Lock held. Fails with the reason once the communicator is aborted.
static bool check_usable(Collectives *c, Error *err) {
    NcclState *s = state_of(c);
    if (s->failed) return *err = s->failure, false;
    return true;
}

// Lock held, after after_compute. Before a collective: the communicator is
// usable; the event where it begins, for the watchdog (none with the ring
// full: the newest slot then stands for it, see track).
static bool begin_collective(Collectives *c, Error *err) {
    NcclState *s = state_of(c);
    if (!check_usable(c, err)) return false;
    if (s->tracked - s->seen < WATCH_RING)
        CUDA_TRY(cudaEventRecord(s->began[s->tracked % WATCH_RING], s->stream), "recording the watchdog's event");
    return true;
}

// The compute stream waits for the communication stream's work so far; the host goes on.
static bool compute_after_comm(NcclState *s, Error *err) {
    cudaStream_t compute = (cudaStream_t)s->ops->stream(s->ops);
    CUDA_TRY(cudaEventRecord(s->done, s->stream), "recording the collectives' event");
    CUDA_TRY(cudaStreamWaitEvent(compute, s->done, 0), "ordering the compute stream after the collectives");
    s->unwaited = true;
    return true;
}

// Lock held (since begin_collective), right after a collective's enqueue:
// the event after it, for the watchdog. With the ring full, the newest
// slot's end is recorded again and stands for this one too.
static bool track(NcclState *s, Error *err) {
    if (s->tracked == s->seen) s->running_since = time_seconds();
    if (s->tracked - s->seen < WATCH_RING) s->tracked++;
    CUDA_TRY(cudaEventRecord(s->ended[(s->tracked - 1) % WATCH_RING], s->stream), "recording the watchdog's event");
    return true;
}

// Lock held. After a collective: waits until the communicator has enqueued
// it (not until it runs) and shows it to the watchdog.
static bool finish(Collectives *c, const char *what, Error *err) {
    return wait_comm(c, what, err) && track(state_of(c), err);
}

static bool nccl_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) {
    if (dtype != DTYPE_F32 && dtype != DTYPE_F64)
        return fail(err, "all_reduce_sum: dtype %s is not F32 or F64", dtype_name(dtype));
    NcclState *s = state_of(c);
    if (!after_compute(s, err)) return false;
    lock(s);
    bool ok =
        begin_collective(c, err) &&
        nccl_ok(ncclAllReduce(x, x, n, dtype == DTYPE_F32 ? ncclFloat32 : ncclFloat64, ncclSum, s->comm, s->stream),
                "all_reduce", err) &&
        finish(c, "all_reduce", err);
    unlock(s);
    return ok && compute_after_comm(s, err);
}

// Lock held. A bucket: one grouped reduce per owner of a piece of x[begin,
// end) (DeepSpeed's per-partition reduction of a ZeRO-2 bucket), enqueued on
// the communication stream; the range need not be padded.
static bool enqueue_reduce_scatter_range(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    if (begin > end || end > n)
        return fail(err, "reduce_scatter_range_sum: [%zu, %zu) is not inside a buffer of %zu", begin, end, n);
    NCCL_TRY(ncclGroupStart(), "group start");
    for (int r = 0; r < c->world_size; r++) {
        size_t owned_begin, owned_end;
        dist_owned_range(n, c->world_size, r, begin, end, &owned_begin, &owned_end);
        if (owned_end == owned_begin) continue;
        NCCL_TRY(ncclReduce(x + owned_begin, x + owned_begin, owned_end - owned_begin, ncclFloat32, ncclSum, r,
                            state_of(c)->comm, state_of(c)->stream),
                 "reduce_scatter");
    }
    NCCL_TRY(ncclGroupEnd(), "group end");
    return true;
}

static bool nccl_reduce_scatter_range(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    NcclState *s = state_of(c);
    if (!after_compute(s, err)) return false;
    lock(s);
    bool ok = begin_collective(c, err) && enqueue_reduce_scatter_range(c, x, n, begin, end, err) &&
              finish(c, "reduce_scatter", err);
    unlock(s);
    return ok && compute_after_comm(s, err);
}

// Equal shards of the padded buffer: rank r's block [r S, (r + 1) S) of x
// reduced in place into the same block (NCCL's in-place form: recvbuff =
// sendbuff + rank * recvcount).
static bool nccl_reduce_scatter(Collectives *c, float *x, size_t n, Error *err) {
    NcclState *s = state_of(c);
    size_t shard = dist_padded_size(n, c->world_size) / (size_t)c->world_size;
    if (!after_compute(s, err)) return false;
    lock(s);
    bool ok =
        begin_collective(c, err) &&
        nccl_ok(ncclReduceScatter(x, x + (size_t)c->rank * shard, shard, ncclFloat32, ncclSum, s->comm, s->stream),
                "reduce_scatter", err) &&
        finish(c, "reduce_scatter", err);
    unlock(s);
    return ok && compute_after_comm(s, err);
}

// The communication stream waits for the compute issued so far, then reduces;
// the host waits only until the nonblocking communicator has enqueued it, the
// compute stream not at all (until join_reductions).
static bool nccl_reduce_scatter_range_start(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    NcclState *s = state_of(c);
    if (!after_compute(s, err)) return false;
    lock(s);
    bool ok = begin_collective(c, err) && enqueue_reduce_scatter_range(c, x, n, begin, end, err) &&
              wait_comm(c, "reduce_scatter", err) && track(s, err);
    unlock(s);
    if (!ok) return false;
    s->started++;
    s->unwaited = true;
    return true;
}

static bool nccl_join_reductions(Collectives *c, Error *err) { return compute_after_comm(state_of(c), err); }

// Whether the work before `done` has run. The failure is checked after the
// query, so an abort that let the collectives end is reported, not taken for their results.
static bool collectives_done(Collectives *c, bool *done, Error *err) {
    NcclState *s = state_of(c);
    cudaError_t rc = cudaEventQuery(s->done);
    if (rc != cudaSuccess && rc != cudaErrorNotReady)
        return fail(err, "CUDA during NCCL collectives: %s", cudaGetErrorString(rc));
    *done = rc == cudaSuccess;
    lock(s);
    bool ok = check_usable(c, err);
    unlock(s);
    return ok;
}

// The host's one wait: polls an event recorded after every collective issued
// until it completes or the watchdog has aborted the communicator (on its
// error, or timeout_s without progress), then fails with the watchdog's reason.
static bool nccl_wait(Collectives *c, Error *err) {
    NcclState *s = state_of(c);
    if (!s->unwaited) return true;
    lock(s);
    bool ok = check_usable(c, err);
    unlock(s);
    ok = ok && cuda_ok(cudaEventRecord(s->done, s->stream), "recording the collectives' event", err);
    bool done = false;
    while (ok && (ok = collectives_done(c, &done, err)) && !done) nap();
    if (!ok) return false;
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
    NcclState *s = state_of(c);
    size_t shard = dist_padded_size(n, c->world_size) / (size_t)c->world_size;
    if (!after_compute(s, err)) return false;
    lock(s);
    bool ok = begin_collective(c, err) &&
              nccl_ok(ncclAllGather(x + (size_t)c->rank * shard, x, shard, ncclFloat32, s->comm, s->stream),
                      "all_gather", err) &&
              finish(c, "all_gather", err);
    unlock(s);
    return ok && compute_after_comm(s, err);
}

static bool nccl_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    NcclState *s = state_of(c);
    if (!after_compute(s, err)) return false;
    lock(s);
    bool ok = begin_collective(c, err) &&
              nccl_ok(ncclBroadcast(x, x, bytes, ncclUint8, root, s->comm, s->stream), "broadcast", err) &&
              finish(c, "broadcast", err);
    unlock(s);
    return ok && compute_after_comm(s, err);
}

static bool nccl_barrier(Collectives *c, Error *err) {
    return nccl_all_reduce(c, state_of(c)->barrier_scalar, 1, DTYPE_F32, err) && nccl_wait(c, err);
}

// With the watchdog stopped: finalize (collective: flushes every peer's
// calls) within the timeout, then destroy; after a failure or a timeout the
// communicator is aborted, which never waits on a peer.
static void nccl_destroy(Collectives *c) {
    NcclState *s = state_of(c);
    Error ignored; // nothing is left to report to: the caller is tearing down
    stop_watchdog(s);
    if (s->comm && nccl_ok(ncclCommFinalize(s->comm), "finalize", &ignored) && wait_comm(c, "finalize", &ignored))
        (void)ncclCommDestroy(s->comm);
    else if (s->comm)
        abort_for(s, &ignored);
    if (s->stream) (void)cudaStreamSynchronize(s->stream); // after abort too: its collectives have returned
    if (s->barrier_scalar) (void)cudaFree(s->barrier_scalar);
    for (int i = 0; i < WATCH_RING; i++) {
        if (s->began[i]) (void)cudaEventDestroy(s->began[i]);
        if (s->ended[i]) (void)cudaEventDestroy(s->ended[i]);
    }
    if (s->done) (void)cudaEventDestroy(s->done);
    if (s->compute_ready) (void)cudaEventDestroy(s->compute_ready);
    if (s->reduced) (void)cudaEventDestroy(s->reduced);
    if (s->stream) (void)cudaStreamDestroy(s->stream);
    must(pthread_mutex_destroy(&s->lock), "destroying the mutex");
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
    CUDA_TRY(cudaGetDevice(&s->device), "getting the device");
    CUDA_TRY(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking), "creating the communication stream");
    CUDA_TRY(cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming), "creating the communication event");
    CUDA_TRY(cudaEventCreateWithFlags(&s->compute_ready, cudaEventDisableTiming), "creating the compute event");
    CUDA_TRY(cudaEventCreateWithFlags(&s->reduced, cudaEventDisableTiming), "creating the reductions' event");
    for (int i = 0; i < WATCH_RING; i++) {
        CUDA_TRY(cudaEventCreateWithFlags(&s->began[i], cudaEventDisableTiming), "creating the watchdog's events");
        CUDA_TRY(cudaEventCreateWithFlags(&s->ended[i], cudaEventDisableTiming), "creating the watchdog's events");
    }
    CUDA_TRY(cudaMalloc((void **)&s->barrier_scalar, sizeof *s->barrier_scalar), "allocating the barrier's scalar");
    CUDA_TRY(cudaMemsetAsync(s->barrier_scalar, 0, sizeof *s->barrier_scalar, s->stream),
             "zeroing the barrier's scalar");
    ncclUniqueId id;
    if (!share_unique_id(store, info, &id, err)) return false;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    NCCL_TRY(ncclCommInitRankConfig(&s->comm, info->world_size, id, info->rank, &config), "joining the communicator");
    return wait_comm(c, "joining the communicator", err) && start_watchdog(c, err);
}

Collectives *collectives_nccl(Store *store, const RankInfo *info, double timeout_s, Error *err) {
    Collectives *c = checked_calloc(1, sizeof *c, "collectives", err);
    NcclState *s = c ? checked_calloc(1, sizeof *s, "NCCL state", err) : NULL;
    int rc = s ? pthread_mutex_init(&s->lock, NULL) : 0;
    if (!s || rc != 0) {
        if (rc != 0) fail(err, "creating the NCCL mutex: %s", strerror(rc));
        return free(s), free(c), NULL;
    }
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
