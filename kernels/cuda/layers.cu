// Element-wise and per-row kernels: conversions, embedding, RMSNorm, RoPE,
// SwiGLU, dropout. bf16 storage, fp32 math; where their pointers are 16-byte
// aligned the kernels move 8 bf16 per 128-bit load and store (Bf16x8).
#include "cuda_common.cuh"

#define THREADS 256

// ----------------------------------------------------------------------------
// conversions and sums

__global__ void f32_to_bf16_kernel(bf16 *dst, const float *src, size_t n) {
    GRID_STRIDE(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void bf16_to_f32_kernel(float *dst, const bf16 *src, size_t n) {
    GRID_STRIDE(i, n) dst[i] = __bfloat162float(src[i]);
}

__device__ __forceinline__ bf16 add_bf16(bf16 a, bf16 b) {
    return __float2bfloat16_rn(__bfloat162float(a) + __bfloat162float(b));
}

__global__ void add_inplace_kernel(bf16 *a, const bf16 *b, size_t n) {
    size_t packs = packs_of(n, a, b);
    GRID_STRIDE(p, packs) {
        Bf16x8 x = load8(a, p), y = load8(b, p);
        for (int k = 0; k < 8; k++) x.v[k] = add_bf16(x.v[k], y.v[k]);
        store8(a, p, x);
    }
    GRID_STRIDE_FROM(i, packs * 8, n) a[i] = add_bf16(a[i], b[i]);
}

// Blocks for an element-wise kernel over n: a thread per pack of 8.
static unsigned int packed_grid(const CudaContext *ctx, size_t n) { return grid_for(ctx, (n + 7) / 8, THREADS); }

void cuda_f32_to_act(CudaContext *ctx, void *dst_act, const float *src, size_t n) {
    if (n == 0) return;
    f32_to_bf16_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)dst_act, src, n);
    launchCheck("f32_to_bf16_kernel");
}

void cuda_act_to_f32(CudaContext *ctx, float *dst, const void *src_act, size_t n) {
    if (n == 0) return;
    bf16_to_f32_kernel<<<grid_for(ctx, n, THREADS), THREADS, 0, ctx->stream>>>(dst, (const bf16 *)src_act, n);
    launchCheck("bf16_to_f32_kernel");
}

void cuda_params_to_act(const Ops *ops, void *dst_act, const float *params, size_t n) {
    cuda_f32_to_act(cuda_context(ops), dst_act, params, n);
}

void cuda_add_inplace(const Ops *ops, void *a, const void *b, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    add_inplace_kernel<<<packed_grid(ctx, n), THREADS, 0, ctx->stream>>>((bf16 *)a, (const bf16 *)b, n);
    launchCheck("add_inplace_kernel");
}

// ----------------------------------------------------------------------------
// embedding: out (N, C) = table[ids[n]], one block per token

__global__ void embedding_forward_kernel(bf16 *out, const int32_t *ids, const bf16 *table, int C) {
    const bf16 *row = table + (size_t)ids[blockIdx.x] * C;
    bf16 *out_row = out + (size_t)blockIdx.x * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) out_row[c] = row[c];
}

void cuda_embedding_forward(const Ops *ops, void *out, const int32_t *ids, const void *table, int N, int C) {
    CudaContext *ctx = cuda_context(ops);
    if (N == 0) return;
    embedding_forward_kernel<<<N, THREADS, 0, ctx->stream>>>((bf16 *)out, ids, (const bf16 *)table, C);
    launchCheck("embedding_forward_kernel");
}

// ----------------------------------------------------------------------------
// RMSNorm, one block per row of C:
// rstd = 1 / sqrt(mean(x^2) + eps), out = x * rstd * w
// dx += rstd * w * dout - x * rstd^3 * mean(w * dout * x)

// A row of C is walked as `packs` packs of 8 (each thread taking packs
// threadIdx.x, + blockDim.x, ...), then the elements from packs * 8 on; every
// loop over a row below walks it so, so each thread meets the same elements.
#define ROW_PACKS(p, packs) for (int p = threadIdx.x; p < (packs); p += blockDim.x)
#define ROW_TAIL(c, packs, C) for (int c = (packs) * 8 + threadIdx.x; c < (C); c += blockDim.x)

__device__ __forceinline__ float square_bf16(bf16 x) {
    float f = __bfloat162float(x);
    return f * f;
}

__device__ __forceinline__ bf16 normed(bf16 x, float rstd, bf16 w) {
    return __float2bfloat16_rn(__bfloat162float(x) * rstd * __bfloat162float(w));
}

// The row's out and rstd from each thread's share of its sum of squares; each
// thread reads back only the elements of x it summed.
__device__ __forceinline__ void rmsnorm_finish_row(bf16 *y, float *rstd, const bf16 *x, const bf16 *weight, int C,
                                                   int packs, float eps, float sum_sq) {
    float row_rstd = rsqrtf(block_sum(sum_sq) / C + eps);
    ROW_PACKS(p, packs) {
        Bf16x8 xs = load8(x, p), ws = load8(weight, p);
        for (int k = 0; k < 8; k++) xs.v[k] = normed(xs.v[k], row_rstd, ws.v[k]);
        store8(y, p, xs);
    }
    ROW_TAIL(c, packs, C) y[c] = normed(x[c], row_rstd, weight[c]);
    if (threadIdx.x == 0) rstd[blockIdx.x] = row_rstd;
}

__global__ void rmsnorm_forward_kernel(bf16 *out, float *rstd, const bf16 *inp, const bf16 *weight, int C,
                                       float eps) {
    const bf16 *x = inp + (size_t)blockIdx.x * C;
    bf16 *y = out + (size_t)blockIdx.x * C;
    int packs = (int)packs_of(C, x, y, weight);
    float sum_sq = 0.0f;
    ROW_PACKS(p, packs) {
        Bf16x8 xs = load8(x, p);
        for (int k = 0; k < 8; k++) sum_sq += square_bf16(xs.v[k]);
    }
    ROW_TAIL(c, packs, C) sum_sq += square_bf16(x[c]);
    rmsnorm_finish_row(y, rstd, x, weight, C, packs, eps, sum_sq);
}

// x += residual (rounded to bf16, as add_inplace), then rmsnorm_forward_kernel's
// out and rstd of the sum.
__global__ void residual_rmsnorm_forward_kernel(bf16 *out, float *rstd, bf16 *inp, const bf16 *residual,
                                                const bf16 *weight, int C, float eps) {
    bf16 *x = inp + (size_t)blockIdx.x * C, *y = out + (size_t)blockIdx.x * C;
    const bf16 *r = residual + (size_t)blockIdx.x * C;
    int packs = (int)packs_of(C, x, y, r, weight);
    float sum_sq = 0.0f;
    ROW_PACKS(p, packs) {
        Bf16x8 xs = load8(x, p), rs = load8(r, p);
        for (int k = 0; k < 8; k++) {
            xs.v[k] = add_bf16(xs.v[k], rs.v[k]);
            sum_sq += square_bf16(xs.v[k]);
        }
        store8(x, p, xs);
    }
    ROW_TAIL(c, packs, C) {
        x[c] = add_bf16(x[c], r[c]);
        sum_sq += square_bf16(x[c]);
    }
    rmsnorm_finish_row(y, rstd, x, weight, C, packs, eps, sum_sq);
}

__device__ __forceinline__ float weighted_dot(bf16 w, bf16 dy, bf16 x) {
    return __bfloat162float(w) * __bfloat162float(dy) * __bfloat162float(x);
}

// dx + rstd * w * dy - x * rstd^3 * mean_dot
__device__ __forceinline__ bf16 rmsnorm_dx(bf16 dx, bf16 w, bf16 dy, bf16 x, float r, float mean_dot) {
    float grad = r * __bfloat162float(w) * __bfloat162float(dy) - __bfloat162float(x) * r * r * r * mean_dot;
    return __float2bfloat16_rn(__bfloat162float(dx) + grad);
}

__global__ void rmsnorm_backward_kernel(bf16 *dinp, const bf16 *dout, const bf16 *inp, const bf16 *weight,
                                        const float *rstd, int C) {
    size_t row = blockIdx.x;
    const bf16 *x = inp + row * C, *dy = dout + row * C;
    bf16 *dx = dinp + row * C;
    int packs = (int)packs_of(C, x, dy, dx, weight);
    float r = rstd[row];
    float dot = 0.0f;  // sum(w * dout * x)
    ROW_PACKS(p, packs) {
        Bf16x8 ws = load8(weight, p), dys = load8(dy, p), xs = load8(x, p);
        for (int k = 0; k < 8; k++) dot += weighted_dot(ws.v[k], dys.v[k], xs.v[k]);
    }
    ROW_TAIL(c, packs, C) dot += weighted_dot(weight[c], dy[c], x[c]);
    float mean_dot = block_sum(dot) / C;
    ROW_PACKS(p, packs) {
        Bf16x8 dxs = load8(dx, p), ws = load8(weight, p), dys = load8(dy, p), xs = load8(x, p);
        for (int k = 0; k < 8; k++) dxs.v[k] = rmsnorm_dx(dxs.v[k], ws.v[k], dys.v[k], xs.v[k], r, mean_dot);
        store8(dx, p, dxs);
    }
    ROW_TAIL(c, packs, C) dx[c] = rmsnorm_dx(dx[c], weight[c], dy[c], x[c], r, mean_dot);
}

void cuda_rmsnorm_forward(const Ops *ops, void *out, float *rstd, const void *inp, const void *weight, int N, int C,
                          float eps) {
    CudaContext *ctx = cuda_context(ops);
    if (N == 0) return;
    rmsnorm_forward_kernel<<<N, THREADS, 0, ctx->stream>>>((bf16 *)out, rstd, (const bf16 *)inp, (const bf16 *)weight,
                                                           C, eps);
    launchCheck("rmsnorm_forward_kernel");
}

void cuda_residual_rmsnorm_forward(const Ops *ops, void *out, float *rstd, void *x, const void *residual,
                                   const void *weight, int N, int C, float eps) {
    CudaContext *ctx = cuda_context(ops);
    if (N == 0) return;
    residual_rmsnorm_forward_kernel<<<N, THREADS, 0, ctx->stream>>>(
        (bf16 *)out, rstd, (bf16 *)x, (const bf16 *)residual, (const bf16 *)weight, C, eps);
    launchCheck("residual_rmsnorm_forward_kernel");
}

void cuda_rmsnorm_backward(const Ops *ops, void *dinp, const void *dout, const void *inp, const void *weight,
                           const float *rstd, int N, int C) {
    CudaContext *ctx = cuda_context(ops);
    if (N == 0) return;
    rmsnorm_backward_kernel<<<N, THREADS, 0, ctx->stream>>>((bf16 *)dinp, (const bf16 *)dout, (const bf16 *)inp,
                                                            (const bf16 *)weight, rstd, C);
    launchCheck("rmsnorm_backward_kernel");
}

// ----------------------------------------------------------------------------
// RoPE, rotate_half layout, in place; one thread per (token, head, pair i):
// x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, angle = direction * pos * inv_freq[i]

__global__ void rope_kernel(bf16 *x, const int32_t *positions, const float *inv_freq, int n_head,
                            int head_dim, size_t n_pairs, float direction) {
    int half = head_dim / 2;
    GRID_STRIDE(idx, n_pairs) {
        int i = (int)(idx % half);
        size_t token_head = idx / half;  // token * n_head + head
        size_t token = token_head / n_head;
        float angle = direction * (float)positions[token] * inv_freq[i];
        float sin_a, cos_a;
        sincosf(angle, &sin_a, &cos_a);
        bf16 *row = x + token_head * head_dim;
        float x1 = __bfloat162float(row[i]), x2 = __bfloat162float(row[i + half]);
        row[i] = __float2bfloat16_rn(x1 * cos_a - x2 * sin_a);
        row[i + half] = __float2bfloat16_rn(x2 * cos_a + x1 * sin_a);
    }
}

static void rope(CudaContext *ctx, void *x, const int32_t *positions, const float *inv_freq, int N, int n_head,
                 int head_dim, float direction) {
    size_t n_pairs = (size_t)N * n_head * (head_dim / 2);
    if (n_pairs == 0) return;
    rope_kernel<<<grid_for(ctx, n_pairs, THREADS), THREADS, 0, ctx->stream>>>((bf16 *)x, positions, inv_freq, n_head,
                                                                              head_dim, n_pairs, direction);
    launchCheck("rope_kernel");
}

void cuda_rope_forward(const Ops *ops, void *x, const int32_t *positions, const float *inv_freq, int N, int n_head,
                       int head_dim) {
    rope(cuda_context(ops), x, positions, inv_freq, N, n_head, head_dim, 1.0f);
}

void cuda_rope_backward(const Ops *ops, void *dx, const int32_t *positions, const float *inv_freq, int N, int n_head,
                        int head_dim) {
    rope(cuda_context(ops), dx, positions, inv_freq, N, n_head, head_dim, -1.0f);
}

// ----------------------------------------------------------------------------
// SwiGLU: out = silu(g) * u, silu(g) = g * s, s = sigmoid(g)
// dg += dout * u * s * (1 + g * (1 - s)), du += dout * silu(g)

__device__ __forceinline__ bf16 swiglu(bf16 gate, bf16 up) {
    float g = __bfloat162float(gate);
    float s = 1.0f / (1.0f + expf(-g));
    return __float2bfloat16_rn(g * s * __bfloat162float(up));
}

__global__ void swiglu_forward_kernel(bf16 *out, const bf16 *gate, const bf16 *up, size_t n) {
    size_t packs = packs_of(n, out, gate, up);
    GRID_STRIDE(p, packs) {
        Bf16x8 gs = load8(gate, p), us = load8(up, p);
        for (int k = 0; k < 8; k++) gs.v[k] = swiglu(gs.v[k], us.v[k]);
        store8(out, p, gs);
    }
    GRID_STRIDE_FROM(i, packs * 8, n) out[i] = swiglu(gate[i], up[i]);
}

// *dgate and *dup += the gradients of one element
__device__ __forceinline__ void swiglu_grads(bf16 *dgate, bf16 *dup, bf16 dout, bf16 gate, bf16 up) {
    float g = __bfloat162float(gate), u = __bfloat162float(up), dy = __bfloat162float(dout);
    float s = 1.0f / (1.0f + expf(-g));
    float dg = dy * u * s * (1.0f + g * (1.0f - s));
    *dgate = __float2bfloat16_rn(__bfloat162float(*dgate) + dg);
    *dup = __float2bfloat16_rn(__bfloat162float(*dup) + dy * g * s);
}

__global__ void swiglu_backward_kernel(bf16 *dgate, bf16 *dup, const bf16 *dout, const bf16 *gate,
                                       const bf16 *up, size_t n) {
    size_t packs = aligned16(dgate) && aligned16(dup) ? packs_of(n, dout, gate, up) : 0;
    GRID_STRIDE(p, packs) {
        Bf16x8 dgs = load8(dgate, p), dus = load8(dup, p), dys = load8(dout, p), gs = load8(gate, p),
               us = load8(up, p);
        for (int k = 0; k < 8; k++) swiglu_grads(&dgs.v[k], &dus.v[k], dys.v[k], gs.v[k], us.v[k]);
        store8(dgate, p, dgs);
        store8(dup, p, dus);
    }
    GRID_STRIDE_FROM(i, packs * 8, n) swiglu_grads(&dgate[i], &dup[i], dout[i], gate[i], up[i]);
}

void cuda_swiglu_forward(const Ops *ops, void *out, const void *gate, const void *up, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    swiglu_forward_kernel<<<packed_grid(ctx, n), THREADS, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)gate,
                                                                            (const bf16 *)up, n);
    launchCheck("swiglu_forward_kernel");
}

void cuda_swiglu_backward(const Ops *ops, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                          size_t n) {
    CudaContext *ctx = cuda_context(ops);
    if (n == 0) return;
    swiglu_backward_kernel<<<packed_grid(ctx, n), THREADS, 0, ctx->stream>>>(
        (bf16 *)dgate, (bf16 *)dup, (const bf16 *)dout, (const bf16 *)gate, (const bf16 *)up, n);
    launchCheck("swiglu_backward_kernel");
}

// ----------------------------------------------------------------------------
// dropout: keep[i] = uniform(seed, offset + i) >= p, the counter hash of
// core/core.c (rng_uniform_at) with the same arithmetic, bit for bit.

__host__ __device__ static inline uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// rng_uniform_at(seed, counter) with seed_hash = splitmix64(seed) hoisted out.
__device__ __forceinline__ float uniform_at(uint64_t seed_hash, uint64_t counter) {
    return (float)(splitmix64(seed_hash ^ counter) >> 40) * (1.0f / 16777216.0f);
}

// Element `counter` of out = inp * keep / (1 - p); `accumulate` adds into out instead (the backward).
__device__ __forceinline__ bf16 dropped(bf16 out, bf16 inp, float p, float scale, uint64_t seed_hash,
                                        uint64_t counter, bool accumulate) {
    float kept = uniform_at(seed_hash, counter) >= p ? __bfloat162float(inp) * scale : 0.0f;
    return __float2bfloat16_rn(accumulate ? __bfloat162float(out) + kept : kept);
}

__global__ void dropout_kernel(bf16 *out, const bf16 *inp, size_t n, float p, float scale,
                               uint64_t seed_hash, uint64_t offset, bool accumulate) {
    size_t packs = packs_of(n, out, inp);
    GRID_STRIDE(pack, packs) {
        Bf16x8 os = load8(out, pack), xs = load8(inp, pack);
        for (int k = 0; k < 8; k++)
            os.v[k] = dropped(os.v[k], xs.v[k], p, scale, seed_hash, offset + pack * 8 + k, accumulate);
        store8(out, pack, os);
    }
    GRID_STRIDE_FROM(i, packs * 8, n) out[i] = dropped(out[i], inp[i], p, scale, seed_hash, offset + i, accumulate);
}

static void dropout(CudaContext *ctx, void *out, const void *inp, size_t n, float p, uint64_t seed, uint64_t offset,
                    bool accumulate) {
    if (n == 0) return;
    if (p <= 0.0f) p = 0.0f;  // as the CPU backend: p <= 0 keeps all, p >= 1 drops all
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    dropout_kernel<<<packed_grid(ctx, n), THREADS, 0, ctx->stream>>>((bf16 *)out, (const bf16 *)inp, n, p, scale,
                                                                     splitmix64(seed), offset, accumulate);
    launchCheck("dropout_kernel");
}

void cuda_dropout_forward(const Ops *ops, void *out, const void *inp, size_t n, float p, uint64_t seed,
                          uint64_t offset) {
    dropout(cuda_context(ops), out, inp, n, p, seed, offset, false);
}

void cuda_dropout_backward(const Ops *ops, void *dinp, const void *dout, size_t n, float p, uint64_t seed,
                           uint64_t offset) {
    dropout(cuda_context(ops), dinp, dout, n, p, seed, offset, true);
}
