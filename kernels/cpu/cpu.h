// kernels/cpu private header: the fp32 CPU ops, gathered into the table by
// ops_cpu.c. Shapes and conventions are those of kernels/ops.h; every pointer
// is a float buffer in host memory.
#pragma once
#include "../ops.h"

// Loops with less work than this (elements, or multiply-adds for matmul and
// attention) run on one thread: an OpenMP region costs more than it saves there,
// and far more when the cores are shared.
#define CPU_PARALLEL_MIN_WORK 65536

// matmul.c
void cpu_matmul(const Ops *ops, void *out, const void *a, const void *b, int M, int N, int K, bool trans_a,
                bool trans_b, float alpha, float beta);
void cpu_matmul_weight_grad(const Ops *ops, float *dweight, const void *dout, const void *inp, int M, int N, int K,
                            float alpha);

// attention.c
void cpu_attention_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                           const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                           int n_kv_head, int head_dim);
void cpu_attention_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                            const float *lse, const void *q, const void *k, const void *v, const int32_t *seq_start,
                            const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, int head_dim);
void cpu_attention_full_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                                int B, int T, int n_head, int head_dim);
void cpu_attention_full_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                                 const float *lse, const void *q, const void *k, const void *v, int B, int T,
                                 int n_head, int head_dim);

// layers.c
void cpu_embedding_forward(const Ops *ops, void *out, const int32_t *ids, const void *table, int N, int C);
void cpu_rmsnorm_forward(const Ops *ops, void *out, float *rstd, const void *inp, const void *weight, int N, int C,
                         float eps);
void cpu_residual_rmsnorm_forward(const Ops *ops, void *out, float *rstd, void *x, const void *residual,
                                  const void *weight, int N, int C, float eps);
void cpu_rmsnorm_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, const void *weight,
                          const float *rstd, int N, int C);
void cpu_rope_forward(const Ops *ops, void *x, const int32_t *positions, const float *inv_freq, int N, int n_head,
                      int head_dim);
void cpu_rope_backward(const Ops *ops, void *dx, const int32_t *positions, const float *inv_freq, int N, int n_head,
                       int head_dim);
void cpu_swiglu_forward(const Ops *ops, void *out, const void *gate, const void *up, size_t n);
void cpu_swiglu_backward(const Ops *ops, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                         size_t n);
void cpu_dropout_forward(const Ops *ops, void *out, const void *inp, size_t n, float p, uint64_t seed, uint64_t offset);
void cpu_dropout_backward(const Ops *ops, void *dinp, const void *dout, size_t n, float p, uint64_t seed,
                          uint64_t offset);
void cpu_cross_entropy(const Ops *ops, float *loss_sum, void *dlogits, const void *logits, const int32_t *targets,
                       int N, int V, float grad_scale);

// dequant.c
void cpu_dequantize_blockwise_u8(const Ops *ops, float *out, const uint8_t *q, const float *code, const float *absmax,
                                 float offset, size_t n, int blocksize);
void cpu_dequantize_nf4(const Ops *ops, void *out, const uint8_t *packed, const float *code, const float *absmax,
                        size_t n);
// vision_ops.c
void cpu_layernorm_forward(const Ops *ops, void *out, float *mean, float *rstd, const void *inp, const void *weight,
                           const void *bias, int N, int C, float eps);
void cpu_layernorm_backward(const Ops *ops, void *dinp, float *dweight, float *dbias, const void *dout, const void *inp,
                            const void *weight, const float *mean, const float *rstd, int N, int C);
void cpu_gelu_forward(const Ops *ops, void *out, const void *inp, size_t n);
void cpu_gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
void cpu_quick_gelu_forward(const Ops *ops, void *out, const void *inp, size_t n);
void cpu_quick_gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
void cpu_gelu_tanh_forward(const Ops *ops, void *out, const void *inp, size_t n);
void cpu_gelu_tanh_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
void cpu_bias_add(const Ops *ops, void *out, const void *bias, int N, int C);
void cpu_scale_columns(const Ops *ops, void *x, const void *scale, int N, int C);
void cpu_bias_backward(const Ops *ops, float *dbias, const void *dout, int N, int C);
void cpu_scatter_rows(const Ops *ops, void *out, const int32_t *rows, const void *src, int R, int C);
void cpu_copy_columns(const Ops *ops, void *dst, int dst_cols, int dst_col0, const void *src, int src_cols,
                      int src_col0, int n_cols, int rows);
void cpu_patch_embed_forward(const Ops *ops, void *out, const void *images, const void *weight, int B, int channels,
                             int image_size, int patch, int D);
