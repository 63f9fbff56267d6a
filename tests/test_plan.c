// lora-train plan against what a run really uses: the predicted checkpoint
// size against the bytes a training run writes (to 1%), and on the CPU
// backend the predicted memory against the peak of every backend allocation
// the model and the optimizer make through a step (to 10%), with and without
// activation checkpointing and with NF4 base weights; and the step loop, which
// allocates nothing once the model exists (its scratch reserved at creation).
#include "run_util.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoints/checkpoints.h"
#include "parallel/parallel.h"
#include "trainer/trainer.h"
#include "model/model.h"
#include "vision/vision.h"

static Config plan_config(const char *dir) {
    const char *recipe[] = {"data.max_seq_len=32", "lora.target=all", "lora.r=8", "train.micro_batch=2",
                            "train.grad_accum=2", "train.max_steps=8", "train.log_every=100",
                            "checkpoint.every_steps=4", "checkpoint.keep_last=2", "train.backend=cpu"};
    return tiny_run_config(dir, recipe, sizeof recipe / sizeof recipe[0]);
}

// Bytes of every regular file under path.
static uint64_t tree_bytes(const char *path) {
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    if (!S_ISDIR(st.st_mode)) return (uint64_t)st.st_size;
    DIR *dir = opendir(path);
    assert_non_null(dir);
    uint64_t total = 0;
    for (struct dirent *e; (e = readdir(dir));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char child[2048];
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        total += tree_bytes(child);
    }
    closedir(dir);
    return total;
}

static RunPlan plan_of(const Config *config) {
    RunPlan plan;
    Error err;
    if (!run_plan(config, 1, &plan, &err)) fail_msg("%s", err.message);
    return plan;
}

// Planned from the preset (model.path absent), then trained: step-000004
// plus `latest` is the predicted size; planned again from the folder the run
// wrote (config.json only), the numbers are the same.
static void test_checkpoint_size_matches_written(void **state) {
    (void)state;
    const char *dir = make_temp_dir("plan_ckpt");
    char path[2048];
    snprintf(path, sizeof path, "%s/data.jsonl", dir);
    write_text_records(path, 16);
    Config config = plan_config(dir);
    RunPlan predicted = plan_of(&config);
    assert_int_equal(predicted.total_steps, 8);
    assert_int_equal(predicted.checkpoints_kept, 2); // step-000004 and the last step's step-000008
    TrainSummary summary;
    Error err;
    if (!train_run(&config, &summary, &err)) fail_msg("train_run: %s", err.message);
    snprintf(path, sizeof path, "%s/out/step-000004", dir);
    char latest[2048];
    snprintf(latest, sizeof latest, "%s/out/latest", dir);
    uint64_t written = tree_bytes(path) + tree_bytes(latest);
    double relative = ((double)predicted.checkpoint_bytes - (double)written) / (double)written;
    print_message("checkpoint: predicted %llu bytes, written %llu (%+.3f%%)\n",
                  (unsigned long long)predicted.checkpoint_bytes, (unsigned long long)written, 100.0 * relative);
    if (relative > 0.01 || relative < -0.01)
        fail_msg("checkpoint: predicted %llu bytes, written %llu", (unsigned long long)predicted.checkpoint_bytes,
                 (unsigned long long)written);
    RunPlan from_folder = plan_of(&config);
    assert_int_equal(from_folder.model.frozen_bytes, predicted.model.frozen_bytes);
    assert_int_equal(from_folder.device_total_bytes, predicted.device_total_bytes);
    assert_int_equal(from_folder.checkpoint_bytes, predicted.checkpoint_bytes);
}

// ----------------------------------------------------------------------------
// CPU memory: ops_cpu with its alloc and free counted

typedef struct Counted {
    size_t bytes;
} Counted;

static size_t live_bytes, peak_bytes;
static long backend_allocations;

static void *counted_alloc(const Ops *ops, size_t bytes, Error *err) {
    backend_allocations++;
    Counted *block = checked_malloc(sizeof(Counted) + 64 + bytes, "counted block", err);
    if (!block) return NULL;
    block->bytes = bytes;
    live_bytes += bytes;
    if (live_bytes > peak_bytes) peak_bytes = live_bytes;
    return (uint8_t *)block + 64;
}

static void counted_free(const Ops *ops, void *ptr) {
    if (!ptr) return;
    Counted *block = (Counted *)((uint8_t *)ptr - 64);
    live_bytes -= block->bytes;
    free(block);
}

// A Config for the same model as options (run_plan's side of the comparison).
static Config config_for(const char *preset, int B, int T, bool checkpointing, bool nf4) {
    Config config;
    config_defaults(&config);
    config_set_or_fail(&config, "model.path=%s", "/nonexistent/plan-model");
    config_set_or_fail(&config, "model.create_if_missing=%s", preset);
    config_set_or_fail(&config, "data.path=%s", "/nonexistent/plan-data.jsonl");
    config_set_or_fail(&config, "checkpoint.dir=%s", make_temp_dir("plan_mem"));
    char value[64];
    snprintf(value, sizeof value, "%d", B);
    config_set_or_fail(&config, "train.micro_batch=%s", value);
    snprintf(value, sizeof value, "%d", T);
    config_set_or_fail(&config, "data.max_seq_len=%s", value);
    config_set_or_fail(&config, "train.activation_checkpointing=%s", checkpointing ? "true" : "false");
    config_set_or_fail(&config, "model.quantize=%s", nf4 ? "nf4" : "none");
    const char *recipe[] = {"lora.target=all", "lora.r=8", "train.max_steps=10", "train.backend=cpu"};
    for (size_t i = 0; i < sizeof recipe / sizeof recipe[0]; i++) config_set_or_fail(&config, "%s", recipe[i]);
    return config;
}

// Host allocations, counted through the linker's --wrap (tests/CMakeLists.txt).
static long host_allocations;
void *__real_malloc(size_t bytes);
void *__real_calloc(size_t count, size_t size);
void *__real_realloc(void *ptr, size_t bytes);
void *__wrap_malloc(size_t bytes) { return host_allocations++, __real_malloc(bytes); }
void *__wrap_calloc(size_t count, size_t size) { return host_allocations++, __real_calloc(count, size); }
void *__wrap_realloc(void *ptr, size_t bytes) { return host_allocations++, __real_realloc(ptr, bytes); }

// The largest scratch reserved, and the largest attention_backward would take.
static size_t scratch_reserved, scratch_needed;

static bool counted_reserve_scratch(const Ops *ops, size_t bytes, Error *err) {
    if (bytes > scratch_reserved) scratch_reserved = bytes;
    return ops_cpu()->reserve_scratch(ops_cpu(), bytes, err);
}

static void counted_attention_backward(const Ops *ops, void *dq, void *dk, void *dv, const void *dout, const void *out,
                                       const float *lse, const void *q, const void *k, const void *v,
                                       const int32_t *seq_start, const AttentionRope *rope, int B, int T,
                                       int n_head, int n_kv_head, int head_dim) {
    size_t bytes = attention_backward_scratch_bytes(B, T, n_head);
    if (bytes > scratch_needed) scratch_needed = bytes;
    ops_cpu()->attention_backward(ops_cpu(), dq, dk, dv, dout, out, lse, q, k, v, seq_start, rope, B, T, n_head,
                                  n_kv_head, head_dim);
}

// The CPU backend with its alloc and free counted, its scratch requests recorded.
static const Ops *counted_cpu(void) {
    static Ops counted;
    counted = *ops_cpu();
    counted.alloc = counted_alloc;
    counted.free = counted_free;
    counted.reserve_scratch = counted_reserve_scratch;
    counted.attention_backward = counted_attention_backward;
    return &counted;
}

// The preset on the counted CPU backend with LoRA (r 8) on every linear.
static ModelOptions counted_model_options(const char *preset, int B, int T) {
    ModelOptions options = {.ops = counted_cpu(), .lora = {.r = 8, .alpha = 16}, .max_batch = B, .max_seq_len = T,
                            .lm_head_chunk = 1024, .seed = 1};
    Error err;
    assert_true(llama_config_preset(preset, &options.config, &err));
    for (int t = 0; t < LORA_TARGET_COUNT; t++) options.lora.targets[t] = true;
    return options;
}

// A model and its optimizer (stage 0), created with the counts at zero.
typedef struct Trainable {
    Model *model;
    Collectives *coll;
    Zero *zero;
} Trainable;

static Trainable trainable_create(const ModelOptions *options) {
    Error err;
    live_bytes = peak_bytes = 0;
    Trainable t = {.model = model_create(options, &err)};
    if (!t.model) fail_msg("model_create: %s", err.message);
    t.coll = collectives_single(&err);
    assert_non_null(t.coll);
    ZeroOptions zero_options = {.stage = 0, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    t.zero = zero_create(options->ops, t.coll, model_param_data(t.model), model_grad_data(t.model),
                         model_params(t.model)->total, &zero_options, &err);
    if (!t.zero) fail_msg("zero_create: %s", err.message);
    return t;
}

// Destroys them and asserts that no counted byte is left allocated.
static void trainable_destroy(Trainable *t) {
    zero_destroy(t->zero);
    t->coll->destroy(t->coll);
    model_destroy(t->model);
    assert_int_equal(live_bytes, 0);
}

// The peak of counted allocations while the model and the optimizer are
// created and one training step runs.
static size_t measured_peak(const ModelOptions *options, int B, int T) {
    Trainable t = trainable_create(options);
    int32_t tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T; i++) tokens[i] = targets[i] = (i * 7) % 200;
    Batch batch = {.B = B, .T = T, .tokens = tokens, .targets = targets};
    StepOptions step = {.grad_scale = 1.0f / (float)(B * T), .train = true};
    float norm;
    Error err;
    if (!model_step(t.model, &batch, &step, &err)) fail_msg("model_step: %s", err.message);
    if (!zero_step(t.zero, model_param_data(t.model), model_grad_data(t.model), 1e-3f, &norm, &err))
        fail_msg("zero_step: %s", err.message);
    trainable_destroy(&t);
    return peak_bytes;
}

static void check_memory(const char *preset, int B, int T, bool checkpointing, bool nf4) {
    Config config = config_for(preset, B, T, checkpointing, nf4);
    RunPlan plan = plan_of(&config);
    ModelOptions options = counted_model_options(preset, B, T);
    options.activation_checkpointing = checkpointing;
    options.nf4 = nf4, options.nf4_double_quant = true;
    size_t peak = measured_peak(&options, B, T);
    double relative = ((double)plan.device_total_bytes - (double)peak) / (double)peak;
    print_message("%s B %d T %d checkpointing %d nf4 %d: planned %zu bytes, measured peak %zu (%+.2f%%)\n", preset,
                  B, T, checkpointing, nf4, plan.device_total_bytes, peak, 100.0 * relative);
    assert_true(relative < 0.10 && relative > -0.10);
    assert_int_equal(plan.pinned_host_bytes, 0); // the CPU backend pins nothing without --offload cpu
}

static void test_cpu_memory_matches_measured_peak(void **state) {
    (void)state;
    check_memory("small", 2, 64, false, false);
    check_memory("small", 2, 64, true, false);
    check_memory("small", 1, 32, false, true);
}

// ZeRO's equal shards: with flat_shards the parameter and gradient buffers
// grow to the next multiple of it, plan counts the padding, and it is zeros.
static void test_flat_buffers_padded_for_equal_shards(void **state) {
    (void)state;
    ModelOptions options = counted_model_options("small", 1, 16);
    Error err;
    size_t resident[2], planned[2], n = 0;
    const int shards[2] = {1, 7};
    for (int k = 0; k < 2; k++) {
        options.flat_shards = shards[k];
        ModelPlan plan;
        assert_true(model_plan(&options, &plan, &err));
        planned[k] = plan.param_bytes + plan.grad_bytes;
        live_bytes = peak_bytes = 0;
        Model *model = model_create(&options, &err);
        if (!model) fail_msg("model_create: %s", err.message);
        resident[k] = live_bytes;
        n = model_params(model)->total;
        size_t padded = (n + 6) / 7 * 7;
        for (size_t i = n; k == 1 && i < padded; i++)
            assert_true(model_param_data(model)[i] == 0.0f && model_grad_data(model)[i] == 0.0f);
        model_destroy(model);
    }
    size_t padding_bytes = 2 * ((n + 6) / 7 * 7 - n) * sizeof(float);
    print_message("%zu parameters over 7 shards: %zu bytes of padding in the two flat buffers\n", n, padding_bytes);
    assert_true(padding_bytes > 0);
    assert_int_equal(planned[1] - planned[0], padding_bytes);
    assert_int_equal(resident[1] - resident[0], padding_bytes);
}

// The backend bytes that stay allocated once the model (with LoRA on every
// linear), its optimizer and, with `clip`, the tower and its feature buffer
// exist, counted on the CPU backend.
static size_t measured_resident(const char *preset, int B, int T, const ClipVisionConfig *clip) {
    ModelOptions options = counted_model_options(preset, B, T);
    if (clip) {
        options.projector_in = clip->hidden_size;
        options.max_image_rows = B * clip_n_patches(clip);
    }
    Trainable t = trainable_create(&options);
    const Ops *counted = options.ops;
    Error err;
    ClipTower *tower = clip ? clip_tower_create(counted, clip, B, &err) : NULL;
    if (clip && !tower) fail_msg("clip_tower_create: %s", err.message);
    void *features =
        clip ? counted->alloc(counted, (size_t)B * clip_n_patches(clip) * clip->hidden_size * sizeof(float), &err)
             : NULL;
    size_t resident = live_bytes;
    counted->free(counted, features);
    clip_tower_destroy(tower);
    trainable_destroy(&t);
    return resident;
}

// An image-text config plans exactly the bytes that the projector (in the
// model, with its gradients and Adam moments) and the tower with its feature
// buffer really allocate on top of the text-only run.
static void test_vlm_plan_adds_tower_and_projector(void **state) {
    (void)state;
    enum { B = 2, T = 48 };
    Config config = config_for("tiny", B, T, false, false);
    RunPlan text = plan_of(&config);
    Error err;
    ClipVisionConfig clip;
    assert_true(clip_config_preset("tiny", &clip, &err)); // vision.feature_layer 0: the preset's -2
    config_set_or_fail(&config, "vision.tower=%s", "/nonexistent/plan-tower");
    config_set_or_fail(&config, "vision.tower_preset=%s", "tiny");
    char patches[16];
    snprintf(patches, sizeof patches, "%d", clip_n_patches(&clip));
    config_set_or_fail(&config, "data.image_tokens=%s", patches);
    RunPlan vlm = plan_of(&config);
    assert_true(vlm.tower_bytes > 0);
    size_t planned = vlm.device_total_bytes - text.device_total_bytes;
    size_t measured = measured_resident("tiny", B, T, &clip) - measured_resident("tiny", B, T, NULL);
    print_message("VLM over text: planned %zu bytes (tower %zu), allocated %zu\n", planned, vlm.tower_bytes, measured);
    assert_int_equal(planned, measured);
}

// Llama-3-8B from its preset alone (nothing loaded): checkpointing keeps one
// layer's activations instead of 32 (over 5x less with the shared buffers), NF4 shrinks the linears to about a
// quarter of bf16, and ZeRO-2 over 4 ranks with offload moves a quarter of
// the optimizer state to pinned host memory (one more gradient buffer with
// the delayed update).
static void test_llama3_8b_plan(void **state) {
    (void)state;
    Config config = config_for("llama3-8b", 1, 2048, true, false);
    config_set_or_fail(&config, "train.backend=%s", "cuda");
    RunPlan bf16 = plan_of(&config);
    assert_true(bf16.gpu);
    // cuBLASLt workspace and staging (32 MiB each), sum_squares' 1024 partials, D of 32 heads
    assert_int_equal(bf16.backend_bytes, ((size_t)64 << 20) + 1024 * sizeof(float) + (size_t)1 * 2048 * 32 * sizeof(float));
    assert_int_equal(bf16.pinned_host_bytes, (size_t)8 << 20); // upload_async's two 4 MiB halves
    assert_true(bf16.activation_bytes_full > 5 * bf16.activation_bytes_checkpointed); // 1 layer of 32 + the shared buffers
    config_set_or_fail(&config, "model.quantize=%s", "nf4");
    config_set_or_fail(&config, "zero.stage=%s", "2");
    config_set_or_fail(&config, "zero.offload=%s", "cpu");
    RunPlan qlora;
    Error err;
    if (!run_plan(&config, 4, &qlora, &err)) fail_msg("%s", err.message);
    size_t embeddings = 2 * (size_t)128256 * 4096 * 2; // embed_tokens and lm_head, bf16
    double linears_bf16 = (double)(bf16.model.frozen_bytes - embeddings);
    double ratio = (double)(qlora.model.frozen_bytes + qlora.model.nf4_bytes - embeddings) / linears_bf16;
    assert_true(ratio > 0.25 && ratio < 0.30); // 4 bits + double-quantized absmax of 16
    assert_int_equal(qlora.optimizer_device_bytes, 0);
    assert_int_equal(qlora.optimizer_shard, (qlora.model.n_params + 3) / 4);
    assert_int_equal(qlora.pinned_host_bytes, 4 * qlora.optimizer_shard * sizeof(float) + ((size_t)8 << 20));
    config_set_or_fail(&config, "zero.delayed_update=%s", "true"); // a second gradient buffer
    if (!run_plan(&config, 4, &qlora, &err)) fail_msg("%s", err.message);
    assert_int_equal(qlora.pinned_host_bytes, 5 * qlora.optimizer_shard * sizeof(float) + ((size_t)8 << 20));
}

// OpenVLA-7B from its config.json alone: Llama-2-7B (text_config, the vocabulary padded to 32064),
// the DINOv2 and SigLIP towers at 224 pixels (the layers their features need: 23 of 24, 26 of 27), the
// fused projector, LoRA r 32 on every linear but lm_head (the decoder's, the projector's and both towers')
// as OpenVLA fine-tunes it: one image a micro-batch with activation checkpointing needs just over 16 GiB,
// and fits it with the optimizer state in host memory (--offload cpu). Micro-batch 16 printed beside it.
static void test_openvla_7b_plan(void **state) {
    (void)state;
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s", make_temp_dir("plan_openvla")); // config_for makes another
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"architectures\": [\"OpenVLAForActionPrediction\"], \"model_type\": \"openvla\", "
          "\"use_fused_vision_backbone\": true, \"image_sizes\": [224, 224], \"timm_model_ids\": "
          "[\"vit_large_patch14_reg4_dinov2.lvd142m\", \"vit_so400m_patch14_siglip_224\"], "
          "\"timm_override_act_layers\": [null, null], \"n_action_bins\": 256, \"pad_to_multiple_of\": 64, "
          "\"text_config\": {\"model_type\": \"llama\", \"vocab_size\": 32064, \"pad_token_id\": 32000}}", f);
    assert_int_equal(fclose(f), 0);
    RunPlan plans[3];
    const int micro[3] = {1, 16, 1};
    for (int i = 0; i < 3; i++) {
        Config config = config_for("llama3-8b", micro[i], 384, true, false);
        config_set_or_fail(&config, "model.path=%s", dir);
        config_set_or_fail(&config, "model.create_if_missing=%s", "");
        config_set_or_fail(&config, "lora.r=%s", "32");
        config_set_or_fail(&config, "lora.target=%s", "all-linear");
        config_set_or_fail(&config, "train.backend=%s", "cuda");
        if (i == 2) config_set_or_fail(&config, "zero.offload=%s", "cpu");
        plans[i] = plan_of(&config);
        const RunPlan *p = &plans[i];
        print_message("OpenVLA-7B, micro-batch %d, 384 tokens, checkpointing: %.2f GiB (frozen %.2f, towers %.2f, "
                      "LoRA %zu parameters, activations %.2f)\n", micro[i], p->device_total_bytes / 1073741824.0,
                      p->model.frozen_bytes / 1073741824.0, p->tower_bytes / 1073741824.0, p->model.n_params,
                      p->model.activation_bytes / 1073741824.0);
    }
    // fc1..3: (8704, 2176) + (4096, 8704) + (4096, 4096) and their biases, bf16
    size_t projector = 2 * ((size_t)8704 * 2176 + 8704 + (size_t)4096 * 8704 + 4096 + (size_t)4096 * 4096 + 4096);
    size_t decoder = 2 * ((size_t)2 * 32064 * 4096 + 32 * ((size_t)4 * 4096 * 4096 + 3 * (size_t)4096 * 11008 +
                                                          2 * 4096) + 4096);
    assert_int_equal(plans[0].model.frozen_bytes, decoder + projector);
    size_t lora_decoder = 32 * (size_t)32 * (4 * (4096 + 4096) + 3 * (4096 + 11008));
    size_t lora_projector = 32 * (size_t)(2176 + 8704 + 8704 + 4096 + 4096 + 4096);
    // the towers' used blocks (23 of DINOv2-L's 24, 26 of SigLIP so400m's 27): qkv, proj, fc1, fc2
    size_t lora_towers = 32 * ((size_t)23 * ((1024 + 3072) + (1024 + 1024) + (1024 + 4096) + (4096 + 1024)) +
                               (size_t)26 * ((1152 + 3456) + (1152 + 1152) + (1152 + 4304) + (4304 + 1152)));
    assert_int_equal(plans[0].model.n_params, lora_decoder + lora_projector + lora_towers);
    assert_true(plans[0].tower_bytes > ((size_t)1 << 30)); // 0.7 B parameters in bf16
    assert_true(plans[0].device_total_bytes <= ((uint64_t)33 << 29)); // 16.5 GiB
    assert_true(plans[2].device_total_bytes <= ((uint64_t)16 << 30));
    assert_true(plans[1].device_total_bytes > plans[0].device_total_bytes);
}

// The step loop allocates nothing: once the model (with a projector) and its
// optimizer exist, three optimizer steps of two micro-batches (packed rows,
// image rows) allocate no backend and no host memory, and attention's backward
// never needs more scratch than the model reserved at creation.
static void test_step_loop_allocates_nothing(void **state) {
    enum { B = 2, T = 16, N = B * T, ROWS = 4, FEATURES = 8, IMAGE_TOKEN = 5 };
    ModelOptions options = counted_model_options("tiny", B, T);
    options.projector_in = FEATURES, options.max_image_rows = ROWS, options.image_token_id = IMAGE_TOKEN;
    scratch_reserved = scratch_needed = 0;
    Trainable t = trainable_create(&options);
    Error err;
    float features[ROWS * FEATURES];
    for (int i = 0; i < ROWS * FEATURES; i++) features[i] = 0.01f * (float)(i % 13);
    int32_t tokens[N], targets[N], seq_start[N];
    for (int i = 0; i < N; i++) {
        tokens[i] = i % T >= 1 && i % T <= 2 ? IMAGE_TOKEN : 10 + (i * 7) % 200;
        targets[i] = (i * 5) % 200;
        seq_start[i] = i % T < 6 ? 0 : 6;
    }
    Batch batch = {.B = B, .T = T, .tokens = tokens, .targets = targets, .seq_start = seq_start,
                   .n_image_rows = ROWS, .image_features = features};
    long backend_before = backend_allocations;
    host_allocations = 0;
    for (int step = 0; step < 3; step++) {
        double loss;
        float norm;
        model_zero_grads(t.model);
        for (int micro = 0; micro < 2; micro++) {
            StepOptions options = {.grad_scale = 1.0f / (2 * N), .train = true, .accumulate_loss = micro > 0};
            if (!model_step(t.model, &batch, &options, &err)) fail_msg("model_step: %s", err.message);
        }
        if (!model_loss_sum(t.model, &loss, &err)) fail_msg("model_loss_sum: %s", err.message);
        if (!zero_step(t.zero, model_param_data(t.model), model_grad_data(t.model), 1e-3f, &norm, &err))
            fail_msg("zero_step: %s", err.message);
    }
    print_message("step loop: %ld backend and %ld host allocations; scratch needed %zu, reserved %zu bytes\n",
                  backend_allocations - backend_before, host_allocations, scratch_needed, scratch_reserved);
    assert_int_equal(backend_allocations, backend_before);
    assert_int_equal(host_allocations, 0);
    assert_true(scratch_needed > 0 && scratch_needed <= scratch_reserved);
    trainable_destroy(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkpoint_size_matches_written),
        cmocka_unit_test(test_cpu_memory_matches_measured_peak),
        cmocka_unit_test(test_flat_buffers_padded_for_equal_shards),
        cmocka_unit_test(test_vlm_plan_adds_tower_and_projector),
        cmocka_unit_test(test_llama3_8b_plan),
        cmocka_unit_test(test_openvla_7b_plan),
        cmocka_unit_test(test_step_loop_allocates_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
