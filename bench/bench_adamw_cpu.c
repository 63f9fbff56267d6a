// CPU AdamW of the offloaded shard: parameters per second and bytes moved per
// second (read p, g, m, v; write p, m, v: 28 bytes per parameter), beside a
// STREAM-like copy (read + write, 8 bytes per float) measured in the same run.
//   bench_adamw_cpu [parameters, default 64M] [repeats, default 10]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "offload/offload.h"

static double best_seconds_copy(float *dst, const float *src, size_t n, int repeats) {
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        double start = time_seconds();
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) dst[i] = src[i];
        double elapsed = time_seconds() - start;
        if (elapsed < best) best = elapsed;
    }
    return best;
}

static double best_seconds_adamw(float *p, const float *g, float *m, float *v, size_t n, int repeats) {
    AdamWHyper hyper = {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        double start = time_seconds();
        cpu_adamw(p, g, m, v, n, 1e-4f, &hyper, r + 1);
        double elapsed = time_seconds() - start;
        if (elapsed < best) best = elapsed;
    }
    return best;
}

int main(int argc, char **argv) {
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : (size_t)64 << 20;
    int repeats = argc > 2 ? atoi(argv[2]) : 10;
    Error err;
    float *buffers[4];
    for (int i = 0; i < 4; i++) {
        buffers[i] = host_floats_alloc(n, false, "benchmark buffers", &err);
        if (!buffers[i]) return fprintf(stderr, "bench_adamw_cpu: %s\n", err.message), 1;
        #pragma omp parallel for schedule(static)
        for (size_t k = 0; k < n; k++) buffers[i][k] = i == 1 ? 1e-3f * (float)(k % 97) : 0.5f; // first touch per thread
    }
    double copy_s = best_seconds_copy(buffers[2], buffers[0], n, repeats);
    double adamw_s = best_seconds_adamw(buffers[0], buffers[1], buffers[2], buffers[3], n, repeats);
    double copy_bw = 8.0 * (double)n / copy_s, adamw_bw = 28.0 * (double)n / adamw_s;
    printf("parameters %zu, best of %d\n", n, repeats);
    printf("copy   %.2f GB/s (read + write)\n", copy_bw / 1e9);
    printf("adamw  %.1f M params/s, %.2f GB/s = %.0f%% of copy\n", (double)n / adamw_s / 1e6, adamw_bw / 1e9,
           100.0 * adamw_bw / copy_bw);
    for (int i = 0; i < 4; i++) host_floats_free(buffers[i], false);
    return 0;
}
