// lora-train's command line: subcommands, --config, --set and --offload.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train_private.h"

#ifndef LORA_TRAIN_VERSION
#define LORA_TRAIN_VERSION "unknown"
#endif

static const char *const SUBCOMMANDS[] = {"demo", "data", "plan", "doctor", "init-model", "tokenize", "export", "report", NULL};
static const char *const TRAIN_FLAGS[] = {"--config", "--set", "--offload", "--resume", "--allow-config-change",
                                          "--allow-low-disk", "--world-size", "--gpu-memory", "--help", "--version", NULL};

const char *did_you_mean(const char *word, const char *const *candidates) {
    const char *best = NULL;
    int best_distance = 4; // at most 3 edits, and fewer than the word's length
    for (int i = 0; candidates[i]; i++) {
        int distance = edit_distance(word, candidates[i]);
        if (distance < best_distance && distance < (int)strlen(word)) best = candidates[i], best_distance = distance;
    }
    return best;
}

bool fail_unknown_argument(Error *err, const char *argument, const char *const *known) {
    const char *nearest = did_you_mean(argument, known);
    if (nearest) return fail(err, "unknown argument '%s' (did you mean '%s'?)", argument, nearest);
    return fail(err, "unknown argument '%s' (see lora-train --help)", argument);
}

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: lora-train --config FILE [--set key.path=value]... [--offload cpu] [--resume [DIR]]\n"
            "                  [--allow-config-change] [--allow-low-disk]\n"
            "       lora-train demo [--vla] [--set key.path=value]... [--offload cpu]\n"
            "       lora-train data check --config FILE [--set key.path=value]...\n"
            "       lora-train plan --config FILE [--set key.path=value]... [--offload cpu] [--world-size N]\n"
            "                       [--gpu-memory 24GB]\n"
            "       lora-train doctor [--config FILE]\n"
            "       lora-train init-model --arch llama --preset NAME|--config-json FILE --out DIR [--tokenizer FILE]\n"
            "       lora-train tokenize --tokenizer PATH [--special] < strings.json\n"
            "       lora-train export --checkpoint DIR --format peft|merged --out DIR [--base DIR]\n"
            "       lora-train report RUN_DIR [RUN_DIR...] [--out FILE.png]\n"
            "\n"
            "Fine-tunes LoRA adapters on a Llama-family model as the YAML config describes.\n"
            "  --config FILE        the recipe (see configs/)\n"
            "  --set KEY=VALUE      override one config key, e.g. --set train.lr=1e-4\n"
            "  --offload cpu        same as --set zero.offload=cpu\n"
            "  --resume [DIR]       continue from checkpoint DIR (default: the newest complete one)\n"
            "  --allow-config-change  with --resume: continue although keys that change the mathematics\n"
            "                       (lr, schedule, seed, data, ...) differ from the checkpoint's; they are printed\n"
            "  --allow-low-disk     train even when the run's checkpoints will not fit on the disk\n"
            "  --version            lora-train's version and the CUDA it was built for\n"
            "  demo                 train the embedded vision-language demo (--set changes its recipe; the text\n"
            "                       recipe is lora-train --config configs/demo.yaml); --vla: the robot demo\n"
            "  data check           read the whole dataset as training would; report counts and skipped records\n"
            "  plan                 memory by category, disk per checkpoint and for the run, tokens per step\n"
            "                       (--world-size N: ranks of the job, default 1), whether it fits the GPU\n"
            "                       (--gpu-memory SIZE, else the one here) and what would make it fit;\n"
            "                       works before the model is downloaded (config.json alone, or nothing)\n"
            "  doctor               GPUs, driver and CUDA against the build, NCCL, locked memory, /dev/shm, free\n"
            "                       disk for checkpoints (checkpoint.dir of --config), cores, memory\n"
            "  report               runs side by side from their metrics.jsonl: a table and a comparison plot\n");
}

// Applies the config file, then every --set / --offload in command-line order.
// With missing (plan), inputs not on disk yet are listed there, not an error.
static bool load_config(Config *config, const char *config_path, int argc, char **argv, char *missing,
                        size_t missing_size, Error *err) {
    config_defaults(config);
    if (config_path && !config_load_yaml(config, config_path, err)) return false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            if (!config_set(config, argv[++i], err)) return fail_context(err, "--set: ");
        } else if (strcmp(argv[i], "--offload") == 0 && i + 1 < argc) {
            char assignment[CONFIG_NAME_MAX + 16];
            snprintf(assignment, sizeof assignment, "zero.offload=%s", argv[++i]);
            if (!config_set(config, assignment, err)) return fail_context(err, "--offload: ");
        }
    }
    int n_missing;
    if (missing) return config_validate_allowing_missing(config, missing, missing_size, &n_missing, err);
    return config_validate(config, err);
}

// --resume's optional value: the next argument unless it is a flag.
static const char *resume_value(int argc, char **argv, int *i) {
    if (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0) return argv[++*i];
    return "latest";
}

// Returns the value of --config, NULL if absent, and the run controls;
// unknown flags are errors.
static bool parse_flags(int argc, char **argv, const char **config_path, TrainControl *control,
                        const char **gpu_memory, Error *err) {
    *config_path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--resume") == 0) {
            control->resume = resume_value(argc, argv, &i);
            continue;
        }
        if (strcmp(argv[i], "--allow-low-disk") == 0) {
            control->allow_low_disk = true;
            continue;
        }
        if (strcmp(argv[i], "--allow-config-change") == 0) {
            control->allow_config_change = true;
            continue;
        }
        bool takes_value = strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "--set") == 0 ||
                           strcmp(argv[i], "--offload") == 0 || strcmp(argv[i], "--world-size") == 0 ||
                           strcmp(argv[i], "--gpu-memory") == 0;
        if (!takes_value) return fail_unknown_argument(err, argv[i], TRAIN_FLAGS);
        if (i + 1 >= argc) return fail(err, "%s needs a value", argv[i]);
        if (strcmp(argv[i], "--config") == 0) *config_path = argv[i + 1];
        if (strcmp(argv[i], "--gpu-memory") == 0) *gpu_memory = argv[i + 1];
        if (strcmp(argv[i], "--world-size") == 0 && (control->world_size = atoi(argv[i + 1])) < 1)
            return fail(err, "--world-size needs a positive number of ranks, not '%s'", argv[i + 1]);
        i++;
    }
    if (control->allow_config_change && !control->resume) return fail(err, "--allow-config-change needs --resume");
    return true;
}

static void print_version(void) {
#if defined(LORA_TRAIN_CUDA_EMU)
    const char *cuda = "the CPU emulation of CUDA (tools/cuda_emu)";
#elif defined(LORA_TRAIN_CUDA)
    const char *cuda = "CUDA " LORA_TRAIN_CUDA_VERSION;
#else
    const char *cuda = "no CUDA (CPU backend only)";
#endif
    printf("lora-train %s, built with %s\n", LORA_TRAIN_VERSION, cuda);
}

// A first argument that is neither a subcommand nor a flag: the nearest subcommand.
static bool check_subcommand(const char *first, Error *err) {
    if (strncmp(first, "--", 2) == 0) return true;
    for (int i = 0; SUBCOMMANDS[i]; i++)
        if (strcmp(first, SUBCOMMANDS[i]) == 0) return true;
    const char *nearest = did_you_mean(first, SUBCOMMANDS);
    if (nearest) return fail(err, "unknown subcommand '%s' (did you mean '%s'?)", first, nearest);
    return fail(err, "unknown subcommand '%s' (see lora-train --help)", first);
}

static void print_demo_usage(void) {
    printf("usage: lora-train demo [--vla] [--set key.path=value]... [--offload cpu]\n"
           "\n"
           "Trains a tiny random vision-language model on synthetic data on the CPU in about a minute.\n"
           "  (default)     pictures of coloured shapes, LLaVA records: held-out answers to \"colour?\" / \"shape?\"\n"
           "                before and after, in runs/vlm-demo\n"
           "  --vla         a robot arm's tip steered to the object an instruction names (\"move to the red\n"
           "                circle\"): episodes written as an RLDS dataset, trained as OpenVLA data (256-bin action\n"
           "                tokens); held-out action-token accuracy and L1 before and after, in runs/vla-demo\n"
           "  --set KEY=VALUE  change the demo's recipe, e.g. --set train.max_steps=100\n"
           "  --offload cpu    same as --set zero.offload=cpu\n"
           "The text-only recipe is lora-train --config configs/demo.yaml.\n");
}

// `lora-train demo [--vla] [--set k=v]... [--offload cpu]`: the vision-language
// demo in runs/vlm-demo (or with --vla the robot demo in runs/vla-demo) with the
// settings over its recipe.
static int demo_main(int argc, char **argv) {
    Error err = {{0}};
    const char *settings[argc > 0 ? argc : 1];
    char offload[CONFIG_NAME_MAX + 16];
    int n_settings = 0;
    bool vla = false;
    for (int i = 0; i < argc; i++) {
        bool set = strcmp(argv[i], "--set") == 0, offloads = strcmp(argv[i], "--offload") == 0;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_demo_usage();
            return 0;
        }
        if (strcmp(argv[i], "--vla") == 0) {
            vla = true;
            continue;
        }
        if (strcmp(argv[i], "--config") == 0) {
            fprintf(stderr, "lora-train demo: takes --set only; the text recipe is lora-train --config %s\n",
                    i + 1 < argc ? argv[i + 1] : "configs/demo.yaml");
            return 2;
        }
        if (!set && !offloads) {
            fail_unknown_argument(&err, argv[i], (const char *const[]){"--set", "--offload", "--vla", "--help", NULL});
            fprintf(stderr, "lora-train demo: %s\n", err.message);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "lora-train demo: %s needs a value\n", argv[i]);
            return 2;
        }
        if (offloads) snprintf(offload, sizeof offload, "zero.offload=%s", argv[i + 1]);
        settings[n_settings++] = offloads ? offload : argv[i + 1];
        i++;
    }
    bool ok = vla ? vla_demo_run("runs/vla-demo", settings, n_settings, NULL, &err)
                  : vlm_demo_run("runs/vlm-demo", settings, n_settings, NULL, NULL, &err);
    if (ok) return 0;
    fprintf(stderr, "lora-train demo: %s\n", err.message);
    return 1;
}

int lora_train_main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        print_version();
        return 0;
    }
    Error err = {{0}};
    if (!check_subcommand(argv[1], &err)) {
        fprintf(stderr, "lora-train: %s\n", err.message);
        return 2;
    }
    if (strcmp(argv[1], "init-model") == 0 || strcmp(argv[1], "tokenize") == 0 || strcmp(argv[1], "export") == 0) {
        return lora_train_tool_main(argv[1], argc - 2, argv + 2);
    }
    if (strcmp(argv[1], "report") == 0) return report_main(argc - 2, argv + 2);
    bool demo = strcmp(argv[1], "demo") == 0;
    bool data_check = argc >= 3 && strcmp(argv[1], "data") == 0 && strcmp(argv[2], "check") == 0;
    bool plan = strcmp(argv[1], "plan") == 0, doctor = strcmp(argv[1], "doctor") == 0;
    if (strcmp(argv[1], "data") == 0 && !data_check) {
        fprintf(stderr, "lora-train: the data subcommand is data check --config FILE\n");
        return 2;
    }
    bool installed;
    if (!data_check && !plan && !doctor && !stop_signals_install(&installed, &err)) {
        fprintf(stderr, "lora-train: %s\n", err.message);
        return 1;
    }
    if (demo) return demo_main(argc - 2, argv + 2);
    int flag_start = data_check ? 3 : plan || doctor ? 2 : 1;
    const char *config_path = NULL;
    TrainControl control = {0};
    const char *gpu_memory = NULL;
    if (!parse_flags(argc - flag_start, argv + flag_start, &config_path, &control, &gpu_memory, &err)) {
        fprintf(stderr, "lora-train: %s\n", err.message);
        return 2;
    }
    if (doctor && !config_path) {
        Config defaults;
        config_defaults(&defaults);
        return doctor_main(&defaults);
    }
    if (!config_path) {
        fprintf(stderr, "lora-train: --config FILE is required (see lora-train --help)\n");
        return 2;
    }
    if (gpu_memory && (!plan || parse_memory_size(gpu_memory) == 0)) {
        fprintf(stderr, "lora-train: --gpu-memory %s: %s\n", gpu_memory,
                plan ? "not a size (24GB, 24GiB, 80000MiB)" : "is a plan option");
        return 2;
    }
    Config config;
    char missing[ERROR_MESSAGE_MAX];
    if (!load_config(&config, config_path, argc - flag_start, argv + flag_start, plan || doctor ? missing : NULL,
                     sizeof missing, &err)) {
        fprintf(stderr, "lora-train: %s\n", err.message);
        return 2;
    }
    if (data_check) return data_check_main(&config);
    if (doctor) return doctor_main(&config);
    if (plan) {
        PlanRequest request = {.world_size = control.world_size ? control.world_size : 1, .gpu_memory_text = gpu_memory,
                               .gpu_memory_bytes = gpu_memory ? parse_memory_size(gpu_memory) : 0, .missing = missing};
        return plan_main(&config, &request);
    }
    control.config_name = config_path;
    if (!train_run_with(&config, &control, NULL, &err)) {
        fprintf(stderr, "lora-train: %s\n", err.message);
        return 1;
    }
    return 0;
}
