// The rendezvous store: rank 0 serves keys and values over TCP from a thread;
// every rank (rank 0 too) is a client. A get polls until the key appears.
//
// Request: u8 op ('S' set, 'G' get), u32 key length, key, then for a set
// u64 value length and value. Reply: u8 found (1 after a set), and for a
// found get u64 value length and value.
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net.h"

#define STORE_KEY_MAX 256
#define STORE_VALUE_MAX (1u << 20)
#define STORE_CLIENTS_MAX 4096

typedef struct Entry {
    char *key;
    void *value;
    uint64_t size;
} Entry;

typedef struct Server {
    int listen_fd;
    int clients[STORE_CLIENTS_MAX];
    int n_clients;
    Entry *entries;
    int n_entries, capacity;
    atomic_bool stop;
    pthread_t thread;
    bool running;
} Server;

struct Store {
    int fd;
    double timeout_s;
    char peer[DIST_ADDR_MAX + 32];
    Server *server;
};

// ----------------------------------------------------------------------------
// server (rank 0)

static Entry *find_entry(Server *s, const char *key) {
    for (int i = 0; i < s->n_entries; i++)
        if (strcmp(s->entries[i].key, key) == 0) return &s->entries[i];
    return NULL;
}

static bool put_entry(Server *s, char *key, void *value, uint64_t size) {
    Entry *e = find_entry(s, key);
    if (e) {
        free(e->value);
        free(key);
    } else {
        if (s->n_entries == s->capacity) {
            int capacity = s->capacity ? 2 * s->capacity : 64;
            Entry *grown = realloc(s->entries, (size_t)capacity * sizeof *grown);
            if (!grown) return false;
            s->entries = grown;
            s->capacity = capacity;
        }
        e = &s->entries[s->n_entries++];
        e->key = key;
    }
    e->value = value;
    e->size = size;
    return true;
}

// Serves one request from fd; false drops the client.
static bool serve_request(Server *s, int fd) {
    double deadline = time_seconds() + 10;
    Error err;
    uint8_t op;
    uint32_t key_len;
    if (!net_recv(fd, &op, 1, deadline, "a store client", &err) ||
        !net_recv(fd, &key_len, sizeof key_len, deadline, "a store client", &err) || key_len >= STORE_KEY_MAX)
        return false;
    char *key = calloc(1, key_len + 1);
    if (!key || !net_recv(fd, key, key_len, deadline, "a store client", &err)) return free(key), false;
    uint8_t found = 1;
    if (op == 'S') {
        uint64_t size;
        void *value = NULL;
        bool ok = net_recv(fd, &size, sizeof size, deadline, "a store client", &err) && size <= STORE_VALUE_MAX &&
                  (value = malloc(size ? size : 1)) && net_recv(fd, value, size, deadline, "a store client", &err) &&
                  put_entry(s, key, value, size);
        if (!ok) return free(key), free(value), false;
        return net_send(fd, &found, 1, deadline, "a store client", &err);
    }
    Entry *e = op == 'G' ? find_entry(s, key) : NULL;
    free(key);
    if (op != 'G') return false;
    found = e != NULL;
    return net_send(fd, &found, 1, deadline, "a store client", &err) &&
           (!e || (net_send(fd, &e->size, sizeof e->size, deadline, "a store client", &err) &&
                   net_send(fd, e->value, e->size, deadline, "a store client", &err)));
}

static void *serve(void *arg) {
    Server *s = arg;
    struct pollfd fds[STORE_CLIENTS_MAX + 1];
    while (!atomic_load(&s->stop)) {
        fds[0] = (struct pollfd){.fd = s->listen_fd, .events = POLLIN};
        for (int i = 0; i < s->n_clients; i++) fds[i + 1] = (struct pollfd){.fd = s->clients[i], .events = POLLIN};
        if (poll(fds, (nfds_t)s->n_clients + 1, 100) <= 0) continue;
        for (int i = s->n_clients - 1; i >= 0; i--) {
            if (!(fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) || serve_request(s, s->clients[i])) continue;
            net_close(s->clients[i]);
            s->clients[i] = s->clients[--s->n_clients];
        }
        if ((fds[0].revents & POLLIN) && s->n_clients < STORE_CLIENTS_MAX) {
            Error err;
            int fd = net_accept(s->listen_fd, time_seconds() + 1, &err);
            if (fd >= 0) s->clients[s->n_clients++] = fd;
        }
    }
    return NULL;
}

static void server_destroy(Server *s) {
    if (!s) return;
    if (s->running) {
        atomic_store(&s->stop, true);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < s->n_clients; i++) net_close(s->clients[i]);
    for (int i = 0; i < s->n_entries; i++) free(s->entries[i].key), free(s->entries[i].value);
    free(s->entries);
    net_close(s->listen_fd);
    free(s);
}

static Server *server_start(const RankInfo *info, Error *err) {
    Server *s = checked_calloc(1, sizeof *s, "the store server", err);
    if (!s) return NULL;
    int port;
    s->listen_fd = net_listen(info->master_addr, info->master_port, &port, err);
    int rc = s->listen_fd >= 0 ? pthread_create(&s->thread, NULL, serve, s) : -1;
    s->running = rc == 0;
    if (!s->running) {
        if (s->listen_fd >= 0) fail(err, "starting the store thread: %s", strerror(rc));
        server_destroy(s);
        return NULL;
    }
    return s;
}

// ----------------------------------------------------------------------------
// client (every rank)

Store *store_create(const RankInfo *info, double timeout_s, Error *err) {
    Store *store = checked_calloc(1, sizeof *store, "the store", err);
    if (!store) return NULL;
    store->timeout_s = timeout_s;
    store->fd = -1;
    snprintf(store->peer, sizeof store->peer, "the store on %s:%d", info->master_addr, info->master_port);
    if (info->rank == 0 && !(store->server = server_start(info, err))) {
        fail_context(err, "rank 0 serving the store: ");
        store_destroy(store);
        return NULL;
    }
    store->fd = net_connect(info->master_addr, info->master_port, time_seconds() + timeout_s, err);
    if (store->fd < 0) {
        fail_context(err, "rank %d joining the store: ", info->rank);
        store_destroy(store);
        return NULL;
    }
    return store;
}

void store_destroy(Store *store) {
    if (!store) return;
    net_close(store->fd);
    server_destroy(store->server);
    free(store);
}

static bool send_key(Store *store, uint8_t op, const char *key, double deadline, Error *err) {
    size_t key_len = strlen(key);
    if (key_len >= STORE_KEY_MAX) return fail(err, "store key '%.40s...' is too long", key);
    uint32_t len32 = (uint32_t)key_len;
    return net_send(store->fd, &op, 1, deadline, store->peer, err) &&
           net_send(store->fd, &len32, sizeof len32, deadline, store->peer, err) &&
           net_send(store->fd, key, key_len, deadline, store->peer, err);
}

bool store_set(Store *store, const char *key, const void *value, size_t size, Error *err) {
    if (size > STORE_VALUE_MAX) return fail(err, "store value of '%s' is %zu bytes (at most %u)", key, size, STORE_VALUE_MAX);
    double deadline = time_seconds() + store->timeout_s;
    uint64_t size64 = size;
    uint8_t ack;
    return send_key(store, 'S', key, deadline, err) && net_send(store->fd, &size64, sizeof size64, deadline, store->peer, err) &&
           net_send(store->fd, value, size, deadline, store->peer, err) &&
           net_recv(store->fd, &ack, 1, deadline, store->peer, err);
}

// One get request: *found, and the value when found.
static bool try_get(Store *store, const char *key, double deadline, bool *found, void **value, size_t *size,
                    Error *err) {
    uint8_t have;
    if (!send_key(store, 'G', key, deadline, err) || !net_recv(store->fd, &have, 1, deadline, store->peer, err)) return false;
    *found = have;
    if (!have) return true;
    uint64_t size64;
    if (!net_recv(store->fd, &size64, sizeof size64, deadline, store->peer, err)) return false;
    if (size64 > STORE_VALUE_MAX) return fail(err, "%s sent a %llu-byte value", store->peer, (unsigned long long)size64);
    void *data = checked_malloc(size64 + 1, "a store value", err);
    if (!data) return false;
    if (!net_recv(store->fd, data, size64, deadline, store->peer, err)) return free(data), false;
    ((char *)data)[size64] = '\0';
    if (value) *value = data;
    else free(data);
    if (size) *size = size64;
    return true;
}

// Polls until the key appears or the deadline passes; each request has the
// whole timeout, as the server answers at once.
static bool get_until(Store *store, const char *key, double deadline, void **value, size_t *size, Error *err) {
    for (;;) {
        bool found;
        if (!try_get(store, key, time_seconds() + store->timeout_s, &found, value, size, err)) return false;
        if (found) return true;
        if (time_seconds() >= deadline)
            return fail(err, "store key '%s' was not set within %.0f s (a rank missing?)", key, store->timeout_s);
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    }
}

bool store_get(Store *store, const char *key, void **value, size_t *size, Error *err) {
    return get_until(store, key, time_seconds() + store->timeout_s, value, size, err);
}

bool store_wait(Store *store, const char *const *keys, int n_keys, Error *err) {
    double deadline = time_seconds() + store->timeout_s;
    for (int i = 0; i < n_keys; i++)
        if (!get_until(store, keys[i], deadline, NULL, NULL, err)) return false;
    return true;
}
