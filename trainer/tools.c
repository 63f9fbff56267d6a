// lora-train's Hugging Face subcommands: init-model, tokenize and export.
//
//   lora-train init-model --arch llama (--preset NAME | --config-json FILE) --out DIR [--tokenizer FILE] [--seed N]
//   lora-train tokenize --tokenizer PATH [--special]     JSON array of strings on stdin -> array of id arrays
//   lora-train export --checkpoint DIR --format peft|merged --out DIR [--base DIR]
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoints/checkpoints.h"
#include "data/data.h"
#include "train_private.h"

#define TOOL_PATH_MAX 4096

typedef struct ToolArgs {
    const char *arch, *preset, *config_json, *out, *tokenizer, *checkpoint, *format, *base;
    uint64_t seed;
    bool special;
} ToolArgs;

// --name VALUE pairs and the --special switch; anything else is an error.
static bool parse_tool_args(int argc, char **argv, ToolArgs *args, Error *err) {
    struct { const char *flag; const char **slot; } options[] = {
        {"--arch", &args->arch},           {"--preset", &args->preset}, {"--config-json", &args->config_json},
        {"--out", &args->out},             {"--tokenizer", &args->tokenizer}, {"--checkpoint", &args->checkpoint},
        {"--format", &args->format},       {"--base", &args->base},
    };
    *args = (ToolArgs){.seed = 1};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--special") == 0) {
            args->special = true;
            continue;
        }
        if (i + 1 >= argc) return fail(err, "%s needs a value", argv[i]);
        bool known = strcmp(argv[i], "--seed") == 0;
        if (known) args->seed = strtoull(argv[i + 1], NULL, 10);
        for (size_t o = 0; o < sizeof options / sizeof options[0]; o++) {
            if (strcmp(argv[i], options[o].flag) != 0) continue;
            *options[o].slot = argv[i + 1];
            known = true;
        }
        static const char *const flags[] = {"--arch", "--preset", "--config-json", "--out", "--tokenizer",
                                            "--checkpoint", "--format", "--base", "--seed", "--special", NULL};
        if (!known) return fail_unknown_argument(err, argv[i], flags);
        i++;
    }
    return true;
}

static bool join(char *buf, size_t size, const char *dir, const char *file, Error *err) {
    int n = snprintf(buf, size, "%s/%s", dir, file);
    return (n >= 0 && (size_t)n < size) || fail(err, "path too long: %s/%s", dir, file);
}

// ----------------------------------------------------------------------------
// init-model

static bool copy_whole_file(const char *src, const char *dst, Error *err) {
    char *data;
    size_t size;
    if (!read_file(src, &data, &size, err)) return false;
    FILE *f = fopen(dst, "wb");
    bool ok = f && fwrite(data, 1, size, f) == size;
    ok = (f && fclose(f) == 0) && ok;
    free(data);
    return ok || fail(err, "%s: write failed", dst);
}

static bool model_config_from_args(const ToolArgs *args, LlamaConfig *config, Error *err) {
    if (!args->arch || strcmp(args->arch, "llama") != 0) return fail(err, "init-model: --arch llama is required");
    if (!args->out || (!args->preset == !args->config_json)) {
        return fail(err, "init-model: --out DIR and one of --preset NAME or --config-json FILE are required");
    }
    if (args->preset) return llama_config_preset(args->preset, config, err);
    char path[TOOL_PATH_MAX];
    return make_dirs(args->out, err) && join(path, sizeof path, args->out, "config.json", err) &&
           copy_whole_file(args->config_json, path, err) && hf_read_llama_config(args->out, config, err);
}

// The tokenizer must fit the vocabulary; without one the folder uses the built-in byte-level tokenizer.
static bool install_tokenizer(const char *tokenizer_path, const LlamaConfig *config, const char *out, Error *err) {
    HfTokenizer *tok = hf_tokenizer_load(tokenizer_path, err);
    if (!tok) return false;
    int vocab = hf_tokenizer_vocab_size(tok);
    hf_tokenizer_destroy(tok);
    if (vocab > config->vocab_size) {
        return fail(err, "%s has %d tokens, more than the model's vocab_size %d", tokenizer_path, vocab, config->vocab_size);
    }
    char path[TOOL_PATH_MAX];
    return join(path, sizeof path, out, "tokenizer.json", err) && copy_whole_file(tokenizer_path, path, err);
}

// The dtype config.json asks for (torch_dtype, or dtype as transformers >= 4.56
// writes it): bfloat16, float16 or float32 (also when absent).
static bool requested_dtype(const char *config_json, DType *dtype, Error *err) {
    *dtype = DTYPE_F32;
    if (!config_json) return true;
    json_object *config = json_object_from_file(config_json), *value = NULL;
    if (!config) return fail(err, "%s: cannot read it as JSON", config_json);
    bool given = (json_object_object_get_ex(config, "torch_dtype", &value) ||
                  json_object_object_get_ex(config, "dtype", &value)) && json_object_is_type(value, json_type_string);
    const char *name = given ? json_object_get_string(value) : "float32";
    bool known = true;
    if (strcmp(name, "bfloat16") == 0) *dtype = DTYPE_BF16;
    else if (strcmp(name, "float16") == 0) *dtype = DTYPE_F16;
    else known = strcmp(name, "float32") == 0;
    if (!known) fail(err, "%s: torch_dtype '%s' is not bfloat16, float16 or float32", config_json, name);
    json_object_put(config);
    return known;
}

static bool init_model(const ToolArgs *args, Error *err) {
    LlamaConfig config;
    DType dtype;
    if (!requested_dtype(args->config_json, &dtype, err) || !model_config_from_args(args, &config, err)) return false;
    ModelOptions options = {.ops = ops_cpu(), .config = config, .max_batch = 1, .max_seq_len = 1,
                            .lora = {.r = 1, .alpha = 1}, .seed = args->seed};
    Model *model = model_create(&options, err);
    if (!model) return false;
    bool ok = model_init_random_base(model, args->seed, err) && hf_save_model_as(model, args->out, dtype, err) &&
              (!args->tokenizer || install_tokenizer(args->tokenizer, &config, args->out, err));
    model_destroy(model);
    if (ok)
        printf("wrote a random %s model to %s (%s)\n", args->preset ? args->preset : args->config_json, args->out,
               dtype_name(dtype));
    return ok;
}

// ----------------------------------------------------------------------------
// tokenize

// All of stdin as a NUL-terminated string; false on a read error or out of memory.
static bool read_stdin(char **text, Error *err) {
    size_t size = 0, capacity = 1 << 16;
    *text = checked_malloc(capacity, "stdin", err);
    while (*text) {
        size += fread(*text + size, 1, capacity - size - 1, stdin);
        if (size < capacity - 1) break;
        capacity *= 2;
        char *bigger = realloc(*text, capacity);
        if (!bigger) free(*text);
        *text = bigger;
    }
    if (!*text) return fail(err, "out of memory reading stdin");
    if (ferror(stdin)) {
        free(*text);
        return fail(err, "reading stdin failed");
    }
    (*text)[size] = '\0';
    return true;
}

// The ids of one string: tokenizer.json's, or the byte tokenizer's when tok is
// NULL (a folder without tokenizer.json, as init-model --preset writes); with
// special the post-processor's tokens (the byte tokenizer's: <bos> first).
static bool encode_one(const HfTokenizer *tok, const char *text, size_t len, bool special, int32_t **ids, int *n_ids,
                       Error *err) {
    if (tok) return hf_tokenizer_encode(tok, text, len, special, ids, n_ids, err);
    Tokenizer *bytes = tokenizer_bytes(err);
    int capacity = (int)len + 1;
    *n_ids = 0;
    *ids = bytes ? checked_malloc((size_t)capacity * sizeof **ids, "token ids", err) : NULL;
    if (*ids && special) (*ids)[(*n_ids)++] = tokenizer_bos(bytes);
    bool ok = *ids && tokenizer_encode(bytes, text, len, ids, n_ids, &capacity, err);
    tokenizer_destroy(bytes);
    return ok;
}

// One line: [[ids of the first string], [ids of the second], ...].
static bool print_encodings(const HfTokenizer *tok, json_object *texts, bool special, Error *err) {
    size_t n = json_object_array_length(texts);
    printf("[");
    for (size_t i = 0; i < n; i++) {
        json_object *item = json_object_array_get_idx(texts, i);
        if (!json_object_is_type(item, json_type_string)) return fail(err, "stdin: item %zu is not a string", i);
        int32_t *ids = NULL;
        int n_ids = 0;
        if (!encode_one(tok, json_object_get_string(item), (size_t)json_object_get_string_len(item), special, &ids,
                        &n_ids, err)) {
            free(ids);
            return fail_context(err, "stdin: item %zu: ", i);
        }
        printf("%s[", i ? ", " : "");
        for (int k = 0; k < n_ids; k++) printf("%s%d", k ? ", " : "", ids[k]);
        printf("]");
        free(ids);
    }
    printf("]\n");
    return true;
}

// --tokenizer names a tokenizer.json or a model folder; a folder without one
// uses the built-in byte tokenizer (*path set to "").
static bool tokenizer_path(const char *given, char *path, size_t size, Error *err) {
    struct stat st;
    if (stat(given, &st) != 0) return fail(err, "%s: %s", given, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return snprintf(path, size, "%s", given) > 0;
    if (!join(path, size, given, "tokenizer.json", err)) return false;
    if (!path_exists(path)) path[0] = '\0';
    return true;
}

static bool tokenize(const ToolArgs *args, Error *err) {
    if (!args->tokenizer) return fail(err, "tokenize: --tokenizer PATH (tokenizer.json or its folder) is required");
    char path[TOOL_PATH_MAX];
    if (!tokenizer_path(args->tokenizer, path, sizeof path, err)) return false;
    char *input;
    if (!read_stdin(&input, err)) return false;
    json_object *texts = json_tokener_parse(input);
    free(input);
    HfTokenizer *tok = NULL;
    bool ok = json_object_is_type(texts, json_type_array) || fail(err, "stdin: expected a JSON array of strings");
    ok = ok && (!path[0] || (tok = hf_tokenizer_load(path, err)) != NULL) &&
         print_encodings(tok, texts, args->special, err);
    hf_tokenizer_destroy(tok);
    json_object_put(texts);
    return ok;
}

// ----------------------------------------------------------------------------
// export

// The base model folder: --base, else adapter_config.json's base_model_name_or_path
// when it is a folder here (a Hugging Face id or a path of another machine is not).
static bool base_model_dir(const ToolArgs *args, char *out, size_t size, Error *err) {
    if (args->base) return snprintf(out, size, "%s", args->base) > 0;
    char path[TOOL_PATH_MAX];
    if (!join(path, sizeof path, args->checkpoint, "adapter_config.json", err)) return false;
    json_object *config = json_object_from_file(path), *base = NULL;
    if (!config) return fail(err, "%s: cannot read it as JSON", path);
    bool ok = json_object_object_get_ex(config, "base_model_name_or_path", &base) &&
              json_object_is_type(base, json_type_string);
    if (ok) snprintf(out, size, "%s", json_object_get_string(base));
    json_object_put(config);
    if (!ok) return fail(err, "%s: no base_model_name_or_path; name the base model's folder with --base DIR", path);
    struct stat st;
    if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode))
        return fail(err, "%s: base_model_name_or_path '%s' is not a folder here; name the base model's folder with "
                         "--base DIR", path, out);
    return true;
}

static bool export_checkpoint(const ToolArgs *args, Error *err) {
    if (!args->checkpoint || !args->out || !args->format) {
        return fail(err, "export: --checkpoint DIR, --format peft|merged and --out DIR are required");
    }
    if (strcmp(args->format, "peft") == 0) return export_peft(args->checkpoint, args->out, err);
    if (strcmp(args->format, "merged") != 0) return fail(err, "export: --format must be peft or merged, not '%s'", args->format);
    char base[TOOL_PATH_MAX];
    return base_model_dir(args, base, sizeof base, err) && export_merged(base, args->checkpoint, args->out, err);
}

// ----------------------------------------------------------------------------

int lora_train_tool_main(const char *tool, int argc, char **argv) {
    ToolArgs args;
    Error err = {{0}};
    if (!parse_tool_args(argc, argv, &args, &err)) {
        fprintf(stderr, "lora-train %s: %s\n", tool, err.message);
        return 2;
    }
    bool ok = strcmp(tool, "init-model") == 0 ? init_model(&args, &err)
              : strcmp(tool, "tokenize") == 0 ? tokenize(&args, &err)
                                              : export_checkpoint(&args, &err);
    if (!ok) fprintf(stderr, "lora-train %s: %s\n", tool, err.message);
    return ok ? 0 : 1;
}
