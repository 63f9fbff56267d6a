// Cross-entropy (forward and backward fused) and the fp32 optimizer kernels.
#include <math.h>

#include "cuda_common.cuh"

#define THREADS 256
#define CE_THREADS 512
#define IGNORE_INDEX (-100)

// ----------------------------------------------------------------------------
// cross-entropy, one block per row of V logits:
// lse = log sum_c exp(x_c), loss = lse - x[target],
// dlogits_c = grad_scale * (exp(x_c - lse) - [c == target]).
// Pass 1 is an online softmax (per-thread running max and sum, merged over
// the block); pass 2 writes dlogits. Every read of a row's logits happens
// before the block reductions' barriers, every write after, so dlogits may
// alias logits. Targets outside [0, V) (-100 among them) are ignored rows.

__global__ void cross_entropy_kernel(float *loss_sum, bf16 *dlogits, const bf16 *logits, const int32_t *targets,
                                     int V, float grad_scale) {
    size_t row = blockIdx.x;
    const bf16 *x = logits + row * V;
    int target = targets[row];
    bool kept = target >= 0 && target < V;
    float target_logit = kept ? __bfloat162float(x[target]) : 0.0f;

    float thread_max = -INFINITY, thread_sum = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float xc = __bfloat162float(x[c]);
        if (xc > thread_max) {
            thread_sum = thread_sum * expf(thread_max - xc) + 1.0f;
            thread_max = xc;
        } else if (xc != -INFINITY) {  // exp(-inf) adds 0; exp(-inf - -inf) would be NaN
            thread_sum += expf(xc - thread_max);
        }
    }
    float row_max = block_max(thread_max);
    float rescaled = thread_max == -INFINITY ? 0.0f : thread_sum * expf(thread_max - row_max);
    float lse = row_max + logf(block_sum(rescaled));
    if (kept && threadIdx.x == 0) atomicAdd(loss_sum, lse - target_logit);
    if (!dlogits) return;

    bf16 *dx = dlogits + row * V;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float grad = kept ? grad_scale * (expf(__bfloat162float(x[c]) - lse) - (c == target ? 1.0f : 0.0f)) : 0.0f;
        dx[c] = __float2bfloat16_rn(grad);
    }
}

void cuda_cross_entropy(float *loss_sum, void *dlogits, const void *logits, const int32_t *targets, int N, int V,
                        float grad_scale) {
    if (N == 0 || V == 0) return;
    cross_entropy_kernel<<<N, CE_THREADS, 0, cuda_ctx.stream>>>(loss_sum, (bf16 *)dlogits, (const bf16 *)logits,
                                                                targets, V, grad_scale);
    launchCheck("cross_entropy_kernel");
}

// ----------------------------------------------------------------------------
// *out += sum(g^2): a grid-stride partial per thread, a block sum, one atomicAdd per block

__global__ void sum_squares_kernel(float *out, const float *g, size_t n) {
    float partial = 0.0f;
    GRID_STRIDE(i, n) partial += g[i] * g[i];
    float block_total = block_sum(partial);
    if (threadIdx.x == 0) atomicAdd(out, block_total);
}

__global__ void scale_f32_kernel(float *x, float s, size_t n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

void cuda_sum_squares(float *out, const float *g, size_t n) {
    if (n == 0) return;
    sum_squares_kernel<<<grid_for(n, THREADS), THREADS, 0, cuda_ctx.stream>>>(out, g, n);
    launchCheck("sum_squares_kernel");
}

void cuda_scale_f32(float *x, float s, size_t n) {
    if (n == 0) return;
    scale_f32_kernel<<<grid_for(n, THREADS), THREADS, 0, cuda_ctx.stream>>>(x, s, n);
    launchCheck("scale_f32_kernel");
}

// ----------------------------------------------------------------------------
// AdamW as torch.optim.AdamW (foreach=False, capturable=False):
// p *= 1 - lr wd;  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
// p -= step_size * m / (sqrt(v) / bc2_sqrt + eps),
// step_size = lr / (1 - beta1^step), bc2_sqrt = sqrt(1 - beta2^step), in double on the host.

__global__ void adamw_kernel(float *params, const float *grads, float *m, float *v, size_t n, float decay,
                             float beta1, float beta2, float eps, float step_size, float bc2_sqrt) {
    GRID_STRIDE(i, n) {
        float g = grads[i];
        float m_i = m[i] + (1.0f - beta1) * (g - m[i]);
        float v_i = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = m_i;
        v[i] = v_i;
        params[i] = params[i] * decay - step_size * m_i / (sqrtf(v_i) / bc2_sqrt + eps);
    }
}

void cuda_adamw(float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int step) {
    if (n == 0) return;
    double step_size = (double)lr / (1.0 - pow((double)beta1, step));
    double bc2_sqrt = sqrt(1.0 - pow((double)beta2, step));
    adamw_kernel<<<grid_for(n, THREADS), THREADS, 0, cuda_ctx.stream>>>(
        params, grads, m, v, n, (float)(1.0 - (double)lr * weight_decay), beta1, beta2, eps, (float)step_size, (float)bc2_sqrt);
    launchCheck("adamw_kernel");
}
