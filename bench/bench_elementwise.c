// The CPU backend's element-wise and row ops at bench_train's shapes (preset
// small, 4 x 256 tokens: N = 1024, hidden 256, MLP 688, 8 / 4 heads of 32;
// the cross-entropy also at preset medium's 512 x 32000): microseconds per
// call, the best of 15 runs of 20 calls, so other load on the machine shows
// less. Run it with OMP_NUM_THREADS=1 to compare code, not thread scheduling.
//   bench_elementwise
#include <stdio.h>
#include <stdlib.h>

#include "kernels/ops.h"

#define RUNS 15
#define CALLS 20

#define BEST(label, call)                                                   \
    do {                                                                    \
        double best = 1e30;                                                 \
        for (int run = 0; run < RUNS; run++) {                              \
            double start = time_seconds();                                  \
            for (int k = 0; k < CALLS; k++) call;                           \
            double seconds = (time_seconds() - start) / CALLS;              \
            best = seconds < best ? seconds : best;                         \
        }                                                                   \
        printf("| %s | %.1f |\n", label, 1e6 * best);                       \
    } while (0)

static float *values(size_t n) {
    float *x = malloc(n * sizeof(float));
    if (!x) exit(1);
    for (size_t i = 0; i < n; i++) x[i] = 0.001f * (float)(i % 1999) - 1.0f;
    return x;
}

int main(void) {
    enum { N = 1024, C = 256, MLP = 688, HEADS = 8, KV_HEADS = 4, HD = 32, ROWS = 512, VOCAB = 32000 };
    const Ops *ops = ops_cpu();
    size_t n_hidden = (size_t)N * C, n_mlp = (size_t)N * MLP, n_logits = (size_t)ROWS * VOCAB;
    float *a = values(n_mlp), *b = values(n_mlp), *c = values(n_mlp), *d = values(n_mlp), *e = values(n_mlp);
    float *weight = values(C), *rstd = values(N), *inv_freq = values(HD / 2), *logits = values(n_logits);
    float *dlogits = values(n_logits), loss = 0.0f;
    int32_t positions[N], targets[N], vocab_targets[ROWS];
    for (int i = 0; i < N; i++) positions[i] = i % 256, targets[i] = (i * 31) % 262;
    for (int i = 0; i < ROWS; i++) vocab_targets[i] = (i * 7919) % VOCAB;
    rope_inverse_frequencies(inv_freq, HD, 10000.0f, NULL);
    printf("| op and shape | us per call |\n|---|---|\n");
    BEST("dropout_forward 1024 x 256", ops->dropout_forward(ops, a, b, n_hidden, 0.05f, 7, 0));
    BEST("dropout_forward 1024 x 688", ops->dropout_forward(ops, a, b, n_mlp, 0.05f, 7, 0));
    BEST("dropout_backward 1024 x 256", ops->dropout_backward(ops, a, b, n_hidden, 0.05f, 7, 0));
    BEST("rmsnorm_forward 1024 x 256", ops->rmsnorm_forward(ops, a, rstd, b, weight, N, C, 1e-5f));
    BEST("rmsnorm_backward 1024 x 256", ops->rmsnorm_backward(ops, a, c, b, weight, rstd, N, C));
    BEST("add_inplace + rmsnorm_forward 1024 x 256",
         (ops->add_inplace(ops, c, b, n_hidden), ops->rmsnorm_forward(ops, a, rstd, c, weight, N, C, 1e-5f)));
    BEST("residual_rmsnorm_forward 1024 x 256", ops->residual_rmsnorm_forward(ops, a, rstd, c, b, weight, N, C, 1e-5f));
    BEST("swiglu_forward 1024 x 688", ops->swiglu_forward(ops, a, b, c, n_mlp));
    BEST("swiglu_backward 1024 x 688", ops->swiglu_backward(ops, a, d, e, b, c, n_mlp));
    BEST("rope_forward 1024 x 8 x 32", ops->rope_forward(ops, a, positions, inv_freq, N, HEADS, HD));
    BEST("rope_backward 1024 x 4 x 32", ops->rope_backward(ops, a, positions, inv_freq, N, KV_HEADS, HD));
    BEST("add_inplace 1024 x 256", ops->add_inplace(ops, a, b, n_hidden));
    BEST("sum_squares 295936", ops->sum_squares(ops, &loss, b, 295936));
    BEST("cross_entropy 1024 x 262", ops->cross_entropy(ops, &loss, dlogits, logits, targets, N, 262, 1e-3f));
    BEST("cross_entropy 512 x 32000", ops->cross_entropy(ops, &loss, dlogits, logits, vocab_targets, ROWS, VOCAB, 1e-3f));
    free(a), free(b), free(c), free(d), free(e), free(weight), free(rstd), free(inv_freq), free(logits), free(dlogits);
    return 0;
}
