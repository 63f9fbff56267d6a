// World size 1: nothing to exchange.
#include <stdlib.h>

#include "parallel.h"

typedef struct SingleState {
    size_t reductions_started; // every one finished at once
} SingleState;

static bool single_all_reduce(Collectives *c, void *x, size_t n, DType dtype, Error *err) { return true; }
static bool single_in_place(Collectives *c, float *x, size_t n, Error *err) { return true; }
static bool single_range(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) { return true; }
static bool single_range_start(Collectives *c, float *x, size_t n, size_t begin, size_t end, Error *err) {
    ((SingleState *)c->state)->reductions_started++;
    return true;
}
static bool single_wait(Collectives *c, Error *err) { return true; }
static size_t single_reductions_finished(Collectives *c) { return ((SingleState *)c->state)->reductions_started; }
static bool host_reductions(Collectives *c, void **event, Error *err) {
    *event = NULL;
    return true;
}
static bool single_broadcast(Collectives *c, void *x, size_t bytes, int root, Error *err) {
    return root == 0 || fail(err, "broadcast: root %d is outside world size 1", root);
}
static bool single_barrier(Collectives *c, Error *err) { return true; }
static void single_destroy(Collectives *c) {
    free(c->state);
    free(c);
}

Collectives *collectives_single(Error *err) {
    Collectives *c = checked_calloc(1, sizeof *c, "collectives", err);
    SingleState *s = c ? checked_calloc(1, sizeof *s, "collectives", err) : NULL;
    if (!s) return free(c), NULL;
    *c = (Collectives){.name = "single", .rank = 0, .world_size = 1, .state = s, .all_reduce_sum = single_all_reduce,
                       .reduce_scatter_sum = single_in_place, .reduce_scatter_range_sum = single_range,
                       .reduce_scatter_range_start = single_range_start, .join_reductions = single_wait,
                       .wait = single_wait,
                       .reductions_finished = single_reductions_finished, .reductions_event = host_reductions,
                       .all_gather = single_in_place,
                       .broadcast = single_broadcast, .barrier = single_barrier, .destroy = single_destroy};
    return c;
}
