// kernels/cpu: the fp32 CPU backend's op table, memory and optimizer ops.
// Host memory is device memory, every op is synchronous, and nothing fails
// asynchronously.
#include "cpu.h"
#include "vectorize.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// memory

// Every block carries its size in a 64-byte header (the data stays 64-byte
// aligned), so frees keep the live count exact and peak_bytes is the high water.
#define CPU_ALLOC_HEADER 64

static _Atomic size_t live_bytes, peak_bytes;

static void count_allocation(size_t bytes) {
    size_t live = atomic_fetch_add(&live_bytes, bytes) + bytes;
    size_t peak = atomic_load(&peak_bytes);
    while (live > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, live)) {}
}

static void *cpu_alloc(const Ops *ops, size_t bytes, Error *err) {
    void *block = NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (posix_memalign(&block, 64, CPU_ALLOC_HEADER + rounded) != 0) {
        fail(err, "cpu backend: cannot allocate %zu bytes", bytes);
        return NULL;
    }
    *(size_t *)block = bytes;
    count_allocation(bytes);
    return (char *)block + CPU_ALLOC_HEADER;
}

static void cpu_free(const Ops *ops, void *ptr) {
    if (!ptr) return;
    void *block = (char *)ptr - CPU_ALLOC_HEADER;
    atomic_fetch_sub(&live_bytes, *(size_t *)block);
    free(block);
}

static size_t cpu_peak_bytes(const Ops *ops) { return atomic_load(&peak_bytes); }

static void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) memmove(dst, src, bytes);
}

static void cpu_transfer(const Ops *ops, void *dst, const void *src, size_t bytes) { cpu_copy(dst, src, bytes); }

static void cpu_zero(const Ops *ops, void *ptr, size_t bytes) {
    if (bytes) memset(ptr, 0, bytes);
}

static void cpu_synchronize(const Ops *ops) {}
static void *cpu_stream(const Ops *ops) { return NULL; }
static void cpu_download_async(const Ops *ops, void *dst, const void *src, size_t bytes, void *after) {
    cpu_copy(dst, src, bytes);
}
static bool cpu_reserve_scratch(const Ops *ops, size_t bytes, Error *err) { return true; }

static bool cpu_check(const Ops *ops, Error *err) { return true; }

// fp32 storage: every conversion is a copy
static void cpu_copy_f32(void *dst, const void *src, size_t n) { cpu_copy(dst, src, n * sizeof(float)); }

static void cpu_upload_f32(const Ops *ops, void *dst_act, const float *src_host, size_t n) {
    cpu_copy_f32(dst_act, src_host, n);
}

static void cpu_download_f32(const Ops *ops, float *dst_host, const void *src_act, size_t n) {
    cpu_copy_f32(dst_host, src_act, n);
}

static void cpu_params_to_act(const Ops *ops, void *dst_act, const float *params, size_t n) {
    cpu_copy_f32(dst_act, params, n);
}

// ----------------------------------------------------------------------------
// elementwise and optimizer ops

CPU_VECTORIZED static void add_chunk(float *a, const float *b, size_t n) {
    #pragma omp simd
    for (size_t i = 0; i < n; i++) a[i] += b[i];
}

static void cpu_add_inplace(const Ops *ops, void *a, const void *b, size_t n) {
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t start = 0; start < n; start += CPU_CHUNK)
        add_chunk((float *)a + start, (const float *)b + start, cpu_chunk_size(n, start));
}

CPU_VECTORIZED static double sum_squares_chunk(const float *g, size_t n) {
    double sum = 0.0;
    #pragma omp simd reduction(+ : sum)
    for (size_t i = 0; i < n; i++) sum += (double)g[i] * g[i];
    return sum;
}

// *out += sum g^2, accumulated in double
static void cpu_sum_squares(const Ops *ops, float *out, const float *g, size_t n) {
    double sum = 0.0;
    #pragma omp parallel for reduction(+ : sum) if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t start = 0; start < n; start += CPU_CHUNK) sum += sum_squares_chunk(g + start, cpu_chunk_size(n, start));
    *out += (float)sum;
}

static void cpu_scale_f32(const Ops *ops, float *x, float s, size_t n) {
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

// coef = max_norm / (sqrt(sum) + 1e-6) in fp32, as clip_grads; applied when < 1
static void cpu_clip_by_norm(const Ops *ops, float *x, size_t n, const float *sum_squares, float max_norm) {
    float clip_coef = max_norm / (sqrtf(*sum_squares) + 1e-6f);
    if (clip_coef < 1.0f) cpu_scale_f32(ops, x, clip_coef, n);
}

// torch's lerp: start + w (end - start), evaluated from the nearer end
static float lerp(float start, float end, float weight) {
    return weight < 0.5f ? start + weight * (end - start) : end - (end - start) * (1.0f - weight);
}

// torch.optim.AdamW, single-tensor path, step counted from 1:
//   p *= 1 - lr wd;  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Scalars are formed in double, as Python floats, then applied in fp32.
static void cpu_adamw(const Ops *ops, float *params, const float *grads, float *m, float *v, size_t n, float lr,
                      float beta1, float beta2, float eps, float weight_decay, int step,
                      const float *skip_sum_squares, float norm_limit) {
    if (skip_sum_squares && ops_step_skipped(*skip_sum_squares, norm_limit)) return;
    float decay = (float)(1.0 - (double)lr * weight_decay);
    float m_weight = (float)(1.0 - (double)beta1);
    float v_weight = (float)(1.0 - (double)beta2);
    double bias_correction1 = 1.0 - pow(beta1, step);
    double bias_correction2 = 1.0 - pow(beta2, step);
    float step_size = (float)(lr / bias_correction1);
    float bias_correction2_sqrt = (float)sqrt(bias_correction2);
    #pragma omp parallel for if (n >= CPU_PARALLEL_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float g = grads[i];
        params[i] *= decay;
        m[i] = lerp(m[i], g, m_weight);
        v[i] = v[i] * beta2 + v_weight * g * g;
        float denom = sqrtf(v[i]) / bias_correction2_sqrt + eps;
        params[i] += -step_size * (m[i] / denom);
    }
}

// ----------------------------------------------------------------------------
// the table

static const Ops cpu_ops = {
    .name = "cpu",
    .device_memory = false,
    .pinned_staging = false,
    .act_dtype = DTYPE_F32,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_transfer,
    .download = cpu_transfer,
    .upload_async = cpu_transfer,
    .zero = cpu_zero,
    .synchronize = cpu_synchronize,
    .stream = cpu_stream,
    .peak_bytes = cpu_peak_bytes,
    .reserve_scratch = cpu_reserve_scratch,
    .download_async = cpu_download_async,
    .synchronize_copies = cpu_synchronize,
    .upload_f32 = cpu_upload_f32,
    .download_f32 = cpu_download_f32,
    .params_to_act = cpu_params_to_act,
    .matmul = cpu_matmul,
    .matmul_weight_grad = cpu_matmul_weight_grad,
    .add_inplace = cpu_add_inplace,
    .embedding_forward = cpu_embedding_forward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .residual_rmsnorm_forward = cpu_residual_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .dropout_forward = cpu_dropout_forward,
    .dropout_backward = cpu_dropout_backward,
    .cross_entropy = cpu_cross_entropy,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .quick_gelu_forward = cpu_quick_gelu_forward,
    .quick_gelu_backward = cpu_quick_gelu_backward,
    .gelu_tanh_forward = cpu_gelu_tanh_forward,
    .gelu_tanh_backward = cpu_gelu_tanh_backward,
    .bias_add = cpu_bias_add,
    .bias_backward = cpu_bias_backward,
    .scale_columns = cpu_scale_columns,
    .scatter_rows = cpu_scatter_rows,
    .copy_columns = cpu_copy_columns,
    .patch_embed_forward = cpu_patch_embed_forward,
    .attention_full_forward = cpu_attention_full_forward,
    .attention_full_backward = cpu_attention_full_backward,
    .sum_squares = cpu_sum_squares,
    .scale_f32 = cpu_scale_f32,
    .clip_by_norm = cpu_clip_by_norm,
    .adamw = cpu_adamw,
    .dequantize_blockwise_u8 = cpu_dequantize_blockwise_u8,
    .dequantize_nf4 = cpu_dequantize_nf4,
    .check = cpu_check,
};

const Ops *ops_cpu(void) { return &cpu_ops; }
