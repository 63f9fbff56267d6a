// Cross-entropy (forward and backward fused) and the fp32 optimizer kernels.
#include <math.h>

#include "cuda_common.cuh"

#define THREADS 256
#define CE_THREADS 512
#define REDUCE_THREADS 1024

// ----------------------------------------------------------------------------
// Sums that are the same bits on every run: no float atomics. Each block
// writes its partial; one block then adds the partials in a fixed order.

// *out += sum(x[0..n)): thread t sums x[t], x[t + blockDim], ... in order,
// then the block sums the threads in a fixed tree. One block.
__global__ void add_sum_kernel(float *out, const float *x, size_t n) {
    float partial = 0.0f;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) partial += x[i];
    float total = block_sum(partial);
    if (threadIdx.x == 0) *out += total;
}

static void add_sum(CudaContext *ctx, float *out, const float *x, size_t n) {
    add_sum_kernel<<<1, REDUCE_THREADS, 0, ctx->stream>>>(out, x, n);
    launchCheck("add_sum_kernel");
}

// ----------------------------------------------------------------------------
// cross-entropy, one block per row of V logits:
// lse = log sum_c exp(x_c), loss = lse - x[target],
// dlogits_c = grad_scale * (exp(x_c - lse) - [c == target]).
// Pass 1 is an online softmax (per-thread running max and sum, merged over
// the block); pass 2 writes dlogits. Every read of a row's logits happens
// before the block reductions' barriers, every write after, so dlogits may
// alias logits. Targets outside [0, V) (-100 among them) are ignored rows
// (loss 0). Each row's loss goes to row_loss; add_sum adds them to loss_sum.

__global__ void cross_entropy_kernel(float *row_loss, bf16 *dlogits, const bf16 *logits, const int32_t *targets,
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
    if (threadIdx.x == 0) row_loss[row] = kept ? lse - target_logit : 0.0f;
    if (!dlogits) return;

    bf16 *dx = dlogits + row * V;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float grad = kept ? grad_scale * (expf(__bfloat162float(x[c]) - lse) - (c == target ? 1.0f : 0.0f)) : 0.0f;
        dx[c] = __float2bfloat16_rn(grad);
    }
}

// The row losses take N floats of scratch (within what attention's backward
// reserves for a batch of at least N tokens).
void cuda_cross_entropy(const Ops *ops, float *loss_sum, void *dlogits, const void *logits, const int32_t *targets,
                        int N, int V, float grad_scale) {
    CudaContext *ctx = cuda_context(ops);
    if (N == 0 || V == 0) return;
    float *row_loss = (float *)cuda_scratch(ctx, (size_t)N * sizeof(float));
    if (!row_loss) return;
    cross_entropy_kernel<<<N, CE_THREADS, 0, ctx->stream>>>(row_loss, (bf16 *)dlogits, (const bf16 *)logits, targets, V,
                                                            grad_scale);
    if (!launchCheck("cross_entropy_kernel")) return;
    add_sum(ctx, loss_sum, row_loss, (size_t)N);
}

// ----------------------------------------------------------------------------
// *out += sum(g^2): a grid-stride partial per thread, a block sum per block
// into ctx->partials, then add_sum over the blocks

__global__ void sum_squares_kernel(float *partials, const float *g, size_t n) {
    float partial = 0.0f;
    GRID_STRIDE(i, n) partial += g[i] * g[i];
    float block_total = block_sum(partial);
    if (threadIdx.x == 0) partials[blockIdx.x] = block_total;
}

__global__ void scale_f32_kernel(float *x, float s, size_t n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

// coef = max_norm / (sqrt(*sum_squares) + 1e-6) in fp32 (clip_grads' arithmetic), read by every thread:
// x *= coef when coef < 1, so the host never needs the norm.
__global__ void clip_by_norm_kernel(float *x, size_t n, const float *sum_squares, float max_norm) {
    float clip_coef = max_norm / (sqrtf(*sum_squares) + 1e-6f);
    if (!(clip_coef < 1.0f)) return;
    GRID_STRIDE(i, n) x[i] *= clip_coef;
}

void cuda_sum_squares(const Ops *ops, float *out, const float *g, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    unsigned int blocks = grid_for(ctx, n, THREADS);
    if (blocks > CUDA_REDUCE_PARTIALS) blocks = CUDA_REDUCE_PARTIALS;
    sum_squares_kernel<<<blocks, THREADS, 0, ctx->stream>>>(ctx->partials, g, n);
    if (!launchCheck("sum_squares_kernel")) return;
    add_sum(ctx, out, ctx->partials, blocks);
}

void cuda_scale_f32(const Ops *ops, float *x, float s, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    scale_f32_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>(x, s, n);
    launchCheck("scale_f32_kernel");
}

void cuda_clip_by_norm(const Ops *ops, float *x, size_t n, const float *sum_squares, float max_norm) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    clip_by_norm_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>(x, n, sum_squares, max_norm);
    launchCheck("clip_by_norm_kernel");
}

// ----------------------------------------------------------------------------
// AdamW as torch.optim.AdamW (foreach=False, capturable=False):
// p *= 1 - lr wd;  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
// p -= step_size * m / (sqrt(v) / bc2_sqrt + eps),
// step_size = lr / (1 - beta1^step), bc2_sqrt = sqrt(1 - beta2^step), in double on the host.
// With skip_sum_squares every thread reads the global norm's square and leaves
// its elements untouched when the step is skipped (ops_step_skipped).

__global__ void adamw_kernel(float *params, const float *grads, float *m, float *v, size_t n, float decay,
                             float beta1, float beta2, float eps, float step_size, float bc2_sqrt,
                             const float *skip_sum_squares, float norm_limit) {
    if (skip_sum_squares && ops_step_skipped(*skip_sum_squares, norm_limit)) return;
    GRID_STRIDE(i, n) {
        float g = grads[i];
        float m_i = m[i] + (1.0f - beta1) * (g - m[i]);
        float v_i = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = m_i;
        v[i] = v_i;
        params[i] = params[i] * decay - step_size * m_i / (sqrtf(v_i) / bc2_sqrt + eps);
    }
}

void cuda_adamw(const Ops *ops, float *params, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int step, const float *skip_sum_squares,
                float norm_limit) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    double step_size = (double)lr / (1.0 - pow((double)beta1, step));
    double bc2_sqrt = sqrt(1.0 - pow((double)beta2, step));
    adamw_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>(
        params, grads, m, v, n, (float)(1.0 - (double)lr * weight_decay), beta1, beta2, eps, (float)step_size,
        (float)bc2_sqrt, skip_sum_squares, norm_limit);
    launchCheck("adamw_kernel");
}
