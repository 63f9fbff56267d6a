// kernels/cuda private: the shared context, sticky error reporting, bf16 helpers
// and the op functions each .cu file defines for the table in ops_cuda.cu.
#pragma once
#include <math.h>

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

extern "C" {
#include "../ops.h"
}

typedef __nv_bfloat16 bf16;

// Every cudaMalloc of a context with its size, so the live total and its high
// water (peak_bytes) are exact.
typedef struct LiveAllocation {
    void *ptr;
    size_t bytes;
} LiveAllocation;
typedef struct AllocationTable {
    LiveAllocation *live;
    size_t n_live, capacity, live_bytes, peak_bytes;
} AllocationTable;

// One stream, one cuBLASLt handle and workspace, one fp32 staging buffer for
// host <-> device conversions, and a scratch buffer that grows on demand;
// a copy stream for download_async; pinned staging for upload_async.
typedef struct CudaContext {
    cudaStream_t stream;
    cudaStream_t copy_stream;
    cudaEvent_t compute_done;  // recorded on stream for a copy to wait on
    cublasLtHandle_t lt;
    void *lt_workspace;
    size_t lt_workspace_bytes;
    float *staging;         // device fp32, staging_floats long
    size_t staging_floats;
    void *scratch;
    size_t scratch_bytes;
    float *partials;  // CUDA_REDUCE_PARTIALS floats: per-block sums before their fixed-order total
    // upload_async: two halves of CUDA_UPLOAD_STAGING_BYTES pinned host
    // memory filled in turn; upload_done[h] is recorded after each copy out
    // of half h.
    unsigned char *upload_staging;
    int upload_half;
    size_t upload_used;  // bytes taken in the current half
    cudaEvent_t upload_done[2];
    int sm_count;
    struct LtCache *lt_cache;
    AllocationTable allocations; // cuBLASLt descriptors and algorithm per GEMM shape (matmul.cu)
} CudaContext;

// The context an op works in: the state of the handle it was called through.
static inline CudaContext *cuda_context(const Ops *ops) { return (CudaContext *)ops->state; }

// The op functions return void: the first failure is recorded here and
// reported by synchronize/check. Both helpers return true when call succeeded.
void record_failure(const char *file, int line, const char *what, const char *why);
bool cuda_check(cudaError_t status, const char *file, int line, const char *what);
bool cublas_check(cublasStatus_t status, const char *file, int line, const char *what);
#define cudaCheck(call) cuda_check((call), __FILE__, __LINE__, #call)
#define cublasCheck(call) cublas_check((call), __FILE__, __LINE__, #call)
#define launchCheck(kernel_name) cuda_check(cudaGetLastError(), __FILE__, __LINE__, kernel_name)

// Device scratch of at least `bytes`, valid until the next call; NULL on failure.
void *cuda_scratch(CudaContext *ctx, size_t bytes);
// The empty cache of cuBLASLt descriptors, made with the context.
bool cuda_lt_cache_create(CudaContext *ctx, Error *err);

static inline unsigned int ceil_div(size_t a, size_t b) { return (unsigned int)((a + b - 1) / b); }
// Grid of `threads`-wide blocks covering n elements, capped for grid-stride loops.
static inline unsigned int grid_for(const CudaContext *ctx, size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    size_t cap = (size_t)ctx->sm_count * 32;
    if (blocks > cap) blocks = cap;
    return blocks > 0 ? (unsigned int)blocks : 1u;
}

// for (size_t i ...) over [0, n), each thread striding by the whole grid.
#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

// for (size_t i ...) over [begin, n): the scalar tail after a packed loop.
#define GRID_STRIDE_FROM(i, begin, n)                                                         \
    for (size_t i = (begin) + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);       \
         i += (size_t)gridDim.x * blockDim.x)

// Eight bf16 moved by one 128-bit load or store. A kernel takes the packed path
// where its pointers are 16-byte aligned (packs_of) and finishes the rest one
// element at a time.
typedef struct __align__(16) Bf16x8 {
    bf16 v[8];
} Bf16x8;

__device__ __forceinline__ bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// Packs of 8 in n elements: n / 8 when every pointer is 16-byte aligned, else 0.
__device__ __forceinline__ size_t packs_of(size_t n, const void *a, const void *b, const void *c = NULL,
                                           const void *d = NULL) {
    bool aligned = aligned16(a) && aligned16(b) && (!c || aligned16(c)) && (!d || aligned16(d));
    return aligned ? n / 8 : 0;
}

// Pack `pack` of p (16-byte aligned): one ld.v4 / st.v4 (global or shared memory). The emulation
// copies bytes instead, as g++ has no licence to read bf16 objects through a struct, after checking
// the alignment a GPU faults without.
__device__ __forceinline__ Bf16x8 load8(const bf16 *p, size_t pack) {
#ifdef LORA_TRAIN_CUDA_EMU
    Bf16x8 x;
    ::emu::check_vector_access(p + pack * 8, sizeof x);
    memcpy(&x, p + pack * 8, sizeof x);
    return x;
#else
    return ((const Bf16x8 *)p)[pack];
#endif
}
__device__ __forceinline__ void store8(bf16 *p, size_t pack, Bf16x8 x) {
#ifdef LORA_TRAIN_CUDA_EMU
    ::emu::check_vector_access(p + pack * 8, sizeof x);
    memcpy(p + pack * 8, &x, sizeof x);
#else
    ((Bf16x8 *)p)[pack] = x;
#endif
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
    return x;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float x) {
    __shared__ float partial[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    x = warp_sum(x);
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    x = lane < n_warps ? partial[lane] : 0.0f;
    return warp_sum(x);
}
// Called at most once per kernel (cross-entropy's row max), so nothing can
// still be reading partial when it is written: unlike block_sum, no barrier
// first. A kernel that calls it twice must add one between the calls
// (scripts/cuda_mutants.sh found the barrier redundant; the emulated
// backend's tests catch a missing one, as they did for block_sum's).
__device__ __forceinline__ float block_max(float x) {
    __shared__ float partial[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    x = warp_max(x);
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    x = lane < n_warps ? partial[lane] : -INFINITY;
    return warp_max(x);
}

// ---- op functions, defined in the .cu files beside ops_cuda.cu -----------
// matmul.cu
void cuda_matmul(const Ops *ops, void *out, const void *a, const void *b, int M, int N, int K, bool trans_a,
                 bool trans_b, float alpha, float beta);
void cuda_matmul_weight_grad(const Ops *ops, float *dweight, const void *dout, const void *inp, int M, int N, int K,
                             float alpha);
// layers.cu
void cuda_add_inplace(const Ops *ops, void *a, const void *b, size_t n);
void cuda_params_to_act(const Ops *ops, void *dst_act, const float *params, size_t n);
void cuda_f32_to_act(CudaContext *ctx, void *dst_act, const float *src, size_t n);
void cuda_act_to_f32(CudaContext *ctx, float *dst, const void *src_act, size_t n);
void cuda_embedding_forward(const Ops *ops, void *out, const int32_t *ids, const void *table, int N, int C);
void cuda_rmsnorm_forward(const Ops *ops, void *out, float *rstd, const void *inp, const void *weight, int N, int C,
                          float eps);
void cuda_residual_rmsnorm_forward(const Ops *ops, void *out, float *rstd, void *x, const void *residual,
                                   const void *weight, int N, int C, float eps);
void cuda_rmsnorm_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, const void *weight,
                           const float *rstd, int N, int C);
void cuda_rope_forward(const Ops *ops, void *x, const int32_t *positions, const float *inv_freq, int N, int n_head,
                       int head_dim);
void cuda_rope_backward(const Ops *ops, void *dx, const int32_t *positions, const float *inv_freq, int N, int n_head,
                        int head_dim);
void cuda_swiglu_forward(const Ops *ops, void *out, const void *gate, const void *up, size_t n);
void cuda_swiglu_backward(const Ops *ops, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                          size_t n);
void cuda_dropout_forward(const Ops *ops, void *out, const void *inp, size_t n, float p, uint64_t seed,
                          uint64_t offset);
void cuda_dropout_backward(const Ops *ops, void *dinp, const void *dout, size_t n, float p, uint64_t seed,
                           uint64_t offset);
// attention.cu
void cuda_attention_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                            const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                            int n_kv_head, int head_dim);
void cuda_attention_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                             const float *lse, const void *q, const void *k, const void *v, const int32_t *seq_start,
                             const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, int head_dim);
void cuda_attention_full_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                                 int B, int T, int n_head, int head_dim);
void cuda_attention_full_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                                  const float *lse, const void *q, const void *k, const void *v, int B, int T,
                                  int n_head, int head_dim);
// flash_attention.cu: the tensor-core attention attention.cu dispatches to (head_dim 64, 80, 96, 128);
// D (B, n_head, T) = rowsum(dout * out); causal false (bidirectional) takes seq_start NULL. Supported: head_dim
// 64, 80, 96 or 128 and q, k, v, dout (NULL for the forward) 16-byte aligned.
bool cuda_flash_attention_supported(int head_dim, const void *q, const void *k, const void *v, const void *dout);
void cuda_flash_attention_forward(CudaContext *ctx, bf16 *out, float *lse, const bf16 *q, const bf16 *k,
                                  const bf16 *v, const int32_t *seq_start, const AttentionRope *rope, int B, int T,
                                  int n_head, int n_kv_head, int head_dim, bool causal);
void cuda_flash_attention_backward(CudaContext *ctx, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout,
                                   const float *lse, const float *D, const bf16 *q, const bf16 *k, const bf16 *v,
                                   const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                   int n_kv_head, int head_dim, bool causal);
// loss_optim.cu
void cuda_cross_entropy(const Ops *ops, float *loss_sum, void *dlogits, const void *logits, const int32_t *targets,
                        int N, int V, float grad_scale);
void cuda_sum_squares(const Ops *ops, float *out, const float *g, size_t n);
void cuda_scale_f32(const Ops *ops, float *x, float s, size_t n);
void cuda_clip_by_norm(const Ops *ops, float *x, size_t n, const float *sum_squares, float max_norm);
void cuda_adamw(const Ops *ops, float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int step, const float *skip_sum_squares,
                float norm_limit);

// dequant.cu
void cuda_dequantize_blockwise_u8(const Ops *ops, float *out, const uint8_t *q, const float *code, const float *absmax,
                                  float offset, size_t n, int blocksize);
void cuda_dequantize_nf4(const Ops *ops, void *out, const uint8_t *packed, const float *code, const float *absmax,
                         size_t n);
// vision_ops.cu
void cuda_layernorm_forward(const Ops *ops, void *out, float *mean, float *rstd, const void *inp, const void *weight,
                            const void *bias, int N, int C, float eps);
void cuda_layernorm_backward(const Ops *ops, void *dinp, float *dweight, float *dbias, const void *dout,
                             const void *inp, const void *weight, const float *mean, const float *rstd, int N, int C);
void cuda_gelu_forward(const Ops *ops, void *out, const void *inp, size_t n);
void cuda_gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
void cuda_quick_gelu_forward(const Ops *ops, void *out, const void *inp, size_t n);
void cuda_quick_gelu_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
void cuda_gelu_tanh_forward(const Ops *ops, void *out, const void *inp, size_t n);
void cuda_gelu_tanh_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
void cuda_bias_add(const Ops *ops, void *out, const void *bias, int N, int C);
void cuda_scale_columns(const Ops *ops, void *x, const void *scale, int N, int C);
void cuda_bias_backward(const Ops *ops, float *dbias, const void *dout, int N, int C);
void cuda_scatter_rows(const Ops *ops, void *out, const int32_t *rows, const void *src, int R, int C);
void cuda_copy_columns(const Ops *ops, void *dst, int dst_cols, int dst_col0, const void *src, int src_cols,
                       int src_col0, int n_cols, int rows);
void cuda_patch_embed_forward(const Ops *ops, void *out, const void *images, const void *weight, int B, int channels,
                              int image_size, int patch, int D);
