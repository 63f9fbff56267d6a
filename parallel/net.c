// TCP helpers for the store and the CPU collectives.
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static bool resolve(const char *addr, int port, struct sockaddr_in *out, Error *err) {
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *found = NULL;
    int rc = getaddrinfo(addr, NULL, &hints, &found);
    if (rc != 0) return fail(err, "resolving '%s': %s", addr, gai_strerror(rc));
    *out = *(struct sockaddr_in *)found->ai_addr;
    out->sin_port = htons((uint16_t)port);
    freeaddrinfo(found);
    return true;
}

int net_listen(const char *addr, int port, int *port_out, Error *err) {
    struct sockaddr_in sa;
    if (!resolve(addr, port, &sa, err)) return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail(err, "socket: %s", strerror(errno)), -1;
    int one = 1;
    socklen_t len = sizeof sa;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        fail(err, "listening on %s:%d: %s", addr, port, strerror(errno));
        close(fd);
        return -1;
    }
    *port_out = ntohs(sa.sin_port);
    return fd;
}

static int wait_for(int fd, short events, double deadline) {
    double left = deadline - time_seconds();
    if (left <= 0) return 0;
    struct pollfd p = {.fd = fd, .events = events};
    int rc = poll(&p, 1, (int)(left * 1000) + 1);
    return rc < 0 && errno == EINTR ? wait_for(fd, events, deadline) : rc;
}

static void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int net_accept(int listen_fd, double deadline, Error *err) {
    int rc = wait_for(listen_fd, POLLIN, deadline);
    if (rc <= 0) return fail(err, rc == 0 ? "timed out waiting for a connection" : "poll: %s", strerror(errno)), -1;
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) return fail(err, "accept: %s", strerror(errno)), -1;
    set_nodelay(fd);
    return fd;
}

int net_connect(const char *addr, int port, double deadline, Error *err) {
    struct sockaddr_in sa;
    if (!resolve(addr, port, &sa, err)) return -1;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return fail(err, "socket: %s", strerror(errno)), -1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            set_nodelay(fd);
            return fd;
        }
        int why = errno;
        close(fd);
        if (time_seconds() >= deadline) return fail(err, "connecting to %s:%d: %s", addr, port, strerror(why)), -1;
        nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
    }
}

bool net_send(int fd, const void *data, size_t size, double deadline, const char *peer, Error *err) {
    const char *p = data;
    while (size > 0) {
        int rc = wait_for(fd, POLLOUT, deadline);
        if (rc == 0) return fail(err, "%s did not take data before the timeout (hung?)", peer);
        ssize_t sent = rc > 0 ? send(fd, p, size, MSG_NOSIGNAL) : -1;
        if (sent < 0 && errno == EINTR) continue;
        if (sent <= 0) return fail(err, "sending to %s: %s (did it exit?)", peer, strerror(errno));
        p += sent;
        size -= (size_t)sent;
    }
    return true;
}

bool net_recv(int fd, void *data, size_t size, double deadline, const char *peer, Error *err) {
    char *p = data;
    while (size > 0) {
        int rc = wait_for(fd, POLLIN, deadline);
        if (rc == 0) return fail(err, "%s sent nothing before the timeout (hung?)", peer);
        ssize_t got = rc > 0 ? recv(fd, p, size, 0) : -1;
        if (got < 0 && errno == EINTR) continue;
        if (got == 0) return fail(err, "%s closed its connection (it exited or was killed)", peer);
        if (got < 0) return fail(err, "receiving from %s: %s (did it exit?)", peer, strerror(errno));
        p += got;
        size -= (size_t)got;
    }
    return true;
}

void net_close(int fd) {
    if (fd >= 0) close(fd);
}
