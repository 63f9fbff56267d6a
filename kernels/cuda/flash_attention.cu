// GQA attention on tensor cores, FlashAttention-2's algorithm (Dao, 2023), for head_dim 64, 80, 96 and 128
// in bf16 with fp32 accumulation, causal (the decoder's) or bidirectional (the vision towers'); attention.cu
// dispatches here and keeps its CUDA-core kernels for other head sizes. Layouts and the packed-row seq_start
// as in attention.cu: q, out (B, T, n_head, hd); k, v (B, T, n_kv_head, hd); lse, D (B, n_head, T). Causal:
// query t attends to keys seq_start[b, t] <= u <= t. Bidirectional (causal false, seq_start NULL): every
// query attends to keys 0 <= u < T; keys >= T in the last tile are masked to -inf (causal, the diagonal
// masks them already) and queries >= T of the last query tile are invisible to the dk, dv pass.
//
// A block is 4 warps and owns a tile of 64 rows (16 per warp); the other side streams through shared memory
// in tiles of 64 rows. Every product is mma.m16n8k16 (mma.cuh): a warp's (16 x 64) scores are 8 C fragments;
// exponentiated, they become A fragments in registers for the next product (c_to_a, P rounded to bf16).
//   forward (a block per query tile): S = Q K^T, online softmax (running max m and sum l per row), O += P V;
//     out = O / l, lse = m + log l. Causal, key tiles start at the block's first query's segment start and
//     end at its last query: tiles above the diagonal and before the segment are never read. Bidirectional,
//     all ceil(T / 64) key tiles.
//   dq (a block per query tile): S = Q K^T, P = exp(scale S - lse), dP = dO V^T, dS = P (dP - D),
//     dq += scale dS K; the same key tiles as the forward.
//   dk, dv (a block per key tile of one kv head): for every query head of its group and every query tile
//     from the diagonal on (causal; bidirectional, from tile 0), until the tiles' segments start after the
//     block's last key: S^T = K Q^T, dP^T = V dO^T, dv += P^T dO, dk += scale dS^T Q.
// dq and dk/dv are separate passes (dq recomputes P once more), so every gradient is written once, by one
// block, in a fixed order: no atomics, no (T, T) matrix and no scratch beyond D.
// Tiles are staged 8 bf16 (16 bytes) per load and store (Bf16x8): q, k, v and dout 16-byte aligned, which
// cuda_flash_attention_supported checks (attention.cu takes its own kernels otherwise).
// Fused RoPE (positions not NULL): q and k tiles are rotated as they are staged (rope_kernel's rotation of a
// pack of 8 with its partner pack HD / 2 away, sincosf of position * inv_freq on the fly, rounded to bf16 as
// rope_forward stores), and dq, dk are rotated back (by -angle) in registers before they are added: a lane's
// C fragments hold columns d and d + HD / 2 both (fragment n and n + HD / 16).
#include <math.h>

#include "cuda_common.cuh"
#include "mma.cuh"

#define FA_WARPS 4
#define FA_TILE 64  // rows of a block's own tile (16 per warp) and of each staged tile
#define FA_PAD 8    // bf16 after each shared-memory row: rows stay 16-byte aligned, ldmatrix's banks spread

// ----------------------------------------------------------------------------
// tiles and fragments; lane = 4 g + t as in mma.cuh

__device__ __forceinline__ int first_key(const int32_t *seq_start, int b, int T, int t) {
    return seq_start ? seq_start[(size_t)b * T + t] : 0;
}

// Whether query `query` (first key `lo`) sees key `key`: keys of its segment up to itself (causal) or every
// key < T (bidirectional, lo = 0).
__device__ __forceinline__ bool visible(int query, int lo, int key, int T, bool causal) {
    return key >= lo && (!causal || key <= query) && key < T;
}

// x rotated as rope_kernel rotates elements [d0, d0 + 8) of a row whose partners d +- HD/2 are `partner`
// (rounded to bf16 as rope_forward stores): x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin,
// angle = position inv_freq[d % HD/2]. HD/2 is a multiple of 8: the 8 elements lie in one half.
template <int HD>
__device__ __forceinline__ Bf16x8 rotate8(Bf16x8 x, Bf16x8 partner, int d0, float position, const float *inv_freq) {
    const int half = HD / 2;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        float sin_a, cos_a;
        sincosf(position * inv_freq[(d0 + e) % half], &sin_a, &cos_a);
        float x1 = __bfloat162float(x.v[e]), x2 = __bfloat162float(partner.v[e]);
        x.v[e] = __float2bfloat16_rn(d0 < half ? x1 * cos_a - x2 * sin_a : x1 * cos_a + x2 * sin_a);
    }
    return x;
}

// tile (FA_TILE, HD + FA_PAD) = rows [first, first + FA_TILE) of a (B, T, n_heads, HD) tensor at (b, head),
// 8 bf16 (16 bytes) per load and store: src 16-byte aligned, HD a multiple of 8. Rows >= T are zero (they
// meet masked probabilities, and 0 * NaN would not vanish). With positions, each row is rotated (rotate8).
template <int HD>
__device__ __forceinline__ void stage_tile(bf16 *tile, const bf16 *src, int b, int first, int T, int n_heads,
                                           int head, const int32_t *positions = NULL,
                                           const float *inv_freq = NULL) {
    const int packs = HD / 8;  // per row; a pack's partner is packs / 2 away
    for (int idx = threadIdx.x; idx < FA_TILE * packs; idx += blockDim.x) {
        int row = idx / packs, pack = idx % packs, t = first + row;
        Bf16x8 x;
        if (t < T) {
            const bf16 *src_row = src + (((size_t)b * T + t) * n_heads + head) * HD;
            x = load8(src_row, pack);
            if (positions)
                x = rotate8<HD>(x, load8(src_row, (pack + packs / 2) % packs), 8 * pack,
                                (float)positions[(size_t)b * T + t], inv_freq);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) x.v[e] = __float2bfloat16_rn(0.0f);
        }
        store8(tile + row * (HD + FA_PAD), pack, x);
    }
}

// A fragment of tile rows [row0, row0 + 16), columns [col0, col0 + 16): lane i addresses row i % 16, columns
// + 8 from lane 16 on (matrices: rows 0-7 / 8-15 x columns 0-7 / 8-15, in a[0..3]'s order).
template <int HD>
__device__ __forceinline__ void load_a(uint32_t a[4], const bf16 *tile, int row0, int col0, int lane) {
    ldmatrix_x4(a, tile + (row0 + lane % 16) * (HD + FA_PAD) + col0 + lane / 16 * 8);
}

// B fragment B[k][n] = tile[n0 + n][k0 + k] (the tile's rows are B's columns): lanes 0-7 address columns
// k0.., lanes 8-15 k0 + 8...
template <int HD>
__device__ __forceinline__ void load_b(uint32_t b[2], const bf16 *tile, int n0, int k0, int lane) {
    ldmatrix_x2(b, tile + (n0 + lane % 8) * (HD + FA_PAD) + k0 + lane / 8 % 2 * 8);
}

// B fragment B[k][n] = tile[k0 + k][n0 + n] (the tile's rows are B's rows): lane i addresses row k0 + i % 16.
template <int HD>
__device__ __forceinline__ void load_b_trans(uint32_t b[2], const bf16 *tile, int k0, int n0, int lane) {
    ldmatrix_x2_trans(b, tile + (k0 + lane % 16) * (HD + FA_PAD) + n0);
}

// A fragments of a warp's 16 rows, all HD columns.
template <int HD>
__device__ __forceinline__ void load_rows(uint32_t a[HD / 16][4], const bf16 *tile, int row0, int lane) {
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) load_a<HD>(a[kk], tile, row0, 16 * kk, lane);
}

// s (16 x 64) = A (16 x HD) tile^T: scores of the warp's rows against the tile's 64 rows.
template <int HD>
__device__ __forceinline__ void gemm_nt(float s[8][4], const uint32_t a[HD / 16][4], const bf16 *tile, int lane) {
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t b[2];
            load_b<HD>(b, tile, 8 * j, 16 * kk, lane);
            mma_bf16_16816(s[j], a[kk], b);
        }
    }
}

// acc (16 x HD) += p (16 x 64, C fragments, rounded to bf16) tile (64 x HD).
template <int HD>
__device__ __forceinline__ void gemm_nn(float acc[HD / 8][4], const float p[8][4], const bf16 *tile, int lane) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        uint32_t a[4];
        c_to_a(a, p[2 * kk], p[2 * kk + 1]);
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            uint32_t b[2];
            load_b_trans<HD>(b, tile, 16 * kk, 8 * n, lane);
            mma_bf16_16816(acc[n], a, b);
        }
    }
}

// Sum and max over the 4 lanes (t = 0..3) that hold one row of a C fragment.
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// row += scale acc (16 x HD C fragments) for this lane's rows r (row t = rows[r], skipped when >= T) of a
// (B, T, n_heads, HD) bf16 tensor at (b, head): the gradients' "add into". With positions, g = scale acc is
// first rotated back (rope_backward): g1' = g1 cos + g2 sin, g2' = g2 cos - g1 sin, g2 in fragment n + HD / 16.
template <int HD>
__device__ __forceinline__ void add_rows(bf16 *dst, const float acc[HD / 8][4], float scale, const int rows[2],
                                         int b, int T, int n_heads, int head, int lane,
                                         const int32_t *positions = NULL, const float *inv_freq = NULL) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (rows[r] >= T) continue;
        bf16 *row = dst + (((size_t)b * T + rows[r]) * n_heads + head) * HD;
        float g[HD / 8][2];
#pragma unroll
        for (int n = 0; n < HD / 8; n++) g[n][0] = scale * acc[n][2 * r], g[n][1] = scale * acc[n][2 * r + 1];
        if (positions) {
            float position = (float)positions[(size_t)b * T + rows[r]];
#pragma unroll
            for (int n = 0; n < HD / 16; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float sin_a, cos_a, g1 = g[n][e], g2 = g[n + HD / 16][e];
                    sincosf(position * inv_freq[8 * n + 2 * (lane % 4) + e], &sin_a, &cos_a);
                    g[n][e] = g1 * cos_a + g2 * sin_a;
                    g[n + HD / 16][e] = g2 * cos_a - g1 * sin_a;
                }
        }
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int d = 8 * n + 2 * (lane % 4) + e;
                row[d] = __float2bfloat16_rn(__bfloat162float(row[d]) + g[n][e]);
            }
    }
}

// ----------------------------------------------------------------------------
// forward: grid (ceil(T / 64), n_head, B), 128 threads; shared q, k, v tiles

template <int HD>
__global__ void __launch_bounds__(FA_WARPS * 32)
    flash_forward_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                         const int32_t *seq_start, const int32_t *positions, const float *inv_freq, int T,
                         int n_head, int n_kv_head, float scale, bool causal) {
    extern __shared__ bf16 fa_smem[];
    bf16 *q_tile = fa_smem, *k_tile = q_tile + FA_TILE * (HD + FA_PAD), *v_tile = k_tile + FA_TILE * (HD + FA_PAD);
    int b = blockIdx.z, h = blockIdx.y, kv_head = h / (n_head / n_kv_head);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int q0 = blockIdx.x * FA_TILE;
    int keys_begin = first_key(seq_start, b, T, q0), keys_end = causal ? min(T, q0 + FA_TILE) : T;
    int rows[2], lo[2];  // this lane's query rows (g and g + 8 of its warp's 16) and their first keys
#pragma unroll
    for (int r = 0; r < 2; r++) {
        rows[r] = q0 + 16 * warp + lane / 4 + 8 * r;
        lo[r] = rows[r] < T ? first_key(seq_start, b, T, rows[r]) : 0;
    }
    stage_tile<HD>(q_tile, q, b, q0, T, n_head, h, positions, inv_freq);
    __syncthreads();
    uint32_t qa[HD / 16][4];
    load_rows<HD>(qa, q_tile, 16 * warp, lane);

    float acc[HD / 8][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    for (int k0 = keys_begin; k0 < keys_end; k0 += FA_TILE) {
        __syncthreads();  // the previous k, v tiles are no longer read
        stage_tile<HD>(k_tile, k, b, k0, T, n_kv_head, kv_head, positions, inv_freq);
        stage_tile<HD>(v_tile, v, b, k0, T, n_kv_head, kv_head);
        __syncthreads();
        float s[8][4];
        gemm_nt<HD>(s, qa, k_tile, lane);
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int r = i / 2, u = k0 + 8 * j + 2 * (lane % 4) + i % 2;
                s[j][i] = visible(rows[r], lo[r], u, T, causal) ? s[j][i] * scale : -INFINITY;
                tile_max[r] = fmaxf(tile_max[r], s[j][i]);
            }
        float base[2], tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float new_max = fmaxf(m[r], quad_max(tile_max[r]));
            base[r] = new_max == -INFINITY ? 0.0f : new_max;  // a row with no visible key yet: p = 0, no NaN
            float correction = expf(m[r] - base[r]);
            l[r] *= correction;
#pragma unroll
            for (int n = 0; n < HD / 8; n++) acc[n][2 * r] *= correction, acc[n][2 * r + 1] *= correction;
            m[r] = new_max;
        }
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                s[j][i] = expf(s[j][i] - base[i / 2]);
                tile_sum[i / 2] += s[j][i];
            }
#pragma unroll
        for (int r = 0; r < 2; r++) l[r] += quad_sum(tile_sum[r]);
        gemm_nn<HD>(acc, s, v_tile, lane);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (rows[r] >= T) continue;
        bf16 *row = out + (((size_t)b * T + rows[r]) * n_head + h) * HD;
#pragma unroll
        for (int n = 0; n < HD / 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) row[8 * n + 2 * (lane % 4) + e] = __float2bfloat16_rn(acc[n][2 * r + e] / l[r]);
        if (lane % 4 == 0) lse[((size_t)b * n_head + h) * T + rows[r]] = m[r] + logf(l[r]);
    }
}

// ----------------------------------------------------------------------------
// dq: grid (ceil(T / 64), n_head, B), 128 threads; shared q, dout, k, v tiles

template <int HD>
__global__ void __launch_bounds__(FA_WARPS * 32)
    flash_dq_kernel(bf16 *dq, const bf16 *dout, const float *lse, const float *D, const bf16 *q, const bf16 *k,
                    const bf16 *v, const int32_t *seq_start, const int32_t *positions, const float *inv_freq, int T,
                    int n_head, int n_kv_head, float scale, bool causal) {
    extern __shared__ bf16 fa_smem[];
    const int tile_elems = FA_TILE * (HD + FA_PAD);
    bf16 *q_tile = fa_smem, *dout_tile = q_tile + tile_elems, *k_tile = dout_tile + tile_elems;
    bf16 *v_tile = k_tile + tile_elems;
    int b = blockIdx.z, h = blockIdx.y, kv_head = h / (n_head / n_kv_head);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int q0 = blockIdx.x * FA_TILE;
    int keys_begin = first_key(seq_start, b, T, q0), keys_end = causal ? min(T, q0 + FA_TILE) : T;
    int rows[2], lo[2];
    float row_lse[2], row_D[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        rows[r] = q0 + 16 * warp + lane / 4 + 8 * r;
        bool active = rows[r] < T;
        size_t stat = ((size_t)b * n_head + h) * T + (active ? rows[r] : 0);
        lo[r] = active ? first_key(seq_start, b, T, rows[r]) : 0;
        row_lse[r] = active ? lse[stat] : 0.0f;
        row_D[r] = active ? D[stat] : 0.0f;
    }
    stage_tile<HD>(q_tile, q, b, q0, T, n_head, h, positions, inv_freq);
    stage_tile<HD>(dout_tile, dout, b, q0, T, n_head, h);
    __syncthreads();
    uint32_t qa[HD / 16][4], da[HD / 16][4];
    load_rows<HD>(qa, q_tile, 16 * warp, lane);
    load_rows<HD>(da, dout_tile, 16 * warp, lane);

    float acc[HD / 8][4] = {};
    for (int k0 = keys_begin; k0 < keys_end; k0 += FA_TILE) {
        __syncthreads();
        stage_tile<HD>(k_tile, k, b, k0, T, n_kv_head, kv_head, positions, inv_freq);
        stage_tile<HD>(v_tile, v, b, k0, T, n_kv_head, kv_head);
        __syncthreads();
        float s[8][4], dp[8][4];
        gemm_nt<HD>(s, qa, k_tile, lane);
        gemm_nt<HD>(dp, da, v_tile, lane);
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int r = i / 2, u = k0 + 8 * j + 2 * (lane % 4) + i % 2;
                float p = visible(rows[r], lo[r], u, T, causal) ? expf(s[j][i] * scale - row_lse[r]) : 0.0f;
                s[j][i] = p * (dp[j][i] - row_D[r]);  // dS
            }
        gemm_nn<HD>(acc, s, k_tile, lane);
    }
    add_rows<HD>(dq, acc, scale, rows, b, T, n_head, h, lane, positions, inv_freq);
}

// ----------------------------------------------------------------------------
// dk, dv: grid (ceil(T / 64), n_kv_head, B), 128 threads; shared k, v, q, dout tiles and the query tile's
// lse, D and first keys

template <int HD>
__global__ void __launch_bounds__(FA_WARPS * 32)
    flash_dkdv_kernel(bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *D, const bf16 *q,
                      const bf16 *k, const bf16 *v, const int32_t *seq_start, const int32_t *positions,
                      const float *inv_freq, int T, int n_head, int n_kv_head, float scale, bool causal) {
    extern __shared__ bf16 fa_smem[];
    const int tile_elems = FA_TILE * (HD + FA_PAD);
    bf16 *k_tile = fa_smem, *v_tile = k_tile + tile_elems, *q_tile = v_tile + tile_elems;
    bf16 *dout_tile = q_tile + tile_elems;
    float *lse_tile = (float *)(dout_tile + tile_elems), *D_tile = lse_tile + FA_TILE;
    int *lo_tile = (int *)(D_tile + FA_TILE);
    int b = blockIdx.z, kv_head = blockIdx.y, group = n_head / n_kv_head;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int key0 = blockIdx.x * FA_TILE, last_key = min(T, key0 + FA_TILE) - 1;
    int keys[2];  // this lane's key rows
#pragma unroll
    for (int r = 0; r < 2; r++) keys[r] = key0 + 16 * warp + lane / 4 + 8 * r;
    stage_tile<HD>(k_tile, k, b, key0, T, n_kv_head, kv_head, positions, inv_freq);  // read after the first barriers
    stage_tile<HD>(v_tile, v, b, key0, T, n_kv_head, kv_head);

    float dk_acc[HD / 8][4] = {}, dv_acc[HD / 8][4] = {};
    for (int h = kv_head * group; h < (kv_head + 1) * group; h++) {
        const float *lse_bh = lse + ((size_t)b * n_head + h) * T, *D_bh = D + ((size_t)b * n_head + h) * T;
        for (int i0 = causal ? key0 : 0; i0 < T; i0 += FA_TILE) {  // causal: queries >= the block's first key
            if (first_key(seq_start, b, T, i0) > last_key) break;  // segments after every key of the block
            __syncthreads();
            stage_tile<HD>(q_tile, q, b, i0, T, n_head, h, positions, inv_freq);
            stage_tile<HD>(dout_tile, dout, b, i0, T, n_head, h);
            for (int i = threadIdx.x; i < FA_TILE; i += blockDim.x) {
                bool active = i0 + i < T;
                lse_tile[i] = active ? lse_bh[i0 + i] : 0.0f;
                D_tile[i] = active ? D_bh[i0 + i] : 0.0f;
                lo_tile[i] = active ? first_key(seq_start, b, T, i0 + i) : T;  // queries >= T: past every key
            }
            __syncthreads();
            float s[8][4], dp[8][4];  // transposed: (16 keys x 64 queries)
            uint32_t a[HD / 16][4];   // k's, then v's rows reloaded per tile: at hd 128 both stay would spill
            load_rows<HD>(a, k_tile, 16 * warp, lane);
            gemm_nt<HD>(s, a, q_tile, lane);
            load_rows<HD>(a, v_tile, 16 * warp, lane);
            gemm_nt<HD>(dp, a, dout_tile, lane);
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    int key = keys[i / 2], col = 8 * j + 2 * (lane % 4) + i % 2, query = i0 + col;
                    bool seen = visible(query, lo_tile[col], key, T, causal);
                    float p = seen ? expf(s[j][i] * scale - lse_tile[col]) : 0.0f;
                    s[j][i] = p;
                    dp[j][i] = p * (dp[j][i] - D_tile[col]);  // dS^T
                }
            gemm_nn<HD>(dv_acc, s, dout_tile, lane);
            gemm_nn<HD>(dk_acc, dp, q_tile, lane);
        }
    }
    add_rows<HD>(dk, dk_acc, scale, keys, b, T, n_kv_head, kv_head, lane, positions, inv_freq);
    add_rows<HD>(dv, dv_acc, 1.0f, keys, b, T, n_kv_head, kv_head, lane);
}

// ----------------------------------------------------------------------------
// launchers

static size_t tile_bytes(int head_dim) { return (size_t)FA_TILE * (head_dim + FA_PAD) * sizeof(bf16); }

// Raises the kernel's dynamic shared memory limit to `bytes` (over 48 KiB for the larger head sizes).
template <typename Kernel>
static bool allow_shared(Kernel kernel, size_t bytes) {
    return cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int HD>
static void forward(CudaContext *ctx, bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                    const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head, int n_kv_head,
                    bool causal) {
    auto flash_forward = flash_forward_kernel<HD>;
    size_t smem = 3 * tile_bytes(HD);
    if (!allow_shared(flash_forward, smem)) return;
    dim3 grid(ceil_div(T, FA_TILE), n_head, B);
    flash_forward<<<grid, FA_WARPS * 32, smem, ctx->stream>>>(out, lse, q, k, v, seq_start,
                                                              rope ? rope->positions : NULL,
                                                              rope ? rope->inv_freq : NULL, T, n_head, n_kv_head,
                                                              1.0f / sqrtf((float)HD), causal);
    launchCheck("flash_forward_kernel");
}

template <int HD>
static void backward(CudaContext *ctx, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse,
                     const float *D, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                     const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, bool causal) {
    float scale = 1.0f / sqrtf((float)HD);
    const int32_t *positions = rope ? rope->positions : NULL;
    const float *inv_freq = rope ? rope->inv_freq : NULL;
    auto flash_dq = flash_dq_kernel<HD>;
    size_t dq_smem = 4 * tile_bytes(HD);
    if (!allow_shared(flash_dq, dq_smem)) return;
    flash_dq<<<dim3(ceil_div(T, FA_TILE), n_head, B), FA_WARPS * 32, dq_smem, ctx->stream>>>(
        dq, dout, lse, D, q, k, v, seq_start, positions, inv_freq, T, n_head, n_kv_head, scale, causal);
    if (!launchCheck("flash_dq_kernel")) return;
    auto flash_dkdv = flash_dkdv_kernel<HD>;
    size_t dkdv_smem = 4 * tile_bytes(HD) + FA_TILE * (2 * sizeof(float) + sizeof(int));
    if (!allow_shared(flash_dkdv, dkdv_smem)) return;
    flash_dkdv<<<dim3(ceil_div(T, FA_TILE), n_kv_head, B), FA_WARPS * 32, dkdv_smem, ctx->stream>>>(
        dk, dv, dout, lse, D, q, k, v, seq_start, positions, inv_freq, T, n_head, n_kv_head, scale, causal);
    launchCheck("flash_dkdv_kernel");
}

bool cuda_flash_attention_supported(int head_dim, const void *q, const void *k, const void *v, const void *dout) {
    bool aligned = ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)dout) % 16 == 0;
    return aligned && (head_dim == 64 || head_dim == 80 || head_dim == 96 || head_dim == 128);
}

void cuda_flash_attention_forward(CudaContext *ctx, bf16 *out, float *lse, const bf16 *q, const bf16 *k,
                                  const bf16 *v, const int32_t *seq_start, const AttentionRope *rope, int B, int T,
                                  int n_head, int n_kv_head, int head_dim, bool causal) {
    switch (head_dim) {
        case 64: forward<64>(ctx, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, causal); break;
        case 80: forward<80>(ctx, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, causal); break;
        case 96: forward<96>(ctx, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, causal); break;
        case 128: forward<128>(ctx, out, lse, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, causal); break;
        default: record_failure(__FILE__, __LINE__, "flash attention", "head_dim is not 64, 80, 96 or 128");
    }
}

void cuda_flash_attention_backward(CudaContext *ctx, bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout,
                                   const float *lse, const float *D, const bf16 *q, const bf16 *k, const bf16 *v,
                                   const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                   int n_kv_head, int head_dim, bool causal) {
#define FLASH_BACKWARD(HD) \
    backward<HD>(ctx, dq, dk, dv, dout, lse, D, q, k, v, seq_start, rope, B, T, n_head, n_kv_head, causal)
    switch (head_dim) {
        case 64: FLASH_BACKWARD(64); break;
        case 80: FLASH_BACKWARD(80); break;
        case 96: FLASH_BACKWARD(96); break;
        case 128: FLASH_BACKWARD(128); break;
        default: record_failure(__FILE__, __LINE__, "flash attention", "head_dim is not 64, 80, 96 or 128");
    }
#undef FLASH_BACKWARD
}
