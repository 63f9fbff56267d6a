// Built when the CUDA toolkit is absent: the CUDA backend reports why it is missing.
#include <stdio.h>

#include "../cuda_testing.h"

const Ops *ops_cuda(Error *err) {
    fail(err, "this lora-train was built without CUDA (no nvcc was found at build time)");
    return NULL;
}

void ops_cuda_info(CudaInfo *info) {
    *info = (CudaInfo){0};
    snprintf(info->problem, sizeof info->problem, "this lora-train was built without CUDA (no nvcc at build time)");
}

// kernels/cuda_testing.h: never reached, the GPU tests stop at ops_cuda() without CUDA.
void cuda_attention_reference_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k,
                                      const void *v, const int32_t *seq_start, const AttentionRope *rope, int B, int T,
                                      int n_head, int n_kv_head, int head_dim, bool causal) {}
void cuda_attention_reference_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout,
                                       const void *out, const float *lse, const void *q, const void *k, const void *v,
                                       const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                       int n_kv_head, int head_dim, bool causal) {}
void cuda_mma_probe(const Ops *ops, float *d, const void *a, const void *b, const float *c, int mode) {}
