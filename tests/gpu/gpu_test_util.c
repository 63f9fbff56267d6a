#include "gpu_test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

const Ops *cpu, *gpu;
Rng test_rng;

bool gpu_tests_init(const char *what) {
    Error why;
    gpu = ops_cuda(&why);
    if (!gpu) {
        printf("SKIPPED: %s: %s\n", what, why.message);
        return false;
    }
    cpu = ops_cpu();
    return true;
}

// ----------------------------------------------------------------------------
// host arrays

float *host_alloc(size_t n) {
    float *x = malloc((n > 0 ? n : 1) * sizeof(float));
    assert_non_null(x);
    return x;
}

float *nan_array(size_t n) {
    float *x = host_alloc(n);
    poison(x, n);
    return x;
}

float *random_f32(size_t n, float lo, float hi) {
    float *x = host_alloc(n);
    fill_uniform(x, n, lo, hi, &test_rng);
    return x;
}

float *random_act(size_t n, float lo, float hi) {
    float *x = random_f32(n, lo, hi);
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
    return x;
}

// ----------------------------------------------------------------------------
// device buffers

void *gpu_alloc(size_t bytes) {
    Error err;
    void *dev = gpu->alloc(gpu, bytes > 0 ? bytes : 1, &err);
    if (!dev) fail_msg("%s", err.message);
    return dev;
}

void *gpu_copy(const void *host, size_t bytes) {
    void *dev = gpu_alloc(bytes);
    gpu->upload(gpu, dev, host, bytes);
    return dev;
}

void *gpu_act(const float *host, size_t n) {
    void *dev = gpu_alloc(n * dtype_size(gpu->act_dtype));
    gpu->upload_f32(gpu, dev, host, n);
    return dev;
}

void *gpu_poisoned(size_t n) {
    float *nan = nan_array(n);
    void *dev = gpu_act(nan, n);
    free(nan);
    return dev;
}

void gpu_ok(void) {
    Error err;
    gpu->synchronize(gpu);
    if (!gpu->check(gpu, &err)) fail_msg("%s", err.message);
}

float *gpu_act_result(const void *dev, size_t n) {
    float *host = host_alloc(n);
    gpu->download_f32(gpu, host, dev, n);
    gpu_ok();
    return host;
}

float *gpu_f32_result(const void *dev, size_t n) {
    float *host = host_alloc(n);
    gpu->download(gpu, host, dev, n * sizeof(float));
    gpu_ok();
    return host;
}

// ----------------------------------------------------------------------------
// comparisons

double rel_error(const float *a, const float *b, size_t n) {
    double diff = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        diff += d * d;
        ref += (double)b[i] * b[i];
    }
    return ref > 0 ? sqrt(diff / ref) : sqrt(diff);
}

void expect_close(const float *got, const float *want, size_t n, double tol, const char *what) {
    double err = rel_error(got, want, n);
    if (!(err < tol)) fail_msg("%s: relative error %.3g, bound %.3g", what, err, tol);
}

void expect_act(const void *dev, const float *want, size_t n, double tol, const char *what) {
    float *got = gpu_act_result(dev, n);
    expect_close(got, want, n, tol, what);
    free(got);
}

void expect_f32(const void *dev, const float *want, size_t n, double tol, const char *what) {
    float *got = gpu_f32_result(dev, n);
    expect_close(got, want, n, tol, what);
    free(got);
}
