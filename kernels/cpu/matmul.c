// kernels/cpu: fp32 matrix multiply through OpenBLAS's sgemm.
//
// Debian's OpenBLAS picks its kernels for the CPU at run time (DYNAMIC_ARCH),
// so one binary is fast on every x86-64 and arm64 machine. The OpenMP build of
// it (libopenblas-openmp-dev) shares the project's OpenMP threads: one pool,
// OMP_NUM_THREADS for both, and an sgemm called inside a parallel region runs
// on its caller's thread. sgemm accumulates the inner dimension in blocks, so
// a long K (the vocabulary in the lm_head's backward) is not one running sum.
#include <cblas.h>

#include "cpu.h"

static int at_least_one(int n) { return n > 1 ? n : 1; }

// out (M, N) = alpha * op(a) (M, K) @ op(b) (K, N) + beta * out, all row-major;
// a is stored (K, M) when trans_a, b (N, K) when trans_b. beta == 0 does not
// read out (BLAS's rule), so an uninitialised (even NaN) out is fine.
void cpu_matmul(const Ops *ops, void *out, const void *a, const void *b, int M, int N, int K, bool trans_a,
                bool trans_b, float alpha, float beta) {
    if (M == 0 || N == 0) return;
    int lda = at_least_one(trans_a ? M : K), ldb = at_least_one(trans_b ? K : N);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, a, lda, b, ldb, beta, out, N);
}

// dweight (N, K) += alpha * dout^T (N, M) @ inp (M, K)
void cpu_matmul_weight_grad(const Ops *ops, float *dweight, const void *dout, const void *inp, int M, int N, int K,
                            float alpha) {
    cpu_matmul(ops, dweight, dout, inp, N, K, M, true, false, alpha, 1.0f);
}
