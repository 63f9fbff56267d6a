// Collectives between processes over TCP, rank 0 in the middle.
//
// Every call is one round: each rank r > 0 sends rank 0 a header (the call,
// the dtype, its byte count) and its contribution; rank 0 combines the
// contributions in rank order (so every rank gets the same bits) and replies
// to each rank with a status and its result, or with the error that stopped
// it ("rank 2 closed its connection ..."), so every rank names the culprit.
// Rank 0 waits timeout_s for each peer; the others wait twice that for rank 0.
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
    uint64_t bytes;    // this rank's contribution
} Header;

typedef struct Reply {
    uint32_t ok;
    uint32_t bytes;    // of the error message when !ok
} Reply;

typedef struct CpuState {
    double timeout_s;
    int *peer_fds;     // rank 0: socket of each rank (index 0 unused); others: peer_fds[0] = rank 0
    char *scratch;     // rank 0: one contribution
    size_t scratch_bytes;
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
static bool recv_header(Collectives *c, int r, uint32_t kind, DType dtype, uint64_t bytes, Error *err) {
    char peer[32];
    rank_name(r, peer, sizeof peer);
    Header h;
    if (!net_recv(state_of(c)->peer_fds[r], &h, sizeof h, time_seconds() + state_of(c)->timeout_s, peer, err))
        return false;
    if (h.kind != kind || h.dtype != (uint32_t)dtype || h.bytes != bytes)
        return fail(err, "rank %d called %s on %llu bytes while rank 0 called %s on %llu (ranks out of step)", r,
                    call_name(h.kind), (unsigned long long)h.bytes, call_name(kind), (unsigned long long)bytes);
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
static bool root_sum(Collectives *c, uint32_t kind, void *x, size_t n, DType dtype, Error *err) {
    size_t bytes = n * dtype_size(dtype);
    if (!ensure_scratch(state_of(c), bytes, err)) return false;
    for (int r = 1; r < c->world_size; r++) {
        if (!recv_header(c, r, kind, dtype, bytes, err) || !recv_payload(c, r, state_of(c)->scratch, bytes, err))
            return abort_all(c, err);
        add_into(x, state_of(c)->scratch, n, dtype);
    }
    return true;
}

static bool root_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) {
    if (!root_sum(c, CALL_ALL_REDUCE, x, n, dtype, err)) return false;
    for (int r = 1; r < c->world_size; r++)
        if (!send_result(c, r, x, n * dtype_size(dtype), err)) return abort_all(c, err);
    return true;
}

static bool root_reduce_scatter(Collectives *c, float *x, size_t n, Error *err) {
    if (!root_sum(c, CALL_REDUCE_SCATTER, x, n, DTYPE_F32, err)) return false;
    for (int r = 1; r < c->world_size; r++) {
        size_t begin, end;
        dist_shard_range(n, c->world_size, r, &begin, &end);
        if (!send_result(c, r, x + begin, (end - begin) * sizeof(float), err)) return abort_all(c, err);
    }
    return true;
}

static bool root_all_gather(Collectives *c, float *x, size_t n, Error *err) {
    for (int r = 1; r < c->world_size; r++) {
        size_t begin, end;
        dist_shard_range(n, c->world_size, r, &begin, &end);
        size_t bytes = (end - begin) * sizeof(float);
        if (!recv_header(c, r, CALL_ALL_GATHER, DTYPE_F32, bytes, err) || !recv_payload(c, r, x + begin, bytes, err))
            return abort_all(c, err);
    }
    for (int r = 1; r < c->world_size; r++)
        if (!send_result(c, r, x, n * sizeof(float), err)) return abort_all(c, err);
    return true;
}

static bool root_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    for (int r = 1; r < c->world_size; r++) {
        size_t contribution = r == root ? bytes : 0;
        if (!recv_header(c, r, CALL_BROADCAST, DTYPE_U8, contribution, err) ||
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
static bool exchange(Collectives *c, uint32_t kind, DType dtype, const void *contribution, size_t bytes, void *result,
                     size_t result_bytes, Error *err) {
    int fd = state_of(c)->peer_fds[0];
    double deadline = time_seconds() + 2 * state_of(c)->timeout_s;
    Header h = {.kind = kind, .dtype = (uint32_t)dtype, .bytes = bytes};
    if (!net_send(fd, &h, sizeof h, deadline, "rank 0", err) || !net_send(fd, contribution, bytes, deadline, "rank 0", err)) {
        Error reason;
        if (!recv_reply(c, NULL, 0, time_seconds() + 1, &reason) && strncmp(reason.message, "rank 0 stopped", 14) == 0)
            *err = reason;
        return false;
    }
    return recv_reply(c, result, result_bytes, deadline, err);
}

// ----------------------------------------------------------------------------
// the table

static bool cpu_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) {
    if (dtype != DTYPE_F32 && dtype != DTYPE_F64) return fail(err, "all_reduce_sum: dtype %s is not F32 or F64", dtype_name(dtype));
    if (c->rank == 0) return root_all_reduce(c, x, n, dtype, err);
    size_t bytes = n * dtype_size(dtype);
    return exchange(c, CALL_ALL_REDUCE, dtype, x, bytes, x, bytes, err);
}

static bool cpu_reduce_scatter(Collectives *c, float *x, size_t n, Error *err) {
    if (c->rank == 0) return root_reduce_scatter(c, x, n, err);
    size_t begin, end;
    dist_shard_range(n, c->world_size, c->rank, &begin, &end);
    return exchange(c, CALL_REDUCE_SCATTER, DTYPE_F32, x, n * sizeof(float), x + begin, (end - begin) * sizeof(float), err);
}

static bool cpu_all_gather(Collectives *c, float *x, size_t n, Error *err) {
    if (c->rank == 0) return root_all_gather(c, x, n, err);
    size_t begin, end;
    dist_shard_range(n, c->world_size, c->rank, &begin, &end);
    return exchange(c, CALL_ALL_GATHER, DTYPE_F32, x + begin, (end - begin) * sizeof(float), x, n * sizeof(float), err);
}

static bool cpu_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    if (root < 0 || root >= c->world_size) return fail(err, "broadcast: root %d is outside world size %d", root, c->world_size);
    if (c->rank == 0) return root_broadcast(c, x, bytes, root, err);
    bool is_root = c->rank == root;
    return exchange(c, CALL_BROADCAST, DTYPE_U8, x, is_root ? bytes : 0, x, is_root ? 0 : bytes, err);
}

static bool cpu_barrier(Collectives *c, Error *err) {
    if (c->rank != 0) return exchange(c, CALL_BARRIER, DTYPE_U8, NULL, 0, NULL, 0, err);
    for (int r = 1; r < c->world_size; r++)
        if (!recv_header(c, r, CALL_BARRIER, DTYPE_U8, 0, err)) return abort_all(c, err);
    for (int r = 1; r < c->world_size; r++)
        if (!send_result(c, r, NULL, 0, err)) return abort_all(c, err);
    return true;
}

static void cpu_destroy(Collectives *c) {
    CpuState *s = state_of(c);
    for (int r = 0; r < c->world_size; r++) net_close(s->peer_fds[r]);
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
    *c = (Collectives){.name = "cpu", .rank = info->rank, .world_size = info->world_size, .state = s,
                       .all_reduce_sum = cpu_all_reduce, .reduce_scatter_sum = cpu_reduce_scatter,
                       .all_gather = cpu_all_gather, .broadcast = cpu_broadcast, .barrier = cpu_barrier,
                       .destroy = cpu_destroy};
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
