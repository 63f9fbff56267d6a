// offload: the optimizer shard in host memory (--offload cpu).
//
// The shard's fp32 master weights, Adam moments and gradients live in host
// memory, pinned (cudaHostAlloc) on the CUDA backend so the copies are DMA.
// A step downloads the shard's gradients, runs AdamW on all cores, and
// uploads the updated parameters into the backend's parameter buffer.
//
// The one-step-delayed update (offload_step_delayed) runs step k's AdamW on a
// worker thread while the caller goes on with step k + 1's forward and
// backward, which therefore see the parameters before update k: it changes
// the numerics (gradient k + 1 is taken at p_(k-1), not p_k) for overlap.
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "../core/core.h"
#include "../kernels/ops.h"

typedef struct AdamWHyper {
    float beta1, beta2, eps, weight_decay;
} AdamWHyper;

// torch.optim.AdamW over n fp32 elements on the CPU (OpenMP threads, SIMD
// loops), the same arithmetic as the CPU backend's op; step counts from 1.
void cpu_adamw(float *params, const float *grads, float *m, float *v, size_t n, float lr, const AdamWHyper *hyper,
               int step);

// Host memory, 64-byte aligned; pinned when `pinned` (needs CUDA).
float *host_floats_alloc(size_t n, bool pinned, const char *what, Error *err);
void host_floats_free(float *data, bool pinned);

typedef struct Offload {
    const Ops *ops;
    size_t n;                       // shard elements
    bool pinned;
    float *master, *grads, *m, *v;  // host, (n) each
    AdamWHyper hyper;
    int step;                       // updates started
    pthread_t worker;               // the delayed update in flight, when pending
    bool pending;
    float pending_lr;
} Offload;

// Copies the shard's current parameters (backend memory, n) into the masters.
bool offload_init(Offload *offload, const Ops *ops, const float *params_shard, size_t n, const AdamWHyper *hyper,
                  Error *err);
void offload_destroy(Offload *offload);
// grads_shard (backend) -> host, AdamW on the masters, masters -> params_shard (backend).
void offload_step(Offload *offload, float *params_shard, const float *grads_shard, float lr);
// The delayed step: waits for the update in flight (if any) and uploads its
// masters to params_shard, then downloads grads_shard and starts AdamW on
// them in a worker thread. Parameters after step k are p_(k-1), masters p_k.
bool offload_step_delayed(Offload *offload, float *params_shard, const float *grads_shard, float lr, Error *err);
// Waits for the update in flight (if any) and uploads the masters to
// params_shard: parameters, masters and moments are then those of every
// update started (before a save, and at the end of training).
bool offload_flush(Offload *offload, float *params_shard, Error *err);
