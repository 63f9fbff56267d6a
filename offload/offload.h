// offload: the optimizer shard in host memory (--offload cpu).
//
// The shard's fp32 master weights, Adam moments and gradients live in host
// memory, pinned (cudaHostAlloc) on the CUDA backend so the copies are DMA.
// A step downloads the shard's gradients, runs AdamW on all cores, and
// uploads the updated parameters into the backend's parameter buffer.
#pragma once
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
    int step;
} Offload;

// Copies the shard's current parameters (backend memory, n) into the masters.
bool offload_init(Offload *offload, const Ops *ops, const float *params_shard, size_t n, const AdamWHyper *hyper,
                  Error *err);
void offload_destroy(Offload *offload);
// grads_shard (backend) -> host, AdamW on the masters, masters -> params_shard (backend).
void offload_step(Offload *offload, float *params_shard, const float *grads_shard, float lr);
