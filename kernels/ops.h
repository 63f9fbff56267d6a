// kernels: the op table the model is written against.
//
// One model, two backends. The CPU backend (kernels/cpu) is fp32 and the
// oracle for every test; the CUDA backend (kernels/cuda) stores activations
// and frozen weights in bf16 and accumulates in fp32.
//
// Conventions
// - Activations and frozen weights live in device memory in the backend's
//   `act_dtype` and are passed as `void *` (fp32 on the CPU, bf16 on CUDA).
//   Trainable parameters' fp32 masters, their gradients, optimizer state,
//   normalisation statistics and losses are fp32 (`float *`).
// - All tensors are row-major and contiguous. Token-major activations are
//   (N, C) with N = B * T tokens; per-head tensors are (N, n_head, head_dim).
// - Backward ops ADD into every gradient they produce (dinp += ...), like
//   llm.c: the caller zeroes gradient buffers when it needs them fresh.
// - Ops are asynchronous on a GPU; `synchronize` waits for all of them.
// - An Ops is a backend handle: every function takes the handle it is called
//   through first (ops->matmul(ops, ...)) and finds the backend's state there.
#pragma once
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"

// Rotary embedding frequencies. `llama3` is Llama 3.1's rope_scaling
// (rope_type "llama3"): low frequencies divided by `factor`, high ones kept,
// a smooth blend between.
typedef struct RopeScaling {
    bool llama3;
    float factor;                  // 8 for Llama 3.1
    float low_freq_factor;         // 1
    float high_freq_factor;        // 4
    int original_max_position;     // 8192
} RopeScaling;

// inv_freq[i] = theta^(-2i / head_dim), i < head_dim / 2, then scaled.
void rope_inverse_frequencies(float *inv_freq, int head_dim, float theta, const RopeScaling *scaling);

// The rotation attention_forward / attention_backward apply to q and k as
// they load them: rope_forward's arguments, positions (N = B * T) and
// inv_freq (head_dim / 2), both in the backend's memory.
typedef struct AttentionRope {
    const int32_t *positions;
    const float *inv_freq;
} AttentionRope;

typedef struct Ops Ops;
struct Ops {
    const char *name;  // "cpu" or "cuda", for messages; what differs is in the capabilities below
    // ---- capabilities ------------------------------------------------------
    bool device_memory;   // tensors live in device memory: collectives go through NCCL on the device
    bool pinned_staging;  // host buffers the backend copies to and from are pinned, so copies overlap
    DType act_dtype;   // storage of activations and frozen weights
    // The backend's own state, which its ops reach only through this handle:
    // CUDA's device, streams, cuBLASLt handle, workspace and scratch; NULL on
    // the CPU. Every op takes the handle it was called through as `ops`.
    void *state;

    // ---- memory (device memory for CUDA, host memory for the CPU) --------
    void *(*alloc)(const Ops *ops, size_t bytes, Error *err);
    void (*free)(const Ops *ops, void *ptr);
    // upload and download return with the copy complete.
    void (*upload)(const Ops *ops, void *dst, const void *src_host, size_t bytes);
    void (*download)(const Ops *ops, void *dst_host, const void *src, size_t bytes);
    // dst = src_host in stream order: the bytes are taken before it returns
    // (src_host may be reused at once, pageable or not) and reach dst before
    // the ops issued after it run, without the host waiting for the ops
    // issued before it. For the small per-micro-batch inputs (tokens,
    // positions, ...). A plain copy on the CPU.
    void (*upload_async)(const Ops *ops, void *dst, const void *src_host, size_t bytes);
    void (*zero)(const Ops *ops, void *ptr, size_t bytes);
    void (*synchronize)(const Ops *ops);
    // The stream every op is issued on (cudaStream_t), for collectives that
    // order themselves after it with events; NULL on the CPU backend.
    void *(*stream)(const Ops *ops);
    // The most memory this backend's alloc held at once since the process
    // started (CPU: its allocations; CUDA: its cudaMallocs, scratch and
    // cuBLASLt workspace included, the CUDA context not).
    size_t (*peak_bytes)(const Ops *ops);
    // Grows the backend's scratch (CUDA: attention_backward's row statistics,
    // attention_backward_scratch_bytes) to at least `bytes` now, so that no op
    // allocates, and synchronizes the device, inside the step loop. Nothing
    // to do on the CPU.
    bool (*reserve_scratch)(const Ops *ops, size_t bytes, Error *err);
    // dst_host = src on a copy stream that overlaps the ops issued later:
    // the copy starts once `after` (a cudaEvent_t, e.g. a collective's on its
    // own stream) has fired, or when NULL once the ops issued so far are done.
    // dst_host must be pinned to overlap on CUDA. A plain copy on the CPU.
    void (*download_async)(const Ops *ops, void *dst_host, const void *src, size_t bytes, void *after);
    // Waits for every download_async issued.
    void (*synchronize_copies)(const Ops *ops);

    // act[i] = (act_dtype) src[i], src fp32 on the host: weights, a batch's images.
    // Returns once src_host may be reused, the copy queued in stream order as
    // upload_async's (a device backend does not wait for the device here).
    void (*upload_f32)(const Ops *ops, void *dst_act, const float *src_host, size_t n);
    // dst[i] = (float) act[i], onto the host, returning with the copy complete. Reads results.
    void (*download_f32)(const Ops *ops, float *dst_host, const void *src_act, size_t n);
    // act[i] = (act_dtype) params[i], both on the device: the compute copy of
    // the fp32 trainable parameters (an alias-free copy even on the CPU).
    void (*params_to_act)(const Ops *ops, void *dst_act, const float *params, size_t n);

    // ---- linear algebra --------------------------------------------------
    // out (M, N) = alpha * op(a) @ op(b) + beta * out, with op(a) (M, K) and
    // op(b) (K, N); a is stored (K, M) when trans_a, b is stored (N, K) when
    // trans_b. A linear layer x W^T is matmul(y, x, W, M, N, K, false, true, 1, 0).
    void (*matmul)(const Ops *ops, void *out, const void *a, const void *b, int M, int N, int K, bool trans_a,
                   bool trans_b, float alpha, float beta);
    // dweight (N, K) += alpha * dout^T @ inp, dout (M, N), inp (M, K): the
    // weight gradient of y = x W^T, accumulated in fp32.
    void (*matmul_weight_grad)(const Ops *ops, float *dweight, const void *dout, const void *inp, int M, int N, int K,
                               float alpha);
    // a[i] += b[i]
    void (*add_inplace)(const Ops *ops, void *a, const void *b, size_t n);

    // ---- embedding -------------------------------------------------------
    // out (N, C) = table[ids[n]], table (V, C), ids on the device.
    void (*embedding_forward)(const Ops *ops, void *out, const int32_t *ids, const void *table, int N, int C);

    // ---- RMSNorm (Llama) -------------------------------------------------
    // out = inp / sqrt(mean(inp^2) + eps) * weight; rstd (N) saved for backward.
    void (*rmsnorm_forward)(const Ops *ops, void *out, float *rstd, const void *inp, const void *weight, int N, int C,
                            float eps);
    // x += residual, then out = rmsnorm(x) as rmsnorm_forward: a residual add
    // and the norm after it in one pass over x (x holds the sum afterwards).
    void (*residual_rmsnorm_forward)(const Ops *ops, void *out, float *rstd, void *x, const void *residual,
                                     const void *weight, int N, int C, float eps);
    void (*rmsnorm_backward)(const Ops *ops, void *dinp, const void *dout, const void *inp, const void *weight,
                             const float *rstd, int N, int C);

    // ---- rotary position embedding (Hugging Face rotate_half layout) ------
    // x (N, n_head, head_dim) rotated in place by positions (N) and
    // inv_freq (head_dim / 2): x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin,
    // x1 = x[:head_dim/2], x2 = x[head_dim/2:]. Backward rotates by -angle.
    void (*rope_forward)(const Ops *ops, void *x, const int32_t *positions, const float *inv_freq, int N, int n_head,
                         int head_dim);
    void (*rope_backward)(const Ops *ops, void *dx, const int32_t *positions, const float *inv_freq, int N, int n_head,
                          int head_dim);

    // ---- causal self-attention with grouped-query heads -------------------
    // q (B, T, n_head, hd), k and v (B, T, n_kv_head, hd), out like q.
    // Query head h reads kv head h / (n_head / n_kv_head); scale 1/sqrt(hd).
    // lse (B, n_head, T) = log-sum-exp of each row's scaled scores, saved for
    // the backward, which recomputes the probabilities from q, k and lse.
    // Packed rows: seq_start (B, T), device memory, cuts each row into
    // contiguous segments (samples); seq_start[b, t] is the index within row b
    // of the first token of t's segment, so it is t or seq_start[b, t - 1].
    // Token t attends to u iff seq_start[b, t] <= u <= t. NULL: each row is
    // one causal sequence (seq_start = 0 everywhere).
    // Fused RoPE: with rope, q and k are the un-rotated projections and the
    // op attends with rope_forward's rotation of them (positions indexed by
    // token b * T + t), applied as q, k are loaded, in the forward and in the
    // backward's recomputation; the backward's dq, dk are with respect to the
    // un-rotated q, k (rope_backward of the rotated ones' gradients). NULL:
    // q, k are used as they are (the vision towers, no positions).
    void (*attention_forward)(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                              const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                              int n_kv_head, int head_dim);
    void (*attention_backward)(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                               const float *lse, const void *q, const void *k, const void *v, const int32_t *seq_start,
                               const AttentionRope *rope, int B, int T, int n_head, int n_kv_head, int head_dim);

    // ---- SwiGLU: out = silu(gate) * up, silu(x) = x / (1 + e^-x) ----------
    void (*swiglu_forward)(const Ops *ops, void *out, const void *gate, const void *up, size_t n);
    void (*swiglu_backward)(const Ops *ops, void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                            size_t n);

    // ---- dropout (inverted): out = inp * keep / (1 - p) ------------------
    // keep[i] = rng_uniform_at(seed, offset + i) >= p: counter-based, so the
    // backward regenerates the mask and every backend draws the same one.
    void (*dropout_forward)(const Ops *ops, void *out, const void *inp, size_t n, float p, uint64_t seed,
                            uint64_t offset);
    void (*dropout_backward)(const Ops *ops, void *dinp, const void *dout, size_t n, float p, uint64_t seed,
                             uint64_t offset);

    // ---- cross-entropy, forward and backward in one pass ------------------
    // logits (N, V); targets (N) with -100 = ignore. Adds sum over kept rows of
    // -log softmax(logits)[target] into *loss_sum (device fp32 scalar) and, if
    // dlogits is not NULL, writes dlogits = grad_scale * (softmax - onehot)
    // (zero rows where ignored). dlogits may alias logits.
    void (*cross_entropy)(const Ops *ops, float *loss_sum, void *dlogits, const void *logits, const int32_t *targets,
                          int N, int V, float grad_scale);

    // ---- vision towers and projectors -------------------------------------
    // LayerNorm: out = (inp - mean) * rstd * weight + bias per row of C,
    // rstd = 1 / sqrt(var + eps) (biased variance); mean, rstd (N) saved.
    // Backward adds dinp; dweight and dbias (fp32, C) are added when not NULL.
    void (*layernorm_forward)(const Ops *ops, void *out, float *mean, float *rstd, const void *inp, const void *weight,
                              const void *bias, int N, int C, float eps);
    void (*layernorm_backward)(const Ops *ops, void *dinp, float *dweight, float *dbias, const void *dout,
                               const void *inp, const void *weight, const float *mean, const float *rstd, int N, int C);
    // GELU, exact (nn.GELU()): out = x Phi(x) = x (1 + erf(x / sqrt 2)) / 2.
    void (*gelu_forward)(const Ops *ops, void *out, const void *inp, size_t n);
    void (*gelu_backward)(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
    // quick_gelu (CLIP): out = x sigmoid(1.702 x).
    void (*quick_gelu_forward)(const Ops *ops, void *out, const void *inp, size_t n);
    void (*quick_gelu_backward)(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
    // GELU, tanh approximation (SigLIP's gelu_pytorch_tanh, nn.GELU(approximate='tanh')):
    // out = x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) / 2.
    void (*gelu_tanh_forward)(const Ops *ops, void *out, const void *inp, size_t n);
    void (*gelu_tanh_backward)(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);
    // out (N, C) += bias (C) on every row; dbias (fp32, C) += sum over rows of dout.
    void (*bias_add)(const Ops *ops, void *out, const void *bias, int N, int C);
    void (*bias_backward)(const Ops *ops, float *dbias, const void *dout, int N, int C);
    // x (N, C) *= scale (C) on every row: timm's LayerScale (DINOv2's ls1 / ls2 gammas);
    // its backward is the same op on the gradient.
    void (*scale_columns)(const Ops *ops, void *x, const void *scale, int N, int C);
    // out[rows[r]] = src[r]: src (R, C) rows written into out (N, C) at rows (R).
    void (*scatter_rows)(const Ops *ops, void *out, const int32_t *rows, const void *src, int R, int C);
    // dst[r, dst_col0 + c] = src[r, src_col0 + c] for r < rows, c < n_cols; dst (rows, dst_cols), src (rows,
    // src_cols): OpenVLA's two towers' features side by side, and their gradients apart again.
    void (*copy_columns)(const Ops *ops, void *dst, int dst_cols, int dst_col0, const void *src, int src_cols,
                         int src_col0, int n_cols, int rows);
    // Convolution with stride = kernel = patch, no bias (CLIP's patch embedding):
    // images (B, channels, size, size), weight (D, channels, patch, patch),
    // out (B, P, D) with P = (size / patch)^2 patches in row-major order (a remainder
    // of size / patch pixels unused, as Conv2d's 'valid' padding).
    void (*patch_embed_forward)(const Ops *ops, void *out, const void *images, const void *weight, int B, int channels,
                                int image_size, int patch, int D);
    // Bidirectional (non-causal) multi-head attention, every query over all T keys of its row:
    // q, k, v, out (B, T, n_head, hd); out_t = softmax_u(q_t . k_u / sqrt(hd)) v_u;
    // lse (B, n_head, T) saved as attention_forward's. The backward ADDS into
    // dq, dk, dv as attention_backward does (and takes the same CUDA scratch,
    // attention_backward_scratch_bytes).
    void (*attention_full_forward)(const Ops *ops, void *out, float *lse, const void *q, const void *k, const void *v,
                                   int B, int T, int n_head, int head_dim);
    void (*attention_full_backward)(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                                    const float *lse, const void *q, const void *k, const void *v, int B, int T,
                                    int n_head, int head_dim);

    // ---- optimizer -------------------------------------------------------
    // *out (device fp32 scalar) += sum(g[i]^2)
    void (*sum_squares)(const Ops *ops, float *out, const float *g, size_t n);
    // x[i] *= s
    void (*scale_f32)(const Ops *ops, float *x, float s, size_t n);
    // torch.nn.utils.clip_grad_norm_ with the norm's square on the device: x[i] *= coef when coef < 1,
    // coef = max_norm / (sqrt(*sum_squares) + 1e-6) in fp32 (a NaN coef leaves x as it is).
    void (*clip_by_norm)(const Ops *ops, float *x, size_t n, const float *sum_squares, float max_norm);
    // AdamW as torch.optim.AdamW (decoupled weight decay, bias correction
    // folded into step size and denominator), step counts from 1.
    // skip_sum_squares (device fp32 scalar, or NULL: never skipped): params, m
    // and v stay untouched when norm = sqrt(*skip_sum_squares) is not finite
    // or norm > norm_limit (ops_step_skipped), decided on the device.
    void (*adamw)(const Ops *ops, float *params, const float *grads, float *m, float *v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step, const float *skip_sum_squares,
                  float norm_limit);

    // ---- NF4 (QLoRA): bitsandbytes' blockwise dequantization -------------
    // out[i] = fp32(code[q[i]] * absmax[i / blocksize]) + offset, fp32: the
    // double-quantized statistics (8-bit codes, blocks of 256).
    void (*dequantize_blockwise_u8)(const Ops *ops, float *out, const uint8_t *q, const float *code,
                                    const float *absmax, float offset, size_t n, int blocksize);
    // out[i] (act_dtype) = code[nibble i] * absmax[i / 64], nibble 2j the high
    // half of packed[j], 2j+1 the low half; product rounded to fp32 first.
    void (*dequantize_nf4)(const Ops *ops, void *out, const uint8_t *packed, const float *code, const float *absmax,
                           size_t n);

    bool (*check)(const Ops *ops, Error *err); // first asynchronous failure since the last check, if any
};

// The CUDA backend's fixed device buffers, allocated once by ops_cuda: the
// cuBLASLt workspace, the fp32 staging buffer of upload_f32/download_f32, and
// the per-block partial sums of sum_squares (CUDA_REDUCE_PARTIALS floats).
// Besides them a scratch buffer grows to the largest reserve_scratch or op
// request (attention's backward: B * n_head * T floats; cross_entropy: one
// float per row). upload_async stages through CUDA_UPLOAD_STAGING_BYTES of
// pinned host memory.
#define CUDA_LT_WORKSPACE_BYTES ((size_t)32 << 20)
#define CUDA_STAGING_BYTES ((size_t)32 << 20)
#define CUDA_REDUCE_PARTIALS 1024
#define CUDA_REDUCE_PARTIALS_BYTES ((size_t)CUDA_REDUCE_PARTIALS * sizeof(float))
#define CUDA_UPLOAD_STAGING_BYTES ((size_t)8 << 20)

// The scratch attention_backward takes (on CUDA: D = rowsum(dout * out), one
// float per (token, query head)); what a model reserves for its largest batch.
static inline size_t attention_backward_scratch_bytes(int B, int T, int n_head) {
    return (size_t)B * (size_t)T * (size_t)n_head * sizeof(float);
}

#ifdef __CUDACC__
#define OPS_HOST_DEVICE __host__ __device__
#else
#define OPS_HOST_DEVICE
#endif

// The optimizer step's skip rule on the global norm sqrt(sum_squares): not finite, or above the limit
// (INFINITY: none). The adamw op decides it on the device, the host the same way once it reads the norm.
static inline OPS_HOST_DEVICE bool ops_step_skipped(float sum_squares, float norm_limit) {
    float norm = sqrtf(sum_squares);
    return !isfinite(norm) || norm > norm_limit;
}

// The CPU backend: always available.
const Ops *ops_cpu(void);
// The CUDA backend: NULL with a reason in err when built without CUDA or
// when no device is usable. It works on device LOCAL_RANK (else
// SLURM_LOCALID, else 0; device 0 when the process sees only one), made
// current on the calling thread before its stream and handles are created.
const Ops *ops_cuda(Error *err);
// True when the CUDA backend was built against tools/cuda_emu (-DLORA_TRAIN_CUDA=EMU):
// it runs on the CPU, correct but far slower than the CPU backend, so
// train.backend auto does not choose it; train.backend cuda does.
bool ops_cuda_is_emulated(void);

// The NVIDIA GPUs the CUDA runtime sees, without choosing one or creating a
// context: what plan compares with and doctor prints.
#define CUDA_INFO_MAX_DEVICES 16
typedef struct CudaDeviceInfo {
    char name[256];
    size_t total_bytes;
    int major, minor;              // compute capability
} CudaDeviceInfo;
typedef struct CudaInfo {
    bool built;                    // this build has the CUDA backend (emulated or not)
    int built_version;             // CUDART_VERSION compiled against (12040 = 12.4); 0 without CUDA
    int runtime_version;           // the libcudart loaded; 0 without CUDA
    int driver_version;            // the newest CUDA the driver supports; 0 without a driver
    int n_devices;                 // listed in devices (at most CUDA_INFO_MAX_DEVICES)
    CudaDeviceInfo devices[CUDA_INFO_MAX_DEVICES];
    char problem[ERROR_MESSAGE_MAX]; // why no GPU can be used ("" when one can)
} CudaInfo;
void ops_cuda_info(CudaInfo *info);
