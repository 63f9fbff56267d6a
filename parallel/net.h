// parallel's private TCP helpers: listening, connecting with retries, and whole
// sends / receives bounded by a deadline (poll), naming the peer on failure.
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "parallel.h"

// Listens on addr:port (port 0 = any free one); *port_out receives the port.
int net_listen(const char *addr, int port, int *port_out, Error *err);
// Accepts one connection before the deadline (time_seconds() clock).
int net_accept(int listen_fd, double deadline, Error *err);
// Connects to addr:port, retrying until the deadline (the server may start later).
int net_connect(const char *addr, int port, double deadline, Error *err);
// Sends / receives exactly size bytes before the deadline; `peer` names the
// other side in messages ("rank 2", "the store on host:port").
bool net_send(int fd, const void *data, size_t size, double deadline, const char *peer, Error *err);
bool net_recv(int fd, void *data, size_t size, double deadline, const char *peer, Error *err);
void net_close(int fd);
