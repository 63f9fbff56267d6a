// kernels/cpu: fp32 matrix multiply, cache-blocked.
//
// The output is cut into TILE_M x TILE_N tiles, one per OpenMP iteration.
// For each TILE_K slice of the inner dimension, op(a) and op(b) are packed
// into small row-major tiles (which also resolves the four transpose cases),
// and the tile is accumulated with an axpy over contiguous rows of op(b) that
// the compiler vectorises: acc[i, :] += op(a)[i, k] * op(b)[k, :].
#include "cpu.h"

#define TILE_M 32
#define TILE_N 128
#define TILE_K 128

typedef struct Operand {
    const float *data;
    bool transposed; // stored (cols, rows) instead of (rows, cols)
    int rows, cols;  // of op(x)
} Operand;

static float operand_at(const Operand *x, int row, int col) {
    return x->transposed ? x->data[(size_t)col * x->rows + row] : x->data[(size_t)row * x->cols + col];
}

// tile (n_rows, n_cols), row stride TILE_N or TILE_K = op(x)[row0:, col0:]
static void pack_tile(float *tile, int stride, const Operand *x, int row0, int n_rows, int col0,
                      int n_cols) {
    for (int r = 0; r < n_rows; r++) {
        for (int c = 0; c < n_cols; c++) tile[r * stride + c] = operand_at(x, row0 + r, col0 + c);
    }
}

// acc (mb, nb) += a_tile (mb, kb) @ b_tile (kb, nb)
static void accumulate_tile(float acc[TILE_M][TILE_N], const float a_tile[TILE_M][TILE_K],
                            const float b_tile[TILE_K][TILE_N], int mb, int nb, int kb) {
    for (int i = 0; i < mb; i++) {
        for (int k = 0; k < kb; k++) {
            float a_ik = a_tile[i][k];
            #pragma omp simd
            for (int j = 0; j < nb; j++) acc[i][j] += a_ik * b_tile[k][j];
        }
    }
}

// out[i0:i0+mb, j0:j0+nb] = alpha * (op(a) @ op(b))[tile] + beta * out[tile]
static void matmul_tile(float *out, const Operand *a, const Operand *b, int N, int i0, int j0,
                        float alpha, float beta) {
    float acc[TILE_M][TILE_N] = {{0}};
    float a_tile[TILE_M][TILE_K];
    float b_tile[TILE_K][TILE_N];
    int K = a->cols;
    int mb = a->rows - i0 < TILE_M ? a->rows - i0 : TILE_M;
    int nb = N - j0 < TILE_N ? N - j0 : TILE_N;
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        int kb = K - k0 < TILE_K ? K - k0 : TILE_K;
        pack_tile(&a_tile[0][0], TILE_K, a, i0, mb, k0, kb);
        pack_tile(&b_tile[0][0], TILE_N, b, k0, kb, j0, nb);
        accumulate_tile(acc, a_tile, b_tile, mb, nb, kb);
    }
    for (int i = 0; i < mb; i++) {
        float *out_row = out + (size_t)(i0 + i) * N + j0;
        // beta == 0 overwrites, so an uninitialised (even NaN) out is fine
        for (int j = 0; j < nb; j++) {
            out_row[j] = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * out_row[j];
        }
    }
}

// out (M, N) = alpha * op(a) (M, K) @ op(b) (K, N) + beta * out
void cpu_matmul(void *out, const void *a, const void *b, int M, int N, int K, bool trans_a,
                bool trans_b, float alpha, float beta) {
    Operand op_a = {.data = a, .transposed = trans_a, .rows = M, .cols = K};
    Operand op_b = {.data = b, .transposed = trans_b, .rows = K, .cols = N};
    int m_tiles = (M + TILE_M - 1) / TILE_M;
    int n_tiles = (N + TILE_N - 1) / TILE_N;
    #pragma omp parallel for collapse(2) schedule(static) if ((size_t)M * N * K >= CPU_PARALLEL_MIN_WORK)
    for (int tm = 0; tm < m_tiles; tm++) {
        for (int tn = 0; tn < n_tiles; tn++) {
            matmul_tile(out, &op_a, &op_b, N, tm * TILE_M, tn * TILE_N, alpha, beta);
        }
    }
}

// dweight (N, K) += alpha * dout^T (N, M) @ inp (M, K)
void cpu_matmul_weight_grad(float *dweight, const void *dout, const void *inp, int M, int N, int K,
                            float alpha) {
    cpu_matmul(dweight, dout, inp, N, K, M, true, false, alpha, 1.0f);
}
