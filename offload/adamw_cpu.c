// The CPU AdamW of the offloaded shard: one pass over params, grads and both
// moments (16 bytes read and 12 written per parameter), threads over chunks,
// SIMD within.
#include <math.h>

#include "offload.h"

// torch.optim.AdamW, single-tensor path (see kernels/cpu): scalars formed in
// double, applied in fp32; m = lerp(m, g, 1 - beta1) from the nearer end.
void cpu_adamw(float *params, const float *grads, float *m, float *v, size_t n, float lr, const AdamWHyper *hyper,
               int step) {
    float decay = (float)(1.0 - (double)lr * hyper->weight_decay);
    float m_weight = (float)(1.0 - (double)hyper->beta1);
    float v_weight = (float)(1.0 - (double)hyper->beta2);
    float beta2 = hyper->beta2, eps = hyper->eps;
    float step_size = (float)(lr / (1.0 - pow(hyper->beta1, step)));
    float bias_correction2_sqrt = (float)sqrt(1.0 - pow(hyper->beta2, step));
    // torch's lerp picks its formula by the weight: two loops keep each branch-free.
    if (m_weight < 0.5f) {
        #pragma omp parallel for simd schedule(static) if (n >= 65536)
        for (size_t i = 0; i < n; i++) {
            float g = grads[i], mi = m[i] + m_weight * (g - m[i]), vi = v[i] * beta2 + v_weight * g * g;
            m[i] = mi;
            v[i] = vi;
            params[i] = params[i] * decay + -step_size * (mi / (sqrtf(vi) / bias_correction2_sqrt + eps));
        }
    } else {
        #pragma omp parallel for simd schedule(static) if (n >= 65536)
        for (size_t i = 0; i < n; i++) {
            float g = grads[i], mi = g - (g - m[i]) * (1.0f - m_weight), vi = v[i] * beta2 + v_weight * g * g;
            m[i] = mi;
            v[i] = vi;
            params[i] = params[i] * decay + -step_size * (mi / (sqrtf(vi) / bias_correction2_sqrt + eps));
        }
    }
}
