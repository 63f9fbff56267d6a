#include "bench/step_util.h"

#include <stdlib.h>

void random_step_batch(StepBatch *batch, int B, int T, int vocab) {
    Rng rng;
    rng_seed(&rng, 3);
    *batch = (StepBatch){.n_micro = 1, .B = B, .T = T, .n_label_tokens = (int64_t)B * T};
    batch->tokens = malloc(sizeof(int32_t) * B * T);
    batch->targets = malloc(sizeof(int32_t) * B * T);
    if (!batch->tokens || !batch->targets) return;
    for (int i = 0; i < B * T; i++) {
        batch->tokens[i] = (int32_t)rng_below(&rng, (uint64_t)vocab);
        batch->targets[i] = (int32_t)rng_below(&rng, (uint64_t)vocab);
    }
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void sort_seconds(double *seconds, int n) {
    qsort(seconds, (size_t)n, sizeof(double), compare_doubles);
}
