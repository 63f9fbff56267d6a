// The training job's ranks: store, collectives and host-scalar reductions.
#include "distributed.h"

bool dist_context_start(DistContext *dist, const Ops *ops, double timeout_s, Error *err) {
    *dist = (DistContext){.ops = ops};
    if (!rank_info_from_env(&dist->info, err)) return false;
    dist->scalars = ops->alloc(ops, DIST_SCALARS_BYTES, err);
    if (!dist->scalars) return false;
    if (dist->info.world_size == 1) return (dist->coll = collectives_single(err)) != NULL;
    dist->store = store_create(&dist->info, timeout_s, err);
    if (!dist->store) return false;
    dist->coll = ops->device_memory ? collectives_nccl(dist->store, &dist->info, timeout_s, err)
                      : collectives_cpu(dist->store, &dist->info, timeout_s, err);
    if (!dist->coll) return fail_context(err, "rank %d of %d: ", dist->info.rank, dist->info.world_size);
    return true;
}

void dist_context_stop(DistContext *dist) {
    collectives_destroy(dist->coll);
    store_destroy(dist->store);
    if (dist->scalars) dist->ops->free(dist->ops, dist->scalars);
    *dist = (DistContext){0};
}

bool all_reduce_host(DistContext *dist, double *values, int n, Error *err) {
    if (n > DIST_HOST_SCALARS_MAX) return fail(err, "all_reduce_host: %d values (at most %d)", n, DIST_HOST_SCALARS_MAX);
    if (dist->info.world_size == 1) return true;
    size_t bytes = (size_t)n * sizeof(double);
    dist->ops->upload(dist->ops, dist->scalars, values, bytes);
    if (!dist->coll->all_reduce_sum(dist->coll, dist->scalars, (size_t)n, DTYPE_F64, err) ||
        !dist->coll->wait(dist->coll, err))
        return false;
    dist->ops->download(dist->ops, values, dist->scalars, bytes);
    return true;
}

bool all_gather_host_words(DistContext *dist, const uint64_t *words, int n_words, uint64_t *all, Error *err) {
    if (n_words > DIST_HOST_SCALARS_MAX) return fail(err, "all_gather_host_words: %d words (at most %d)", n_words, DIST_HOST_SCALARS_MAX);
    size_t bytes = (size_t)n_words * sizeof(uint64_t);
    for (int root = 0; root < dist->info.world_size; root++) {
        if (root == dist->info.rank) dist->ops->upload(dist->ops, dist->scalars, words, bytes);
        if (dist->info.world_size > 1 && (!dist->coll->broadcast(dist->coll, dist->scalars, bytes, root, err) ||
                                          !dist->coll->wait(dist->coll, err)))
            return false;
        dist->ops->download(dist->ops, all + (size_t)root * n_words, dist->scalars, bytes);
    }
    return true;
}
