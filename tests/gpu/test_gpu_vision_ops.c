// The vision ops of the CUDA backend against the CPU backend on the same
// bf16-representable inputs (as test_gpu_ops.c): LayerNorm, GELU, quick_gelu, GELU tanh,
// bias, column scale, row scatter, patch embedding, non-causal attention (forward and backward), and whole
// frozen towers (SigLIP, DINOv2) and the LoRA backward of timm's two. Outputs are
// poisoned first; gradients the ops add into start from random values.
// Error ||gpu - cpu|| / ||cpu|| < 1e-2 (bf16 storage), < 1e-4 for fp32 statistics.
// Without a usable CUDA device every test is skipped with the reason.
#include "gpu_test_util.h"

#include <math.h>
#include <stdlib.h>

#include "checkpoints/checkpoints.h"
#include "model/model.h"
#include "vision/vision.h"

#define BF16_TOL 1e-2
#define STAT_TOL 1e-4
#define LORA_GRAD_TOL 3e-2 // a tower's backward: two layers of bf16 activations

static void check_layernorm(int N, int C) {
    size_t n = (size_t)N * C;
    float *x = random_act(n, -2, 2), *w = random_act(C, 0.5f, 1.5f), *b = random_act(C, -1, 1);
    float *dout = random_act(n, -1, 1), *dx = random_act(n, -1, 1), *dw = random_act(C, -1, 1), *db = random_act(C, -1, 1);
    float *out = malloc(n * sizeof(float)), *mean = malloc(N * sizeof(float)), *rstd = malloc(N * sizeof(float));
    void *d_x = gpu_act(x, n), *d_w = gpu_act(w, C), *d_b = gpu_act(b, C), *d_dout = gpu_act(dout, n);
    void *d_dx = gpu_act(dx, n), *d_out = gpu_poisoned(n);
    float *d_dw = gpu_copy(dw, C * sizeof(float)), *d_db = gpu_copy(db, C * sizeof(float));
    float *d_mean = gpu_alloc(N * sizeof(float)), *d_rstd = gpu_alloc(N * sizeof(float));
    cpu->layernorm_forward(cpu, out, mean, rstd, x, w, b, N, C, 1e-5f);
    gpu->layernorm_forward(gpu, d_out, d_mean, d_rstd, d_x, d_w, d_b, N, C, 1e-5f);
    expect_act(d_out, out, n, BF16_TOL, "layernorm_forward");
    expect_f32(d_rstd, rstd, N, STAT_TOL, "layernorm rstd");
    cpu->layernorm_backward(cpu, dx, dw, db, dout, x, w, mean, rstd, N, C);
    gpu->layernorm_backward(gpu, d_dx, d_dw, d_db, d_dout, d_x, d_w, d_mean, d_rstd, N, C);
    expect_act(d_dx, dx, n, BF16_TOL, "layernorm_backward dx");
    expect_f32(d_dw, dw, C, BF16_TOL, "layernorm_backward dweight");
    expect_f32(d_db, db, C, BF16_TOL, "layernorm_backward dbias");
    void *device[] = {d_x, d_w, d_b, d_dout, d_dx, d_out, d_dw, d_db, d_mean, d_rstd};
    for (size_t i = 0; i < sizeof device / sizeof *device; i++) gpu->free(gpu, device[i]);
    free(x), free(w), free(b), free(dout), free(dx), free(dw), free(db), free(out), free(mean), free(rstd);
}

static void test_layernorm(void **state) {
    check_layernorm(1, 1);
    check_layernorm(7, 33);
    check_layernorm(577, 1024);
}

typedef void (*Forward)(const Ops *ops, void *out, const void *inp, size_t n);
typedef void (*Backward)(const Ops *ops, void *dinp, const void *dout, const void *inp, size_t n);

static void check_activation(Forward cpu_f, Backward cpu_b, Forward gpu_f, Backward gpu_b, size_t n, const char *what) {
    float *x = random_act(n, -4, 4), *dout = random_act(n, -1, 1), *dx = random_act(n, -1, 1);
    float *out = malloc((n ? n : 1) * sizeof(float));
    void *d_x = gpu_act(x, n), *d_dout = gpu_act(dout, n), *d_dx = gpu_act(dx, n), *d_out = gpu_poisoned(n);
    cpu_f(cpu, out, x, n);
    gpu_f(gpu, d_out, d_x, n);
    expect_act(d_out, out, n, BF16_TOL, what);
    cpu_b(cpu, dx, dout, x, n);
    gpu_b(gpu, d_dx, d_dout, d_x, n);
    expect_act(d_dx, dx, n, BF16_TOL, what);
    gpu->free(gpu, d_x), gpu->free(gpu, d_dout), gpu->free(gpu, d_dx), gpu->free(gpu, d_out);
    free(x), free(dout), free(dx), free(out);
}

static void test_gelus(void **state) {
    size_t sizes[] = {1, 1000, 300001};
    for (int i = 0; i < 3; i++) {
        check_activation(cpu->gelu_forward, cpu->gelu_backward, gpu->gelu_forward, gpu->gelu_backward, sizes[i], "gelu");
        check_activation(cpu->quick_gelu_forward, cpu->quick_gelu_backward, gpu->quick_gelu_forward,
                         gpu->quick_gelu_backward, sizes[i], "quick_gelu");
        check_activation(cpu->gelu_tanh_forward, cpu->gelu_tanh_backward, gpu->gelu_tanh_forward,
                         gpu->gelu_tanh_backward, sizes[i], "gelu_tanh");
    }
}

static void test_bias_and_scatter(void **state) {
    enum { N = 37, C = 129, R = 5 };
    float *y = random_act(N * C, -1, 1), *b = random_act(C, -1, 1), *dbias = random_act(C, -1, 1);
    float *src = random_act(R * C, -1, 1);
    int32_t rows[R] = {36, 0, 7, 8, 20};
    void *d_y = gpu_act(y, N * C), *d_b = gpu_act(b, C), *d_src = gpu_act(src, R * C);
    float *d_dbias = gpu_copy(dbias, C * sizeof(float));
    int32_t *d_rows = gpu_copy(rows, sizeof rows);
    cpu->bias_backward(cpu, dbias, y, N, C);
    gpu->bias_backward(gpu, d_dbias, d_y, N, C);
    expect_f32(d_dbias, dbias, C, BF16_TOL, "bias_backward");
    cpu->bias_add(cpu, y, b, N, C);
    gpu->bias_add(gpu, d_y, d_b, N, C);
    expect_act(d_y, y, N * C, BF16_TOL, "bias_add");
    cpu->scale_columns(cpu, y, b, N, C);
    gpu->scale_columns(gpu, d_y, d_b, N, C);
    expect_act(d_y, y, N * C, BF16_TOL, "scale_columns");
    cpu->scatter_rows(cpu, y, rows, src, R, C);
    gpu->scatter_rows(gpu, d_y, d_rows, d_src, R, C);
    expect_act(d_y, y, N * C, BF16_TOL, "scatter_rows");
    enum { SRC_COLS = 61 }; // src as (R, 61): its columns [5, 55) into columns [70, 120) of y's first R rows
    cpu->copy_columns(cpu, y, C, 70, src, SRC_COLS, 5, 50, R);
    gpu->copy_columns(gpu, d_y, C, 70, d_src, SRC_COLS, 5, 50, R);
    expect_act(d_y, y, N * C, BF16_TOL, "copy_columns");
    gpu->free(gpu, d_y), gpu->free(gpu, d_b), gpu->free(gpu, d_src), gpu->free(gpu, d_dbias), gpu->free(gpu, d_rows);
    free(y), free(b), free(dbias), free(src);
}

static void check_patch_embed(int B, int channels, int size, int patch, int D) {
    int grid = size / patch;
    size_t n_img = (size_t)B * channels * size * size, n_w = (size_t)D * channels * patch * patch;
    size_t n_out = (size_t)B * grid * grid * D;
    float *images = random_act(n_img, -2, 2), *w = random_act(n_w, -0.1f, 0.1f), *out = malloc(n_out * sizeof(float));
    void *d_images = gpu_act(images, n_img), *d_w = gpu_act(w, n_w), *d_out = gpu_poisoned(n_out);
    cpu->patch_embed_forward(cpu, out, images, w, B, channels, size, patch, D);
    gpu->patch_embed_forward(gpu, d_out, d_images, d_w, B, channels, size, patch, D);
    expect_act(d_out, out, n_out, BF16_TOL, "patch_embed_forward");
    gpu->free(gpu, d_images), gpu->free(gpu, d_w), gpu->free(gpu, d_out);
    free(images), free(w), free(out);
}

static void test_patch_embed(void **state) {
    check_patch_embed(1, 3, 16, 4, 32);
    check_patch_embed(1, 3, 18, 4, 32); // a remainder of 2 pixels unused
    check_patch_embed(2, 3, 336, 14, 1024);
}

// Forward (out, lse) and, with backward, the gradients added into random dq, dk, dv; each
// backend's backward reads its own forward's out and lse.
static void check_attention_full(int B, int T, int n_head, int head_dim, bool backward) {
    size_t n = (size_t)B * T * n_head * head_dim, n_lse = (size_t)B * n_head * T;
    float *q = random_act(n, -1, 1), *k = random_act(n, -1, 1), *v = random_act(n, -1, 1), *dout = random_act(n, -1, 1);
    float *out = malloc(n * sizeof(float)), *lse = malloc(n_lse * sizeof(float)), *grads[3];
    void *d_q = gpu_act(q, n), *d_k = gpu_act(k, n), *d_v = gpu_act(v, n), *d_out = gpu_poisoned(n), *d_grads[3];
    void *d_dout = gpu_act(dout, n);
    float *d_lse = gpu_alloc(n_lse * sizeof(float));
    for (int i = 0; i < 3; i++) grads[i] = random_act(n, -1, 1), d_grads[i] = gpu_act(grads[i], n);
    cpu->attention_full_forward(cpu, out, lse, q, k, v, B, T, n_head, head_dim);
    gpu->attention_full_forward(gpu, d_out, d_lse, d_q, d_k, d_v, B, T, n_head, head_dim);
    expect_act(d_out, out, n, BF16_TOL, "attention_full_forward");
    expect_f32(d_lse, lse, n_lse, STAT_TOL, "attention_full_forward lse");
    if (backward) {
        cpu->attention_full_backward(cpu, grads[0], grads[1], grads[2], dout, out, lse, q, k, v, B, T, n_head,
                                     head_dim);
        gpu->attention_full_backward(gpu, d_grads[0], d_grads[1], d_grads[2], d_dout, d_out, d_lse, d_q, d_k, d_v, B, T,
                                     n_head, head_dim);
        expect_act(d_grads[0], grads[0], n, BF16_TOL, "attention_full_backward dq");
        expect_act(d_grads[1], grads[1], n, BF16_TOL, "attention_full_backward dk");
        expect_act(d_grads[2], grads[2], n, BF16_TOL, "attention_full_backward dv");
    }
    void *device[] = {d_q, d_k, d_v, d_out, d_dout, d_lse, d_grads[0], d_grads[1], d_grads[2]};
    for (size_t i = 0; i < sizeof device / sizeof *device; i++) gpu->free(gpu, device[i]);
    free(q), free(k), free(v), free(dout), free(out), free(lse);
    for (int i = 0; i < 3; i++) free(grads[i]);
}

static void test_attention_full(void **state) {
    check_attention_full(1, 1, 1, 8, true);
    check_attention_full(2, 17, 4, 8, true);
    check_attention_full(1, 65, 4, 64, true); // several query and key tiles, the tensor-core kernels
    check_attention_full(1, 65, 2, 72, true); // SigLIP's head size: the CUDA-core kernels
    check_attention_full(1, 577, 16, 64, false);
}

// A whole frozen tower on both backends from the same weights and pixels.
static void check_tower(const ClipVisionConfig *config, const char *weights) {
    if (!path_exists(weights)) skip();
    enum { IMAGES = 2 };
    size_t n_pixels = (size_t)IMAGES * 3 * config->image_size * config->image_size;
    size_t n_features = (size_t)IMAGES * clip_n_features(config) * config->hidden_size;
    float *pixels = random_f32(n_pixels, -1.5f, 1.5f), *want = host_alloc(n_features);
    Error err;
    ClipTower *on_cpu = clip_tower_create(cpu, config, IMAGES, &err), *on_gpu = clip_tower_create(gpu, config, IMAGES, &err);
    if (!on_cpu || !on_gpu || !clip_load_weights(on_cpu, weights, &err) || !clip_load_weights(on_gpu, weights, &err))
        fail_msg("%s", err.message);
    void *d_features = gpu_poisoned(n_features);
    if (!clip_tower_forward(on_cpu, pixels, IMAGES, want, &err) || !clip_tower_forward(on_gpu, pixels, IMAGES, d_features, &err))
        fail_msg("%s", err.message);
    expect_act(d_features, want, n_features, BF16_TOL, weights);
    gpu->free(gpu, d_features);
    clip_tower_destroy(on_cpu), clip_tower_destroy(on_gpu);
    free(pixels), free(want);
}

// An OpenVLA preset (timm's layout) at the tiny shape of tests/fixtures/vlm/timm_*.safetensors.
static ClipVisionConfig tiny_timm(const char *preset, int mlp_width) {
    ClipVisionConfig config;
    Error err;
    if (!clip_config_preset(preset, &config, &err)) fail_msg("%s", err.message);
    config.hidden_size = 32, config.intermediate_size = mlp_width, config.n_layers = 3, config.n_heads = 4;
    config.image_size = 16, config.patch_size = 4;
    return config;
}

// The HF SigLIP folder's tower (gelu_tanh, patch bias, 'default' skipping patch 0),
// timm's DINOv2 (class token, registers, layer scale) and timm's SigLIP.
static void test_towers_follow_cpu(void **state) {
    const char *siglip_folder = "tests/fixtures/llava_hf/siglip";
    LlavaVision vision;
    bool is_llava;
    Error err;
    if (!hf_read_llava_vision(siglip_folder, &is_llava, &vision, &err)) fail_msg("%s", err.message);
    check_tower(&vision.clip, siglip_folder);
    ClipVisionConfig dinov2 = tiny_timm("dinov2-vit-l14-reg4", 128), siglip = tiny_timm("siglip-so400m-14", 119);
    check_tower(&dinov2, "tests/fixtures/vlm/timm_dinov2.safetensors");
    check_tower(&siglip, "tests/fixtures/vlm/timm_siglip.safetensors");
}

// A training tower with LoRA (rank 4) on both backends: the same weights, pixels, adapters
// (bf16-representable) and feature gradients; the features and every adapter gradient.
static void check_tower_backward(const ClipVisionConfig *config, const char *weights) {
    if (!path_exists(weights)) skip();
    enum { IMAGES = 2, RANK = 4 };
    size_t n_pixels = (size_t)IMAGES * 3 * config->image_size * config->image_size;
    size_t n_features = (size_t)IMAGES * clip_n_features(config) * config->hidden_size;
    ParamEntry *entries = calloc((size_t)clip_lora_n_params(config), sizeof(ParamEntry));
    ParamTable table = {.entries = entries};
    clip_lora_add_params(config, RANK, "tower.", &table);
    float *pixels = random_f32(n_pixels, -1.5f, 1.5f), *params = random_act(table.total, -0.3f, 0.3f);
    float *d_features = random_act(n_features, -1, 1), *want = host_alloc(n_features);
    float *grads = calloc(table.total, sizeof(float));
    ClipTowerOptions options = {.lora_r = RANK, .train = true};
    Error err;
    ClipTower *on_cpu = clip_tower_create_with(cpu, config, IMAGES, &options, &err);
    ClipTower *on_gpu = clip_tower_create_with(gpu, config, IMAGES, &options, &err);
    if (!on_cpu || !on_gpu || !clip_load_weights(on_cpu, weights, &err) || !clip_load_weights(on_gpu, weights, &err) ||
        !clip_tower_bind_lora(on_cpu, &table, "tower.", 2.0f, &err) ||
        !clip_tower_bind_lora(on_gpu, &table, "tower.", 2.0f, &err))
        fail_msg("%s", err.message);
    void *g_features = gpu_poisoned(n_features), *g_params = gpu_act(params, table.total);
    void *g_d_features = gpu_act(d_features, n_features);
    float *g_grads = gpu_copy(grads, table.total * sizeof(float));
    if (!clip_tower_forward_lora(on_cpu, params, pixels, IMAGES, want, &err) ||
        !clip_tower_backward(on_cpu, params, grads, d_features, IMAGES, &err) ||
        !clip_tower_forward_lora(on_gpu, g_params, pixels, IMAGES, g_features, &err) ||
        !clip_tower_backward(on_gpu, g_params, g_grads, g_d_features, IMAGES, &err))
        fail_msg("%s", err.message);
    expect_act(g_features, want, n_features, BF16_TOL, "LoRA tower features");
    float *got = gpu_f32_result(g_grads, table.total);
    double worst = 0;
    for (int i = 0; i < table.count; i++) {
        const ParamEntry *e = &entries[i];
        worst = fmax(worst, rel_error(got + e->offset, grads + e->offset, e->numel));
        expect_close(got + e->offset, grads + e->offset, e->numel, LORA_GRAD_TOL, e->name);
    }
    print_message("%s: %d LoRA gradients within %.3g of the CPU's (relative L2)\n", weights, table.count, worst);
    gpu->free(gpu, g_features), gpu->free(gpu, g_params), gpu->free(gpu, g_d_features), gpu->free(gpu, g_grads);
    clip_tower_destroy(on_cpu), clip_tower_destroy(on_gpu);
    free(entries), free(pixels), free(params), free(d_features), free(want), free(grads), free(got);
}

// DINOv2 (layer scale, registers) and timm's SigLIP at the fixtures' tiny shape.
static void test_tower_backward_follows_cpu(void **state) {
    ClipVisionConfig dinov2 = tiny_timm("dinov2-vit-l14-reg4", 128), siglip = tiny_timm("siglip-so400m-14", 119);
    check_tower_backward(&dinov2, "tests/fixtures/vlm/timm_dinov2.safetensors");
    check_tower_backward(&siglip, "tests/fixtures/vlm/timm_siglip.safetensors");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_gelus),
        cmocka_unit_test(test_bias_and_scatter),
        cmocka_unit_test(test_patch_embed),
        cmocka_unit_test(test_attention_full),
        cmocka_unit_test(test_towers_follow_cpu),
        cmocka_unit_test(test_tower_backward_follows_cpu),
    };
    if (!gpu_tests_init("every GPU vision op test")) return GPU_TESTS_SKIPPED;
    rng_seed(&test_rng, 20240612);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
