#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

void fill_uniform(float *x, size_t n, float lo, float hi, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(rng);
}

void poison(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

void packed_seq_start(int32_t *seq_start, int B, int T, const int *lengths, int n_lengths) {
    int position = 0; // over B * T
    for (int s = 0; s < n_lengths; s++) {
        int start = position % T;
        if (lengths[s] < 1 || start + lengths[s] > T) fail_msg("segment %d (length %d) crosses a row's end", s, lengths[s]);
        for (int t = 0; t < lengths[s]; t++) seq_start[position + t] = start;
        position += lengths[s];
    }
    if (position != B * T) fail_msg("segments cover %d of %d tokens", position, B * T);
}

double max_rel_error(const float *a, const double *b, size_t n, double floor) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double denom = fabs(b[i]) > floor ? fabs(b[i]) : floor;
        double e = fabs((double)a[i] - b[i]) / denom;
        if (isnan(e)) return INFINITY;
        if (e > worst) worst = e;
    }
    return worst;
}

void assert_all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) fail_msg("element %zu is not finite (%f)", i, (double)x[i]);
    }
}

const char *make_temp_dir(const char *tag) {
    static char path[256];
    snprintf(path, sizeof path, "/tmp/lora-train-test-%s-XXXXXX", tag);
    if (!mkdtemp(path)) fail_msg("mkdtemp failed for %s", path);
    return path;
}

const char *shared_fixture(const char *rel) {
    static char path[1024];
    snprintf(path, sizeof path, "../shared/fixtures/%s", rel);
    return access(path, R_OK) == 0 ? path : NULL;
}

int run_command(const char *command) {
    int status = system(command);
    if (status == -1) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int free_tcp_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) fail_msg("socket failed");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || getsockname(fd, (struct sockaddr *)&addr, &len) != 0)
        fail_msg("could not find a free TCP port");
    close(fd);
    return ntohs(addr.sin_port);
}
