// World size 1: nothing to exchange.
#include <stdlib.h>

#include "dist.h"

static bool single_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) { return true; }
static bool single_in_place(Collectives *c, float *x, size_t n, Error *err) { return true; }
static bool single_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    return root == 0 || fail(err, "broadcast: root %d is outside world size 1", root);
}
static bool single_barrier(Collectives *c, Error *err) { return true; }
static void single_destroy(Collectives *c) { free(c); }

Collectives *collectives_single(Error *err) {
    Collectives *c = checked_calloc(1, sizeof *c, "collectives", err);
    if (!c) return NULL;
    *c = (Collectives){.name = "single", .rank = 0, .world_size = 1, .all_reduce_sum = single_all_reduce,
                       .reduce_scatter_sum = single_in_place, .all_gather = single_in_place,
                       .broadcast = single_broadcast, .barrier = single_barrier, .destroy = single_destroy};
    return c;
}
