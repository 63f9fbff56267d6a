// Matrix products through cuBLASLt: bf16 operands, fp32 accumulation.
//
// cuBLASLt is column-major; a row-major (M, N) matrix is a column-major
// (N, M) one, so row-major out = op(a) @ op(b) is computed as the
// column-major out^T (N, M) = op(b)^T (N, K) @ op(a)^T (K, M). lt_layout.h
// derives every case (tests/test_ops.c checks it on the CPU). The weight
// gradient's D is fp32 with beta = 1: cuBLASLt reads C = D and writes
// alpha * product + D in place (C and D share a layout, as it requires).
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "lt_layout.h"

// Largest power of two, up to 256, that divides the address: cuBLASLt
// must only pick algorithms that this pointer's alignment allows.
static uint32_t alignment_of(const void *ptr) {
    uintptr_t address = (uintptr_t)ptr;
    uint32_t alignment = 256;
    while (alignment > 1 && address % alignment != 0) alignment /= 2;
    return alignment;
}

typedef struct LtMatmul {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a_layout, b_layout, d_layout;
    cublasLtMatmulPreference_t preference;
    cublasLtMatmulAlgo_t algo;  // the heuristic's first choice
} LtMatmul;

// What a GEMM's descriptors and algorithm depend on. Built with memset so
// that memcmp compares it (no stray padding bytes).
typedef struct LtKey {
    int64_t a_rows, a_cols, b_rows, b_cols, d_rows, d_cols;
    int32_t d_type, op_a, op_b;
    uint32_t align_a, align_b, align_d;
} LtKey;

// Made once per shape and kept for the process, as the cuBLASLt handle is:
// creating the descriptors and asking the heuristic on every call costs more
// host time than a small GEMM runs. A step has a few dozen shapes; past
// LT_CACHE_SIZE the oldest is replaced (a descriptor may be destroyed once
// cublasLtMatmul has returned).
#define LT_CACHE_SIZE 64

typedef struct LtCacheEntry {
    LtKey key;
    LtMatmul mm;
} LtCacheEntry;

struct LtCache {
    LtCacheEntry entries[LT_CACHE_SIZE];
    int used, next; // entries filled; the oldest, replaced next once all are
};

bool cuda_lt_cache_create(CudaContext *ctx, Error *err) {
    ctx->lt_cache = (LtCache *)calloc(1, sizeof *ctx->lt_cache);
    return ctx->lt_cache ? true : fail(err, "cannot allocate the cuBLASLt descriptor cache");
}

static void lt_matmul_destroy(LtMatmul *mm) {
    if (mm->preference) cublasCheck(cublasLtMatmulPreferenceDestroy(mm->preference));
    if (mm->d_layout) cublasCheck(cublasLtMatrixLayoutDestroy(mm->d_layout));
    if (mm->b_layout) cublasCheck(cublasLtMatrixLayoutDestroy(mm->b_layout));
    if (mm->a_layout) cublasCheck(cublasLtMatrixLayoutDestroy(mm->a_layout));
    if (mm->desc) cublasCheck(cublasLtMatmulDescDestroy(mm->desc));
    memset(mm, 0, sizeof *mm);
}

// The descriptors, layouts and algorithm for key; false (recorded) when
// cuBLASLt refuses one or has no algorithm for the shape.
static bool lt_matmul_create(CudaContext *ctx, LtMatmul *mm, const LtKey *key) {
    cublasOperation_t op_a = (cublasOperation_t)key->op_a, op_b = (cublasOperation_t)key->op_b;
    cudaDataType_t d_type = (cudaDataType_t)key->d_type;
    uint64_t workspace = ctx->lt_workspace_bytes;
    cublasLtMatmulHeuristicResult_t heuristic;
    int n_results = 0;
    bool ok =
        cublasCheck(cublasLtMatmulDescCreate(&mm->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) &&
        cublasCheck(cublasLtMatmulDescSetAttribute(mm->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a)) &&
        cublasCheck(cublasLtMatmulDescSetAttribute(mm->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b)) &&
        cublasCheck(cublasLtMatrixLayoutCreate(&mm->a_layout, CUDA_R_16BF, key->a_rows, key->a_cols, key->a_rows)) &&
        cublasCheck(cublasLtMatrixLayoutCreate(&mm->b_layout, CUDA_R_16BF, key->b_rows, key->b_cols, key->b_rows)) &&
        cublasCheck(cublasLtMatrixLayoutCreate(&mm->d_layout, d_type, key->d_rows, key->d_cols, key->d_rows)) &&
        cublasCheck(cublasLtMatmulPreferenceCreate(&mm->preference)) &&
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(mm->preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &workspace, sizeof workspace)) &&
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(mm->preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                         &key->align_a, sizeof key->align_a)) &&
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(mm->preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                         &key->align_b, sizeof key->align_b)) &&
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(mm->preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                         &key->align_d, sizeof key->align_d)) &&
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(mm->preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                         &key->align_d, sizeof key->align_d)) &&
        cublasCheck(cublasLtMatmulAlgoGetHeuristic(ctx->lt, mm->desc, mm->a_layout, mm->b_layout, mm->d_layout,
                                                   mm->d_layout, mm->preference, 1, &heuristic, &n_results));
    if (ok && n_results == 0) {
        record_failure(__FILE__, __LINE__, "cublasLtMatmulAlgoGetHeuristic", "no algorithm for this shape");
        ok = false;
    }
    if (ok) mm->algo = heuristic.algo;
    else lt_matmul_destroy(mm);
    return ok;
}

// key's cached descriptors, made on first use; NULL when they cannot be.
static const LtMatmul *lt_matmul_for(CudaContext *ctx, const LtKey *key) {
    LtCache *cache = ctx->lt_cache;
    for (int i = 0; i < cache->used; i++)
        if (memcmp(&cache->entries[i].key, key, sizeof *key) == 0) return &cache->entries[i].mm;
    int slot = cache->used;
    if (cache->used < LT_CACHE_SIZE)
        cache->used++;
    else
        slot = cache->next, cache->next = (cache->next + 1) % LT_CACHE_SIZE;
    LtCacheEntry *entry = &cache->entries[slot];
    lt_matmul_destroy(&entry->mm);
    entry->key = *key;
    if (lt_matmul_create(ctx, &entry->mm, key)) return &entry->mm;
    memset(&entry->key, 0, sizeof entry->key);  // never matches a real GEMM (its rows are > 0)
    return NULL;
}

// D = alpha * op(A) @ op(B) + beta * D as `g` describes (lt_layout.h), all
// column-major, A and B bf16 and D of type d_type; inputs[arg] is each operand's data.
static void lt_matmul(CudaContext *ctx, void *d, cudaDataType_t d_type, const LtGemm *g, const void *const inputs[2],
                      float alpha, float beta) {
    if (g->rows == 0 || g->cols == 0) return;
    const void *a = inputs[g->A.arg], *b = inputs[g->B.arg];
    LtKey key;
    memset(&key, 0, sizeof key);
    key.a_rows = g->A.rows, key.a_cols = g->A.cols, key.b_rows = g->B.rows, key.b_cols = g->B.cols;
    key.d_rows = g->rows, key.d_cols = g->cols, key.d_type = d_type;
    key.op_a = g->A.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
    key.op_b = g->B.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
    key.align_a = alignment_of(a), key.align_b = alignment_of(b), key.align_d = alignment_of(d);
    const LtMatmul *mm = lt_matmul_for(ctx, &key);
    if (mm)
        cublasCheck(cublasLtMatmul(ctx->lt, mm->desc, &alpha, a, mm->a_layout, b, mm->b_layout, &beta, d, mm->d_layout,
                                   d, mm->d_layout, &mm->algo, ctx->lt_workspace, ctx->lt_workspace_bytes,
                                   ctx->stream));
}

// An empty sum (K = 0) leaves beta * out, which cuBLASLt may not compute.
static void scale_empty_product(const Ops *ops, void *out, cudaDataType_t type, size_t n, float beta) {
    CudaContext *ctx = cuda_context(ops);
    if (type == CUDA_R_32F) {
        cuda_scale_f32(ops, (float *)out, beta, n);
    } else if (beta == 0.0f) {
        cudaCheck(cudaMemsetAsync(out, 0, n * sizeof(bf16), ctx->stream));
    } else {
        float *tmp = (float *)cuda_scratch(ctx, n * sizeof(float));
        if (!tmp) return;
        cuda_act_to_f32(ctx, tmp, out, n);
        cuda_scale_f32(ops, tmp, beta, n);
        cuda_f32_to_act(ctx, out, tmp, n);
    }
}

// out (M, N) = alpha * op(a) @ op(b) + beta * out, op(a) (M, K), op(b) (K, N).
void cuda_matmul(const Ops *ops, void *out, const void *a, const void *b, int M, int N, int K, bool trans_a,
                 bool trans_b, float alpha, float beta) {
    if (K == 0) {
        scale_empty_product(ops, out, CUDA_R_16BF, (size_t)M * N, beta);
        return;
    }
    LtGemm g = lt_gemm_matmul(M, N, K, trans_a, trans_b);
    const void *inputs[2] = {a, b};
    lt_matmul(cuda_context(ops), out, CUDA_R_16BF, &g, inputs, alpha, beta);
}

// dweight (N, K) += alpha * dout^T (N, M) @ inp (M, K), into fp32.
void cuda_matmul_weight_grad(const Ops *ops, float *dweight, const void *dout, const void *inp, int M, int N, int K,
                             float alpha) {
    if (M == 0) return;
    LtGemm g = lt_gemm_weight_grad(M, N, K);
    const void *inputs[2] = {dout, inp};
    lt_matmul(cuda_context(ops), dweight, CUDA_R_32F, &g, inputs, alpha, 1.0f);
}
