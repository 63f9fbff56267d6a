// The harness of the GPU tests (tests/gpu/test_gpu_*.c): the two backends, the
// skip without a device, and host <-> device buffers. Every test compares the
// CUDA backend (gpu) against the CPU backend (cpu), the fp32 oracle.
#pragma once
#include "../test_util.h"

#include "kernels/ops.h"

// CTest reads this exit status as "skipped" (SKIP_RETURN_CODE in tests/gpu/CMakeLists.txt).
#define GPU_TESTS_SKIPPED 77

extern const Ops *cpu, *gpu;
// The random inputs of random_f32 / random_act; a program that uses them seeds it in main.
extern Rng test_rng;

// Sets cpu and gpu. Without a usable CUDA device prints "SKIPPED: <what>: <reason>"
// and returns false; main then returns GPU_TESTS_SKIPPED.
bool gpu_tests_init(const char *what);

// The CPU backend storing activations as bf16 (cpu_bf16.c): what a correct
// bf16 backend computes, to tell bf16 storage's error from a kernel's.
const Ops *ops_cpu_bf16(void);

// ---- host arrays (n floats, at least one allocated) ------------------------
float *host_alloc(size_t n);
float *nan_array(size_t n);                              // every element NaN: an unwritten output fails
float *random_f32(size_t n, float lo, float hi);         // uniform in [lo, hi)
float *random_act(size_t n, float lo, float hi);         // the same, each value rounded to bf16

// ---- device buffers (failing the test when the backend cannot allocate) ----
void *gpu_alloc(size_t bytes);
void *gpu_copy(const void *host, size_t bytes);          // the bytes as they are (fp32, int32, uint8)
void *gpu_act(const float *host, size_t n);              // n floats stored as act_dtype
void *gpu_poisoned(size_t n);                            // n act_dtype NaNs

// ---- fused RoPE (AttentionRope) for the attention tests -------------------------
// Positions (B T): 3 per token from its segment's start (seq_start (B, T) or NULL), plus b, so packed rows
// restart; inv_freq (head_dim / 2) with Llama 3.1's scaling. host holds them in host memory, dev on the device.
typedef struct RopeInputs {
    AttentionRope host, dev;
} RopeInputs;
RopeInputs rope_inputs(int B, int T, int head_dim, const int32_t *seq_start);
void rope_inputs_free(RopeInputs *rope);
// The CPU oracle of cpu->attention_forward / _backward with rope (NULL: those ops as they are) that the kernels
// match: q and k rotated by rope_forward and rounded to bf16, as the kernels stage them (as the unfused
// model's rope_forward stored them); the backward's dq, dk rotated back by rope_backward and added.
// ops_cpu_bf16 (cpu_bf16.c) attends through these too.
void cpu_attention_forward_bf16_rope(float *out, float *lse, const float *q, const float *k, const float *v,
                                     const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                     int n_kv_head, int head_dim);
void cpu_attention_backward_bf16_rope(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                      const float *lse, const float *q, const float *k, const float *v,
                                      const int32_t *seq_start, const AttentionRope *rope, int B, int T, int n_head,
                                      int n_kv_head, int head_dim);
// synchronize(), then fail the test with the backend's first asynchronous error, if any.
void gpu_ok(void);
float *gpu_act_result(const void *dev, size_t n);        // n act_dtype values as host floats, after gpu_ok
float *gpu_f32_result(const void *dev, size_t n);        // n fp32 values to the host, after gpu_ok

// ---- comparisons ------------------------------------------------------------
// ||a - b|| / ||b|| over n elements (||a - b|| when b is zero); NaN anywhere gives NaN.
double rel_error(const float *a, const float *b, size_t n);
// Fails "<what>: relative error E, bound tol" unless rel_error(got, want) < tol.
void expect_close(const float *got, const float *want, size_t n, double tol, const char *what);
void expect_act(const void *dev, const float *want, size_t n, double tol, const char *what);
void expect_f32(const void *dev, const float *want, size_t n, double tol, const char *what);
