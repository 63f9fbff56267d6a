// bench: what bench_step and bench_train share: the random batch, the sorted step times.
#pragma once
#include "data/data.h"

// One micro-batch (B, T) of random tokens and targets below vocab (seed 3),
// every token a label. tokens / targets are malloc'd (NULL when out of memory).
void random_step_batch(StepBatch *batch, int B, int T, int vocab);
// Sorts n step times ascending: median seconds[n / 2], min [0], max [n - 1].
void sort_seconds(double *seconds, int n);
