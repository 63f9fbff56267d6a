// model private: one linear with an optional LoRA adapter, shared by the
// decoder's seven linears, the vision towers' and the projectors':
//   y (N, out) = x W^T [+ b] + s * (dropout(x) A^T) B^T
// W (out, in) and b (out) frozen in act_dtype; A (r, in) and B (out, r) are
// entries of the model's flat buffer, read from its act_dtype compute copy,
// their gradients added into the fp32 gradient buffer.
#pragma once
#include "model.h"

typedef struct LoraLinear {
    const void *W, *b;          // frozen weight (out, in) and bias (out) or NULL
    const ParamEntry *A, *B;    // the adapter, or NULL
    int in, out, r;
    float scale;                // s = alpha / r (alpha / sqrt(r) with rslora)
    float dropout;              // p of LoRA's dropout (0: none)
    uint64_t dropout_seed;      // this module's mask: rng_uniform_at(seed, i)
} LoraLinear;

// Buffers the adapter's forward and backward work in, backend memory.
typedef struct LoraScratch {
    void *x_dropped, *dx_dropped; // (N, in) dropout(x) and its gradient (with dropout only)
    void *dh;                     // (N, r)
} LoraScratch;

// y = the linear of x; h (N, r) keeps dropout(x) A^T for the backward.
void lora_linear_forward(const Ops *ops, const LoraLinear *l, const void *param_act, const LoraScratch *scratch,
                         void *y, const void *x, void *h, int N);
// From dy (N, out): dx (N, in) += dy W + dropout'(s dy B A) unless dx is NULL;
// dB += s dy^T h; dA += (s dy B)^T dropout(x). The bias is frozen.
void lora_linear_backward(const Ops *ops, const LoraLinear *l, const void *param_act, float *grads,
                          const LoraScratch *scratch, void *dx, const void *dy, const void *x, const void *h, int N);
