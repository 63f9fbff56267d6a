// The fragment functions of kernels/cuda/mma.cuh alone, on small integers whose products and sums are exact,
// so a layout error is named by its mode and element.
#include "gpu_test_util.h"

#include <stdio.h>
#include <stdlib.h>

#include "kernels/cuda_testing.h"

// ----------------------------------------------------------------------------
// mma.cuh

static float *small_integers(size_t n) {
    float *x = host_alloc(n);
    for (size_t i = 0; i < n; i++) x[i] = (float)((int)(rng_next(&test_rng) % 9) - 4);
    return x;
}

static void test_mma_fragments(void **state) {
    float *a = small_integers(16 * 16), *b = small_integers(16 * 8), *c = small_integers(16 * 8);
    float *bt = host_alloc(8 * 16), *want = host_alloc(16 * 8);
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 8; n++) bt[n * 16 + k] = b[k * 8 + n];
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 8; n++) {
            float sum = c[m * 8 + n];
            for (int k = 0; k < 16; k++) sum += a[m * 16 + k] * b[k * 8 + n];
            want[m * 8 + n] = sum;  // small integers: exact in any order
        }
    void *dev_a = gpu_act(a, 16 * 16), *dev_b = gpu_act(b, 16 * 8), *dev_bt = gpu_act(bt, 8 * 16);
    float *dev_c = gpu_copy(c, 16 * 8 * sizeof(float)), *dev_d = gpu_alloc(16 * 8 * sizeof(float));
    const char *modes[] = {"fragments by the PTX tables", "ldmatrix.x4 + ldmatrix.x2.trans",
                           "ldmatrix.x4 + ldmatrix.x2"};
    for (int mode = 0; mode < 3; mode++) {
        cuda_mma_probe(gpu, dev_d, dev_a, mode == 2 ? dev_bt : dev_b, dev_c, mode);
        float *d = gpu_f32_result(dev_d, 16 * 8);
        for (int i = 0; i < 16 * 8; i++)
            if (d[i] != want[i]) fail_msg("mma %s: D[%d][%d] = %g, want %g", modes[mode], i / 8, i % 8, d[i], want[i]);
        free(d);
    }
    void *devs[] = {dev_a, dev_b, dev_bt, dev_c, dev_d};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) gpu->free(gpu, devs[i]);
    float *hosts[] = {a, b, c, bt, want};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) free(hosts[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mma_fragments),
    };
    if (!gpu_tests_init("the flash attention tests")) return GPU_TESTS_SKIPPED;
    rng_seed(&test_rng, 20261205);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
