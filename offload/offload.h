// offload: the optimizer shard in host memory (--offload cpu).
//
// The shard's fp32 master weights, Adam moments and gradients live in host
// memory, pinned (cudaHostAlloc) on the CUDA backend so the copies are DMA
// and overlap the compute. The caller fills offload_grads with the step's
// gradient shard (ZeRO copies it bucket by bucket during the backward, or
// downloads it at once); a step runs AdamW on all cores and uploads the
// updated parameters into the backend's parameter buffer.
//
// The one-step-delayed update (offload_step_delayed) runs step k's AdamW on a
// worker thread while the caller goes on with step k + 1's forward and
// backward, which therefore see the parameters before update k: it changes
// the numerics (gradient k + 1 is taken at p_(k-1), not p_k) for overlap.
// Step k + 1's gradient then fills a second buffer while the worker reads
// step k's (double buffering).
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
    float *master, *m, *v;          // host, (n) each
    float *grads[2];                // host, (n) each; grads[1] only for the delayed update
    int filling;                    // grads[filling] takes the coming step's gradient
    AdamWHyper hyper;
    int step;                       // updates started
    pthread_t worker;               // the delayed update in flight, when pending
    bool pending;
    const float *pending_grads;
    float pending_lr;
} Offload;

// Copies the shard's current parameters (backend memory, n) into the masters;
// double_buffered (for offload_step_delayed): two gradient buffers.
bool offload_init(Offload *offload, const Ops *ops, const float *params_shard, size_t n, const AdamWHyper *hyper,
                  bool double_buffered, Error *err);
void offload_destroy(Offload *offload);
// The host buffer (n) the coming step's gradient goes into; the update in
// flight, if any, reads the other one.
float *offload_grads(const Offload *offload);
// AdamW on the masters with offload_grads, masters -> params_shard (backend).
void offload_step(Offload *offload, float *params_shard, float lr);
// The delayed step: waits for the update in flight (if any) and uploads its
// masters to params_shard, then starts AdamW with offload_grads in a worker
// thread and hands the other buffer to the next step's gradient.
// Parameters after step k are p_(k-1), masters p_k.
bool offload_step_delayed(Offload *offload, float *params_shard, float lr, Error *err);
// Waits for the update in flight (if any) and uploads the masters to
// params_shard: parameters, masters and moments are then those of every
// update started (before a save, and at the end of training).
bool offload_flush(Offload *offload, float *params_shard, Error *err);
