// Matrix products through cuBLASLt: bf16 operands, fp32 accumulation.
//
// cuBLASLt is column-major; a row-major (M, N) matrix is a column-major
// (N, M) one, so row-major out = op(a) @ op(b) is computed as the
// column-major out^T (N, M) = op(b)^T (N, K) @ op(a)^T (K, M). lt_layout.h
// derives every case (tests/test_ops.c checks it on the CPU). The weight
// gradient's D is fp32 with beta = 1: cuBLASLt reads C = D and writes
// alpha * product + D in place (C and D share a layout, as it requires).
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
} LtMatmul;

static void lt_matmul_destroy(LtMatmul *mm) {
    if (mm->preference) cublasCheck(cublasLtMatmulPreferenceDestroy(mm->preference));
    if (mm->d_layout) cublasCheck(cublasLtMatrixLayoutDestroy(mm->d_layout));
    if (mm->b_layout) cublasCheck(cublasLtMatrixLayoutDestroy(mm->b_layout));
    if (mm->a_layout) cublasCheck(cublasLtMatrixLayoutDestroy(mm->a_layout));
    if (mm->desc) cublasCheck(cublasLtMatmulDescDestroy(mm->desc));
}

// D = alpha * op(A) @ op(B) + beta * D as `g` describes (lt_layout.h), all
// column-major, A and B bf16 and D of type d_type; inputs[arg] is each operand's data.
static void lt_matmul(void *d, cudaDataType_t d_type, const LtGemm *g, const void *const inputs[2], float alpha,
                      float beta) {
    if (g->rows == 0 || g->cols == 0) return;
    LtMatmul mm = {};
    const void *a = inputs[g->A.arg], *b = inputs[g->B.arg];
    cublasOperation_t op_a = g->A.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t op_b = g->B.transposed ? CUBLAS_OP_T : CUBLAS_OP_N;
    uint64_t workspace = cuda_ctx.lt_workspace_bytes;
    uint32_t align_a = alignment_of(a), align_b = alignment_of(b), align_d = alignment_of(d);
    cublasLtMatmulHeuristicResult_t heuristic;
    int n_results = 0;
    bool ok = cublasCheck(cublasLtMatmulDescCreate(&mm.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) &&
              cublasCheck(cublasLtMatmulDescSetAttribute(mm.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a,
                                                         sizeof op_a)) &&
              cublasCheck(cublasLtMatmulDescSetAttribute(mm.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b,
                                                         sizeof op_b)) &&
              cublasCheck(cublasLtMatrixLayoutCreate(&mm.a_layout, CUDA_R_16BF, g->A.rows, g->A.cols,
                                                     (int64_t)g->A.rows)) &&
              cublasCheck(cublasLtMatrixLayoutCreate(&mm.b_layout, CUDA_R_16BF, g->B.rows, g->B.cols,
                                                     (int64_t)g->B.rows)) &&
              cublasCheck(cublasLtMatrixLayoutCreate(&mm.d_layout, d_type, g->rows, g->cols, (int64_t)g->rows)) &&
              cublasCheck(cublasLtMatmulPreferenceCreate(&mm.preference)) &&
              cublasCheck(cublasLtMatmulPreferenceSetAttribute(
                  mm.preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace)) &&
              cublasCheck(cublasLtMatmulPreferenceSetAttribute(
                  mm.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a)) &&
              cublasCheck(cublasLtMatmulPreferenceSetAttribute(
                  mm.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b)) &&
              cublasCheck(cublasLtMatmulPreferenceSetAttribute(
                  mm.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d)) &&
              cublasCheck(cublasLtMatmulPreferenceSetAttribute(
                  mm.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d)) &&
              cublasCheck(cublasLtMatmulAlgoGetHeuristic(cuda_ctx.lt, mm.desc, mm.a_layout, mm.b_layout,
                                                         mm.d_layout, mm.d_layout, mm.preference, 1,
                                                         &heuristic, &n_results));
    if (ok && n_results == 0) {
        record_failure(__FILE__, __LINE__, "cublasLtMatmulAlgoGetHeuristic", "no algorithm for this shape");
        ok = false;
    }
    if (ok)
        cublasCheck(cublasLtMatmul(cuda_ctx.lt, mm.desc, &alpha, a, mm.a_layout, b, mm.b_layout, &beta, d,
                                   mm.d_layout, d, mm.d_layout, &heuristic.algo, cuda_ctx.lt_workspace,
                                   cuda_ctx.lt_workspace_bytes, cuda_ctx.stream));
    lt_matmul_destroy(&mm);
}

// An empty sum (K = 0) leaves beta * out, which cuBLASLt may not compute.
static void scale_empty_product(void *out, cudaDataType_t type, size_t n, float beta) {
    if (type == CUDA_R_32F) {
        cuda_scale_f32((float *)out, beta, n);
    } else if (beta == 0.0f) {
        cudaCheck(cudaMemsetAsync(out, 0, n * sizeof(bf16), cuda_ctx.stream));
    } else {
        float *tmp = (float *)cuda_scratch(n * sizeof(float));
        if (!tmp) return;
        cuda_act_to_f32(tmp, out, n);
        cuda_scale_f32(tmp, beta, n);
        cuda_f32_to_act(out, tmp, n);
    }
}

// out (M, N) = alpha * op(a) @ op(b) + beta * out, op(a) (M, K), op(b) (K, N).
void cuda_matmul(void *out, const void *a, const void *b, int M, int N, int K, bool trans_a,
                 bool trans_b, float alpha, float beta) {
    if (K == 0) {
        scale_empty_product(out, CUDA_R_16BF, (size_t)M * N, beta);
        return;
    }
    LtGemm g = lt_gemm_matmul(M, N, K, trans_a, trans_b);
    const void *inputs[2] = {a, b};
    lt_matmul(out, CUDA_R_16BF, &g, inputs, alpha, beta);
}

// dweight (N, K) += alpha * dout^T (N, M) @ inp (M, K), into fp32.
void cuda_matmul_weight_grad(float *dweight, const void *dout, const void *inp, int M, int N, int K,
                             float alpha) {
    if (M == 0) return;
    LtGemm g = lt_gemm_weight_grad(M, N, K);
    const void *inputs[2] = {dout, inp};
    lt_matmul(dweight, CUDA_R_32F, &g, inputs, alpha, 1.0f);
}
