// Collectives between processes over TCP, rank 0 in the middle.
//
// Every call is one round: each rank r > 0 sends rank 0 a header (the call,
// the dtype, its byte count) and its contribution; rank 0 combines the
// contributions in rank order (so every rank gets the same bits) and replies
// to each rank with a status and its result, or with the error that stopped
// it ("rank 2 closed its connection ..."), so every rank names the culprit.
// Rank 0 waits timeout_s for each peer; the others wait twice that for rank 0.
//
// Background reductions (reduce_scatter_range_start) go to a queue that one
// communication thread per process serves in order; every other call first
// waits for the queue to drain, so the thread and the caller never share the
// sockets and every rank sees the calls in the same order. The first error
// of the thread is kept and returned by every later call.
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "net.h"

typedef enum CallKind { CALL_ALL_REDUCE = 1, CALL_REDUCE_SCATTER, CALL_ALL_GATHER, CALL_BROADCAST, CALL_BARRIER } CallKind;

static const char *call_name(uint32_t kind) {
    static const char *names[] = {"?", "all_reduce", "reduce_scatter", "all_gather", "broadcast", "barrier"};
    return kind <= CALL_BARRIER ? names[kind] : "?";
}

typedef struct Header {
    uint32_t kind, dtype;
    uint64_t offset;   // first element of a ranged reduce-scatter, else 0
    uint64_t bytes;    // this rank's contribution
} Header;

typedef struct Reply {
    uint32_t ok;
    uint32_t bytes;    // of the error message when !ok
} Reply;

typedef struct RangeJob { // a background reduce_scatter_range_sum
    float *x;
    size_t n, begin, end;
} RangeJob;

typedef struct CpuState {
    double timeout_s;
    int *peer_fds;     // rank 0: socket of each rank (index 0 unused); others: peer_fds[0] = rank 0
    char *scratch;     // rank 0: one contribution
    size_t scratch_bytes;
    // the communication thread and its queue, guarded by lock
    pthread_t thread;
    bool thread_running;
    pthread_mutex_t lock;
    pthread_cond_t queued, drained;
    RangeJob *jobs;    // jobs[next_job, n_jobs) wait, jobs[next_job] runs
    size_t n_jobs, next_job, jobs_capacity;
    bool stopping;
    bool failed;       // a background reduction failed: thread_error says why
    Error thread_error;
    atomic_size_t finished;
} CpuState;

static CpuState *state_of(Collectives *c) { return c->state; }

static bool ensure_scratch(CpuState *s, size_t bytes, Error *err) {
    if (bytes <= s->scratch_bytes) return true;
    char *grown = realloc(s->scratch, bytes);
    if (!grown) return fail(err, "collectives: out of memory for %zu bytes of scratch", bytes);
    s->scratch = grown;
    s->scratch_bytes = bytes;
    return true;
}

// ----------------------------------------------------------------------------
// rank 0's side

static void rank_name(int rank, char *buf, size_t size) { snprintf(buf, size, "rank %d", rank); }

// Receives rank r's header and checks it makes the same call.
static bool recv_header(Collectives *c, int r, uint32_t kind, DType dtype, uint64_t offset, uint64_t bytes,
                        Error *err) {
    char peer[32];
    rank_name(r, peer, sizeof peer);
    Header h;
    if (!net_recv(state_of(c)->peer_fds[r], &h, sizeof h, time_seconds() + state_of(c)->timeout_s, peer, err))
        return false;
    if (h.kind != kind || h.dtype != (uint32_t)dtype || h.offset != offset || h.bytes != bytes)
        return fail(err, "rank %d called %s on %llu bytes at %llu while rank 0 called %s on %llu at %llu (ranks out of step)",
                    r, call_name(h.kind), (unsigned long long)h.bytes, (unsigned long long)h.offset, call_name(kind),
                    (unsigned long long)bytes, (unsigned long long)offset);
    return true;
}

static bool recv_payload(Collectives *c, int r, void *data, size_t bytes, Error *err) {
    char peer[32];
    rank_name(r, peer, sizeof peer);
    return net_recv(state_of(c)->peer_fds[r], data, bytes, time_seconds() + state_of(c)->timeout_s, peer, err);
}

static bool send_result(Collectives *c, int r, const void *data, size_t bytes, Error *err) {
    char peer[32];
    rank_name(r, peer, sizeof peer);
    Reply reply = {.ok = 1, .bytes = 0};
    double deadline = time_seconds() + state_of(c)->timeout_s;
    int fd = state_of(c)->peer_fds[r];
    return net_send(fd, &reply, sizeof reply, deadline, peer, err) && net_send(fd, data, bytes, deadline, peer, err);
}

// Tells every other rank why the call failed, then closes the sockets so a
// rank still sending notices at once.
static bool abort_all(Collectives *c, Error *err) {
    Reply reply = {.ok = 0, .bytes = (uint32_t)strlen(err->message)};
    for (int r = 1; r < c->world_size; r++) {
        int fd = state_of(c)->peer_fds[r];
        Error ignored;
        if (net_send(fd, &reply, sizeof reply, time_seconds() + 1, "", &ignored))
            net_send(fd, err->message, reply.bytes, time_seconds() + 1, "", &ignored);
        shutdown(fd, SHUT_RDWR);
    }
    return false;
}

static void add_into(void *acc, const void *x, size_t n, DType dtype) {
    if (dtype == DTYPE_F64) {
        double *a = acc;
        const double *b = x;
        for (size_t i = 0; i < n; i++) a[i] += b[i];
    } else {
        float *a = acc;
        const float *b = x;
        for (size_t i = 0; i < n; i++) a[i] += b[i];
    }
}

// x = x + x_1 + ... + x_{W-1}, in rank order.
static bool root_sum(Collectives *c, uint32_t kind, uint64_t offset, void *x, size_t n, DType dtype, Error *err) {
    size_t bytes = n * dtype_size(dtype);
    if (!ensure_scratch(state_of(c), bytes, err)) return false;
    for (int r = 1; r < c->world_size; r++) {
        if (!recv_header(c, r, kind, dtype, offset, bytes, err) || !recv_payload(c, r, state_of(c)->scratch, bytes, err))
            return abort_all(c, err);
        add_into(x, state_of(c)->scratch, n, dtype);
    }
    return true;
}

static bool root_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) {
    if (!root_sum(c, CALL_ALL_REDUCE, 0, x, n, dtype, err)) return false;
    for (int r = 1; r < c->world_size; r++)
        if (!send_result(c, r, x, n * dtype_size(dtype), err)) return abort_all(c, err);
    return true;
}

// x[begin, end) summed; each rank gets the part of it its shard holds.
static bool root_reduce_scatter_range(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    if (!root_sum(c, CALL_REDUCE_SCATTER, begin, x + begin, end - begin, DTYPE_F32, err)) return false;
    for (int r = 1; r < c->world_size; r++) {
        size_t owned_begin, owned_end;
        dist_owned_range(n, c->world_size, r, begin, end, &owned_begin, &owned_end);
        if (!send_result(c, r, x + owned_begin, (owned_end - owned_begin) * sizeof(float), err)) return abort_all(c, err);
    }
    return true;
}

static bool root_all_gather(Collectives *c, float *x, size_t n, Error *err) {
    for (int r = 1; r < c->world_size; r++) {
        size_t begin, end;
        dist_shard_range(n, c->world_size, r, &begin, &end);
        size_t bytes = (end - begin) * sizeof(float);
        if (!recv_header(c, r, CALL_ALL_GATHER, DTYPE_F32, 0, bytes, err) || !recv_payload(c, r, x + begin, bytes, err))
            return abort_all(c, err);
    }
    for (int r = 1; r < c->world_size; r++)
        if (!send_result(c, r, x, n * sizeof(float), err)) return abort_all(c, err);
    return true;
}

static bool root_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    for (int r = 1; r < c->world_size; r++) {
        size_t contribution = r == root ? bytes : 0;
        if (!recv_header(c, r, CALL_BROADCAST, DTYPE_U8, 0, contribution, err) ||
            !recv_payload(c, r, x, contribution, err))
            return abort_all(c, err);
    }
    for (int r = 1; r < c->world_size; r++)
        if (!send_result(c, r, x, r == root ? 0 : bytes, err)) return abort_all(c, err);
    return true;
}

// ----------------------------------------------------------------------------
// the other ranks' side

// Reads rank 0's reply; on failure its message becomes this rank's error.
static bool recv_reply(Collectives *c, void *result, size_t bytes, double deadline, Error *err) {
    int fd = state_of(c)->peer_fds[0];
    Reply reply;
    if (!net_recv(fd, &reply, sizeof reply, deadline, "rank 0", err)) return false;
    if (reply.ok) return net_recv(fd, result, bytes, deadline, "rank 0", err);
    char message[ERROR_MESSAGE_MAX] = {0};
    size_t len = reply.bytes < sizeof message - 1 ? reply.bytes : sizeof message - 1;
    if (!net_recv(fd, message, len, deadline, "rank 0", err)) return false;
    return fail(err, "rank 0 stopped the job: %s", message);
}

// Sends the contribution and receives the result; if sending fails, rank 0's
// reply (when it managed one) says why.
static bool exchange(Collectives *c, uint32_t kind, DType dtype, uint64_t offset, const void *contribution, size_t bytes,
                     void *result, size_t result_bytes, Error *err) {
    int fd = state_of(c)->peer_fds[0];
    double deadline = time_seconds() + 2 * state_of(c)->timeout_s;
    Header h = {.kind = kind, .dtype = (uint32_t)dtype, .offset = offset, .bytes = bytes};
    if (!net_send(fd, &h, sizeof h, deadline, "rank 0", err) || !net_send(fd, contribution, bytes, deadline, "rank 0", err)) {
        Error reason;
        if (!recv_reply(c, NULL, 0, time_seconds() + 1, &reason) && strncmp(reason.message, "rank 0 stopped", 14) == 0)
            *err = reason;
        return false;
    }
    return recv_reply(c, result, result_bytes, deadline, err);
}

// ----------------------------------------------------------------------------
// the calls, on the caller's thread or the communication thread

static bool reduce_scatter_range(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    if (c->rank == 0) return root_reduce_scatter_range(c, x, n, begin, end, err);
    size_t owned_begin, owned_end;
    dist_owned_range(n, c->world_size, c->rank, begin, end, &owned_begin, &owned_end);
    return exchange(c, CALL_REDUCE_SCATTER, DTYPE_F32, begin, x + begin, (end - begin) * sizeof(float), x + owned_begin,
                    (owned_end - owned_begin) * sizeof(float), err);
}

static bool check_range(size_t n, size_t begin, size_t end, Error *err) {
    if (begin <= end && end <= n) return true;
    return fail(err, "reduce_scatter_range_sum: [%zu, %zu) is not inside a buffer of %zu", begin, end, n);
}

// ----------------------------------------------------------------------------
// the communication thread

static void *communication_thread(void *arg) {
    Collectives *c = arg;
    CpuState *s = state_of(c);
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (s->next_job == s->n_jobs && !s->stopping) pthread_cond_wait(&s->queued, &s->lock);
        if (s->next_job == s->n_jobs) break;
        RangeJob job = s->jobs[s->next_job];
        bool skip = s->failed; // the sockets are closed: later jobs would only fail again
        pthread_mutex_unlock(&s->lock);
        Error err;
        bool ok = skip || reduce_scatter_range(c, job.x, job.n, job.begin, job.end, &err);
        pthread_mutex_lock(&s->lock);
        if (!ok) {
            s->failed = true;
            s->thread_error = err;
            fail_context(&s->thread_error, "rank %d reducing gradients [%zu, %zu) in the background: ", c->rank,
                         job.begin, job.end);
        }
        atomic_fetch_add(&s->finished, 1);
        if (++s->next_job == s->n_jobs) {
            s->n_jobs = s->next_job = 0;
            pthread_cond_broadcast(&s->drained);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

// Waits until the queue is empty; the thread's first error, if any.
static bool drain(Collectives *c, Error *err) {
    CpuState *s = state_of(c);
    pthread_mutex_lock(&s->lock);
    while (s->n_jobs > 0) pthread_cond_wait(&s->drained, &s->lock);
    bool ok = !s->failed;
    if (!ok) *err = s->thread_error;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

static bool enqueue(CpuState *s, RangeJob job, Error *err) {
    pthread_mutex_lock(&s->lock);
    bool ok = !s->failed || (*err = s->thread_error, false);
    if (ok && s->n_jobs == s->jobs_capacity) {
        size_t capacity = s->jobs_capacity ? 2 * s->jobs_capacity : 64;
        RangeJob *grown = realloc(s->jobs, capacity * sizeof *grown);
        ok = grown || fail(err, "collectives: out of memory for %zu queued reductions", capacity);
        if (grown) s->jobs = grown, s->jobs_capacity = capacity;
    }
    if (ok) {
        s->jobs[s->n_jobs++] = job;
        pthread_cond_signal(&s->queued);
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

// ----------------------------------------------------------------------------
// the table

static bool cpu_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) {
    if (dtype != DTYPE_F32 && dtype != DTYPE_F64) return fail(err, "all_reduce_sum: dtype %s is not F32 or F64", dtype_name(dtype));
    if (!drain(c, err)) return false;
    if (c->rank == 0) return root_all_reduce(c, x, n, dtype, err);
    size_t bytes = n * dtype_size(dtype);
    return exchange(c, CALL_ALL_REDUCE, dtype, 0, x, bytes, x, bytes, err);
}

static bool cpu_reduce_scatter_range(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    return check_range(n, begin, end, err) && drain(c, err) && reduce_scatter_range(c, x, n, begin, end, err);
}

static bool cpu_reduce_scatter(Collectives *c, float *x, size_t n, Error *err) {
    return cpu_reduce_scatter_range(c, x, n, 0, n, err);
}

static bool cpu_reduce_scatter_range_start(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    return check_range(n, begin, end, err) &&
           enqueue(state_of(c), (RangeJob){.x = x, .n = n, .begin = begin, .end = end}, err);
}

static bool cpu_wait(Collectives *c, Error *err) { return drain(c, err); }

static size_t cpu_reductions_finished(Collectives *c) { return atomic_load(&state_of(c)->finished); }

// A reduction's result is in x once reductions_finished counts it.
static bool cpu_reductions_event(Collectives *c, void **event, Error *err) {
    *event = NULL;
    return true;
}

static bool cpu_all_gather(Collectives *c, float *x, size_t n, Error *err) {
    if (!drain(c, err)) return false;
    if (c->rank == 0) return root_all_gather(c, x, n, err);
    size_t begin, end;
    dist_shard_range(n, c->world_size, c->rank, &begin, &end);
    return exchange(c, CALL_ALL_GATHER, DTYPE_F32, 0, x + begin, (end - begin) * sizeof(float), x, n * sizeof(float), err);
}

static bool cpu_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    if (root < 0 || root >= c->world_size) return fail(err, "broadcast: root %d is outside world size %d", root, c->world_size);
    if (!drain(c, err)) return false;
    if (c->rank == 0) return root_broadcast(c, x, bytes, root, err);
    bool is_root = c->rank == root;
    return exchange(c, CALL_BROADCAST, DTYPE_U8, 0, x, is_root ? bytes : 0, x, is_root ? 0 : bytes, err);
}

static bool cpu_barrier(Collectives *c, Error *err) {
    if (!drain(c, err)) return false;
    if (c->rank != 0) return exchange(c, CALL_BARRIER, DTYPE_U8, 0, NULL, 0, NULL, 0, err);
    for (int r = 1; r < c->world_size; r++)
        if (!recv_header(c, r, CALL_BARRIER, DTYPE_U8, 0, 0, err)) return abort_all(c, err);
    for (int r = 1; r < c->world_size; r++)
        if (!send_result(c, r, NULL, 0, err)) return abort_all(c, err);
    return true;
}

static void stop_thread(CpuState *s) {
    if (!s->thread_running) return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->queued);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    s->thread_running = false;
}

static void cpu_destroy(Collectives *c) {
    CpuState *s = state_of(c);
    stop_thread(s);
    for (int r = 0; r < c->world_size; r++) net_close(s->peer_fds[r]);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->queued);
    pthread_cond_destroy(&s->drained);
    free(s->jobs);
    free(s->peer_fds);
    free(s->scratch);
    free(s);
    free(c);
}

// ----------------------------------------------------------------------------
// set-up: rank 0 listens on a free port and publishes it; each rank connects
// and introduces itself with its rank.

static bool accept_peers(Collectives *c, Store *store, const RankInfo *info, Error *err) {
    CpuState *s = state_of(c);
    int port;
    int listen_fd = net_listen(info->master_addr, 0, &port, err);
    if (listen_fd < 0) return false;
    bool ok = store_set(store, "cpu_collectives/port", &port, sizeof port, err);
    double deadline = time_seconds() + s->timeout_s;
    for (int accepted = 1; ok && accepted < c->world_size; accepted++) {
        int fd = net_accept(listen_fd, deadline, err);
        int32_t rank = -1;
        ok = fd >= 0 && net_recv(fd, &rank, sizeof rank, deadline, "a joining rank", err);
        if (ok && (rank < 1 || rank >= c->world_size || s->peer_fds[rank] >= 0))
            ok = fail(err, "a peer introduced itself as rank %d (duplicate or out of range)", rank);
        if (ok) s->peer_fds[rank] = fd;
        else net_close(fd);
    }
    net_close(listen_fd);
    if (!ok) return fail_context(err, "rank 0 waiting for %d ranks to connect: ", c->world_size - 1);
    return true;
}

static bool connect_to_root(Collectives *c, Store *store, const RankInfo *info, Error *err) {
    CpuState *s = state_of(c);
    int *port = NULL;
    if (!store_get(store, "cpu_collectives/port", (void **)&port, NULL, err)) return false;
    double deadline = time_seconds() + s->timeout_s;
    s->peer_fds[0] = net_connect(info->master_addr, *port, deadline, err);
    free(port);
    int32_t rank = c->rank;
    return s->peer_fds[0] >= 0 && net_send(s->peer_fds[0], &rank, sizeof rank, deadline, "rank 0", err);
}

Collectives *collectives_cpu(Store *store, const RankInfo *info, double timeout_s, Error *err) {
    Collectives *c = checked_calloc(1, sizeof *c, "collectives", err);
    CpuState *s = c ? checked_calloc(1, sizeof *s, "collectives", err) : NULL;
    int *fds = s ? checked_malloc((size_t)info->world_size * sizeof *fds, "collective sockets", err) : NULL;
    if (!fds) return free(s), free(c), NULL;
    for (int r = 0; r < info->world_size; r++) fds[r] = -1;
    *s = (CpuState){.timeout_s = timeout_s, .peer_fds = fds};
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->queued, NULL);
    pthread_cond_init(&s->drained, NULL);
    atomic_init(&s->finished, 0);
    *c = (Collectives){.name = "cpu", .rank = info->rank, .world_size = info->world_size, .state = s,
                       .all_reduce_sum = cpu_all_reduce, .reduce_scatter_sum = cpu_reduce_scatter,
                       .reduce_scatter_range_sum = cpu_reduce_scatter_range,
                       .reduce_scatter_range_start = cpu_reduce_scatter_range_start, .join_reductions = cpu_wait,
                       .wait = cpu_wait,
                       .reductions_finished = cpu_reductions_finished, .reductions_event = cpu_reductions_event,
                       .all_gather = cpu_all_gather,
                       .broadcast = cpu_broadcast, .barrier = cpu_barrier, .destroy = cpu_destroy};
    int rc = pthread_create(&s->thread, NULL, communication_thread, c);
    if (rc != 0) {
        fail(err, "collectives: starting the communication thread: %s", strerror(rc));
        cpu_destroy(c);
        return NULL;
    }
    s->thread_running = true;
    bool ok = info->rank == 0 ? accept_peers(c, store, info, err) : connect_to_root(c, store, info, err);
    if (!ok || !cpu_barrier(c, err)) {
        cpu_destroy(c);
        return NULL;
    }
    return c;
}

void collectives_destroy(Collectives *c) {
    if (c) c->destroy(c);
}
