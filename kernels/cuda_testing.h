// The CUDA backend's internals tests/gpu reaches past the op table (ops.h); nothing else calls them.
// Without CUDA (kernels/no_cuda) they do nothing: the GPU tests are skipped there.
#pragma once
#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

// One mma.m16n8k16 through kernels/cuda/mma.cuh, device pointers: d (16 x 8 fp32) = c (16 x 8 fp32) +
// a (16 x 16 bf16) B, all row-major. b: B (16 x 8) for modes 0 and 1, B^T (8 x 16) for mode 2. Fragments:
// 0: gathered from global memory by the PTX tables (mma alone), 1: a by ldmatrix.x4 and B by ldmatrix.x2.trans
// from shared memory, 2: a by ldmatrix.x4 and B by ldmatrix.x2 from B^T's rows.
void cuda_mma_probe(const Ops *ops, float *d, const void *a, const void *b, const float *c, int mode);

#ifdef __cplusplus
}
#endif
