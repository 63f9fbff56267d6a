// NF4 dequantization on the CUDA backend (kernels/cuda/dequant.cu through the
// op table) against the CPU ops on the same quantized bytes: the fp32
// double-quant statistics bit-identical, and the bf16 weight equal to the CPU's
// fp32 value rounded to bf16, element by element. Real Llama-3-8B shapes and odd
// sizes (one element, partial blocks of 64 and of 256, odd element counts).
// Outputs are poisoned with NaN first, so an unwritten element fails.
// Without a usable CUDA device every test is skipped with the reason.
#include "gpu_test_util.h"

#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

// Weights as transformers initialises them (N(0, 0.02^2)) and a few outliers.
static float *random_weights(size_t n) {
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = 0.02f * rng_normal(&test_rng);
    for (size_t i = 0; i < n; i += 997) x[i] *= 30.0f;
    return x;
}

// ----------------------------------------------------------------------------
// the double-quant statistics: fp32, bit for bit

static void check_blockwise_u8(size_t n_blocks) {
    float *absmax = malloc(n_blocks * sizeof(float)), map[NF4_DYNAMIC_MAP_SIZE], offset;
    uint8_t *absmax_q = malloc(n_blocks);
    float *nested = malloc(nf4_blocks(n_blocks, NF4_NESTED_BLOCK) * sizeof(float));
    assert_true(absmax && absmax_q && nested);
    for (size_t i = 0; i < n_blocks; i++) absmax[i] = 0.05f + 0.5f * rng_uniform(&test_rng);
    nf4_dynamic_map(map);
    nf4_double_quantize(absmax, n_blocks, map, absmax_q, nested, &offset);

    float *want = nan_array(n_blocks), *got = nan_array(n_blocks);
    cpu->dequantize_blockwise_u8(cpu, want, absmax_q, map, nested, offset, n_blocks, NF4_NESTED_BLOCK);
    uint8_t *dev_q = gpu_copy(absmax_q, n_blocks);
    float *dev_map = gpu_copy(map, sizeof map);
    float *dev_nested = gpu_copy(nested, nf4_blocks(n_blocks, NF4_NESTED_BLOCK) * sizeof(float));
    float *dev_out = gpu_copy(got, n_blocks * sizeof(float));
    gpu->dequantize_blockwise_u8(gpu, dev_out, dev_q, dev_map, dev_nested, offset, n_blocks, NF4_NESTED_BLOCK);
    gpu->download(gpu, got, dev_out, n_blocks * sizeof(float));
    gpu_ok();
    for (size_t i = 0; i < n_blocks; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
            fail_msg("dequantize_blockwise_u8 (%zu blocks): [%zu] gpu %.9g cpu %.9g", n_blocks, i, got[i], want[i]);
    gpu->free(gpu, dev_q), gpu->free(gpu, dev_map), gpu->free(gpu, dev_nested), gpu->free(gpu, dev_out);
    free(absmax), free(absmax_q), free(nested), free(want), free(got);
}

static void test_blockwise_u8_bit_identical(void **state) {
    // 1, a partial nested block, exact blocks, and q_proj / down_proj of Llama-3-8B
    size_t sizes[] = {1, 255, 256, 257, 1000, 256 * 37 + 5, 4096 * 4096 / 64, 14336 * 4096 / 64 + 3};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) check_blockwise_u8(sizes[i]);
}

// ----------------------------------------------------------------------------
// a whole weight: quantized once on the host, dequantized by each backend

static void check_weight(int64_t rows, int64_t cols, bool double_quant) {
    size_t n = (size_t)(rows * cols), n_blocks = nf4_blocks(n, NF4_BLOCK);
    float *values = random_weights(n);
    Nf4Weight on_cpu, on_gpu;
    Error err;
    if (!nf4_weight_alloc(&on_cpu, cpu, rows, cols, double_quant, &err) ||
        !nf4_weight_alloc(&on_gpu, gpu, rows, cols, double_quant, &err))
        fail_msg("%s", err.message);
    if (!nf4_weight_quantize_from(&on_cpu, cpu, values, &err) || !nf4_weight_quantize_from(&on_gpu, gpu, values, &err))
        fail_msg("%s", err.message);

    float *want = nan_array(n), *cpu_absmax = nan_array(n_blocks);
    nf4_weight_dequantize(&on_cpu, cpu, want, cpu_absmax);
    void *dev_out = gpu_poisoned(n);
    float *dev_absmax = gpu_alloc(n_blocks * sizeof(float));
    nf4_weight_dequantize(&on_gpu, gpu, dev_out, dev_absmax);
    float *got = gpu_act_result(dev_out, n);
    for (size_t i = 0; i < n; i++) {
        float expected = bf16_to_f32(f32_to_bf16(want[i]));
        if (memcmp(&got[i], &expected, sizeof(float)) != 0)
            fail_msg("nf4 %lldx%lld%s: [%zu] gpu %.9g, cpu %.9g rounded to bf16 %.9g", (long long)rows,
                     (long long)cols, double_quant ? " double quant" : "", i, got[i], want[i], expected);
    }
    gpu->free(gpu, dev_out), gpu->free(gpu, dev_absmax);
    nf4_weight_free(&on_cpu, cpu), nf4_weight_free(&on_gpu, gpu);
    free(values), free(want), free(cpu_absmax), free(got);
}

static void test_nf4_odd_sizes(void **state) {
    // 1x6465: an odd count over many blocks, the last byte's low nibble not an element
    int64_t shapes[][2] = {{1, 1}, {1, 63}, {3, 7}, {5, 65}, {17, 129}, {33, 1001}, {1, 64 * 101 + 1}, {257, 64}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        check_weight(shapes[i][0], shapes[i][1], false);
        check_weight(shapes[i][0], shapes[i][1], true);
    }
}

static void test_nf4_llama3_8b_shapes(void **state) {
    check_weight(4096, 4096, true);    // q_proj, o_proj
    check_weight(1024, 4096, true);    // k_proj, v_proj
    check_weight(14336, 4096, true);   // gate_proj, up_proj
    check_weight(4096, 14336, false);  // down_proj, plain fp32 absmax
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blockwise_u8_bit_identical),
        cmocka_unit_test(test_nf4_odd_sizes),
        cmocka_unit_test(test_nf4_llama3_8b_shapes),
    };
    if (!gpu_tests_init("every NF4 GPU parity test")) return GPU_TESTS_SKIPPED;
    rng_seed(&test_rng, 4242);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
