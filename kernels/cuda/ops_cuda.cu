// The CUDA backend's op table: context setup, memory, sticky error reporting.
// Activations are bf16; every op runs on one stream and is asynchronous
// (download_async on a second, copy stream).
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"

// ----------------------------------------------------------------------------
// sticky error: the first failure since the last check. Process-wide, as the
// CUDA runtime's own sticky errors are: helpers that record one need no handle.

static bool failure_pending;
static char failure_message[ERROR_MESSAGE_MAX];

void record_failure(const char *file, int line, const char *what, const char *why) {
    if (failure_pending) return;
    failure_pending = true;
    snprintf(failure_message, sizeof failure_message, "CUDA backend: %s failed at %s:%d: %s", what,
             file, line, why);
}

bool cuda_check(cudaError_t status, const char *file, int line, const char *what) {
    if (status == cudaSuccess) return true;
    record_failure(file, line, what, cudaGetErrorString(status));
    return false;
}

bool cublas_check(cublasStatus_t status, const char *file, int line, const char *what) {
    if (status == CUBLAS_STATUS_SUCCESS) return true;
    char why[64];
    snprintf(why, sizeof why, "cuBLAS status %d", (int)status);
    record_failure(file, line, what, why);
    return false;
}

static bool check(const Ops *ops, Error *err) {
    cudaCheck(cudaGetLastError());
    if (!failure_pending) return true;
    failure_pending = false;
    return fail(err, "%s", failure_message);
}

// ----------------------------------------------------------------------------
// memory: every cudaMalloc of the backend is recorded with its size, so the
// live total and its high water (peak_bytes) are exact

static bool track_allocation(AllocationTable *table, void *ptr, size_t bytes) {
    if (table->n_live == table->capacity) {
        size_t capacity = table->capacity ? 2 * table->capacity : 256;
        LiveAllocation *grown = (LiveAllocation *)realloc(table->live, capacity * sizeof *grown);
        if (!grown) return false;
        table->live = grown;
        table->capacity = capacity;
    }
    table->live[table->n_live++] = (LiveAllocation){ptr, bytes};
    table->live_bytes += bytes;
    if (table->live_bytes > table->peak_bytes) table->peak_bytes = table->live_bytes;
    return true;
}

static void untrack_allocation(AllocationTable *table, void *ptr) {
    for (size_t i = table->n_live; i-- > 0;) {
        if (table->live[i].ptr != ptr) continue;
        table->live_bytes -= table->live[i].bytes;
        table->live[i] = table->live[--table->n_live];
        return;
    }
}

// cudaMalloc, recorded; a full record table counts as out of memory.
static cudaError_t tracked_malloc(CudaContext *ctx, void **ptr, size_t bytes) {
    cudaError_t status = cudaMalloc(ptr, bytes > 0 ? bytes : 1);
    if (status != cudaSuccess || track_allocation(&ctx->allocations, *ptr, bytes)) return status;
    cudaCheck(cudaFree(*ptr));
    *ptr = NULL;
    return cudaErrorMemoryAllocation;
}

static void *context_alloc(CudaContext *ctx, size_t bytes, Error *err) {
    void *ptr = NULL;
    cudaError_t status = tracked_malloc(ctx, &ptr, bytes);
    if (status != cudaSuccess) {
        fail(err, "cudaMalloc of %zu bytes: %s", bytes, cudaGetErrorString(status));
        return NULL;
    }
    return ptr;
}

// Waits for the device first: cudaFree may, but need not, wait for the work
// queued on the memory (and the copy and communication streams may use it).
static void context_free(CudaContext *ctx, void *ptr) {
    if (!ptr) return;
    cudaCheck(cudaDeviceSynchronize());
    untrack_allocation(&ctx->allocations, ptr);
    cudaCheck(cudaFree(ptr));
}

static void *device_alloc(const Ops *ops, size_t bytes, Error *err) {
    return context_alloc(cuda_context(ops), bytes, err);
}

static void device_free(const Ops *ops, void *ptr) { context_free(cuda_context(ops), ptr); }

static size_t device_peak_bytes(const Ops *ops) { return cuda_context(ops)->allocations.peak_bytes; }

// Growing frees the old buffer, after the work queued on it (context_free waits).
void *cuda_scratch(CudaContext *ctx, size_t bytes) {
    if (bytes <= ctx->scratch_bytes) return ctx->scratch;
    if (ctx->scratch) context_free(ctx, ctx->scratch);
    ctx->scratch = NULL;
    ctx->scratch_bytes = 0;
    if (!cudaCheck(tracked_malloc(ctx, &ctx->scratch, bytes))) return NULL;
    ctx->scratch_bytes = bytes;
    return ctx->scratch;
}

// Called by a model at creation with its largest batch's needs; cuda_scratch
// records its failure for check, which reports and clears it here.
static bool reserve_scratch(const Ops *ops, size_t bytes, Error *err) {
    CudaContext *ctx = cuda_context(ops);
    if (bytes == 0 || cuda_scratch(ctx, bytes)) return true;
    check(ops, err);
    return fail_context(err, "reserving %zu bytes of scratch: ", bytes);
}

// ----------------------------------------------------------------------------
// copies

// Copies are stream-ordered and complete before returning, so the host
// buffer may be reused at once.
static void upload(const Ops *ops, void *dst, const void *src_host, size_t bytes) {
    CudaContext *ctx = cuda_context(ops);
    if (bytes == 0) return;
    if (!cudaCheck(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, ctx->stream))) return;
    cudaCheck(cudaStreamSynchronize(ctx->stream));
}

static void download(const Ops *ops, void *dst_host, const void *src, size_t bytes) {
    CudaContext *ctx = cuda_context(ops);
    if (bytes == 0) return;
    if (!cudaCheck(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, ctx->stream))) return;
    cudaCheck(cudaStreamSynchronize(ctx->stream));
}

// upload_async copies from pinned staging: a cudaMemcpyAsync from pageable
// memory would be synchronous, and the caller's buffer may change once we
// return. The staging is two halves taken in turn. A half is refilled only
// once the stream has run its last copy (the event recorded after it): the
// host waits there only when it is a whole half of uploads (several
// micro-batches of tokens, targets and positions, or one of large images)
// ahead of the stream. Behind a collective of a hung peer that wait ends
// when NCCL's watchdog aborts the communicator (parallel/cuda/nccl.c).
static unsigned char *upload_staging_take(CudaContext *ctx, size_t bytes) {
    if (ctx->upload_used + bytes > CUDA_UPLOAD_STAGING_BYTES / 2) {
        ctx->upload_half ^= 1;
        ctx->upload_used = 0;
        if (!cudaCheck(cudaEventSynchronize(ctx->upload_done[ctx->upload_half]))) return NULL;
    }
    unsigned char *slot = ctx->upload_staging + ctx->upload_half * (CUDA_UPLOAD_STAGING_BYTES / 2) + ctx->upload_used;
    ctx->upload_used += bytes;
    return slot;
}

static void upload_async(const Ops *ops, void *dst, const void *src_host, size_t bytes) {
    CudaContext *ctx = cuda_context(ops);
    const size_t half = CUDA_UPLOAD_STAGING_BYTES / 2;
    for (size_t start = 0; start < bytes; start += half) {
        size_t count = bytes - start < half ? bytes - start : half;
        unsigned char *slot = upload_staging_take(ctx, count);
        if (!slot) return;
        memcpy(slot, (const unsigned char *)src_host + start, count);
        if (!cudaCheck(cudaMemcpyAsync((unsigned char *)dst + start, slot, count, cudaMemcpyHostToDevice, ctx->stream)))
            return;
        if (!cudaCheck(cudaEventRecord(ctx->upload_done[ctx->upload_half], ctx->stream))) return;
    }
}

static void zero(const Ops *ops, void *ptr, size_t bytes) {
    CudaContext *ctx = cuda_context(ops);
    if (bytes > 0) cudaCheck(cudaMemsetAsync(ptr, 0, bytes, ctx->stream));
}

static void synchronize(const Ops *ops) { cudaCheck(cudaStreamSynchronize(cuda_context(ops)->stream)); }

static void *compute_stream(const Ops *ops) { return cuda_context(ops)->stream; }

// The copy stream waits for `after` (an event of another stream) or for the
// compute issued so far, then copies; the compute stream goes on meanwhile.
static void download_async(const Ops *ops, void *dst_host, const void *src, size_t bytes, void *after) {
    CudaContext *ctx = cuda_context(ops);
    if (bytes == 0) return;
    cudaEvent_t ready = (cudaEvent_t)after;
    if (!ready) {
        if (!cudaCheck(cudaEventRecord(ctx->compute_done, ctx->stream))) return;
        ready = ctx->compute_done;
    }
    if (!cudaCheck(cudaStreamWaitEvent(ctx->copy_stream, ready, 0))) return;
    cudaCheck(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, ctx->copy_stream));
}

static void synchronize_copies(const Ops *ops) { cudaCheck(cudaStreamSynchronize(cuda_context(ops)->copy_stream)); }

// Host fp32 -> pinned upload staging -> device fp32 staging -> bf16, a chunk
// at a time in stream order (the next chunk's copy into the device staging runs
// after this chunk's conversion). Returns once src_host is copied out, as
// upload_async: the image rows of every micro-batch go up without a host wait.
static void upload_f32(const Ops *ops, void *dst_act, const float *src_host, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    bf16 *dst = (bf16 *)dst_act;
    size_t chunk = CUDA_UPLOAD_STAGING_BYTES / 2 / sizeof(float);
    if (chunk > ctx->staging_floats) chunk = ctx->staging_floats;
    for (size_t start = 0; start < n; start += chunk) {
        size_t count = n - start < chunk ? n - start : chunk, bytes = count * sizeof(float);
        unsigned char *slot = upload_staging_take(ctx, bytes);
        if (!slot) return;
        memcpy(slot, src_host + start, bytes);
        if (!cudaCheck(cudaMemcpyAsync(ctx->staging, slot, bytes, cudaMemcpyHostToDevice, ctx->stream))) return;
        if (!cudaCheck(cudaEventRecord(ctx->upload_done[ctx->upload_half], ctx->stream))) return;
        cuda_f32_to_act(ctx, dst + start, ctx->staging, count);
    }
}

static void download_f32(const Ops *ops, float *dst_host, const void *src_act, size_t n) {
    CudaContext *ctx = cuda_context(ops);
    const bf16 *src = (const bf16 *)src_act;
    for (size_t start = 0; start < n; start += ctx->staging_floats) {
        size_t count = n - start < ctx->staging_floats ? n - start : ctx->staging_floats;
        cuda_act_to_f32(ctx, ctx->staging, src + start, count);
        if (!cudaCheck(cudaMemcpyAsync(dst_host + start, ctx->staging, count * sizeof(float), cudaMemcpyDeviceToHost,
                                       ctx->stream)))
            return;
        if (!cudaCheck(cudaStreamSynchronize(ctx->stream))) return;
    }
}

// ----------------------------------------------------------------------------
// the table

// The process's one context: its device is chosen by the launcher's local rank.
static CudaContext context;

static const Ops cuda_ops = {
    .name = "cuda",
    .device_memory = true,
    .pinned_staging = true,
    .act_dtype = DTYPE_BF16,
    .state = &context,
    .alloc = device_alloc,
    .free = device_free,
    .upload = upload,
    .download = download,
    .upload_async = upload_async,
    .zero = zero,
    .synchronize = synchronize,
    .stream = compute_stream,
    .peak_bytes = device_peak_bytes,
    .reserve_scratch = reserve_scratch,
    .download_async = download_async,
    .synchronize_copies = synchronize_copies,
    .upload_f32 = upload_f32,
    .download_f32 = download_f32,
    .params_to_act = cuda_params_to_act,
    .matmul = cuda_matmul,
    .matmul_weight_grad = cuda_matmul_weight_grad,
    .add_inplace = cuda_add_inplace,
    .embedding_forward = cuda_embedding_forward,
    .rmsnorm_forward = cuda_rmsnorm_forward,
    .residual_rmsnorm_forward = cuda_residual_rmsnorm_forward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .rope_forward = cuda_rope_forward,
    .rope_backward = cuda_rope_backward,
    .attention_forward = cuda_attention_forward,
    .attention_backward = cuda_attention_backward,
    .swiglu_forward = cuda_swiglu_forward,
    .swiglu_backward = cuda_swiglu_backward,
    .dropout_forward = cuda_dropout_forward,
    .dropout_backward = cuda_dropout_backward,
    .cross_entropy = cuda_cross_entropy,
    .layernorm_forward = cuda_layernorm_forward,
    .layernorm_backward = cuda_layernorm_backward,
    .gelu_forward = cuda_gelu_forward,
    .gelu_backward = cuda_gelu_backward,
    .quick_gelu_forward = cuda_quick_gelu_forward,
    .quick_gelu_backward = cuda_quick_gelu_backward,
    .gelu_tanh_forward = cuda_gelu_tanh_forward,
    .gelu_tanh_backward = cuda_gelu_tanh_backward,
    .bias_add = cuda_bias_add,
    .bias_backward = cuda_bias_backward,
    .scale_columns = cuda_scale_columns,
    .scatter_rows = cuda_scatter_rows,
    .copy_columns = cuda_copy_columns,
    .patch_embed_forward = cuda_patch_embed_forward,
    .attention_full_forward = cuda_attention_full_forward,
    .attention_full_backward = cuda_attention_full_backward,
    .sum_squares = cuda_sum_squares,
    .scale_f32 = cuda_scale_f32,
    .clip_by_norm = cuda_clip_by_norm,
    .adamw = cuda_adamw,
    .dequantize_blockwise_u8 = cuda_dequantize_blockwise_u8,
    .dequantize_nf4 = cuda_dequantize_nf4,
    .check = check,
};

// This process's device: its local rank's (LOCAL_RANK from torchrun or
// lora-launch, else SLURM_LOCALID), 0 without one; a process that sees a
// single device (CUDA_VISIBLE_DEVICES set per rank) uses that one.
static bool choose_device(int device_count, int *device, Error *err) {
    const char *name = getenv("LOCAL_RANK") ? "LOCAL_RANK" : getenv("SLURM_LOCALID") ? "SLURM_LOCALID" : NULL;
    *device = 0;
    if (!name || device_count == 1) return true;
    const char *text = getenv(name);
    char *end;
    errno = 0;
    long local_rank = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || local_rank < 0)
        return fail(err, "%s='%s' is not a local rank", name, text);
    if (local_rank >= device_count)
        return fail(err, "%s=%ld, but this process sees %d CUDA devices", name, local_rank, device_count);
    *device = (int)local_rank;
    return true;
}

// Selects the device before creating anything on it (stream, cuBLASLt
// handle, buffers), so every rank of a node works on its own GPU.
// Why no GPU can be used, in words: what was found of the driver beside the
// runtime lora-train was built with (cudaGetDeviceCount's own error says
// "driver version is insufficient" when there is no driver at all).
static bool fail_no_gpu(cudaError_t status, int runtime, int driver, Error *err) {
    if (driver == 0)
        return fail(err, "no NVIDIA GPU found: no NVIDIA driver is installed (CUDA runtime %d.%d)", runtime / 1000,
                    runtime % 1000 / 10);
    if (driver < runtime)
        return fail(err, "the NVIDIA driver supports CUDA up to %d.%d, older than the CUDA %d.%d runtime lora-train "
                         "was built with: update the driver or build with an older CUDA toolkit",
                    driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
    return fail(err, "no NVIDIA GPU found (driver for CUDA %d.%d, runtime %d.%d): %s", driver / 1000,
                driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10,
                status == cudaSuccess ? "cudaGetDeviceCount found none" : cudaGetErrorString(status));
}

void ops_cuda_info(CudaInfo *info) {
    memset(info, 0, sizeof *info);
    info->built = true;
    info->built_version = CUDART_VERSION;
    cudaRuntimeGetVersion(&info->runtime_version);
    cudaDriverGetVersion(&info->driver_version); // 0: no driver (libcuda.so.1) installed
    int device_count = 0;
    cudaError_t status = cudaGetDeviceCount(&device_count);
    Error err;
    if (status != cudaSuccess || device_count == 0) {
        fail_no_gpu(status, info->runtime_version, info->driver_version, &err);
        snprintf(info->problem, sizeof info->problem, "%s", err.message);
        return;
    }
    for (int d = 0; d < device_count && d < CUDA_INFO_MAX_DEVICES; d++) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) continue;
        CudaDeviceInfo *device = &info->devices[info->n_devices++];
        snprintf(device->name, sizeof device->name, "%s", prop.name);
        device->total_bytes = prop.totalGlobalMem;
        device->major = prop.major;
        device->minor = prop.minor;
    }
}

static bool context_init(CudaContext *ctx, Error *err) {
    int device_count = 0, device;
    cudaError_t status = cudaGetDeviceCount(&device_count);
    if (status != cudaSuccess || device_count == 0) {
        int runtime = 0, driver = 0;
        cudaRuntimeGetVersion(&runtime);
        cudaDriverGetVersion(&driver);
        return fail_no_gpu(status, runtime, driver, err);
    }
    if (!choose_device(device_count, &device, err)) return false;
    if ((status = cudaSetDevice(device)) != cudaSuccess)
        return fail(err, "cudaSetDevice(%d): %s", device, cudaGetErrorString(status));
    cudaDeviceProp prop;
    if ((status = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
        return fail(err, "CUDA device %d: %s", device, cudaGetErrorString(status));
    if (prop.major < 8)
        return fail(err, "CUDA device %d (%s) has compute capability %d.%d; bf16 needs 8.0 or newer", device,
                    prop.name, prop.major, prop.minor);
    ctx->sm_count = prop.multiProcessorCount;
    // Non-blocking: nothing on the legacy default stream serializes with it;
    // every other stream is ordered against it with events.
    if ((status = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) != cudaSuccess)
        return fail(err, "cudaStreamCreate: %s", cudaGetErrorString(status));
    if ((status = cudaStreamCreateWithFlags(&ctx->copy_stream, cudaStreamNonBlocking)) != cudaSuccess)
        return fail(err, "cudaStreamCreate (copies): %s", cudaGetErrorString(status));
    if ((status = cudaEventCreateWithFlags(&ctx->compute_done, cudaEventDisableTiming)) != cudaSuccess)
        return fail(err, "cudaEventCreate: %s", cudaGetErrorString(status));
    for (int half = 0; half < 2; half++) {
        if ((status = cudaEventCreateWithFlags(&ctx->upload_done[half], cudaEventDisableTiming)) != cudaSuccess)
            return fail(err, "cudaEventCreate (uploads): %s", cudaGetErrorString(status));
    }
    if ((status = cudaMallocHost((void **)&ctx->upload_staging, CUDA_UPLOAD_STAGING_BYTES)) != cudaSuccess)
        return fail(err, "cudaMallocHost of %zu bytes (upload staging): %s", CUDA_UPLOAD_STAGING_BYTES,
                    cudaGetErrorString(status));
    cublasStatus_t lt_status = cublasLtCreate(&ctx->lt);
    if (lt_status != CUBLAS_STATUS_SUCCESS) return fail(err, "cublasLtCreate: status %d", (int)lt_status);
    if (!cuda_lt_cache_create(ctx, err)) return false;
    ctx->lt_workspace_bytes = CUDA_LT_WORKSPACE_BYTES;
    ctx->lt_workspace = context_alloc(ctx, ctx->lt_workspace_bytes, err);
    if (!ctx->lt_workspace) return fail_context(err, "cuBLASLt workspace: ");
    ctx->staging_floats = CUDA_STAGING_BYTES / sizeof(float); // per host <-> device chunk
    ctx->staging = (float *)context_alloc(ctx, ctx->staging_floats * sizeof(float), err);
    if (!ctx->staging) return fail_context(err, "staging buffer: ");
    ctx->partials = (float *)context_alloc(ctx, CUDA_REDUCE_PARTIALS_BYTES, err);
    if (!ctx->partials) return fail_context(err, "reduction partials: ");
    return true;
}

extern "C" const Ops *ops_cuda(Error *err) {
    static bool ready;
    if (!ready) {
        if (!context_init(&context, err)) return NULL;
        ready = true;
    }
    return &cuda_ops;
}
