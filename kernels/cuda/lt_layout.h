// kernels/cuda private: the column-major product cuBLASLt is asked for, for
// each row-major op of ops.h. Host arithmetic only (no CUDA types), so
// tests/test_ops.c checks it on the CPU against the CPU backend.
//
// A row-major (R, C) matrix is, byte for byte, a column-major (C, R) one with
// leading dimension C: its transpose. So row-major out = op(a) op(b) is
// column-major out^T = op(b)^T op(a)^T, and cuBLASLt's A is our b, its B our a:
//
//   matmul, out (M, N), op(a) (M, K), op(b) (K, N):
//     D (N, M), ld N   = out as stored
//     A = b: op(b)^T (N, K). b stored (K, N) row-major is column-major (N, K),
//            ld N: no transpose. b stored (N, K) (trans_b) is column-major
//            (K, N), ld K: transposed.
//     B = a: op(a)^T (K, M). a stored (M, K) is column-major (K, M), ld K: no
//            transpose. a stored (K, M) (trans_a) is column-major (M, K), ld M:
//            transposed.
//   matmul_weight_grad, dweight (N, K) += dout^T (N, M) inp (M, K):
//     D (K, N), ld K   = dweight as stored; dweight^T = inp^T dout
//     A = inp: inp stored (M, K) is column-major (K, M), ld K: no transpose.
//     B = dout: dout stored (M, N) is column-major (N, M), ld N: transposed to (M, N).
#pragma once
#include <stdbool.h>
#include <stdint.h>

// One operand as cuBLASLt sees it: stored column-major (rows, cols) with
// leading dimension rows, used as itself or transposed; `arg` says which
// input of the op it is: 0 the first (matmul's a, the weight grad's dout), 1
// the second (b, inp).
typedef struct LtOperand {
    int arg;
    bool transposed;
    uint64_t rows, cols;
} LtOperand;

// D (rows, cols), leading dimension rows, = alpha op(A) op(B) + beta D, the inner dimension `inner`.
typedef struct LtGemm {
    LtOperand A, B;
    uint64_t rows, cols, inner;
} LtGemm;

static inline LtOperand lt_operand(int arg, bool transposed, uint64_t op_rows, uint64_t op_cols) {
    LtOperand x = {.arg = arg, .transposed = transposed};
    x.rows = transposed ? op_cols : op_rows;
    x.cols = transposed ? op_rows : op_cols;
    return x;
}

// out (M, N) = op(a) (M, K) @ op(b) (K, N), row-major.
static inline LtGemm lt_gemm_matmul(int M, int N, int K, bool trans_a, bool trans_b) {
    LtGemm g = {.rows = (uint64_t)N, .cols = (uint64_t)M, .inner = (uint64_t)K};
    g.A = lt_operand(1, trans_b, g.rows, g.inner);
    g.B = lt_operand(0, trans_a, g.inner, g.cols);
    return g;
}

// dweight (N, K) += dout^T @ inp, dout (M, N), inp (M, K), row-major.
static inline LtGemm lt_gemm_weight_grad(int M, int N, int K) {
    LtGemm g = {.rows = (uint64_t)K, .cols = (uint64_t)N, .inner = (uint64_t)M};
    g.A = lt_operand(1, false, g.rows, g.inner);
    g.B = lt_operand(0, true, g.inner, g.cols);
    return g;
}
