// The CUDA backend's internals tests/gpu reaches past the op table (ops.h); nothing else calls them.
// Without CUDA (kernels/no_cuda) they do nothing: the GPU tests are skipped there.
#pragma once
#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

// attention_forward / attention_backward (causal) or attention_full_forward / _backward (causal false,
// seq_start NULL) on the CUDA-core kernels (kernels/cuda/attention.cu) for every head_dim, where the op table
// takes the tensor-core kernels for 64, 80, 96 and 128: their second oracle.
void cuda_attention_reference_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k,
                                      const void *v, const int32_t *seq_start, const AttentionRope *rope, int B, int T,
                                      int n_head, int n_kv_head, int head_dim, bool causal);
void cuda_attention_reference_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout,
                                       const void *out, const float *lse, const void *q, const void *k, const void *v,
                                       const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                       int n_kv_head, int head_dim, bool causal);

// One mma.m16n8k16 through kernels/cuda/mma.cuh, device pointers: d (16 x 8 fp32) = c (16 x 8 fp32) +
// a (16 x 16 bf16) B, all row-major. b: B (16 x 8) for modes 0 and 1, B^T (8 x 16) for mode 2. Fragments:
// 0: gathered from global memory by the PTX tables (mma alone), 1: a by ldmatrix.x4 and B by ldmatrix.x2.trans
// from shared memory, 2: a by ldmatrix.x4 and B by ldmatrix.x2 from B^T's rows.
void cuda_mma_probe(const Ops *ops, float *d, const void *a, const void *b, const float *c, int mode);

#ifdef __cplusplus
}
#endif
