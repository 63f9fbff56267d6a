// An OpenVLA folder trained end to end through train_run_with on the CPU backend: demo --vla's random
// OpenVLA-shaped model (two timm towers, the 3-layer projector) and RLDS episodes, all-linear LoRA.
// The run trains, its adapter holds the towers' adapters in OpenVLA's PEFT names, and a run resumed
// from its step-2 checkpoint logs the same losses and saves the same adapter bytes; the adapter, the
// towers' included, loads with PeftModel.from_pretrained onto the model built of timm's towers and
// transformers' Llama (scripts/check_openvla_adapter.py) and gives lora-train's logits. lora-launch's 2 ranks
// at ZeRO stage 2 (CPU collectives) train the adapter, the towers' included, 1 process does.
#include "run_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/checkpoints.h"
#include "model/model.h"
#include "trainer/trainer.h"

#define TOTAL_STEPS 4
#define TWO_RANK_MICRO_BATCHES 2 // openvla_config's train.grad_accum: one micro-batch per rank

// offload: "zero.offload=cpu" (the optimizer state in host memory), or "zero.offload=none".
static Config openvla_config(const char *dir, const char *offload) {
    const char *settings[] = {"train.max_steps=4", "train.micro_batch=4", "train.grad_accum=2", "train.warmup=1",
                              "train.log_every=100", "checkpoint.every_steps=2", "checkpoint.keep_last=0",
                              "train.activation_checkpointing=true", "data.eval_path=", // evaluation: test_vla_demo
                              offload};
    Config config;
    Error err = {{0}};
    if (!vla_demo_prepare(dir, VLA_MODEL_OPENVLA, settings, sizeof settings / sizeof settings[0], &config, &err))
        fail_msg("%s", err.message);
    return config;
}

static void test_trains_and_resumes(void **state) {
    (void)state;
    const char *dir = make_temp_dir("openvla_train");
    Config config = openvla_config(dir, "zero.offload=none");
    LossRecorder straight = {0}, resumed = {0};
    TrainSummary summary;
    Error err = {{0}};
    if (!train_run_with(&config, &(TrainControl){.on_step = record_loss, .context = &straight}, &summary, &err))
        fail_msg("%s", err.message);
    for (int step = 1; step <= TOTAL_STEPS; step++) print_message("step %d loss %.6f\n", step, straight.losses[step]);
    assert_true(straight.losses[TOTAL_STEPS] < straight.losses[1]);
    size_t size;
    char *straight_adapter = adapter_file_bytes(summary.adapter_dir, &size);

    // the adapter: every tower module's A and B in OpenVLA's names, besides the decoder's and the projector's
    char path[2048];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", summary.adapter_dir);
    SafetensorsFile *file = safetensors_open(path, &err);
    if (!file) fail_msg("%s", err.message);
    int towers[2] = {0, 0}, projector = 0;
    for (int i = 0; i < safetensors_count(file); i++) {
        const char *key = safetensors_name(file, i);
        towers[0] += strstr(key, "base_model.model.vision_backbone.featurizer.blocks.") == key;
        towers[1] += strstr(key, "base_model.model.vision_backbone.fused_featurizer.blocks.") == key;
        projector += strstr(key, "base_model.model.projector.fc") == key;
    }
    safetensors_close(file);
    assert_int_equal(towers[0], 2 * 4 * 2); // qkv, proj, fc1, fc2 of the 2 blocks the features need
    assert_int_equal(towers[1], 2 * 4 * 3);
    assert_int_equal(projector, 2 * 3);

    snprintf(path, sizeof path, "%s/step-000002", config.checkpoint.dir);
    if (!train_run_with(&config, &(TrainControl){.resume = path, .on_step = record_loss, .context = &resumed},
                        &summary, &err))
        fail_msg("%s", err.message);
    for (int step = 3; step <= TOTAL_STEPS; step++) {
        if (memcmp(&straight.losses[step], &resumed.losses[step], sizeof(double)) != 0)
            fail_msg("step %d: loss %.17g straight, %.17g resumed", step, straight.losses[step], resumed.losses[step]);
    }
    size_t resumed_size;
    char *resumed_adapter = adapter_file_bytes(summary.adapter_dir, &resumed_size);
    assert_int_equal(resumed_size, size);
    assert_memory_equal(resumed_adapter, straight_adapter, size);
    free(straight_adapter), free(resumed_adapter);
}

// configs/openvla.yaml keeps the optimizer state in host memory (--offload cpu) to fit a 16 GB card: the
// towers' gradients reach the host shard as the decoder's do, and the host AdamW gives the same adapter.
static void test_offload_trains_the_same_adapter(void **state) {
    (void)state;
    TrainSummary summary;
    Error err = {{0}};
    Config config = openvla_config(make_temp_dir("openvla_train"), "zero.offload=none");
    if (!train_run_with(&config, &(TrainControl){0}, &summary, &err)) fail_msg("%s", err.message);
    size_t size, offloaded_size;
    char *adapter = adapter_file_bytes(summary.adapter_dir, &size);
    config = openvla_config(make_temp_dir("openvla_train_offload"), "zero.offload=cpu");
    if (!train_run_with(&config, &(TrainControl){0}, &summary, &err)) fail_msg("%s", err.message);
    char *offloaded = adapter_file_bytes(summary.adapter_dir, &offloaded_size);
    assert_int_equal(offloaded_size, size);
    assert_memory_equal(offloaded, adapter, size);
    free(adapter), free(offloaded);
}

// The run of config's YAML (dir/config.yaml) into dir/name with the extra flags: one process (ranks 0) at
// ZeRO stage 0 with micro-batches grad_accum, or lora-launch's ranks splitting them at stage 2 on the CPU
// collectives.
static void train_ranks(const char *dir, int ranks, const char *name, const char *extra) {
    char launcher[1024] = "", command[4096], path[2048], expect[64], *log;
    if (ranks > 0)
        snprintf(launcher, sizeof launcher, "%s --nproc-per-node %d --master-port %d ", getenv("LORA_LAUNCH_BIN"),
                 ranks, free_tcp_port());
    snprintf(command, sizeof command,
             "OMP_NUM_THREADS=1 timeout 300 %s%s --config %s/config.yaml --set train.grad_accum=%d --set zero.stage=%d "
             "--set checkpoint.dir=%s/%s --set checkpoint.every_steps=0 --set dist.timeout_s=60 %s > %s/%s.log 2>&1",
             launcher, getenv("LORA_TRAIN_BIN"), dir, TWO_RANK_MICRO_BATCHES / (ranks > 0 ? ranks : 1),
             ranks > 0 ? 2 : 0, dir, name, extra, dir, name);
    int status = run_command(command);
    if (status != 0) fail_msg("exit %d from: %s (see %s/%s.log)", status, command, dir, name);
    snprintf(path, sizeof path, "%s/%s.log", dir, name);
    size_t size;
    Error err;
    if (!read_file(path, &log, &size, &err)) fail_msg("%s", err.message);
    snprintf(expect, sizeof expect, "%d ranks (cpu collectives) | ZeRO stage 2", ranks);
    if (ranks > 0 && !strstr(log, expect)) fail_msg("%s does not say '%s'", path, expect);
    free(log);
}

// Tensor name of both adapters: ||a - b|| / ||b||, with ||b|| > 0 (every tensor trained, B included).
static double tensor_difference(SafetensorsFile *a, SafetensorsFile *b, const char *name) {
    Tensor ta, tb;
    Error err;
    if (!safetensors_get(a, name, &ta, &err) || !safetensors_get(b, name, &tb, &err)) fail_msg("%s", err.message);
    assert_int_equal(ta.dtype, DTYPE_F32);
    assert_int_equal(tensor_numel(&ta), tensor_numel(&tb));
    const float *xa = ta.data, *xb = tb.data;
    double diff2 = 0, norm2 = 0;
    for (int64_t i = 0; i < tensor_numel(&tb); i++) {
        diff2 += ((double)xa[i] - xb[i]) * ((double)xa[i] - xb[i]);
        norm2 += (double)xb[i] * xb[i];
    }
    assert_true(norm2 > 0);
    return sqrt(diff2 / norm2);
}

// The adapters of dir/a and dir/b within test_launch's 1e-5 (relative L2), tensor by tensor, the towers'
// (vision_backbone.featurizer / .fused_featurizer) among them.
static void assert_same_adapter(const char *dir, const char *a, const char *b) {
    SafetensorsFile *files[2];
    char path[2048];
    Error err;
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s/adapter/adapter_model.safetensors", dir, i == 0 ? a : b);
        if (!(files[i] = safetensors_open(path, &err))) fail_msg("%s", err.message);
    }
    assert_int_equal(safetensors_count(files[0]), safetensors_count(files[1]));
    int n_tower = 0;
    double worst = 0, worst_tower = 0;
    for (int i = 0; i < safetensors_count(files[1]); i++) {
        const char *name = safetensors_name(files[1], i);
        double difference = tensor_difference(files[0], files[1], name);
        bool tower = strstr(name, "base_model.model.vision_backbone.") == name;
        n_tower += tower;
        worst = fmax(worst, difference);
        if (tower) worst_tower = fmax(worst_tower, difference);
    }
    safetensors_close(files[0]), safetensors_close(files[1]);
    print_message("%s vs %s: relative difference %.3g (L2, worst tensor), %.3g (worst of %d tower tensors)\n", a, b,
                  worst, worst_tower, n_tower);
    assert_int_equal(n_tower, 2 * 4 * 2 + 2 * 4 * 3);
    assert_true(worst < 1e-5 && worst_tower < 1e-5);
}

// 2 ranks at ZeRO stage 2 train the adapter 1 process does with the same global batch, the towers'
// gradients reduce-scattered as the rest: in the step's one bucket, in their own (per-layer buckets: the
// towers' range once their backward has run; with --offload cpu copied to the host shard), or after the
// backward (no overlap).
static void test_two_ranks_zero2_match_one_process(void **state) {
    (void)state;
    if (!getenv("LORA_TRAIN_BIN") || !getenv("LORA_LAUNCH_BIN")) skip();
    const char *dir = make_temp_dir("openvla_ranks");
    Config config = openvla_config(dir, "zero.offload=none");
    Error err = {{0}};
    char *yaml = config_to_yaml(&config, &err), path[2048];
    if (!yaml) fail_msg("%s", err.message);
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(yaml, f);
    assert_int_equal(fclose(f), 0);
    free(yaml);
    train_ranks(dir, 0, "one", "");
    static const char *const runs[][2] = {{"two", ""},
                                          {"two-per-layer-buckets", "--set zero.bucket_mb=0"},
                                          {"two-no-overlap", "--set zero.overlap_comm=false"},
                                          {"two-offload", "--set zero.offload=cpu --set zero.bucket_mb=0"}};
    for (int i = 0; i < 4; i++) {
        train_ranks(dir, 2, runs[i][0], runs[i][1]);
        assert_same_adapter(dir, runs[i][0], "one");
    }
}

// ||got - want|| / ||want||, and the largest |got - want| into *max_abs.
static double relative_l2(const float *got, const float *want, size_t n, double *max_abs) {
    double diff = 0, norm = 0;
    *max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        diff += d * d, norm += (double)want[i] * want[i];
        if (fabs(d) > *max_abs) *max_abs = fabs(d);
    }
    return sqrt(diff / (norm > 0 ? norm : 1));
}

enum { PEFT_B = 2, PEFT_TEXT_T = 10 };
#define PEFT_TOLERANCE 1e-5 // relative L2, fp32 against fp32, as test_openvla's checks

// The trained folder's model with the run's adapter, the towers' included: the decoder and projector
// (a Model with the towers' adapters in its ParamTable) and the towers bound to them.
typedef struct Trained {
    Model *model;
    FusedFeaturizer *featurizer;
    OpenVlaVision vision;
    int P, vocab;
} Trained;

// *t stays where it is while the model lives (ModelOptions.lora_towers points into it).
static void load_trained(const Config *config, const char *adapter_dir, int max_seq_len, Trained *t) {
    *t = (Trained){0};
    bool is_openvla = false;
    Error err;
    if (!hf_read_openvla(config->model.path, &is_openvla, &t->vision, &err)) fail_msg("%s", err.message);
    assert_true(is_openvla);
    t->P = clip_n_features(&t->vision.towers[0]);
    ModelOptions options = {.ops = ops_cpu(), .max_batch = PEFT_B, .max_seq_len = max_seq_len, .seed = 1,
                            .projector_kind = PROJECTOR_OPENVLA,
                            .projector_in = t->vision.towers[0].hidden_size + t->vision.towers[1].hidden_size,
                            .max_image_rows = PEFT_B * t->P, .lora_towers = t->vision.towers,
                            .lora = {.r = config->lora.r, .alpha = config->lora.alpha, .target_projector = true,
                                     .target_towers = true}};
    for (int k = 0; k < LORA_TARGET_COUNT; k++) options.lora.targets[k] = true;
    if (!hf_read_llama_config(config->model.path, &options.config, &err)) fail_msg("%s", err.message);
    t->vocab = options.config.vocab_size;
    options.image_token_id = t->vocab - 1; // the placeholder: the id past the tokenizer's vocabulary
    t->model = model_create(&options, &err);
    ClipTowerOptions towers = {.lora_r = config->lora.r, .train = true};
    t->featurizer = t->model ? fused_featurizer_create_with(ops_cpu(), t->vision.towers, PEFT_B, &towers, &err) : NULL;
    if (!t->featurizer || !openvla_load_towers(t->featurizer, config->model.path, &err) ||
        !hf_load_weights(t->model, config->model.path, &err) || !adapter_load(t->model, adapter_dir, &err) ||
        !fused_featurizer_bind_lora(t->featurizer, model_params(t->model), lora_scale(model_lora(t->model)), &err))
        fail_msg("%s", err.message);
    assert_int_equal(model_params(t->model)->n_tower_lora, 2 * 4 * (2 + 3));
}

// The run's adapter, the towers' adapters included, is one PEFT loads onto the reference model (timm's
// towers, the projector, transformers' Llama, their weights the folder's) with PeftModel.from_pretrained,
// every tensor onto its module, and it gives lora-train's logits for the same pixels and ids.
static void test_trained_adapter_loads_in_peft(void **state) {
    (void)state;
    if (run_command("python3 -c 'import timm, peft, transformers, safetensors' 2>/dev/null") != 0) {
        print_message("python3 with timm, transformers, peft and safetensors is not available\n");
        skip();
    }
    const char *dir = make_temp_dir("openvla_train_peft");
    Config config = openvla_config(dir, "zero.offload=none");
    TrainSummary summary;
    Error err = {{0}};
    if (!train_run_with(&config, &(TrainControl){0}, &summary, &err)) fail_msg("%s", err.message);
    Trained t;
    load_trained(&config, summary.adapter_dir, PEFT_TEXT_T + 16, &t);
    const int P = t.P, T = PEFT_TEXT_T + P, S = t.vision.towers[0].image_size, D = fused_featurizer_width(t.featurizer);
    assert_int_equal(P, 16);

    // the inputs: random pixels (6 channels: DINOv2's and SigLIP's halves) and ids; BOS, then the
    // placeholders, then the text, as RobotLoader lays them out
    size_t n_pixels = (size_t)PEFT_B * 6 * S * S, n_logits = (size_t)PEFT_B * T * t.vocab;
    float *pixels = malloc(n_pixels * sizeof(float)), *features = malloc((size_t)PEFT_B * P * D * sizeof(float));
    float *frozen = malloc((size_t)PEFT_B * P * D * sizeof(float));
    float *logits = malloc(n_logits * sizeof(float)), *frozen_logits = malloc(n_logits * sizeof(float));
    assert_non_null(pixels), assert_non_null(features), assert_non_null(frozen), assert_non_null(logits);
    assert_non_null(frozen_logits);
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < n_pixels; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        pixels[i] = (float)((double)(rng >> 11) / 9007199254740992.0 * 4.0 - 2.0);
    }
    int32_t text[PEFT_B * PEFT_TEXT_T], tokens[PEFT_B * 64], targets[PEFT_B * 64];
    assert_true(T <= 64);
    for (int b = 0; b < PEFT_B; b++) {
        for (int i = 0; i < PEFT_TEXT_T; i++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            int32_t id = 3 + (int32_t)((rng >> 33) % (uint64_t)(t.vocab - 4)); // below the placeholder
            text[b * PEFT_TEXT_T + i] = i == 0 ? model_config(t.model)->bos_token_id : id;
        }
        for (int i = 0; i < T; i++) {
            tokens[b * T + i] = i == 0 ? text[b * PEFT_TEXT_T] : i <= P ? t.vocab - 1 : text[b * PEFT_TEXT_T + i - P];
            targets[b * T + i] = -100;
        }
    }
    FusedFeaturizer *plain = fused_featurizer_create(ops_cpu(), t.vision.towers, PEFT_B, &err); // no adapters
    if (!plain || !openvla_load_towers(plain, config.model.path, &err) ||
        !fused_featurizer_forward(plain, pixels, PEFT_B, frozen, &err) ||
        !fused_featurizer_forward_lora(t.featurizer, model_param_act(t.model), pixels, PEFT_B, features, &err))
        fail_msg("%s", err.message);
    fused_featurizer_destroy(plain);
    Batch batch = {.B = PEFT_B, .T = T, .tokens = tokens, .targets = targets, .n_image_rows = PEFT_B * P,
                   .image_features = frozen};
    if (!model_logits(t.model, &batch, frozen_logits, &err)) fail_msg("%s", err.message);
    batch.image_features = features;
    if (!model_logits(t.model, &batch, logits, &err)) fail_msg("%s", err.message);

    char inputs[2200], out[2200], command[8192];
    snprintf(inputs, sizeof inputs, "%s/peft_inputs.safetensors", dir);
    snprintf(out, sizeof out, "%s/peft_logits.safetensors", dir);
    SafetensorsEntry entries[2] = {
        {"pixel_values", {DTYPE_F32, 4, {PEFT_B, 6, S, S}, pixels}},
        {"input_ids", {DTYPE_I32, 2, {PEFT_B, PEFT_TEXT_T}, text}},
    };
    if (!safetensors_write(inputs, entries, 2, NULL, 0, &err)) fail_msg("%s", err.message);
    snprintf(command, sizeof command, "python3 scripts/check_openvla_adapter.py %s %s %s %s > %s/peft.log 2>&1",
             config.model.path, summary.adapter_dir, inputs, out, dir);
    int rc = run_command(command);
    snprintf(command, sizeof command, "grep -v Warning %s/peft.log | grep -v warnings.warn", dir);
    run_command(command);
    if (rc != 0) fail_msg("scripts/check_openvla_adapter.py failed (see %s/peft.log)", dir);

    SafetensorsFile *peft = safetensors_open(out, &err);
    if (!peft) fail_msg("%s", err.message);
    Tensor got;
    if (!safetensors_get(peft, "logits", &got, &err)) fail_msg("%s", err.message);
    assert_int_equal(tensor_numel(&got), n_logits);
    assert_int_equal(got.dtype, DTYPE_F32);
    const float *peft_logits = got.data;
    assert_all_finite(logits, n_logits);
    double max_abs, frozen_max;
    double error = relative_l2(logits, peft_logits, n_logits, &max_abs);
    double towers_effect = relative_l2(frozen_logits, peft_logits, n_logits, &frozen_max);
    print_message("logits vs PEFT with the trained adapter: relative L2 %.3g, max |diff| %.3g; without the towers' "
                  "adapters: %.3g (max %.3g)\n", error, max_abs, towers_effect, frozen_max);
    assert_true(error < PEFT_TOLERANCE);
    assert_true(towers_effect > 100 * PEFT_TOLERANCE); // the towers' adapters take part in what is compared
    safetensors_close(peft);
    fused_featurizer_destroy(t.featurizer);
    model_destroy(t.model);
    free(pixels), free(features), free(frozen), free(logits), free(frozen_logits);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_trains_and_resumes),
                                       cmocka_unit_test(test_offload_trains_the_same_adapter),
                                       cmocka_unit_test(test_two_ranks_zero2_match_one_process),
                                       cmocka_unit_test(test_trained_adapter_loads_in_peft)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
