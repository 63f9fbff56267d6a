// Self-attention with grouped-query heads on CUDA cores, flash-attention style, causal (the decoder's) or
// bidirectional (the vision towers': every query sees all T keys); the tensor-core kernels of
// flash_attention.cu take head_dim 64, 80, 96 and 128 (causal or not), these every head_dim <= 256:
// the (T, T) score matrix is never stored. The forward keeps a running max
// and sum per query row (online softmax) and saves lse; the backward
// recomputes P = exp(s - lse) from q, k and lse.
//
// Layouts: q, out (B, T, n_head, hd); k, v (B, T, n_kv_head, hd);
// lse (B, n_head, T). Query head h reads kv head h / (n_head / n_kv_head).
// Packed rows: query t attends to keys seq_start[b, t] <= u <= t; seq_start
// (B, T) is non-decreasing along a row (NULL: 0 everywhere), so a block skips
// the key tiles before its first query's segment and the query tiles after
// its last key's. Bidirectional (causal false, seq_start NULL): keys [0, T)
// for every query.
//
// One warp owns one row (a query row in the forward and for dq, a key row for
// dk/dv); each lane holds elements d = lane + 32 j of that row in registers.
// The rows a block's warps read from the other side come through shared
// memory, TILE rows at a time.
// Fused RoPE (positions not NULL): q and k rows are rotated as they are loaded
// from global memory (registers or a staged tile; element d's partner d +- hd/2
// read there too, sincosf of position * inv_freq on the fly); dq and dk are
// rotated back through a per-warp row of shared memory before they are added,
// since d's partner sits in another lane.
#include <math.h>

#include "cuda_common.cuh"
#include "../cuda_testing.h"

#define WARPS 8                       // rows owned per block
#define TILE 32                       // rows staged in shared memory at a time
#define HEAD_DIM_MAX 256
#define PER_LANE (HEAD_DIM_MAX / 32)  // register slots per lane

// Element d of a row, rotated as rope_kernel rotates it when inv_freq is not NULL (rounded to bf16 as
// rope_forward stores it): x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, angle = position inv_freq[d % hd/2].
__device__ __forceinline__ bf16 rope_element(const bf16 *row, int d, int hd, int position, const float *inv_freq) {
    if (!inv_freq) return row[d];
    int half = hd / 2;
    float sin_a, cos_a;
    sincosf((float)position * inv_freq[d % half], &sin_a, &cos_a);
    float x1 = __bfloat162float(row[d]), x2 = __bfloat162float(row[d < half ? d + half : d - half]);
    return __float2bfloat16_rn(d < half ? x1 * cos_a - x2 * sin_a : x1 * cos_a + x2 * sin_a);
}

__device__ __forceinline__ void load_row(float *dst, const bf16 *row, int hd, int lane, int position = 0,
                                         const float *inv_freq = NULL) {
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) {
        int d = lane + 32 * j;
        dst[j] = d < hd ? __bfloat162float(rope_element(row, d, hd, position, inv_freq)) : 0.0f;
    }
}

// Adds the register row src into the bf16 row dst.
__device__ __forceinline__ void add_row(bf16 *dst, const float *src, int hd, int lane) {
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < hd) dst[d] = __float2bfloat16_rn(__bfloat162float(dst[d]) + src[j]);
    }
}

// dst += src rotated back (rope_backward: g1' = g1 cos + g2 sin, g2' = g2 cos - g1 sin) through the warp's
// row of shared memory `buffer` (hd floats), where each lane finds the partner d +- hd/2 of its elements.
__device__ __forceinline__ void add_row_rotated(bf16 *dst, const float *src, float *buffer, int hd, int lane,
                                                int position, const float *inv_freq) {
    int half = hd / 2;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++)
        if (lane + 32 * j < hd) buffer[lane + 32 * j] = src[j];
    __syncwarp();
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d >= hd) continue;
        float sin_a, cos_a;
        sincosf((float)position * inv_freq[d % half], &sin_a, &cos_a);
        float g = buffer[d], partner = buffer[d < half ? d + half : d - half];
        g = d < half ? g * cos_a + partner * sin_a : g * cos_a - partner * sin_a;
        dst[d] = __float2bfloat16_rn(__bfloat162float(dst[d]) + g);
    }
}

// Dot product of a register row with a shared-memory row, summed over the warp.
__device__ __forceinline__ float warp_dot(const float *reg, const bf16 *row, int hd, int lane) {
    float partial = 0.0f;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < hd) partial += reg[j] * __bfloat162float(row[d]);
    }
    return warp_sum(partial);
}

// Index within row b of the first token of t's segment: its first key.
__device__ __forceinline__ int segment_start(const int32_t *seq_start, int b, int T, int t) {
    return seq_start ? seq_start[(size_t)b * T + t] : 0;
}

// The query row a warp of the forward or dq kernel owns (grid (ceil(T / WARPS), n_head, B)),
// and the keys its block stages: [keys_begin, n_keys) covers every key any of
// the block's queries attends (the first query's segment start .. the last query,
// or all T keys when not causal).
struct QueryWarp {
    int b, h, kv_head, lane;
    int t;            // the query row; only meaningful when active
    bool active;      // t < T
    int t_begin;      // t's segment start: its first key
    int keys_begin, n_keys;
    size_t q_offset;  // of row t (row 0 when inactive) in a (B, T, n_head, hd) tensor
};

__device__ __forceinline__ QueryWarp query_warp(const int32_t *seq_start, int T, int n_head, int n_kv_head, int hd,
                                                bool causal) {
    QueryWarp w;
    w.b = blockIdx.z, w.h = blockIdx.y, w.kv_head = w.h / (n_head / n_kv_head);
    w.lane = threadIdx.x % 32;
    int first_query = blockIdx.x * WARPS;
    w.t = first_query + threadIdx.x / 32;
    w.active = w.t < T;
    w.keys_begin = segment_start(seq_start, w.b, T, first_query);
    w.n_keys = causal ? min(T, first_query + WARPS) : T;
    w.t_begin = w.active ? segment_start(seq_start, w.b, T, w.t) : 0;
    w.q_offset = (((size_t)w.b * T + (w.active ? w.t : 0)) * n_head + w.h) * hd;
    return w;
}

// Copies rows [first, first + n_rows) of a (B, T, n_heads, hd) tensor, for
// batch b and head `head`, into tile (n_rows, hd), rotated when positions is not NULL.
__device__ __forceinline__ void stage_rows(bf16 *tile, const bf16 *src, int b, int first, int n_rows, int T,
                                           int n_heads, int head, int hd, const int32_t *positions = NULL,
                                           const float *inv_freq = NULL) {
    for (int idx = threadIdx.x; idx < n_rows * hd; idx += blockDim.x) {
        int row = idx / hd, d = idx % hd;
        size_t t = (size_t)b * T + first + row;
        tile[idx] = rope_element(src + (t * n_heads + head) * hd, d, hd, positions ? positions[t] : 0,
                                 positions ? inv_freq : NULL);
    }
}

// ----------------------------------------------------------------------------
// forward: grid (ceil(T / WARPS), n_head, B)

__global__ void attention_forward_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                                         const int32_t *seq_start, const int32_t *positions, const float *inv_freq,
                                         int T, int n_head, int n_kv_head, int hd, float scale, bool causal) {
    extern __shared__ bf16 smem[];
    bf16 *k_tile = smem, *v_tile = smem + TILE * hd;
    QueryWarp w = query_warp(seq_start, T, n_head, n_kv_head, hd, causal);
    int b = w.b, h = w.h, kv_head = w.kv_head, lane = w.lane, t = w.t, t_begin = w.t_begin;
    bool active = w.active;
    size_t q_offset = w.q_offset;

    float q_row[PER_LANE], acc[PER_LANE];
    int q_position = positions ? positions[(size_t)b * T + (active ? t : 0)] : 0;
    load_row(q_row, q + q_offset, hd, lane, q_position, positions ? inv_freq : NULL);
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) acc[j] = 0.0f;
    float running_max = -INFINITY, running_sum = 0.0f;

    for (int tile_start = w.keys_begin; tile_start < w.n_keys; tile_start += TILE) {
        int tile_rows = min(TILE, w.n_keys - tile_start);
        __syncthreads();  // the previous tile is no longer read
        stage_rows(k_tile, k, b, tile_start, tile_rows, T, n_kv_head, kv_head, hd, positions, inv_freq);
        stage_rows(v_tile, v, b, tile_start, tile_rows, T, n_kv_head, kv_head, hd);
        __syncthreads();
        if (!active) continue;
        int first = max(0, t_begin - tile_start);       // keys of t's segment
        int last = causal ? min(tile_rows, t - tile_start + 1) : tile_rows;  // causal: keys <= t
        for (int key = first; key < last; key++) {
            float s = warp_dot(q_row, k_tile + key * hd, hd, lane) * scale;
            float new_max = fmaxf(running_max, s);
            float correction = expf(running_max - new_max);
            float p = expf(s - new_max);
            running_sum = running_sum * correction + p;
#pragma unroll
            for (int j = 0; j < PER_LANE; j++) {
                int d = lane + 32 * j;
                float v_d = d < hd ? __bfloat162float(v_tile[key * hd + d]) : 0.0f;
                acc[j] = acc[j] * correction + p * v_d;
            }
            running_max = new_max;
        }
    }
    if (!active) return;
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < hd) out[q_offset + d] = __float2bfloat16_rn(acc[j] / running_sum);
    }
    if (lane == 0) lse[((size_t)b * n_head + h) * T + t] = running_max + logf(running_sum);
}

// ----------------------------------------------------------------------------
// backward, with s = scale q.k, P = exp(s - lse), dP = dout.v,
// Di = sum_d dout_i out_i, dS = P (dP - Di):
// dq_i += scale sum_j dS_ij k_j,  dk_j += scale sum_i dS_ij q_i,  dv_j += sum_i P_ij dout_i

// D (B, n_head, T): one warp per query row.
__global__ void attention_row_dot_kernel(float *D, const bf16 *dout, const bf16 *out, int T, int n_head,
                                         int hd, size_t n_rows) {
    size_t row = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;  // (b * T + t) * n_head + h
    int lane = threadIdx.x % 32;
    if (row >= n_rows) return;
    float partial = 0.0f;
    for (int d = lane; d < hd; d += 32)
        partial += __bfloat162float(dout[row * hd + d]) * __bfloat162float(out[row * hd + d]);
    float dot = warp_sum(partial);
    size_t h = row % n_head, bt = row / n_head, b = bt / T, t = bt % T;
    if (lane == 0) D[(b * n_head + h) * T + t] = dot;
}

// dq: grid (ceil(T / WARPS), n_head, B), a warp per query row, key tiles staged.
__global__ void attention_dq_kernel(bf16 *dq, const bf16 *dout, const float *lse, const float *D,
                                    const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                                    const int32_t *positions, const float *inv_freq, int T, int n_head,
                                    int n_kv_head, int hd, float scale, bool causal) {
    extern __shared__ bf16 smem[];
    bf16 *k_tile = smem, *v_tile = smem + TILE * hd;
    QueryWarp w = query_warp(seq_start, T, n_head, n_kv_head, hd, causal);
    int b = w.b, h = w.h, kv_head = w.kv_head, lane = w.lane, t = w.t, t_begin = w.t_begin;
    bool active = w.active;
    size_t q_offset = w.q_offset;
    size_t stat = ((size_t)b * n_head + h) * T + (active ? t : 0);

    float q_row[PER_LANE], dout_row[PER_LANE], dq_acc[PER_LANE];
    int q_position = positions ? positions[(size_t)b * T + (active ? t : 0)] : 0;
    load_row(q_row, q + q_offset, hd, lane, q_position, positions ? inv_freq : NULL);
    load_row(dout_row, dout + q_offset, hd, lane);
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) dq_acc[j] = 0.0f;
    float row_lse = lse[stat], row_D = D[stat];

    for (int tile_start = w.keys_begin; tile_start < w.n_keys; tile_start += TILE) {
        int tile_rows = min(TILE, w.n_keys - tile_start);
        __syncthreads();
        stage_rows(k_tile, k, b, tile_start, tile_rows, T, n_kv_head, kv_head, hd, positions, inv_freq);
        stage_rows(v_tile, v, b, tile_start, tile_rows, T, n_kv_head, kv_head, hd);
        __syncthreads();
        if (!active) continue;
        int first = max(0, t_begin - tile_start);
        int last = causal ? min(tile_rows, t - tile_start + 1) : tile_rows;
        for (int key = first; key < last; key++) {
            float p = expf(warp_dot(q_row, k_tile + key * hd, hd, lane) * scale - row_lse);
            float dp = warp_dot(dout_row, v_tile + key * hd, hd, lane);
            float ds_scaled = p * (dp - row_D) * scale;
#pragma unroll
            for (int j = 0; j < PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < hd) dq_acc[j] += ds_scaled * __bfloat162float(k_tile[key * hd + d]);
            }
        }
    }
    if (!positions) {
        if (active) add_row(dq + q_offset, dq_acc, hd, lane);
        return;
    }
    __syncthreads();  // the tiles are no longer read: a row of floats per warp in their place
    if (active) add_row_rotated(dq + q_offset, dq_acc, (float *)smem + threadIdx.x / 32 * hd, hd, lane, q_position,
                                inv_freq);
}

// dk, dv: grid (ceil(T / WARPS), n_kv_head, B), a warp per key row; query
// tiles of every query head in the group are staged, queries i >= key of the
// key's segment only (seq_start[i] <= key), or every query when not causal.
__global__ void attention_dkdv_kernel(bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *D,
                                      const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                                      const int32_t *positions, const float *inv_freq, int T, int n_head,
                                      int n_kv_head, int hd, float scale, bool causal) {
    extern __shared__ bf16 smem[];
    bf16 *q_tile = smem, *dout_tile = smem + TILE * hd;
    float *lse_tile = (float *)(smem + 2 * TILE * hd), *D_tile = lse_tile + TILE;
    int *start_tile = (int *)(D_tile + TILE);
    int b = blockIdx.z, kv_head = blockIdx.y, group = n_head / n_kv_head;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int first_key = blockIdx.x * WARPS;
    int last_key = min(T, first_key + WARPS) - 1;
    int key = first_key + warp;
    bool active = key < T;
    size_t kv_offset = (((size_t)b * T + (active ? key : 0)) * n_kv_head + kv_head) * hd;

    float k_row[PER_LANE], v_row[PER_LANE], dk_acc[PER_LANE], dv_acc[PER_LANE];
    int k_position = positions ? positions[(size_t)b * T + (active ? key : 0)] : 0;
    load_row(k_row, k + kv_offset, hd, lane, k_position, positions ? inv_freq : NULL);
    load_row(v_row, v + kv_offset, hd, lane);
#pragma unroll
    for (int j = 0; j < PER_LANE; j++) dk_acc[j] = dv_acc[j] = 0.0f;

    for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
        const float *lse_bh = lse + ((size_t)b * n_head + h) * T, *D_bh = D + ((size_t)b * n_head + h) * T;
        for (int tile_start = causal ? first_key : 0; tile_start < T; tile_start += TILE) {
            // queries from here on belong to segments after every key of the block
            if (segment_start(seq_start, b, T, tile_start) > last_key) break;
            int tile_rows = min(TILE, T - tile_start);
            __syncthreads();
            stage_rows(q_tile, q, b, tile_start, tile_rows, T, n_head, h, hd, positions, inv_freq);
            stage_rows(dout_tile, dout, b, tile_start, tile_rows, T, n_head, h, hd);
            for (int i = threadIdx.x; i < tile_rows; i += blockDim.x) {
                lse_tile[i] = lse_bh[tile_start + i];
                D_tile[i] = D_bh[tile_start + i];
                start_tile[i] = segment_start(seq_start, b, T, tile_start + i);
            }
            __syncthreads();
            if (!active) continue;
            for (int query = causal ? max(0, key - tile_start) : 0; query < tile_rows; query++) {  // causal: i >= key
                if (start_tile[query] > key) break;  // past the key's segment
                float p = expf(warp_dot(k_row, q_tile + query * hd, hd, lane) * scale - lse_tile[query]);
                float dp = warp_dot(v_row, dout_tile + query * hd, hd, lane);
                float ds_scaled = p * (dp - D_tile[query]) * scale;
#pragma unroll
                for (int j = 0; j < PER_LANE; j++) {
                    int d = lane + 32 * j;
                    if (d < hd) {
                        dk_acc[j] += ds_scaled * __bfloat162float(q_tile[query * hd + d]);
                        dv_acc[j] += p * __bfloat162float(dout_tile[query * hd + d]);
                    }
                }
            }
        }
    }
    if (positions) __syncthreads();  // the tiles are no longer read: a row of floats per warp in their place
    if (!active) return;
    if (positions)
        add_row_rotated(dk + kv_offset, dk_acc, (float *)smem + warp * hd, hd, lane, k_position, inv_freq);
    else
        add_row(dk + kv_offset, dk_acc, hd, lane);
    add_row(dv + kv_offset, dv_acc, hd, lane);
}

// ----------------------------------------------------------------------------
// launchers

static bool shapes_supported(int n_head, int n_kv_head, int head_dim) {
    if (head_dim > HEAD_DIM_MAX || n_kv_head <= 0 || n_head % n_kv_head != 0) {
        record_failure(__FILE__, __LINE__, "attention",
                       "unsupported shape: needs head_dim <= 256 and n_head a multiple of n_kv_head");
        return false;
    }
    return true;
}

static void launch_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                           const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                           int n_kv_head, int head_dim, bool causal) {
    CudaContext *ctx = cuda_context(ops);
    if (B == 0 || T == 0 || n_head == 0 || head_dim == 0) return;
    if (!shapes_supported(n_head, n_kv_head, head_dim)) return;
    dim3 grid(ceil_div(T, WARPS), n_head, B);
    size_t smem = 2 * TILE * head_dim * sizeof(bf16);
    attention_forward_kernel<<<grid, WARPS * 32, smem, ctx->stream>>>(
        (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seq_start, rope ? rope->positions : NULL,
        rope ? rope->inv_freq : NULL, T, n_head, n_kv_head, head_dim, 1.0f / sqrtf((float)head_dim), causal);
    launchCheck("attention_forward_kernel");
}

// D (B, n_head, T) = rowsum(dout * out) in the backend's scratch; NULL on failure.
static const float *row_dot(CudaContext *ctx, const void *dout, const void *out, int B, int T, int n_head,
                            int head_dim) {
    size_t n_rows = (size_t)B * T * n_head;
    float *D = (float *)cuda_scratch(ctx, attention_backward_scratch_bytes(B, T, n_head));
    if (!D) return NULL;
    attention_row_dot_kernel<<<ceil_div(n_rows * 32, 256), 256, 0, ctx->stream>>>(
        D, (const bf16 *)dout, (const bf16 *)out, T, n_head, head_dim, n_rows);
    return launchCheck("attention_row_dot_kernel") ? D : NULL;
}

static void launch_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                            const float *lse, const void *q, const void *k, const void *v, const int32_t *seq_start,
                            const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, int head_dim,
                            bool causal) {
    CudaContext *ctx = cuda_context(ops);
    if (B == 0 || T == 0 || n_head == 0 || head_dim == 0) return;
    if (!shapes_supported(n_head, n_kv_head, head_dim)) return;
    const float *D = row_dot(ctx, dout, out, B, T, n_head, head_dim);
    if (!D) return;
    float scale = 1.0f / sqrtf((float)head_dim);
    const int32_t *positions = rope ? rope->positions : NULL;
    const float *inv_freq = rope ? rope->inv_freq : NULL;
    size_t tile_bytes = 2 * TILE * head_dim * sizeof(bf16);  // >= WARPS * head_dim floats, dq / dk rotated back
    dim3 dq_grid(ceil_div(T, WARPS), n_head, B);
    attention_dq_kernel<<<dq_grid, WARPS * 32, tile_bytes, ctx->stream>>>(
        (bf16 *)dq, (const bf16 *)dout, lse, D, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seq_start, positions,
        inv_freq, T, n_head, n_kv_head, head_dim, scale, causal);
    if (!launchCheck("attention_dq_kernel")) return;

    dim3 dkdv_grid(ceil_div(T, WARPS), n_kv_head, B);
    size_t row_stats_bytes = 2 * TILE * sizeof(float) + TILE * sizeof(int);  // lse, D, seq_start
    attention_dkdv_kernel<<<dkdv_grid, WARPS * 32, tile_bytes + row_stats_bytes, ctx->stream>>>(
        (bf16 *)dk, (bf16 *)dv, (const bf16 *)dout, lse, D, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v,
        seq_start, positions, inv_freq, T, n_head, n_kv_head, head_dim, scale, causal);
    launchCheck("attention_dkdv_kernel");
}

// The CUDA-core kernels alone: the fallback's entry for the tests (kernels/cuda_testing.h).
void cuda_attention_reference_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k,
                                      const void *v, const int32_t *seq_start, const AttentionRope *rope, int B, int T,
                                      int n_head, int n_kv_head, int head_dim, bool causal) {
    launch_forward(ops, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, head_dim, causal);
}

void cuda_attention_reference_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout,
                                       const void *out, const float *lse, const void *q, const void *k, const void *v,
                                       const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                       int n_kv_head, int head_dim, bool causal) {
    launch_backward(ops, dq, dk, dv, dout, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, head_dim,
                    causal);
}

// The tensor-core kernels (flash_attention.cu) for the head sizes and alignments they take, these kernels for
// the others.
static void dispatch_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                             const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                             int n_kv_head, int head_dim, bool causal) {
    if (!cuda_flash_attention_supported(head_dim, q, k, v, NULL)) {
        launch_forward(ops, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, head_dim, causal);
        return;
    }
    if (B == 0 || T == 0 || n_head == 0) return;
    if (!shapes_supported(n_head, n_kv_head, head_dim)) return;
    cuda_flash_attention_forward(cuda_context(ops), (bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k,
                                 (const bf16 *)v, seq_start, rope, B, T, n_head, n_kv_head, head_dim, causal);
}

static void dispatch_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                              const float *lse, const void *q, const void *k, const void *v, const int32_t *seq_start,
                              const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, int head_dim,
                              bool causal) {
    if (!cuda_flash_attention_supported(head_dim, q, k, v, dout)) {
        launch_backward(ops, dq, dk, dv, dout, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, head_dim,
                        causal);
        return;
    }
    if (B == 0 || T == 0 || n_head == 0) return;
    if (!shapes_supported(n_head, n_kv_head, head_dim)) return;
    CudaContext *ctx = cuda_context(ops);
    const float *D = row_dot(ctx, dout, out, B, T, n_head, head_dim);
    if (!D) return;
    cuda_flash_attention_backward(ctx, (bf16 *)dq, (bf16 *)dk, (bf16 *)dv, (const bf16 *)dout, lse, D,
                                  (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seq_start, rope, B, T, n_head,
                                  n_kv_head, head_dim, causal);
}

void cuda_attention_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                            const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                            int n_kv_head, int head_dim) {
    dispatch_forward(ops, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, head_dim, true);
}

void cuda_attention_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                             const float *lse, const void *q, const void *k, const void *v, const int32_t *seq_start,
                             const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, int head_dim) {
    dispatch_backward(ops, dq, dk, dv, dout, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, head_dim,
                      true);
}

// Bidirectional (the vision towers', n_kv_head = n_head): the same dispatch with the causal mask off, flash
// for head_dim 64, 80, 96 and 128 (CLIP-L, DINOv2-L: 64), the CUDA-core kernels for the others (SigLIP: 72).
void cuda_attention_full_forward(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                                 int B, int T, int n_head, int head_dim) {
    dispatch_forward(ops, out, lse, q, k, v, NULL, NULL, B, T, n_head, n_head, head_dim, false);
}

void cuda_attention_full_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                                  const float *lse, const void *q, const void *k, const void *v, int B, int T,
                                  int n_head, int head_dim) {
    dispatch_backward(ops, dq, dk, dv, dout, out, lse, q, k, v, NULL, NULL, B, T, n_head, n_head, head_dim, false);
}
