// The offloaded optimizer shard: host buffers and the step.
#include <stdlib.h>
#include <string.h>

#include "offload.h"
#include "pinned.h"

float *host_floats_alloc(size_t n, bool pinned, const char *what, Error *err) {
    size_t bytes = (n ? n : 1) * sizeof(float);
    if (pinned) return pinned_alloc(bytes, what, err);
    void *data = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!data) fail(err, "out of host memory for %s (%zu bytes)", what, bytes);
    return data;
}

void host_floats_free(float *data, bool pinned) {
    if (pinned) pinned_free(data);
    else free(data);
}

bool offload_init(Offload *offload, const Ops *ops, const float *params_shard, size_t n, const AdamWHyper *hyper,
                  bool double_buffered, Error *err) {
    bool pinned = ops->pinned_staging;
    *offload = (Offload){.ops = ops, .n = n, .pinned = pinned, .hyper = *hyper};
    bool ok = (offload->master = host_floats_alloc(n, pinned, "offloaded master weights", err)) &&
              (offload->grads[0] = host_floats_alloc(n, pinned, "offloaded gradients", err)) &&
              (!double_buffered || (offload->grads[1] = host_floats_alloc(n, pinned, "offloaded gradients", err))) &&
              (offload->m = host_floats_alloc(n, pinned, "offloaded Adam moments", err)) &&
              (offload->v = host_floats_alloc(n, pinned, "offloaded Adam moments", err));
    if (!ok) {
        offload_destroy(offload);
        return false;
    }
    memset(offload->m, 0, n * sizeof(float));
    memset(offload->v, 0, n * sizeof(float));
    ops->download(ops, offload->master, params_shard, n * sizeof(float));
    return true;
}

void offload_destroy(Offload *offload) {
    if (offload->pending) pthread_join(offload->worker, NULL);
    offload->pending = false;
    float *buffers[] = {offload->master, offload->grads[0], offload->grads[1], offload->m, offload->v};
    for (int i = 0; i < 5; i++)
        if (buffers[i]) host_floats_free(buffers[i], offload->pinned);
    offload->master = offload->grads[0] = offload->grads[1] = offload->m = offload->v = NULL;
}

float *offload_grads(const Offload *offload) { return offload->grads[offload->filling]; }

void offload_step(Offload *offload, float *params_shard, float lr) {
    offload->step++;
    cpu_adamw(offload->master, offload_grads(offload), offload->m, offload->v, offload->n, lr, &offload->hyper,
              offload->step);
    offload->ops->upload(offload->ops, params_shard, offload->master, offload->n * sizeof(float));
}

// The worker thread of a delayed update: AdamW on the host buffers only.
static void *delayed_adamw(void *arg) {
    Offload *offload = arg;
    cpu_adamw(offload->master, offload->pending_grads, offload->m, offload->v, offload->n, offload->pending_lr,
              &offload->hyper, offload->step);
    return NULL;
}

static bool wait_for_pending(Offload *offload, Error *err) {
    if (!offload->pending) return true;
    offload->pending = false;
    int rc = pthread_join(offload->worker, NULL);
    if (rc != 0) return fail(err, "offload: joining the optimizer thread: %s", strerror(rc));
    return true;
}

bool offload_flush(Offload *offload, float *params_shard, Error *err) {
    if (!wait_for_pending(offload, err)) return false;
    offload->ops->upload(offload->ops, params_shard, offload->master, offload->n * sizeof(float));
    return true;
}

bool offload_step_delayed(Offload *offload, float *params_shard, float lr, Error *err) {
    if (!offload->grads[1]) return fail(err, "offload: the delayed update needs two gradient buffers (offload_init)");
    if (!offload_flush(offload, params_shard, err)) return false;
    offload->step++;
    offload->pending_grads = offload_grads(offload);
    offload->pending_lr = lr;
    int rc = pthread_create(&offload->worker, NULL, delayed_adamw, offload);
    if (rc != 0) {
        offload->step--;
        return fail(err, "offload: starting the optimizer thread: %s", strerror(rc));
    }
    offload->pending = true;
    offload->filling = 1 - offload->filling;
    return true;
}
