// trainer's private view of the job's ranks: joining the store and the
// collectives, and all-reducing host scalars (label counts, losses).
#pragma once
#include "parallel/parallel.h"
#include "trainer.h"

// all_reduce_host's scalars live in backend memory (NCCL reduces device memory).
#define DIST_HOST_SCALARS_MAX 4
#define DIST_SCALARS_BYTES (DIST_HOST_SCALARS_MAX * sizeof(double))

typedef struct DistContext {
    RankInfo info;
    Store *store;
    Collectives *coll;
    const Ops *ops;
    double *scalars;          // DIST_SCALARS_BYTES of backend memory for all_reduce_host
} DistContext;

// Reads the ranks from the environment; with more than one, joins the store
// and opens the collectives (NCCL on the CUDA backend, sockets on the CPU).
bool dist_context_start(DistContext *dist, const Ops *ops, double timeout_s, Error *err);
void dist_context_stop(DistContext *dist);
// values (n <= 4, host) = their sum over ranks.
bool all_reduce_host(DistContext *dist, double *values, int n, Error *err);
// all (world_size x n_words, host) = every rank's words (n_words <= 4), one broadcast per rank.
bool all_gather_host_words(DistContext *dist, const uint64_t *words, int n_words, uint64_t *all, Error *err);
