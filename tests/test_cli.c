// The lora-train binary: configuration errors exit non-zero with a message
// naming the key or file, and write nothing; an image-text config trains; a
// SIGTERM during set-up saves a checkpoint, one after the run exits 0.
#include "test_util.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoints/checkpoints.h"
#include "trainer/trainer.h"

typedef struct Outcome {
    int status;
    char output[8192];
} Outcome;

// Runs lora-train with args inside dir, capturing stdout and stderr.
static Outcome run_lora_train(const char *dir, const char *args) {
    const char *bin = getenv("LORA_TRAIN_BIN");
    if (!bin) fail_msg("LORA_TRAIN_BIN is not set (run through ctest)");
    char command[4096];
    snprintf(command, sizeof command, "cd '%s' && '%s' %s > out.txt 2>&1", dir, bin, args);
    Outcome outcome = {.status = run_command(command)};
    char path[1024];
    snprintf(path, sizeof path, "%s/out.txt", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(outcome.output, 1, sizeof outcome.output - 1, f);
    outcome.output[n] = '\0';
    fclose(f);
    remove(path);
    return outcome;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static const char *VALID_PREFIX = "model:\n  path: model\n  create_if_missing: tiny\n"
                                  "data:\n  path: data.jsonl\n  create_if_missing: demo\n"
                                  "checkpoint:\n  dir: out\n";

// The run failed before touching the disk: only the config file (and nothing
// the trainer would create) is in dir.
static void assert_nothing_written(const char *dir) {
    const char *created[] = {"model", "data.jsonl", "out"};
    for (int i = 0; i < 3; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, created[i]);
        if (path_exists(path)) fail_msg("%s was written by a failing run", path);
    }
}

static void expect_failure(const char *yaml, const char *args, const char *const *must_contain) {
    const char *dir = make_temp_dir("cli");
    write_text(dir, "run.yaml", yaml);
    Outcome outcome = run_lora_train(dir, args);
    print_message("exit %d: %s", outcome.status, outcome.output);
    assert_int_not_equal(outcome.status, 0);
    for (int i = 0; must_contain[i]; i++) {
        if (!strstr(outcome.output, must_contain[i]))
            fail_msg("message lacks '%s': %s", must_contain[i], outcome.output);
    }
    assert_nothing_written(dir);
}

static void test_unknown_key(void **state) {
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "%strain:\n  lrr: 0.001\n", VALID_PREFIX);
    expect_failure(yaml, "--config run.yaml", (const char *[]){"run.yaml", "train.lrr", "train.lr", NULL});
}

static void test_wrong_type(void **state) {
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "%strain:\n  micro_batch: four\n", VALID_PREFIX);
    expect_failure(yaml, "--config run.yaml", (const char *[]){"train.micro_batch", "four", NULL});
}

static void test_bad_override(void **state) {
    expect_failure(VALID_PREFIX, "--config run.yaml --set lora.rank=8", (const char *[]){"lora.rank", "lora.r", NULL});
}

static void test_missing_config_file(void **state) {
    expect_failure("", "--config nowhere.yaml", (const char *[]){"nowhere.yaml", NULL});
}

static void test_missing_data_file(void **state) {
    expect_failure("model:\n  path: model\n  create_if_missing: tiny\ndata:\n  path: absent.jsonl\ncheckpoint:\n  dir: out\n",
                   "--config run.yaml", (const char *[]){"data.path", "absent.jsonl", NULL});
}

// Packing is text-only: an image-text config with data.pack is refused before anything is written.
static void test_pack_refused_for_image_text(void **state) {
    expect_failure(VALID_PREFIX, "--config run.yaml --set data.pack=true --set vision.tower=tower.safetensors",
                   (const char *[]){"data.pack", "text data only", NULL});
}

static void test_unknown_flag(void **state) {
    expect_failure(VALID_PREFIX, "--config run.yaml --learning-rate 3", (const char *[]){"--learning-rate", NULL});
    expect_failure(VALID_PREFIX, "--config run.yaml --allow-config-change",
                   (const char *[]){"--allow-config-change needs --resume", NULL});
}

// Every missing input in one message, each with what it is and how to get it:
// the model's Hugging Face id and download command when model.name gives it.
static void test_missing_inputs_reported_at_once(void **state) {
    expect_failure("model:\n  path: models/llama\n  name: meta-llama/Meta-Llama-3-8B-Instruct\n"
                   "data:\n  path: absent.json\n  images: absent.tar\nvision:\n  tower: clip/model.safetensors\n"
                   "checkpoint:\n  dir: out\n",
                   "--config run.yaml",
                   (const char *[]){"4 inputs are missing", "model.path: 'models/llama' does not exist",
                                    "huggingface-cli download meta-llama/Meta-Llama-3-8B-Instruct --local-dir models/llama",
                                    "data.path: 'absent.json'", "data.images: 'absent.tar'",
                                    "huggingface-cli download openai/clip-vit-large-patch14-336 model.safetensors "
                                    "--local-dir clip", NULL});
}

// A folder init-model --preset writes has no tokenizer.json: tokenize uses the
// byte tokenizer (bytes, <bos> 256 with --special), as training does.
static void test_tokenize_byte_folder(void **state) {
    const char *dir = make_temp_dir("cli_tokenize");
    Outcome made = run_lora_train(dir, "init-model --arch llama --preset tiny --out tiny");
    assert_int_equal(made.status, 0);
    write_text(dir, "hello.json", "[\"Hello\"]");
    write_text(dir, "hi.json", "[\"Hi\"]");
    Outcome plain = run_lora_train(dir, "tokenize --tokenizer tiny < hello.json");
    print_message("exit %d: %s", plain.status, plain.output);
    assert_int_equal(plain.status, 0);
    assert_string_equal(plain.output, "[[72, 101, 108, 108, 111]]\n");
    Outcome special = run_lora_train(dir, "tokenize --tokenizer tiny --special < hi.json");
    assert_int_equal(special.status, 0);
    assert_string_equal(special.output, "[[256, 72, 105]]\n");
}

// data check on a text config: the demo data is written as training would,
// the records read as chats, skips counted per reason with the first few shown.
static void test_data_check_text(void **state) {
    const char *dir = make_temp_dir("cli_data_check");
    write_text(dir, "run.yaml", VALID_PREFIX);
    Outcome demo = run_lora_train(dir, "data check --config run.yaml");
    print_message("exit %d: %s", demo.status, demo.output);
    assert_int_equal(demo.status, 0);
    const char *expected[] = {"writing the demo dataset to data.jsonl", "data.jsonl: 2000 JSONL records",
                              "usable samples   2000", "skipped          0", NULL};
    for (int i = 0; expected[i]; i++)
        if (!strstr(demo.output, expected[i])) fail_msg("data check output lacks '%s': %s", expected[i], demo.output);
    assert_null(strstr(demo.output, "image"));

    char records[4096] = "";
    for (int i = 0; i < 6; i++) strcat(records, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    strcat(records, "{\"text\": \"a plain text\"}\nnot json\n{\"text\": 3}\n");
    write_text(dir, "data.jsonl", records);
    Outcome bad = run_lora_train(dir, "data check --config run.yaml --set data.max_skip_fraction=0.95");
    print_message("exit %d: %s", bad.status, bad.output);
    assert_int_equal(bad.status, 0);
    const char *counted[] = {"9 JSONL records", "usable samples   1", "skipped          8", "    empty conversation: 6",
                             "data.jsonl:1: \"messages\" has no assistant turn", "      ... 3 more",
                             "    bad record: 2", "data.jsonl:8: invalid JSON", "data.jsonl:9: \"text\" is not a string",
                             NULL};
    for (int i = 0; counted[i]; i++)
        if (!strstr(bad.output, counted[i])) fail_msg("data check output lacks '%s': %s", counted[i], bad.output);
    assert_null(strstr(bad.output, "data.jsonl:4:")); // three examples per reason, not a line each
    Outcome over = run_lora_train(dir, "data check --config run.yaml");
    assert_int_equal(over.status, 1);
    assert_non_null(strstr(over.output, "data.max_skip_fraction"));
}

// --version; a misspelled subcommand or flag gets the nearest one.
static void test_version_and_did_you_mean(void **state) {
    const char *dir = make_temp_dir("cli_names");
    Outcome version = run_lora_train(dir, "--version");
    assert_int_equal(version.status, 0);
    assert_non_null(strstr(version.output, "lora-train 0."));
    assert_non_null(strstr(version.output, "built with "));
    const struct { const char *args, *expected; } cases[] = {
        {"plna --config run.yaml", "unknown subcommand 'plna' (did you mean 'plan'?)"},
        {"--config run.yaml --offlaod cpu", "unknown argument '--offlaod' (did you mean '--offload'?)"},
        {"init-model --arch llama --prest tiny --out m", "unknown argument '--prest' (did you mean '--preset'?)"},
        {"demo --sett train.lr=1", "unknown argument '--sett' (did you mean '--set'?)"},
        {"demo --config configs/demo.yaml", "the text recipe is lora-train --config configs/demo.yaml"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        Outcome outcome = run_lora_train(dir, cases[i].args);
        assert_int_equal(outcome.status, 2);
        if (!strstr(outcome.output, cases[i].expected))
            fail_msg("%s: lacks '%s': %s", cases[i].args, cases[i].expected, outcome.output);
    }
}

// `lora-train demo --set` changes the vision-language demo that runs (it used
// to run the text recipe instead), from any directory.
static void test_demo_set_applies(void **state) {
    const char *dir = make_temp_dir("cli_demo");
    Outcome demo = run_lora_train(dir, "demo --set train.max_steps=2 --set train.log_every=1");
    print_message("exit %d: %s", demo.status, demo.output);
    assert_int_equal(demo.status, 0);
    const char *expected[] = {"images.tar", "step 2/2", "done: 2 steps", "held-out accuracy before training",
                              "picking one of the names at random would score 25% colours", NULL};
    for (int i = 0; expected[i]; i++)
        if (!strstr(demo.output, expected[i])) fail_msg("demo output lacks '%s': %s", expected[i], demo.output);
    Outcome bad = run_lora_train(dir, "demo --set train.lrr=1");
    assert_int_equal(bad.status, 1);
    assert_non_null(strstr(bad.output, "--set: unknown key 'train.lrr' (did you mean 'train.lr'?)"));
}

static const char *LLAMA3_8B_CONFIG =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"bos_token_id\": 128000, \"eos_token_id\": 128009, "
    "\"hidden_act\": \"silu\", \"hidden_size\": 4096, \"intermediate_size\": 14336, "
    "\"max_position_embeddings\": 8192, \"model_type\": \"llama\", \"num_attention_heads\": 32, "
    "\"num_hidden_layers\": 32, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0, "
    "\"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"vocab_size\": 128256}";

// The planned peak printed after "marker" ("  --set ...   20.92 GiB  fits"), in GiB.
static double peak_after(const char *output, const char *marker) {
    const char *at = strstr(output, marker);
    if (!at) fail_msg("output lacks '%s': %s", marker, output);
    at += strlen(marker);
    while (*at == ' ') at++;
    double value = 0;
    char unit[8] = "";
    if (sscanf(at, "%lf %7s", &value, unit) != 2) fail_msg("no size after '%s': %s", marker, at);
    return strcmp(unit, "GiB") == 0 ? value : strcmp(unit, "MiB") == 0 ? value / 1024 : value / (1 << 30);
}

// plan before anything is downloaded: LLaVA on Llama-3-8B from its config.json
// alone and the tower's preset, against a 24 GB GPU: does not fit, and the
// changes that make it fit, each with the peak a plan with it predicts.
static void test_plan_before_download(void **state) {
    const char *dir = make_temp_dir("cli_plan");
    char folder[1100];
    snprintf(folder, sizeof folder, "%s/m", dir);
    Error err;
    assert_true(make_dirs(folder, &err));
    write_text(folder, "config.json", LLAMA3_8B_CONFIG);
    write_text(dir, "run.yaml", "model:\n  path: m\ndata:\n  path: absent.json\n  images: absent.tar\n"
                                "  max_seq_len: 2048\nvision:\n  tower: clip/model.safetensors\ntrain:\n"
                                "  micro_batch: 4\n  max_steps: 100\n  activation_checkpointing: false\n"
                                "checkpoint:\n  dir: out\n");
    Outcome plan = run_lora_train(dir, "plan --config run.yaml --gpu-memory 24GB");
    print_message("exit %d: %s", plan.status, plan.output);
    assert_int_equal(plan.status, 0);
    const char *expected[] = {"not on disk yet", "vision.tower: 'clip/model.safetensors' does not exist",
                              "GPU memory per rank (bf16 storage)", "vision tower",
                              "fit: does NOT fit", "on a GPU of --gpu-memory 24GB of 22.35 GiB",
                              "together, in that order until it fits: --set train.activation_checkpointing=true:",
                              NULL};
    for (int i = 0; expected[i]; i++)
        if (!strstr(plan.output, expected[i])) fail_msg("plan output lacks '%s': %s", expected[i], plan.output);
    assert_null(strstr(plan.output, "\n  workspace"));                  // no "workspace 4 bytes" line
    assert_null(strstr(plan.output, "\n    without checkpointing")); // nor a duplicated row
    double advised = peak_after(plan.output, "  --set train.activation_checkpointing=true");
    Outcome changed = run_lora_train(dir, "plan --config run.yaml --gpu-memory 24GB "
                                          "--set train.activation_checkpointing=true");
    assert_int_equal(changed.status, 0);
    assert_true(fabs(peak_after(changed.output, "fit: fits:") - advised) < 0.01);
    assert_true(advised < 22.35 - 1.0);

    Outcome no_config = run_lora_train(dir, "plan --config run.yaml --set model.path=absent "
                                            "--set model.name=meta-llama/Meta-Llama-3-8B");
    assert_int_equal(no_config.status, 1);
    assert_non_null(strstr(no_config.output, "huggingface-cli download meta-llama/Meta-Llama-3-8B config.json"));
}

// A run whose plan exceeds this machine's memory stops before loading
// anything, with plan's verdict and advice.
static void test_run_refused_when_memory_exceeded(void **state) {
    const char *dir = make_temp_dir("cli_too_big");
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "%strain:\n  micro_batch: 65536\n  max_steps: 1\n  backend: cpu\n", VALID_PREFIX);
    write_text(dir, "run.yaml", yaml);
    Outcome outcome = run_lora_train(dir, "--config run.yaml --set data.max_seq_len=8192");
    print_message("exit %d: %s", outcome.status, outcome.output);
    assert_int_equal(outcome.status, 1);
    const char *expected[] = {"the run does NOT fit", "this machine's memory", "--set train.activation_checkpointing=true",
                              "--set train.micro_batch=", NULL};
    for (int i = 0; expected[i]; i++)
        if (!strstr(outcome.output, expected[i])) fail_msg("error lacks '%s': %s", expected[i], outcome.output);
    assert_null(strstr(outcome.output, "step 1"));
}

// doctor: a line per thing a run depends on, on this machine too (no GPU).
static void test_doctor(void **state) {
    const char *dir = make_temp_dir("cli_doctor");
    write_text(dir, "run.yaml", "model:\n  path: absent\ndata:\n  path: absent.jsonl\ncheckpoint:\n  dir: ckpt/run\n");
    Outcome doctor = run_lora_train(dir, "doctor --config run.yaml");
    print_message("exit %d: %s", doctor.status, doctor.output);
    assert_int_equal(doctor.status, 0);
    const char *lines[] = {"] GPUs ", "] CUDA ", "] NCCL ", "] locked memory ", "] /dev/shm ",
                           "] disk ", "free in . (checkpoints of ckpt/run)", "] cores ", "] memory ", NULL};
    for (int i = 0; lines[i]; i++)
        if (!strstr(doctor.output, lines[i])) fail_msg("doctor lacks '%s': %s", lines[i], doctor.output);
    if (access("/proc/driver/nvidia/version", R_OK) != 0)
        assert_non_null(strstr(doctor.output, "[warn] GPUs          no NVIDIA GPU found (no NVIDIA kernel driver loaded"));
    assert_int_equal(run_lora_train(dir, "doctor").status, 0); // without a config: the default checkpoint.dir
}

static char *read_text(const char *dir, const char *name);

// init-model writes the dtype config.json asks for: torch_dtype bfloat16 gives
// BF16 tensors, each the rounding of the float32 model of the same seed.
static void test_init_model_dtype(void **state) {
    const char *dir = make_temp_dir("cli_dtype");
    assert_int_equal(run_lora_train(dir, "init-model --arch llama --preset tiny --out f32").status, 0);
    char *config = read_text(dir, "f32/config.json"), *at = strstr(config, "\"torch_dtype\": \"float32\"");
    assert_non_null(at);
    char bf16_config[8192];
    snprintf(bf16_config, sizeof bf16_config, "%.*s\"torch_dtype\": \"bfloat16\"%s", (int)(at - config), config,
             at + strlen("\"torch_dtype\": \"float32\""));
    free(config);
    write_text(dir, "bf16.json", bf16_config);
    Outcome made = run_lora_train(dir, "init-model --arch llama --config-json bf16.json --out bf16");
    print_message("exit %d: %s", made.status, made.output);
    assert_int_equal(made.status, 0);
    config = read_text(dir, "bf16/config.json");
    assert_non_null(strstr(config, "\"torch_dtype\": \"bfloat16\""));
    free(config);
    char path[1100];
    Error err;
    snprintf(path, sizeof path, "%s/f32/model.safetensors", dir);
    SafetensorsFile *f32 = safetensors_open(path, &err);
    snprintf(path, sizeof path, "%s/bf16/model.safetensors", dir);
    SafetensorsFile *bf16 = safetensors_open(path, &err);
    assert_non_null(f32);
    assert_non_null(bf16);
    assert_int_equal(safetensors_count(f32), safetensors_count(bf16));
    for (int i = 0; i < safetensors_count(f32); i++) {
        Tensor a, b;
        assert_true(safetensors_get(f32, safetensors_name(f32, i), &a, &err));
        assert_true(safetensors_get(bf16, safetensors_name(f32, i), &b, &err));
        assert_int_equal(a.dtype, DTYPE_F32);
        assert_int_equal(b.dtype, DTYPE_BF16);
        assert_int_equal(tensor_numel(&a), tensor_numel(&b));
        for (int64_t k = 0; k < tensor_numel(&a); k++)
            assert_int_equal(f32_to_bf16(((const float *)a.data)[k]), ((const uint16_t *)b.data)[k]);
    }
    safetensors_close(f32);
    safetensors_close(bf16);
}

static char *read_text(const char *dir, const char *name) {
    char path[1024], *text;
    size_t size;
    Error err;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!read_file(path, &text, &size, &err)) fail_msg("%s", err.message);
    return text;
}

static void write_base_name(const char *adapter_dir, const char *from, const char *to) {
    char *text = read_text(adapter_dir, "adapter_config.json");
    char *at = strstr(text, from);
    if (!at) fail_msg("adapter_config.json lacks %s: %s", from, text);
    char edited[16384];
    snprintf(edited, sizeof edited, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    write_text(adapter_dir, "adapter_config.json", edited);
    free(text);
}

// adapter_config.json names the base by its absolute path (or model.name's
// Hugging Face id), so export from another directory finds it; a base that is
// not a folder here is named with --base, as the error says.
static void test_base_model_path_and_export_base(void **state) {
    char dir[1024], yaml[1024], model[PATH_MAX], expected[PATH_MAX + 64], args[4096];
    snprintf(dir, sizeof dir, "%s", make_temp_dir("cli_base")); // the next call reuses its buffer
    snprintf(yaml, sizeof yaml, "%strain:\n  max_steps: 1\n  backend: cpu\n", VALID_PREFIX);
    write_text(dir, "run.yaml", yaml);
    Outcome trained = run_lora_train(dir, "--config run.yaml");
    assert_int_equal(trained.status, 0);
    char adapter[1100];
    snprintf(adapter, sizeof adapter, "%s/out/adapter", dir);
    assert_non_null(realpath(dir, model));
    strcat(model, "/model");
    snprintf(expected, sizeof expected, "\"base_model_name_or_path\": \"%s\"", model);
    char *config = read_text(adapter, "adapter_config.json");
    if (!strstr(config, expected)) fail_msg("adapter_config.json lacks %s: %s", expected, config);
    free(config);
    const char *elsewhere = make_temp_dir("cli_base_elsewhere");
    snprintf(args, sizeof args, "export --checkpoint '%s' --format merged --out merged", adapter);
    Outcome exported = run_lora_train(elsewhere, args);
    print_message("exit %d: %s", exported.status, exported.output);
    assert_int_equal(exported.status, 0);

    write_base_name(adapter, model, "meta-llama/Llama-3.2-1B");
    snprintf(args, sizeof args, "export --checkpoint '%s' --format merged --out merged2", adapter);
    Outcome refused = run_lora_train(elsewhere, args);
    assert_int_not_equal(refused.status, 0);
    if (!strstr(refused.output, "'meta-llama/Llama-3.2-1B' is not a folder here") || !strstr(refused.output, "--base DIR"))
        fail_msg("export's error does not point to --base: %s", refused.output);
    snprintf(args, sizeof args, "export --checkpoint '%s' --format merged --out merged2 --base '%s'", adapter, model);
    assert_int_equal(run_lora_train(elsewhere, args).status, 0);

    snprintf(args, sizeof args, "--config run.yaml --set model.name=meta-llama/Llama-3.2-1B --set checkpoint.dir=out2");
    Outcome named = run_lora_train(dir, args);
    print_message("exit %d: %s", named.status, named.output);
    assert_int_equal(named.status, 0);
    config = read_text(dir, "out2/adapter/adapter_config.json");
    assert_non_null(strstr(config, "\"base_model_name_or_path\": \"meta-llama/Llama-3.2-1B\""));
    free(config);
}

static void assert_file(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!path_exists(path)) fail_msg("%s is missing", path);
}

// LLaVA records over the shared JPEG fixtures, a random tiny tower and model:
// trains, with the projector in the checkpoint and beside the final adapter.
static void test_image_text_config_trains(void **state) {
    const char *fixture = shared_fixture("images/jpeg");
    if (!fixture) skip();
    char images[4096];
    assert_non_null(realpath(fixture, images)); // the run's working directory is dir
    const char *dir = make_temp_dir("cli_vlm");
    static const char *const files[] = {"video-001.jpeg", "video-001.progressive.jpeg", "video-001.q50.420.jpeg",
                                        "video-001.q50.422.jpeg"};
    char records[4096] = "[\n", yaml[8192];
    for (int i = 0; i < 8; i++) {
        size_t used = strlen(records);
        snprintf(records + used, sizeof records - used,
                 "%s{\"id\": \"%d\", \"image\": \"%s\", \"conversations\": [{\"from\": \"human\", "
                 "\"value\": \"<image>\\nWhat is it?\"}, {\"from\": \"gpt\", \"value\": \"a frame\"}]}\n",
                 i ? "," : "", i, files[i % 4]);
    }
    strcat(records, "]\n");
    write_text(dir, "records.json", records);
    snprintf(yaml, sizeof yaml,
             "model:\n  path: model\n  create_if_missing: tiny\ndata:\n  path: records.json\n  images: %s\n"
             "  image_tokens: 16\n  max_seq_len: 48\nvision:\n  tower: tower.safetensors\n  tower_preset: tiny\n"
             "train:\n  micro_batch: 2\n  max_steps: 3\n  backend: cpu\ncheckpoint:\n  dir: out\n  every_steps: 2\n",
             images);
    write_text(dir, "run.yaml", yaml);
    Outcome outcome = run_lora_train(dir, "--config run.yaml");
    print_message("exit %d: %s", outcome.status, outcome.output);
    assert_int_equal(outcome.status, 0);
    assert_non_null(strstr(outcome.output, "done: 3 steps"));
    const char *peak = strstr(outcome.output, "| peak memory: cpu backend ");
    assert_non_null(peak);
    double backend_gb = 0, process_gb = 0;
    assert_int_equal(sscanf(peak, "| peak memory: cpu backend %lf GB (its own allocations), process %lf GB (resident)",
                            &backend_gb, &process_gb), 2);
    assert_true(process_gb >= backend_gb && process_gb > 0.001); // the process holds the backend's allocations
    assert_file(dir, "tower.safetensors");
    assert_file(dir, "out/step-000002/adapter_model.safetensors");
    assert_file(dir, "out/adapter/adapter_model.safetensors");
}

// Runs `lora-train --config run.yaml` in dir in the background under
// `timeout [timeout_options] -s KILL 120`, waits until its model folder exists
// (it is still setting up), then runs signal_commands with $P the pid of
// timeout (which passes the signals it gets on to lora-train) and returns the
// exit status. The run's output is in dir/out.txt.
static int signal_during_setup(const char *dir, const char *timeout_options, const char *signal_commands) {
    char yaml[1024], command[4096];
    snprintf(yaml, sizeof yaml, "%strain:\n  max_steps: 100000\n  backend: cpu\n", VALID_PREFIX);
    write_text(dir, "run.yaml", yaml);
    snprintf(command, sizeof command,
             "cd '%s' && { timeout %s -s KILL 120 '%s' --config run.yaml > out.txt 2>&1 & P=$!; "
             "i=0; while [ ! -d model ] && [ $i -lt 5000000 ]; do i=$((i + 1)); done; %s; wait $P; }",
             dir, timeout_options, getenv("LORA_TRAIN_BIN"), signal_commands);
    return run_command(command);
}

static void assert_saved_after_signal(const char *dir, int status) {
    char path[1024], *output;
    size_t size;
    snprintf(path, sizeof path, "%s/out.txt", dir);
    Error err;
    if (!read_file(path, &output, &size, &err)) fail_msg("%s", err.message);
    print_message("exit %d: %s", status, output);
    assert_int_equal(status, 0);
    assert_non_null(strstr(output, "checkpoint saved to"));
    free(output);
}

// SIGTERM while lora-train is still setting up (its model folder just
// created): the handlers are already there, so the run stops at its first
// step with a checkpoint and exits 0 (it was killed, 143, with nothing saved).
static void test_signal_during_setup_saves(void **state) {
    const char *dir = make_temp_dir("cli_early_signal");
    assert_saved_after_signal(dir, signal_during_setup(dir, "", "kill -TERM $P"));
}

// The same signal twice within a second is one request to stop, not a
// second that ends the process. Without --foreground, timeout itself passes
// every signal on twice (to its child, then to its process group); here each
// of the two is passed on once.
static void test_signal_delivered_twice_saves(void **state) {
    const char *dir = make_temp_dir("cli_double_signal");
    int status = signal_during_setup(dir, "--foreground", "kill -TERM $P; sleep 0.05; kill -TERM $P");
    assert_saved_after_signal(dir, status);
}

// A signal once the run's outputs are complete (here: as lora_train_main
// returns) leaves the exit status 0; it was killed by the restored default.
static void test_signal_after_done_exits_0(void **state) {
    const char *dir = make_temp_dir("cli_late_signal");
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "%strain:\n  max_steps: 2\n  backend: cpu\n", VALID_PREFIX);
    write_text(dir, "run.yaml", yaml);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        char *argv[] = {"lora-train", "--config", "run.yaml", NULL};
        if (chdir(dir) != 0 || !freopen("out.txt", "w", stdout)) _exit(3);
        int status = lora_train_main(3, argv);
        fflush(stdout);
        raise(SIGTERM);
        _exit(status);
    }
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    if (WIFSIGNALED(status)) fail_msg("killed by signal %d after the run", WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_file(dir, "out/adapter/adapter_model.safetensors");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_key),         cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_bad_override),        cmocka_unit_test(test_missing_config_file),
        cmocka_unit_test(test_missing_data_file),   cmocka_unit_test(test_unknown_flag),
        cmocka_unit_test(test_pack_refused_for_image_text),
        cmocka_unit_test(test_missing_inputs_reported_at_once),
        cmocka_unit_test(test_tokenize_byte_folder),
        cmocka_unit_test(test_data_check_text),
        cmocka_unit_test(test_version_and_did_you_mean),
        cmocka_unit_test(test_demo_set_applies),
        cmocka_unit_test(test_plan_before_download),
        cmocka_unit_test(test_run_refused_when_memory_exceeded),
        cmocka_unit_test(test_doctor),
        cmocka_unit_test(test_init_model_dtype),
        cmocka_unit_test(test_base_model_path_and_export_base),
        cmocka_unit_test(test_image_text_config_trains),
        cmocka_unit_test(test_signal_during_setup_saves),
        cmocka_unit_test(test_signal_delivered_twice_saves),
        cmocka_unit_test(test_signal_after_done_exits_0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
